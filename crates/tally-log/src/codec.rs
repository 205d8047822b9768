//! The reader and the armor the log's formats share: big-endian integers, no trailing bytes,
//! and files of one line `LABEL HEX` like every other Tally key and certificate file.

use crate::FormatError;

/// Reads big-endian fields from a byte slice; every read checks the length first.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader of `bytes`, which hold a `what` (named in errors).
    pub fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self { bytes, what }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if self.bytes.len() < n {
            return Err(FormatError::Truncated(self.what));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.array::<1>()?[0])
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A big-endian `i64`.
    pub fn i64(&mut self) -> Result<i64, FormatError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// The version byte, which must be 1.
    pub fn version(&mut self) -> Result<(), FormatError> {
        match self.u8()? {
            1 => Ok(()),
            version => Err(FormatError::Version {
                what: self.what,
                version,
            }),
        }
    }

    /// Fails if bytes are left (a structure never ends early in the middle of its input).
    pub fn finish(self) -> Result<(), FormatError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(FormatError::TrailingBytes(self.what))
        }
    }
}

/// Lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Hex (either case) to bytes; `None` if it is not hex.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// A 32-byte hash from hex.
pub fn hash_from_hex(text: &str) -> Option<crate::Hash> {
    from_hex(text).and_then(|b| b.try_into().ok())
}

/// `LABEL HEX` and a newline.
pub fn armor(label: &str, bytes: &[u8]) -> String {
    format!("{label} {}\n", to_hex(bytes))
}

/// The bytes of an [`armor`]ed text, checking its label.
pub fn dearmor(label: &'static str, text: &str) -> Result<Vec<u8>, FormatError> {
    let mut words = text.split_whitespace();
    if words.next() != Some(label) {
        return Err(FormatError::WrongLabel { expected: label });
    }
    let bytes = words
        .next()
        .and_then(from_hex)
        .ok_or(FormatError::Damaged(label))?;
    if words.next().is_some() {
        return Err(FormatError::Damaged(label));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_non_hex() {
        assert_eq!(to_hex(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(from_hex("00ABff"), Some(vec![0, 0xab, 0xff]));
        assert_eq!(from_hex("0"), None);
        assert_eq!(from_hex("zz"), None);
        assert_eq!(dearmor("x", "x 00ff\n"), Ok(vec![0, 0xff]));
        assert!(dearmor("x", "y 00").is_err());
        assert!(dearmor("x", "x 00 11").is_err());
    }
}
