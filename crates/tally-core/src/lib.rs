//! Tally's domain, free of I/O: time, keys, catalog, trust chain, the counting rules and the
//! host's session logic. Nothing here touches a socket, a file or an async runtime; all time
//! comes from a [`time::Clock`].
//!
//! # Layout
//! - [`time`]: [`time::Timestamp`], the [`time::Clock`] trait, system and manual clocks.
//! - [`clock`]: host clock sanity (X5): what contradicts a clock, when retention may delete,
//!   pulling future stamps back.
//! - [`keys`]: 25-character product keys, key groups (R21), checksums.
//! - [`catalog`]: pools and editions, thresholds (R1), the demo catalog.
//! - [`trust`]: authority → host certificate → signed response verification (R16).
//! - [`rollover`]: root rollover statements and the chain of roots a verifier trusts (X8).
//! - [`counting`]: per-pool CMID tables (R2–R5).
//! - [`host`]: the host session: frame in, response and changes to persist out.
//! - [`lifecycle`]: the client's licensing state machine (R2, R7–R12).
//! - [`revocation`]: the authority's signed revocation list, verified; no rollback (X7).
//! - [`trusted`]: the client's trusted time from signed host times (X5).
//! - [`transparency`]: the authority's transparency log checked under the trusted key (X8).
//! - [`clones`]: judging an installation's request sequence on the host (X6).
//! - [`hardware`]: the weighted hardware fingerprint (R12).
//! - [`hex`]: lower-case hex, shared by key files and signed catalogs.
//! - [`secret`]: constant-time comparison of tokens.
//! - [`digits`]: digit groups with check digits for offline activation (R22).
//! - [`bench`]: the synthetic edition `tally bench` asks for, kept out of every report.

pub mod bench;
pub mod catalog;
pub mod clock;
pub mod clones;
pub mod counting;
pub mod digits;
pub mod error_text;
pub mod fuzzing;
pub mod hardware;
pub mod hex;
pub mod host;
pub mod keys;
pub mod lifecycle;
pub mod revocation;
pub mod rollover;
pub mod secret;
pub mod time;
pub mod transparency;
pub mod trust;
pub mod trusted;

pub use catalog::{Catalog, Edition, EditionKind};
pub use keys::{KeyGroup, KeyKind, ProductKey};
pub use time::{Clock, ManualClock, SystemClock, Timestamp};
