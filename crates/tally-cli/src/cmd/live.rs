//! The running host's live settings (R26), its admin API and metrics: what `tally host run`
//! starts besides the activation listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use async_trait::async_trait;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use tally_admin::{HostControl, Settings, SettingsChange};
use tally_core::host::Intervals;
use tally_server::HostService;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::cmd::host::record_event;

/// File of the settings changed live; they persist across restarts and win over the config.
pub const SETTINGS_FILE: &str = "settings.json";
/// File holding the admin token (mode 0600).
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// File where the running host writes its admin URL.
pub const ADMIN_ADDR_FILE: &str = "admin.addr";
/// Copy of the admin TLS certificate, for local commands to trust.
pub const ADMIN_CERT_FILE: &str = "admin-cert.pem";
/// Event id: a setting changed (R26).
pub const EVENT_SETTING_CHANGED: u32 = 1002;

/// Settings changed live, as persisted.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Persisted {
    /// Port.
    pub port: Option<u16>,
    /// Listen address.
    #[serde(default)]
    pub listen: Option<String>,
    /// Seconds.
    pub activation_interval_secs: Option<u32>,
    /// Seconds.
    pub renewal_interval_secs: Option<u32>,
    /// DNS publishing.
    pub dns_publish: Option<bool>,
    /// `normal` or `low`.
    pub priority: Option<String>,
}

impl Persisted {
    /// Reads DATA_DIR/settings.json (empty when missing).
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        match std::fs::read(dir.join(SETTINGS_FILE)) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("{} is damaged", dir.join(SETTINGS_FILE).display())),
            Err(_) => Ok(Self::default()),
        }
    }

    fn save(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(format!(".{SETTINGS_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).unwrap_or_default())?;
        std::fs::rename(tmp, dir.join(SETTINGS_FILE))
    }
}

/// What the DNS publisher should do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsControl {
    /// Publish or not.
    pub enabled: bool,
    /// The port to publish.
    pub port: u16,
}

/// R26: lowers or restores the process priority (nice 10 or 0).
pub fn set_priority(priority: &str) -> Result<(), String> {
    let nice = match priority {
        "low" => 10,
        "normal" => 0,
        other => return Err(format!("priority is `low` or `normal`, not `{other}`")),
    };
    // On Linux a nice value belongs to a thread: set it on every thread of the process (threads
    // made later inherit it from the thread that makes them).
    let tids: Vec<u32> = std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for tid in tids {
        // SAFETY: setpriority only reads its integer arguments (which thread, which value); no
        // memory is passed to the kernel.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
        if rc != 0 {
            return Err(format!(
                "cannot set priority {priority}: {} (raising it back needs root)",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// The running host as the admin API sees it.
pub struct LiveHost {
    settings: Mutex<Settings>,
    service: Arc<HostService>,
    rebind: mpsc::Sender<TcpListener>,
    dns: Option<watch::Sender<DnsControl>>,
    dir: PathBuf,
}

impl LiveHost {
    /// A live host with `settings` in force.
    pub fn new(
        settings: Settings,
        service: Arc<HostService>,
        rebind: mpsc::Sender<TcpListener>,
        dns: Option<watch::Sender<DnsControl>>,
        dir: PathBuf,
    ) -> Self {
        Self {
            settings: Mutex::new(settings),
            service,
            rebind,
            dns,
            dir,
        }
    }

    fn current(&self) -> Settings {
        self.settings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn check_interval(name: &str, secs: u32) -> Result<u32, String> {
    if (1..=365 * 86_400).contains(&secs) {
        Ok(secs)
    } else {
        Err(format!("{name} must be between 1 second and 1 year"))
    }
}

#[async_trait]
impl HostControl for LiveHost {
    fn settings(&self) -> Settings {
        self.current()
    }

    async fn apply(&self, change: SettingsChange) -> Result<Settings, String> {
        let mut next = self.current();
        if let Some(s) = change.activation_interval_secs {
            next.activation_interval_secs = check_interval("activation interval", s)?;
        }
        if let Some(s) = change.renewal_interval_secs {
            next.renewal_interval_secs = check_interval("renewal interval", s)?;
        }
        if let Some(p) = &change.priority {
            set_priority(p)?;
            next.priority = p.clone();
        }
        if let Some(on) = change.dns_publish {
            if self.dns.is_none() && on {
                return Err("DNS publishing needs a [dns] section in the host config".into());
            }
            next.dns_publish = on;
        }
        if change.port.is_some() || change.listen.is_some() {
            let old: SocketAddr = next
                .listen
                .parse()
                .map_err(|e| format!("listen address: {e}"))?;
            let mut new = match &change.listen {
                Some(l) => l
                    .parse::<SocketAddr>()
                    .map_err(|e| format!("listen address '{l}': {e}"))?,
                None => old,
            };
            if let Some(port) = change.port {
                new.set_port(port);
            }
            if new != old {
                // Bind first: a port that cannot be taken changes nothing.
                let listener = TcpListener::bind(new)
                    .await
                    .map_err(|e| format!("cannot listen on {new}: {e}"))?;
                let bound = listener.local_addr().map_err(|e| e.to_string())?;
                self.rebind
                    .send(listener)
                    .await
                    .map_err(|_| "the host is stopping".to_owned())?;
                next.port = bound.port();
                next.listen = bound.to_string();
                println!("tally host listening on {bound}");
            }
        }
        self.service.set_intervals(Intervals {
            activation_secs: next.activation_interval_secs,
            renewal_secs: next.renewal_interval_secs,
        });
        if let Some(dns) = &self.dns {
            let _ = dns.send(DnsControl {
                enabled: next.dns_publish,
                port: next.port,
            });
        }
        let persisted = Persisted {
            port: Some(next.port),
            listen: Some(next.listen.clone()),
            activation_interval_secs: Some(next.activation_interval_secs),
            renewal_interval_secs: Some(next.renewal_interval_secs),
            dns_publish: Some(next.dns_publish),
            priority: Some(next.priority.clone()),
        };
        persisted
            .save(&self.dir)
            .map_err(|e| format!("cannot save the settings: {e}"))?;
        *self.settings.lock().unwrap_or_else(PoisonError::into_inner) = next.clone();
        info!(?change, "setting changed");
        let data = serde_json::to_value(&change).unwrap_or_default();
        record_event(
            self.service.store(),
            EVENT_SETTING_CHANGED,
            "info",
            "setting changed",
            data,
        )
        .await;
        Ok(next)
    }

    fn dns_state(&self) -> serde_json::Value {
        let mut v: serde_json::Value =
            std::fs::read(self.dir.join(crate::cmd::host::DNS_STATUS_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_else(|| serde_json::json!({}));
        v["enabled"] = serde_json::Value::Bool(self.current().dns_publish);
        v
    }
}

/// Installs the Prometheus recorder (once per process).
pub fn install_metrics() -> Option<PrometheusHandle> {
    let buckets = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    ];
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets);
    match builder.map(PrometheusBuilder::install_recorder) {
        Ok(Ok(handle)) => {
            use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
            describe_counter!(
                "tally_requests_total",
                "Activation requests answered, by result."
            );
            describe_histogram!(
                "tally_request_duration_seconds",
                Unit::Seconds,
                "Time to answer one request."
            );
            describe_histogram!(
                "tally_store_commit_seconds",
                Unit::Seconds,
                "Time for a request's changes to become durable."
            );
            describe_gauge!("tally_connections_open", "Client connections open now.");
            describe_gauge!(
                "tally_pool_clients",
                "Live entries of a pool's table: its count (R2-R4)."
            );
            describe_gauge!("tally_pool_table_size", "A pool's table capacity (R5).");
            describe_gauge!(
                "tally_dns_publish_ok",
                "1 when DNS publishing is on and the last attempt succeeded."
            );
            Some(handle)
        }
        Ok(Err(error)) => {
            warn!(%error, "metrics are off");
            None
        }
        Err(error) => {
            warn!(%error, "metrics are off");
            None
        }
    }
}

/// The admin token in DATA_DIR/admin.token, made on first use (mode 0600).
pub fn admin_token(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join(ADMIN_TOKEN_FILE);
    if let Ok(t) = std::fs::read_to_string(&path) {
        return Ok(t.trim().to_owned());
    }
    let bytes: [u8; 32] = rand::RngExt::random(&mut rand::rng());
    let token = tally_core::trust::to_hex(&bytes);
    tally_authority::dir::write_private(&path, &format!("{token}\n"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(token)
}
