//! The host's publisher (R17, R18): for each configured domain, one RFC 2136 update, signed
//! with TSIG, that refreshes this host's own SRV record in `_tally._tcp.<domain>` (removing
//! only an outdated record that names this host's FQDN, never another host's) and, in the zone
//! of the host's name, replaces its own A/AAAA records.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use hickory_net::client::{Client, ClientHandle};
use hickory_net::proto::op::{
    DnsRequest, Message, MessageType, OpCode, Query, ResponseCode, UpdateMessage,
};
use hickory_net::proto::rr::rdata::{A, AAAA, SRV};
use hickory_net::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::udp::UdpClientStream;
use hickory_net::xfer::{DnsHandle, FirstAnswer};
use serde::{Deserialize, Serialize};

use crate::DnsError;
use crate::tsig::TsigKey;

/// One domain to publish into, with the SRV priority and weight to use there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The domain (the zone the SRV record goes in).
    pub domain: String,
    /// SRV priority (lower is tried first).
    #[serde(default)]
    pub priority: u16,
    /// SRV weight within a priority.
    #[serde(default = "default_weight")]
    pub weight: u16,
}

fn default_weight() -> u16 {
    10
}

/// What to publish, and where.
#[derive(Clone, Debug)]
pub struct Publication {
    /// The DNS server that accepts updates (the zones' primary).
    pub server: SocketAddr,
    /// The TSIG key updates are signed with.
    pub key: TsigKey,
    /// The SRV label, `_tally._tcp` by default.
    pub label: String,
    /// This host's FQDN (the SRV target).
    pub fqdn: String,
    /// The zone holding the host's A/AAAA records (default: the FQDN's parent).
    pub address_zone: Option<String>,
    /// The addresses to publish for the FQDN.
    pub addresses: Vec<IpAddr>,
    /// The port clients connect to.
    pub port: u16,
    /// TTL of the records.
    pub ttl: u32,
    /// Where to publish the SRV record.
    pub targets: Vec<Target>,
    /// Time allowed for each DNS exchange.
    pub timeout: Duration,
}

/// The outcome for one domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainResult {
    /// The domain.
    pub domain: String,
    /// The SRV record name.
    pub record: String,
    /// Whether the update succeeded.
    pub ok: bool,
    /// The error, if not.
    pub error: Option<String>,
}

fn name(s: &str) -> Result<Name, DnsError> {
    let mut n =
        Name::from_str(s.trim_end_matches('.')).map_err(|_| DnsError::Name(s.to_owned()))?;
    n.set_fqdn(true);
    Ok(n)
}

async fn client(p: &Publication) -> Result<Client<TokioRuntimeProvider>, DnsError> {
    let signer = p.key.signer()?;
    let stream = UdpClientStream::builder(p.server, TokioRuntimeProvider::default())
        .with_timeout(Some(p.timeout))
        .with_signer(Some(signer))
        .build();
    let (client, background) = Client::<TokioRuntimeProvider>::from_sender(stream);
    tokio::spawn(background);
    Ok(client)
}

fn update_message(zone: &Name) -> Message {
    let mut zone_q = Query::new();
    zone_q
        .set_name(zone.clone())
        .set_query_class(DNSClass::IN)
        .set_query_type(RecordType::SOA);
    let mut message = Message::query();
    message.metadata.op_code = OpCode::Update;
    message.metadata.message_type = MessageType::Query;
    message.metadata.recursion_desired = false;
    message.add_zone(zone_q);
    message
}

fn delete_rdata(record: &Record) -> Record {
    let mut r = record.clone();
    r.dns_class = DNSClass::NONE;
    r.ttl = 0;
    r
}

async fn send(
    client: &Client<TokioRuntimeProvider>,
    zone: &Name,
    message: Message,
) -> Result<(), DnsError> {
    let zone_s = zone.to_string();
    let response = client
        .send(DnsRequest::from(message))
        .first_answer()
        .await
        .map_err(|e| DnsError::Update {
            zone: zone_s.clone(),
            message: e.to_string(),
        })?;
    match response.metadata.response_code {
        ResponseCode::NoError => Ok(()),
        rcode => Err(DnsError::Refused {
            zone: zone_s,
            rcode: rcode.to_string(),
        }),
    }
}

impl Publication {
    /// The SRV record name for a domain.
    pub fn record_name(&self, domain: &str) -> String {
        format!("{}.{}", self.label, domain.trim_end_matches('.'))
    }

    fn address_records(&self, fqdn: &Name) -> Vec<Record> {
        self.addresses
            .iter()
            .map(|ip| match ip {
                IpAddr::V4(v4) => Record::from_rdata(fqdn.clone(), self.ttl, RData::A(A(*v4))),
                IpAddr::V6(v6) => {
                    Record::from_rdata(fqdn.clone(), self.ttl, RData::AAAA(AAAA(*v6)))
                }
            })
            .collect()
    }

    /// Publishes into every target domain; one result per domain (R17).
    pub async fn publish(&self) -> Vec<DomainResult> {
        let mut results = Vec::new();
        let client = match client(self).await {
            Ok(c) => c,
            Err(e) => {
                return self
                    .targets
                    .iter()
                    .map(|t| DomainResult {
                        domain: t.domain.clone(),
                        record: self.record_name(&t.domain),
                        ok: false,
                        error: Some(e.to_string()),
                    })
                    .collect();
            }
        };
        let mut addresses_done = false;
        for t in &self.targets {
            let r = self.publish_one(&client, t, &mut addresses_done).await;
            results.push(DomainResult {
                domain: t.domain.clone(),
                record: self.record_name(&t.domain),
                ok: r.is_ok(),
                error: r.err().map(|e| e.to_string()),
            });
        }
        if !addresses_done && !self.addresses.is_empty() {
            // The host's name is in a zone none of the SRV domains is: update it on its own.
            if let Err(e) = self.publish_addresses(&client).await {
                results.push(DomainResult {
                    domain: self.address_zone().unwrap_or_default(),
                    record: self.fqdn.clone(),
                    ok: false,
                    error: Some(e.to_string()),
                });
            }
        }
        results
    }

    fn address_zone(&self) -> Option<String> {
        self.address_zone.clone().or_else(|| {
            self.fqdn
                .trim_end_matches('.')
                .split_once('.')
                .map(|(_, parent)| parent.to_owned())
        })
    }

    async fn publish_addresses(
        &self,
        client: &Client<TokioRuntimeProvider>,
    ) -> Result<(), DnsError> {
        let fqdn = name(&self.fqdn)?;
        let zone = name(
            &self
                .address_zone()
                .ok_or_else(|| DnsError::Name(self.fqdn.clone()))?,
        )?;
        let mut message = update_message(&zone);
        self.add_address_updates(&mut message, &fqdn);
        send(client, &zone, message).await
    }

    fn add_address_updates(&self, message: &mut Message, fqdn: &Name) {
        // The host's own name: replace its address RRsets (RFC 2136 §2.5.2 then §2.5.1).
        for rtype in [RecordType::A, RecordType::AAAA] {
            let mut del = Record::update0(fqdn.clone(), 0, rtype).into_record_of_rdata();
            del.dns_class = DNSClass::ANY;
            message.add_update(del);
        }
        for r in self.address_records(fqdn) {
            message.add_update(r);
        }
    }

    async fn publish_one(
        &self,
        client: &Client<TokioRuntimeProvider>,
        target: &Target,
        addresses_done: &mut bool,
    ) -> Result<(), DnsError> {
        let zone = name(&target.domain)?;
        // The host's address records go in the same update when they live in this zone (and
        // count as handled even if this update fails: the failure is reported once).
        let address_zone = self
            .address_zone()
            .map(|z| z.trim_end_matches('.').to_ascii_lowercase());
        let with_addresses = !*addresses_done
            && address_zone.as_deref()
                == Some(&target.domain.trim_end_matches('.').to_ascii_lowercase());
        if with_addresses {
            *addresses_done = true;
        }
        let srv_name = name(&self.record_name(&target.domain))?;
        let fqdn = name(&self.fqdn)?;
        let wanted = Record::from_rdata(
            srv_name.clone(),
            self.ttl,
            RData::SRV(SRV::new(
                target.priority,
                target.weight,
                self.port,
                fqdn.clone(),
            )),
        );
        // R18: look at the shared RRset and remove only our own outdated record.
        let mut c = client.clone();
        let existing = c
            .query(srv_name.clone(), DNSClass::IN, RecordType::SRV)
            .await
            .map_err(|e| DnsError::Update {
                zone: zone.to_string(),
                message: e.to_string(),
            })?;
        let mut message = update_message(&zone);
        for r in existing.answers.iter() {
            if let RData::SRV(srv) = &r.data
                && srv.target == fqdn
                && r.data != wanted.data
            {
                message.add_update(delete_rdata(r));
            }
        }
        message.add_update(wanted);
        if with_addresses {
            self.add_address_updates(&mut message, &fqdn);
        }
        send(client, &zone, message).await
    }
}
