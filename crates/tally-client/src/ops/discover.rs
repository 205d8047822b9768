//! `tally client discover`: what DNS discovery finds (R19) and whether each address answers.

use serde::{Deserialize, Serialize};
use tally_dns::discover::{Found, order};

use super::Client;

impl Client {
    /// Looks hosts up in DNS and probes each address (TCP connect), in the order a client
    /// would try them: for `tally client discover`.
    pub async fn discover(&self) -> Result<DiscoverReport, tally_dns::DnsError> {
        let found = self.discovery.lookup().await?;
        let ordered = order(found.candidates.clone(), &mut rand::rng());
        let mut probes = Vec::new();
        for c in &ordered {
            if c.addresses.is_empty() {
                probes.push(Probe {
                    host: c.target.clone(),
                    address: None,
                    reachable: false,
                    reason: Some("no address".into()),
                });
            }
            for addr in &c.addresses {
                let r =
                    tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(addr)).await;
                let (reachable, reason) = match r {
                    Ok(Ok(_)) => (true, None),
                    Ok(Err(e)) => (false, Some(format!("connect failed: {e}"))),
                    Err(_) => (false, Some("connect timed out".into())),
                };
                probes.push(Probe {
                    host: c.target.clone(),
                    address: Some(addr.to_string()),
                    reachable,
                    reason,
                });
            }
        }
        Ok(DiscoverReport {
            found,
            order: ordered,
            probes,
        })
    }
}

/// What `tally client discover` reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DiscoverReport {
    /// The SRV lookups and what they found.
    pub found: Found,
    /// The candidates in the order a client would try them (R19).
    pub order: Vec<tally_dns::discover::Candidate>,
    /// Each address probed, in that order, and why it would be skipped.
    pub probes: Vec<Probe>,
}

/// One address probed by `discover`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Probe {
    /// The SRV target.
    pub host: String,
    /// The address probed.
    pub address: Option<String>,
    /// Whether a TCP connection succeeded.
    pub reachable: bool,
    /// Why not.
    pub reason: Option<String>,
}
