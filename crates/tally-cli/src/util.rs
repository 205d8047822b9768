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

/// Parses a HOST[:PORT] argument (FQDN, short name, IPv4, `[IPv6]:PORT`): a URL is refused with
/// a hint, since hosts speak Tally's TCP protocol, not HTTP.
pub fn parse_host(s: &str) -> Result<String, String> {
    let s = s.trim();
    if let Some((scheme, _)) = s.split_once("://") {
        let bare = s
            .split_once("://")
            .map(|(_, rest)| rest.trim_end_matches('/'))
            .unwrap_or(s);
        return Err(format!(
            "expected HOST[:PORT], not a {scheme}:// URL: try `{bare}` (port 1688 when omitted); \
             a MAK client's authority URL goes to `activate --authority URL`"
        ));
    }
    if s.is_empty() || s.contains(['/', ' ']) {
        return Err("expected HOST[:PORT], e.g. tally1.corp.example or 127.0.0.1:1688".into());
    }
    Ok(s.to_owned())
}

/// The error and its causes on one line (`a: b: c`, as anyhow's `{:#}`), each said once: a
/// cause whose text an outer error already includes (library errors that print their source,
/// such as the store's "cannot open database X: {source}") is not repeated (issue 21: a TLS or
/// authentication error to PostgreSQL was printed two or three times).
pub fn error_text(err: &anyhow::Error) -> String {
    tally_core::error_text::chain(err.as_ref())
}

/// A hint for an I/O error of the kinds admins meet, to append after the error chain.
pub fn io_hint(err: &anyhow::Error) -> Option<&'static str> {
    let io = err
        .chain()
        .find_map(|e| e.downcast_ref::<std::io::Error>())?;
    match io.kind() {
        std::io::ErrorKind::PermissionDenied => Some(
            "run it as the directory's owner (or root), or pick a directory you own with \
             --state-dir / --data-dir",
        ),
        std::io::ErrorKind::NotFound => Some(
            "check the path; a host's data directory is made by `tally host run` (or pass \
             --data-dir DIR), a client's by `tally client install-key`",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As the store's errors: prints its source and returns it.
    #[derive(Debug)]
    struct Outer {
        source: std::io::Error,
    }

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot open database db:5432/x: {}", self.source)
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn an_error_chain_says_each_cause_once() {
        let inner = std::io::Error::other("TLS failed: wrong CA");
        let err = anyhow::Error::new(Outer { source: inner }).context("starting the host");
        assert_eq!(
            error_text(&err),
            "starting the host: cannot open database db:5432/x: TLS failed: wrong CA"
        );
        let plain = anyhow::Error::new(std::io::Error::other("disk full")).context("writing");
        assert_eq!(error_text(&plain), "writing: disk full");
    }

    #[test]
    fn urls_are_refused_where_a_host_is_expected() {
        let err = parse_host("http://127.0.0.1:1688/").unwrap_err();
        assert!(err.contains("`127.0.0.1:1688`"), "{err}");
        assert_eq!(
            parse_host("kms1.corp:1688").as_deref(),
            Ok("kms1.corp:1688")
        );
        assert_eq!(parse_host("[::1]:1688").as_deref(), Ok("[::1]:1688"));
        assert!(parse_host("").is_err());
    }
}
