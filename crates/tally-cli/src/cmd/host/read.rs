//! Looking at a host: offline from its data directory (read-only, through `tally_host::query`),
//! or with `--target` through its admin API.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use tally_core::time::{Clock, SystemClock, Timestamp};
use tally_host::config::{Interval, Overrides};
use tally_host::query::{EventQuery, RegistryPage};
use tally_host::{HostConfig, catalog, query};

use super::DirArgs;
use crate::cmd::remote::{Admin, RemoteArgs};
use crate::output::{Table, json};

/// The data directory and the catalog in force there (the one resolution every command uses).
fn dir_and_catalog(
    dir: &DirArgs,
) -> anyhow::Result<(PathBuf, tally_host::store::Database, tally_core::Catalog)> {
    let config = dir.config()?;
    let catalog = catalog::resolve(&config.data_dir, config.catalog.as_deref())?;
    Ok((config.data_dir, config.database, catalog))
}

/// `tally host status`: the same fields and text locally (from the data directory) and
/// remotely (through the admin API).
pub async fn status(dir: &DirArgs, remote: &RemoteArgs, as_json: bool) -> anyhow::Result<ExitCode> {
    let status = if remote.target.is_some() {
        Admin::resolve(remote, &dir.resolve()?)?
            .get("status")
            .await?
    } else {
        let (dir, db, catalog) = dir_and_catalog(dir)?;
        let status = query::status(&dir, &db, &catalog).await?;
        local_status_json(&status, &catalog)?
    };
    if as_json {
        json(&status)?;
    } else {
        print_remote_status(&status);
    }
    Ok(ExitCode::SUCCESS)
}

/// The offline status in the admin API's shape: thresholds and "more needed" per pool (R1, R2),
/// the certificate's days left.
fn local_status_json(
    status: &query::HostStatus,
    catalog: &tally_core::Catalog,
) -> anyhow::Result<serde_json::Value> {
    let mut v = serde_json::to_value(status)?;
    let now = SystemClock.now();
    v["certificate"]["days_left"] =
        ((status.certificate.not_after.millis() - now.millis()).div_euclid(86_400_000)).into();
    if let Some(pools) = v["pools"].as_array_mut() {
        for (p, pool) in pools.iter_mut().zip(&status.pools) {
            let thresholds: Vec<u16> = catalog
                .editions()
                .iter()
                .filter(|e| e.pool == pool.pool)
                .map(|e| e.threshold)
                .collect();
            let server = thresholds.iter().copied().min().unwrap_or(0);
            let client = thresholds.iter().copied().max().unwrap_or(0);
            p["server_threshold"] = server.into();
            p["client_threshold"] = client.into();
            p["server_needed"] = u32::from(server).saturating_sub(pool.count).into();
            p["client_needed"] = u32::from(client).saturating_sub(pool.count).into();
        }
    }
    v["time"] = now.millis().into();
    Ok(v)
}

/// `tally host report`.
pub async fn report(
    dir: &DirArgs,
    remote: &RemoteArgs,
    from: Option<String>,
    to: Option<String>,
    format: &str,
    out: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let now = SystemClock.now();
    let date = |d: Option<String>, default: Timestamp| -> anyhow::Result<Timestamp> {
        match d {
            Some(d) => tally_admin::report::date(&d).map_err(|e| anyhow::anyhow!(e)),
            None => Ok(default),
        }
    };
    let (from, to) = (date(from, now.plus_days(-30))?, date(to, now.plus_days(1))?);
    let text = if remote.target.is_some() {
        let admin = Admin::resolve(remote, &dir.resolve()?)?;
        let q = format!(
            "report?from={}&to={}&format={format}",
            from.millis(),
            to.millis()
        );
        admin.get_text(&q).await?
    } else {
        let (dir, db, catalog) = dir_and_catalog(dir)?;
        query::report(&dir, &db, &catalog, from, to, format == "csv").await?
    };
    match &out {
        Some(p) => {
            std::fs::write(p, &text).with_context(|| format!("cannot write {}", p.display()))?;
            eprintln!("Report written to {}.", p.display());
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `tally host backup --out FILE`.
pub async fn backup(dir: &DirArgs, out: &Path) -> anyhow::Result<ExitCode> {
    let config = dir.config()?;
    query::backup(&config.data_dir, &config.database, out).await?;
    println!("Database copied to {}.", out.display());
    Ok(ExitCode::SUCCESS)
}

/// `tally host config check FILE`.
pub fn config_check(file: &Path) -> anyhow::Result<ExitCode> {
    let config = HostConfig::load(Some(file), Overrides::default())?;
    tally_host::dns::check(&config)?;
    println!("{}: valid", file.display());
    Ok(ExitCode::SUCCESS)
}

/// `tally host events`.
pub async fn events(
    dir: &DirArgs,
    remote: &RemoteArgs,
    since: Option<Interval>,
    id: Option<u32>,
    limit: u32,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    if remote.target.is_some() {
        let mut q = format!("events?limit={limit}");
        if let Some(s) = since {
            q.push_str(&format!("&since_secs={}", s.0));
        }
        if let Some(i) = id {
            q.push_str(&format!("&id={i}"));
        }
        let events = Admin::resolve(remote, &dir.resolve()?)?.get(&q).await?;
        if as_json {
            json(&events)?;
        } else {
            for e in events.as_array().into_iter().flatten() {
                println!(
                    "{}  {:>5}  {}  {}",
                    e["at"],
                    e["event_id"],
                    e["message"].as_str().unwrap_or(""),
                    e["data"]
                );
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let since = since.map(|p| Timestamp(SystemClock.now().millis() - i64::from(p.0) * 1000));
    let config = dir.config()?;
    let events = query::events(
        &config.data_dir,
        &config.database,
        EventQuery {
            since,
            event_id: id,
            limit,
        },
    )
    .await?;
    if as_json {
        json(&events)?;
    } else {
        for e in &events {
            println!(
                "{}  {:>5}  {:<7}  {}  {}",
                e.at, e.event_id, e.level, e.message, e.data
            );
        }
        println!("{} event(s)", events.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// `tally host clients`: the same columns and JSON locally and remotely.
pub async fn clients(
    dir: &DirArgs,
    remote: &RemoteArgs,
    search: Option<String>,
    limit: u32,
    offset: u64,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let limit = limit.clamp(1, 500);
    let page = if remote.target.is_some() {
        let mut q = format!("clients?offset={offset}&limit={limit}");
        if let Some(text) = &search {
            q.push_str(&format!(
                "&q={}",
                text.replace('%', "%25")
                    .replace('&', "%26")
                    .replace(' ', "%20")
                    .replace('#', "%23")
            ));
        }
        Admin::resolve(remote, &dir.resolve()?)?.get(&q).await?
    } else {
        let config = dir.config()?;
        let catalog = catalog::resolve(&config.data_dir, config.catalog.as_deref())?;
        let (total, rows) = query::clients(
            &config.data_dir,
            &config.database,
            RegistryPage {
                search,
                offset,
                limit,
                ..RegistryPage::default()
            },
        )
        .await?;
        let rows = tally_admin::view::classify(
            rows,
            &catalog,
            None,
            SystemClock.now(),
            config.intervals.renewal_secs,
            config.intervals.activation_secs,
        );
        serde_json::json!({ "total": total, "offset": offset, "limit": limit, "clients": rows })
    };
    if as_json {
        json(&page)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(&[
        "MACHINE",
        "CMID",
        "EDITION",
        "STATE",
        "LAST SEEN (UTC)",
        "COUNT",
        "REQUESTS",
        "CLONES",
    ]);
    let rows = page["clients"].as_array().cloned().unwrap_or_default();
    for c in &rows {
        t.row(vec![
            c["machine_name"].as_str().unwrap_or("?").to_owned(),
            c["cmid"].as_str().unwrap_or("?").to_owned(),
            c["edition"].as_str().unwrap_or("?").to_owned(),
            c["state"].as_str().unwrap_or("?").to_owned(),
            utc(&c["last_seen"]).trim_end_matches(" UTC").to_owned(),
            c["last_count"].to_string(),
            c["requests"].to_string(),
            // X6: another installation presented this CMID.
            match c["clones"].as_u64() {
                Some(n) if n > 0 => format!("{n} detected"),
                _ => "-".to_owned(),
            },
        ]);
    }
    print!("{}", t.render());
    println!("{} of {} clients shown", rows.len(), page["total"]);
    Ok(ExitCode::SUCCESS)
}

/// Prints a host's status (local or remote, one shape) as text, the way KMS's `/dlv` lists the
/// count and thresholds.
pub fn print_remote_status(s: &serde_json::Value) {
    let cert = &s["certificate"];
    if let Some(dir) = s["data_dir"].as_str() {
        println!("Host data:   {dir}");
    }
    println!(
        "Certificate: {} generation {}, valid until {} ({} days left), fingerprint {}",
        cert["key_group"].as_str().unwrap_or("?"),
        cert["generation"],
        utc(&cert["not_after"]),
        cert["days_left"],
        cert["fingerprint"]
            .as_str()
            .map(|f| f.get(..16).unwrap_or(f))
            .unwrap_or("?")
    );
    // X8: the certificate's proof of inclusion in the authority's log (local status only).
    let log = &s["transparency_log"];
    if log["proven"] == true {
        println!(
            "Logged:      entry {} of the authority's transparency log (head of size {}, proof in {})",
            log["index"],
            log["tree_size"],
            log["file"].as_str().unwrap_or("?")
        );
    } else if !log.is_null() {
        println!(
            "Logged:      not yet proven ({}); run: {}",
            log["reason"].as_str().unwrap_or("?"),
            log["fix"].as_str().unwrap_or("?")
        );
    }
    println!(
        "Catalog:     {} version {}",
        s["catalog"]["name"].as_str().unwrap_or("?"),
        s["catalog"]["version"]
    );
    let mut t = Table::new(&[
        "POOL",
        "COUNT",
        "SERVERS FROM",
        "CLIENTS FROM",
        "MORE NEEDED (SERVER/CLIENT)",
        "TABLE SIZE",
    ]);
    for p in s["pools"].as_array().into_iter().flatten() {
        t.row(vec![
            p["name"].as_str().unwrap_or("?").to_owned(),
            p["count"].to_string(),
            p["server_threshold"].to_string(),
            p["client_threshold"].to_string(),
            format!("{}/{}", p["server_needed"], p["client_needed"]),
            p["capacity"].to_string(),
        ]);
    }
    print!("{}", t.render());
    println!("Clients in registry: {}", s["registry_clients"]);
    if let Some(storage) = s.get("storage").filter(|v| v.is_object()) {
        println!(
            "Storage:     {}{}",
            if storage["up"] == true {
                "up"
            } else {
                "FAILING: "
            },
            storage["error"].as_str().unwrap_or(""),
        );
        if storage["registry_full"] == true {
            println!("Registry:    FULL (new machines are counted but not registered)");
        }
        if storage["events_at_cap"] == true {
            println!(
                "Events:      AT CAP (the oldest events are deleted to make room; event 1011)"
            );
        }
    }
    if let Some(clock) = s.get("clock").filter(|v| v.is_object()) {
        print_clock(clock);
    }
    if let Some(r) = s.get("revocation").filter(|v| v.is_object()) {
        match r["revoked"].as_object() {
            Some(revoked) => println!(
                "Revocation:  REVOKED: {}; this host answers no activation (ask the vendor for a new host key)",
                revoked
                    .get("message")
                    .and_then(|m| m.as_str())
                    .unwrap_or("?")
            ),
            None if r["serial"] == 0 => println!("Revocation:  no list held"),
            None => println!(
                "Revocation:  list {} held ({} entries); this host is not on it",
                r["serial"], r["entries"]
            ),
        }
    }
    if s["settings"].is_object() {
        print_settings(&s["settings"]);
    }
    match s["dns"].get("results").and_then(|r| r.as_array()) {
        Some(results) => {
            for r in results {
                println!(
                    "DNS:         {} {}{}",
                    r["record"].as_str().unwrap_or("?"),
                    if r["ok"] == true {
                        "published"
                    } else {
                        "FAILED: "
                    },
                    r["error"].as_str().unwrap_or("")
                );
            }
        }
        None => println!("DNS:         not publishing"),
    }
}

/// Prints the settings in force.
pub fn print_settings(settings: &serde_json::Value) {
    println!(
        "Settings:    listen {}, activation {} min, renewal {} min, DNS {}, priority {}",
        settings["listen"].as_str().unwrap_or("?"),
        settings["activation_interval_secs"].as_u64().unwrap_or(0) / 60,
        settings["renewal_interval_secs"].as_u64().unwrap_or(0) / 60,
        if settings["dns_publish"] == true {
            "on"
        } else {
            "off"
        },
        settings["priority"].as_str().unwrap_or("?"),
    );
}

/// A Unix-ms time from JSON as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(v: &serde_json::Value) -> String {
    v.as_i64().map_or_else(
        || "?".to_owned(),
        |ms| {
            Timestamp(ms)
                .to_rfc3339()
                .replace('T', " ")
                .replace('Z', " UTC")
        },
    )
}

/// `tally host check`: the full integrity check of the host's database.
pub async fn check(dir: &DirArgs, as_json: bool) -> anyhow::Result<ExitCode> {
    let config = dir.config()?;
    let problems = query::check(&config.data_dir, &config.database).await?;
    let replication = query::replication(&config.database).await?;
    let warning = replication.as_ref().and_then(|r| r.warning());
    // With require_sync_replication, a replication that would refuse the host fails the check.
    let refused = config.require_sync_replication
        && replication.as_ref().is_some_and(|r| !r.survives_failover());
    if as_json {
        json(&serde_json::json!({
            "ok": problems.is_empty() && !refused,
            "problems": problems,
            "replication": replication,
            "replication_warning": warning,
            "require_sync_replication": config.require_sync_replication,
        }))?;
    } else if problems.is_empty() {
        println!("{}: the database is sound.", config.database.describe());
        if let Some(r) = &replication {
            println!(
                "replication: {} (synchronous_commit = {}, synchronous_standby_names = '{}')",
                r.summary(),
                r.synchronous_commit,
                r.synchronous_standby_names
            );
            for s in &r.standbys {
                println!(
                    "  standby {}: {} {}",
                    if s.name.is_empty() {
                        "(unnamed)"
                    } else {
                        &s.name
                    },
                    s.state.as_deref().unwrap_or("?"),
                    s.sync_state.as_deref().unwrap_or("?")
                );
            }
        }
        if let Some(w) = &warning {
            eprintln!("warning: {w}");
        }
        if refused {
            eprintln!(
                "require_sync_replication is set: the host refuses to start on this database"
            );
        }
    } else {
        eprintln!("The database in {} is damaged:", config.data_dir.display());
        for p in &problems {
            eprintln!("  {p}");
        }
        eprintln!(
            "Stop the host, move tally.db (and tally.db-wal, tally.db-shm) aside, copy the latest \
             backup to DATA_DIR/tally.db and start the host (docs/OPERATIONS.md, \"Backup, restore, upgrade\")."
        );
    }
    Ok(if problems.is_empty() && !refused {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// X5: the clock check's line(s) in `tally host status`.
fn print_clock(clock: &serde_json::Value) {
    let findings = clock["findings"].as_array().cloned().unwrap_or_default();
    if findings.is_empty() {
        println!("Clock:       ok");
    }
    for f in &findings {
        let skew = f["skew_seconds"].as_i64().unwrap_or(0);
        println!(
            "Clock:       SUSPECT: {} s {} the {} (event 1007)",
            skew.unsigned_abs(),
            if skew >= 0 { "ahead of" } else { "behind" },
            f["reference"].as_str().unwrap_or("?").replace('_', " ")
        );
    }
    if let Some(r) = clock["retention_held_back"].as_object() {
        println!(
            "Retention:   HELD BACK: the clock is in doubt ({}; event 1008)",
            r.get("reference").and_then(|v| v.as_str()).unwrap_or("?")
        );
    }
}
