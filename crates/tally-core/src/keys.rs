//! Product keys: 25 characters in 5 groups of 5 over `BCDFGHJKMPQRTVWXY2346789`.
//!
//! A key is 23 data characters and 2 check characters. The data characters are a base-24
//! number holding a 105-bit payload; the check characters hold `sum(i * d_i) mod 571` over the
//! data digits `d_1..d_23`. Because 571 is prime and every weight and digit difference is
//! below it, any single wrong character and any swap of two adjacent different characters
//! changes the check (see `docs/PROTOCOL.md` "Keys").
//!
//! Payload layout (bit 104 is the most significant):
//!
//! | bits     | host key          | setup key                 | MAK               |
//! |----------|-------------------|---------------------------|-------------------|
//! | 102..105 | kind = 0          | kind = 1                  | kind = 2          |
//! | 100..102 | key group (R21)   | edition digest (102 bits) | reserved (0)      |
//! | 96..100  | generation        |                           | reserved (0)      |
//! | 64..96   | serial            |                           | serial            |
//! | 0..64    | authenticator     |                           | authenticator     |
//!
//! The authenticator is a MAC only the authority can make or check (`tally-authority`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use uuid::Uuid;

/// The 24 characters keys are written in (no vowels, no look-alikes).
pub const ALPHABET: &[u8; 24] = b"BCDFGHJKMPQRTVWXY2346789";

const DATA_CHARS: usize = 23;
const CHECK_MODULUS: u32 = 571;
const PAYLOAD_BITS: u32 = 105;

/// Why text is not a product key.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// Wrong number of characters.
    #[error("a key has 25 characters (5 groups of 5), this has {0}")]
    Length(usize),
    /// A character outside the alphabet.
    #[error(
        "character '{0}' at position {1} is not used in keys (valid: BCDFGHJKMPQRTVWXY2346789)"
    )]
    Character(char, usize),
    /// The check characters do not match: a typo.
    #[error("the key has a typo: its check characters do not match (re-type it carefully)")]
    Checksum,
    /// The payload does not name a known kind of key.
    #[error("not a valid Tally key")]
    Invalid,
    /// A key of one kind was given where another was needed.
    #[error("this is a {actual} key; a {expected} key is needed here")]
    WrongKind {
        /// What was needed.
        expected: KeyKind,
        /// What was given.
        actual: KeyKind,
    },
    /// A group name that is not one of the four key groups.
    #[error("unknown key group '{0}' (expected client-vl, server-a, server-b or server-c)")]
    UnknownGroup(String),
}

/// What a key is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// Installed on hosts only; activates the editions of its group and below (R21, R22).
    Host,
    /// Public, one per edition; makes an installation a host-activated client.
    Setup,
    /// Multiple activation key: direct activation with the authority (R25).
    Mak,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Host => "host",
            Self::Setup => "setup",
            Self::Mak => "MAK",
        })
    }
}

/// Key groups, in the order of R21: Client VL < Server A < Server B < Server C.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum KeyGroup {
    /// Client volume license.
    #[serde(rename = "client-vl")]
    ClientVl = 0,
    /// Server group A.
    #[serde(rename = "server-a")]
    ServerA = 1,
    /// Server group B.
    #[serde(rename = "server-b")]
    ServerB = 2,
    /// Server group C (the top group).
    #[serde(rename = "server-c")]
    ServerC = 3,
}

impl KeyGroup {
    /// All groups, lowest first.
    pub const ALL: [Self; 4] = [Self::ClientVl, Self::ServerA, Self::ServerB, Self::ServerC];

    /// The group's rank, as carried in certificates.
    pub fn rank(self) -> u8 {
        self as u8
    }

    /// The group with this rank.
    pub fn from_rank(rank: u8) -> Option<Self> {
        Self::ALL.get(usize::from(rank)).copied()
    }

    /// The name used in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::ClientVl => "client-vl",
            Self::ServerA => "server-a",
            Self::ServerB => "server-b",
            Self::ServerC => "server-c",
        }
    }
}

impl fmt::Display for KeyGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyGroup {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|g| g.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| KeyError::UnknownGroup(s.to_owned()))
    }
}

/// The fields of a host key other than its authenticator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostKeyFields {
    /// The key group it activates (and every group below, R21).
    pub group: KeyGroup,
    /// The newest product generation it activates (and every older one, R21), 0–15.
    pub generation: u8,
    /// The authority's serial number for the key.
    pub serial: u32,
}

/// A syntactically valid product key (checksum verified).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProductKey {
    payload: u128,
}

impl ProductKey {
    /// Builds a key from a 105-bit payload; higher bits are ignored.
    pub fn from_payload(payload: u128) -> Self {
        Self {
            payload: payload & ((1u128 << PAYLOAD_BITS) - 1),
        }
    }

    /// The 105-bit payload.
    pub fn payload(self) -> u128 {
        self.payload
    }

    /// The key's kind.
    pub fn kind(self) -> KeyKind {
        match self.payload >> 102 {
            0 => KeyKind::Host,
            1 => KeyKind::Setup,
            _ => KeyKind::Mak,
        }
    }

    /// A host key with the given fields and authenticator.
    pub fn host(fields: HostKeyFields, authenticator: u64) -> Self {
        let payload = (u128::from(fields.group.rank()) << 100)
            | (u128::from(fields.generation & 0x0F) << 96)
            | (u128::from(fields.serial) << 64)
            | u128::from(authenticator);
        Self::from_payload(payload)
    }

    /// A MAK with the given serial and authenticator.
    pub fn mak(serial: u32, authenticator: u64) -> Self {
        Self::from_payload((2u128 << 102) | (u128::from(serial) << 64) | u128::from(authenticator))
    }

    /// The public setup key of an edition: kind 1 and 102 bits of SHA-256 of its SKU id.
    pub fn setup_for(sku: Uuid) -> Self {
        let digest = Sha256::new()
            .chain_update(b"tally/v1/setup-key\0")
            .chain_update(sku.as_bytes())
            .finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        let bits = u128::from_be_bytes(first) >> (128 - 102);
        Self::from_payload((1u128 << 102) | bits)
    }

    /// The host key fields, if this is a host key.
    pub fn host_fields(self) -> Result<HostKeyFields, KeyError> {
        if self.kind() != KeyKind::Host {
            return Err(KeyError::WrongKind {
                expected: KeyKind::Host,
                actual: self.kind(),
            });
        }
        let group =
            KeyGroup::from_rank(((self.payload >> 100) & 0b11) as u8).ok_or(KeyError::Invalid)?;
        Ok(HostKeyFields {
            group,
            generation: ((self.payload >> 96) & 0x0F) as u8,
            serial: ((self.payload >> 64) & 0xFFFF_FFFF) as u32,
        })
    }

    /// The serial of a host key or MAK.
    pub fn serial(self) -> u32 {
        ((self.payload >> 64) & 0xFFFF_FFFF) as u32
    }

    /// The low 64 bits: the authenticator of host keys and MAKs.
    pub fn authenticator(self) -> u64 {
        (self.payload & u128::from(u64::MAX)) as u64
    }

    /// The bits the authenticator covers (everything above it), as bytes.
    pub fn authenticated_bytes(self) -> [u8; 6] {
        let hi = (self.payload >> 64) as u64;
        let b = hi.to_be_bytes();
        [b[2], b[3], b[4], b[5], b[6], b[7]]
    }

    /// The last five characters, for showing a key without revealing it (like slmgr's
    /// "partial product key").
    pub fn partial(self) -> String {
        self.to_string()[24..].to_owned()
    }
}

fn check_value(digits: &[u8; DATA_CHARS]) -> u32 {
    digits
        .iter()
        .enumerate()
        .map(|(i, &d)| (i as u32 + 1) * u32::from(d))
        .sum::<u32>()
        % CHECK_MODULUS
}

impl fmt::Display for ProductKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut digits = [0u8; DATA_CHARS];
        let mut rest = self.payload;
        for d in digits.iter_mut().rev() {
            *d = (rest % 24) as u8;
            rest /= 24;
        }
        let check = check_value(&digits);
        let all = digits
            .iter()
            .copied()
            .chain([(check / 24) as u8, (check % 24) as u8]);
        for (i, d) in all.enumerate() {
            if i > 0 && i % 5 == 0 {
                f.write_str("-")?;
            }
            write!(f, "{}", ALPHABET[usize::from(d)] as char)?;
        }
        Ok(())
    }
}

impl fmt::Debug for ProductKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProductKey({self})")
    }
}

impl FromStr for ProductKey {
    type Err = KeyError;

    /// Parses a key; dashes and spaces are ignored and lower case is accepted.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let chars: Vec<char> = s
            .chars()
            .filter(|c| *c != '-' && !c.is_whitespace())
            .map(|c| c.to_ascii_uppercase())
            .collect();
        if chars.len() != 25 {
            return Err(KeyError::Length(chars.len()));
        }
        let mut all = [0u8; 25];
        for (i, c) in chars.iter().enumerate() {
            all[i] = ALPHABET
                .iter()
                .position(|a| char::from(*a) == *c)
                .ok_or(KeyError::Character(*c, i + 1))? as u8;
        }
        let mut digits = [0u8; DATA_CHARS];
        digits.copy_from_slice(&all[..DATA_CHARS]);
        let check = u32::from(all[23]) * 24 + u32::from(all[24]);
        if check != check_value(&digits) {
            return Err(KeyError::Checksum);
        }
        let payload = digits
            .iter()
            .fold(0u128, |acc, &d| acc * 24 + u128::from(d));
        if payload >> PAYLOAD_BITS != 0 || payload >> 102 > 2 {
            return Err(KeyError::Invalid);
        }
        Ok(Self { payload })
    }
}

impl Serialize for ProductKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ProductKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sample() -> ProductKey {
        ProductKey::host(
            HostKeyFields {
                group: KeyGroup::ServerB,
                generation: 3,
                serial: 0xDEAD_BEEF,
            },
            0x0123_4567_89AB_CDEF,
        )
    }

    #[test]
    fn format_is_five_groups_of_five() {
        let text = sample().to_string();
        assert_eq!(text.len(), 29);
        assert!(text.split('-').all(|g| g.len() == 5));
        assert!(
            text.bytes()
                .filter(|b| *b != b'-')
                .all(|b| ALPHABET.contains(&b))
        );
        assert_eq!(text.parse::<ProductKey>(), Ok(sample()));
        assert_eq!(
            text.to_lowercase().replace('-', " ").parse::<ProductKey>(),
            Ok(sample())
        );
    }

    #[test]
    fn host_fields_round_trip() {
        let f = sample().host_fields().expect("host key");
        assert_eq!(
            (f.group, f.generation, f.serial),
            (KeyGroup::ServerB, 3, 0xDEAD_BEEF)
        );
        assert_eq!(sample().authenticator(), 0x0123_4567_89AB_CDEF);
        assert_eq!(sample().kind(), KeyKind::Host);
    }

    #[test]
    fn every_single_typo_is_caught() {
        // Exhaustive over one key: every position, every other character.
        for key in [
            sample(),
            ProductKey::setup_for(Uuid::from_u128(42)),
            ProductKey::mak(9, 1),
        ] {
            let text: Vec<u8> = key.to_string().bytes().filter(|b| *b != b'-').collect();
            for pos in 0..25 {
                for &c in ALPHABET.iter().filter(|&&c| c != text[pos]) {
                    let mut typo = text.clone();
                    typo[pos] = c;
                    let typo = String::from_utf8(typo).expect("ascii");
                    assert!(
                        typo.parse::<ProductKey>().is_err(),
                        "typo at {pos} not caught: {typo}"
                    );
                }
            }
        }
    }

    #[test]
    fn adjacent_swaps_are_caught() {
        let text: Vec<u8> = sample()
            .to_string()
            .bytes()
            .filter(|b| *b != b'-')
            .collect();
        for pos in 0..24 {
            if text[pos] == text[pos + 1] {
                continue;
            }
            let mut swapped = text.clone();
            swapped.swap(pos, pos + 1);
            let swapped = String::from_utf8(swapped).expect("ascii");
            assert!(
                swapped.parse::<ProductKey>().is_err(),
                "swap at {pos} not caught"
            );
        }
    }

    #[test]
    fn bad_input_is_explained() {
        assert_eq!("ABC".parse::<ProductKey>(), Err(KeyError::Length(3)));
        let mut text = sample().to_string();
        text.replace_range(0..1, "A");
        assert_eq!(text.parse::<ProductKey>(), Err(KeyError::Character('A', 1)));
    }

    #[test]
    fn setup_keys_differ_per_edition_and_are_setup_kind() {
        let a = ProductKey::setup_for(Uuid::from_u128(1));
        let b = ProductKey::setup_for(Uuid::from_u128(2));
        assert_ne!(a, b);
        assert_eq!(a.kind(), KeyKind::Setup);
        assert!(matches!(a.host_fields(), Err(KeyError::WrongKind { .. })));
    }

    proptest! {
        #[test]
        fn any_payload_round_trips(group in 0u8..4, generation in 0u8..16, serial in any::<u32>(), auth in any::<u64>()) {
            let fields = HostKeyFields { group: KeyGroup::from_rank(group).expect("rank < 4"), generation, serial };
            let key = ProductKey::host(fields, auth);
            prop_assert_eq!(key.to_string().parse::<ProductKey>(), Ok(key));
            prop_assert_eq!(key.host_fields(), Ok(fields));
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(s in "\\PC{0,40}") {
            let _ = s.parse::<ProductKey>();
        }
    }
}
