//! Comparing secrets (bearer tokens) without leaking, through timing, how much of a guess was
//! right. Used by the host's admin API and by the authority's API.

/// Whether `a` and `b` are equal, in time that depends only on their lengths.
///
/// The length itself is not secret (tokens have a fixed format); every byte is compared even
/// after a difference is found.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_only_when_every_byte_matches() {
        assert!(constant_time_eq(b"token", b"token"));
        assert!(!constant_time_eq(b"token", b"tokem"));
        assert!(!constant_time_eq(b"token", b"token2"));
        assert!(constant_time_eq(b"", b""));
    }
}
