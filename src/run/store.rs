//! The local state store of `ringmaster run --dir/--git`: one SQLite file (WAL mode).
//!
//! It keeps what Kubernetes would keep for the controller in CR mode:
//! - **rollouts**: each `DeviceRollout` by `namespace/name`, the spec last reconciled, its
//!   status, the file it came from, whether it is being deleted, and a controller-level
//!   error (a broken source file, an unknown hub);
//! - **files**: the last good text of every source file, so that a file broken while the
//!   controller was down still has its last good version after a restart;
//! - **operations**: the queue of operator requests (`promote`, `pause`, …) not yet
//!   handled;
//! - **meta**: the source revision (the git commit) last read.
//!
//! The file and its `-wal` and `-shm` companions are readable by their owner only (0600 on
//! Unix): they hold what the operators asked for and the rollouts' errors.
//!
//! The store is restart-safe by construction: every reconcile's status is committed
//! before the next one starts, and the driver rebuilds what a lost status would miss from
//! the hub's labels. rusqlite blocks, so callers use [`StateStore::run`], which runs a
//! closure on the blocking pool (a blocking call on an async worker would stall every task
//! scheduled on it).

use crate::resolver::HubProblem;
use crate::resources::{DeviceRollout, DeviceRolloutStatus, Operation};
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// SQLite refused a statement (or could not open the database).
    #[error("state store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored JSON value does not decode into its type.
    #[error("state store: a stored value does not decode: {0}")]
    Json(#[from] serde_json::Error),
    /// The blocking task running the store call panicked or was cancelled.
    #[error("state store: the blocking task failed: {0}")]
    Join(String),
    /// Creating the store's files or making them owner-only failed: the path, and why.
    #[error("state store {0}: {1}")]
    Io(String, std::io::Error),
    /// SQLite refused a statement on the store's file: the path, the error, and what it
    /// means (a full or read-only filesystem, an I/O error).
    #[error("state store {0}: {1}{cause}", cause = crate::files::sqlite_cause(.1))]
    File(String, rusqlite::Error),
}

impl StateError {
    /// A SQLite error as one naming the store's file (`File`); others as they are.
    fn at(self, path: &str) -> StateError {
        match self {
            StateError::Sqlite(e) => StateError::File(path.to_string(), e),
            other => other,
        }
    }
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, StateError>;

/// A rollout as the store holds it (and the HTTP API shows it).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredRollout {
    /// The rollout's namespace (JSON `namespace`).
    pub namespace: String,
    /// The rollout's name (JSON `name`).
    pub name: String,
    /// The source file it was read from (relative to the source root).
    pub source: String,
    /// The rollout as last read from a good version of its file.
    pub rollout: DeviceRollout,
    /// Its status as the controller last wrote it (JSON `status`).
    pub status: DeviceRolloutStatus,
    /// Its file is gone: the rollout is being deleted (configurations removed once the
    /// devices are covered by something else).
    pub deleting: bool,
    /// A problem outside the status: the source file fails (its last good version is in
    /// use), or the hub cannot be reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Set when `error` says why the rollout's Hub cannot be used (the reconcile sets and
    /// clears it); none for a source error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub_problem: Option<HubProblem>,
    /// When the controller first saw it (RFC 3339).
    pub created: String,
    /// The source revision (git commit) its spec was last read at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_revision: Option<String>,
}

/// The store. Cheap to clone; every clone shares one connection.
#[derive(Clone)]
pub struct StateStore {
    conn: Arc<Mutex<Connection>>,
    /// The file, as errors name it (`in memory` for a store without one).
    path: Arc<str>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rollouts (
  namespace TEXT NOT NULL, name TEXT NOT NULL, source TEXT NOT NULL, rollout TEXT NOT NULL,
  status TEXT NOT NULL, deleting INTEGER NOT NULL DEFAULT 0, error TEXT, created TEXT NOT NULL, source_revision TEXT,
  hub_problem TEXT,
  PRIMARY KEY (namespace, name));
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, good TEXT, error TEXT);
CREATE TABLE IF NOT EXISTS operations (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, namespace TEXT NOT NULL, name TEXT NOT NULL,
  operation TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

impl StateStore {
    /// Opens (or creates) the store at `path`, in WAL mode, readable by its owner only.
    pub fn open(path: &Path) -> Result<StateStore> {
        crate::files::make_sqlite_private(path)
            .map_err(|e| StateError::Io(path.display().to_string(), e))?;
        let shown: Arc<str> = path.display().to_string().into();
        let opened = || -> Result<StateStore> {
            let conn = Connection::open(path)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            Self::init(conn, shown.clone())
        };
        opened().map_err(|e| e.at(&shown))
    }

    /// A store that lives in memory (tests).
    pub fn in_memory() -> Result<StateStore> {
        Self::init(Connection::open_in_memory()?, "in memory".into())
    }

    fn init(conn: Connection, path: Arc<str>) -> Result<StateStore> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        // A store written before `hub_problem` existed gets the column.
        let has: bool = conn.query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('rollouts') WHERE name = 'hub_problem'",
            [],
            |r| r.get(0),
        )?;
        if !has {
            conn.execute_batch("ALTER TABLE rollouts ADD COLUMN hub_problem TEXT")?;
        }
        Ok(StateStore {
            conn: Arc::new(Mutex::new(conn)),
            path,
        })
    }

    /// Runs `f` against the store on tokio's blocking pool; a SQLite error comes back
    /// naming the store's file ([`StateError::File`]).
    pub async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&StateStore) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| StateError::Join(e.to_string()))?
            .map_err(|e| e.at(&self.path))
    }

    /// Every rollout, by namespace and name.
    pub fn rollouts(&self) -> Result<Vec<StoredRollout>> {
        let c = self.conn.lock();
        let mut st = c.prepare("SELECT namespace, name, source, rollout, status, deleting, error, created, source_revision, hub_problem FROM rollouts ORDER BY namespace, name")?;
        let rows = st
            .query_map([], row_to_raw)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().map(decode).collect()
    }

    /// One rollout.
    pub fn rollout(&self, namespace: &str, name: &str) -> Result<Option<StoredRollout>> {
        let c = self.conn.lock();
        let raw = c
            .query_row(
                "SELECT namespace, name, source, rollout, status, deleting, error, created, source_revision, hub_problem FROM rollouts WHERE namespace = ?1 AND name = ?2",
                params![namespace, name],
                row_to_raw,
            )
            .optional()?;
        raw.map(decode).transpose()
    }

    /// Inserts or replaces a rollout (keeps `created` of an existing row).
    pub fn put_rollout(&self, r: &StoredRollout) -> Result<()> {
        let c = self.conn.lock();
        c.execute(
            "INSERT INTO rollouts (namespace, name, source, rollout, status, deleting, error, created, source_revision, hub_problem)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (namespace, name) DO UPDATE SET source = excluded.source, rollout = excluded.rollout,
               status = excluded.status, deleting = excluded.deleting, error = excluded.error,
               source_revision = excluded.source_revision, hub_problem = excluded.hub_problem",
            params![
                r.namespace,
                r.name,
                r.source,
                serde_json::to_string(&r.rollout)?,
                serde_json::to_string(&r.status)?,
                r.deleting,
                r.error,
                r.created,
                r.source_revision,
                r.hub_problem.map(|p| serde_json::to_string(&p)).transpose()?
            ],
        )?;
        Ok(())
    }

    /// Forgets a rollout and its queued requests (its deletion is finished).
    pub fn remove_rollout(&self, namespace: &str, name: &str) -> Result<()> {
        let c = self.conn.lock();
        c.execute(
            "DELETE FROM rollouts WHERE namespace = ?1 AND name = ?2",
            params![namespace, name],
        )?;
        c.execute(
            "DELETE FROM operations WHERE namespace = ?1 AND name = ?2",
            params![namespace, name],
        )?;
        Ok(())
    }

    /// The last good text of every source file.
    pub fn good_files(&self) -> Result<Vec<(String, String)>> {
        let c = self.conn.lock();
        let mut st =
            c.prepare("SELECT path, good FROM files WHERE good IS NOT NULL ORDER BY path")?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Every source file with its current problems (`None` when good).
    pub fn file_errors(&self) -> Result<Vec<(String, Option<String>)>> {
        let c = self.conn.lock();
        let mut st = c.prepare("SELECT path, error FROM files ORDER BY path")?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Replaces the file table: path → (last good text, current problems).
    pub fn put_files(&self, files: &[(String, Option<String>, Option<String>)]) -> Result<()> {
        let mut c = self.conn.lock();
        let tx = c.transaction()?;
        tx.execute("DELETE FROM files", [])?;
        for (path, good, error) in files {
            tx.execute(
                "INSERT INTO files (path, good, error) VALUES (?1, ?2, ?3)",
                params![path, good, error],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Queues an operator request for a rollout.
    pub fn push_operation(&self, namespace: &str, name: &str, op: &Operation) -> Result<()> {
        let c = self.conn.lock();
        c.execute(
            "INSERT INTO operations (namespace, name, operation) VALUES (?1, ?2, ?3)",
            params![namespace, name, serde_json::to_string(op)?],
        )?;
        Ok(())
    }

    /// The queued requests of a rollout, oldest first.
    pub fn operations(&self, namespace: &str, name: &str) -> Result<Vec<Operation>> {
        let c = self.conn.lock();
        let mut st = c.prepare(
            "SELECT operation FROM operations WHERE namespace = ?1 AND name = ?2 ORDER BY seq",
        )?;
        let rows = st
            .query_map(params![namespace, name], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.iter().map(|s| Ok(serde_json::from_str(s)?)).collect()
    }

    /// Every queued request, by rollout, oldest first.
    pub fn all_operations(&self) -> Result<BTreeMap<(String, String), Vec<Operation>>> {
        let c = self.conn.lock();
        let mut st = c.prepare("SELECT namespace, name, operation FROM operations ORDER BY seq")?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut out: BTreeMap<(String, String), Vec<Operation>> = BTreeMap::new();
        for (ns, name, op) in rows {
            out.entry((ns, name))
                .or_default()
                .push(serde_json::from_str(&op)?);
        }
        Ok(out)
    }

    /// Drops the requests of a rollout whose ids are in `handled`.
    pub fn remove_operations(&self, namespace: &str, name: &str, handled: &[String]) -> Result<()> {
        for op in self.operations(namespace, name)? {
            if handled
                .iter()
                .any(|h| *h == op.id || *h == crate::core::revision::label_value(&op.id))
            {
                let c = self.conn.lock();
                c.execute(
                    "DELETE FROM operations WHERE namespace = ?1 AND name = ?2 AND operation = ?3",
                    params![namespace, name, serde_json::to_string(&op)?],
                )?;
            }
        }
        Ok(())
    }

    /// A meta value.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        let c = self.conn.lock();
        Ok(
            c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()?,
        )
    }

    /// Sets a meta value.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        let c = self.conn.lock();
        c.execute("INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value", params![key, value])?;
        Ok(())
    }
}

type Raw = (
    String,
    String,
    String,
    String,
    String,
    bool,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
);

fn row_to_raw(r: &rusqlite::Row<'_>) -> rusqlite::Result<Raw> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
    ))
}

fn decode(
    (
        namespace,
        name,
        source,
        rollout,
        status,
        deleting,
        error,
        created,
        source_revision,
        hub_problem,
    ): Raw,
) -> Result<StoredRollout> {
    Ok(StoredRollout {
        namespace,
        name,
        source,
        rollout: serde_json::from_str(&rollout)?,
        status: serde_json::from_str(&status)?,
        deleting,
        error,
        hub_problem: hub_problem.map(|p| serde_json::from_str(&p)).transpose()?,
        created,
        source_revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{DeviceRolloutSpec, OperationKind};

    fn rollout() -> DeviceRollout {
        let spec: DeviceRolloutSpec = serde_json::from_value(serde_json::json!({
            "target": "*", "priority": 1, "content": {"device": {"properties.desired.x": 1}},
            "rings": [{"name": "all", "target": "*"}]
        }))
        .unwrap();
        let mut ro = DeviceRollout::new("a", spec);
        ro.metadata.namespace = Some("fleet".into());
        ro
    }

    #[test]
    fn rollouts_operations_and_files_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let s = StateStore::open(&path).unwrap();
            let r = StoredRollout {
                namespace: "fleet".into(),
                name: "a".into(),
                source: "a.yaml".into(),
                rollout: rollout(),
                status: DeviceRolloutStatus {
                    revision: Some("abc".into()),
                    ..Default::default()
                },
                deleting: false,
                error: Some("HubNotFound: Hub fleet/x: not found".into()),
                hub_problem: Some(HubProblem::HubNotFound),
                created: "2026-01-01T00:00:00Z".into(),
                source_revision: None,
            };
            s.put_rollout(&r).unwrap();
            s.push_operation("fleet", "a", &Operation::new("op-1", OperationKind::Pause))
                .unwrap();
            s.push_operation("fleet", "a", &Operation::new("op-2", OperationKind::Resume))
                .unwrap();
            s.put_files(&[("a.yaml".into(), Some("text".into()), None)])
                .unwrap();
        }
        let s = StateStore::open(&path).unwrap();
        let all = s.rollouts().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].status.revision.as_deref(), Some("abc"));
        assert_eq!(all[0].hub_problem, Some(HubProblem::HubNotFound));
        assert_eq!(s.operations("fleet", "a").unwrap().len(), 2);
        s.remove_operations("fleet", "a", &["op-1".into()]).unwrap();
        assert_eq!(s.operations("fleet", "a").unwrap()[0].id, "op-2");
        assert_eq!(
            s.good_files().unwrap(),
            [("a.yaml".to_string(), "text".to_string())]
        );
        s.remove_rollout("fleet", "a").unwrap();
        assert!(s.rollout("fleet", "a").unwrap().is_none());
        assert!(s.operations("fleet", "a").unwrap().is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn the_store_and_its_companions_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mode = |suffix: &str| {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            std::fs::metadata(std::path::PathBuf::from(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        {
            let s = StateStore::open(&path).unwrap();
            s.set_meta("k", "v").unwrap(); // a write: the -wal and -shm files exist now
            for suffix in ["", "-wal", "-shm"] {
                assert_eq!(mode(suffix), 0o600, "state.db{suffix}");
            }
        }
        // A store made readable by others (by an older version, or by hand) is closed
        // again when opened.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let s = StateStore::open(&path).unwrap();
        s.set_meta("k", "w").unwrap();
        assert_eq!(mode(""), 0o600);
        assert_eq!(s.meta("k").unwrap().as_deref(), Some("w"));
    }

    #[test]
    fn a_store_without_the_hub_problem_column_gets_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE rollouts (namespace TEXT NOT NULL, name TEXT NOT NULL, source TEXT NOT NULL,
               rollout TEXT NOT NULL, status TEXT NOT NULL, deleting INTEGER NOT NULL DEFAULT 0,
               error TEXT, created TEXT NOT NULL, source_revision TEXT, PRIMARY KEY (namespace, name));",
        )
        .unwrap();
        drop(c);
        let s = StateStore::open(&path).unwrap();
        assert!(s.rollouts().unwrap().is_empty());
    }
}
