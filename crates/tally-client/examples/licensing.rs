//! How a vendor's application checks its license with `tally-client`.
//!
//! ```sh
//! cargo run -p tally-client --example licensing -- STATE_DIR [--activate]
//! ```
//!
//! It asks the local agent when one runs (any user may), and reads the state directory
//! otherwise. With `--activate` it also triggers an activation now.

use std::process::ExitCode;

use tally_client::{LicenseStatus, Licensing};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: licensing STATE_DIR [--activate]");
        return ExitCode::FAILURE;
    };
    let licensing = Licensing::new(&dir);
    if args.next().as_deref() == Some("--activate") {
        match licensing.activate().await {
            Ok(r) => println!("activation: {} (0x{:08X}): {}", r.result, r.code, r.message),
            Err(e) => eprintln!("activation failed: {e}"),
        }
    }
    let status = match licensing.status().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot read the license: {e}");
            return ExitCode::FAILURE;
        }
    };
    let via = if licensing.agent_running().await {
        "agent"
    } else {
        "state file"
    };
    match status.status {
        LicenseStatus::Licensed => println!("licensed: {} days left (via {via})", status.days_left),
        LicenseStatus::InitialGrace => println!(
            "in grace: {} days left to activate (via {via})",
            status.days_left
        ),
        other => println!("not licensed: {other} (via {via})"),
    }
    if status.licensed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}
