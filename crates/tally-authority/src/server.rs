//! `tally authority run` as a library: the authority's HTTP service on a directory, bound and
//! then served until a shutdown token is cancelled. The binary parses flags, prints the address
//! and installs the signal handler.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tally_core::time::Clock;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::AuthorityError;
use crate::{dir, http};

/// Why the authority could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The directory's keys or database could not be opened.
    #[error(transparent)]
    Open(AuthorityError),
    /// The database URL could not be remembered in the directory.
    #[error(transparent)]
    Remember(#[from] tally_db::remembered::RememberError),
    /// The operator token could not be read.
    #[error("cannot read the operator token in {dir} (tally authority init writes it)")]
    Token {
        /// The authority directory.
        dir: String,
        /// Why.
        #[source]
        source: AuthorityError,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address asked.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// An authority bound to its address, not yet serving.
pub struct Bound {
    listener: TcpListener,
    addr: SocketAddr,
    router: axum::Router,
}

/// Opens the authority in `dir` on `database` (its SQLite file when `None`), remembers a
/// PostgreSQL URL there so later commands on `dir` find it (issue 21), and binds `listen`.
pub async fn bind(
    dir_path: &Path,
    database: Option<&str>,
    listen: SocketAddr,
    clock: Arc<dyn Clock>,
) -> Result<Bound, ServeError> {
    let service = Arc::new(
        dir::open_service_on(dir_path, database, clock)
            .await
            .map_err(ServeError::Open)?,
    );
    dir::remember_database(dir_path, database)?;
    let token = dir::operator_token(dir_path).map_err(|source| ServeError::Token {
        dir: dir_path.display().to_string(),
        source,
    })?;
    let router = http::app(http::AppState {
        service,
        operator_token: Arc::from(token.as_str()),
    });
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: listen,
        source,
    })?;
    Ok(Bound {
        listener,
        addr,
        router,
    })
}

impl Bound {
    /// The address bound (the port chosen when 0 was asked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` is cancelled, with header, body and idle deadlines, connection
    /// caps and a body cap (X4): the authority is internet-facing. Behind a TLS proxy all
    /// connections come from the proxy's address, so the per-source cap is the global one
    /// there.
    pub async fn serve(self, shutdown: CancellationToken) {
        http::serve(self.listener, self.router, http::default_limits(), shutdown).await;
    }
}
