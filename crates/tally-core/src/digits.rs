//! Digit groups for offline ("by phone") activation IDs (R22): bytes written as groups of six decimal digits,
//! each followed by a check digit, so a typo in any group is caught and named.
//!
//! The check digit of group *g* (1-based) is the Damm check digit over the two digits of *g*
//! followed by the group's six digits: every single wrong digit and every swap of two neighbours
//! is caught (Luhn, used before, misses 09 ↔ 90), and so is a group typed in the wrong place.
//!
//! Lengths are the minimum the cryptography allows:
//! - **installation ID**: host key payload (14 bytes) + host public key (32) + hardware id (5)
//!   = 51 bytes → 21 groups (147 digits typed).
//! - **confirmation ID**: issue day (2 bytes) + Ed25519 signature (64) = 66 bytes → 27 groups
//!   (189 digits typed). An Ed25519 signature alone is 154 decimal digits.

use thiserror::Error;

/// Data digits per group.
pub const GROUP_DIGITS: usize = 6;

/// Why typed digits were refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DigitsError {
    /// Wrong number of groups.
    #[error("expected {expected} groups of 7 digits, got {got}")]
    GroupCount {
        /// Expected.
        expected: usize,
        /// Given.
        got: usize,
    },
    /// A group is not 7 digits.
    #[error("group {0} is not 7 digits")]
    GroupShape(usize),
    /// A group's check digit does not match: a typo in that group.
    #[error("group {0} is wrong (its check digit does not match): re-read that group")]
    Check(usize),
    /// The digits are well formed but encode a number too large for the ID.
    #[error("not a valid ID")]
    Range,
}

/// The Damm algorithm's totally anti-symmetric quasigroup of order 10 (Damm 2004).
const DAMM: [[u8; 10]; 10] = [
    [0, 3, 1, 7, 5, 9, 8, 6, 4, 2],
    [7, 0, 9, 2, 1, 5, 4, 8, 6, 3],
    [4, 2, 0, 6, 8, 7, 1, 3, 5, 9],
    [1, 7, 5, 0, 9, 8, 3, 4, 2, 6],
    [6, 1, 2, 3, 0, 4, 5, 9, 7, 8],
    [3, 6, 7, 4, 2, 0, 9, 5, 8, 1],
    [5, 8, 6, 9, 7, 2, 0, 1, 3, 4],
    [8, 9, 4, 5, 3, 6, 2, 0, 1, 7],
    [9, 4, 3, 8, 6, 1, 7, 2, 0, 5],
    [2, 5, 8, 1, 4, 3, 6, 7, 9, 0],
];

/// The Damm check digit of `digits` (each 0–9).
fn damm_check(digits: &[u8]) -> u8 {
    digits.iter().fold(0u8, |interim, &d| {
        DAMM[usize::from(interim)][usize::from(d % 10)]
    })
}

fn group_check(index: usize, group: &[u8]) -> u8 {
    let mut all = vec![((index / 10) % 10) as u8, (index % 10) as u8];
    all.extend_from_slice(group);
    damm_check(&all)
}

/// Decimal digits needed for `n` bytes.
fn digits_for(n: usize) -> usize {
    // ceil(bits * log10(2)) with 0.30103 (just above log10(2)) in integers: never too few.
    (n * 8 * 30_103).div_ceil(100_000)
}

/// Number of groups for `n` bytes.
pub fn groups_for(n: usize) -> usize {
    digits_for(n).div_ceil(GROUP_DIGITS)
}

/// Encodes bytes as groups of 7 digits (6 data + 1 check).
pub fn encode(bytes: &[u8]) -> Vec<String> {
    let groups = groups_for(bytes.len());
    let total = groups * GROUP_DIGITS;
    // Big-endian base-256 to base-10 by repeated division.
    let mut num: Vec<u32> = bytes.iter().map(|&b| u32::from(b)).collect();
    let mut digits = vec![0u8; total];
    for slot in digits.iter_mut().rev() {
        let mut rem = 0u32;
        for x in num.iter_mut() {
            let cur = rem * 256 + *x;
            *x = cur / 10;
            rem = cur % 10;
        }
        *slot = rem as u8;
    }
    digits
        .chunks(GROUP_DIGITS)
        .enumerate()
        .map(|(i, g)| {
            let mut s: String = g.iter().map(|d| char::from(b'0' + d)).collect();
            s.push(char::from(b'0' + group_check(i + 1, g)));
            s
        })
        .collect()
}

/// Decodes typed groups (separated by spaces or dashes) back to `n` bytes.
pub fn decode(text: &str, n: usize) -> Result<Vec<u8>, DigitsError> {
    let groups: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == '-')
        .filter(|g| !g.is_empty())
        .collect();
    let expected = groups_for(n);
    if groups.len() != expected {
        return Err(DigitsError::GroupCount {
            expected,
            got: groups.len(),
        });
    }
    let mut digits = Vec::with_capacity(expected * GROUP_DIGITS);
    for (i, g) in groups.iter().enumerate() {
        let d: Vec<u8> = g.bytes().map(|b| b.wrapping_sub(b'0')).collect();
        if d.len() != GROUP_DIGITS + 1 || d.iter().any(|&x| x > 9) {
            return Err(DigitsError::GroupShape(i + 1));
        }
        if group_check(i + 1, &d[..GROUP_DIGITS]) != d[GROUP_DIGITS] {
            return Err(DigitsError::Check(i + 1));
        }
        digits.extend_from_slice(&d[..GROUP_DIGITS]);
    }
    // Base-10 to base-256, refusing anything that does not fit in n bytes.
    let mut out = vec![0u32; n];
    for d in digits {
        let mut carry = u32::from(d);
        for x in out.iter_mut().rev() {
            let cur = *x * 10 + carry;
            *x = cur & 0xFF;
            carry = cur >> 8;
        }
        if carry != 0 {
            return Err(DigitsError::Range);
        }
    }
    Ok(out.into_iter().map(|x| x as u8).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Every single-digit error and every adjacent swap in a group is caught (Luhn missed 09/90).
    #[test]
    fn every_typo_and_neighbour_swap_is_caught() {
        for n in 0..16u32 {
            let bytes: Vec<u8> = (0..66u32).map(|i| (i * 97 + n * 31) as u8).collect();
            let groups = encode(&bytes);
            for (gi, g) in groups.iter().enumerate() {
                let d = g.as_bytes();
                for i in 0..d.len() {
                    for wrong in b'0'..=b'9' {
                        if wrong == d[i] {
                            continue;
                        }
                        let mut t = d.to_vec();
                        t[i] = wrong;
                        let mut typed = groups.clone();
                        typed[gi] = String::from_utf8(t).expect("digits");
                        assert_eq!(
                            decode(&typed.join(" "), 66),
                            Err(DigitsError::Check(gi + 1))
                        );
                    }
                    if i + 1 < d.len() && d[i] != d[i + 1] {
                        let mut t = d.to_vec();
                        t.swap(i, i + 1);
                        let mut typed = groups.clone();
                        typed[gi] = String::from_utf8(t).expect("digits");
                        assert_eq!(
                            decode(&typed.join(" "), 66),
                            Err(DigitsError::Check(gi + 1))
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn round_trip_and_lengths() {
        let bytes: Vec<u8> = (0..51u8)
            .map(|i| i.wrapping_mul(37).wrapping_add(11))
            .collect();
        let groups = encode(&bytes);
        assert_eq!(groups.len(), 21);
        assert_eq!(decode(&groups.join(" "), 51), Ok(bytes));
        assert_eq!(groups_for(66), 27);
        assert_eq!(
            decode(&encode(&[0xFF; 66]).join("-"), 66),
            Ok(vec![0xFF; 66])
        );
    }

    // R22: a typo in any group is caught and that group is named.
    #[test]
    fn r22_every_single_digit_typo_names_its_group() {
        let bytes = [0xA5u8; 51];
        let groups = encode(&bytes);
        for (gi, g) in groups.iter().enumerate() {
            for pos in 0..7 {
                for digit in b'0'..=b'9' {
                    if g.as_bytes()[pos] == digit {
                        continue;
                    }
                    let mut typo = groups.clone();
                    let mut chars = g.clone().into_bytes();
                    chars[pos] = digit;
                    typo[gi] = String::from_utf8(chars).expect("ascii");
                    assert_eq!(
                        decode(&typo.join(" "), 51),
                        Err(DigitsError::Check(gi + 1)),
                        "group {} pos {pos}",
                        gi + 1
                    );
                }
            }
        }
        let mut swapped = groups.clone();
        swapped.swap(2, 3);
        assert!(matches!(
            decode(&swapped.join(" "), 51),
            Err(DigitsError::Check(_))
        ));
        assert_eq!(
            decode("123", 51),
            Err(DigitsError::GroupCount {
                expected: 21,
                got: 1
            })
        );
    }
}
