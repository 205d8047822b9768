//! Tally's DNS: hosts publish `_tally._tcp` SRV records by RFC 2136 dynamic update signed with
//! TSIG (R17, R18); clients discover hosts by SRV and choose by RFC 2782 priority and weight
//! (R19).
//!
//! # Layout
//! - [`tsig`]: BIND `tsig-keygen` key files.
//! - [`publish`]: the publisher: one signed update per domain, own records only.
//! - [`discover`]: SRV lookup in the search list, and RFC 2782 ordering.

pub mod discover;
pub mod publish;
pub mod tsig;

use thiserror::Error;

/// The default SRV label (R17).
pub const DEFAULT_LABEL: &str = "_tally._tcp";

/// R17: event id logged when publishing succeeded.
pub const EVENT_PUBLISH_OK: u32 = 12294;
/// R17: event id logged when publishing failed.
pub const EVENT_PUBLISH_FAILED: u32 = 12293;

/// DNS errors.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DnsError {
    /// A name that is not a valid DNS name.
    #[error("'{0}' is not a valid DNS name")]
    Name(String),
    /// The TSIG key file could not be read.
    #[error("TSIG key: {0}")]
    Key(String),
    /// The server answered the update with an error code.
    #[error(
        "DNS server refused the update for {zone}: {rcode} (check that the zone allows updates signed with this key)"
    )]
    Refused {
        /// The zone.
        zone: String,
        /// The response code.
        rcode: String,
    },
    /// The update could not be sent, or its answer failed TSIG verification (a wrong key
    /// shows up here: the server's BADSIG answer carries no MAC).
    #[error(
        "DNS update for {zone} failed: {message} (wrong TSIG key name or secret, or server unreachable)"
    )]
    Update {
        /// The zone.
        zone: String,
        /// What went wrong.
        message: String,
    },
    /// A lookup failed.
    #[error("DNS lookup of {name} failed: {message}")]
    Lookup {
        /// What was looked up.
        name: String,
        /// Why.
        message: String,
    },
    /// The resolver could not be set up.
    #[error("DNS resolver: {0}")]
    Resolver(String),
}
