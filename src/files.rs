//! Files that hold secrets: readable and writable by their owner only; and what a SQLite
//! error means for the file behind it.

use std::path::Path;

/// Makes a SQLite database at `path` private: creates the file with mode 0600 if it is
/// missing, and sets 0600 on it and on its `-wal` and `-shm` companions where they exist
/// (SQLite gives the companions the database file's mode, but a store left by an older
/// build may already have readable ones). Nothing to do off Unix.
pub fn make_sqlite_private(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            match std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// What a SQLite error means for the file behind it, in words an operator acts on:
/// appended to the error that names the file (`""` for errors without a known cause).
pub fn sqlite_cause(e: &rusqlite::Error) -> &'static str {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code() {
        Some(C::DiskFull) => " (its filesystem is full: free space there and writes work again)",
        Some(C::ReadOnly) => " (the file or its filesystem is read-only)",
        Some(C::SystemIoFailure) => " (an I/O error: check the disk and its filesystem)",
        Some(C::CannotOpen) => " (the file cannot be opened: check that its folder exists)",
        Some(C::DatabaseCorrupt | C::NotADatabase) => " (the file is damaged or not a store)",
        _ => "",
    }
}
