//! Fuzzing entry point for the authority API's JSON bodies (compiled in normal builds; `fuzz/`
//! and the regression test call it).

use crate::service::{
    ExceptionRequest, HostActivationRequest, IssueRequest, MakActivationRequest, MakIssueRequest,
    RevokeRequest, parse_hardware_id,
};

/// The first byte picks the request type, the rest is its JSON body: it must decode or be
/// refused, and the field checks that run before any store access must not panic.
pub fn fuzz_authority_body(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 6 {
        0 => {
            if let Ok(r) = serde_json::from_slice::<HostActivationRequest>(body) {
                let _ = r.host_key.parse::<tally_core::ProductKey>();
                let _ = parse_hardware_id(&r.hardware_id);
                let _ = tally_core::trust::from_hex(&r.host_public_key);
            }
        }
        1 => {
            if let Ok(r) = serde_json::from_slice::<MakActivationRequest>(body) {
                let _ = r.mak.parse::<tally_core::ProductKey>();
                let _ = parse_hardware_id(&r.hardware_id);
            }
        }
        2 => drop(serde_json::from_slice::<IssueRequest>(body)),
        3 => drop(serde_json::from_slice::<MakIssueRequest>(body)),
        4 => drop(serde_json::from_slice::<ExceptionRequest>(body)),
        _ => drop(serde_json::from_slice::<RevokeRequest>(body)),
    }
}

#[cfg(test)]
mod tests {
    /// Replays `fuzz/regressions/authority_body/` (see `tally_core::fuzzing`).
    #[test]
    fn regressions() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/regressions/authority_body");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("regression dir") {
            let data = std::fs::read(entry.expect("entry").path()).expect("read");
            super::fuzz_authority_body(&data);
            n += 1;
        }
        assert!(n > 0, "no regression inputs");
    }
}
