//! Root rollover on the authority's side (X8): the old root signs a statement handing trust to
//! the new root, the new root signs it too (proof of possession), and the new authority
//! directory takes over what the old one vouched for.
//!
//! What the new directory gets ([`carry_over`]):
//! - `authority.rollover`: every statement from the first root to the new one (the old
//!   directory's own chain, if it was itself rolled over, plus the new statement). This is the
//!   file the vendor ships to clients and hosts.
//! - `previous-roots.mac` (0600): the old authority's key-authenticator MAC keys (its own and
//!   those it inherited), so host keys and MAKs issued before keep checking; new keys carry the
//!   new root's authenticator. For a token-backed old root this is the derived MAC key, never
//!   the root key.
//! - the old SQLite database, copied (`VACUUM INTO`) when the new directory has none and no
//!   shared `--database` is used (nor one the old directory remembers, which the new one then
//!   remembers too): the issued keys, their limits and activations carry over.

use std::path::{Path, PathBuf};

use tally_core::rollover::{RootRollover, parse_file};
use tally_core::time::Timestamp;
use tally_core::trust::{armor, authority_id, to_hex};
use tally_db::fsmode;

use crate::dir::{self, DB_FILE, MAC_KEY_LABEL, PREVIOUS_MAC_FILE, ROLLOVER_FILE};
use crate::{Authority, AuthorityError};

/// Signs a statement handing trust from `old` to `new`.
pub fn statement(
    old: &Authority,
    new: &Authority,
    issued_at: Timestamp,
    old_root_until: Option<Timestamp>,
) -> Result<RootRollover, AuthorityError> {
    if old.public() == new.public() {
        return Err(AuthorityError::Rollover(
            "the new authority has the same root key as the old one".into(),
        ));
    }
    let mut s = RootRollover::unsigned(&old.public(), &new.public(), issued_at, old_root_until);
    s.signature_by_old = old.sign(&s.message_for_old())?;
    s.signature_by_new = new.sign(&s.message_for_new())?;
    Ok(s)
}

/// What [`carry_over`] did.
#[derive(Debug)]
pub struct CarriedOver {
    /// The new statement.
    pub statement: RootRollover,
    /// The whole chain, as a rollover file (what clients and hosts import).
    pub chain_text: String,
    /// Where the chain was written in the new directory.
    pub chain_file: PathBuf,
    /// The database copied into the new directory, if one was.
    pub database_copied: Option<PathBuf>,
    /// How many MAC keys the new authority now checks with besides its own.
    pub previous_mac_keys: usize,
}

/// The statements in `dir/authority.rollover` (none if it does not exist).
pub fn chain_in(dir: &Path) -> Result<Vec<RootRollover>, AuthorityError> {
    match std::fs::read_to_string(dir.join(ROLLOVER_FILE)) {
        Ok(text) => parse_file(&text).map_err(|e| {
            AuthorityError::Rollover(format!("{}: {e}", dir.join(ROLLOVER_FILE).display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// Rolls the authority in `old_dir` over to the (already initialised) authority in `new_dir`:
/// signs the statement with both roots and writes what the new directory needs (module docs).
/// `shared_database` is true when both use one `--database` (nothing to copy).
pub fn carry_over(
    old_dir: &Path,
    new_dir: &Path,
    issued_at: Timestamp,
    old_root_until: Option<Timestamp>,
    shared_database: bool,
) -> Result<CarriedOver, AuthorityError> {
    let old = dir::load(old_dir)?;
    let new = dir::load(new_dir)?;
    let chain_file = new_dir.join(ROLLOVER_FILE);
    if chain_file.exists() || new_dir.join(PREVIOUS_MAC_FILE).exists() {
        return Err(AuthorityError::Rollover(format!(
            "{} already took over from another root ({} exists): roll over into a new directory",
            new_dir.display(),
            chain_file.display()
        )));
    }
    let mut chain = chain_in(old_dir)?;
    if let Some(last) = chain.last()
        && last.new_public_key != old.public().to_bytes()
    {
        return Err(AuthorityError::Rollover(format!(
            "{} does not end at this authority's root {}: it is not this authority's chain",
            old_dir.join(ROLLOVER_FILE).display(),
            to_hex(&authority_id(&old.public()))
        )));
    }
    let s = statement(&old, &new, issued_at, old_root_until)?;
    chain.push(s);
    let chain_text: String = chain.iter().map(RootRollover::to_text).collect();

    // An old directory that remembers its PostgreSQL database shares it with the new one, which
    // remembers it too (issue 21): nothing to copy.
    let remembered = tally_db::remembered::read(old_dir)
        .map_err(|e| crate::store::StoreError::Remembered(std::sync::Arc::new(e)))?;
    if let (false, Some(r)) = (shared_database, &remembered) {
        tally_db::remembered::record(new_dir, &r.url)
            .map_err(|e| crate::store::StoreError::Remembered(std::sync::Arc::new(e)))?;
    }
    let database_copied = if shared_database || remembered.is_some() {
        None
    } else {
        copy_database(old_dir, new_dir)?
    };
    let macs: String = old
        .mac_keys()
        .iter()
        .map(|k| armor(MAC_KEY_LABEL, k))
        .collect();
    dir::write_private(&new_dir.join(PREVIOUS_MAC_FILE), &macs)?;
    fsmode::write_atomic(&chain_file, chain_text.as_bytes(), fsmode::PUBLIC_FILE)?;
    Ok(CarriedOver {
        statement: s,
        chain_text,
        chain_file,
        database_copied,
        previous_mac_keys: old.mac_keys().len(),
    })
}

/// Copies `old_dir/authority.db` into `new_dir` with `VACUUM INTO` (a consistent copy even
/// while the old authority runs), unless the new directory has a database already.
fn copy_database(old_dir: &Path, new_dir: &Path) -> Result<Option<PathBuf>, AuthorityError> {
    let from = old_dir.join(DB_FILE);
    let to = new_dir.join(DB_FILE);
    if !from.exists() {
        return Ok(None);
    }
    if to.exists() {
        return Err(AuthorityError::Rollover(format!(
            "{} has a database already; the rollover would not carry over the keys issued \
             under the old root. Use a new directory, or --database for a shared PostgreSQL",
            to.display()
        )));
    }
    let db_error = |e: rusqlite::Error| {
        AuthorityError::Rollover(format!("cannot copy {}: {e}", from.display()))
    };
    let conn = rusqlite::Connection::open_with_flags(
        &from,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(db_error)?;
    let target = to
        .to_str()
        .ok_or_else(|| AuthorityError::Rollover(format!("{}: not UTF-8", to.display())))?;
    // X4: the copy is made private before anything is in it (VACUUM INTO fills an empty file).
    fsmode::write_new(&to, b"", fsmode::PRIVATE_FILE)?;
    conn.execute("VACUUM INTO ?1", [target]).map_err(db_error)?;
    Ok(Some(to))
}

#[cfg(test)]
mod tests {
    use tally_core::keys::KeyGroup;
    use tally_core::rollover::Chain;

    use super::*;

    // X8: after a rollover the new authority checks the keys the old one issued, issues its
    // own, and its certificates verify for a client that trusted the old root and accepted
    // the chain; a second rollover extends the chain.
    #[test]
    fn x8_carry_over_keeps_old_keys_valid_and_chains() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (a_dir, b_dir, c_dir) = (
            tmp.path().join("a"),
            tmp.path().join("b"),
            tmp.path().join("c"),
        );
        let (a, _) = dir::init(&a_dir).expect("a");
        let old_key = a.issue_host_key(KeyGroup::ServerC, 1).expect("key");
        dir::init(&b_dir).expect("b");
        let now = Timestamp(1_800_000_000_000);
        let done = carry_over(&a_dir, &b_dir, now, None, false).expect("carry over");
        assert_eq!(done.previous_mac_keys, 1);
        let b = dir::load(&b_dir).expect("load b");
        b.check_key(old_key).expect("A's key checks at B");
        let new_key = b.issue_host_key(KeyGroup::ServerA, 1).expect("key");
        assert!(a.check_key(new_key).is_err(), "B's own keys are B's");
        let host = tally_core::trust::generate_key().verifying_key();
        let cert = b.certify(old_key, &host, now).expect("certify");
        let mut chain = Chain::new(a.public());
        let (added, refused) = chain.accept_all(&parse_file(&done.chain_text).expect("parse"));
        assert_eq!((added, refused.len()), (1, 0));
        chain
            .anchor()
            .verify_certificate(&cert, now)
            .expect("B's cert through A");
        // Refused: the same target twice.
        assert!(carry_over(&a_dir, &b_dir, now, None, false).is_err());
        // B → C extends the chain; C checks A's and B's keys.
        dir::init(&c_dir).expect("c");
        let done = carry_over(&b_dir, &c_dir, now, None, false).expect("b to c");
        let c = dir::load(&c_dir).expect("load c");
        c.check_key(old_key).expect("A's key at C");
        c.check_key(new_key).expect("B's key at C");
        let mut chain = Chain::new(a.public());
        let (added, _) = chain.accept_all(&parse_file(&done.chain_text).expect("parse"));
        assert_eq!(added, 2);
        assert_eq!(chain.anchor().current(), &c.public());
    }
}
