//! File and directory modes set explicitly, never taken from the umask (X4).
//!
//! Everything Tally creates goes through these functions, so a process started under
//! `umask 000` still makes a state directory no other user can write and a state file no other
//! user can read. At start, services call [`tighten`] on what they already have: a file an older
//! Tally (or a loose umask) left more open than its mode here is narrowed, with a warning naming
//! the path and both modes.
//!
//! One module for every side: the host, the authority and their SQLite databases
//! ([`prepare_sqlite`]), and the client's state directory (`tally_client::fsmode` re-exports
//! it; the client takes tally-db without its database features, so this is all it gets).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use tracing::warn;

/// A file only its owner may read or write: state, keys, tokens, databases, locks.
pub const PRIVATE_FILE: u32 = 0o600;
/// A file anyone may read and only its owner write: public keys, certificates, trust anchors.
pub const PUBLIC_FILE: u32 = 0o644;
/// A directory only its owner may enter.
pub const PRIVATE_DIR: u32 = 0o700;
/// A directory anyone may enter and only its owner change: the client's state directory, which
/// holds the agent's socket (R13: any local user may ask the agent for the status).
pub const SHARED_DIR: u32 = 0o755;

/// Creates `dir` and its missing parents, each with exactly `mode`. An existing directory is
/// left as it is (see [`tighten`]).
pub fn create_dir(dir: &Path, mode: u32) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir(parent, mode)?;
    }
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(mode)),
        // Made meanwhile by another process: theirs, with its own mode.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Opens `path` for writing, creating it with exactly `mode` if missing (never truncating); an
/// existing file more open than `mode` is narrowed to it.
pub fn open_file(path: &Path, mode: u32) -> io::Result<fs::File> {
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(mode)
        .open(path)?;
    set_mode(&file, mode)?;
    Ok(file)
}

/// Replaces `path` with `contents` atomically (a temporary file in the same directory, fsync,
/// rename), with exactly `mode`: a reader sees the old file or the new one, whole.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    // One temporary name per process and call: processes writing one file at once (three
    // authority processes recording their database at start) never rename each other's file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()));
    // A fresh file each time (never one that is there, nor where a link there points).
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    set_mode(&f, mode)?;
    f.write_all(contents)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// Creates `path` with `contents` and exactly `mode`; refuses to overwrite an existing file.
pub fn write_new(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    set_mode(&f, mode)?;
    f.write_all(contents)?;
    f.sync_all()
}

/// Narrows `path` (a file or a directory; not followed if it is a link) to at most `max`: the
/// bits beyond `max` are cleared, with a warning naming the path and both modes. Returns the
/// old and new modes when it changed something; a missing path is fine.
pub fn tighten(path: &Path, max: u32) -> io::Result<Option<(u32, u32)>> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if meta.file_type().is_symlink() {
        return Ok(None);
    }
    let old = meta.mode() & 0o7777;
    let new = old & max;
    if new == old {
        return Ok(None);
    }
    fs::set_permissions(path, fs::Permissions::from_mode(new))?;
    warn!(
        path = %path.display(),
        old_mode = %format!("{old:04o}"),
        new_mode = %format!("{new:04o}"),
        "file mode was looser than Tally's; tightened (X4)"
    );
    Ok(Some((old, new)))
}

/// X4: makes a SQLite database file mode 0600 before SQLite opens it: SQLite creates a missing
/// database from the umask (0644 at best) and gives its `-wal` and `-shm` files the database
/// file's mode, so a missing file is created empty with 0600 here, and an existing database and
/// its `-wal`/`-shm` files more open than that are narrowed (with a warning, see [`tighten`]).
pub fn prepare_sqlite(path: &Path) -> io::Result<()> {
    let created = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE)
        .open(path);
    match created {
        Ok(f) => set_mode(&f, PRIVATE_FILE)?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            tighten(path, PRIVATE_FILE)?;
        }
        // Not creatable here (a read-only directory, say): SQLite fails the same way and its
        // error, with the store's advice, is the one to show.
        Err(_) => return Ok(()),
    }
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        tighten(Path::new(&side), PRIVATE_FILE)?;
    }
    Ok(())
}

/// The permission bits of `path` (`None` if it is missing).
pub fn mode_of(path: &Path) -> Option<u32> {
    fs::symlink_metadata(path).ok().map(|m| m.mode() & 0o7777)
}

fn set_mode(file: &fs::File, mode: u32) -> io::Result<()> {
    if file.metadata()?.mode() & 0o7777 != mode {
        file.set_permissions(fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` under `umask`, restoring the old one after. The umask is per process: only this
    /// one test changes it (so two never interleave), and every mode checked anywhere is set
    /// explicitly, so a test running meanwhile sees no difference.
    #[allow(unsafe_code)]
    fn with_umask<T>(mask: u32, f: impl FnOnce() -> T) -> T {
        unsafe extern "C" {
            fn umask(mask: u32) -> u32;
        }
        // SAFETY: umask(2) cannot fail and only sets the process's file creation mask.
        let old = unsafe { umask(mask) };
        let out = f();
        // SAFETY: as above.
        unsafe { umask(old) };
        out
    }

    // X4: under umask 000 every mode is still the one asked for, not 0777/0666; under a strict
    // umask (077) a public file and the shared directory are not narrowed either.
    #[test]
    fn x4_modes_are_explicit_whatever_the_umask() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("a/b");
        with_umask(0o000, || {
            create_dir(&dir, SHARED_DIR).expect("dir");
            drop(open_file(&dir.join("lock"), PRIVATE_FILE).expect("lock"));
            write_atomic(&dir.join("pub"), b"x", PUBLIC_FILE).expect("pub");
            write_new(&dir.join("key"), b"k", PRIVATE_FILE).expect("key");
        });
        assert_eq!(mode_of(&tmp.path().join("a")), Some(SHARED_DIR));
        assert_eq!(mode_of(&dir), Some(SHARED_DIR));
        assert_eq!(mode_of(&dir.join("lock")), Some(PRIVATE_FILE));
        assert_eq!(mode_of(&dir.join("pub")), Some(PUBLIC_FILE));
        assert_eq!(mode_of(&dir.join("key")), Some(PRIVATE_FILE));
        assert!(write_new(&dir.join("key"), b"again", PRIVATE_FILE).is_err());
        let strict = tmp.path().join("strict");
        with_umask(0o077, || {
            create_dir(&strict, SHARED_DIR).expect("dir");
            write_atomic(&strict.join("pub"), b"x", PUBLIC_FILE).expect("pub");
        });
        assert_eq!(mode_of(&strict), Some(SHARED_DIR));
        assert_eq!(mode_of(&strict.join("pub")), Some(PUBLIC_FILE));
    }

    #[test]
    fn tighten_clears_only_the_bits_beyond_the_maximum() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let f = tmp.path().join("f");
        fs::write(&f, b"x").expect("write");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o666)).expect("chmod");
        assert_eq!(
            tighten(&f, PRIVATE_FILE).expect("tighten"),
            Some((0o666, 0o600))
        );
        assert_eq!(mode_of(&f), Some(0o600));
        assert_eq!(tighten(&f, PRIVATE_FILE).expect("again"), None);
        // Stricter than the maximum stays as it is.
        fs::set_permissions(&f, fs::Permissions::from_mode(0o400)).expect("chmod");
        assert_eq!(tighten(&f, PUBLIC_FILE).expect("stricter"), None);
        assert_eq!(
            tighten(&tmp.path().join("missing"), 0o600).expect("none"),
            None
        );
    }

    // X4: a database SQLite will open is 0600, and so are its -wal and -shm files left looser.
    #[test]
    fn x4_a_sqlite_database_and_its_side_files_are_private() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let db = tmp.path().join("tally.db");
        prepare_sqlite(&db).expect("new");
        assert_eq!(mode_of(&db), Some(PRIVATE_FILE));
        let wal = tmp.path().join("tally.db-wal");
        fs::write(&wal, b"").expect("wal");
        fs::set_permissions(&wal, fs::Permissions::from_mode(0o644)).expect("chmod");
        fs::set_permissions(&db, fs::Permissions::from_mode(0o666)).expect("chmod");
        prepare_sqlite(&db).expect("existing");
        assert_eq!(mode_of(&db), Some(PRIVATE_FILE));
        assert_eq!(mode_of(&wal), Some(PRIVATE_FILE));
    }

    #[test]
    fn open_file_narrows_an_existing_loose_file_and_keeps_its_contents() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let f = tmp.path().join("lock");
        fs::write(&f, b"123").expect("write");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).expect("chmod");
        drop(open_file(&f, PRIVATE_FILE).expect("open"));
        assert_eq!(mode_of(&f), Some(PRIVATE_FILE));
        assert_eq!(fs::read(&f).expect("read"), b"123");
    }
}
