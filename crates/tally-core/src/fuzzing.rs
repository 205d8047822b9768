//! Fuzzing entry points for every decoder of outside input in this crate, compiled in normal
//! builds so they cannot rot; `fuzz/` calls them (`cargo +nightly fuzz run TARGET`) and
//! `tests/fuzz_regressions.rs` replays the inputs kept in `fuzz/regressions/`. Each one must
//! return without panicking for any input; where a decoder has an encoder, the round trip
//! must hold.

use ed25519_dalek::SigningKey;

use crate::trust::{parse_authority_public, parse_certificate, parse_host_public, parse_secret};
use crate::{Catalog, ProductKey, digits};

/// A catalog file (TOML) as an operator or an import supplies it.
pub fn fuzz_catalog(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Catalog::parse(text);
    }
}

/// A signed catalog (R24), checked against a fixed authority key.
pub fn fuzz_signed_catalog(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let authority = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let _ = crate::catalog::signed::verify(text, &authority);
    }
}

/// Key and certificate files (`LABEL HEX`), and product keys as typed.
pub fn fuzz_signed_files(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_authority_public(text);
        let _ = parse_secret("tally-host-secret-key-v1", text);
        let _ = parse_host_public(text);
        let _ = parse_certificate(text);
        // X8: rollover files; whatever parses encodes back to the same statements.
        if let Ok(statements) = crate::rollover::parse_file(text) {
            let again: String = statements.iter().map(|s| s.to_text()).collect();
            assert_eq!(crate::rollover::parse_file(&again).ok(), Some(statements));
        }
        let _ = text.parse::<ProductKey>();
    }
}

/// Offline IDs (`digits`): the first byte picks the length in bytes, the rest is the typed
/// text; whatever decodes must encode back to groups that decode to the same bytes.
pub fn fuzz_digits(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let n = usize::from(n % 80);
    if let Ok(bytes) = digits::decode(text, n) {
        let again = digits::decode(&digits::encode(&bytes).join(" "), n);
        assert_eq!(again.ok(), Some(bytes), "offline ID round trip differs");
    }
}
