//! Client-side result codes (R14). Host codes are in `tally_proto::ResultCode`; the full table
//! with advice is in `docs/PROTOCOL.md`.

/// The host answered; the count is below the edition's threshold (informational).
pub const BELOW_THRESHOLD: u32 = 0x47A1_0001;
/// The host could not be resolved or reached.
pub const HOST_UNREACHABLE: u32 = 0xC7A1_0101;
/// The host did not answer in time.
pub const HOST_TIMEOUT: u32 = 0xC7A1_0102;
/// The peer is not speaking the Tally protocol.
pub const PROTOCOL_ERROR: u32 = 0xC7A1_0103;
/// The response failed verification (R16).
pub const UNTRUSTED_RESPONSE: u32 = 0xC7A1_0104;
/// No host is configured or discovered.
pub const NO_HOST: u32 = 0xC7A1_0105;
/// R11: no rearm left.
pub const NO_REARM_LEFT: u32 = 0xC7A1_0201;
/// The key cannot be used here (wrong kind, not in the catalog, none installed).
pub const KEY_NOT_USABLE: u32 = 0xC7A1_0202;
/// R13: the operation needs root or the agent's owner.
pub const ACCESS_DENIED: u32 = 0xC7A1_0203;
/// The state file cannot be read or written.
pub const STATE_UNAVAILABLE: u32 = 0xC7A1_0204;
/// No trusted authority key is configured.
pub const NO_TRUST: u32 = 0xC7A1_0205;
/// An embedding API was called wrongly: a null pointer, a string that is not UTF-8, a handle
/// used after it was freed is undefined behaviour and never reported (C ABI, `tally-ffi`).
pub const INVALID_ARGUMENT: u32 = 0xC7A1_0301;
/// A bug inside the library (a caught panic) or its runtime could not start; the handle may
/// be used again, the operation did not complete.
pub const INTERNAL_ERROR: u32 = 0xC7A1_0302;

/// Every client-side code, in table order (hosts' codes are in `tally_proto::ResultCode`).
pub const ALL: [u32; 13] = [
    BELOW_THRESHOLD,
    HOST_UNREACHABLE,
    HOST_TIMEOUT,
    PROTOCOL_ERROR,
    UNTRUSTED_RESPONSE,
    NO_HOST,
    NO_REARM_LEFT,
    KEY_NOT_USABLE,
    ACCESS_DENIED,
    STATE_UNAVAILABLE,
    NO_TRUST,
    INVALID_ARGUMENT,
    INTERNAL_ERROR,
];

/// The snake_case name of a code, for JSON and logs.
pub fn name(code: u32) -> &'static str {
    match code {
        0 => "activated",
        BELOW_THRESHOLD => "below_threshold",
        HOST_UNREACHABLE => "host_unreachable",
        HOST_TIMEOUT => "host_timeout",
        PROTOCOL_ERROR => "protocol_error",
        UNTRUSTED_RESPONSE => "untrusted_response",
        NO_HOST => "no_host",
        NO_REARM_LEFT => "no_rearm_left",
        KEY_NOT_USABLE => "key_not_usable",
        ACCESS_DENIED => "access_denied",
        STATE_UNAVAILABLE => "state_unavailable",
        NO_TRUST => "no_trust",
        INVALID_ARGUMENT => "invalid_argument",
        INTERNAL_ERROR => "internal_error",
        other => tally_proto::ResultCode(other).name().unwrap_or("unknown"),
    }
}
