//! TLS to PostgreSQL with rustls (issue 21 part 5), configured by libpq's URL parameters:
//!
//! | `sslmode`     | encrypted            | server authenticated                              |
//! |---------------|----------------------|---------------------------------------------------|
//! | `disable`     | no                   | no                                                |
//! | `prefer`      | if the server offers | no (libpq's default; falls back to plain TCP)     |
//! | `require`     | yes                  | no, unless `sslrootcert` is given (then `verify-ca`, as libpq) |
//! | `verify-ca`   | yes                  | chain checked against `sslrootcert`, name not checked |
//! | `verify-full` | yes                  | chain checked against `sslrootcert` and the host name of the URL |
//!
//! `sslrootcert` is a PEM file of one or more CA certificates; `verify-ca` and `verify-full`
//! need it (there is no default `~/.postgresql/root.crt` and no system store: a database's CA
//! is the operator's own). tokio-postgres does not parse `verify-ca`, `verify-full` or
//! `sslrootcert`, so [`split`] takes them out of the URL before tokio-postgres sees it.
//!
//! Channel binding (`SCRAM-SHA-256-PLUS`) is not offered: the connection authenticates the
//! server by its certificate (verify-full), and SCRAM without binding still never sends the
//! password.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, unauthenticated; plain TCP otherwise.
    Prefer,
    /// TLS, server not authenticated.
    Require,
    /// TLS, certificate chain checked against `sslrootcert`; the name is not checked.
    VerifyCa,
    /// TLS, chain and host name checked.
    VerifyFull,
}

impl TlsMode {
    fn parse(value: &str) -> Result<Self, TlsConfigError> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            // `allow` (plain first, TLS if the server insists) is not offered: use prefer.
            other => {
                return Err(TlsConfigError::Mode {
                    value: other.to_owned(),
                });
            }
        })
    }

    /// Its `sslmode` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres is told: whether TLS is tried and whether it is mandatory.
    pub fn ssl_mode(self) -> SslMode {
        match self {
            Self::Disable => SslMode::Disable,
            Self::Prefer => SslMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => SslMode::Require,
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A URL's TLS settings that are not the URL's own business.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsParams {
    /// `sslmode` (libpq's default `prefer` when absent).
    pub mode: TlsMode,
    /// `sslrootcert`.
    pub root_cert: Option<PathBuf>,
}

/// A TLS setting that cannot work; the message names the parameter.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// Not one of libpq's modes this build speaks.
    #[error(
        "sslmode={value} is not supported; use disable, prefer, require, verify-ca or verify-full"
    )]
    Mode {
        /// The value given.
        value: String,
    },
    /// `verify-ca`/`verify-full` without a CA.
    #[error(
        "sslmode={mode} needs sslrootcert=FILE (the PEM file of the CA that issued the server's certificate), e.g. ?sslmode={mode}&sslrootcert=/etc/tally/ca.pem"
    )]
    NoRootCert {
        /// The mode given.
        mode: TlsMode,
    },
    /// The CA file cannot be read or holds no certificate.
    #[error("sslrootcert {path}: {reason}; it must be a readable PEM file of CA certificates")]
    RootCert {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Takes `sslmode` and `sslrootcert` out of `url` (URL or `key=value` form) and returns the rest,
/// which tokio-postgres parses, with `sslmode` set to what tokio-postgres understands.
pub fn split(url: &str) -> Result<(String, TlsParams), TlsConfigError> {
    let (rest, mode, root_cert) = strip(url);
    let mode = mode.as_deref().map(TlsMode::parse).transpose()?;
    let root_cert = root_cert.map(PathBuf::from);
    let mut params = TlsParams {
        mode: mode.unwrap_or(TlsMode::Prefer),
        root_cert,
    };
    // libpq: "if a root CA file exists, the behavior of sslmode=require will be the same as
    // that of verify-ca".
    if params.mode == TlsMode::Require && params.root_cert.is_some() {
        params.mode = TlsMode::VerifyCa;
    }
    if matches!(params.mode, TlsMode::VerifyCa | TlsMode::VerifyFull) && params.root_cert.is_none()
    {
        return Err(TlsConfigError::NoRootCert { mode: params.mode });
    }
    let sep = if rest.contains("://") {
        if rest.contains('?') { '&' } else { '?' }
    } else {
        ' '
    };
    let rest = match sep {
        ' ' => format!("{rest} sslmode={}", ssl_mode_str(params.mode.ssl_mode())),
        s => format!("{rest}{s}sslmode={}", ssl_mode_str(params.mode.ssl_mode())),
    };
    Ok((rest, params))
}

fn ssl_mode_str(m: SslMode) -> &'static str {
    match m {
        SslMode::Disable => "disable",
        SslMode::Require => "require",
        _ => "prefer",
    }
}

/// `url` without `sslmode` and `sslrootcert` (which tokio-postgres cannot parse), for
/// describing it; the values are not checked.
pub fn without_tls_params(url: &str) -> String {
    strip(url).0
}

/// `url` without `sslmode` and `sslrootcert`, and their values (the last of each).
fn strip(url: &str) -> (String, Option<String>, Option<String>) {
    let mut mode = None;
    let mut root_cert = None;
    let mut take = |key: &str, value: String| -> bool {
        match key {
            "sslmode" => mode = Some(value),
            "sslrootcert" => root_cert = Some(value),
            _ => return false,
        }
        true
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|pair| {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        !take(k, percent_decode(v))
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        // key=value form; values with spaces must be quoted in libpq, which this simple split
        // does not support for these two keys (paths with spaces: use the URL form, %20).
        let kept: Vec<&str> = url
            .split_whitespace()
            .filter(|word| {
                let (k, v) = word.split_once('=').unwrap_or((word, ""));
                !take(k.trim(), v.trim_matches('\'').to_owned())
            })
            .collect();
        kept.join(" ")
    };
    (rest, mode, root_cert)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The tokio-postgres connector for `params`: rustls with the ring provider.
#[derive(Clone)]
pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    params: Arc<TlsParams>,
}

impl fmt::Debug for RustlsConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RustlsConnect")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl RustlsConnect {
    /// Builds the connector; reads `sslrootcert` now, so a missing or empty file is an error
    /// at start, naming the file.
    pub fn new(params: TlsParams) -> Result<Self, TlsConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let verifier: Arc<dyn ServerCertVerifier> = match (&params.root_cert, params.mode) {
            (Some(path), TlsMode::VerifyCa | TlsMode::VerifyFull) => {
                let roots = Arc::new(load_roots(path)?);
                if params.mode == TlsMode::VerifyFull {
                    WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                        .build()
                        .map_err(|e| TlsConfigError::RootCert {
                            path: path.display().to_string(),
                            reason: e.to_string(),
                        })?
                } else {
                    Arc::new(ChainOnly { roots, algorithms })
                }
            }
            _ => Arc::new(Unverified { algorithms }),
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsConfigError::RootCert {
                path: String::new(),
                reason: e.to_string(),
            })?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
            params: Arc::new(params),
        })
    }
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsConfigError> {
    let err = |reason: String| TlsConfigError::RootCert {
        path: path.display().to_string(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))?;
    for cert in certs {
        let cert = cert.map_err(|e| err(e.to_string()))?;
        roots.add(cert).map_err(|e| err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(err("no certificate in it".to_owned()));
    }
    Ok(roots)
}

/// `verify-ca`: the chain must lead to a CA of `sslrootcert`; the name is not checked.
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `prefer`/`require`: encrypted, the certificate not checked (a man in the middle is not
/// detected; see docs/SECURITY.md). The handshake signature is still verified.
#[derive(Debug)]
struct Unverified {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Why a TLS handshake with a server failed, said for an operator: what is wrong and what to
/// check. Found by [`crate::pg`] in a connection error's sources.
#[derive(Debug, Error)]
#[error("{message}")]
pub struct TlsFailure {
    message: String,
}

impl TlsFailure {
    fn new(message: String) -> Self {
        Self { message }
    }

    fn from_io(host: &str, params: &TlsParams, e: &io::Error) -> Self {
        let ca = params
            .root_cert
            .as_ref()
            .map_or_else(|| "(none)".to_owned(), |p| p.display().to_string());
        let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
            return Self::new(format!("TLS handshake with {host} failed: {e}"));
        };
        let message = match tls {
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                    "the server's certificate is not issued by the CA in sslrootcert {ca} ({c}); \
                     check that sslrootcert is the CA that signed the server's certificate \
                     (ssl_cert_file in postgresql.conf) and that you reach the right server"
                ),
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => format!(
                    "the server's certificate does not name {host} ({c}); with \
                     sslmode=verify-full the URL's host must be a name the certificate lists \
                     (subjectAltName): use that name in the URL, or reissue the certificate with \
                     {host} in it"
                ),
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => format!(
                    "the server's certificate is outside its validity period ({c}); renew the \
                     server's certificate, or check this machine's clock"
                ),
                other => format!(
                    "the server's certificate was refused ({other}); check the server's \
                     certificate and sslrootcert {ca}"
                ),
            },
            other => format!(
                "TLS handshake with {host} failed ({other}); check that the server's TLS \
                 settings (ssl = on, ssl_cert_file) and sslmode={} agree",
                params.mode
            ),
        };
        Self::new(message)
    }
}

impl<S> MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnector;
    type Error = TlsFailure;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnector, TlsFailure> {
        Ok(RustlsConnector {
            config: self.config.clone(),
            params: self.params.clone(),
            host: domain.to_owned(),
        })
    }
}

/// One handshake with one server.
pub struct RustlsConnector {
    config: Arc<ClientConfig>,
    params: Arc<TlsParams>,
    host: String,
}

impl<S> TlsConnect<S> for RustlsConnector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = TlsFailure;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream<S>, TlsFailure>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            // A Unix socket has no host name; PostgreSQL never offers TLS there.
            let name = ServerName::try_from(self.host.clone()).map_err(|_| {
                TlsFailure::new(format!(
                    "{:?} is not a host name or address TLS can check",
                    self.host
                ))
            })?;
            let connector = tokio_rustls::TlsConnector::from(self.config);
            connector
                .connect(name, stream)
                .await
                .map(|s| RustlsStream(Box::new(s)))
                .map_err(|e| TlsFailure::from_io(&self.host, &self.params, &e))
        })
    }
}

/// A TLS session with a server.
pub struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_the_url() {
        let (rest, p) = split(
            "postgres://tally:pw@db.example:5432/fleet?sslmode=verify-full&sslrootcert=%2Fetc%2Ftally%2Fca.pem&application_name=x",
        )
        .expect("split");
        assert_eq!(
            rest,
            "postgres://tally:pw@db.example:5432/fleet?application_name=x&sslmode=require"
        );
        assert_eq!(p.mode, TlsMode::VerifyFull);
        assert_eq!(p.root_cert, Some(PathBuf::from("/etc/tally/ca.pem")));
        let (rest, p) = split("postgres://u@h/db").expect("split");
        assert_eq!(rest, "postgres://u@h/db?sslmode=prefer");
        assert_eq!(p.mode, TlsMode::Prefer);
        let (rest, p) = split("host=h dbname=d sslmode=disable").expect("kv");
        assert_eq!(rest, "host=h dbname=d sslmode=disable");
        assert_eq!(p.mode, TlsMode::Disable);
        // libpq: require with a CA file checks the chain.
        let (_, p) = split("postgres://u@h/db?sslmode=require&sslrootcert=ca.pem").expect("req");
        assert_eq!(p.mode, TlsMode::VerifyCa);
    }

    #[test]
    fn verify_without_a_ca_and_unknown_modes_name_the_parameter() {
        let e = split("postgres://u@h/db?sslmode=verify-full").expect_err("no CA");
        assert!(e.to_string().contains("needs sslrootcert=FILE"), "{e}");
        let e = split("postgres://u@h/db?sslmode=allow").expect_err("allow");
        assert!(
            e.to_string().contains("sslmode=allow is not supported"),
            "{e}"
        );
        let e = RustlsConnect::new(TlsParams {
            mode: TlsMode::VerifyCa,
            root_cert: Some(PathBuf::from("/nonexistent/ca.pem")),
        })
        .expect_err("missing file");
        assert!(
            e.to_string().contains("sslrootcert /nonexistent/ca.pem"),
            "{e}"
        );
    }
}
