//! The C ABI (`include/tally.h` is generated from this module by cbindgen).
//!
//! As in rustls-ffi: one result type for every call, opaque handles, the caller owns what it
//! allocates, every entry point catches panics ([`panic::guard`]) and returns
//! `TALLY_INTERNAL_ERROR` instead of unwinding into C.
//!
//! The handle, status structs and core calls are here; the result codes and their names in
//! `codes`, the other calls in `calls` (both re-exported here).

use std::ffi::{CStr, c_char};
use std::path::Path;

use crate::embed::{Error, Handle, Status};

mod calls;
mod codes;
mod panic;
pub use calls::*;
pub use codes::*;
use panic::{guard, guard_value, set_message, take_message_into};
use tally_client::LicenseStatus;

/// An installation's licensing, opened on its state directory. Opaque; thread-safe.
#[allow(non_camel_case_types)]
pub struct tally_licensing {
    inner: Handle,
}

/// The license state.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum tally_license_state {
    /// No key installed.
    TALLY_STATE_UNLICENSED = 0,
    /// Not activated yet, within the 30-day grace period (R10).
    TALLY_STATE_INITIAL_GRACE = 1,
    /// Activated and within validity (R7), or permanently (MAK, R25).
    TALLY_STATE_LICENSED = 2,
    /// Grace or validity ran out: the application decides what that means (R10).
    TALLY_STATE_NOTIFICATION = 3,
    /// The hardware changed too much: reactivation needed (R12).
    TALLY_STATE_OUT_OF_TOLERANCE = 4,
}

impl From<LicenseStatus> for tally_license_state {
    fn from(s: LicenseStatus) -> Self {
        match s {
            LicenseStatus::Unlicensed => Self::TALLY_STATE_UNLICENSED,
            LicenseStatus::InitialGrace => Self::TALLY_STATE_INITIAL_GRACE,
            LicenseStatus::Licensed => Self::TALLY_STATE_LICENSED,
            LicenseStatus::Notification => Self::TALLY_STATE_NOTIFICATION,
            LicenseStatus::OutOfTolerance => Self::TALLY_STATE_OUT_OF_TOLERANCE,
        }
    }
}

/// Bytes of `tally_status.edition`, NUL included.
pub const TALLY_EDITION_LEN: usize = 128;

/// The license status, filled by `tally_read_status()`. A plain struct the caller allocates.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct tally_status {
    /// Whether the application may consider itself licensed.
    pub licensed: bool,
    /// Licensed for good by a MAK (R25); `days_left` is 0 and means nothing then.
    pub permanent: bool,
    /// The state.
    pub state: tally_license_state,
    /// Whole days left of grace or validity.
    pub days_left: u32,
    /// Minutes left of grace or validity.
    pub minutes_left: u32,
    /// Rearms left (R11).
    pub rearms_left: u32,
    /// The installed edition's name, UTF-8, NUL-terminated, cut to fit; empty when no key.
    pub edition: [c_char; TALLY_EDITION_LEN],
    /// Whether an activation was attempted; `last_result` and `count` are 0 when not.
    pub has_last_attempt: bool,
    /// The result code of the last activation attempt.
    pub last_result: tally_result,
    /// The count of the last attempt that reached a host (0 when none).
    pub count: u32,
    /// X5: seconds the local clock is behind the latest reading the library has seen (0 when
    /// it is not): nothing is extended and `state` is notification until the clock is right
    /// again or a host answers.
    pub clock_behind_secs: i64,
    /// The CMID (lowercase UUID, NUL-terminated): this installation's id as hosts count it.
    pub cmid: [c_char; TALLY_CMID_LEN],
    /// End of grace (R10), Unix milliseconds; 0 when not in grace.
    pub grace_end_ms: i64,
    /// End of validity (R7), Unix milliseconds; 0 before activation and for a MAK.
    pub validity_end_ms: i64,
    /// When the next activation or renewal attempt is due (R8), Unix milliseconds; 0 when none.
    pub next_attempt_ms: i64,
    /// X7: the license was taken back (its MAK or its host is on the vendor's revocation
    /// list); `tally_last_error_message()` after `tally_read_status()` says why.
    pub revoked: bool,
    /// X7: the serial of the newest revocation list this installation holds (0: none).
    pub revocation_serial: u32,
}

/// Bytes of `tally_status.cmid`, NUL included.
pub const TALLY_CMID_LEN: usize = 37;

/// The outcome of `tally_activate()`. A plain struct the caller allocates.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct tally_activation {
    /// Whether the installation is now activated.
    pub activated: bool,
    /// `TALLY_OK`, `TALLY_BELOW_THRESHOLD` or the error (also the function's return value).
    pub code: tally_result,
    /// The pool's count the host reported (0 when none).
    pub count: u32,
    /// The edition's threshold (0 when unknown).
    pub threshold: u32,
}

/// The library's version, e.g. `"0.1.0"`. Static: never free it.
#[unsafe(no_mangle)]
pub extern "C" fn tally_version() -> *const c_char {
    c"0.1.0".as_ptr()
}

/// The snake_case name of a result code (`"key_not_usable"`), `"unknown"` for a code this build
/// does not know. Static: never free it; never NULL.
#[unsafe(no_mangle)]
pub extern "C" fn tally_result_name(code: tally_result) -> *const c_char {
    guard_value(c"unknown".as_ptr(), || result_name(code).as_ptr())
}

/// Copies the message of the calling thread's last `tally_*` call (success or failure) into
/// `buf` (`len` bytes, caller-owned), cut at a UTF-8 boundary and always NUL-terminated when
/// `len > 0`. Returns the message's full length in bytes without the NUL, so a return value
/// `>= len` means it was cut. `buf` may be NULL when `len` is 0 (to ask for the length).
/// Messages never contain a product key.
/// # Safety
/// `buf` is NULL (with `len` 0) or points to `len` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tally_last_error_message(buf: *mut c_char, len: usize) -> usize {
    guard_value(0, || {
        if buf.is_null() || len == 0 {
            return take_message_into(&mut []);
        }
        // SAFETY: the caller guarantees `buf` points to `len` writable bytes (header contract),
        // and we checked it is not null; `c_char` and `u8` have the same size and alignment.
        let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
        take_message_into(out)
    })
}

/// Opens the installation whose state is in `state_dir` (UTF-8 path; created on the first
/// change) with the vendor's catalog file `catalog_file` (TOML, as `tally catalog` reads), or
/// the built-in demo catalog when `catalog_file` is NULL. On success `*out` is a new handle the
/// caller owns and must release with `tally_licensing_free()`; on failure `*out` is NULL.
/// The strings are only read during the call.
/// # Safety
/// `state_dir` is a NUL-terminated string; `catalog_file` is one or NULL; `out` points to a
/// writable `tally_licensing *`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tally_licensing_open(
    state_dir: *const c_char,
    catalog_file: *const c_char,
    out: *mut *mut tally_licensing,
) -> tally_result {
    guard(|| {
        if out.is_null() {
            return Err(invalid("out must not be NULL"));
        }
        // SAFETY: `out` is not null and points to a writable pointer (header contract).
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: the caller passes NUL-terminated strings or NULL, valid for this call.
        let dir = unsafe { required(state_dir, "state_dir") }?;
        // SAFETY: as above.
        let catalog = unsafe { optional(catalog_file, "catalog_file") }?;
        let inner = Handle::open(Path::new(dir), catalog.map(Path::new))?;
        let handle = Box::into_raw(Box::new(tally_licensing { inner }));
        // SAFETY: `out` is not null and writable, as checked above.
        unsafe { out.write(handle) };
        Ok((TALLY_OK, format!("opened {dir}")))
    })
}

/// Releases a handle from `tally_licensing_open()`. NULL is ignored. The handle must not be in
/// use by another thread and must not be used afterwards.
/// # Safety
/// `handle` is NULL or a handle from `tally_licensing_open()` not freed yet.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tally_licensing_free(handle: *mut tally_licensing) {
    guard_value((), || {
        if !handle.is_null() {
            // SAFETY: `handle` came from `Box::into_raw` in `tally_licensing_open` and is
            // released exactly once, by this call (header contract).
            drop(unsafe { Box::from_raw(handle) });
        }
    });
}

/// Installs a product key: the edition's setup key (activates against a host) or a MAK
/// (activates with the vendor's authority, R25). A host key is refused with
/// `TALLY_KEY_NOT_USABLE`. Needs write access to the state directory (R13). `key` is only read
/// during the call and never logged.
/// # Safety
/// `handle` is a live handle (or NULL); `key` is a NUL-terminated string (or NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tally_install_key(
    handle: *const tally_licensing,
    key: *const c_char,
) -> tally_result {
    guard(|| {
        // SAFETY: `handle` is NULL or a live handle (header contract).
        let h = unsafe { handle_ref(handle) }?;
        // SAFETY: a NUL-terminated string or NULL, valid for this call.
        let key = unsafe { required(key, "key") }?;
        Ok((TALLY_OK, h.install_key(key)?))
    })
}

/// Activates now. `host` (`"HOST[:PORT]"`, default port 1688) is used for this attempt only;
/// NULL uses the host set by hand, the cached host or DNS discovery. `trust_file` is the
/// authority's public key file; NULL uses `STATE_DIR/authority.pub`. With both NULL the request
/// goes through the local agent when one runs. `out` (caller-owned, may be NULL) is filled
/// whenever the call returns, `code` equal to the return value.
///
/// Returns `TALLY_OK` when activated, `TALLY_BELOW_THRESHOLD` when the host counted fewer
/// machines than the edition needs (stay in grace, try again later), or an error.
/// # Safety
/// `handle` is a live handle (or NULL); `host` and `trust_file` are NUL-terminated strings or
/// NULL; `out` is NULL or points to a writable `tally_activation`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tally_activate(
    handle: *const tally_licensing,
    host: *const c_char,
    trust_file: *const c_char,
    out: *mut tally_activation,
) -> tally_result {
    // SAFETY: forwarded header contract (`handle`, `out`).
    unsafe {
        activate_into(handle, out, |h| {
            // NUL-terminated strings or NULL, valid for this call (header contract).
            let host = optional(host, "host")?;
            let trust = optional(trust_file, "trust_file")?;
            h.activate(host, trust.map(Path::new))
        })
    }
}

/// Runs an activation and fills `out` (when not NULL) whatever the outcome.
/// # Safety
/// `handle` is NULL or a live handle; `out` is NULL or points to a writable `tally_activation`.
pub(crate) unsafe fn activate_into(
    handle: *const tally_licensing,
    out: *mut tally_activation,
    f: impl FnOnce(&Handle) -> Result<crate::embed::Activation, Error>,
) -> tally_result {
    let code = guard(|| {
        // SAFETY: `handle` is NULL or a live handle (this function's contract).
        let h = unsafe { handle_ref(handle) }?;
        let a = f(h)?;
        if !out.is_null() {
            let filled = tally_activation {
                activated: a.activated,
                code: a.code,
                count: a.count,
                threshold: u32::from(a.threshold),
            };
            // SAFETY: `out` is not null and points to a writable `tally_activation`.
            unsafe { out.write(filled) };
        }
        Ok((a.code, a.message))
    });
    if code != TALLY_OK && code != TALLY_BELOW_THRESHOLD && !out.is_null() {
        let failed = tally_activation {
            code,
            ..tally_activation::default()
        };
        // SAFETY: `out` is not null and points to a writable `tally_activation`.
        unsafe { out.write(failed) };
    }
    code
}

/// Fills `*out` (caller-owned, not NULL) with the license status: from the local agent when
/// one runs, else read from the state directory. Needs only read access (R13).
/// # Safety
/// `handle` is a live handle (or NULL); `out` points to a writable `tally_status` (or is NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tally_read_status(
    handle: *const tally_licensing,
    out: *mut tally_status,
) -> tally_result {
    guard(|| {
        // SAFETY: `handle` is NULL or a live handle (header contract).
        let h = unsafe { handle_ref(handle) }?;
        if out.is_null() {
            return Err(invalid("out must not be NULL"));
        }
        let status = h.status()?;
        let message = match &status.revoked {
            Some(why) => format!("{} (revoked: {why})", status.state),
            None => format!("{}", status.state),
        };
        // SAFETY: `out` is not null and points to a writable `tally_status`.
        unsafe { out.write(to_c_status(&status)) };
        Ok((TALLY_OK, message))
    })
}

/// R11: resets the grace period to 30 days, at most 3 times (then `TALLY_NO_REARM_LEFT`).
/// Needs write access to the state directory (R13).
/// # Safety
/// `handle` is a live handle (or NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tally_rearm(handle: *const tally_licensing) -> tally_result {
    guard(|| {
        // SAFETY: `handle` is NULL or a live handle (header contract).
        let h = unsafe { handle_ref(handle) }?;
        Ok((TALLY_OK, h.rearm()?))
    })
}

pub(crate) fn invalid(message: &str) -> Error {
    Error::new(TALLY_INVALID_ARGUMENT, message)
}

/// # Safety
/// `handle` is NULL or a pointer from `tally_licensing_open` not yet freed.
pub(crate) unsafe fn handle_ref<'a>(handle: *const tally_licensing) -> Result<&'a Handle, Error> {
    // SAFETY: per this function's contract, a non-null `handle` points to a live
    // `tally_licensing`; only shared references are made, and `Handle` is `Sync`.
    unsafe { handle.as_ref() }
        .map(|h| &h.inner)
        .ok_or_else(|| invalid("handle must not be NULL"))
}

/// # Safety
/// `p` is NULL or a NUL-terminated string valid for `'a`.
pub(crate) unsafe fn optional<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, Error> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: per this function's contract, `p` is a valid NUL-terminated string.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map(Some)
        .map_err(|_| invalid(&format!("{what} is not UTF-8")))
}

/// # Safety
/// As [`optional`].
pub(crate) unsafe fn required<'a>(p: *const c_char, what: &str) -> Result<&'a str, Error> {
    // SAFETY: forwarded contract.
    unsafe { optional(p, what) }?.ok_or_else(|| invalid(&format!("{what} must not be NULL")))
}

/// `text` as a NUL-terminated C array of `N` bytes, cut at a UTF-8 boundary.
fn c_text<const N: usize>(text: &str) -> [c_char; N] {
    let mut out = [0 as c_char; N];
    let mut end = text.len().min(N.saturating_sub(1));
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    for (dst, src) in out.iter_mut().zip(&text.as_bytes()[..end]) {
        *dst = *src as c_char;
    }
    out
}

pub(crate) fn to_c_status(s: &Status) -> tally_status {
    let edition = c_text::<TALLY_EDITION_LEN>(s.edition.as_deref().unwrap_or(""));
    tally_status {
        licensed: s.licensed,
        permanent: s.permanent,
        state: s.state.into(),
        days_left: s.days_left,
        minutes_left: s.minutes_left,
        rearms_left: u32::from(s.rearms_left),
        edition,
        has_last_attempt: s.last_result.is_some(),
        last_result: s.last_result.unwrap_or(0),
        count: s.count.unwrap_or(0),
        clock_behind_secs: s.report.clock_behind_secs.unwrap_or(0),
        cmid: c_text::<TALLY_CMID_LEN>(&s.cmid),
        grace_end_ms: s.grace_end_ms.unwrap_or(0),
        validity_end_ms: s.validity_end_ms.unwrap_or(0),
        next_attempt_ms: s.next_attempt_ms.unwrap_or(0),
        revoked: s.revoked.is_some(),
        revocation_serial: s.revocation_serial,
    }
}

/// Sets the thread's message (used by the panic guard for caught panics).
pub(crate) fn note(message: String) {
    set_message(message);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use tally_client::codes;
    use tally_proto::ResultCode;

    #[test]
    fn constants_and_names_match_the_client_and_host_codes() {
        let pairs = [
            (TALLY_BELOW_THRESHOLD, codes::BELOW_THRESHOLD),
            (TALLY_HOST_UNREACHABLE, codes::HOST_UNREACHABLE),
            (TALLY_HOST_TIMEOUT, codes::HOST_TIMEOUT),
            (TALLY_PROTOCOL_ERROR, codes::PROTOCOL_ERROR),
            (TALLY_UNTRUSTED_RESPONSE, codes::UNTRUSTED_RESPONSE),
            (TALLY_NO_HOST, codes::NO_HOST),
            (TALLY_NO_REARM_LEFT, codes::NO_REARM_LEFT),
            (TALLY_KEY_NOT_USABLE, codes::KEY_NOT_USABLE),
            (TALLY_ACCESS_DENIED, codes::ACCESS_DENIED),
            (TALLY_STATE_UNAVAILABLE, codes::STATE_UNAVAILABLE),
            (TALLY_NO_TRUST, codes::NO_TRUST),
            (TALLY_INVALID_ARGUMENT, codes::INVALID_ARGUMENT),
            (TALLY_INTERNAL_ERROR, codes::INTERNAL_ERROR),
            (TALLY_MALFORMED_REQUEST, ResultCode::MALFORMED_REQUEST.0),
            (TALLY_UNSUPPORTED_VERSION, ResultCode::UNSUPPORTED_VERSION.0),
            (TALLY_UNKNOWN_EDITION, ResultCode::UNKNOWN_EDITION.0),
            (TALLY_EDITION_NOT_COVERED, ResultCode::EDITION_NOT_COVERED.0),
            (TALLY_POOL_MISMATCH, ResultCode::POOL_MISMATCH.0),
            (TALLY_HOST_BUSY, ResultCode::HOST_BUSY.0),
            (TALLY_STORAGE_FAILURE, ResultCode::STORAGE_FAILURE.0),
            (TALLY_FRAME_TOO_LARGE, ResultCode::FRAME_TOO_LARGE.0),
            (TALLY_CLONE_DETECTED, ResultCode::CLONE_DETECTED.0),
            (TALLY_HOST_REVOKED, ResultCode::HOST_REVOKED.0),
        ];
        for (c, rust) in pairs {
            assert_eq!(c, rust);
            assert_eq!(result_name(c).to_str().unwrap(), codes::name(rust));
        }
        assert_eq!(pairs.len(), codes::ALL.len() + 10);
        assert_eq!(result_name(0x1234).to_str().unwrap(), "unknown");
    }

    #[test]
    fn null_and_non_utf8_arguments_are_refused_with_a_message() {
        let mut h: *mut tally_licensing = std::ptr::null_mut();
        // SAFETY: valid pointers; NULL state dir is what is tested.
        let rc = unsafe { tally_licensing_open(std::ptr::null(), std::ptr::null(), &mut h) };
        assert_eq!(rc, TALLY_INVALID_ARGUMENT);
        assert!(h.is_null());
        let mut buf = [0 as c_char; 64];
        // SAFETY: `buf` has 64 writable bytes.
        let n = unsafe { tally_last_error_message(buf.as_mut_ptr(), buf.len()) };
        // SAFETY: the library NUL-terminated `buf`.
        let msg = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap();
        assert_eq!(msg, "state_dir must not be NULL");
        assert_eq!(n, msg.len());
        // SAFETY: a NULL handle is allowed and refused.
        assert_eq!(
            unsafe { tally_rearm(std::ptr::null()) },
            TALLY_INVALID_ARGUMENT
        );
        let bad = [0xFFu8 as c_char, 0];
        // SAFETY: `bad` is NUL-terminated.
        let rc = unsafe { tally_licensing_open(bad.as_ptr(), std::ptr::null(), &mut h) };
        assert_eq!(rc, TALLY_INVALID_ARGUMENT);
    }

    #[test]
    fn a_message_is_cut_at_a_character_and_its_length_reported() {
        set_message("días".to_owned()); // 'í' is 2 bytes: "d" "í" = 3 bytes
        let mut buf = [0x7F as c_char; 3];
        // SAFETY: `buf` has 3 writable bytes.
        let n = unsafe { tally_last_error_message(buf.as_mut_ptr(), buf.len()) };
        assert_eq!(n, "días".len());
        // SAFETY: NUL-terminated by the library.
        assert_eq!(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_bytes(), b"d");
        // SAFETY: NULL with length 0 only asks for the length.
        assert_eq!(
            unsafe { tally_last_error_message(std::ptr::null_mut(), 0) },
            n
        );
    }

    #[test]
    fn a_handle_opens_reports_status_and_frees() {
        let dir = tempfile::tempdir().unwrap();
        let path = std::ffi::CString::new(dir.path().to_str().unwrap()).unwrap();
        let mut h: *mut tally_licensing = std::ptr::null_mut();
        // SAFETY: valid strings and out pointer.
        assert_eq!(
            unsafe { tally_licensing_open(path.as_ptr(), std::ptr::null(), &mut h) },
            TALLY_OK
        );
        let key = c"FW777-M677J-W8KJV-QG4VJ-HC6WP";
        // SAFETY: a live handle and a valid string.
        assert_eq!(unsafe { tally_install_key(h, key.as_ptr()) }, TALLY_OK);
        let mut s = std::mem::MaybeUninit::<tally_status>::uninit();
        // SAFETY: a live handle and a writable struct.
        assert_eq!(unsafe { tally_read_status(h, s.as_mut_ptr()) }, TALLY_OK);
        // SAFETY: tally_read_status returned TALLY_OK, so it wrote the whole struct.
        let s = unsafe { s.assume_init() };
        assert_eq!(s.state, tally_license_state::TALLY_STATE_INITIAL_GRACE);
        assert!(!s.licensed && !s.has_last_attempt);
        // SAFETY: NUL-terminated by the library.
        let ed = unsafe { CStr::from_ptr(s.edition.as_ptr()) };
        assert!(!ed.to_bytes().is_empty());
        let mut a = tally_activation::default();
        // SAFETY: live handle; `a` writable.
        let rc = unsafe { tally_activate(h, c"127.0.0.1:9".as_ptr(), std::ptr::null(), &mut a) };
        assert_eq!(rc, TALLY_NO_TRUST);
        assert_eq!(a.code, TALLY_NO_TRUST);
        // SAFETY: the handle is freed once and not used again.
        unsafe { tally_licensing_free(h) };
    }
}
