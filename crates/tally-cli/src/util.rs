//! Small helpers shared by the commands: stopping on a signal, reading a value or a file.

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Cancels `token` on SIGINT or SIGTERM.
pub fn spawn_signal_handler(token: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = match signal(SignalKind::terminate()) {
                Ok(s) => s,
                Err(error) => {
                    warn!(%error, "cannot watch SIGTERM; stop with Ctrl-C");
                    let _ = tokio::signal::ctrl_c().await;
                    token.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => info!(signal = "SIGINT", "stopping"),
                _ = term.recv() => info!(signal = "SIGTERM", "stopping"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        token.cancel();
    });
}

/// Reads `arg` as a file if one exists by that name, else as the text itself (confirmation and
/// installation IDs may be typed or passed as files).
pub fn text_or_file(arg: &str) -> anyhow::Result<String> {
    let path = std::path::Path::new(arg);
    if arg.len() < 4096 && path.is_file() {
        Ok(std::fs::read_to_string(path).with_context(|| format!("cannot read {arg}"))?)
    } else {
        Ok(arg.to_owned())
    }
}
