//! `keybridge backup`: a copy of a server's data directory, taken while the
//! server runs, that another server can start from.
//!
//! A data directory holds the SQLite database and the files that make it
//! usable: the built-in CA's key and certificate (without them no enrolled
//! device's certificate chains to anything the new server trusts), the
//! master key that seals OCRA secrets (without it they cannot be opened),
//! the admin token, TLS files. The database is copied as one consistent
//! snapshot (`store::sqlite::backup`), every other regular file byte for
//! byte with its permissions, each made durable, and the copy is checked
//! before the command says it is done. The target must be new or empty: a
//! backup never overwrites anything. A backup that fails removes what it
//! wrote, so a directory it leaves behind is always a checked copy (an
//! empty target it was given stays, empty).
//!
//! On PostgreSQL the database is PostgreSQL's to back up (`pg_dump`,
//! `pg_basebackup`); this command only handles the SQLite deployment.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config::DATABASE_FILE;
use crate::store::sqlite::backup as snapshot;
pub use crate::store::sqlite::backup::CopyCheck;
use crate::store::StoreError;

/// What was copied and what the copy holds.
#[derive(Debug)]
pub struct BackupReport {
    pub database_bytes: u64,
    /// The other files copied, by name, sorted.
    pub files: Vec<String>,
    /// Entries of the data directory that are not regular files (left out).
    pub skipped: Vec<String>,
    pub check: CopyCheck,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "no SQLite database at {0} (is this the server's --data-dir? A server on \
         PostgreSQL backs its database up with pg_dump or pg_basebackup)"
    )]
    NoDatabase(PathBuf),
    #[error("{0} exists and is not an empty directory: a backup never overwrites")]
    TargetInUse(PathBuf),
    // The cause is in the message, not chained as `source`, so that
    // `{:#}` printers do not say it twice.
    #[error("{what} {path}: {cause}")]
    Io {
        what: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("the database snapshot failed: {0}")]
    Snapshot(StoreError),
    #[error("the copy in {path} failed its check and was removed: {cause}")]
    Check { path: PathBuf, cause: StoreError },
}

/// Copies the data directory `from` into `to` (created, or empty) and checks
/// the copy. Safe while a server is running on `from`.
pub fn backup(from: &Path, to: &Path) -> Result<BackupReport, BackupError> {
    let database = from.join(DATABASE_FILE);
    if !database.is_file() {
        return Err(BackupError::NoDatabase(database));
    }
    let created = prepare_target(to)?;
    copy_and_check(&database, from, to).inspect_err(|_| discard(to, created))
}

fn copy_and_check(database: &Path, from: &Path, to: &Path) -> Result<BackupReport, BackupError> {
    let copy = to.join(DATABASE_FILE);
    snapshot::snapshot(database, &copy).map_err(BackupError::Snapshot)?;
    let (files, skipped) = copy_other_files(from, to)?;
    sync_dir(to)?;
    let check = snapshot::check(&copy).map_err(|cause| BackupError::Check {
        path: to.to_owned(),
        cause,
    })?;
    let database_bytes = fs::metadata(&copy)
        .map_err(|source| io("reading", &copy, source))?
        .len();
    Ok(BackupReport {
        database_bytes,
        files,
        skipped,
        check,
    })
}

/// Creates `to` readable by its owner only (it will hold the CA key), or
/// accepts an existing empty directory. Whether it created it.
fn prepare_target(to: &Path) -> Result<bool, BackupError> {
    let created = match fs::read_dir(to) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::TargetInUse(to.to_owned()));
            }
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(to).map_err(|source| io("creating", to, source))?;
            true
        }
        Err(_) => return Err(BackupError::TargetInUse(to.to_owned())),
    };
    fs::set_permissions(to, fs::Permissions::from_mode(0o700))
        .map_err(|source| io("restricting", to, source))?;
    Ok(created)
}

/// Removes what a failed backup wrote: a partial copy must not be taken for
/// a backup later (and it may hold the CA key). The target was empty or
/// absent, so everything in it is ours. A failure here is logged; the
/// backup's own error is the one to report.
fn discard(to: &Path, created: bool) {
    let removed = if created {
        fs::remove_dir_all(to)
    } else {
        fs::read_dir(to).and_then(|entries| {
            entries.into_iter().try_for_each(|entry| {
                let path = entry?.path();
                match path.is_dir() {
                    true => fs::remove_dir_all(&path),
                    false => fs::remove_file(&path),
                }
            })
        })
    };
    match removed {
        Ok(()) => tracing::warn!(target = %to.display(), "backup failed: removed the partial copy"),
        Err(e) => tracing::error!(
            target = %to.display(),
            error = %e,
            "backup failed, and its partial copy could not be removed: delete it by hand"
        ),
    }
}

/// The database's own files, which the snapshot replaces: the live file and
/// its WAL, shared-memory and rollback-journal companions.
fn is_database_file(name: &str) -> bool {
    name.strip_prefix(DATABASE_FILE)
        .is_some_and(|rest| matches!(rest, "" | "-wal" | "-shm" | "-journal"))
}

/// Copies every regular file of `from` but the database's, keeping each
/// one's permissions (keys stay 0600), and syncs each copy.
fn copy_other_files(from: &Path, to: &Path) -> Result<(Vec<String>, Vec<String>), BackupError> {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    let entries = fs::read_dir(from).map_err(|source| io("listing", from, source))?;
    for entry in entries {
        let entry = entry.map_err(|source| io("listing", from, source))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_database_file(&name) {
            continue;
        }
        let kind = entry
            .file_type()
            .map_err(|source| io("reading", &entry.path(), source))?;
        if !kind.is_file() {
            skipped.push(name);
            continue;
        }
        let source_path = entry.path();
        let target_path = to.join(&name);
        let mode = entry
            .metadata()
            .map_err(|source| io("reading", &source_path, source))?
            .permissions()
            .mode();
        // Created with the source's mode from the start, so a key is never
        // readable by others, not even between create and chmod.
        let bytes = fs::read(&source_path).map_err(|source| io("reading", &source_path, source))?;
        write_durably(&target_path, &bytes, mode & 0o777)?;
        files.push(name);
    }
    files.sort();
    skipped.sort();
    Ok((files, skipped))
}

fn write_durably(path: &Path, bytes: &[u8], mode: u32) -> Result<(), BackupError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| io("creating", path, source))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|source| io("writing", path, source))
}

/// Makes the directory's entries (the new files' names) durable.
fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| io("syncing", dir, source))
}

fn io(what: &'static str, path: &Path, cause: std::io::Error) -> BackupError {
    BackupError::Io {
        what,
        path: path.to_owned(),
        cause,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data directory whose database is not one: the snapshot fails after
    /// the target was prepared.
    fn broken_data_dir() -> tempfile::TempDir {
        let from = tempfile::tempdir().unwrap();
        fs::write(from.path().join(DATABASE_FILE), b"not a database at all").unwrap();
        fs::write(from.path().join("ca-key.pem"), b"secret").unwrap();
        from
    }

    #[test]
    fn a_failed_backup_removes_the_directory_it_created() {
        let from = broken_data_dir();
        let to = tempfile::tempdir().unwrap();
        let target = to.path().join("copy");
        let err = backup(from.path(), &target).unwrap_err();
        assert!(matches!(err, BackupError::Snapshot(_)), "{err}");
        assert!(!target.exists());
    }

    /// A data directory whose books do not balance: the copy fails its
    /// check after everything was written.
    fn cooked_data_dir() -> tempfile::TempDir {
        let from = tempfile::tempdir().unwrap();
        let database = from.path().join(DATABASE_FILE);
        drop(crate::store::sqlite::SqliteStore::open(&database, 1_750_000_000).unwrap());
        // Money out of nowhere: a balance no transfer explains.
        rusqlite::Connection::open(&database)
            .unwrap()
            .execute_batch(
                "INSERT INTO accounts (id, display_name, currency, balance_minor, system, created_at)
                 VALUES ('mallory', 'M', 'CNY', 1000, 0, 0)",
            )
            .unwrap();
        fs::write(from.path().join("ca-key.pem"), b"secret").unwrap();
        from
    }

    /// A copy that fails its check is removed too, keys and all.
    #[test]
    fn a_copy_that_fails_its_check_is_removed() {
        let from = cooked_data_dir();
        let to = tempfile::tempdir().unwrap();
        let target = to.path().join("copy");
        let err = backup(from.path(), &target).unwrap_err();
        assert!(matches!(err, BackupError::Check { .. }), "{err}");
        assert!(!target.exists());
    }

    /// An empty directory given as the target stays, empty.
    #[test]
    fn a_failed_backup_empties_the_empty_directory_it_was_given() {
        let from = cooked_data_dir();
        let to = tempfile::tempdir().unwrap();
        let err = backup(from.path(), to.path()).unwrap_err();
        assert!(matches!(err, BackupError::Check { .. }), "{err}");
        assert!(to.path().is_dir());
        let left: Vec<_> = fs::read_dir(to.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn only_the_databases_own_files_are_left_to_the_snapshot() {
        for name in [
            "keybridge.sqlite",
            "keybridge.sqlite-wal",
            "keybridge.sqlite-shm",
            "keybridge.sqlite-journal",
        ] {
            assert!(is_database_file(name), "{name}");
        }
        for name in [
            "keybridge.sqlite.old",
            "keybridge.sqlite-walx",
            "ca-key.pem",
            "master-key",
            "admin-token",
        ] {
            assert!(!is_database_file(name), "{name}");
        }
    }
}
