//! What one activation request changes, handed to the store to make durable in one
//! transaction: the registry record (R6), the count request (R2–R5) and the store's answer.

use tally_proto::{LicenseState, ResultCode};
use uuid::Uuid;

use crate::counting::CountTables;
use crate::time::Timestamp;

/// The durable registry's record of one request (R6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryUpdate {
    /// The client.
    pub cmid: Uuid,
    /// Its machine name.
    pub machine_name: String,
    /// The edition it asked for.
    pub sku: Uuid,
    /// The pool it named.
    pub pool: Uuid,
    /// The license state it reported.
    pub license_state: LicenseState,
    /// When.
    pub seen_at: Timestamp,
    /// The result the host gave.
    pub result: ResultCode,
    /// The count the host gave (0 on error).
    pub count: u32,
    /// Whether the count reached the edition's threshold.
    pub activated: bool,
    /// The requester's address, when the I/O layer knows it (R27).
    pub peer: Option<String>,
    /// Version 2's installation fields (X6): the request's sequence and hardware digest. A
    /// store that has seen this CMID send this sequence or a later one (another installation
    /// presents the CMID) reports a clone.
    pub installation: Option<tally_proto::RequestExt>,
}

/// A request to count one client in its pool's table (R2–R5), applied by the store in commit
/// order with [`CountTables::apply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CountRequest {
    /// The pool.
    pub pool: Uuid,
    /// The client.
    pub cmid: Uuid,
    /// The edition's threshold from the host's catalog (R5 sizes the table from it, never from
    /// the client's claim).
    pub threshold: u16,
    /// When the host received the request.
    pub at: Timestamp,
}

/// What the store answers for one committed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counted {
    /// The count (R2: requester included); 0 when the request was not counted.
    pub count: u32,
    /// Whether the count reached the edition's threshold.
    pub activated: bool,
    /// The time the store counted it at: the request's time, or the database's clock in a fleet
    /// (X5). The signed response carries it as `host_time`.
    pub at: Timestamp,
    /// X6: the store saw another installation present this CMID. Under
    /// [`crate::clones::ClonePolicy::Apart`] nothing was counted (`count` 0) and the answer is
    /// `clone_detected`.
    pub clone: bool,
}

/// Everything one request changes, persisted in one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changes {
    /// What to count, if the request is to be counted (a refusal counts nothing).
    pub counting: Option<CountRequest>,
    /// The registry record (R6). Its `count` and `activated` are filled in by
    /// [`Changes::settle`] once the store has counted.
    pub registry: RegistryUpdate,
    /// X6: what the store does when another installation presents this CMID.
    pub clone_policy: crate::clones::ClonePolicy,
}

impl Changes {
    /// Puts the request at `at` (the clock the store counts on, X5): its count, registry row
    /// and event are stamped with it.
    pub fn restamp(&mut self, at: Timestamp) {
        if let Some(c) = &mut self.counting {
            c.at = at;
        }
        self.registry.seen_at = at;
    }

    /// Records the store's count in the registry update and says what it means.
    pub fn settle(&mut self, count: u32) -> Counted {
        let activated = match &self.counting {
            Some(c) => c.threshold > 0 && count >= u32::from(c.threshold),
            None => false,
        };
        self.registry.count = count;
        self.registry.activated = activated;
        Counted {
            count,
            activated,
            at: self.registry.seen_at,
            clone: false,
        }
    }
}

impl CountTables {
    /// Counts one request (see [`crate::counting::PoolTable::record`]) and returns the count and
    /// the table change to persist.
    pub fn apply(&mut self, req: &CountRequest) -> (u32, crate::counting::TableChange) {
        self.record(req.pool, req.cmid, req.threshold, req.at)
    }
}
