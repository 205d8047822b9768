//! The C calls beyond open/install/activate/status/rearm: MAK activation online (an authority
//! URL) and offline (installation ID, confirmation ID), uninstall, generalize, set and clear the
//! host, the per-call timeout, the logging callback and the wait for a license-state change.

use std::ffi::{CString, c_char, c_void};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tally_client::LicenseStatus;

use super::panic::guard;
use super::{
    TALLY_OK, activate_into, handle_ref, invalid, optional, required, tally_activation,
    tally_licensing, tally_result, tally_status, to_c_status,
};
use crate::embed::{ActivateOptions, ChangeKey, Handle};
use crate::logging::LogLevel;

/// Bytes a buffer for `tally_installation_id()` needs at most, NUL included (today 21 groups
/// of 7 digits and their spaces: 168).
pub const TALLY_INSTALLATION_ID_LEN: usize = 256;

/// How much the library logs (`tally_set_log_callback()`), most severe first.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum tally_log_level {
    /// Something failed.
    TALLY_LOG_ERROR = 1,
    /// Something is wrong and was worked around (a host that did not answer).
    TALLY_LOG_WARN = 2,
    /// What the library did.
    TALLY_LOG_INFO = 3,
    /// Details for a developer.
    TALLY_LOG_DEBUG = 4,
    /// Everything.
    TALLY_LOG_TRACE = 5,
}

impl From<LogLevel> for tally_log_level {
    fn from(l: LogLevel) -> Self {
        match l {
            LogLevel::Error => Self::TALLY_LOG_ERROR,
            LogLevel::Warn => Self::TALLY_LOG_WARN,
            LogLevel::Info => Self::TALLY_LOG_INFO,
            LogLevel::Debug => Self::TALLY_LOG_DEBUG,
            LogLevel::Trace => Self::TALLY_LOG_TRACE,
        }
    }
}

/// The application's logging function: `user_data` as given to `tally_set_log_callback()`, the
/// line's level and the line (UTF-8, NUL-terminated, valid only during the call, never a
/// product key). It is called on the thread making a `tally_*` call, during that call, so it
/// must be safe to call from every thread the application calls the library from, and must not
/// call the library back on the same handle.
#[allow(non_camel_case_types)]
pub type tally_log_callback = Option<
    unsafe extern "C" fn(user_data: *mut c_void, level: tally_log_level, message: *const c_char),
>;

/// Where and how `tally_activate_ex()` activates. Every field may be NULL or 0.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct tally_activate_options {
    /// `"HOST[:PORT]"` for this attempt only (a setup-key installation); NULL: the host set by
    /// hand, the cached host or DNS discovery.
    pub host: *const c_char,
    /// The vendor's authority URL (`"https://…"`) for a MAK installation (R25); remembered, so
    /// later calls may pass NULL. NULL: the remembered URL.
    pub authority_url: *const c_char,
    /// The authority's public key file; NULL: `STATE_DIR/authority.pub`.
    pub trust_file: *const c_char,
    /// This call's deadline in milliseconds; 0: the handle's (`tally_set_timeout()`).
    pub timeout_ms: u32,
}

/// The application's `user_data`, handed back to its own callback. The header makes the
/// callback thread-safe, which is what sharing this pointer between threads needs.
struct UserData(*mut c_void);
// SAFETY: the library never dereferences the pointer; it only passes it to the application's
// callback, which the header requires to be callable from any thread.
unsafe impl Send for UserData {}
// SAFETY: as above.
unsafe impl Sync for UserData {}

impl UserData {
    fn get(&self) -> *mut c_void {
        self.0
    }
}

/// Like `tally_activate()` with an authority URL for a MAK and a deadline for this call.
/// `options` may be NULL (all defaults). A MAK installation activates with the vendor's
/// authority (`authority_url`, else the remembered URL; without either: `TALLY_NO_HOST`); a
/// setup-key installation with a host. `out` (may be NULL) is filled whatever the outcome.
///
/// Returns `TALLY_OK`, `TALLY_BELOW_THRESHOLD`, or an error: `TALLY_NO_TRUST`,
/// `TALLY_NO_HOST`, `TALLY_HOST_UNREACHABLE` (also a MAK the authority refused: over its
/// budget, revoked), `TALLY_HOST_TIMEOUT` (a host, or this call's deadline),
/// `TALLY_UNTRUSTED_RESPONSE`, `TALLY_PROTOCOL_ERROR`, `TALLY_KEY_NOT_USABLE`, a host's
/// refusal (`0xC7A1000x`), `TALLY_STATE_UNAVAILABLE`, `TALLY_INVALID_ARGUMENT`.
/// # Safety
/// `handle` is a live handle (or NULL); `options` is NULL or points to a readable
/// `tally_activate_options` whose strings are NUL-terminated or NULL; `out` is NULL or points
/// to a writable `tally_activation`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tally_activate_ex(
    handle: *const tally_licensing,
    options: *const tally_activate_options,
    out: *mut tally_activation,
) -> tally_result {
    // SAFETY: forwarded header contract (`handle`, `out`).
    unsafe {
        activate_into(handle, out, |h| {
            // SAFETY: NULL or a readable struct (header contract).
            let o = options.as_ref();
            let (host, authority, trust, ms) = match o {
                None => (None, None, None, 0),
                // SAFETY: the struct's strings are NUL-terminated or NULL (header contract).
                Some(o) => (
                    optional(o.host, "host")?,
                    optional(o.authority_url, "authority_url")?,
                    optional(o.trust_file, "trust_file")?,
                    o.timeout_ms,
                ),
            };
            h.activate_with(&ActivateOptions {
                host,
                authority,
                trust: trust.map(Path::new),
                timeout: (ms > 0).then(|| Duration::from_millis(u64::from(ms))),
            })
        })
    }
}

/// R25 offline, step 1: writes the installation ID of a MAK installation (digit groups
/// separated by spaces, NUL-terminated) into `buf` (`len` bytes, caller-owned; at most
/// `TALLY_INSTALLATION_ID_LEN` are needed). The user gives it to the vendor, who answers with a
/// confirmation ID (`tally_confirm()`). Local; needs no network.
///
/// Returns `TALLY_OK`, `TALLY_KEY_NOT_USABLE` (no MAK installed), `TALLY_STATE_UNAVAILABLE`,
/// or `TALLY_INVALID_ARGUMENT` (NULL, or `len` too small: nothing written but the NUL).
/// # Safety
/// `handle` is a live handle (or NULL); `buf` is NULL or points to `len` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tally_installation_id(
    handle: *const tally_licensing,
    buf: *mut c_char,
    len: usize,
) -> tally_result {
    guard(|| {
        // SAFETY: `handle` is NULL or a live handle (header contract).
        let h = unsafe { handle_ref(handle) }?;
        if buf.is_null() || len == 0 {
            return Err(invalid("buf must not be NULL and len not 0"));
        }
        // SAFETY: `buf` is not null and points to `len` writable bytes (header contract).
        let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
        out[0] = 0;
        let id = h.installation_id()?;
        if id.len() >= len {
            return Err(invalid(&format!(
                "the buffer has {len} bytes; the installation ID needs {}",
                id.len() + 1
            )));
        }
        out[..id.len()].copy_from_slice(id.as_bytes());
        out[id.len()] = 0;
        Ok((TALLY_OK, format!("installation ID of {} digits", id.len())))
    })
}

/// R25 offline, step 2: applies the confirmation ID the vendor gave (digit groups; spaces and
/// dashes are ignored). The installation is then licensed for good. Needs
/// `STATE_DIR/authority.pub` (copy it there, or activate once with a trust file).
///
/// Returns `TALLY_OK`, `TALLY_KEY_NOT_USABLE` (no MAK installed, or not a confirmation ID:
/// wrong number of groups or a group's check digit), `TALLY_UNTRUSTED_RESPONSE` (a
/// confirmation for another installation or another authority), `TALLY_NO_TRUST`,
/// `TALLY_STATE_UNAVAILABLE`, `TALLY_INVALID_ARGUMENT`.
/// # Safety
/// `handle` is a live handle (or NULL); `confirmation_id` is a NUL-terminated string (or NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tally_confirm(
    handle: *const tally_licensing,
    confirmation_id: *const c_char,
) -> tally_result {
    guard(|| {
        // SAFETY: `handle` is NULL or a live handle (header contract).
        let h = unsafe { handle_ref(handle) }?;
        // SAFETY: a NUL-terminated string or NULL, valid for this call.
        let id = unsafe { required(confirmation_id, "confirmation_id") }?;
        Ok((TALLY_OK, h.confirm(id)?))
    })
}

/// Removes the product key: the installation is unlicensed (its CMID and rearms stay). Needs
/// write access to the state directory (R13).
///
/// Returns `TALLY_OK`, `TALLY_STATE_UNAVAILABLE`, `TALLY_INVALID_ARGUMENT`.
/// # Safety
/// `handle` is a live handle (or NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tally_uninstall_key(handle: *const tally_licensing) -> tally_result {
    // SAFETY: forwarded header contract.
    unsafe { simple(handle, Handle::uninstall_key) }
}

/// R11: prepares the installation to be imaged: a new CMID, and the grace period reset when a
/// rearm is left. Run it last on a master image. Needs write access (R13).
///
/// Returns `TALLY_OK`, `TALLY_NO_REARM_LEFT` (the CMID changed, the grace did not),
/// `TALLY_STATE_UNAVAILABLE`, `TALLY_INVALID_ARGUMENT`.
/// # Safety
/// `handle` is a live handle (or NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tally_generalize(handle: *const tally_licensing) -> tally_result {
    // SAFETY: forwarded header contract.
    unsafe { simple(handle, Handle::generalize) }
}

/// R20: activates at `host` (`"HOST[:PORT]"`, default port 1688) from now on; DNS discovery
/// is off until `tally_clear_host()`. Needs write access (R13).
///
/// Returns `TALLY_OK`, `TALLY_STATE_UNAVAILABLE`, `TALLY_INVALID_ARGUMENT` (NULL, empty or with
/// spaces).
/// # Safety
/// `handle` is a live handle (or NULL); `host` is a NUL-terminated string (or NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tally_set_host(
    handle: *const tally_licensing,
    host: *const c_char,
) -> tally_result {
    guard(|| {
        // SAFETY: `handle` is NULL or a live handle (header contract).
        let h = unsafe { handle_ref(handle) }?;
        // SAFETY: a NUL-terminated string or NULL, valid for this call.
        let host = unsafe { required(host, "host") }?;
        Ok((TALLY_OK, h.set_host(host)?))
    })
}

/// R20: forgets the host set by hand: DNS discovery is on again. Needs write access (R13).
///
/// Returns `TALLY_OK`, `TALLY_STATE_UNAVAILABLE`, `TALLY_INVALID_ARGUMENT`.
/// # Safety
/// `handle` is a live handle (or NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tally_clear_host(handle: *const tally_licensing) -> tally_result {
    // SAFETY: forwarded header contract.
    unsafe { simple(handle, Handle::clear_host) }
}

/// Sets the deadline of every later call on `handle` that may use the network
/// (`tally_activate()`, `tally_activate_ex()` without its own, `tally_read_status()` through
/// the agent): past it the call stops and returns `TALLY_HOST_TIMEOUT`. 0 restores the
/// default, 60 000 ms. Thread-safe; a call already running keeps its deadline.
///
/// Returns `TALLY_OK`, `TALLY_INVALID_ARGUMENT` (NULL handle).
/// # Safety
/// `handle` is a live handle (or NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tally_set_timeout(
    handle: *const tally_licensing,
    timeout_ms: u32,
) -> tally_result {
    guard(|| {
        // SAFETY: `handle` is NULL or a live handle (header contract).
        let h = unsafe { handle_ref(handle) }?;
        h.set_timeout(Duration::from_millis(u64::from(timeout_ms)));
        Ok((TALLY_OK, format!("timeout {} ms", h.timeout().as_millis())))
    })
}

/// Sends the log lines of `handle`'s calls at `max_level` (a `tally_log_level`) and more severe
/// to `callback` with `user_data`; a NULL `callback` stops it. See `tally_log_callback` for
/// when it is called. Without a callback the library logs nothing.
///
/// Returns `TALLY_OK`, `TALLY_INVALID_ARGUMENT` (NULL handle, or a level outside 1–5).
/// # Safety
/// `handle` is a live handle (or NULL); `callback`, when not NULL, is a function safe to call
/// from any thread with `user_data` until it is replaced or the handle is freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tally_set_log_callback(
    handle: *const tally_licensing,
    callback: tally_log_callback,
    user_data: *mut c_void,
    max_level: u32,
) -> tally_result {
    guard(|| {
        // SAFETY: `handle` is NULL or a live handle (header contract).
        let h = unsafe { handle_ref(handle) }?;
        let Some(level) = LogLevel::from_number(max_level) else {
            return Err(invalid(
                "max_level must be a tally_log_level (1 error … 5 trace)",
            ));
        };
        let Some(callback) = callback else {
            h.set_logger(None, level);
            return Ok((TALLY_OK, "logging off".to_owned()));
        };
        let data = UserData(user_data);
        h.set_logger(
            Some(Arc::new(move |level: LogLevel, line: &str| {
                let text = CString::new(line.replace('\0', " ")).unwrap_or_default();
                // SAFETY: the application's function, callable from any thread with its
                // user_data (this function's contract); `text` outlives the call.
                unsafe { callback(data.get(), level.into(), text.as_ptr()) };
            })),
            level,
        );
        Ok((TALLY_OK, format!("logging at {}", level.name())))
    })
}

/// Waits until the license state changes, at most `timeout_ms`: the state or whether licensed,
/// the edition, the end of grace or validity (a renewal moves it), the CMID, a revocation —
/// made by this process, another one, the agent, or time running out. `known` is the status the
/// application last acted on (NULL: the status at the call's start), so a change between two
/// calls is never missed. On return `*out` (not NULL) holds the status now and `*changed`
/// (not NULL) whether it differs from `known`. Blocks the calling thread (it looks at the state
/// directory every 200 ms); run it on a thread of its own.
///
/// Returns `TALLY_OK` (changed or not), `TALLY_STATE_UNAVAILABLE`, `TALLY_INVALID_ARGUMENT`.
/// # Safety
/// `handle` is a live handle (or NULL); `known` is NULL or points to a readable `tally_status`
/// (as filled by this library); `out` and `changed` point to writable objects (or are NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tally_wait_for_change(
    handle: *const tally_licensing,
    known: *const tally_status,
    timeout_ms: u32,
    out: *mut tally_status,
    changed: *mut bool,
) -> tally_result {
    guard(|| {
        // SAFETY: `handle` is NULL or a live handle (header contract).
        let h = unsafe { handle_ref(handle) }?;
        if out.is_null() || changed.is_null() {
            return Err(invalid("out and changed must not be NULL"));
        }
        // SAFETY: NULL or a readable `tally_status` (header contract).
        let key = unsafe { known_key(known) };
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        let (status, moved) = match h.wait_for_change(key.as_ref(), timeout)? {
            Some(s) => (s, true),
            None => (h.status()?, false),
        };
        // SAFETY: `out` and `changed` are not null and writable (header contract).
        unsafe {
            out.write(to_c_status(&status));
            changed.write(moved);
        }
        let message = if moved {
            format!("the license state changed: {}", status.state)
        } else {
            format!("no change within {timeout_ms} ms")
        };
        Ok((TALLY_OK, message))
    })
}

/// The change key of a `tally_status` the application holds, read field by field as plain
/// integers: a value C wrote that is not a valid Rust `bool` or enum is never materialized.
/// # Safety
/// `known` is NULL or points to a readable `tally_status`.
unsafe fn known_key(known: *const tally_status) -> Option<ChangeKey> {
    if known.is_null() {
        return None;
    }
    let text = |bytes: &[c_char]| -> String {
        let b: Vec<u8> = bytes
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        String::from_utf8_lossy(&b).into_owned()
    };
    // SAFETY: `known` points to a readable `tally_status`; each field is read through a raw
    // pointer as bytes or integers of its size, never as `bool` or the enum.
    unsafe {
        let byte = |p: *const bool| p.cast::<u8>().read() != 0;
        let state = match std::ptr::addr_of!((*known).state).cast::<u32>().read() {
            0 => LicenseStatus::Unlicensed,
            1 => LicenseStatus::InitialGrace,
            2 => LicenseStatus::Licensed,
            3 => LicenseStatus::Notification,
            _ => LicenseStatus::OutOfTolerance,
        };
        let edition = text(&*std::ptr::addr_of!((*known).edition));
        let ms = |v: i64| (v != 0).then_some(v);
        Some(ChangeKey {
            state,
            licensed: byte(std::ptr::addr_of!((*known).licensed)),
            permanent: byte(std::ptr::addr_of!((*known).permanent)),
            edition: (!edition.is_empty()).then_some(edition),
            grace_end_ms: ms(std::ptr::addr_of!((*known).grace_end_ms).read()),
            validity_end_ms: ms(std::ptr::addr_of!((*known).validity_end_ms).read()),
            cmid: text(&*std::ptr::addr_of!((*known).cmid)),
            revoked: byte(std::ptr::addr_of!((*known).revoked)),
        })
    }
}

/// A call on the handle alone that returns its message.
/// # Safety
/// `handle` is NULL or a live handle.
unsafe fn simple(
    handle: *const tally_licensing,
    f: fn(&Handle) -> Result<String, crate::embed::Error>,
) -> tally_result {
    guard(|| {
        // SAFETY: forwarded contract.
        let h = unsafe { handle_ref(handle) }?;
        Ok((TALLY_OK, f(h)?))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::capi::TALLY_INVALID_ARGUMENT;
    use std::sync::Mutex;

    #[test]
    fn null_arguments_are_refused() {
        // SAFETY: NULL handles and pointers are what is tested; all are allowed and refused.
        unsafe {
            assert_eq!(
                tally_uninstall_key(std::ptr::null()),
                TALLY_INVALID_ARGUMENT
            );
            assert_eq!(tally_generalize(std::ptr::null()), TALLY_INVALID_ARGUMENT);
            assert_eq!(tally_clear_host(std::ptr::null()), TALLY_INVALID_ARGUMENT);
            assert_eq!(
                tally_set_host(std::ptr::null(), std::ptr::null()),
                TALLY_INVALID_ARGUMENT
            );
            assert_eq!(
                tally_set_timeout(std::ptr::null(), 5),
                TALLY_INVALID_ARGUMENT
            );
            assert_eq!(
                tally_confirm(std::ptr::null(), std::ptr::null()),
                TALLY_INVALID_ARGUMENT
            );
            assert_eq!(
                tally_installation_id(std::ptr::null(), std::ptr::null_mut(), 0),
                TALLY_INVALID_ARGUMENT
            );
            let mut a = tally_activation::default();
            assert_eq!(
                tally_activate_ex(std::ptr::null(), std::ptr::null(), &mut a),
                TALLY_INVALID_ARGUMENT
            );
            assert_eq!(a.code, TALLY_INVALID_ARGUMENT);
        }
    }

    static SEEN: Mutex<Vec<(u32, String)>> = Mutex::new(Vec::new());

    unsafe extern "C" fn record(data: *mut c_void, level: tally_log_level, msg: *const c_char) {
        assert_eq!(data as usize, 42);
        // SAFETY: the library passes a NUL-terminated string.
        let text = unsafe { std::ffi::CStr::from_ptr(msg) }
            .to_string_lossy()
            .into_owned();
        SEEN.lock().unwrap().push((level as u32, text));
    }

    #[test]
    fn a_handle_runs_the_local_calls_and_logs_to_the_callback() {
        let dir = tempfile::tempdir().unwrap();
        let path = CString::new(dir.path().to_str().unwrap()).unwrap();
        let mut h: *mut tally_licensing = std::ptr::null_mut();
        // SAFETY: valid strings, pointers and a live handle throughout; freed once at the end.
        unsafe {
            assert_eq!(
                super::super::tally_licensing_open(path.as_ptr(), std::ptr::null(), &mut h),
                TALLY_OK
            );
            assert_eq!(
                tally_set_log_callback(h, Some(record), 42 as *mut c_void, 9),
                TALLY_INVALID_ARGUMENT
            );
            assert_eq!(
                tally_set_log_callback(h, Some(record), 42 as *mut c_void, 5),
                TALLY_OK
            );
            assert_eq!(
                super::super::tally_install_key(h, c"FW777-M677J-W8KJV-QG4VJ-HC6WP".as_ptr()),
                TALLY_OK
            );
            assert_eq!(tally_set_host(h, c"".as_ptr()), TALLY_INVALID_ARGUMENT);
            assert_eq!(tally_set_host(h, c"10.9.9.9".as_ptr()), TALLY_OK);
            assert_eq!(tally_clear_host(h), TALLY_OK);
            let mut buf = [0 as c_char; TALLY_INSTALLATION_ID_LEN];
            // A setup key has no installation ID.
            assert_eq!(
                tally_installation_id(h, buf.as_mut_ptr(), buf.len()),
                super::super::TALLY_KEY_NOT_USABLE
            );
            let mut s = std::mem::MaybeUninit::<tally_status>::uninit();
            assert_eq!(super::super::tally_read_status(h, s.as_mut_ptr()), TALLY_OK);
            let before = s.assume_init();
            assert_eq!(tally_generalize(h), TALLY_OK);
            let mut after = std::mem::MaybeUninit::<tally_status>::uninit();
            let mut changed = false;
            assert_eq!(
                tally_wait_for_change(h, &before, 0, after.as_mut_ptr(), &mut changed),
                TALLY_OK
            );
            assert!(changed, "a new CMID is a change");
            let after = after.assume_init();
            assert_ne!(after.cmid, before.cmid);
            assert_eq!(
                tally_wait_for_change(h, &after, 0, after_ptr(&mut s), &mut changed),
                TALLY_OK
            );
            assert!(!changed);
            assert_eq!(tally_set_timeout(h, 50), TALLY_OK);
            assert_eq!(tally_uninstall_key(h), TALLY_OK);
            super::super::tally_licensing_free(h);
        }
    }

    fn after_ptr(s: &mut std::mem::MaybeUninit<tally_status>) -> *mut tally_status {
        s.as_mut_ptr()
    }
}
