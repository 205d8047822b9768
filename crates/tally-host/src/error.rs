//! The host runtime's one error type.

use std::net::SocketAddr;
use std::path::PathBuf;

use thiserror::Error;

/// Why a host operation failed. The messages say what to do where there is something to do.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HostError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file or directory could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has an unknown key.
    #[error("config {path} is not valid")]
    ConfigSyntax {
        /// The config file.
        path: PathBuf,
        /// The parser's message.
        #[source]
        source: toml::de::Error,
    },
    /// A setting, argument or file content is not usable; the message says which and why.
    #[error("{0}")]
    Invalid(String),
    /// A catalog file is not valid, or its signature does not verify.
    #[error("{what}")]
    Catalog {
        /// Which catalog (its path, or what it was checked against).
        what: String,
        /// Why.
        #[source]
        source: tally_core::catalog::CatalogError,
    },
    /// A key or certificate file is damaged.
    #[error("{path}")]
    FileFormat {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: tally_core::trust::FileFormatError,
    },
    /// A key is not a valid product key.
    #[error("that is not a valid key")]
    Key(#[from] tally_core::keys::KeyError),
    /// The host has no key and certificate yet.
    #[error(
        "no host identity in {}: run `tally host run --dev` to try Tally, or `tally host init` \
         and have the authority certify host.pub (`tally authority certify`), then \
         `tally host install-cert`",
        .0.display()
    )]
    NoIdentity(PathBuf),
    /// A read command found no database: the host never ran in this data directory.
    #[error("no host database in {}: start the host there first (`tally host run`)", .0.display())]
    NoDatabase(PathBuf),
    /// The certificate does not belong with this host's key, or does not verify.
    #[error("{0}")]
    Certificate(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] tally_store::StoreError),
    /// Moving a host's data into a fleet database was refused or failed (nothing was moved).
    #[error(transparent)]
    Move(#[from] tally_store::to_fleet::MoveError),
    /// The database the data directory remembers cannot be read or recorded.
    #[error(transparent)]
    Remember(#[from] tally_store::remembered::RememberError),
    /// The activation server failed.
    #[error(transparent)]
    Server(#[from] tally_server::ServerError),
    /// The local (dev) authority failed.
    #[error(transparent)]
    Authority(#[from] tally_authority::AuthorityError),
    /// The authority's HTTP API failed or refused.
    #[error(transparent)]
    AuthorityApi(#[from] tally_client::authority::AuthorityClientError),
    /// DNS configuration (the TSIG key, names) is not usable.
    #[error(transparent)]
    Dns(#[from] tally_dns::DnsError),
    /// A listening socket could not be opened.
    #[error("cannot listen on {addr} for {what} (port in use, or needs privileges?)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which listener.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The host's server task ended abnormally.
    #[error("the host's server task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// An error and its sources on one line, each cause once (for log fields and messages).
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    tally_core::error_text::chain(error)
}

impl HostError {
    /// A [`HostError::Read`] for `path`.
    pub(crate) fn read(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Read { path, source }
    }

    /// A [`HostError::Write`] for `path`.
    pub(crate) fn write(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Write { path, source }
    }

    /// A [`HostError::FileFormat`] for `path`.
    pub(crate) fn format(
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(tally_core::trust::FileFormatError) -> Self {
        let path = path.into();
        move |source| Self::FileFormat { path, source }
    }
}
