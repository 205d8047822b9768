//! One host per data directory: an exclusive lock on `DATA_DIR/host.lock`, held while the host
//! runs, with the holder's process id in the file so a second start can name it.
//!
//! Two hosts on one data directory would be two writers of one database and would fight over the
//! admin address; the second one is refused before it opens anything. The lock is the kernel's
//! (`flock` through `File::try_lock`), so it goes away with the process, even after `kill -9`:
//! a stale file never blocks a restart.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tally_store::fsmode;

use crate::HostError;

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "host.lock";

/// The held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes the lock on `dir`, or says which process holds it.
    pub fn acquire(dir: &Path) -> Result<Self, HostError> {
        // X4: the data directory (keys, database, token) is its owner's alone, and so is the
        // lock, so no other user can open it to hold the lock and keep the host from starting.
        fsmode::create_dir(dir, fsmode::PRIVATE_DIR).map_err(HostError::write(dir))?;
        let path = dir.join(LOCK_FILE);
        fsmode::tighten(&path, fsmode::PRIVATE_FILE).map_err(HostError::write(&path))?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(fsmode::PRIVATE_FILE)
            .open(&path)
            .map_err(HostError::write(&path))?;
        file.set_permissions(std::fs::Permissions::from_mode(fsmode::PRIVATE_FILE))
            .map_err(HostError::write(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(HostError::Invalid(format!(
                    "another host is running on {} (process {}); stop it first, or give this one another --data-dir",
                    dir.display(),
                    if holder.is_empty() { "unknown" } else { holder }
                )));
            }
            Err(TryLockError::Error(e)) => return Err(HostError::write(&path)(e)),
        }
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .map_err(HostError::write(&path))?;
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_dir_is_refused_with_the_holder() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let first = DataDirLock::acquire(tmp.path()).expect("first");
        let err = DataDirLock::acquire(tmp.path()).expect_err("second");
        let text = err.to_string();
        assert!(text.contains("another host is running"), "{text}");
        assert!(text.contains(&std::process::id().to_string()), "{text}");
        drop(first);
        DataDirLock::acquire(tmp.path()).expect("free again once dropped");
    }
}
