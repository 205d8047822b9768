//! The HTTP client to the vendor's authority: the one place that speaks its JSON API.
//!
//! Both activations that need the authority use it: a host activating its host key online
//! (R22, from `tally-host`) and a MAK client activating (R25, from [`crate::ops`]). Answers that
//! matter are signed by the authority and verified by the caller, so this module only moves JSON
//! and turns refusals into [`AuthorityClientError::Refused`].

use std::time::Duration;

use serde_json::Value;
use thiserror::Error;
use uuid::Uuid;

/// Why a call to the authority failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AuthorityClientError {
    /// The HTTP client could not be built (TLS set-up).
    #[error("cannot set up the HTTP client")]
    Client(#[source] reqwest::Error),
    /// The TLS configuration could not be built (platform roots, a CA certificate given).
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    /// No answer: DNS, connection, TLS or timeout.
    #[error("cannot reach the authority at {base}")]
    Unreachable {
        /// The authority's base URL.
        base: String,
        /// What failed.
        #[source]
        source: reqwest::Error,
    },
    /// The answer was not JSON.
    #[error("the authority sent no JSON")]
    NotJson(#[source] reqwest::Error),
    /// The authority answered with an error status.
    #[error("the authority refused ({error}): {message}")]
    Refused {
        /// Its machine-readable error code, e.g. `limit_reached`.
        error: String,
        /// Its message for people.
        message: String,
        /// The whole answer (printed by `--json` callers).
        body: Value,
    },
    /// A success answer without a field it must have.
    #[error("the authority's answer is incomplete: no {0}")]
    Incomplete(&'static str),
}

/// What the authority says about itself (`GET /v1/authority`).
#[derive(Clone, Debug)]
pub struct AuthorityInfo {
    /// Its public key, in the `authority.pub` file format.
    pub public_key_file: String,
    /// Its id (hex), to check with the vendor out of band.
    pub authority_id: String,
}

/// A MAK activation granted (R25): the claim's fields and the authority's signature over them.
#[derive(Clone, Debug)]
pub struct MakGrant {
    /// The MAK's serial.
    pub serial: u32,
    /// The issue day (days since 1970).
    pub day: u16,
    /// The signature over the claim.
    pub signature: [u8; 64],
}

/// A host certified online (R22): the certificate and, from an authority with a transparency
/// log (X8), the inclusion proof of the certificate's log entry.
#[derive(Clone, Debug)]
pub struct HostGrant {
    /// The certificate, in the `tally-host-certificate-v1` file format.
    pub certificate: String,
    /// The inclusion proof file text (`tally-log-inclusion-v1 HEX`), to verify and keep.
    pub log_proof: Option<String>,
}

/// An authority at one base URL.
#[derive(Clone, Debug)]
pub struct AuthorityClient {
    base: String,
    http: reqwest::Client,
}

impl AuthorityClient {
    /// A client for the authority at `url` (e.g. `https://activation.vendor.example`), with a
    /// `timeout` for each whole request. With the `tls` feature (default), `https` URLs are
    /// verified against the platform's trusted roots.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, AuthorityClientError> {
        Self::with_roots(url, timeout, &[])
    }

    /// As [`AuthorityClient::new`], also trusting the CA certificates in `extra_roots_pem`
    /// (PEM, e.g. a vendor's private CA or a test CA). Without the `tls` feature, a non-empty
    /// `extra_roots_pem` is refused.
    pub fn with_roots(
        url: &str,
        timeout: Duration,
        extra_roots_pem: &[u8],
    ) -> Result<Self, AuthorityClientError> {
        let builder = tls::configure(reqwest::Client::builder().timeout(timeout), extra_roots_pem)?;
        let http = builder.build().map_err(AuthorityClientError::Client)?;
        Ok(Self {
            base: url.trim_end_matches('/').to_owned(),
            http,
        })
    }

    /// The base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /v1/authority`: the authority's public key (trust on first use, warned about by the
    /// caller) and its id.
    pub async fn info(&self) -> Result<AuthorityInfo, AuthorityClientError> {
        let resp = self
            .http
            .get(format!("{}/v1/authority", self.base))
            .send()
            .await
            .map_err(|source| self.unreachable(source))?;
        let v = answer(resp).await?;
        let public_key_file = v["public_key_file"]
            .as_str()
            .ok_or(AuthorityClientError::Incomplete("public key"))?
            .to_owned();
        Ok(AuthorityInfo {
            public_key_file,
            authority_id: v["authority_id"].as_str().unwrap_or("?").to_owned(),
        })
    }

    /// `GET /v1/revocations` (X7): the authority's newest signed revocation list, as the text
    /// of a `revocations.tally` file (the caller verifies it).
    pub async fn revocations(&self) -> Result<String, AuthorityClientError> {
        let resp = self
            .http
            .get(format!("{}/v1/revocations", self.base))
            .send()
            .await
            .map_err(|source| self.unreachable(source))?;
        let v = answer(resp).await?;
        v["file"]
            .as_str()
            .map(str::to_owned)
            .ok_or(AuthorityClientError::Incomplete("file"))
    }

    /// `POST /v1/host-activations` (R22, R23): the certificate the authority issued for
    /// `host_public_key` (hex) under `host_key`, and its log proof (X8).
    pub async fn activate_host(
        &self,
        host_key: &str,
        host_public_key_hex: &str,
        hardware_id_hex: &str,
    ) -> Result<HostGrant, AuthorityClientError> {
        let body = serde_json::json!({
            "host_key": host_key,
            "host_public_key": host_public_key_hex,
            "hardware_id": hardware_id_hex,
        });
        let v = self.post("v1/host-activations", &body).await?;
        let certificate = v["certificate"]
            .as_str()
            .map(str::to_owned)
            .ok_or(AuthorityClientError::Incomplete("certificate"))?;
        Ok(HostGrant {
            certificate,
            log_proof: v["log"]["proof"].as_str().map(str::to_owned),
        })
    }

    /// `GET /PATH` (with its query) on the authority: the JSON answer, or its refusal. Used
    /// for the public transparency log endpoints (`v1/log/...`, X8), whose answers are signed
    /// files the caller verifies.
    pub async fn get(&self, path: &str) -> Result<Value, AuthorityClientError> {
        let resp = self
            .http
            .get(format!("{}/{}", self.base, path.trim_start_matches('/')))
            .send()
            .await
            .map_err(|source| self.unreachable(source))?;
        answer(resp).await
    }

    /// `POST /v1/mak-activations` (R25): the signed claim for this client.
    pub async fn activate_mak(
        &self,
        mak: &str,
        cmid: Uuid,
        sku: Uuid,
        hardware_id_hex: &str,
    ) -> Result<MakGrant, AuthorityClientError> {
        let body = serde_json::json!({
            "mak": mak, "cmid": cmid, "sku": sku, "hardware_id": hardware_id_hex,
        });
        let v = self.post("v1/mak-activations", &body).await?;
        let signature = v["signature"]
            .as_str()
            .and_then(tally_core::hex::from_hex)
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .ok_or(AuthorityClientError::Incomplete("signature"))?;
        let serial = v["serial"]
            .as_u64()
            .and_then(|s| u32::try_from(s).ok())
            .ok_or(AuthorityClientError::Incomplete("serial"))?;
        let day = v["day"]
            .as_u64()
            .and_then(|d| u16::try_from(d).ok())
            .ok_or(AuthorityClientError::Incomplete("day"))?;
        Ok(MakGrant {
            serial,
            day,
            signature,
        })
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, AuthorityClientError> {
        let resp = self
            .http
            .post(format!("{}/{path}", self.base))
            .json(body)
            .send()
            .await
            .map_err(|source| self.unreachable(source))?;
        answer(resp).await
    }

    fn unreachable(&self, source: reqwest::Error) -> AuthorityClientError {
        AuthorityClientError::Unreachable {
            base: self.base.clone(),
            source,
        }
    }
}

/// The JSON of a success answer, or the authority's refusal.
async fn answer(resp: reqwest::Response) -> Result<Value, AuthorityClientError> {
    let status = resp.status();
    let v: Value = resp.json().await.map_err(AuthorityClientError::NotJson)?;
    if status.is_success() {
        Ok(v)
    } else {
        Err(AuthorityClientError::Refused {
            error: v["error"].as_str().unwrap_or("error").to_owned(),
            message: v["message"].as_str().unwrap_or("no message").to_owned(),
            body: v,
        })
    }
}

#[cfg(feature = "tls")]
mod tls {
    use std::sync::Arc;

    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use rustls_platform_verifier::Verifier;

    use super::AuthorityClientError;

    /// rustls with the ring provider, set on this client only: an embedding application's own
    /// process-wide rustls default is never installed or changed.
    pub(super) fn configure(
        builder: reqwest::ClientBuilder,
        extra_roots_pem: &[u8],
    ) -> Result<reqwest::ClientBuilder, AuthorityClientError> {
        let bad = |e: &dyn std::fmt::Display| AuthorityClientError::Tls(e.to_string());
        let extra = CertificateDer::pem_slice_iter(extra_roots_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            Verifier::new_with_extra_roots(extra, Arc::clone(&provider)).map_err(|e| bad(&e))?;
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(&e))?
            .dangerous() // not dangerous: the platform verifier checks chain and name
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(builder.tls_backend_preconfigured(config))
    }
}

#[cfg(not(feature = "tls"))]
mod tls {
    use super::AuthorityClientError;

    /// Without TLS only `http://` works; a CA given is an error rather than silently unused.
    pub(super) fn configure(
        builder: reqwest::ClientBuilder,
        extra_roots_pem: &[u8],
    ) -> Result<reqwest::ClientBuilder, AuthorityClientError> {
        if extra_roots_pem.is_empty() {
            Ok(builder)
        } else {
            Err(AuthorityClientError::Tls(
                "tally-client was built without the `tls` feature".into(),
            ))
        }
    }
}
