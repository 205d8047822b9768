//! The `tally` Python module: `tally.Licensing(state_dir)`, its results, and `tally.TallyError`.
//!
//! A thin layer over [`tally::Handle`] (crate `tally-ffi`), the same API as C's `tally.h` and
//! Rust's `tally_ffi::Handle` (docs/EMBEDDING.md has the reference). Every blocking call releases
//! the GIL (`Python::detach`), so other Python threads run while a host is asked. Failures raise
//! `tally.TallyError` with `.code` (the result code, e.g. `0xC7A10202`), `.name`
//! (`"key_not_usable"`) and `.message`. The type stubs are `tally.pyi`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use tally::capi::{RESULT_CODES, result_name};
use tally::{ActivateOptions, ChangeKey, Error, Handle, LogLevel};

create_exception!(
    tally,
    TallyError,
    PyException,
    "A Tally call failed: `.code` is the result code (docs/PROTOCOL.md), `.name` its name, \
     `.message` a sentence for people."
);

fn name_of(code: u32) -> String {
    result_name(code).to_string_lossy().into_owned()
}

fn raise(py: Python<'_>, e: Error) -> PyErr {
    let err = TallyError::new_err(format!(
        "{} (0x{:08X} {})",
        e.message,
        e.code,
        name_of(e.code)
    ));
    let value = err.value(py);
    // Setting attributes on a fresh exception object cannot fail in practice; if it did, the
    // exception is still raised, only without the attribute.
    let _ = value.setattr("code", e.code);
    let _ = value.setattr("name", name_of(e.code));
    let _ = value.setattr("message", e.message);
    err
}

/// A Python `repr` of an optional string: `None` or `'text'`.
fn repr_str(s: Option<&str>) -> String {
    match s {
        None => "None".to_owned(),
        Some(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
    }
}

fn repr_bool(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

/// Seconds as a duration; a negative, NaN or huge value is a `ValueError`.
fn seconds(what: &str, s: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| PyValueError::new_err(format!("{what} must be a number of seconds ≥ 0")))
}

/// The outcome of `Licensing.activate()` when a host (or the authority) answered.
#[pyclass(frozen, get_all, module = "tally")]
pub struct Activation {
    /// Whether the installation is now activated.
    activated: bool,
    /// The pool's count the host reported (0 for a MAK).
    count: u32,
    /// The edition's threshold (0 when unknown).
    threshold: u16,
    /// `0` activated, `0x47A10001` below the threshold.
    code: u32,
    /// A sentence for people.
    message: String,
}

#[pymethods]
impl Activation {
    fn __repr__(&self) -> String {
        format!(
            "Activation(activated={}, count={}, threshold={}, code=0x{:08X}, name={})",
            repr_bool(self.activated),
            self.count,
            self.threshold,
            self.code,
            repr_str(Some(&name_of(self.code)))
        )
    }
}

/// The license status (`Licensing.status()`).
#[pyclass(frozen, module = "tally")]
pub struct Status {
    /// Whether the application may consider itself licensed.
    #[pyo3(get)]
    licensed: bool,
    /// Licensed for good by a MAK; `days_left` means nothing then.
    #[pyo3(get)]
    permanent: bool,
    /// `"unlicensed"`, `"initial grace"`, `"licensed"`, `"notification"`, `"out of tolerance"`.
    #[pyo3(get)]
    state: String,
    /// Whole days left of grace or validity.
    #[pyo3(get)]
    days_left: u32,
    /// Minutes left of grace or validity.
    #[pyo3(get)]
    minutes_left: u32,
    /// The installed edition's name, or None.
    #[pyo3(get)]
    edition: Option<String>,
    /// The count of the last activation attempt that reached a host, or None.
    #[pyo3(get)]
    count: Option<u32>,
    /// The result code of the last activation attempt, or None.
    #[pyo3(get)]
    last_result: Option<u32>,
    /// Rearms left.
    #[pyo3(get)]
    rearms_left: u8,
    /// End of validity, RFC 3339 UTC, or None (before activation; a MAK).
    #[pyo3(get)]
    validity_end: Option<String>,
    /// End of grace, RFC 3339 UTC, or None.
    #[pyo3(get)]
    grace_end: Option<String>,
    /// When the next activation or renewal attempt is due, RFC 3339 UTC, or None.
    #[pyo3(get)]
    next_attempt: Option<String>,
    /// Seconds the local clock is behind the latest reading seen (X5: nothing is extended
    /// until it is right again or a host answers), or None.
    #[pyo3(get)]
    clock_behind_secs: Option<i64>,
    /// The CMID (it changes by itself when the state was copied or a host saw a clone, X6).
    #[pyo3(get)]
    cmid: String,
    /// Why the license was taken back (X7: its MAK or its host is on the vendor's revocation
    /// list), or None.
    #[pyo3(get)]
    revoked: Option<String>,
    /// The serial of the newest revocation list this installation holds (0: none).
    #[pyo3(get)]
    revocation_serial: u32,
    /// What `wait_for_change(known=...)` compares.
    key: ChangeKey,
}

impl Status {
    fn new(s: tally::Status) -> Self {
        Self {
            key: s.change_key(),
            licensed: s.licensed,
            permanent: s.permanent,
            state: s.state.to_string(),
            days_left: s.days_left,
            minutes_left: s.minutes_left,
            edition: s.edition,
            count: s.count,
            last_result: s.last_result,
            rearms_left: s.rearms_left,
            validity_end: s.report.validity_end_rfc3339,
            grace_end: s.report.grace_end_rfc3339,
            next_attempt: s.report.next_attempt_rfc3339,
            clock_behind_secs: s.report.clock_behind_secs,
            cmid: s.cmid,
            revoked: s.revoked,
            revocation_serial: s.revocation_serial,
        }
    }
}

#[pymethods]
impl Status {
    fn __repr__(&self) -> String {
        format!(
            "Status(state={}, licensed={}, permanent={}, days_left={}, edition={}, cmid={}, \
             revoked={})",
            repr_str(Some(&self.state)),
            repr_bool(self.licensed),
            repr_bool(self.permanent),
            self.days_left,
            repr_str(self.edition.as_deref()),
            repr_str(Some(&self.cmid)),
            repr_str(self.revoked.as_deref()),
        )
    }
}

/// An installation's licensing, opened on its state directory (`tally.Licensing(state_dir,
/// catalog=None, timeout=None)`). Safe to share between threads.
#[pyclass(frozen, module = "tally")]
pub struct Licensing {
    inner: Handle,
}

#[pymethods]
impl Licensing {
    #[new]
    #[pyo3(signature = (state_dir, catalog = None, timeout = None))]
    fn new(
        py: Python<'_>,
        state_dir: PathBuf,
        catalog: Option<PathBuf>,
        timeout: Option<f64>,
    ) -> PyResult<Self> {
        let inner = Handle::open(&state_dir, catalog.as_deref()).map_err(|e| raise(py, e))?;
        if let Some(t) = timeout {
            inner.set_timeout(seconds("timeout", t)?);
        }
        Ok(Self { inner })
    }

    /// Installs a setup key or a MAK; returns the library's message. Raises `TallyError`
    /// (`0xC7A10202` key_not_usable) for a key that cannot be used here.
    fn install_key(&self, py: Python<'_>, key: &str) -> PyResult<String> {
        py.detach(|| self.inner.install_key(key))
            .map_err(|e| raise(py, e))
    }

    /// Removes the key: the installation is unlicensed.
    fn uninstall_key(&self, py: Python<'_>) -> PyResult<String> {
        py.detach(|| self.inner.uninstall_key())
            .map_err(|e| raise(py, e))
    }

    /// Activates now: at `host` ("HOST[:PORT]") for a setup key, with the authority at
    /// `authority` (a URL, remembered) for a MAK, trusting the authority key file `trust` if
    /// given, within `timeout` seconds (the handle's when None). Returns an `Activation` (also
    /// below the threshold); raises `TallyError` for every failure.
    #[pyo3(signature = (host = None, trust = None, authority = None, timeout = None))]
    fn activate(
        &self,
        py: Python<'_>,
        host: Option<String>,
        trust: Option<PathBuf>,
        authority: Option<String>,
        timeout: Option<f64>,
    ) -> PyResult<Activation> {
        let timeout = timeout.map(|t| seconds("timeout", t)).transpose()?;
        let a = py
            .detach(|| {
                self.inner.activate_with(&ActivateOptions {
                    host: host.as_deref(),
                    authority: authority.as_deref(),
                    trust: trust.as_deref(),
                    timeout,
                })
            })
            .map_err(|e| raise(py, e))?;
        Ok(Activation {
            activated: a.activated,
            count: a.count,
            threshold: a.threshold,
            code: a.code,
            message: a.message,
        })
    }

    /// MAK offline, step 1: the installation ID (digit groups) to give the vendor.
    fn installation_id(&self, py: Python<'_>) -> PyResult<String> {
        py.detach(|| self.inner.installation_id())
            .map_err(|e| raise(py, e))
    }

    /// MAK offline, step 2: applies the vendor's confirmation ID; returns the message.
    fn confirm(&self, py: Python<'_>, confirmation_id: &str) -> PyResult<String> {
        py.detach(|| self.inner.confirm(confirmation_id))
            .map_err(|e| raise(py, e))
    }

    /// The license status now.
    fn status(&self, py: Python<'_>) -> PyResult<Status> {
        py.detach(|| self.inner.status())
            .map(Status::new)
            .map_err(|e| raise(py, e))
    }

    /// Resets the grace period to 30 days (at most 3 times); returns the message.
    fn rearm(&self, py: Python<'_>) -> PyResult<String> {
        py.detach(|| self.inner.rearm()).map_err(|e| raise(py, e))
    }

    /// Prepares the installation to be imaged (a new CMID; grace reset when a rearm is left).
    fn generalize(&self, py: Python<'_>) -> PyResult<String> {
        py.detach(|| self.inner.generalize())
            .map_err(|e| raise(py, e))
    }

    /// Activates at `host` ("HOST[:PORT]") from now on; DNS discovery is off.
    fn set_host(&self, py: Python<'_>, host: &str) -> PyResult<String> {
        py.detach(|| self.inner.set_host(host))
            .map_err(|e| raise(py, e))
    }

    /// Forgets the host set by hand; DNS discovery is on again.
    fn clear_host(&self, py: Python<'_>) -> PyResult<String> {
        py.detach(|| self.inner.clear_host())
            .map_err(|e| raise(py, e))
    }

    /// Sets the deadline (seconds) of every later network call on this object; 0: 60 s.
    fn set_timeout(&self, timeout: f64) -> PyResult<()> {
        self.inner.set_timeout(seconds("timeout", timeout)?);
        Ok(())
    }

    /// Sends this object's log lines at `level` ("error", "warn", "info", "debug", "trace")
    /// and more severe to `callback(level, message)`, called on the thread making the call;
    /// `None` stops it. An exception in the callback is reported as unraisable, never raised.
    #[pyo3(signature = (callback, level = "info"))]
    fn set_log_callback(&self, callback: Option<Py<PyAny>>, level: &str) -> PyResult<()> {
        let max = match level {
            "error" => LogLevel::Error,
            "warn" | "warning" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            other => {
                return Err(PyValueError::new_err(format!(
                    "level must be error, warn, info, debug or trace, not {other:?}"
                )));
            }
        };
        let logger = callback.map(|cb| -> tally::Logger {
            Arc::new(move |level: LogLevel, line: &str| {
                Python::attach(|py| {
                    if let Err(e) = cb.call1(py, (level.name(), line)) {
                        e.write_unraisable(py, None);
                    }
                });
            })
        });
        self.inner.set_logger(logger, max);
        Ok(())
    }

    /// Blocks until the license state differs from `known` (a `Status`; the state at the call's
    /// start when None) or `timeout` seconds pass: the new `Status`, or None on the timeout.
    #[pyo3(signature = (known = None, timeout = 60.0))]
    fn wait_for_change(
        &self,
        py: Python<'_>,
        known: Option<PyRef<'_, Status>>,
        timeout: f64,
    ) -> PyResult<Option<Status>> {
        let timeout = seconds("timeout", timeout)?;
        let key = known.map(|k| k.key.clone());
        py.detach(|| self.inner.wait_for_change(key.as_ref(), timeout))
            .map(|s| s.map(Status::new))
            .map_err(|e| raise(py, e))
    }

    fn __repr__(&self) -> String {
        format!(
            "Licensing({})",
            repr_str(Some(&self.inner.dir().display().to_string()))
        )
    }
}

/// The snake_case name of a result code (`"key_not_usable"`; `"success"` for 0; `"unknown"`).
#[pyfunction]
#[pyo3(name = "result_name")]
fn result_name_of(code: u32) -> String {
    name_of(code)
}

/// The module.
#[pymodule]
#[pyo3(name = "tally")]
fn tally_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Licensing>()?;
    m.add_class::<Activation>()?;
    m.add_class::<Status>()?;
    m.add("TallyError", m.py().get_type::<TallyError>())?;
    m.add_function(wrap_pyfunction!(result_name_of, m)?)?;
    // Every result code, named as in tally.h without the `TALLY_` prefix (`tally.HOST_REVOKED`).
    for (name, code, _) in RESULT_CODES {
        m.add(name.trim_start_matches("TALLY_"), code)?;
    }
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
