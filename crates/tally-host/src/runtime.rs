//! Start-up and shutdown of a running host: the activation listener, the admin API, the DNS
//! publisher, the catalog watch and event retention, all stopped by one [`CancellationToken`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use crate::store::Storage;
use tally_core::Catalog;
use tally_core::host::{HostSession, Intervals};
use tally_core::time::{Clock, SystemClock};
use tally_server::HostService;
use tally_store::Store;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::HostConfig;
use crate::dns::DnsControl;
use crate::live::{LiveHost, Persisted};
use crate::{HostError, admin, catalog, dns, events, identity, retention, store};

/// A running host. Dropping it does not stop it: cancel the shutdown token given to
/// [`Host::start`], then [`Host::wait`].
pub struct Host {
    addr: SocketAddr,
    admin_addr: SocketAddr,
    listen: watch::Receiver<SocketAddr>,
    service: Arc<HostService>,
    server: JoinHandle<Result<(), HostError>>,
    /// One host per data directory, held until the host is dropped.
    _lock: crate::lock::DataDirLock,
}

impl Host {
    /// Starts a host: applies the settings persisted by live changes (R26) over `config`, runs
    /// dev mode's bootstrap if asked, opens the store (the single writer), binds the activation
    /// listener and the admin API, and starts DNS publishing, the catalog watch and retention.
    /// Everything stops when `shutdown` is cancelled.
    pub async fn start(config: HostConfig, shutdown: CancellationToken) -> Result<Self, HostError> {
        let dir = config.data_dir.clone();
        // Before anything is opened or bound: a second host on this directory is refused.
        let lock = crate::lock::DataDirLock::acquire(&dir)?;
        // X4: what an older Tally or a loose umask left too open is narrowed first (logged).
        crate::paths::tighten(&dir)?;
        let catalog = catalog::resolve(&dir, config.catalog.as_deref())?;
        // R26: settings changed live persist and win over the config file and the flags.
        let persisted = Persisted::load(&dir)?;
        let mut listen = config.listen;
        if let Some(l) = persisted.listen.as_deref().and_then(|l| l.parse().ok()) {
            listen = l;
        }
        if let Some(port) = persisted.port {
            listen.set_port(port);
        }
        let intervals = Intervals {
            activation_secs: persisted
                .activation_interval_secs
                .unwrap_or(config.intervals.activation_secs),
            renewal_secs: persisted
                .renewal_interval_secs
                .unwrap_or(config.intervals.renewal_secs),
        };
        // R26: a value changed live replaces the config file's or flag's; say so at start, so
        // an admin who passed `--listen` learns why it is not the one in use.
        for o in persisted.overrides(config.listen, listen, config.intervals, intervals) {
            warn!(
                setting = o.setting,
                configured = %o.configured,
                in_use = %o.in_use,
                file = %dir.join(crate::paths::SETTINGS_FILE).display(),
                "a setting changed live overrides the config file and flags; change it live again (tally host set ...) or delete the file to go back to them"
            );
        }
        let priority = persisted
            .priority
            .clone()
            .unwrap_or_else(|| "normal".to_owned());
        if priority != "normal"
            && let Err(error) = crate::priority::set_priority(&priority)
        {
            warn!(%error, "cannot apply the saved process priority");
        }
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        if config.dev {
            identity::dev_bootstrap(&dir, &catalog, clock.now())?;
        }
        let service = build_service(
            &dir,
            catalog,
            intervals,
            &config.storage(),
            clock,
            config.accept_bench,
        )
        .await?;
        // X8: the rollover statements this host's certificate chains through, for clients
        // that trust an older root.
        let chain = crate::rollover::relayed(&dir);
        if !chain.is_empty() {
            info!(
                statements = chain.len() / tally_core::rollover::STATEMENT_LEN,
                "relaying the root rollover to clients"
            );
            service.set_rollover(Arc::new(chain));
        }
        // X7: the list held is in force before the first request is answered.
        match crate::revocations::load(&dir) {
            Ok(held) if held.list().is_some() => {
                crate::revocations::apply(&service, held).await;
            }
            Ok(_) => {}
            Err(error) => warn!(
                error = %crate::error::chain(&error),
                "the revocation list in the data directory is refused; holding none until a valid one is imported"
            ),
        }
        // X5: the clock is checked before the host records anything on it (a host restarted
        // ten years ahead must not make its own start event the newest stored time).
        let mut clock_check = crate::clock::ClockCheck::default();
        let first = match clock_check.run(&service).await {
            Ok(checked) => Some(checked),
            Err(error) => {
                warn!(%error, "cannot check the clock at start");
                None
            }
        };
        let listener = bind_activation(listen).map_err(|source| HostError::Bind {
            addr: listen,
            what: "activation requests",
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| HostError::Bind {
            addr: listen,
            what: "activation requests",
            source,
        })?;
        let coverage = service.session().identity().coverage();
        info!(
            %addr,
            data_dir = %dir.display(),
            key_group = %coverage.group,
            generation = coverage.generation,
            activation_interval_secs = intervals.activation_secs,
            renewal_interval_secs = intervals.renewal_secs,
            "host started"
        );

        // DNS: on as configured, unless turned off live; never on without a [dns] section.
        let dns_on = persisted
            .dns_publish
            .map_or(config.dns_publish, |p| p && config.dns.is_some());
        let dns_control = match &config.dns {
            Some(section) => {
                let publication = dns::publication(section, &config.config_dir, addr)?;
                let (tx, rx) = watch::channel(DnsControl {
                    enabled: dns_on,
                    port: addr.port(),
                });
                tokio::spawn(dns::publish_loop(
                    publication,
                    dns::refresh(section),
                    dir.clone(),
                    Arc::clone(service.store()),
                    rx,
                    shutdown.clone(),
                ));
                Some(tx)
            }
            None => {
                dns::write_disabled_status(&dir);
                None
            }
        };

        let (rebind_tx, rebind_rx) = mpsc::channel(1);
        let (listen_tx, listen_rx) = watch::channel(addr);
        let settings = tally_admin::Settings {
            port: addr.port(),
            listen: addr.to_string(),
            activation_interval_secs: intervals.activation_secs,
            renewal_interval_secs: intervals.renewal_secs,
            dns_publish: dns_on,
            priority,
        };
        let control = Arc::new(LiveHost::new(
            settings,
            Arc::clone(&service),
            rebind_tx,
            dns_control,
            listen_tx,
            dir.clone(),
        ));
        let admin_addr = admin::serve(
            config.admin_listen,
            config.admin_tls.as_ref(),
            Arc::clone(&service),
            control,
            &dir,
            shutdown.clone(),
        )
        .await?;
        tokio::spawn(catalog::watch(
            dir.clone(),
            Arc::clone(&service),
            shutdown.clone(),
        ));
        tokio::spawn(crate::revocations::watch(
            dir.clone(),
            Arc::clone(&service),
            shutdown.clone(),
        ));
        if let Some(url) = config.revocations_url.clone() {
            tokio::spawn(crate::revocations::fetch_loop(
                dir.clone(),
                url,
                config.revocations_refresh,
                Arc::clone(&service),
                shutdown.clone(),
            ));
        }
        tokio::spawn(retention::prune_loop(
            Arc::clone(&service),
            retention::Retention {
                event_days: config.event_retention_days,
                registry_days: config.registry_retention_days,
            },
            clock_check,
            first,
            shutdown.clone(),
        ));
        let store = Arc::clone(service.store());
        let started = serde_json::json!({ "addr": addr.to_string() });
        events::record(&store, events::STARTED, "info", "host started", started).await;
        let server = tokio::spawn(serve(
            listener,
            Arc::clone(&service),
            config.server,
            shutdown,
            rebind_rx,
        ));
        Ok(Self {
            addr,
            admin_addr,
            listen: listen_rx,
            service,
            server,
            _lock: lock,
        })
    }

    /// The address the activation listener was bound to at start.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin API's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The activation listener's address, updated when a live port change rebinds it (R26).
    pub fn listen_changes(&self) -> watch::Receiver<SocketAddr> {
        self.listen.clone()
    }

    /// The activation service (session, store, counts).
    pub fn service(&self) -> &Arc<HostService> {
        &self.service
    }

    /// Waits until the host has stopped: shutdown was requested and the requests in flight
    /// were answered.
    pub async fn wait(self) -> Result<(), HostError> {
        self.server.await.map_err(HostError::Task)?
    }
}

/// Binds the activation listener with a deep backlog: under a connection flood the kernel's
/// queue of completed handshakes must not overflow before the accept loop (which never waits)
/// takes them, or new clients' connections are dropped with the attackers' (X4).
fn bind_activation(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Runs the activation listener until shutdown, then records the stop (event 1001).
async fn serve(
    listener: TcpListener,
    service: Arc<HostService>,
    config: tally_server::ServerConfig,
    shutdown: CancellationToken,
    rebind: mpsc::Receiver<TcpListener>,
) -> Result<(), HostError> {
    let store = Arc::clone(service.store());
    tally_server::run_rebindable(listener, service, config, shutdown, Some(rebind)).await?;
    events::record(
        &store,
        events::STOPPED,
        "info",
        "host stopped",
        serde_json::json!({}),
    )
    .await;
    info!("host stopped");
    Ok(())
}

/// Builds a ready activation service for the identity in `dir`, on the store's single writer.
/// The one place a host's [`HostService`] is opened (the demo uses it too).
pub async fn build_service(
    dir: &Path,
    catalog: Catalog,
    intervals: Intervals,
    storage: &Storage,
    clock: Arc<dyn Clock>,
    accept_bench: bool,
) -> Result<Arc<HostService>, HostError> {
    let identity = identity::load_identity(dir)?;
    let served_by = storage
        .host_name
        .clone()
        .unwrap_or_else(|| name_of(&identity));
    let session = Arc::new(
        HostSession::new(Arc::new(catalog), identity, intervals)
            .accepting_bench(accept_bench)
            .with_clone_policy(storage.clones),
    );
    let store: Arc<dyn Store> = store::open_writer(
        dir,
        &storage.database,
        storage.durability,
        &served_by,
        storage.options,
    )
    .await?;
    // Later commands on this data directory find the database without the flag (issue 21).
    crate::remember::record(dir, &storage.database)?;
    info!(database = ?storage.database, host_name = %served_by, "store opened");
    Ok(Arc::new(HostService::open(session, store, clock).await?))
}

/// A host's default name in a fleet: the machine name and the first 8 hex digits of its
/// certificate's fingerprint.
fn name_of(identity: &tally_core::trust::HostIdentity) -> String {
    let fingerprint = tally_core::hex::to_hex(&identity.fingerprint());
    format!(
        "{}-{}",
        store::machine_name(),
        fingerprint.get(..8).unwrap_or(&fingerprint)
    )
}

/// The default name of the host in `dir` (see `host_name` in the config).
pub fn default_host_name(dir: &Path) -> Result<String, HostError> {
    Ok(name_of(&identity::load_identity(dir)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    // A dev host starts on free ports, records its start and stop (R27), and stops on the
    // shutdown token; read-only queries see what it wrote.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dev_host_starts_and_stops_on_the_token() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let overrides = Overrides {
            data_dir: Some(tmp.path().join("host")),
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            dev: true,
            ..Overrides::default()
        };
        let config = HostConfig::load(None, overrides).expect("config");
        let dir = config.data_dir.clone();
        let shutdown = CancellationToken::new();
        let host = Host::start(config, shutdown.clone()).await.expect("start");
        assert_ne!(host.addr().port(), 0);
        assert!(host.admin_addr().ip().is_loopback());
        assert!(dir.join(crate::paths::ADMIN_ADDR_FILE).exists());
        shutdown.cancel();
        host.wait().await.expect("stopped");
        let events = crate::query::events(
            &dir,
            &crate::store::Database::Embedded,
            tally_store::EventQuery {
                since: None,
                event_id: None,
                limit: 10,
            },
        )
        .await
        .expect("events");
        let ids: Vec<u32> = events.iter().map(|e| e.event_id).collect();
        assert!(
            ids.contains(&events::STARTED) && ids.contains(&events::STOPPED),
            "{ids:?}"
        );
    }
}
