//! What the offline commands read from a host's data directory: status, report, events,
//! clients, backup. Every one opens the store with [`store::open_for_reading`] (no writer, no
//! migration; safe while the host runs) and takes the catalog from [`crate::catalog::resolve`].

use std::path::{Path, PathBuf};

use serde::Serialize;
use tally_core::hex::to_hex;
use tally_core::time::{Clock, SystemClock, Timestamp};
use tally_core::{Catalog, KeyGroup};
use tally_store::{Event, RegistryEntry};
/// What a query for events or registry rows asks (the store's own types).
pub use tally_store::{EventQuery, RegistryPage};
use uuid::Uuid;

use crate::store::Database;
use crate::{HostError, dns, identity, store};

/// `tally host status`: certificate, counts per pool (R2–R5), registry size (R6), DNS (R17).
#[derive(Clone, Debug, Serialize)]
pub struct HostStatus {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Where the counts, registry and events live (`embedded SQLite`, or the fleet's
    /// PostgreSQL servers: then counts, clients and events are the fleet's).
    pub database: String,
    /// The catalog in force.
    pub catalog: CatalogStatus,
    /// The host certificate.
    pub certificate: CertificateStatus,
    /// The count of each pool with a table.
    pub pools: Vec<PoolStatus>,
    /// Clients in the registry.
    pub registry_clients: u64,
    /// The last DNS publishing state.
    pub dns: serde_json::Value,
    /// What contradicts this machine's clock (X5), judged from the store as the running host
    /// judges it (without its clients' times, which only the running host has).
    pub clock: serde_json::Value,
    /// The revocation list held and whether it revokes this host (X7).
    pub revocation: serde_json::Value,
    /// X8: the certificate's proof of inclusion in the authority's transparency log.
    pub transparency_log: serde_json::Value,
}

/// The catalog a status names.
#[derive(Clone, Debug, Serialize)]
pub struct CatalogStatus {
    /// Its name.
    pub name: String,
    /// Its version (R24).
    pub version: u32,
}

/// The host certificate, as `status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct CertificateStatus {
    /// SHA-256 of the certificate, hex.
    pub fingerprint: String,
    /// The certified key group.
    #[serde(serialize_with = "group_name")]
    pub key_group: KeyGroup,
    /// The certified generation.
    pub generation: u8,
    /// The host key's serial.
    pub key_serial: u32,
    /// End of validity.
    pub not_after: Timestamp,
    /// End of validity, RFC 3339.
    pub not_after_rfc3339: String,
}

fn group_name<S: serde::Serializer>(group: &KeyGroup, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(group.name())
}

/// One pool's count.
#[derive(Clone, Debug, Serialize)]
pub struct PoolStatus {
    /// The pool id.
    pub pool: Uuid,
    /// Its name in the catalog (the id when the catalog does not know it).
    pub name: String,
    /// Live entries: the count (R2–R4).
    pub count: u32,
    /// Table capacity (R5).
    pub capacity: u32,
}

/// Reads the status of the host in `dir`, naming pools from `catalog`.
pub async fn status(dir: &Path, db: &Database, catalog: &Catalog) -> Result<HostStatus, HostError> {
    let identity = identity::load_identity(dir)?;
    let store = store::open_for_reading(dir, db).await?;
    let now = SystemClock.now();
    let pools = store
        .pool_counts(now)
        .await?
        .into_iter()
        .map(|p| PoolStatus {
            pool: p.pool,
            name: catalog
                .pool(p.pool)
                .map_or_else(|| p.pool.to_string(), |x| x.name.clone()),
            count: p.count,
            capacity: p.capacity,
        })
        .collect();
    let cert = identity.certificate();
    let coverage = identity.coverage();
    let not_after = Timestamp(cert.body.not_after.saturating_mul(1000));
    let evidence = store.clock_evidence().await?;
    let findings = tally_core::clock::assess(&tally_core::clock::Evidence {
        now,
        trusted_mark: evidence.trusted_mark,
        newest_stored: evidence.newest_stored,
        database_now: evidence.database_now,
        ..tally_core::clock::Evidence::default()
    });
    let clock = tally_admin::clock_json(&tally_server::ClockStatus {
        findings,
        checked_at: Some(now),
        retention_held_back: None,
    });
    Ok(HostStatus {
        data_dir: dir.to_owned(),
        database: db.describe(),
        catalog: CatalogStatus {
            name: catalog.name().to_owned(),
            version: catalog.version(),
        },
        certificate: CertificateStatus {
            fingerprint: to_hex(&identity.fingerprint()),
            key_group: coverage.group,
            generation: coverage.generation,
            key_serial: cert.body.key_serial,
            not_after,
            not_after_rfc3339: not_after.to_rfc3339(),
        },
        pools,
        registry_clients: store.registry_len().await?,
        dns: dns::read_status(dir),
        clock,
        revocation: tally_admin::revocation_json(
            &crate::revocations::load(dir)?,
            identity.certificate(),
        ),
        transparency_log: crate::log_proof::status(dir),
    })
}

/// A compliance report (R6) of the clients served in `[from, to)`, signed by the host's key:
/// CSV or JSON text.
pub async fn report(
    dir: &Path,
    db: &Database,
    catalog: &Catalog,
    from: Timestamp,
    to: Timestamp,
    csv: bool,
) -> Result<String, HostError> {
    let identity = identity::load_identity(dir)?;
    let store = store::open_for_reading(dir, db).await?;
    let clients = tally_admin::report::clients_in_period(&*store, from, to).await?;
    tally_admin::report::build(&identity, catalog, &clients, from, to, csv)
        .map_err(HostError::Invalid)
}

/// Events from the log (R27), newest first.
pub async fn events(dir: &Path, db: &Database, query: EventQuery) -> Result<Vec<Event>, HostError> {
    Ok(store::open_for_reading(dir, db)
        .await?
        .events(query)
        .await?)
}

/// One page of the registry (R6) and the number of clients matching its search.
pub async fn clients(
    dir: &Path,
    db: &Database,
    page: RegistryPage,
) -> Result<(u64, Vec<RegistryEntry>), HostError> {
    let store = store::open_for_reading(dir, db).await?;
    let total = store.registry_count(page.search.clone()).await?;
    Ok((total, store.registry(page).await?))
}

/// Copies the database to `out` (a consistent snapshot, while the host runs). `out` must not
/// exist.
pub async fn backup(dir: &Path, db: &Database, out: &Path) -> Result<(), HostError> {
    if out.exists() {
        return Err(HostError::Invalid(format!(
            "{} exists; choose a new file",
            out.display()
        )));
    }
    store::backup(dir, db, out).await
}

/// `tally host check`: a fleet database's replication (`None` for the embedded database): whether
/// acknowledged activations survive a failover (issue 21).
pub async fn replication(db: &Database) -> Result<Option<tally_store::Replication>, HostError> {
    match db {
        Database::Embedded => Ok(None),
        Database::Postgres(url) => {
            let pool = tally_store::pg::connect(url)
                .await
                .map_err(tally_store::StoreError::from)?;
            Ok(Some(tally_store::postgres::check_replication(&pool).await?))
        }
    }
}

/// `tally host check`: the full integrity check of an embedded database (what SQLite reports
/// as damaged; empty when sound). A fleet's PostgreSQL checks itself (`amcheck`, its own
/// monitoring): for it this only checks that the schema is readable.
pub async fn check(dir: &Path, db: &Database) -> Result<Vec<String>, HostError> {
    match db {
        Database::Embedded => {
            let store =
                tally_store::sqlite::SqliteStore::open_read_only(&dir.join(crate::paths::HOST_DB))
                    .map_err(|e| match e {
                        tally_store::StoreError::Missing { .. } => {
                            HostError::NoDatabase(dir.to_owned())
                        }
                        other => HostError::Store(other),
                    })?;
            Ok(match store.integrity_check().await {
                Ok(Ok(())) => Vec::new(),
                Ok(Err(problems)) => problems,
                Err(e) => vec![e.to_string()],
            })
        }
        Database::Postgres(_) => {
            store::open_for_reading(dir, db).await?;
            Ok(Vec::new())
        }
    }
}
