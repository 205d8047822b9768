//! Compliance reports (R6): the clients a host served in a period, per edition, signed by the
//! host's certified key so the vendor can check nothing was edited.
//!
//! - JSON: `{"report": {...}, "signature": HEX}`; the signature covers the compact JSON of
//!   `report` (keys sorted, as serde_json writes them).
//! - CSV: a header comment, one line per client, `# total` lines, the host certificate line,
//!   and a last line `# tally-report-signature-v1 HEX` over every byte before it.
//!
//! Both carry the host certificate, so `tally authority verify-report` checks the chain
//! authority → host → report.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tally_core::Catalog;
use tally_core::time::{Clock, SystemClock, Timestamp};
use tally_core::trust::{
    HostIdentity, TrustAnchor, armor, from_hex, labels, parse_certificate, to_hex,
};
use tally_store::{RegistryEntry, Store, StoreError};

const SIGNATURE_MARKER: &str = "# tally-report-signature-v1 ";

/// Every registry entry seen in `[from, to)`, read page by page.
pub async fn clients_in_period(
    store: &dyn Store,
    from: Timestamp,
    to: Timestamp,
) -> Result<Vec<RegistryEntry>, StoreError> {
    let mut out: Vec<RegistryEntry> = Vec::new();
    crate::view::for_each_page(store, from, to, |page| out.extend(page)).await?;
    // The report lists them oldest first (then by CMID), as before.
    out.sort_by_key(|e| (e.first_seen, e.cmid));
    Ok(out)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with('#') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Builds and signs a report.
pub fn build(
    identity: &HostIdentity,
    catalog: &Catalog,
    clients: &[RegistryEntry],
    from: Timestamp,
    to: Timestamp,
    csv: bool,
) -> Result<String, String> {
    let name = |sku| {
        catalog
            .edition(sku)
            .map_or_else(|| sku.to_string(), |e| e.name.clone())
    };
    let mut per_edition: BTreeMap<String, u64> = BTreeMap::new();
    for c in clients {
        *per_edition.entry(name(c.sku)).or_default() += 1;
    }
    let cert = armor(labels::HOST_CERTIFICATE, &identity.certificate().to_bytes())
        .trim()
        .to_owned();
    let now = SystemClock.now();
    if csv {
        let mut text = format!(
            "# tally-report-v1 from={from} to={to} generated={now}\nedition,sku,cmid,machine,first_seen,last_seen,activated\n"
        );
        for c in clients {
            text.push_str(&format!(
                "{},{},{},{},{},{},{}\n",
                csv_field(&name(c.sku)),
                c.sku,
                c.cmid,
                csv_field(&c.machine_name),
                c.first_seen,
                c.last_seen,
                c.activated
            ));
        }
        for (edition, n) in &per_edition {
            text.push_str(&format!("# total,{},{n}\n", csv_field(edition)));
        }
        text.push_str(&format!("# total,all,{}\n# {cert}\n", clients.len()));
        let signature = identity.sign_report(text.as_bytes());
        text.push_str(&format!("{SIGNATURE_MARKER}{}\n", to_hex(&signature)));
        return Ok(text);
    }
    let report = json!({
        "format": "tally-report-v1",
        "host_certificate": cert,
        "from": from,
        "to": to,
        "generated_at": now,
        "editions": per_edition.iter().map(|(e, n)| json!({ "edition": e, "clients": n })).collect::<Vec<_>>(),
        "total": clients.len(),
        "clients": clients.iter().map(|c| json!({
            "edition": name(c.sku), "sku": c.sku, "cmid": c.cmid, "machine": c.machine_name,
            "first_seen": c.first_seen, "last_seen": c.last_seen, "activated": c.activated,
        })).collect::<Vec<_>>(),
    });
    let bytes = serde_json::to_vec(&report).map_err(|e| e.to_string())?;
    let signature = identity.sign_report(&bytes);
    let text =
        serde_json::to_string_pretty(&json!({ "report": report, "signature": to_hex(&signature) }))
            .map_err(|e| e.to_string())?;
    Ok(text + "\n")
}

/// What a verified report says.
#[derive(Debug, serde::Serialize)]
pub struct Verified {
    /// The certified group of the host that signed it.
    pub key_group: String,
    /// Clients listed.
    pub total: u64,
}

/// Verifies a report (JSON or CSV) against the authority key; the error says why not.
pub fn verify(text: &str, anchor: &TrustAnchor) -> Result<Verified, String> {
    let now = SystemClock.now();
    let altered = || "the report was altered after signing (signature does not verify)".to_owned();
    if text.trim_start().starts_with('{') {
        let v: Value =
            serde_json::from_str(text).map_err(|e| format!("not a report: invalid JSON: {e}"))?;
        let report = &v["report"];
        let cert = report["host_certificate"]
            .as_str()
            .ok_or("no host certificate")?;
        let cert = parse_certificate(cert).map_err(|e| e.to_string())?;
        let host = anchor
            .verify_certificate(&cert, now)
            .map_err(|e| format!("the host certificate does not verify: {e}"))?;
        let sig = signature(v["signature"].as_str().ok_or("no signature")?)?;
        let bytes = serde_json::to_vec(report).map_err(|e| e.to_string())?;
        host.verify_report(&bytes, &sig).map_err(|_| altered())?;
        return Ok(Verified {
            key_group: host.coverage().group.name().into(),
            total: report["total"].as_u64().unwrap_or(0),
        });
    }
    let body_end = text
        .rfind(SIGNATURE_MARKER)
        .ok_or("not a signed report: no signature line")?;
    let sig = signature(text[body_end + SIGNATURE_MARKER.len()..].trim())?;
    let body = &text[..body_end];
    let cert_line = body
        .lines()
        .rev()
        .find_map(|l| {
            l.strip_prefix("# ")
                .filter(|l| l.starts_with(labels::HOST_CERTIFICATE))
        })
        .ok_or("no host certificate in the report")?;
    let cert = parse_certificate(cert_line).map_err(|e| e.to_string())?;
    let host = anchor
        .verify_certificate(&cert, now)
        .map_err(|e| format!("the host certificate does not verify: {e}"))?;
    host.verify_report(body.as_bytes(), &sig)
        .map_err(|_| altered())?;
    let total = body
        .lines()
        .find_map(|l| l.strip_prefix("# total,all,"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    Ok(Verified {
        key_group: host.coverage().group.name().into(),
        total,
    })
}

fn signature(hex: &str) -> Result<[u8; 64], String> {
    from_hex(hex)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| "the signature is damaged".to_owned())
}

/// Parses a `--from`/`--to` date.
pub fn date(s: &str) -> Result<Timestamp, String> {
    Timestamp::parse_date(s).ok_or_else(|| format!("'{s}' is not a date: use YYYY-MM-DD"))
}
