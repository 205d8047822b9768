//! Fuzzing entry point for the admin API's JSON body (compiled in normal builds; `fuzz/` and
//! the regression test call it).

/// A `PATCH /api/v1/settings` body: must decode or be refused, never panic.
pub fn fuzz_admin_body(data: &[u8]) {
    let _ = serde_json::from_slice::<crate::SettingsChange>(data);
}

#[cfg(test)]
mod tests {
    /// Replays `fuzz/regressions/admin_body/` (see `tally_core::fuzzing`).
    #[test]
    fn regressions() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/regressions/admin_body");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("regression dir") {
            let data = std::fs::read(entry.expect("entry").path()).expect("read");
            super::fuzz_admin_body(&data);
            n += 1;
        }
        assert!(n > 0, "no regression inputs");
    }
}
