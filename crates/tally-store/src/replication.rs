//! Whether an acknowledged activation survives a failover: the fleet database's replication,
//! as `synchronous_commit`, `synchronous_standby_names` and `pg_stat_replication` say.
//!
//! A fleet acknowledges an activation when PostgreSQL's `COMMIT` returns. With synchronous
//! replication that means a standby has the commit too; with asynchronous replication (or
//! `synchronous_commit = local/off`) the last commits may exist only on the primary, and a
//! promoted standby hands their counts out again. The assessment is pure (tested here); the
//! PostgreSQL store reads the three inputs (`postgres/replication.rs`).

use serde::Serialize;

/// Event id: the fleet's database would lose acknowledged activations in a failover, or waits
/// for a synchronous standby that is not there (written once per change of mode).
pub const EVENT_REPLICATION: u32 = 1010;

/// How the database replicates commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicationMode {
    /// A commit returns once a synchronous standby has it: a failover loses nothing acknowledged.
    Synchronous,
    /// `synchronous_standby_names` names standbys but none is in sync: every commit waits
    /// (clients get `storage_failure`) until one connects.
    Waiting,
    /// Standbys stream, but a commit does not wait for them: a failover loses the last
    /// acknowledged commits.
    Asynchronous,
    /// No standby: nothing to fail over to (the database is a single point of failure).
    Standalone,
    /// The database would not say (the role may not read `pg_stat_replication`'s `sync_state`:
    /// grant it `pg_monitor`).
    Unknown,
}

/// One standby as `pg_stat_replication` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Standby {
    /// `application_name`.
    pub name: String,
    /// `state` (`streaming`, `catchup`, …); `None` when hidden from this role.
    pub state: Option<String>,
    /// `sync_state` (`sync`, `quorum`, `potential`, `async`); `None` when hidden.
    pub sync_state: Option<String>,
}

/// The fleet database's replication, assessed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Replication {
    /// The mode the settings and the standbys give.
    pub mode: ReplicationMode,
    /// `SHOW synchronous_commit`.
    pub synchronous_commit: String,
    /// `SHOW synchronous_standby_names` (empty: none).
    pub synchronous_standby_names: String,
    /// The standbys connected to the primary.
    pub standbys: Vec<Standby>,
}

impl Replication {
    /// Assesses the three inputs.
    pub fn assess(
        synchronous_commit: &str,
        synchronous_standby_names: &str,
        standbys: Vec<Standby>,
    ) -> Self {
        let waits_for_standby = !synchronous_standby_names.trim().is_empty()
            && matches!(
                synchronous_commit,
                "on" | "remote_write" | "remote_apply" | "true" | "yes" | "1"
            );
        let mode = if waits_for_standby {
            let in_sync = standbys.iter().filter(|s| {
                matches!(s.sync_state.as_deref(), Some("sync" | "quorum"))
                    && s.state.as_deref() == Some("streaming")
            });
            if in_sync.count() > 0 {
                ReplicationMode::Synchronous
            } else if !standbys.is_empty() && standbys.iter().all(|s| s.sync_state.is_none()) {
                ReplicationMode::Unknown
            } else {
                ReplicationMode::Waiting
            }
        } else if standbys.is_empty() {
            ReplicationMode::Standalone
        } else {
            ReplicationMode::Asynchronous
        };
        Self {
            mode,
            synchronous_commit: synchronous_commit.to_owned(),
            synchronous_standby_names: synchronous_standby_names.to_owned(),
            standbys,
        }
    }

    /// Whether an acknowledged commit survives the promotion of a standby.
    pub fn survives_failover(&self) -> bool {
        self.mode == ReplicationMode::Synchronous
    }

    /// What an admin should know, when something is wrong (`None` when commits are replicated
    /// synchronously, or when there is no standby to fail over to).
    pub fn warning(&self) -> Option<String> {
        match self.mode {
            ReplicationMode::Synchronous | ReplicationMode::Standalone => None,
            ReplicationMode::Asynchronous => Some(format!(
                "replication is asynchronous (synchronous_commit = {}, synchronous_standby_names = '{}', {} standby(s)): activations acknowledged just before a failover are lost and their counts handed out again; set synchronous_standby_names on the primary (FLEET.md)",
                self.synchronous_commit,
                self.synchronous_standby_names,
                self.standbys.len()
            )),
            ReplicationMode::Waiting => Some(format!(
                "commits wait for a synchronous standby ('{}') and none is in sync: every activation fails until one connects, or the setting is changed",
                self.synchronous_standby_names
            )),
            ReplicationMode::Unknown => Some(
                "the database does not show this role its standbys' sync_state: grant it pg_monitor so the hosts can check that commits are replicated".to_owned(),
            ),
        }
    }

    /// One line for the dashboard and `tally host check`.
    pub fn summary(&self) -> String {
        let standbys = self.standbys.len();
        match self.mode {
            ReplicationMode::Synchronous => format!("synchronous ({standbys} standby(s))"),
            ReplicationMode::Waiting => "waiting for a synchronous standby (none in sync)".into(),
            ReplicationMode::Asynchronous => format!("asynchronous ({standbys} standby(s))"),
            ReplicationMode::Standalone => "no standby".into(),
            ReplicationMode::Unknown => "unknown (grant pg_monitor)".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standby(sync: &str) -> Standby {
        Standby {
            name: "s1".into(),
            state: Some("streaming".into()),
            sync_state: Some(sync.into()),
        }
    }

    #[test]
    fn modes() {
        let r = Replication::assess("on", "*", vec![standby("sync")]);
        assert_eq!(r.mode, ReplicationMode::Synchronous);
        assert!(r.survives_failover() && r.warning().is_none());
        let r = Replication::assess("on", "", vec![standby("async")]);
        assert_eq!(r.mode, ReplicationMode::Asynchronous);
        assert!(r.warning().is_some_and(|w| w.contains("lost")));
        // `local` does not wait for the standby even when one is named.
        let r = Replication::assess("local", "*", vec![standby("sync")]);
        assert_eq!(r.mode, ReplicationMode::Asynchronous);
        let r = Replication::assess("on", "*", vec![]);
        assert_eq!(r.mode, ReplicationMode::Waiting);
        assert!(r.warning().is_some_and(|w| w.contains("none is in sync")));
        let r = Replication::assess("on", "", vec![]);
        assert_eq!(r.mode, ReplicationMode::Standalone);
        assert!(!r.survives_failover() && r.warning().is_none());
        let hidden = Standby {
            name: "s1".into(),
            state: None,
            sync_state: None,
        };
        let r = Replication::assess("on", "*", vec![hidden]);
        assert_eq!(r.mode, ReplicationMode::Unknown);
    }
}
