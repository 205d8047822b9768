//! `tally demo`: a dev host on loopback and ~30 clients activating over real TCP, showing R3
//! (one count per pool across kinds; servers activate at 5, clients at 25) and R4 (renewals
//! refresh without raising the count).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use tally_client::connect::Installation;
use tally_client::{ActivationParams, Connector};
use tally_core::host::Intervals;
use tally_core::time::{Clock, SystemClock};
use tally_core::trust::parse_authority_public;
use tally_core::{Catalog, EditionKind};
use tally_host::identity::dev_bootstrap;
use tally_host::paths;
use tally_host::runtime::build_service;
use tally_proto::{LicenseState, MachineName};
use tally_server::ServerConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::output::{Table, json};

/// `tally demo` options.
#[derive(Args)]
pub struct DemoArgs {
    /// Number of clients.
    #[arg(long, default_value_t = 30)]
    clients: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Row {
    step: usize,
    machine: String,
    edition: String,
    kind: EditionKind,
    count: u32,
    threshold: u16,
    activated: bool,
}

/// Which edition the n-th client (1-based) installs: three clients, then two servers (R3's
/// example), then alternating, so both thresholds are crossed.
fn edition_for(n: usize, catalog: &Catalog) -> anyhow::Result<tally_core::Edition> {
    let pool = catalog
        .editions()
        .first()
        .context("catalog has no editions")?
        .pool;
    let of = |kind| {
        catalog
            .editions()
            .iter()
            .filter(move |e| e.pool == pool && e.kind == kind)
    };
    let clients: Vec<_> = of(EditionKind::Client).collect();
    let servers: Vec<_> = of(EditionKind::Server).collect();
    anyhow::ensure!(
        !clients.is_empty() && !servers.is_empty(),
        "the demo needs client and server editions in one pool"
    );
    let server = matches!(n, 4 | 5) || (n > 5 && n.is_multiple_of(3));
    Ok(if server {
        servers[n % servers.len()]
    } else {
        clients[n % clients.len()]
    }
    .clone())
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let dir = tmp.path();
    let catalog = Catalog::demo();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    dev_bootstrap(dir, &catalog, clock.now())?;
    let service = build_service(
        dir,
        catalog.clone(),
        Intervals::default(),
        &tally_host::store::Storage::default(),
        Arc::clone(&clock),
        false,
    )
    .await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(tally_server::run(
        listener,
        service,
        ServerConfig::default(),
        shutdown.clone(),
    ));

    let anchor = parse_authority_public(&std::fs::read_to_string(dir.join(paths::AUTHORITY_PUB))?)?;
    let connector = Connector::new(anchor, Duration::from_secs(5));
    if !args.json {
        println!(
            "Tally demo: a dev host on {addr} and {} clients over TCP.",
            args.clients
        );
        println!("Every client and server edition of one product line shares one count (R3).\n");
    }
    let mut rows = Vec::new();
    let mut clients = Vec::new();
    for n in 1..=args.clients {
        let edition = edition_for(n, &catalog)?;
        let params = ActivationParams {
            cmid: Uuid::new_v4(),
            edition,
            machine_name: MachineName::lossy(&format!("demo-pc-{n:02}")),
            license_state: LicenseState::InitialGrace,
            grace_remaining_minutes: 30 * 24 * 60,
            // X6: each demo client is one installation: its own sequence (shared by the clones
            // of these params it renews with) and hardware.
            installation: Some(Installation::new(1, u32::MAX, [n as u8; 8])),
        };
        let answer = connector.activate(&addr, &params, clock.now()).await?;
        rows.push(Row {
            step: n,
            machine: params.machine_name.as_str().to_owned(),
            edition: params.edition.name.clone(),
            kind: params.edition.kind,
            count: answer.count,
            threshold: answer.threshold,
            activated: answer.activated,
        });
        clients.push(params);
    }
    // Renewals (R4): the first clients ask again; the count does not rise, and now they pass.
    for (i, params) in clients.iter().take(3).enumerate() {
        let answer = connector.activate(&addr, params, clock.now()).await?;
        rows.push(Row {
            step: args.clients + i + 1,
            machine: format!("{} (renewal)", params.machine_name.as_str()),
            edition: params.edition.name.clone(),
            kind: params.edition.kind,
            count: answer.count,
            threshold: answer.threshold,
            activated: answer.activated,
        });
    }
    shutdown.cancel();
    server.await.context("host task failed")??;

    if args.json {
        json(&rows)?;
    } else {
        let mut t = Table::new(&[
            "#", "MACHINE", "EDITION", "KIND", "COUNT", "NEEDS", "RESULT",
        ]);
        for r in &rows {
            t.row(vec![
                r.step.to_string(),
                r.machine.clone(),
                r.edition.clone(),
                r.kind.to_string(),
                r.count.to_string(),
                r.threshold.to_string(),
                if r.activated {
                    "activated".into()
                } else {
                    "below threshold (grace)".into()
                },
            ]);
        }
        print!("{}", t.render());
        let activated = rows.iter().filter(|r| r.activated).count();
        println!(
            "\n{} requests, {activated} activated, in {:.2} s. Servers activate from a count of 5, \
             clients from 25; renewals keep the count.",
            rows.len(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}
