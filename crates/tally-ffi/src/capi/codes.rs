//! The result codes every C call returns (stable values, docs/PROTOCOL.md "Result codes"),
//! their snake_case names, and the `#define` lines written into `tally.h`. The C call
//! `tally_result_name` stays in the parent, where cbindgen places it in `tally.h`.

use std::ffi::CStr;

/// A result code: `TALLY_OK`, `TALLY_BELOW_THRESHOLD`, or an error (high bit set). The values
/// are stable and listed in docs/PROTOCOL.md "Result codes".
#[allow(non_camel_case_types)]
pub type tally_result = u32;

/// Success.
pub const TALLY_OK: tally_result = 0x00000000;
/// The host answered; its count is below the edition's threshold (not activated yet, R2).
pub const TALLY_BELOW_THRESHOLD: tally_result = 0x47A10001;
/// Host: the request could not be decoded.
pub const TALLY_MALFORMED_REQUEST: tally_result = 0xC7A10001;
/// Host: another protocol version.
pub const TALLY_UNSUPPORTED_VERSION: tally_result = 0xC7A10002;
/// Host: the edition is not in the host's catalog.
pub const TALLY_UNKNOWN_EDITION: tally_result = 0xC7A10003;
/// Host: the host's key group or generation does not cover the edition (R21).
pub const TALLY_EDITION_NOT_COVERED: tally_result = 0xC7A10004;
/// Host: the request names a pool the edition is not in.
pub const TALLY_POOL_MISMATCH: tally_result = 0xC7A10005;
/// Host: reserved, at its connection limit.
pub const TALLY_HOST_BUSY: tally_result = 0xC7A10006;
/// Host: could not store the request; nothing was counted.
pub const TALLY_STORAGE_FAILURE: tally_result = 0xC7A10007;
/// Host: the request frame was over 250 bytes.
pub const TALLY_FRAME_TOO_LARGE: tally_result = 0xC7A10008;
/// Host (protocol version 2): another installation presents this CMID; nothing was counted.
/// The library took a new CMID and asked again (X6).
pub const TALLY_CLONE_DETECTED: tally_result = 0xC7A10009;
/// Host (protocol version 2): this host's certificate is on the vendor's revocation list; the
/// host said so, or the library found it on the list it holds. The library asks the next host
/// (X7, R19).
pub const TALLY_HOST_REVOKED: tally_result = 0xC7A1000A;
/// The host could not be resolved or reached.
pub const TALLY_HOST_UNREACHABLE: tally_result = 0xC7A10101;
/// The host did not answer in time.
pub const TALLY_HOST_TIMEOUT: tally_result = 0xC7A10102;
/// The peer sent something that is not a valid Tally message.
pub const TALLY_PROTOCOL_ERROR: tally_result = 0xC7A10103;
/// The response failed verification (R16).
pub const TALLY_UNTRUSTED_RESPONSE: tally_result = 0xC7A10104;
/// No host set by hand or found in DNS.
pub const TALLY_NO_HOST: tally_result = 0xC7A10105;
/// All 3 rearms are used (R11).
pub const TALLY_NO_REARM_LEFT: tally_result = 0xC7A10201;
/// Not a usable key (wrong kind, not in the catalog, none installed), or a bad catalog.
pub const TALLY_KEY_NOT_USABLE: tally_result = 0xC7A10202;
/// The agent refused: the operation needs root or the agent's owner (R13).
pub const TALLY_ACCESS_DENIED: tally_result = 0xC7A10203;
/// The state directory cannot be read or written.
pub const TALLY_STATE_UNAVAILABLE: tally_result = 0xC7A10204;
/// No authority key to trust (pass a trust file, or put `authority.pub` in the state dir).
pub const TALLY_NO_TRUST: tally_result = 0xC7A10205;
/// A null pointer where one is not allowed, or a string that is not UTF-8.
pub const TALLY_INVALID_ARGUMENT: tally_result = 0xC7A10301;
/// A bug in the library (a caught panic) or its runtime could not start.
pub const TALLY_INTERNAL_ERROR: tally_result = 0xC7A10302;

/// Every result code: its `tally.h` name, value and meaning. The header's hexadecimal
/// `#define`s are generated from this table (`tests/header.rs`), so C sees `0xC7A1000A` as every
/// document and message writes it.
pub const RESULT_CODES: [(&str, tally_result, &str); 24] = [
    ("TALLY_OK", TALLY_OK, "Success (`success`)."),
    (
        "TALLY_BELOW_THRESHOLD",
        TALLY_BELOW_THRESHOLD,
        "The host answered; its count is below the edition's threshold: not activated yet, not an error (R2).",
    ),
    (
        "TALLY_MALFORMED_REQUEST",
        TALLY_MALFORMED_REQUEST,
        "Host: the request could not be decoded.",
    ),
    (
        "TALLY_UNSUPPORTED_VERSION",
        TALLY_UNSUPPORTED_VERSION,
        "Host: another protocol version.",
    ),
    (
        "TALLY_UNKNOWN_EDITION",
        TALLY_UNKNOWN_EDITION,
        "Host: the edition is not in the host's catalog.",
    ),
    (
        "TALLY_EDITION_NOT_COVERED",
        TALLY_EDITION_NOT_COVERED,
        "Host: the host's key group or generation does not cover the edition (R21).",
    ),
    (
        "TALLY_POOL_MISMATCH",
        TALLY_POOL_MISMATCH,
        "Host: the request names a pool the edition is not in.",
    ),
    (
        "TALLY_HOST_BUSY",
        TALLY_HOST_BUSY,
        "Host: at its connection limit.",
    ),
    (
        "TALLY_STORAGE_FAILURE",
        TALLY_STORAGE_FAILURE,
        "Host: could not store the request; nothing was counted.",
    ),
    (
        "TALLY_FRAME_TOO_LARGE",
        TALLY_FRAME_TOO_LARGE,
        "Host: the request frame was over 250 bytes.",
    ),
    (
        "TALLY_CLONE_DETECTED",
        TALLY_CLONE_DETECTED,
        "Host: another installation presents this CMID; the library took a new CMID and asked again (X6).",
    ),
    (
        "TALLY_HOST_REVOKED",
        TALLY_HOST_REVOKED,
        "The host's certificate is on the vendor's revocation list (X7).",
    ),
    (
        "TALLY_HOST_UNREACHABLE",
        TALLY_HOST_UNREACHABLE,
        "The host (or the authority) could not be resolved or reached, or refused a MAK.",
    ),
    (
        "TALLY_HOST_TIMEOUT",
        TALLY_HOST_TIMEOUT,
        "The host did not answer in time, or the call passed its timeout.",
    ),
    (
        "TALLY_PROTOCOL_ERROR",
        TALLY_PROTOCOL_ERROR,
        "The peer sent something that is not a valid Tally message.",
    ),
    (
        "TALLY_UNTRUSTED_RESPONSE",
        TALLY_UNTRUSTED_RESPONSE,
        "The answer failed verification (R16).",
    ),
    (
        "TALLY_NO_HOST",
        TALLY_NO_HOST,
        "No host set by hand or found in DNS, or no authority URL for a MAK.",
    ),
    (
        "TALLY_NO_REARM_LEFT",
        TALLY_NO_REARM_LEFT,
        "All 3 rearms are used (R11).",
    ),
    (
        "TALLY_KEY_NOT_USABLE",
        TALLY_KEY_NOT_USABLE,
        "Not a usable key (wrong kind, not in the catalog, none installed), or a bad catalog.",
    ),
    (
        "TALLY_ACCESS_DENIED",
        TALLY_ACCESS_DENIED,
        "The agent refused: the operation needs root or the agent's owner (R13).",
    ),
    (
        "TALLY_STATE_UNAVAILABLE",
        TALLY_STATE_UNAVAILABLE,
        "The state directory cannot be read or written.",
    ),
    (
        "TALLY_NO_TRUST",
        TALLY_NO_TRUST,
        "No authority key to trust (pass a trust file, or put authority.pub in the state dir).",
    ),
    (
        "TALLY_INVALID_ARGUMENT",
        TALLY_INVALID_ARGUMENT,
        "A NULL pointer where one is not allowed, a string that is not UTF-8, or a buffer too small.",
    ),
    (
        "TALLY_INTERNAL_ERROR",
        TALLY_INTERNAL_ERROR,
        "A bug in the library (a caught panic), or its runtime could not start.",
    ),
];

/// The C lines of the result codes (hexadecimal `#define`s with their meaning), generated into
/// `tally.h` by `tests/header.rs`.
pub fn result_code_defines() -> String {
    let mut out = String::from("/* Result codes (docs/PROTOCOL.md \"Result codes\"). */\n");
    for (name, code, doc) in RESULT_CODES {
        out.push_str(&format!("/** {doc} */\n#define {name} 0x{code:08X}\n"));
    }
    out
}

/// The result name as a C string.
pub fn result_name(code: tally_result) -> &'static CStr {
    match code {
        TALLY_OK => c"success",
        TALLY_BELOW_THRESHOLD => c"below_threshold",
        TALLY_MALFORMED_REQUEST => c"malformed_request",
        TALLY_UNSUPPORTED_VERSION => c"unsupported_version",
        TALLY_UNKNOWN_EDITION => c"unknown_edition",
        TALLY_EDITION_NOT_COVERED => c"edition_not_covered",
        TALLY_POOL_MISMATCH => c"pool_mismatch",
        TALLY_HOST_BUSY => c"host_busy",
        TALLY_STORAGE_FAILURE => c"storage_failure",
        TALLY_FRAME_TOO_LARGE => c"frame_too_large",
        TALLY_CLONE_DETECTED => c"clone_detected",
        TALLY_HOST_REVOKED => c"host_revoked",
        TALLY_HOST_UNREACHABLE => c"host_unreachable",
        TALLY_HOST_TIMEOUT => c"host_timeout",
        TALLY_PROTOCOL_ERROR => c"protocol_error",
        TALLY_UNTRUSTED_RESPONSE => c"untrusted_response",
        TALLY_NO_HOST => c"no_host",
        TALLY_NO_REARM_LEFT => c"no_rearm_left",
        TALLY_KEY_NOT_USABLE => c"key_not_usable",
        TALLY_ACCESS_DENIED => c"access_denied",
        TALLY_STATE_UNAVAILABLE => c"state_unavailable",
        TALLY_NO_TRUST => c"no_trust",
        TALLY_INVALID_ARGUMENT => c"invalid_argument",
        TALLY_INTERNAL_ERROR => c"internal_error",
        _ => c"unknown",
    }
}
