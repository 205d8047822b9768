//! Looking at a host: offline from its data directory (read-only, through `tally_host::query`),
//! or with `--target` through its admin API.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use tally_core::time::{Clock, SystemClock, Timestamp};
use tally_host::config::{Interval, Overrides};
use tally_host::{HostConfig, catalog, query};
use tally_store::{EventQuery, RegistryPage};

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

/// `tally host status`.
pub async fn status(dir: &DirArgs, remote: &RemoteArgs, as_json: bool) -> anyhow::Result<ExitCode> {
    if remote.target.is_some() {
        let status = Admin::resolve(remote, &dir.resolve()?)?
            .get("status")
            .await?;
        if as_json {
            json(&status)?;
        } else {
            print_remote_status(&status);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (dir, db, catalog) = dir_and_catalog(dir)?;
    let status = query::status(&dir, &db, &catalog).await?;
    if as_json {
        json(&status)?;
        return Ok(ExitCode::SUCCESS);
    }
    let cert = &status.certificate;
    println!("Host data: {}", dir.display());
    println!(
        "Certificate: {} generation {}, valid until {}, fingerprint {}",
        cert.key_group,
        cert.generation,
        cert.not_after,
        cert.fingerprint.get(..16).unwrap_or(&cert.fingerprint)
    );
    println!(
        "Catalog: {} version {}",
        status.catalog.name, status.catalog.version
    );
    let mut t = Table::new(&["POOL", "COUNT", "TABLE SIZE"]);
    for p in &status.pools {
        t.row(vec![
            p.name.clone(),
            p.count.to_string(),
            p.capacity.to_string(),
        ]);
    }
    print!("{}", t.render());
    println!("Clients in registry: {}", status.registry_clients);
    match status.dns.get("results").and_then(|r| r.as_array()) {
        Some(results) => {
            for r in results {
                println!(
                    "DNS: {} {}{}",
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
        None => println!("DNS: not publishing"),
    }
    Ok(ExitCode::SUCCESS)
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

/// `tally host clients`.
pub async fn clients(
    dir: &DirArgs,
    remote: &RemoteArgs,
    search: Option<String>,
    limit: u32,
    offset: u64,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    if remote.target.is_some() {
        let mut q = format!("clients?offset={offset}&limit={}", limit.clamp(1, 500));
        if let Some(text) = &search {
            q.push_str(&format!(
                "&q={}",
                text.replace('&', "%26").replace(' ', "%20")
            ));
        }
        let page = Admin::resolve(remote, &dir.resolve()?)?.get(&q).await?;
        if as_json {
            json(&page)?;
        } else {
            for c in page["clients"].as_array().into_iter().flatten() {
                println!(
                    "{}  {}  last seen {}  count {}  activated {}",
                    c["machine_name"].as_str().unwrap_or("?"),
                    c["cmid"].as_str().unwrap_or("?"),
                    c["last_seen"],
                    c["last_count"],
                    c["activated"]
                );
            }
            println!("{} clients in total", page["total"]);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (data_dir, db, catalog) = dir_and_catalog(dir)?;
    let (total, rows) = query::clients(
        &data_dir,
        &db,
        RegistryPage {
            search,
            offset,
            limit,
            ..RegistryPage::default()
        },
    )
    .await?;
    if as_json {
        json(&serde_json::json!({ "total": total, "offset": offset, "clients": rows }))?;
    } else {
        let mut t = Table::new(&[
            "MACHINE",
            "CMID",
            "EDITION",
            "LAST SEEN",
            "COUNT",
            "ACTIVATED",
            "REQUESTS",
        ]);
        for r in &rows {
            t.row(vec![
                r.machine_name.clone(),
                r.cmid.to_string(),
                catalog
                    .edition(r.sku)
                    .map_or_else(|| r.sku.to_string(), |e| e.name.clone()),
                r.last_seen.to_string(),
                r.last_count.to_string(),
                if r.activated { "yes" } else { "no" }.to_owned(),
                r.requests.to_string(),
            ]);
        }
        print!("{}", t.render());
        println!("{} of {total} clients shown", rows.len());
    }
    Ok(ExitCode::SUCCESS)
}

fn print_remote_status(s: &serde_json::Value) {
    println!(
        "Certificate: {} generation {}; catalog {} v{}",
        s["certificate"]["key_group"].as_str().unwrap_or("?"),
        s["certificate"]["generation"],
        s["catalog"]["name"].as_str().unwrap_or("?"),
        s["catalog"]["version"]
    );
    let mut t = Table::new(&["POOL", "COUNT", "TABLE SIZE", "THRESHOLDS"]);
    for p in s["pools"].as_array().into_iter().flatten() {
        t.row(vec![
            p["name"].as_str().unwrap_or("?").to_owned(),
            p["count"].to_string(),
            p["capacity"].to_string(),
            format!("{}/{}", p["server_threshold"], p["client_threshold"]),
        ]);
    }
    print!("{}", t.render());
    let st = &s["settings"];
    println!(
        "Listen {}; intervals {} / {} min; DNS {}; priority {}; {} clients in registry",
        st["listen"].as_str().unwrap_or("?"),
        st["activation_interval_secs"].as_u64().unwrap_or(0) / 60,
        st["renewal_interval_secs"].as_u64().unwrap_or(0) / 60,
        if st["dns_publish"] == true {
            "on"
        } else {
            "off"
        },
        st["priority"].as_str().unwrap_or("?"),
        s["registry_clients"]
    );
}

/// `tally host check`: the full integrity check of the host's database.
pub async fn check(dir: &DirArgs, as_json: bool) -> anyhow::Result<ExitCode> {
    let config = dir.config()?;
    let problems = query::check(&config.data_dir, &config.database).await?;
    if as_json {
        json(&serde_json::json!({ "ok": problems.is_empty(), "problems": problems }))?;
    } else if problems.is_empty() {
        println!("{}: the database is sound.", config.database.describe());
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
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
