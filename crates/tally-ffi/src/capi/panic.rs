//! No panic crosses the C boundary (rustls-ffi `panic.rs`): every entry point runs inside
//! [`guard`] or [`guard_value`], which catch an unwinding panic and turn it into
//! `TALLY_INTERNAL_ERROR` (or a fixed value) with a message. The per-thread message store used by
//! `tally_last_error_message` lives here too.

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::{TALLY_INTERNAL_ERROR, note, tally_result};
use crate::embed::Error;

thread_local! {
    /// The message of this thread's last call.
    static LAST_MESSAGE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Runs an entry point: its `(code, message)` or error becomes the return value and the
/// thread's message; a panic becomes `TALLY_INTERNAL_ERROR`.
pub(crate) fn guard(f: impl FnOnce() -> Result<(tally_result, String), Error>) -> tally_result {
    // AssertUnwindSafe: after a panic nothing the closure touched is used again except the
    // handle, whose state lives in the locked state file, written atomically.
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok((code, message))) => {
            set_message(message);
            code
        }
        Ok(Err(e)) => {
            set_message(e.message);
            e.code
        }
        Err(panic) => {
            note(format!("internal error: {}", panic_message(&*panic)));
            TALLY_INTERNAL_ERROR
        }
    }
}

/// Runs an entry point that returns a plain value; `fallback` when it panics.
pub(crate) fn guard_value<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

/// Replaces the calling thread's message. Never panics (a re-entrant call is ignored).
pub(crate) fn set_message(message: String) {
    let _ = LAST_MESSAGE.try_with(|m| {
        if let Ok(mut m) = m.try_borrow_mut() {
            *m = message;
        }
    });
}

/// Copies the thread's message into `out`, cut at a UTF-8 boundary, NUL-terminated when `out`
/// is not empty; returns the full length without the NUL.
pub(crate) fn take_message_into(out: &mut [u8]) -> usize {
    LAST_MESSAGE
        .try_with(|m| {
            let Ok(m) = m.try_borrow() else { return 0 };
            if let Some(room) = out.len().checked_sub(1) {
                let mut end = m.len().min(room);
                while !m.is_char_boundary(end) {
                    end -= 1;
                }
                out[..end].copy_from_slice(&m.as_bytes()[..end]);
                out[end] = 0;
            }
            m.len()
        })
        .unwrap_or(0)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_internal_error_with_its_message() {
        let code = guard(|| panic!("boom"));
        assert_eq!(code, TALLY_INTERNAL_ERROR);
        let mut buf = [0u8; 64];
        let n = take_message_into(&mut buf);
        assert_eq!(&buf[..n], b"internal error: boom");
        assert_eq!(guard_value(7, || panic!("again")), 7);
    }
}
