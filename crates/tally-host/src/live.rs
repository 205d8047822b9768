//! The running host's live settings (R26): the one seam the admin API changes them through
//! ([`HostControl`]). A port change binds the new listener before switching (a port that cannot
//! be taken changes nothing); the intervals are swapped in the session; the DNS publisher is
//! signalled; the result persists in `settings.json` and wins over the config at the next start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tally_admin::{HostControl, Settings, SettingsChange};
use tally_core::host::Intervals;
use tally_server::HostService;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::info;

use crate::dns::DnsControl;
use crate::priority::set_priority;
use crate::{HostError, events, paths};

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
    /// Reads DATA_DIR/settings.json (empty when missing). A file that cannot be read, does not
    /// parse or holds a value the admin API would refuse stops the start, naming the file.
    pub fn load(dir: &Path) -> Result<Self, HostError> {
        let path = dir.join(paths::SETTINGS_FILE);
        let bad = |why: String| {
            HostError::Invalid(format!(
                "{}: {why} (these are the settings changed live; fix the file, or delete it to go back to the config file and flags)",
                path.display()
            ))
        };
        let persisted: Self = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| bad(format!("damaged: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(bad(format!("cannot be read: {e}"))),
        };
        for (name, secs) in [
            (
                "activation_interval_secs",
                persisted.activation_interval_secs,
            ),
            ("renewal_interval_secs", persisted.renewal_interval_secs),
        ] {
            if let Some(secs) = secs {
                check_interval(name, secs).map_err(bad)?;
            }
        }
        if let Some(listen) = &persisted.listen
            && listen.parse::<SocketAddr>().is_err()
        {
            return Err(bad(format!(
                "listen '{listen}' is not an address like 0.0.0.0:1688"
            )));
        }
        Ok(persisted)
    }

    /// The settings this file changes away from what the config file and flags asked for
    /// (R26), as (setting, configured, in use), so the start can say so.
    pub fn overrides(
        &self,
        configured_listen: SocketAddr,
        listen: SocketAddr,
        configured: Intervals,
        intervals: Intervals,
    ) -> Vec<Override> {
        let mut out = Vec::new();
        if configured_listen != listen {
            out.push(Override {
                setting: "listen",
                configured: configured_listen.to_string(),
                in_use: listen.to_string(),
            });
        }
        for (setting, before, now) in [
            (
                "activation_interval_secs",
                configured.activation_secs,
                intervals.activation_secs,
            ),
            (
                "renewal_interval_secs",
                configured.renewal_secs,
                intervals.renewal_secs,
            ),
        ] {
            if before != now {
                out.push(Override {
                    setting,
                    configured: before.to_string(),
                    in_use: now.to_string(),
                });
            }
        }
        out
    }

    fn save(&self, dir: &Path) -> std::io::Result<()> {
        tally_store::fsmode::write_atomic(
            &dir.join(paths::SETTINGS_FILE),
            &serde_json::to_vec_pretty(self).unwrap_or_default(),
            tally_store::fsmode::PRIVATE_FILE,
        )
    }
}

/// One setting `settings.json` changes away from the config file and flags.
#[derive(Debug, PartialEq, Eq)]
pub struct Override {
    /// The setting's name in `settings.json`.
    pub setting: &'static str,
    /// What the config file and flags asked for.
    pub configured: String,
    /// What the host uses.
    pub in_use: String,
}

/// The running host as the admin API sees it.
pub struct LiveHost {
    settings: Mutex<Settings>,
    service: Arc<HostService>,
    rebind: mpsc::Sender<TcpListener>,
    dns: Option<watch::Sender<DnsControl>>,
    listen: watch::Sender<SocketAddr>,
    dir: PathBuf,
}

impl LiveHost {
    /// A live host with `settings` in force. A new listener is sent on `rebind`, its address
    /// on `listen`; DNS publishing (if configured) is steered through `dns`.
    pub fn new(
        settings: Settings,
        service: Arc<HostService>,
        rebind: mpsc::Sender<TcpListener>,
        dns: Option<watch::Sender<DnsControl>>,
        listen: watch::Sender<SocketAddr>,
        dir: PathBuf,
    ) -> Self {
        Self {
            settings: Mutex::new(settings),
            service,
            rebind,
            dns,
            listen,
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
                // The binary prints it: the stable line scripts wait for.
                self.listen.send_replace(bound);
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
        events::record(
            self.service.store(),
            events::SETTING_CHANGED,
            "info",
            "setting changed",
            data,
        )
        .await;
        Ok(next)
    }

    fn dns_state(&self) -> serde_json::Value {
        let mut v = crate::dns::read_status(&self.dir);
        v["enabled"] = serde_json::Value::Bool(self.current().dns_publish);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(json: &str) -> Result<Persisted, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        std::fs::write(dir.path().join(paths::SETTINGS_FILE), json).map_err(|e| e.to_string())?;
        Persisted::load(dir.path()).map_err(|e| e.to_string())
    }

    #[test]
    fn r26_overrides_name_what_the_file_changes() {
        let persisted = load(r#"{"port": 1700, "activation_interval_secs": 60}"#).unwrap();
        let configured: SocketAddr = "127.0.0.1:1688".parse().unwrap();
        let in_use: SocketAddr = "127.0.0.1:1700".parse().unwrap();
        let asked = Intervals {
            activation_secs: 7200,
            renewal_secs: 604_800,
        };
        let used = Intervals {
            activation_secs: 60,
            renewal_secs: 604_800,
        };
        let o = persisted.overrides(configured, in_use, asked, used);
        assert_eq!(o.len(), 2);
        assert_eq!(o[0].setting, "listen");
        assert_eq!(o[0].in_use, "127.0.0.1:1700");
        assert_eq!(o[1].setting, "activation_interval_secs");
        assert_eq!(o[1].configured, "7200");
        assert!(
            persisted
                .overrides(configured, configured, asked, asked)
                .is_empty()
        );
    }

    #[test]
    fn missing_settings_are_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = Persisted::load(dir.path()).expect("no file is no settings");
        assert_eq!(p.renewal_interval_secs, None);
    }

    // R9, R26: a hand-edited zero interval would make every client retry without pause; the
    // host refuses to start and names the file.
    #[test]
    fn r26_saved_settings_the_api_would_refuse_stop_the_start() {
        let e = load(r#"{"renewal_interval_secs": 0}"#).expect_err("zero interval");
        assert!(
            e.contains("renewal_interval_secs must be between 1 second and 1 year"),
            "{e}"
        );
        assert!(e.contains(paths::SETTINGS_FILE), "{e}");
        let e = load(r#"{"listen": "nowhere"}"#).expect_err("bad address");
        assert!(e.contains("listen 'nowhere'"), "{e}");
        let e = load("{").expect_err("damaged");
        assert!(e.contains("damaged"), "{e}");
        let ok = load(r#"{"activation_interval_secs": 60, "listen": "127.0.0.1:1688"}"#);
        assert_eq!(ok.map(|p| p.activation_interval_secs), Ok(Some(60)));
    }
}
