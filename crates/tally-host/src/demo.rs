//! `tally demo` as a library: a dev host on loopback and clients activating over real TCP,
//! showing R3 (one count per pool across kinds; servers activate at 5, clients at 25) and R4
//! (renewals refresh without raising the count). The binary only prints the [`DemoReport`].

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tally_client::connect::Installation;
use tally_client::{ActivationParams, ClientError, Connector};
use tally_core::host::Intervals;
use tally_core::time::{Clock, SystemClock};
use tally_core::trust::parse_authority_public;
use tally_core::{Catalog, Edition, EditionKind};
use tally_proto::{LicenseState, MachineName};
use tally_server::ServerConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::identity::dev_bootstrap;
use crate::runtime::build_service;
use crate::{HostError, paths};

/// Clients whose activation is asked again at the end (R4).
const RENEWALS: usize = 3;

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Setting up the dev host failed.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The loopback listener could not be opened.
    #[error("cannot listen on 127.0.0.1: {0}")]
    Listen(#[source] std::io::Error),
    /// A client's activation failed.
    #[error("{machine}: {source}")]
    Client {
        /// The demo machine.
        machine: String,
        /// Why.
        #[source]
        source: ClientError,
    },
    /// The catalog lacks what the demo shows.
    #[error("the demo needs client and server editions in one pool")]
    Catalog,
}

/// One request of the demo.
#[derive(Serialize, Clone, Debug)]
pub struct DemoRow {
    /// 1-based.
    pub step: usize,
    /// The machine's name (renewals say so).
    pub machine: String,
    /// The edition's name.
    pub edition: String,
    /// Client or server.
    pub kind: EditionKind,
    /// The pool's count in the answer.
    pub count: u32,
    /// The edition's threshold.
    pub threshold: u16,
    /// Whether the answer activated the machine.
    pub activated: bool,
}

/// What the demo did.
#[derive(Serialize, Clone, Debug)]
pub struct DemoReport {
    /// The dev host's address.
    pub host: String,
    /// Every request, in order.
    pub rows: Vec<DemoRow>,
    /// Seconds the whole demo took.
    pub seconds: f64,
}

/// Which edition the n-th client (1-based) installs: three clients, then two servers (R3's
/// example), then alternating, so both thresholds are crossed.
fn edition_for(n: usize, catalog: &Catalog) -> Result<Edition, DemoError> {
    let pool = catalog.editions().first().ok_or(DemoError::Catalog)?.pool;
    let of = |kind| {
        catalog
            .editions()
            .iter()
            .filter(move |e| e.pool == pool && e.kind == kind)
    };
    let clients: Vec<_> = of(EditionKind::Client).collect();
    let servers: Vec<_> = of(EditionKind::Server).collect();
    if clients.is_empty() || servers.is_empty() {
        return Err(DemoError::Catalog);
    }
    let server = matches!(n, 4 | 5) || (n > 5 && n.is_multiple_of(3));
    Ok(if server {
        servers[n % servers.len()]
    } else {
        clients[n % clients.len()]
    }
    .clone())
}

/// Runs the demo: a dev host in the scratch directory `dir` (which it fills), `clients`
/// machines activating, then the first few renewing. The host stops before this returns.
pub async fn run(dir: &Path, clients: usize) -> Result<DemoReport, DemoError> {
    let started = Instant::now();
    let catalog = Catalog::demo();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    dev_bootstrap(dir, &catalog, clock.now())?;
    let service = build_service(
        dir,
        catalog.clone(),
        Intervals::default(),
        &crate::store::Storage::default(),
        Arc::clone(&clock),
        false,
    )
    .await?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(DemoError::Listen)?;
    let addr = listener
        .local_addr()
        .map_err(DemoError::Listen)?
        .to_string();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(tally_server::run(
        listener,
        service,
        ServerConfig::default(),
        shutdown.clone(),
    ));
    let asked = ask(dir, &addr, &catalog, clients, clock.as_ref()).await;
    shutdown.cancel();
    // The host's own outcome matters less than the demo's: a failed stop is logged by it.
    let _ = server.await;
    Ok(DemoReport {
        host: addr,
        rows: asked?,
        seconds: started.elapsed().as_secs_f64(),
    })
}

async fn ask(
    dir: &Path,
    addr: &str,
    catalog: &Catalog,
    clients: usize,
    clock: &dyn Clock,
) -> Result<Vec<DemoRow>, DemoError> {
    let pub_path = dir.join(paths::AUTHORITY_PUB);
    let text = std::fs::read_to_string(&pub_path).map_err(|source| HostError::Read {
        path: pub_path.clone(),
        source,
    })?;
    let anchor = parse_authority_public(&text).map_err(|source| HostError::FileFormat {
        path: pub_path,
        source,
    })?;
    let connector = Connector::new(anchor, Duration::from_secs(5));
    let mut rows = Vec::new();
    let mut machines = Vec::new();
    for n in 1..=clients {
        let params = ActivationParams {
            cmid: Uuid::new_v4(),
            edition: edition_for(n, catalog)?,
            machine_name: MachineName::lossy(&format!("demo-pc-{n:02}")),
            license_state: LicenseState::InitialGrace,
            grace_remaining_minutes: 30 * 24 * 60,
            // X6: each demo client is one installation: its own sequence (shared by the clones
            // of these params it renews with) and hardware.
            installation: Some(Installation::new(1, u32::MAX, [n as u8; 8])),
        };
        let name = params.machine_name.as_str().to_owned();
        rows.push(once(&connector, addr, &params, clock, n, name).await?);
        machines.push(params);
    }
    // Renewals (R4): the first clients ask again; the count does not rise, and now they pass.
    for (i, params) in machines.iter().take(RENEWALS).enumerate() {
        let name = format!("{} (renewal)", params.machine_name.as_str());
        rows.push(once(&connector, addr, params, clock, clients + i + 1, name).await?);
    }
    Ok(rows)
}

async fn once(
    connector: &Connector,
    addr: &str,
    params: &ActivationParams,
    clock: &dyn Clock,
    step: usize,
    machine: String,
) -> Result<DemoRow, DemoError> {
    let answer = connector
        .activate(addr, params, clock.now())
        .await
        .map_err(|source| DemoError::Client {
            machine: machine.clone(),
            source,
        })?;
    Ok(DemoRow {
        step,
        machine,
        edition: params.edition.name.clone(),
        kind: params.edition.kind,
        count: answer.count,
        threshold: answer.threshold,
        activated: answer.activated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // R3 and R4 end to end over loopback: servers activate from a count of 5 and clients from
    // 25, in one pool; renewals keep the count.
    #[tokio::test]
    async fn r3_r4_the_demo_crosses_both_thresholds_and_renewals_keep_the_count() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let report = run(tmp.path(), 30).await.expect("demo");
        assert_eq!(report.rows.len(), 30 + RENEWALS);
        let first_server = report
            .rows
            .iter()
            .find(|r| r.kind == EditionKind::Server && r.activated)
            .expect("a server activated");
        assert_eq!(first_server.count, 5);
        let first_client = report
            .rows
            .iter()
            .find(|r| r.kind == EditionKind::Client && r.activated && r.step <= 30)
            .expect("a client activated");
        assert_eq!(first_client.count, 25);
        let last = report.rows[29].count;
        assert!(
            report.rows[30..]
                .iter()
                .all(|r| r.count == last && r.activated)
        );
    }
}
