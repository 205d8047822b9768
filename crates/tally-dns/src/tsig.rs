//! TSIG keys in BIND's `tsig-keygen` format:
//!
//! ```text
//! key "tally-key" {
//!     algorithm hmac-sha256;
//!     secret "base64…";
//! };
//! ```

use std::fmt;

use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::{Name, TSigner};

use crate::DnsError;

/// Seconds of clock difference a signed message tolerates.
pub const FUDGE: u16 = 300;

/// A TSIG key (hmac-sha256).
#[derive(Clone, PartialEq, Eq)]
pub struct TsigKey {
    /// The key name.
    pub name: String,
    /// The secret.
    pub secret: Vec<u8>,
}

impl fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TsigKey {
    /// Parses a BIND key file (the first `key` clause).
    pub fn parse_bind(text: &str) -> Result<Self, DnsError> {
        let err = |m: &str| DnsError::Key(m.to_owned());
        let after_key = text
            .split_once("key")
            .ok_or_else(|| err("no `key \"NAME\" { … }` clause"))?
            .1;
        let name = after_key
            .split('"')
            .nth(1)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| err("the key has no quoted name"))?
            .to_owned();
        let body = after_key
            .split_once('{')
            .ok_or_else(|| err("missing `{`"))?
            .1;
        let mut algorithm = None;
        let mut secret = None;
        for stmt in body.split(';') {
            let stmt = stmt.trim();
            if let Some(a) = stmt.strip_prefix("algorithm") {
                algorithm = Some(a.trim().trim_matches('"').to_ascii_lowercase());
            } else if let Some(s) = stmt.strip_prefix("secret") {
                secret = Some(s.trim().trim_matches('"').to_owned());
            }
        }
        match algorithm.as_deref() {
            Some("hmac-sha256") => {}
            Some(other) => {
                return Err(DnsError::Key(format!(
                    "algorithm {other} is not supported; use hmac-sha256"
                )));
            }
            None => return Err(err("no algorithm")),
        }
        let secret = secret.ok_or_else(|| err("no secret"))?;
        let secret = data_encoding::BASE64
            .decode(secret.as_bytes())
            .map_err(|_| err("the secret is not valid base64"))?;
        Ok(Self { name, secret })
    }

    /// Formats the key as BIND does (for tests and docs).
    pub fn to_bind(&self) -> String {
        format!(
            "key \"{}\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{}\";\n}};\n",
            self.name,
            data_encoding::BASE64.encode(&self.secret)
        )
    }

    /// A hickory signer for this key.
    pub fn signer(&self) -> Result<TSigner, DnsError> {
        let name = Name::from_ascii(&self.name).map_err(|_| DnsError::Name(self.name.clone()))?;
        TSigner::new(self.secret.clone(), TsigAlgorithm::HmacSha256, name, FUDGE)
            .map_err(|e| DnsError::Key(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tsig_keygen_output() {
        let text = "key \"tally-key\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0LXNlY3JldC1zZWNyZXQ=\";\n};\n";
        let key = TsigKey::parse_bind(text).expect("valid");
        assert_eq!(key.name, "tally-key");
        assert_eq!(key.secret, b"secret-secret-secret");
        assert_eq!(
            TsigKey::parse_bind(&key.to_bind()).expect("round trip"),
            key
        );
        assert!(!format!("{key:?}").contains("c2Vj"));
        assert!(TsigKey::parse_bind(&text.replace("hmac-sha256", "hmac-md5")).is_err());
        assert!(TsigKey::parse_bind("nonsense").is_err());
    }
}
