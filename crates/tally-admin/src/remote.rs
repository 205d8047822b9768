//! A client of a host's admin API (R26): `--target URL` with a token, like the slmgr
//! "TargetComputerName user password" form; without a target, the host running on this
//! machine's data directory (its `admin.addr`, `admin.token` and, for TLS, `admin-cert.pem`).
//! `tally host status|clients|events|report|set` and `tally slmgr` use it; the binary only
//! prints what it returns.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;

/// File names in a host's data directory (the host writes them when its admin API starts).
pub const ADDR_FILE: &str = "admin.addr";
/// The admin token, 0600.
pub const TOKEN_FILE: &str = "admin.token";
/// The admin API's self-signed certificate, when it serves TLS.
pub const CERT_FILE: &str = "admin-cert.pem";

/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a host's admin API is and how to prove who asks.
#[derive(Clone, Debug, Default)]
pub struct Endpoint {
    /// A host's admin API, e.g. `https://tally1.corp.example:1689`; `None`: the host running
    /// on the data directory.
    pub target: Option<String>,
    /// The admin token.
    pub token: Option<String>,
    /// A file holding the admin token.
    pub token_file: Option<PathBuf>,
    /// For an https target: the certificate (PEM) to trust.
    pub ca_file: Option<PathBuf>,
}

/// Why a call to the admin API failed. The messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// No target and no running host in the data directory.
    #[error("no running host found in {0} (start it, or pass --target URL)")]
    NoHost(String),
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A remote target without a token.
    #[error("a remote host needs its admin token: --token-file FILE (or --token)")]
    NoToken,
    /// The CA file holds no usable certificate.
    #[error("{path}: not a PEM certificate the client can trust: {reason}")]
    Ca {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The host could not be reached or sent something that is not JSON.
    #[error("cannot reach the host's admin API at {base}")]
    Unreachable {
        /// The API's base URL.
        base: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The HTTP client could not be set up (its TLS configuration).
    #[error("cannot set up the HTTP client for the admin API")]
    Setup(#[source] reqwest::Error),
    /// The host answered with an error.
    #[error("the host refused ({status} {code}): {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The API's error code.
        code: String,
        /// The API's message.
        message: String,
    },
}

/// A resolved admin endpoint.
pub struct AdminClient {
    base: String,
    token: String,
    client: reqwest::Client,
}

fn read(path: &Path) -> Result<String, RemoteError> {
    std::fs::read_to_string(path).map_err(|source| RemoteError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn http_client(ca_file: Option<&Path>) -> Result<reqwest::Client, RemoteError> {
    let builder = reqwest::Client::builder().timeout(CALL_TIMEOUT);
    let builder = match ca_file {
        Some(ca) => {
            let bad = |reason: String| RemoteError::Ca {
                path: ca.display().to_string(),
                reason,
            };
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(e.to_string()))? {
                roots
                    .add(cert.map_err(|e| bad(e.to_string()))?)
                    .map_err(|e| bad(e.to_string()))?;
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| bad(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.tls_backend_preconfigured(config)
        }
        None => {
            // Public CAs: the platform's verifier with the ring provider.
            let _ = rustls::crypto::ring::default_provider().install_default();
            builder
        }
    };
    builder.build().map_err(RemoteError::Setup)
}

impl AdminClient {
    /// The endpoint's target, or the host running on `data_dir`.
    pub fn resolve(endpoint: &Endpoint, data_dir: &Path) -> Result<Self, RemoteError> {
        let base = match &endpoint.target {
            Some(t) => t.trim_end_matches('/').to_owned(),
            None => {
                let addr = std::fs::read_to_string(data_dir.join(ADDR_FILE))
                    .map_err(|_| RemoteError::NoHost(data_dir.display().to_string()))?;
                let addr = addr.trim();
                if addr.contains("://") {
                    addr.to_owned()
                } else {
                    format!("http://{addr}")
                }
            }
        };
        let local_cert = data_dir.join(CERT_FILE);
        let ca = match (&endpoint.ca_file, &endpoint.target) {
            (Some(ca), _) => Some(ca.clone()),
            (None, None) if local_cert.exists() => Some(local_cert),
            _ => None,
        };
        let token = match (&endpoint.token, &endpoint.token_file) {
            (Some(t), _) => t.clone(),
            (None, Some(f)) => read(f)?,
            (None, None) if endpoint.target.is_none() => read(&data_dir.join(TOKEN_FILE))?,
            (None, None) => return Err(RemoteError::NoToken),
        };
        Ok(Self {
            base,
            token: token.trim().to_owned(),
            client: http_client(ca.as_deref())?,
        })
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn unreachable(&self) -> impl FnOnce(reqwest::Error) -> RemoteError + '_ {
        move |source| RemoteError::Unreachable {
            base: self.base.clone(),
            source,
        }
    }

    async fn answer(&self, resp: reqwest::Response) -> Result<Value, RemoteError> {
        let status = resp.status();
        let v: Value = resp.json().await.map_err(self.unreachable())?;
        if status.is_success() {
            Ok(v)
        } else {
            Err(RemoteError::Refused {
                status: status.as_u16(),
                code: v["error"].as_str().unwrap_or("error").to_owned(),
                message: v["message"].as_str().unwrap_or("").to_owned(),
            })
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1/{path}", self.base)
    }

    /// GET `path` (under `/api/v1`).
    pub async fn get(&self, path: &str) -> Result<Value, RemoteError> {
        let resp = self.send(self.client.get(self.url(path))).await?;
        self.answer(resp).await
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RemoteError> {
        request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(self.unreachable())
    }

    /// GET `path` as text (reports).
    pub async fn get_text(&self, path: &str) -> Result<String, RemoteError> {
        let resp = self.send(self.client.get(self.url(path))).await?;
        if !resp.status().is_success() {
            return self.answer(resp).await.map(|v| v.to_string());
        }
        resp.text().await.map_err(self.unreachable())
    }

    /// PATCH `path` with a JSON body.
    pub async fn patch(&self, path: &str, body: &Value) -> Result<Value, RemoteError> {
        let resp = self
            .send(self.client.patch(self.url(path)).json(body))
            .await?;
        self.answer(resp).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_target_the_data_directory_names_the_host_or_says_start_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let none = AdminClient::resolve(&Endpoint::default(), tmp.path());
        assert!(matches!(none, Err(RemoteError::NoHost(_))));
        std::fs::write(tmp.path().join(ADDR_FILE), "127.0.0.1:1689\n").expect("addr");
        std::fs::write(tmp.path().join(TOKEN_FILE), "secret\n").expect("token");
        let local = AdminClient::resolve(&Endpoint::default(), tmp.path()).expect("local");
        assert_eq!(local.base(), "http://127.0.0.1:1689");
        assert_eq!(local.token, "secret");
    }

    #[test]
    fn a_remote_target_needs_a_token_and_a_readable_ca() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let remote = Endpoint {
            target: Some("https://tally1.example:1689/".into()),
            ..Endpoint::default()
        };
        assert!(matches!(
            AdminClient::resolve(&remote, tmp.path()),
            Err(RemoteError::NoToken)
        ));
        let missing_ca = Endpoint {
            token: Some("t".into()),
            ca_file: Some(tmp.path().join("nope.pem")),
            ..remote.clone()
        };
        let err = AdminClient::resolve(&missing_ca, tmp.path())
            .err()
            .expect("error");
        assert!(err.to_string().contains("nope.pem"), "{err}");
        let ok = Endpoint {
            token: Some("t".into()),
            ..remote
        };
        let client = AdminClient::resolve(&ok, tmp.path()).expect("client");
        assert_eq!(client.base(), "https://tally1.example:1689");
    }
}
