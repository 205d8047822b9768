//! DNS publishing (R17, R18): builds the [`Publication`] from the `[dns]` section and runs the
//! loop that republishes on a timer, at once when the port changes, and stops while publishing
//! is turned off. Each attempt is logged and recorded (events 12294 / 12293) and its result is
//! kept in `DATA_DIR/dns-status.json` for `host status`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tally_core::time::{Clock, SystemClock};
use tally_dns::publish::{Publication, Target};
use tally_dns::tsig::TsigKey;
use tally_store::Store;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{DnsConfig, HostConfig};
use crate::{HostError, events, paths};

/// How long one DNS update may take.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(5);
/// The shortest refresh period accepted, whatever the config says.
const MIN_REFRESH: Duration = Duration::from_secs(10);

/// What the DNS publisher should do now (sent by the live settings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsControl {
    /// Publish or not.
    pub enabled: bool,
    /// The port to publish.
    pub port: u16,
}

/// What to publish for `listen`, from the `[dns]` section; the TSIG key file is relative to
/// `config_dir`.
pub fn publication(
    dns: &DnsConfig,
    config_dir: &Path,
    listen: SocketAddr,
) -> Result<Publication, HostError> {
    let key_path = if dns.key_file.is_absolute() {
        dns.key_file.clone()
    } else {
        config_dir.join(&dns.key_file)
    };
    let key_text = std::fs::read_to_string(&key_path).map_err(HostError::read(&key_path))?;
    let key = TsigKey::parse_bind(&key_text)?;
    let fqdn = dns.fqdn.trim_end_matches('.').to_owned();
    let parent = fqdn.split_once('.').map(|(_, p)| p.to_owned());
    let targets = if dns.domains.is_empty() {
        let domain = dns
            .address_zone
            .clone()
            .or(parent)
            .ok_or_else(|| HostError::Invalid(format!("dns.fqdn '{fqdn}' has no domain")))?;
        vec![Target {
            domain,
            priority: 0,
            weight: 10,
        }]
    } else {
        dns.domains.clone()
    };
    let addresses = match &dns.addresses {
        Some(a) => a.clone(),
        None if listen.ip().is_unspecified() => Vec::new(),
        None => vec![listen.ip()],
    };
    Ok(Publication {
        server: dns.server,
        key,
        label: dns.label.clone(),
        fqdn,
        address_zone: dns.address_zone.clone(),
        addresses,
        port: listen.port(),
        ttl: dns.ttl,
        targets,
        timeout: UPDATE_TIMEOUT,
    })
}

/// `tally host config check`: the `[dns]` section of `config` (if any) is usable: the TSIG key
/// reads and parses, the FQDN has a domain.
pub fn check(config: &HostConfig) -> Result<(), HostError> {
    match &config.dns {
        Some(dns) => publication(dns, &config.config_dir, config.listen)
            .map(drop)
            .map_err(|e| {
                HostError::Invalid(format!(
                    "the [dns] section is not usable: {}",
                    crate::error::chain(&e)
                ))
            }),
        None => Ok(()),
    }
}

/// The refresh period of `dns`.
pub fn refresh(dns: &DnsConfig) -> Duration {
    Duration::from_secs(dns.refresh_secs).max(MIN_REFRESH)
}

/// The last publishing state in `dir` (`{"enabled": false}` when there is none).
pub fn read_status(dir: &Path) -> serde_json::Value {
    std::fs::read(dir.join(paths::DNS_STATUS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({ "enabled": false }))
}

/// Records that nothing is published (no `[dns]` section, or publishing turned off).
pub fn write_disabled_status(dir: &Path) {
    write_status(
        &dir.join(paths::DNS_STATUS_FILE),
        &serde_json::json!({ "enabled": false }),
    );
}

fn write_status(path: &Path, status: &serde_json::Value) {
    let text = status.to_string();
    let written =
        tally_store::fsmode::write_atomic(path, text.as_bytes(), tally_store::fsmode::PRIVATE_FILE);
    if let Err(error) = written {
        warn!(%error, path = %path.display(), "cannot record the DNS publishing state");
    }
}

/// Publishes until `shutdown`, following `control`.
pub async fn publish_loop(
    mut publication: Publication,
    refresh: Duration,
    dir: PathBuf,
    store: Arc<dyn Store>,
    mut control: watch::Receiver<DnsControl>,
    shutdown: CancellationToken,
) {
    let status_path = dir.join(paths::DNS_STATUS_FILE);
    loop {
        let ctl = *control.borrow_and_update();
        if !ctl.enabled {
            // R17: publishing turned off; the records stay until their TTL or an admin removes
            // them.
            write_disabled_status(&dir);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = control.changed() => if r.is_err() { return } else { continue },
            }
        }
        // R17: republish at once when the port changes.
        publication.port = ctl.port;
        let results = publication.publish().await;
        for r in &results {
            let (id, level, message) = if r.ok {
                // R17: event 12294 on success.
                info!(
                    event_id = tally_dns::EVENT_PUBLISH_OK,
                    domain = %r.domain,
                    record = %r.record,
                    target = %publication.fqdn,
                    port = publication.port,
                    "DNS SRV record published"
                );
                (
                    tally_dns::EVENT_PUBLISH_OK,
                    "info",
                    "DNS SRV record published",
                )
            } else {
                // R17: event 12293 on failure, with the DNS error.
                warn!(
                    event_id = tally_dns::EVENT_PUBLISH_FAILED,
                    domain = %r.domain,
                    record = %r.record,
                    error = r.error.as_deref().unwrap_or("unknown"),
                    "DNS publishing failed"
                );
                (
                    tally_dns::EVENT_PUBLISH_FAILED,
                    "warning",
                    "DNS publishing failed",
                )
            };
            let data = serde_json::to_value(r).unwrap_or_default();
            events::record(&store, id, level, message, data).await;
        }
        let status = serde_json::json!({
            "enabled": true,
            "server": publication.server,
            "fqdn": publication.fqdn,
            "port": publication.port,
            "last_attempt": SystemClock.now(),
            "ok": results.iter().all(|r| r.ok),
            "results": results,
        });
        write_status(&status_path, &status);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(refresh) => {}
            r = control.changed() => if r.is_err() { return },
        }
    }
}
