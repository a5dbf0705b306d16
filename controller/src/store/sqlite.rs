//! The SQLite engine: `<data-dir>/berth.db`, WAL, one writer at a time (`BEGIN
//! IMMEDIATE`), connections that run on threads of their own.

use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use super::Dialect;

pub(super) static DIALECT: Dialect = Dialect {
    indexed_by,
    json_ints: |n| format!("(SELECT value FROM json_each(${n}))"),
    json_texts: |n| format!("(SELECT value FROM json_each(${n}))"),
    json_rows: |n| format!("json_each(${n}) AS j"),
    join_space: |e| format!("group_concat({e}, ' ')"),
    greatest: "MAX",
    insert_order: "rowid",
    now_ms: "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
};

/// SQLite's planner needs these hints where a table's statistics mislead it.
fn indexed_by(index: &'static str) -> &'static str {
    match index {
        "steps_host" => "INDEXED BY steps_host",
        "steps_cluster_state" => "INDEXED BY steps_cluster_state",
        other => panic!("no index hint for {other}"),
    }
}

/// Reads and write transactions on pools of their own (`Store::with_own_reads` /
/// `with_own_writes` replace one of them).
#[derive(Clone)]
pub(super) struct Pools {
    pub reads: SqlitePool,
    pub writes: SqlitePool,
}

/// Opens (creating when missing) the database at `path`, with WAL and foreign keys on,
/// and applies the embedded migrations.
///
/// The database holds token hashes, host identities, Clusterfiles and cluster outputs
/// (which often carry secrets), so it is made 0600 before SQLite opens it; SQLite gives
/// the `-wal` and `-shm` files it creates the database file's mode.
pub(super) async fn open(path: &Path) -> anyhow::Result<Pools> {
    make_db_files_private(path)?;
    let opts = SqliteConnectOptions::from_str("sqlite://")?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10));
    // Migrations run on a connection of their own with foreign keys off, as SQLite
    // prescribes for rebuilding tables (a DROP TABLE would otherwise cascade); the
    // result is checked with `foreign_key_check` before anything else opens it.
    {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect_with(&opts.clone().foreign_keys(false))
            .await
            .with_context(|| format!("cannot open database {}", path.display()))?;
        sqlx::migrate!("../migrations/sqlite")
            .run(&mut conn)
            .await
            .with_context(|| format!("cannot apply migrations to {}", path.display()))?;
        let broken: Vec<(String,)> =
            sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check")
                .fetch_all(&mut conn)
                .await?;
        if !broken.is_empty() {
            anyhow::bail!(
                "database {} has rows that break foreign keys in {:?}; restore a backup",
                path.display(),
                broken
            );
        }
        conn.close().await?;
    }
    let pool = open_pool(opts.foreign_keys(true), 8)
        .await
        .with_context(|| format!("cannot open database {}", path.display()))?;
    Ok(Pools {
        writes: pool.clone(),
        reads: pool,
    })
}

impl Pools {
    pub(super) async fn with_own_reads(&self, connections: u32) -> Result<Pools, sqlx::Error> {
        let opts = (*self.reads.connect_options()).clone();
        Ok(Pools {
            reads: open_pool(opts, connections).await?,
            writes: self.writes.clone(),
        })
    }

    pub(super) async fn with_own_writes(&self, connections: u32) -> Result<Pools, sqlx::Error> {
        let opts = (*self.writes.connect_options()).clone();
        Ok(Pools {
            reads: self.reads.clone(),
            writes: open_pool(opts, connections).await?,
        })
    }

    /// Checkpoints the WAL and closes every connection.
    pub(super) async fn close(&self) {
        let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.writes)
            .await;
        self.reads.close().await;
        self.writes.close().await;
    }

    /// Writes a consistent copy of the whole database to `dest` (`VACUUM INTO`: one read
    /// transaction, while the controller keeps serving).
    pub(super) async fn snapshot_into(&self, dest: &str) -> Result<(), sqlx::Error> {
        sqlx::query("VACUUM INTO $1")
            .bind(dest)
            .execute(&self.reads)
            .await?;
        Ok(())
    }
}

/// The blobs a database names: bundles, agent executables, registry blobs and manifests.
const BLOB_QUERIES: [&str; 3] = [
    "SELECT digest, size FROM bundles ORDER BY digest",
    "SELECT DISTINCT digest, size FROM agent_binaries ORDER BY digest",
    "SELECT digest, size FROM image_blobs UNION SELECT digest, size FROM image_manifests ORDER BY digest",
];

/// Digests (with sizes) of every bundle, agent executable and registry blob the database
/// file `snapshot` names.
pub(super) async fn snapshot_blobs(
    snapshot: &Path,
) -> Result<[Vec<(String, i64)>; 3], sqlx::Error> {
    use sqlx::Connection;
    let opts = SqliteConnectOptions::new()
        .filename(snapshot)
        .read_only(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&opts).await?;
    let [bundles, agents, images] = BLOB_QUERIES;
    let bundles = sqlx::query_as(bundles).fetch_all(&mut conn).await?;
    let agents = sqlx::query_as(agents).fetch_all(&mut conn).await?;
    let images = sqlx::query_as(images).fetch_all(&mut conn).await?;
    conn.close().await?;
    Ok([bundles, agents, images])
}

/// Creates `berth.db` with mode 0600 when it is missing and sets 0600 on it (and on `-wal`
/// and `-shm` files left by an earlier run, which SQLite reuses as they are) when it exists.
fn make_db_files_private(db: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    // Not truncating: an existing database is only opened, never changed, here.
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(db)
        .with_context(|| format!("cannot create database {}", db.display()))?;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        let file = Path::new(&name);
        match std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !suffix.is_empty() => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot set mode 0600 on {}", file.display()))
            }
        }
    }
    Ok(())
}

/// A pool of `n` connections, all opened now and kept for the controller's lifetime: a busy
/// controller never needs a new file descriptor (or the time to open one) to reach its
/// store, and no connection is re-opened later from another runtime's thread (with that
/// thread's priority). Connections are not pinged before each use: a round trip to
/// SQLite's worker thread per query is what a busy controller spends its time on.
async fn open_pool(
    opts: SqliteConnectOptions,
    n: u32,
) -> std::result::Result<SqlitePool, sqlx::Error> {
    SqlitePoolOptions::new()
        .max_connections(n)
        .min_connections(n)
        .max_lifetime(None)
        .idle_timeout(None)
        .test_before_acquire(false)
        .connect_with(opts)
        .await
}
