//! Talking to a host's admin API (R26): `--target URL` with `--token`/`--token-file`, like the
//! slmgr "TargetComputerName user password" form; without a target, the host running on this
//! machine's data directory (its `admin.addr` and `admin.token`).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;

use tally_host::paths::{ADMIN_ADDR_FILE, ADMIN_CERT_FILE, ADMIN_TOKEN_FILE};

/// Where a host's admin API is.
#[derive(Args, Clone, Debug, Default)]
pub struct RemoteArgs {
    /// A host's admin API, e.g. http://tally1.corp.example:1689 (a remote host).
    #[arg(long, value_name = "URL", global = true)]
    pub target: Option<String>,
    /// The admin token (prefer --token-file: command lines are visible to other users).
    #[arg(
        long,
        env = "TALLY_ADMIN_TOKEN",
        value_name = "TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// A file holding the admin token (the host's DATA_DIR/admin.token).
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// For an https target: the certificate (PEM) to trust, e.g. the host's self-signed one.
    #[arg(long, value_name = "FILE", global = true)]
    pub ca_file: Option<PathBuf>,
}

fn client(ca_file: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
    let builder = match ca_file {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("cannot read {}", ca.display()))?
            {
                roots.add(cert.with_context(|| format!("{}", ca.display()))?)?;
            }
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
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
    Ok(builder.build()?)
}

/// A resolved admin endpoint.
pub struct Admin {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl Admin {
    /// The target given, or the host running on `data_dir`.
    pub fn resolve(args: &RemoteArgs, data_dir: &Path) -> anyhow::Result<Self> {
        let base = match &args.target {
            Some(t) => t.trim_end_matches('/').to_owned(),
            None => {
                let addr =
                    std::fs::read_to_string(data_dir.join(ADMIN_ADDR_FILE)).with_context(|| {
                        format!(
                            "no running host found in {} (start it, or pass --target URL)",
                            data_dir.display()
                        )
                    })?;
                let addr = addr.trim();
                if addr.contains("://") {
                    addr.to_owned()
                } else {
                    format!("http://{addr}")
                }
            }
        };
        let local_cert = data_dir.join(ADMIN_CERT_FILE);
        let ca = match (&args.ca_file, &args.target) {
            (Some(ca), _) => Some(ca.clone()),
            (None, None) if local_cert.exists() => Some(local_cert),
            _ => None,
        };
        let token = match (&args.token, &args.token_file) {
            (Some(t), _) => t.clone(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?,
            (None, None) if args.target.is_none() => {
                std::fs::read_to_string(data_dir.join(ADMIN_TOKEN_FILE)).with_context(|| {
                    format!("cannot read the admin token in {}", data_dir.display())
                })?
            }
            (None, None) => {
                bail!("a remote host needs its admin token: --token-file FILE (or --token)")
            }
        };
        let client = client(ca.as_deref())?;
        Ok(Self {
            base,
            token: token.trim().to_owned(),
            client,
        })
    }

    async fn answer(&self, resp: reqwest::Response) -> anyhow::Result<Value> {
        let status = resp.status();
        let v: Value = resp.json().await.context("the host sent no JSON")?;
        if status.is_success() {
            Ok(v)
        } else {
            bail!(
                "the host refused ({} {}): {}",
                status.as_u16(),
                v["error"].as_str().unwrap_or("error"),
                v["message"].as_str().unwrap_or("")
            )
        }
    }

    /// GET `path` (under `/api/v1`).
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self
            .client
            .get(format!("{}/api/v1/{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the host's admin API at {}", self.base))?;
        self.answer(resp).await
    }

    /// GET `path` as text (reports).
    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let resp = self
            .client
            .get(format!("{}/api/v1/{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the host's admin API at {}", self.base))?;
        if !resp.status().is_success() {
            return self.answer(resp).await.map(|v| v.to_string());
        }
        Ok(resp.text().await?)
    }

    /// PATCH `path` with a JSON body.
    pub async fn patch(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let resp = self
            .client
            .patch(format!("{}/api/v1/{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .with_context(|| format!("cannot reach the host's admin API at {}", self.base))?;
        self.answer(resp).await
    }
}
