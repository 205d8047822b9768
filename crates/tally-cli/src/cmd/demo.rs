//! `tally demo`: a dev host on loopback and ~30 clients activating over real TCP, showing R3
//! (one count per pool across kinds; servers activate at 5, clients at 25) and R4 (renewals
//! refresh without raising the count). The work is `tally_host::demo`; this prints it.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

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

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let report = tally_host::demo::run(tmp.path(), args.clients).await?;
    if args.json {
        json(&report.rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "Tally demo: a dev host on {} and {} clients over TCP.",
        report.host, args.clients
    );
    println!("Every client and server edition of one product line shares one count (R3).\n");
    let mut t = Table::new(&[
        "#", "MACHINE", "EDITION", "KIND", "COUNT", "NEEDS", "RESULT",
    ]);
    for r in &report.rows {
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
    let activated = report.rows.iter().filter(|r| r.activated).count();
    println!(
        "\n{} requests, {activated} activated, in {:.2} s. Servers activate from a count of 5, \
         clients from 25; renewals keep the count.",
        report.rows.len(),
        report.seconds
    );
    Ok(ExitCode::SUCCESS)
}
