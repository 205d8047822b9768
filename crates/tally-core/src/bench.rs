//! The bench edition: what `tally bench`'s synthetic clients ask for.
//!
//! It is no vendor's product and has a pool of its own, so load tests never add machines to a
//! real pool's count, to the registry's listings or to a compliance report (R6). A host accepts
//! it only when started to (`accept_bench`, on by default with `--dev`); any other host answers
//! `unknown_edition`, like for any SKU not in its catalog. Requests for it take exactly the path
//! a real activation takes (decoded, counted in the commit, a registry row, event 12290, signed),
//! so a bench measures the real cost; the stores leave the pool out of what they report.
//!
//! The ids are fixed and listed in PROTOCOL.md ("Reserved ids"); no catalog may use them.

use uuid::Uuid;

/// The bench edition's SKU id.
pub const SKU: Uuid = Uuid::from_u128(0x7a11_be4c_0000_4000_8000_0000_0000_0001);
/// The bench edition's pool: left out of registry listings, counts and reports.
pub const POOL: Uuid = Uuid::from_u128(0x7a11_be4c_0000_4000_8000_0000_0000_00ff);
/// Its threshold: that of a server edition, so its table is as large as a real one's.
pub const THRESHOLD: u16 = 5;
/// The name reports and status use for the bench pool.
pub const NAME: &str = "Tally bench (synthetic)";

/// Whether `pool` is the bench pool.
pub fn is_bench_pool(pool: Uuid) -> bool {
    pool == POOL
}
