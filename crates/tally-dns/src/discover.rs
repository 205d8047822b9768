//! Discovery (R19): look up `_tally._tcp.<domain>` SRV records in the client's domain and
//! search list, resolve the targets, and order them as RFC 2782 says: lowest priority first,
//! weighted random within a priority.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::Resolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

use crate::{DEFAULT_LABEL, DnsError};

/// How to discover.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovery {
    /// DNS server to ask instead of the system's (for tests and unusual networks).
    pub server: Option<SocketAddr>,
    /// Domains to look in, in order; empty: the system's domain and search list
    /// (`/etc/resolv.conf`).
    pub search: Vec<String>,
    /// SRV label; `_tally._tcp` when empty.
    pub label: String,
}

/// One host found in DNS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The SRV target (host FQDN).
    pub target: String,
    /// Port.
    pub port: u16,
    /// SRV priority.
    pub priority: u16,
    /// SRV weight.
    pub weight: u16,
    /// The domain whose SRV RRset named it.
    pub domain: String,
    /// Addresses the target resolved to.
    pub addresses: Vec<SocketAddr>,
}

/// What a lookup found, for `tally client discover`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Found {
    /// The SRV names queried, in order.
    pub queried: Vec<String>,
    /// Per queried name: what happened (records found, or why none).
    pub notes: Vec<String>,
    /// Every host found (unordered).
    pub candidates: Vec<Candidate>,
}

impl Discovery {
    fn label(&self) -> &str {
        if self.label.is_empty() {
            DEFAULT_LABEL
        } else {
            &self.label
        }
    }

    fn resolver(&self) -> Result<(Resolver<TokioRuntimeProvider>, Vec<String>), DnsError> {
        let resolver_err = |e: &dyn std::fmt::Display| DnsError::Resolver(e.to_string());
        let (config, mut opts, system_search) = match self.server {
            Some(server) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = server.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = server.port();
                let ns = NameServerConfig::new(server.ip(), true, vec![udp, tcp]);
                (
                    ResolverConfig::from_name_servers(vec![ns]),
                    ResolverOpts::default(),
                    Vec::new(),
                )
            }
            None => {
                let (config, opts) = hickory_resolver::system_conf::read_system_conf()
                    .map_err(|e| resolver_err(&e))?;
                let mut search: Vec<String> =
                    config.domain().map(|d| d.to_string()).into_iter().collect();
                search.extend(config.search().iter().map(|d| d.to_string()));
                (config, opts, search)
            }
        };
        // Fresh answers: a host that just published (or was just removed) is seen at once.
        opts.cache_size = 0;
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 1;
        let resolver = Resolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| resolver_err(&e))?;
        let search = if self.search.is_empty() {
            system_search
        } else {
            self.search.clone()
        };
        Ok((resolver, search))
    }

    /// Looks up every domain in the search list (R19).
    pub async fn lookup(&self) -> Result<Found, DnsError> {
        let (resolver, search) = self.resolver()?;
        let mut found = Found::default();
        if search.is_empty() {
            found.notes.push(
                "no domain and no search list: configure one (resolv.conf or --dns-search)".into(),
            );
        }
        for domain in search {
            let domain = domain.trim_end_matches('.').to_owned();
            let srv_name = format!("{}.{domain}.", self.label());
            found.queried.push(srv_name.clone());
            let lookup = match resolver.srv_lookup(srv_name.as_str()).await {
                Ok(l) => l,
                Err(e) => {
                    found.notes.push(format!(
                        "{srv_name}: {}",
                        if e.is_no_records_found() {
                            "no records".to_owned()
                        } else {
                            e.to_string()
                        }
                    ));
                    continue;
                }
            };
            let mut n = 0;
            for srv in lookup.answers().iter().filter_map(|r| match &r.data {
                hickory_resolver::proto::rr::RData::SRV(s) => Some(s.clone()),
                _ => None,
            }) {
                let target = srv.target.to_string();
                if found
                    .candidates
                    .iter()
                    .any(|c| c.target == target && c.port == srv.port)
                {
                    continue;
                }
                let addresses: Vec<SocketAddr> = match resolver.lookup_ip(srv.target.clone()).await
                {
                    Ok(ips) => ips
                        .iter()
                        .map(|ip: IpAddr| SocketAddr::new(ip, srv.port))
                        .collect(),
                    Err(e) => {
                        found
                            .notes
                            .push(format!("{target}: address lookup failed: {e}"));
                        Vec::new()
                    }
                };
                n += 1;
                found.candidates.push(Candidate {
                    target,
                    port: srv.port,
                    priority: srv.priority,
                    weight: srv.weight,
                    domain: domain.clone(),
                    addresses,
                });
            }
            found.notes.push(format!("{srv_name}: {n} record(s)"));
        }
        Ok(found)
    }
}

/// Orders candidates as RFC 2782 says: ascending priority; within one priority, repeatedly
/// pick at random with probability proportional to weight (zero-weight records first in the
/// running sum, so they are chosen rarely but can be).
pub fn order<R: Rng + ?Sized>(mut candidates: Vec<Candidate>, rng: &mut R) -> Vec<Candidate> {
    candidates.sort_by_key(|c| c.priority);
    let mut out = Vec::with_capacity(candidates.len());
    while !candidates.is_empty() {
        let priority = candidates[0].priority;
        let split = candidates
            .iter()
            .position(|c| c.priority != priority)
            .unwrap_or(candidates.len());
        let mut group: Vec<Candidate> = candidates.drain(..split).collect();
        group.sort_by_key(|c| c.weight != 0);
        while !group.is_empty() {
            let total: u32 = group.iter().map(|c| u32::from(c.weight)).sum();
            let pick = rng.random_range(0..=total);
            let mut running = 0u32;
            let mut chosen = group.len() - 1;
            for (i, c) in group.iter().enumerate() {
                running += u32::from(c.weight);
                if running >= pick {
                    chosen = i;
                    break;
                }
            }
            out.push(group.remove(chosen));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn c(target: &str, priority: u16, weight: u16) -> Candidate {
        Candidate {
            target: target.into(),
            port: 1688,
            priority,
            weight,
            domain: "t".into(),
            addresses: vec![],
        }
    }

    // R19: lowest priority first, whatever the weights.
    #[test]
    fn r19_priority_orders_groups() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..100 {
            let o = order(
                vec![c("b", 20, 100), c("a", 10, 0), c("c", 30, 1)],
                &mut rng,
            );
            assert_eq!(
                o.iter().map(|x| x.target.as_str()).collect::<Vec<_>>(),
                ["a", "b", "c"]
            );
        }
    }

    // R19 / RFC 2782: within a priority, first picks follow the weights (fixed seed).
    #[test]
    fn r19_weights_share_first_picks() {
        let mut rng = StdRng::seed_from_u64(42);
        let mut first = std::collections::HashMap::new();
        let n = 20_000;
        for _ in 0..n {
            let o = order(
                vec![
                    c("heavy", 0, 60),
                    c("medium", 0, 30),
                    c("light", 0, 10),
                    c("zero", 0, 0),
                ],
                &mut rng,
            );
            *first.entry(o[0].target.clone()).or_insert(0u32) += 1;
        }
        let share = |t: &str| f64::from(*first.get(t).unwrap_or(&0)) / f64::from(n);
        assert!((share("heavy") - 0.6).abs() < 0.02, "{first:?}");
        assert!((share("medium") - 0.3).abs() < 0.02, "{first:?}");
        assert!((share("light") - 0.1).abs() < 0.02, "{first:?}");
        assert!(share("zero") < 0.01, "{first:?}");
        // Everyone is still in the list.
        assert_eq!(order(vec![c("x", 0, 0), c("y", 0, 0)], &mut rng).len(), 2);
    }
}
