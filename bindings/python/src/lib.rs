//! The `tally` Python module: `tally.Licensing(state_dir)`, its results, and `tally.TallyError`.
//!
//! A thin layer over [`tally::Handle`] (crate `tally-ffi`): every blocking call releases the GIL
//! (`Python::detach`), so other Python threads run while a host is asked. Failures raise
//! `tally.TallyError` with `.code` (the result code, e.g. `0xC7A10202`), `.name`
//! (`"key_not_usable"`) and `.message`.

use std::path::PathBuf;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use tally::{Error, Handle};

create_exception!(
    tally,
    TallyError,
    PyException,
    "A Tally call failed: `.code` is the result code (docs/PROTOCOL.md), `.name` its name, \
     `.message` a sentence for people."
);

fn raise(py: Python<'_>, e: Error) -> PyErr {
    let err = TallyError::new_err(format!(
        "{} (0x{:08X} {})",
        e.message,
        e.code,
        tally::capi::result_name(e.code).to_string_lossy()
    ));
    let value = err.value(py);
    // Setting attributes on a fresh exception object cannot fail in practice; if it did, the
    // exception is still raised, only without the attribute.
    let _ = value.setattr("code", e.code);
    let _ = value.setattr(
        "name",
        tally::capi::result_name(e.code)
            .to_string_lossy()
            .into_owned(),
    );
    let _ = value.setattr("message", e.message);
    err
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
            "Activation(activated={}, count={}, threshold={}, code=0x{:08X})",
            if self.activated { "True" } else { "False" },
            self.count,
            self.threshold,
            self.code
        )
    }
}

/// The license status (`Licensing.status()`).
#[pyclass(frozen, get_all, module = "tally")]
pub struct Status {
    /// Whether the application may consider itself licensed.
    licensed: bool,
    /// Licensed for good by a MAK; `days_left` means nothing then.
    permanent: bool,
    /// `"unlicensed"`, `"initial grace"`, `"licensed"`, `"notification"`, `"out of tolerance"`.
    state: String,
    /// Whole days left of grace or validity.
    days_left: u32,
    /// Minutes left of grace or validity.
    minutes_left: u32,
    /// The installed edition's name, or None.
    edition: Option<String>,
    /// The count of the last activation attempt that reached a host, or None.
    count: Option<u32>,
    /// The result code of the last activation attempt, or None.
    last_result: Option<u32>,
    /// Rearms left.
    rearms_left: u8,
    /// End of validity, RFC 3339 UTC, or None.
    validity_end: Option<String>,
    /// End of grace, RFC 3339 UTC, or None.
    grace_end: Option<String>,
    /// Seconds the local clock is behind the latest reading seen (X5: nothing is extended
    /// until it is right again or a host answers), or None.
    clock_behind_secs: Option<i64>,
    /// The CMID (it changes by itself when the state was copied or a host saw a clone, X6).
    cmid: String,
}

#[pymethods]
impl Status {
    fn __repr__(&self) -> String {
        format!(
            "Status(state={:?}, licensed={}, permanent={}, days_left={}, edition={:?})",
            self.state,
            if self.licensed { "True" } else { "False" },
            if self.permanent { "True" } else { "False" },
            self.days_left,
            self.edition
        )
    }
}

/// An installation's licensing, opened on its state directory (`tally.Licensing(state_dir,
/// catalog=None)`). Safe to share between threads.
#[pyclass(frozen, module = "tally")]
pub struct Licensing {
    inner: Handle,
}

#[pymethods]
impl Licensing {
    #[new]
    #[pyo3(signature = (state_dir, catalog = None))]
    fn new(py: Python<'_>, state_dir: PathBuf, catalog: Option<PathBuf>) -> PyResult<Self> {
        Handle::open(&state_dir, catalog.as_deref())
            .map(|inner| Self { inner })
            .map_err(|e| raise(py, e))
    }

    /// Installs a setup key or a MAK; returns the library's message. Raises `TallyError`
    /// (`0xC7A10202` key_not_usable) for a key that cannot be used here.
    fn install_key(&self, py: Python<'_>, key: &str) -> PyResult<String> {
        py.detach(|| self.inner.install_key(key))
            .map_err(|e| raise(py, e))
    }

    /// Activates now, at `host` ("HOST[:PORT]") if given, trusting the authority key file
    /// `trust` if given. Returns an `Activation` (also below the threshold); raises
    /// `TallyError` for every failure.
    #[pyo3(signature = (host = None, trust = None))]
    fn activate(
        &self,
        py: Python<'_>,
        host: Option<String>,
        trust: Option<PathBuf>,
    ) -> PyResult<Activation> {
        let a = py
            .detach(|| self.inner.activate(host.as_deref(), trust.as_deref()))
            .map_err(|e| raise(py, e))?;
        Ok(Activation {
            activated: a.activated,
            count: a.count,
            threshold: a.threshold,
            code: a.code,
            message: a.message,
        })
    }

    /// The license status now.
    fn status(&self, py: Python<'_>) -> PyResult<Status> {
        let s = py
            .detach(|| self.inner.status())
            .map_err(|e| raise(py, e))?;
        Ok(Status {
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
            clock_behind_secs: s.report.clock_behind_secs,
            cmid: s.report.cmid.to_string(),
        })
    }

    /// Resets the grace period to 30 days (at most 3 times); returns the message.
    fn rearm(&self, py: Python<'_>) -> PyResult<String> {
        py.detach(|| self.inner.rearm()).map_err(|e| raise(py, e))
    }
}

/// The module.
#[pymodule]
#[pyo3(name = "tally")]
fn tally_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Licensing>()?;
    m.add_class::<Activation>()?;
    m.add_class::<Status>()?;
    m.add("TallyError", m.py().get_type::<TallyError>())?;
    m.add("BELOW_THRESHOLD", 0x47A1_0001u32)?;
    m.add("KEY_NOT_USABLE", 0xC7A1_0202u32)?;
    m.add("NO_TRUST", 0xC7A1_0205u32)?;
    m.add("HOST_UNREACHABLE", 0xC7A1_0101u32)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
