//! PostgreSQL plumbing shared by the stores that run on PostgreSQL (the authority's, and the
//! host fleet's): a connection pool that finds the read-write server among several, bounded
//! timeouts so a down database gives an error instead of a hang, and retries of transactions
//! that PostgreSQL aborted to keep them serializable.
//!
//! URLs are libpq's, as parsed by tokio-postgres:
//! `postgres://USER[:PASSWORD]@HOST[:PORT][,HOST[:PORT]…]/DATABASE[?target_session_attrs=read-write]`.
//! With several hosts, each connection tries them in order; `target_session_attrs=read-write`
//! skips a standby, so after a failover the promoted standby is found by the next connection.
//!
//! TLS (rustls) is configured as in libpq: `sslmode=disable|prefer|require|verify-ca|verify-full`
//! and `sslrootcert=CA.pem`, e.g.
//! `postgres://tally@db.example:5432/fleet?sslmode=verify-full&sslrootcert=/etc/tally/ca.pem`;
//! see [`crate::pg_tls`] for what each mode checks.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType,
    Timeouts,
};
use thiserror::Error;
use tokio_postgres::Config;
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;

use crate::DbError;
use crate::pg_tls::{self, RustlsConnect, TlsConfigError, TlsFailure};

/// How long one attempt to reach one server may take (unless the URL sets `connect_timeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a caller waits for a pooled connection (creating one included).
pub const POOL_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections per pool.
pub const POOL_SIZE: usize = 16;
/// Attempts of a transaction that PostgreSQL aborted as a serialization failure or deadlock.
pub const RETRY_ATTEMPTS: u32 = 8;

/// `idle_in_transaction_session_timeout` of every Tally session: PostgreSQL ends a session that
/// sits inside a transaction this long without sending anything. A host that loses power, is
/// cut off, or is frozen (SIGSTOP, a paused VM) while it holds a pool's row lock would otherwise
/// keep the lock until the server's TCP keepalive gives up (about two hours on Linux defaults;
/// never, for a frozen process whose kernel still answers), and every other host of the fleet
/// would wait on it. Tally's own transactions never idle: between their two round trips a host
/// only counts (microseconds), so 5 s is far beyond any healthy pause.
pub const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(5);
/// `statement_timeout` of every Tally session: bounds any statement (a read over a huge registry
/// included). Far above a batch's own bounds (the host stops waiting for a `COMMIT`'s reply
/// after 2 s and checks the batch's token instead), and deliberately so: a `COMMIT` cancelled
/// while it waits for a synchronous standby returns *success* with only a warning, committed
/// locally but not replicated; a short limit would make a host acknowledge exactly that.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// TCP keepalive (idle, interval, count) and `tcp_user_timeout` of every session, set on both
/// ends: the server notices a dead host, and the host a dead server, within seconds.
pub const TCP_KEEPALIVE: (Duration, Duration, u32) =
    (Duration::from_secs(5), Duration::from_secs(1), 3);
/// See [`TCP_KEEPALIVE`].
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(5);

/// The server-side limits every Tally session sets at connect (libpq's `options`).
fn session_options() -> String {
    let ms = |d: Duration| d.as_millis();
    let (idle, interval, count) = TCP_KEEPALIVE;
    format!(
        "-c idle_in_transaction_session_timeout={} -c statement_timeout={} \
         -c tcp_keepalives_idle={} -c tcp_keepalives_interval={} -c tcp_keepalives_count={count} \
         -c tcp_user_timeout={}",
        ms(IDLE_IN_TRANSACTION_TIMEOUT),
        ms(STATEMENT_TIMEOUT),
        idle.as_secs(),
        interval.as_secs(),
        ms(TCP_USER_TIMEOUT),
    )
}

/// What went wrong talking to PostgreSQL; carried as the source of a [`DbError`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PgError {
    /// The URL does not parse.
    #[error(
        "bad database URL ({reason}); expected postgres://USER[:PASSWORD]@HOST[:PORT][,HOST[:PORT]...]/DATABASE"
    )]
    Url {
        /// Why (tokio-postgres's message; it never contains the password).
        reason: String,
    },
    /// The URL's TLS settings cannot work (`sslmode`, `sslrootcert`).
    #[error("{0}")]
    TlsConfig(TlsConfigError),
    /// The TLS handshake with a server failed: a wrong CA, a wrong host name, an expired
    /// certificate, a server without TLS. Says what to check.
    #[error("TLS to PostgreSQL at {servers} failed: {cause}")]
    Tls {
        /// The servers tried, never the password.
        servers: String,
        /// What is wrong and what to check.
        cause: String,
    },
    /// The server refused the session because it is not encrypted (`hostssl` in pg_hba.conf).
    #[error(
        "PostgreSQL at {servers} refused an unencrypted connection ({cause}); the server requires TLS: connect with sslmode=verify-full&sslrootcert=CA.pem in the URL"
    )]
    TlsRequired {
        /// The servers tried, never the password.
        servers: String,
        /// The server's message.
        cause: String,
    },
    /// The server refused to authenticate the user: a wrong or missing password, or no
    /// `pg_hba.conf` line for this machine and user. Says what to fix (see
    /// [`crate::remembered::explain`], which names the file the password came from).
    #[error("PostgreSQL at {servers} {problem} user \"{user}\"; {advice}")]
    Auth {
        /// The servers tried, never the password.
        servers: String,
        /// The user name of the URL.
        user: String,
        /// What the server said no to.
        problem: AuthProblem,
        /// What to do about it.
        advice: String,
    },
    /// Every connection of the pool stayed busy while a caller waited for one: the pool is
    /// exhausted (slow queries, a lock held by a stalled host, more work at once than the pool
    /// has connections). The database itself may well answer.
    #[error(
        "the connection pool to PostgreSQL at {servers} is exhausted: all {size} connections stayed busy for {waited_ms} ms (slow queries, a lock held by a stalled host, or more work at once than the pool holds)"
    )]
    PoolExhausted {
        /// The servers, never the password.
        servers: String,
        /// The pool's connections.
        size: usize,
        /// How long the caller waited.
        waited_ms: u128,
    },
    /// No server answered as read-write in time.
    #[error(
        "no read-write PostgreSQL server answered at {servers} ({cause}); check that the server runs and accepts connections from this machine, and the URL given with --database or TALLY_DATABASE_URL"
    )]
    Unreachable {
        /// The servers tried (`host:port, …/database`), never the password.
        servers: String,
        /// What the last attempt saw.
        cause: String,
    },
}

/// Why a server refused to authenticate a user (issue 21 part 6).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthProblem {
    /// The server asked for a password and the URL has none.
    Missing,
    /// The password is wrong (SQLSTATE 28P01).
    Wrong,
    /// The server refused the user from this machine (28000, e.g. no `pg_hba.conf` line);
    /// the server's own message.
    Refused(String),
}

impl std::fmt::Display for AuthProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing => f.write_str("asks for a password and none was given for"),
            Self::Wrong => f.write_str("refused the password (wrong password) of"),
            Self::Refused(why) => write!(f, "refused ({why})"),
        }
    }
}

/// The advice of an [`PgError::Auth`] when nothing more is known about the password's origin.
fn auth_advice(problem: &AuthProblem) -> String {
    match problem {
        AuthProblem::Refused(_) => "allow this machine and user in the server's pg_hba.conf (a host line with scram-sha-256), then reload it".to_owned(),
        _ => "give the right password in the URL, postgres://USER:PASSWORD@HOST/DB, with --database or TALLY_DATABASE_URL".to_owned(),
    }
}

/// Opens a pool of [`POOL_SIZE`] connections on the database at `url` and checks that a
/// read-write server answers.
///
/// Fails within about [`POOL_TIMEOUT`] when no server does, with an error naming the servers.
/// Connections found broken are dropped when they go back to the pool (`Verified` recycling),
/// so after a failover new connections go to the server that is now read-write.
pub async fn connect(url: &str) -> Result<Pool, DbError> {
    connect_sized(url, POOL_SIZE).await
}

/// As [`connect`], with at most `size` connections (at least one).
pub async fn connect_sized(url: &str, size: usize) -> Result<Pool, DbError> {
    let (rest, tls) =
        pg_tls::split(url).map_err(|e| open_error(&describe(url), PgError::TlsConfig(e)))?;
    let mut config =
        Config::from_str(&rest).map_err(|e| open_error(&describe(url), url_error(&e)))?;
    let servers = servers(&config);
    let user = config.get_user().unwrap_or("postgres").to_owned();
    let tls = RustlsConnect::new(tls).map_err(|e| open_error(&servers, PgError::TlsConfig(e)))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("tally");
    }
    // A server that vanishes without closing the connection (power loss, partition) is noticed
    // by the kernel within seconds instead of TCP's default of many minutes; and the server
    // notices a vanished host the same way, and ends its transactions (issue 21).
    let (idle, interval, count) = TCP_KEEPALIVE;
    config.tcp_user_timeout(TCP_USER_TIMEOUT);
    config.keepalives_idle(idle);
    config.keepalives_interval(interval);
    config.keepalives_retries(count);
    let options = match config.get_options() {
        Some(given) => format!("{} {given}", session_options()),
        None => session_options(),
    };
    config.options(&options);
    let manager = Manager::from_config(
        config,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Verified,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(size.max(1))
        .timeouts(Timeouts {
            wait: Some(POOL_TIMEOUT),
            create: Some(POOL_TIMEOUT),
            recycle: Some(POOL_TIMEOUT),
        })
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| {
            open_error(
                &servers,
                PgError::Url {
                    reason: e.to_string(),
                },
            )
        })?;
    // Fail now, not at the first request, when no server answers; the connection goes back
    // to the pool for the first request.
    let first = client(&pool, &servers).await.map_err(|e| match e {
        DbError::Backend { source, .. } => DbError::Open {
            path: servers.clone(),
            source: with_user(source, &user),
        },
        other => other,
    })?;
    drop(first);
    Ok(pool)
}

/// An authentication error names the URL's user (the pool does not know it).
fn with_user(
    source: Arc<dyn std::error::Error + Send + Sync>,
    user: &str,
) -> Arc<dyn std::error::Error + Send + Sync> {
    match source.downcast_ref::<PgError>() {
        Some(PgError::Auth {
            servers,
            problem,
            advice,
            ..
        }) => Arc::new(PgError::Auth {
            servers: servers.clone(),
            user: user.to_owned(),
            problem: problem.clone(),
            advice: advice.clone(),
        }),
        _ => source,
    }
}

/// The servers and database a URL names, for messages: `127.0.0.1:5432, 10.0.0.2:5432/tally`.
/// Never contains the user's password. A URL that does not parse gives `(bad database URL)`.
pub fn describe(url: &str) -> String {
    Config::from_str(&pg_tls::without_tls_params(url))
        .map_or_else(|_| "(bad database URL)".to_owned(), |c| servers(&c))
}

fn servers(config: &Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            // libpq: one port for every host, or one per host; 5432 when none.
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match h {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(dir) => format!("{}:{port}", dir.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432".to_owned()
    } else {
        hosts.join(", ")
    };
    format!("{hosts}/{}", config.get_dbname().unwrap_or("postgres"))
}

fn url_error(e: &tokio_postgres::Error) -> PgError {
    PgError::Url {
        reason: e.to_string(),
    }
}

fn open_error(servers: &str, e: PgError) -> DbError {
    DbError::Open {
        path: servers.to_owned(),
        source: Arc::new(e),
    }
}

/// A connection from `pool` (`servers` is [`describe`]'s text, for the error), within
/// [`POOL_TIMEOUT`]. The error says which servers were tried and what to check.
pub async fn client(pool: &Pool, servers: &str) -> Result<Object, DbError> {
    pool.get().await.map_err(|e| pool_error(pool, servers, e))
}

/// What [`client`] says when `pool` gave no connection: [`PgError::PoolExhausted`] when every
/// connection stayed busy (waiting for a free slot timed out), else why no connection could be
/// made (unreachable, TLS, authentication).
pub fn pool_error(pool: &Pool, servers: &str, e: PoolError) -> DbError {
    let servers = servers.to_owned();
    let source = match &e {
        PoolError::Timeout(TimeoutType::Wait) => PgError::PoolExhausted {
            servers,
            size: pool.status().max_size,
            waited_ms: pool.timeouts().wait.unwrap_or(POOL_TIMEOUT).as_millis(),
        },
        PoolError::Timeout(_) => PgError::Unreachable {
            servers,
            cause: format!("no connection within {POOL_TIMEOUT:?}"),
        },
        PoolError::Backend(b) => backend_error(servers, b),
        other => PgError::Unreachable {
            servers,
            cause: other.to_string(),
        },
    };
    DbError::Backend {
        operation: "connect",
        source: Arc::new(source),
    }
}

/// A connection attempt's error, as the operator needs it: a TLS failure says what is wrong with
/// the certificate; a server that wants TLS says so; anything else is "unreachable".
fn backend_error(servers: String, e: &tokio_postgres::Error) -> PgError {
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(inner) = next {
        if let Some(failure) = inner.downcast_ref::<TlsFailure>() {
            return PgError::Tls {
                servers,
                cause: failure.to_string(),
            };
        }
        if inner.to_string() == "server does not support TLS" {
            return PgError::Tls {
                servers,
                cause: "the server does not accept TLS connections; turn on ssl in its \
                        postgresql.conf (ssl = on, ssl_cert_file, ssl_key_file), or, on a \
                        trusted network only, use sslmode=disable"
                    .to_owned(),
            };
        }
        next = inner.source();
    }
    if let Some(db) = e.as_db_error()
        && *db.code() == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        && db.message().contains("no encryption")
    {
        return PgError::TlsRequired {
            servers,
            cause: db.message().to_owned(),
        };
    }
    if let Some(problem) = auth_problem(e) {
        let advice = auth_advice(&problem);
        return PgError::Auth {
            servers,
            // Filled in by `connect`, which knows the URL.
            user: String::new(),
            problem,
            advice,
        };
    }
    PgError::Unreachable {
        servers,
        cause: e.to_string(),
    }
}

/// Whether a connection attempt failed on authentication, and how.
fn auth_problem(e: &tokio_postgres::Error) -> Option<AuthProblem> {
    if let Some(db) = e.as_db_error() {
        if *db.code() == SqlState::INVALID_PASSWORD {
            return Some(AuthProblem::Wrong);
        }
        if *db.code() == SqlState::INVALID_AUTHORIZATION_SPECIFICATION {
            return Some(AuthProblem::Refused(db.message().to_owned()));
        }
        return None;
    }
    // tokio-postgres's own error when the server asks for a password the config lacks.
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(inner) = next {
        if inner.to_string() == "password missing" {
            return Some(AuthProblem::Missing);
        }
        next = inner.source();
    }
    None
}

/// Whether PostgreSQL aborted the transaction only because of concurrent ones, so running it
/// again is right: `serialization_failure` (40001) or `deadlock_detected` (40P01).
pub fn is_retryable(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    })
}

/// An error that may say "run the transaction again".
pub trait Retryable {
    /// Whether the failed transaction should simply be run again.
    fn is_retryable(&self) -> bool;
}

impl Retryable for tokio_postgres::Error {
    fn is_retryable(&self) -> bool {
        is_retryable(self)
    }
}

/// Runs `transaction` until it does not fail with a retryable error, at most
/// [`RETRY_ATTEMPTS`] times, with a short growing pause between attempts so that the
/// transactions that collided do not collide again at once. The closure must run the whole
/// transaction (begin to commit), so a retry starts from scratch.
pub async fn retry<T, E, F, Fut>(mut transaction: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Retryable,
{
    let mut attempt = 1;
    loop {
        match transaction().await {
            Err(e) if e.is_retryable() && attempt < RETRY_ATTEMPTS => {
                tracing::debug!(attempt, "transaction retried after a serialization failure");
                // Spread the retries: 2, 4, 8 … ms plus a per-attempt offset from the clock.
                let jitter = u64::from(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.subsec_micros())
                        % 1000,
                );
                let pause =
                    Duration::from_millis(1 << attempt.min(7)) + Duration::from_micros(jitter);
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_names_every_server_and_never_the_password() {
        let d = describe(
            "postgres://tally:s3cret@10.0.0.1:5433,10.0.0.2:5434/authority?target_session_attrs=read-write",
        );
        assert_eq!(d, "10.0.0.1:5433, 10.0.0.2:5434/authority");
        assert!(!d.contains("s3cret"));
        assert_eq!(describe("postgres://u@db/x"), "db:5432/x");
        assert_eq!(describe("not a url ::"), "(bad database URL)");
        assert_eq!(
            describe("postgres://u:pw@db/x?sslmode=verify-full&sslrootcert=%2Fca.pem"),
            "db:5432/x"
        );
        assert_eq!(
            describe("postgres://u@db/x?sslmode=verify-full"),
            "db:5432/x"
        );
    }

    #[tokio::test]
    async fn a_bad_url_and_a_verify_url_without_a_ca_are_refused_with_advice() {
        let e = connect("postgres://u@h:notaport/db")
            .await
            .expect_err("bad");
        assert!(e.to_string().contains("bad database URL"), "{e}");
        let e = connect("postgres://u:pw@127.0.0.1:1/db?sslmode=verify-full")
            .await
            .expect_err("tls");
        assert!(e.to_string().contains("needs sslrootcert=FILE"), "{e}");
        assert!(!e.to_string().contains("pw@"), "{e}");
    }

    // X3: a database that is not there gives an error quickly, naming the server.
    #[tokio::test]
    async fn a_down_database_fails_fast_with_the_server_named() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let started = std::time::Instant::now();
        let e = connect(&format!("postgres://tally:hunter2@127.0.0.1:{port}/db"))
            .await
            .expect_err("down");
        assert!(started.elapsed() < Duration::from_secs(4));
        let text = e.to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(text.contains("check that the server runs"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[derive(Debug)]
    struct Flaky(bool);

    impl Retryable for Flaky {
        fn is_retryable(&self) -> bool {
            self.0
        }
    }

    #[tokio::test]
    async fn retry_repeats_only_retryable_failures_and_is_bounded() {
        let mut n = 0;
        let r: Result<u32, Flaky> = retry(|| {
            n += 1;
            let v = n;
            async move { if v < 3 { Err(Flaky(true)) } else { Ok(v) } }
        })
        .await;
        assert_eq!(r.ok(), Some(3));
        let mut n = 0;
        let r: Result<(), Flaky> = retry(|| {
            n += 1;
            async { Err(Flaky(false)) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(n, 1);
        let mut n = 0;
        let r: Result<(), Flaky> = retry(|| {
            n += 1;
            async { Err(Flaky(true)) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(n, RETRY_ATTEMPTS);
    }
}
