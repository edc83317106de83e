//! Persistence: one SQLite file in WAL mode.
//!
//! Every acknowledged write has been committed first: the hub writes through to SQLite
//! inside the same critical section that changes memory, and a cycle's writes go in one
//! transaction. With `synchronous=FULL` (the default) a commit is on disk before the caller
//! hears about it; `NORMAL` survives a killed process (the WAL is in the OS cache) but not a
//! power cut, and is offered for benchmarks and throwaway hubs.
//!
//! The schema carries a version in `meta`; opening a file with a newer version is refused
//! rather than guessed at.

use super::state::{Changes, HubState, Slot};
use crate::iothub::configuration::Configuration;
use crate::iothub::device::Device;
use crate::iothub::error::{ErrorCode, HubError, Result};
use crate::iothub::twin::{Section, Twin};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Map, Value};
use std::path::Path;

/// The schema version of a store without layer rows. 2: twins are stored as their flat
/// node list (`nodes`); version 1 rows (`tags`/`desired`/`reported`/`configurations`
/// objects) are still read, and a version 1 store is marked 2 when opened (older builds
/// then refuse it instead of misreading the new rows).
pub const SCHEMA_VERSION: i64 = 2;

/// The schema version of a store that holds layer rows (`layer_log`): what the engine
/// changed in a twin since its row was last written whole. A store is marked 3 by its
/// first layer row, so that a build that does not read them refuses the store rather
/// than serving twins without their configuration layer.
///
/// The log is append-only: a configuration that changes 16,000 scattered twins appends
/// 16,000 short rows to the end of one table (a few hundred pages) instead of rewriting
/// 16,000 pages of the device table. A twin written whole afterwards appends a marker
/// (no layer), which voids its earlier layers. Reopening applies each twin's last layer
/// when no marker follows it, and folds the log back into the device rows when it has
/// grown past the number of devices.
pub const LAYERED_SCHEMA_VERSION: i64 = 3;

/// How hard a commit waits for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync on every commit: survives power loss.
    #[default]
    Full,
    /// Survives a killed process, not a power cut.
    Normal,
}

/// The SQLite store behind an embedded hub.
pub struct Store {
    conn: Connection,
    /// The file, as errors name it (`in memory` for a store without one).
    path: String,
    /// True once the store is marked [`LAYERED_SCHEMA_VERSION`].
    layered: bool,
    /// Rows in `layer_log`.
    log_rows: usize,
    /// Twins whose last log entry is a layer (filled by [`Store::load`], for folding).
    fold_ids: Vec<String>,
    /// The checkpointer, for a store in a file.
    checkpointer: Option<Checkpointer>,
    /// Bytes of rows written since the checkpointer was last woken.
    uncheckpointed: usize,
}

/// WAL checkpoints off the write path: SQLite's automatic checkpoint (every 1,000 pages,
/// run by the committing writer) is turned off, and a thread with its own connection
/// copies the WAL into the database when woken, after about [`CHECKPOINT_BYTES`] of rows
/// were committed. A write never waits for a checkpoint, and pages rewritten by several
/// commits in between are copied once.
struct Checkpointer {
    wake: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Bytes of committed rows after which the checkpointer is woken.
const CHECKPOINT_BYTES: usize = 8 << 20;

impl Checkpointer {
    fn start(path: &Path, durability: Durability) -> Result<Checkpointer> {
        let conn = Connection::open(path).map_err(db_err)?;
        let sync = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)
            .map_err(db_err)?;
        let (wake, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("hub-checkpoint".into())
            .spawn(move || {
                // Woken after commits; ends when the store is dropped.
                while rx.recv().is_ok() {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(error = %e, "hub store: WAL checkpoint failed; the next one retries");
                    }
                }
            })
            .map_err(|e| {
                HubError::new(
                    ErrorCode::ServerError,
                    format!("cannot start the hub store's checkpoint thread: {e}"),
                )
            })?;
        Ok(Checkpointer {
            wake: Some(wake),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.wake.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn db_err(e: rusqlite::Error) -> HubError {
    HubError::new(ErrorCode::ServerError, format!("hub store: {e}"))
}

/// A SQLite error as a `ServerError` naming the store's file and what the error means
/// (a full or read-only filesystem, an I/O error).
fn store_err(path: &str, e: rusqlite::Error) -> HubError {
    HubError::new(
        ErrorCode::ServerError,
        format!("hub store {path}: {e}{}", crate::files::sqlite_cause(&e)),
    )
}

impl Store {
    /// Opens (or creates) the store at `path`. The store holds the hub's shared access
    /// keys, so its file (and the WAL and shared-memory files SQLite makes beside it, which
    /// take the file's mode) is readable by its owner only: created 0600, and made 0600
    /// when an older build left it readable by others.
    pub fn open(path: &Path, durability: Durability) -> Result<Store> {
        crate::files::make_sqlite_private(path).map_err(|e| {
            HubError::new(
                ErrorCode::ServerError,
                format!(
                    "cannot create hub store {} (readable by its owner only): {e}",
                    path.display()
                ),
            )
        })?;
        let shown = path.display().to_string();
        let conn = Connection::open(path).map_err(|e| {
            HubError::new(
                ErrorCode::ServerError,
                format!(
                    "cannot open hub store {shown}: {e}{}",
                    crate::files::sqlite_cause(&e)
                ),
            )
        })?;
        let mut store = Self::init(conn, durability, shown)?;
        store
            .conn
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| store_err(&store.path, e))?;
        store.checkpointer = Some(Checkpointer::start(path, durability)?);
        Ok(store)
    }

    /// A store that lives in memory only (tests).
    pub fn in_memory() -> Result<Store> {
        let path = "in memory".to_string();
        Self::init(
            Connection::open_in_memory().map_err(|e| store_err(&path, e))?,
            Durability::Normal,
            path,
        )
    }

    fn init(conn: Connection, durability: Durability, path: String) -> Result<Store> {
        let db_err = |e| store_err(&path, e);
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err)?;
        let sync = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)
            .map_err(db_err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS devices (id TEXT PRIMARY KEY, device TEXT NOT NULL, twin TEXT NOT NULL, owners TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS configurations (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, doc TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS layer_log (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, layer TEXT);",
        )
        .map_err(db_err)?;
        let mut store = Store {
            conn,
            path,
            layered: false,
            log_rows: 0,
            fold_ids: Vec::new(),
            checkpointer: None,
            uncheckpointed: 0,
        };
        match store.meta("schema_version")? {
            None => store.set_meta("schema_version", &SCHEMA_VERSION.to_string())?,
            Some(v) => {
                let v: i64 = v.parse().unwrap_or(i64::MAX);
                if v > LAYERED_SCHEMA_VERSION {
                    return Err(HubError::new(
                        ErrorCode::ServerError,
                        format!(
                            "hub store has schema version {v}; this ringmaster understands up to {LAYERED_SCHEMA_VERSION}: upgrade ringmaster"
                        ),
                    ));
                }
                store.layered = v == LAYERED_SCHEMA_VERSION;
                if v < SCHEMA_VERSION {
                    store.set_meta("schema_version", &SCHEMA_VERSION.to_string())?;
                }
            }
        }
        Ok(store)
    }

    /// Tests: makes every later write fail as SQLite fails on a read-only file (`true`),
    /// or lets writes through again (`false`). Reads keep working, as they do on a
    /// read-only or full filesystem.
    #[cfg(test)]
    pub(crate) fn set_read_only(&self, on: bool) {
        self.conn
            .pragma_update(None, "query_only", on)
            .expect("query_only is a connection setting");
    }

    /// A value from the `meta` table (schema version, hub keys, counters).
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        let db_err = |e| store_err(&self.path, e);
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(db_err)
    }

    /// Sets `key` to `value` in the `meta` table; `ServerError` when SQLite refuses.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        let db_err = |e| store_err(&self.path, e);
        self.conn
            .execute(
                "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(|_| ())
            .map_err(db_err)
    }

    /// Loads every device and configuration into `state`.
    pub fn load(&mut self, state: &mut HubState) -> Result<()> {
        let path = self.path.clone();
        let db_err = |e| store_err(&path, e);
        let mut stmt = self
            .conn
            .prepare("SELECT id, device, twin, owners FROM devices ORDER BY rowid")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .map_err(db_err)?;
        for row in rows {
            let (id, device, twin, owners) = row.map_err(db_err)?;
            let corrupt = |what: &str, e: String| {
                HubError::new(
                    ErrorCode::ServerError,
                    format!("hub store: device '{id}': bad {what}: {e}"),
                )
            };
            let device: Device =
                serde_json::from_str(&device).map_err(|e| corrupt("identity", e.to_string()))?;
            let twin_doc: Value =
                serde_json::from_str(&twin).map_err(|e| corrupt("twin", e.to_string()))?;
            let twin = twin_from_stored(&twin_doc).map_err(|e| corrupt("twin", e.message))?;
            let owners: Vec<(String, String)> =
                serde_json::from_str(&owners).map_err(|e| corrupt("owners", e.to_string()))?;
            state.restore_device(Slot::restored(device, twin, owners));
        }
        // Each twin's last log entry: a layer applies, a marker (NULL) voids.
        let mut last: std::collections::HashMap<String, Option<String>> =
            std::collections::HashMap::new();
        let mut log_rows = 0usize;
        {
            let mut stmt = self
                .conn
                .prepare("SELECT id, layer FROM layer_log ORDER BY seq")
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
                })
                .map_err(db_err)?;
            for row in rows {
                let (id, layer) = row.map_err(db_err)?;
                log_rows += 1;
                last.insert(id, layer);
            }
        }
        let mut layered_ids = Vec::new();
        for (id, layer) in last {
            let Some(layer) = layer else { continue };
            let layer: Layer = serde_json::from_str(&layer).map_err(|e| {
                HubError::new(
                    ErrorCode::ServerError,
                    format!("hub store: device '{id}': bad layer: {e}"),
                )
            })?;
            state.restore_layer(&id, layer)?;
            layered_ids.push(id);
        }
        self.log_rows = log_rows;
        self.fold_ids = layered_ids;
        let mut stmt = self
            .conn
            .prepare("SELECT seq, doc FROM configurations ORDER BY seq")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .map_err(db_err)?;
        for row in rows {
            let (seq, doc) = row.map_err(db_err)?;
            let config: Configuration = serde_json::from_str(&doc).map_err(|e| {
                HubError::new(
                    ErrorCode::ServerError,
                    format!("hub store: bad configuration: {e}"),
                )
            })?;
            state.restore_configuration(config, seq as u64)?;
        }
        if let Some(n) = self.meta("etag_counter")? {
            state.restore_etag_counter(n.parse().unwrap_or(0));
        }
        Ok(())
    }

    /// Writes what `changes` names, in one transaction.
    pub fn save(&mut self, state: &HubState, changes: &Changes) -> Result<()> {
        let path = self.path.clone();
        let db_err = |e| store_err(&path, e);
        if changes.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction().map_err(db_err)?;
        let mut buf = Vec::with_capacity(1024);
        let wrote_layers;
        let mut appended = 0usize;
        let mut written = 0usize;
        {
            let mut put_dev = tx.prepare_cached(PUT_DEVICE).map_err(db_err)?;
            for id in &changes.devices {
                if let Some(slot) = state.slot(id) {
                    put_device(&mut put_dev, slot, &mut buf).map_err(db_err)?;
                    written += buf.len() + 512;
                }
            }
            let mut del_dev = tx
                .prepare_cached("DELETE FROM devices WHERE id = ?1")
                .map_err(db_err)?;
            for id in &changes.deleted_devices {
                del_dev.execute([id]).map_err(db_err)?;
            }
            let mut log = tx
                .prepare_cached("INSERT INTO layer_log(id, layer) VALUES (?1, ?2)")
                .map_err(db_err)?;
            if self.layered {
                // A row written whole holds its layer: a marker voids the earlier ones.
                for id in changes.devices.iter().chain(&changes.deleted_devices) {
                    log.execute(params![id, Option::<&str>::None])
                        .map_err(db_err)?;
                    appended += 1;
                }
            }
            let whole: std::collections::HashSet<&str> =
                changes.devices.iter().map(String::as_str).collect();
            let layers: Vec<&String> = changes
                .layers
                .iter()
                .filter(|id| !whole.contains(id.as_str()))
                .collect();
            wrote_layers = !layers.is_empty();
            if wrote_layers && !self.layered {
                tx.execute(
                    "INSERT INTO meta(key, value) VALUES ('schema_version', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    [LAYERED_SCHEMA_VERSION.to_string()],
                )
                .map_err(db_err)?;
            }
            for id in layers {
                if let Some(slot) = state.slot(id) {
                    log.execute(params![id, layer_to_stored(slot, &mut buf)])
                        .map_err(db_err)?;
                    appended += 1;
                    written += buf.len() + id.len();
                }
            }
            let mut put_cfg = tx
                .prepare_cached("INSERT INTO configurations(id, seq, doc) VALUES (?1, ?2, ?3) ON CONFLICT(id) DO UPDATE SET doc = excluded.doc")
                .map_err(db_err)?;
            for id in &changes.configurations {
                if let Some(cs) = state.configuration(id) {
                    let mut c = cs.config.clone();
                    // Counts are derived; they are recomputed when the hub opens.
                    c.system_metrics.results.clear();
                    c.metrics.results.clear();
                    put_cfg
                        .execute(params![
                            id,
                            cs.seq as i64,
                            serde_json::to_string(&c).expect("configuration serializes")
                        ])
                        .map_err(db_err)?;
                }
            }
            let mut del_cfg = tx
                .prepare_cached("DELETE FROM configurations WHERE id = ?1")
                .map_err(db_err)?;
            for id in &changes.deleted_configurations {
                del_cfg.execute([id]).map_err(db_err)?;
            }
            tx.execute(
                "INSERT INTO meta(key, value) VALUES ('etag_counter', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [state.etag_counter().to_string()],
            )
            .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        self.layered |= wrote_layers;
        self.log_rows += appended;
        self.uncheckpointed += written;
        if self.uncheckpointed >= CHECKPOINT_BYTES
            && let Some(wake) = self.checkpointer.as_ref().and_then(|c| c.wake.as_ref())
        {
            // Full: a checkpoint is already due to run, and will see this commit too.
            let _ = wake.try_send(());
            self.uncheckpointed = 0;
        }
        Ok(())
    }
}

/// What the engine changed in a twin since its row was last written whole: its versions
/// and etag, who owns which content path, the desired section, and the `configurations`
/// statuses. Reopening applies it over the twin row. The desired section is stored
/// whole (tags and reported properties, usually most of a twin, are not), so a removed
/// path leaves exactly what it left in memory.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Layer {
    version: i64,
    desired_version: i64,
    desired_updated: jiff::Timestamp,
    etag: u64,
    owners: Vec<(String, String)>,
    desired: Map<String, Value>,
    statuses: Vec<(String, bool)>,
}

fn layer_to_stored<'b>(slot: &Slot, buf: &'b mut Vec<u8>) -> &'b str {
    let layer = Layer {
        version: slot.twin.version,
        desired_version: slot.twin.desired_version,
        desired_updated: slot.twin.desired_updated,
        etag: slot.twin.etag_counter,
        owners: slot.owners.clone(),
        desired: slot.twin.section(Section::Desired),
        statuses: slot.statuses.clone(),
    };
    buf.clear();
    serde_json::to_writer(&mut *buf, &layer).expect("a layer serializes");
    std::str::from_utf8(buf).expect("JSON is UTF-8")
}

impl HubState {
    /// Applies a stored layer row over the twin restored from its device row.
    pub fn restore_layer(&mut self, id: &str, layer: Layer) -> Result<()> {
        let Some(&i) = self.index.get(id) else {
            // A layer whose device row is gone (deleted in the same commit): nothing to do.
            return Ok(());
        };
        let Some(slot) = self.slots[i as usize].as_mut() else {
            return Ok(());
        };
        let desired = layer.desired;
        let configurations: Map<String, Value> = layer
            .statuses
            .iter()
            .map(|(id, applied)| {
                let st = if *applied {
                    super::state::STATUS_APPLIED
                } else {
                    super::state::STATUS_TARGETED
                };
                (id.clone(), serde_json::json!({ "status": st }))
            })
            .collect();
        let mut twin = slot
            .twin
            .with_sections(&[
                (Section::Desired, &desired),
                (Section::Configurations, &configurations),
            ])
            .map_err(|e| {
                HubError::new(
                    ErrorCode::ServerError,
                    format!(
                        "hub store: device '{id}': layer does not apply: {}",
                        e.message
                    ),
                )
            })?;
        twin.version = layer.version;
        twin.desired_version = layer.desired_version;
        twin.desired_updated = layer.desired_updated;
        twin.etag_counter = layer.etag;
        let device = slot.device.clone();
        *slot = Slot::restored(device, twin, layer.owners);
        Ok(())
    }
}

const PUT_DEVICE: &str = "INSERT INTO devices(id, device, twin, owners) VALUES (?1, ?2, ?3, ?4) ON CONFLICT(id) DO UPDATE SET device = excluded.device, twin = excluded.twin, owners = excluded.owners";

/// Log rows below which reopening leaves the layer log as it is.
#[cfg(not(test))]
const FOLD_MIN: usize = 10_000;
#[cfg(test)]
const FOLD_MIN: usize = 10;

fn put_device(
    stmt: &mut rusqlite::CachedStatement<'_>,
    slot: &Slot,
    buf: &mut Vec<u8>,
) -> rusqlite::Result<()> {
    stmt.execute(params![
        slot.device.device_id,
        serde_json::to_string(&slot.device).expect("device serializes"),
        twin_to_stored(&slot.twin, buf),
        serde_json::to_string(&slot.owners).expect("owners serialize"),
    ])
    .map(|_| ())
}

impl Store {
    /// Folds the layer log into the device rows when it holds more rows than there are
    /// devices (and at least [`FOLD_MIN`]): the twins whose last entry is a layer are
    /// written whole, and the log is emptied, in one transaction. Called when the hub
    /// opens, after [`Store::load`], so the write path never pays for it.
    pub fn fold(&mut self, state: &HubState) -> Result<()> {
        let path = self.path.clone();
        let db_err = |e| store_err(&path, e);
        if self.log_rows < FOLD_MIN.max(state.device_count()) {
            return Ok(());
        }
        let tx = self.conn.transaction().map_err(db_err)?;
        {
            let mut buf = Vec::with_capacity(1024);
            let mut put_dev = tx.prepare_cached(PUT_DEVICE).map_err(db_err)?;
            for id in &self.fold_ids {
                if let Some(slot) = state.slot(id) {
                    put_device(&mut put_dev, slot, &mut buf).map_err(db_err)?;
                }
            }
            tx.execute("DELETE FROM layer_log", []).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        self.log_rows = 0;
        self.fold_ids.clear();
        Ok(())
    }
}

/// The stored twin (schema 2): its versions, times and etag counter, and its nodes as
/// [`Twin::write_nodes`] writes them, built in `buf` without JSON values.
fn twin_to_stored<'b>(t: &Twin, buf: &'b mut Vec<u8>) -> &'b str {
    use std::io::Write;
    buf.clear();
    let _ = write!(
        buf,
        r#"{{"version":{},"desiredVersion":{},"reportedVersion":{},"desiredUpdated":"{}","reportedUpdated":"{}","etag":{},"nodes":"#,
        t.version,
        t.desired_version,
        t.reported_version,
        t.desired_updated,
        t.reported_updated,
        t.etag_counter
    );
    t.write_nodes(buf);
    buf.push(b'}');
    std::str::from_utf8(buf).expect("JSON written from strings is UTF-8")
}

fn twin_from_stored(v: &Value) -> Result<Twin> {
    let ts = |k: &str| -> Result<jiff::Timestamp> {
        v[k].as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| HubError::new(ErrorCode::ServerError, format!("missing {k}")))
    };
    let mut t = Twin::new(ts("desiredUpdated")?);
    t.reported_updated = ts("reportedUpdated")?;
    t.version = v["version"].as_i64().unwrap_or(1);
    t.desired_version = v["desiredVersion"].as_i64().unwrap_or(1);
    t.reported_version = v["reportedVersion"].as_i64().unwrap_or(1);
    t.etag_counter = v["etag"].as_u64().unwrap_or(1);
    if let Some(nodes) = v["nodes"].as_array() {
        t.set_nodes(nodes)?;
        return Ok(t);
    }
    // Schema 1: the sections as objects.
    let empty = Map::new();
    for (s, k) in [
        (Section::Tags, "tags"),
        (Section::Desired, "desired"),
        (Section::Reported, "reported"),
        (Section::Configurations, "configurations"),
    ] {
        t.set_section(s, v[k].as_object().unwrap_or(&empty))?;
    }
    Ok(t)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn side(path: &Path, suffix: &str) -> std::path::PathBuf {
        let mut s = path.as_os_str().to_owned();
        s.push(suffix);
        s.into()
    }

    /// The store holds the shared access policies' keys: its file, WAL and shared-memory
    /// index are readable by their owner only.
    #[test]
    fn the_store_and_its_wal_are_readable_by_their_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        let store = Store::open(&path, Durability::Full).unwrap();
        store.set_meta("key", "secret").unwrap();
        for p in [path.clone(), side(&path, "-wal"), side(&path, "-shm")] {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
        drop(store);

        // A store an older build created readable by others is made private on open.
        let old = dir.path().join("old.db");
        drop(Store::open(&old, Durability::Full).unwrap());
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = Store::open(&old, Durability::Full).unwrap();
        store.set_meta("key", "secret").unwrap();
        for p in [old.clone(), side(&old, "-wal"), side(&old, "-shm")] {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }

    /// Reopening folds a long layer log into the device rows: the log is emptied and
    /// every twin reads back as it was served, before and after the fold.
    #[test]
    fn reopening_folds_a_long_layer_log_and_twins_read_back_the_same() {
        use crate::clock::ManualClock;
        use crate::hub::{EmbeddedHub, HubOptions};
        use crate::iothub::configuration::{Configuration, ConfigurationContent};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        let clock = ManualClock::at_epoch();
        let open =
            || EmbeddedHub::open(&path, Arc::new(clock.clone()), HubOptions::default()).unwrap();
        let twins = |hub: &EmbeddedHub| -> Vec<Value> {
            (0..4)
                .map(|i| hub.get_twin(&format!("d{i}")).unwrap())
                .collect()
        };
        let log_rows = || -> i64 {
            Connection::open(&path)
                .unwrap()
                .query_row("SELECT count(*) FROM layer_log", [], |r| r.get(0))
                .unwrap()
        };
        let before = {
            let hub = open();
            for i in 0..4 {
                hub.create_device_with_twin(
                    Device::new(&format!("d{i}")),
                    &serde_json::json!({"tags": {"n": i}}),
                )
                .unwrap();
            }
            let mut c = Configuration {
                id: "c".into(),
                target_condition: "tags.n >= 0".into(),
                content: ConfigurationContent {
                    device_content: Some(
                        serde_json::json!({"properties.desired.fw": {"v": 1}})
                            .as_object()
                            .unwrap()
                            .clone(),
                    ),
                    ..Default::default()
                },
                ..Default::default()
            };
            c = hub.create_configuration(&c).unwrap();
            for k in 0..12 {
                c.target_condition = format!("tags.n >= {}", k % 3);
                c = hub.update_configuration(&c, None).unwrap();
            }
            twins(&hub)
        };
        assert!(log_rows() >= FOLD_MIN as i64, "{} log rows", log_rows());
        let hub = open();
        assert_eq!(log_rows(), 0, "the log was folded");
        assert_eq!(twins(&hub), before);
        drop(hub);
        assert_eq!(twins(&open()), before, "the folded rows read back");
    }

    /// The writer never checkpoints (the checkpoint thread does, when woken), and the
    /// thread ends with the store.
    #[test]
    fn checkpoints_are_off_the_write_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        let store = Store::open(&path, Durability::Normal).unwrap();
        let n: i64 = store
            .conn
            .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        if let Some(wake) = store.checkpointer.as_ref().and_then(|c| c.wake.as_ref()) {
            wake.send(()).unwrap();
        }
        // Dropping the store joins the thread: this returns only when it ended.
        drop(store);
    }
}
