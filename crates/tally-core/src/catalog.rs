//! The catalog: pools, editions and their thresholds, key groups and setup keys.
//!
//! A catalog is a TOML file (see `catalog/demo.toml`, which ships in the binary). The four key
//! groups are fixed by R21 ([`KeyGroup`]); editions name theirs.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

use crate::keys::{KeyGroup, KeyKind, ProductKey};

/// The demo catalog that ships with Tally: fictional products of both kinds in every group.
pub const DEMO_CATALOG: &str = include_str!("../catalog/demo.toml");

/// Why a catalog was refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// Not valid TOML, or an unknown or missing key.
    #[error("catalog is not valid: {0}")]
    Parse(#[from] toml::de::Error),
    /// Valid TOML that breaks a catalog rule.
    #[error("catalog is not valid: {0}")]
    Invalid(String),
}

/// Whether an edition is a client or a server product (R1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EditionKind {
    /// Threshold 25 unless overridden.
    Client,
    /// Threshold 5 unless overridden.
    Server,
}

impl EditionKind {
    /// R1: 25 for client editions, 5 for server editions.
    pub fn default_threshold(self) -> u16 {
        match self {
            Self::Client => 25,
            Self::Server => 5,
        }
    }
}

impl fmt::Display for EditionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Client => "client",
            Self::Server => "server",
        })
    }
}

/// A set of editions counted together (one product line).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// The pool's id, sent in every request.
    pub id: Uuid,
    /// A display name.
    pub name: String,
}

/// One product edition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Edition {
    /// The SKU id.
    pub sku: Uuid,
    /// A display name.
    pub name: String,
    /// Client or server.
    pub kind: EditionKind,
    /// The pool it is counted in.
    pub pool: Uuid,
    /// The key group whose host keys (and higher) activate it (R21).
    pub group: KeyGroup,
    /// Its product generation (R21).
    pub generation: u8,
    /// Count needed to activate (R1).
    pub threshold: u16,
    /// The public setup key that makes an installation a host-activated client.
    pub setup_key: ProductKey,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    /// Catalog name.
    name: String,
    /// Monotonic catalog version (R24: a newer catalog has a higher version).
    version: u32,
    #[serde(default)]
    pools: Vec<Pool>,
    #[serde(default)]
    editions: Vec<RawEdition>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEdition {
    sku: Uuid,
    name: String,
    kind: EditionKind,
    pool: Uuid,
    group: KeyGroup,
    generation: u8,
    /// Overrides R1's default for the kind.
    threshold: Option<u16>,
    setup_key: ProductKey,
}

/// A validated catalog.
#[derive(Clone, Debug)]
pub struct Catalog {
    name: String,
    version: u32,
    pools: Vec<Pool>,
    editions: Vec<Edition>,
    by_sku: HashMap<Uuid, usize>,
}

impl Catalog {
    /// Parses and validates a catalog file's text.
    pub fn parse(text: &str) -> Result<Self, CatalogError> {
        let raw: RawCatalog = toml::from_str(text)?;
        let invalid = |msg: String| Err(CatalogError::Invalid(msg));
        let mut pools_seen = HashMap::new();
        for pool in &raw.pools {
            if pools_seen.insert(pool.id, ()).is_some() {
                return invalid(format!("pool {} is listed twice", pool.id));
            }
            if crate::bench::is_bench_pool(pool.id) {
                return invalid(format!(
                    "pool {} is reserved for `tally bench` (PROTOCOL.md \"Reserved ids\")",
                    pool.id
                ));
            }
        }
        let mut editions = Vec::with_capacity(raw.editions.len());
        let mut by_sku = HashMap::new();
        for e in raw.editions {
            if e.sku == crate::bench::SKU {
                return invalid(format!(
                    "edition '{}' uses sku {}, which is reserved for `tally bench` \
                     (PROTOCOL.md \"Reserved ids\")",
                    e.name, e.sku
                ));
            }
            if !pools_seen.contains_key(&e.pool) {
                return invalid(format!(
                    "edition '{}' names pool {}, which is not listed",
                    e.name, e.pool
                ));
            }
            if e.setup_key.kind() != KeyKind::Setup || e.setup_key != ProductKey::setup_for(e.sku) {
                return invalid(format!(
                    "edition '{}': setup_key does not belong to sku {} (expected {})",
                    e.name,
                    e.sku,
                    ProductKey::setup_for(e.sku)
                ));
            }
            if e.generation > 15 {
                return invalid(format!("edition '{}': generation must be 0-15", e.name));
            }
            let threshold = e.threshold.unwrap_or(e.kind.default_threshold());
            if !(1..=1000).contains(&threshold) {
                return invalid(format!("edition '{}': threshold must be 1-1000", e.name));
            }
            if by_sku.insert(e.sku, editions.len()).is_some() {
                return invalid(format!("sku {} is listed twice", e.sku));
            }
            editions.push(Edition {
                sku: e.sku,
                name: e.name,
                kind: e.kind,
                pool: e.pool,
                group: e.group,
                generation: e.generation,
                threshold,
                setup_key: e.setup_key,
            });
        }
        Ok(Self {
            name: raw.name,
            version: raw.version,
            pools: raw.pools,
            editions,
            by_sku,
        })
    }

    /// The built-in demo catalog.
    pub fn demo() -> Self {
        match Self::parse(DEMO_CATALOG) {
            Ok(c) => c,
            // The demo catalog is compiled in and checked by a unit test.
            Err(e) => unreachable!("built-in demo catalog is invalid: {e}"),
        }
    }

    /// The catalog's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The catalog's version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// All pools.
    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    /// All editions, in file order.
    pub fn editions(&self) -> &[Edition] {
        &self.editions
    }

    /// The edition with this SKU id.
    pub fn edition(&self, sku: Uuid) -> Option<&Edition> {
        self.by_sku.get(&sku).map(|&i| &self.editions[i])
    }

    /// The pool with this id.
    pub fn pool(&self, id: Uuid) -> Option<&Pool> {
        self.pools.iter().find(|p| p.id == id)
    }

    /// The edition whose setup key this is.
    pub fn edition_by_setup_key(&self, key: ProductKey) -> Option<&Edition> {
        self.editions.iter().find(|e| e.setup_key == key)
    }

    /// The newest generation in the catalog.
    pub fn newest_generation(&self) -> u8 {
        self.editions
            .iter()
            .map(|e| e.generation)
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_catalog_is_valid_and_spans_every_group_and_kind() {
        let c = Catalog::demo();
        for g in KeyGroup::ALL {
            assert!(
                c.editions().iter().any(|e| e.group == g),
                "no edition in {g}"
            );
        }
        assert!(c.editions().iter().any(|e| e.kind == EditionKind::Client));
        assert!(c.editions().iter().any(|e| e.kind == EditionKind::Server));
        for e in c.editions() {
            assert_eq!(
                c.edition_by_setup_key(e.setup_key).map(|x| x.sku),
                Some(e.sku)
            );
        }
    }

    // R1: thresholds default by kind, and the catalog may override.
    #[test]
    fn r1_thresholds_default_by_kind_and_can_be_overridden() {
        let c = Catalog::demo();
        for e in c.editions() {
            assert_eq!(e.threshold, e.kind.default_threshold(), "{}", e.name);
        }
        let sku = Uuid::from_u128(7);
        let pool = Uuid::from_u128(8);
        let text = format!(
            "name = \"t\"\nversion = 1\n[[pools]]\nid = \"{pool}\"\nname = \"p\"\n[[editions]]\nsku = \"{sku}\"\nname = \"e\"\nkind = \"server\"\npool = \"{pool}\"\ngroup = \"server-a\"\ngeneration = 1\nthreshold = 3\nsetup_key = \"{}\"\n",
            ProductKey::setup_for(sku)
        );
        let c = Catalog::parse(&text).expect("valid");
        assert_eq!(c.edition(sku).map(|e| e.threshold), Some(3));
    }

    #[test]
    fn bad_catalogs_name_the_problem() {
        let err =
            Catalog::parse("name = \"x\"\nversion = 1\nbogus = 2\n").expect_err("unknown key");
        assert!(err.to_string().contains("bogus"), "{err}");
        let sku = Uuid::from_u128(7);
        let text = format!(
            "name = \"t\"\nversion = 1\n[[editions]]\nsku = \"{sku}\"\nname = \"e\"\nkind = \"server\"\npool = \"{sku}\"\ngroup = \"server-a\"\ngeneration = 1\nsetup_key = \"{}\"\n",
            ProductKey::setup_for(sku)
        );
        let err = Catalog::parse(&text).expect_err("missing pool");
        assert!(err.to_string().contains("not listed"), "{err}");
        // The bench edition's ids are reserved (tally_core::bench).
        for (sku, pool) in [
            (crate::bench::SKU, Uuid::from_u128(8)),
            (Uuid::from_u128(7), crate::bench::POOL),
        ] {
            let text = format!(
                "name = \"t\"\nversion = 1\n[[pools]]\nid = \"{pool}\"\nname = \"p\"\n[[editions]]\nsku = \"{sku}\"\nname = \"e\"\nkind = \"server\"\npool = \"{pool}\"\ngroup = \"server-a\"\ngeneration = 1\nsetup_key = \"{}\"\n",
                ProductKey::setup_for(sku)
            );
            let err = Catalog::parse(&text).expect_err("reserved");
            assert!(
                err.to_string().contains("reserved for `tally bench`"),
                "{err}"
            );
        }
    }
}

/// Signed catalogs (R24): the catalog's TOML text followed by one last line
/// `# tally-catalog-signature-v1 HEX`, an Ed25519 signature by the authority over
/// `"tally/v1/catalog\0"` and every byte before that line. Being a TOML comment, the line
/// leaves the file a valid catalog for tools that ignore signatures.
pub mod signed {
    use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

    use super::{Catalog, CatalogError};
    use crate::hex::{from_hex, to_hex};

    const MARKER: &str = "# tally-catalog-signature-v1 ";
    const CONTEXT: &[u8] = b"tally/v1/catalog\0";

    fn message(body: &str) -> Vec<u8> {
        let mut m = CONTEXT.to_vec();
        m.extend_from_slice(body.as_bytes());
        m
    }

    /// Signs a catalog's text (which must parse) and returns the signed text.
    pub fn sign(text: &str, key: &SigningKey) -> Result<String, CatalogError> {
        let unsigned = prepare(text)?;
        let signature = key.sign(&unsigned.message()).to_bytes();
        Ok(unsigned.with_signature(&signature))
    }

    /// A catalog checked and ready to be signed by a signer that is not a key in memory (the
    /// authority's PKCS#11 token, X8): sign [`Unsigned::message`], then
    /// [`Unsigned::with_signature`].
    #[derive(Debug)]
    pub struct Unsigned {
        body: String,
    }

    impl Unsigned {
        /// The bytes the authority signs.
        pub fn message(&self) -> Vec<u8> {
            message(&self.body)
        }

        /// The signed catalog's text.
        pub fn with_signature(self, signature: &[u8; 64]) -> String {
            format!("{}{MARKER}{}\n", self.body, to_hex(signature))
        }
    }

    /// Checks that `text` is a catalog and prepares it for signing.
    pub fn prepare(text: &str) -> Result<Unsigned, CatalogError> {
        let mut body = text.to_owned();
        if !body.ends_with('\n') {
            body.push('\n');
        }
        Catalog::parse(&body)?;
        Ok(Unsigned { body })
    }

    /// Verifies a signed catalog against the authority key and parses it.
    pub fn verify(text: &str, authority: &VerifyingKey) -> Result<Catalog, CatalogError> {
        let invalid = |m: &str| CatalogError::Invalid(m.to_owned());
        let trimmed = text.trim_end_matches('\n');
        let (body_end, last) = match trimmed.rfind('\n') {
            Some(i) => (i + 1, &trimmed[i + 1..]),
            None => (0, trimmed),
        };
        let hex = last.strip_prefix(MARKER).ok_or_else(|| {
            invalid("the catalog is not signed by the authority (no signature line)")
        })?;
        let bytes = from_hex(hex.trim())
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .ok_or_else(|| invalid("the catalog's signature line is damaged"))?;
        let body = &text[..body_end];
        authority
            .verify_strict(&message(body), &Signature::from_bytes(&bytes))
            .map_err(|_| invalid("the catalog's signature does not verify: it was altered, or signed by another authority"))?;
        Catalog::parse(body)
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::catalog::DEMO_CATALOG;

        fn generate_key() -> SigningKey {
            SigningKey::generate(&mut rand::rng())
        }

        // R24: signed catalogs verify; tampered, unsigned or foreign ones do not.
        #[test]
        fn r24_signed_catalogs_verify_and_tampering_is_caught() {
            let key = generate_key();
            let signed = sign(DEMO_CATALOG, &key).expect("sign");
            assert_eq!(
                verify(&signed, &key.verifying_key())
                    .expect("verifies")
                    .version(),
                1
            );
            let tampered = signed.replace("Acme Server Web 2026", "Acme Server Web 2099");
            assert!(verify(&tampered, &key.verifying_key()).is_err());
            assert!(
                verify(DEMO_CATALOG, &key.verifying_key())
                    .expect_err("unsigned")
                    .to_string()
                    .contains("not signed")
            );
            assert!(verify(&signed, &generate_key().verifying_key()).is_err());
        }
    }
}
