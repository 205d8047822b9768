//! The logging hook: a handle's calls send the library's log lines (the `tracing` events of
//! `tally-client`) to a function of the application's, instead of nowhere.
//!
//! The hook is per handle and scoped to its calls (`tracing`'s per-future and per-thread
//! dispatch), so it never installs a process-wide subscriber and never disturbs an application
//! that has its own. It is called on the thread making the call, during the call.

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use tracing::{Dispatch, Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// How much the library says, most severe first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Something failed.
    Error = 1,
    /// Something is wrong and was worked around (a host that did not answer, a bad file).
    Warn = 2,
    /// What the library did (which host answered).
    Info = 3,
    /// Details for a developer.
    Debug = 4,
    /// Everything.
    Trace = 5,
}

impl LogLevel {
    /// The level numbered as in `tally.h` (1 error … 5 trace); other numbers are `None`.
    pub fn from_number(n: u32) -> Option<Self> {
        Some(match n {
            1 => Self::Error,
            2 => Self::Warn,
            3 => Self::Info,
            4 => Self::Debug,
            5 => Self::Trace,
            _ => return None,
        })
    }

    /// Its lowercase name (`"warn"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }

    fn from_tracing(level: &Level) -> Self {
        match *level {
            Level::ERROR => Self::Error,
            Level::WARN => Self::Warn,
            Level::INFO => Self::Info,
            Level::DEBUG => Self::Debug,
            _ => Self::Trace,
        }
    }

    fn to_tracing(self) -> Level {
        match self {
            Self::Error => Level::ERROR,
            Self::Warn => Level::WARN,
            Self::Info => Level::INFO,
            Self::Debug => Level::DEBUG,
            Self::Trace => Level::TRACE,
        }
    }
}

/// The application's function: a level and one line (`target: message key=value …`, no
/// trailing newline, never a product key).
pub type Logger = Arc<dyn Fn(LogLevel, &str) + Send + Sync>;

/// The `tracing` dispatch that formats each event on one line and hands it to `logger`.
pub(crate) fn dispatch(logger: Logger, max: LogLevel) -> Dispatch {
    let subscriber = tracing_subscriber::fmt()
        .with_writer(LineSink { logger })
        .with_ansi(false)
        .without_time()
        .with_level(false)
        .with_max_level(max.to_tracing())
        .finish();
    Dispatch::new(subscriber)
}

struct LineSink {
    logger: Logger,
}

impl<'a> MakeWriter<'a> for LineSink {
    type Writer = Line;

    fn make_writer(&'a self) -> Self::Writer {
        Line {
            logger: Arc::clone(&self.logger),
            level: LogLevel::Info,
            text: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        Line {
            logger: Arc::clone(&self.logger),
            level: LogLevel::from_tracing(meta.level()),
            text: Vec::new(),
        }
    }
}

/// One event's text, handed over when the formatter is done with it.
struct Line {
    logger: Logger,
    level: LogLevel,
    text: Vec<u8>,
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.text);
        let line = text.trim_end();
        if line.is_empty() {
            return;
        }
        // The application's function must not unwind through the library (nor out of a drop).
        let _ = catch_unwind(AssertUnwindSafe(|| (self.logger)(self.level, line)));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::sync::Mutex;

    #[test]
    fn events_at_or_above_the_level_reach_the_logger_on_one_line() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let d = dispatch(
            Arc::new(move |l, m: &str| sink.lock().unwrap().push((l, m.to_owned()))),
            LogLevel::Info,
        );
        tracing::dispatcher::with_default(&d, || {
            tracing::warn!(host = "10.0.0.1:1688", "host did not answer");
            tracing::debug!("not shown");
        });
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].0, LogLevel::Warn);
        assert!(
            seen[0]
                .1
                .contains("host did not answer host=\"10.0.0.1:1688\""),
            "{seen:?}"
        );
        assert!(!seen[0].1.ends_with('\n'));
    }

    #[test]
    fn a_panicking_logger_does_not_unwind_into_the_library() {
        let d = dispatch(Arc::new(|_, _: &str| panic!("app bug")), LogLevel::Trace);
        tracing::dispatcher::with_default(&d, || tracing::error!("boom"));
    }
}
