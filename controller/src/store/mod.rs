//! The controller's SQLite store. Architecture invariant: only this module knows SQL.

use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use crate::time::now_unix;

/// Store calls fail with a `StoreError` (NotFound / Conflict / Db); only `open` (start-up)
/// answers with `anyhow` context.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// API roles, most powerful first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Admin,
    Operator,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}

/// A caller authenticated by bearer token.
#[derive(Debug, Clone)]
pub struct ApiPrincipal {
    pub token_id: String,
    pub name: String,
    pub role: Role,
}

#[derive(Clone)]
pub struct Store {
    /// Reads. A view from [`Store::with_own_reads`] has a pool of its own here.
    pool: SqlitePool,
    /// Write transactions, shared by every clone and read view; [`Store::with_own_writes`]
    /// gives them connections of their own.
    writes: SqlitePool,
    /// Writers take turns here, in arrival order, before SQLite's write lock: a queue in
    /// memory instead of connections sleeping in SQLite's busy handler (whose back-off
    /// grows to 100 ms a try) while one of them writes.
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
    cache: std::sync::Arc<cache::Cache>,
    /// Cache misses of many concurrent requests (thousands of agents connecting at once)
    /// read together: hosts by certificate fingerprint, plan generations by host id.
    by_fingerprint: std::sync::Arc<crate::coalesce::Coalescer<String, Option<HostRow>>>,
    generations: std::sync::Arc<crate::coalesce::Coalescer<i64, Option<u64>>>,
}

/// A write transaction (`BEGIN IMMEDIATE`) holding the writers' turn until it ends.
pub struct WriteTx {
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::SqliteConnection;
    fn deref(&self) -> &sqlx::SqliteConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut sqlx::SqliteConnection {
        &mut self.tx
    }
}

impl WriteTx {
    pub async fn commit(self) -> std::result::Result<(), sqlx::Error> {
        self.tx.commit().await
    }
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

impl Store {
    /// Opens (creating when missing) `<data-dir>/berth.db`, with WAL and foreign keys on,
    /// and applies the embedded migrations.
    ///
    /// The database holds token hashes, host identities, Clusterfiles and cluster outputs
    /// (which often carry secrets), so it is made 0600 before SQLite opens it; SQLite gives
    /// the `-wal` and `-shm` files it creates the database file's mode.
    pub async fn open(data_dir: &Path) -> anyhow::Result<Store> {
        let path = data_dir.join("berth.db");
        make_db_files_private(&path)?;
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(&path)
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
            sqlx::migrate!("../migrations")
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
        Ok(Store {
            writes: pool.clone(),
            pool,
            writer: Default::default(),
            cache: Default::default(),
            by_fingerprint: Default::default(),
            generations: Default::default(),
        })
    }

    /// A view of the store whose reads go through `connections` connections of their own,
    /// opened now by the calling thread: SQLite runs each connection on a thread of its own,
    /// which inherits the caller's CPU priority, so the plan lane's reads run at the lane's
    /// priority instead of queueing with the report path's. Writes, the writers' turn and
    /// the caches stay shared, so [`Store::close`] belongs to the store the view came from.
    pub async fn with_own_reads(
        &self,
        connections: u32,
    ) -> std::result::Result<Store, sqlx::Error> {
        let opts = (*self.pool.connect_options()).clone();
        Ok(Store {
            pool: open_pool(opts, connections).await?,
            ..self.clone()
        })
    }

    /// The store with its writes on `connections` connections of their own, opened now by
    /// the calling thread (whose CPU priority SQLite's connection threads inherit, as for
    /// [`Store::with_own_reads`]). Meant for the store every part of the controller clones,
    /// before any clone is made: writes then always run at the opener's priority.
    pub async fn with_own_writes(
        &self,
        connections: u32,
    ) -> std::result::Result<Store, sqlx::Error> {
        let opts = (*self.writes.connect_options()).clone();
        Ok(Store {
            writes: open_pool(opts, connections).await?,
            ..self.clone()
        })
    }

    /// Starts a write transaction once it is this writer's turn. A single statement run on
    /// it without `commit` is rolled back: writes always commit.
    pub async fn write(&self) -> std::result::Result<WriteTx, sqlx::Error> {
        let turn = self.writer.clone().lock_owned().await;
        let tx = self.writes.begin_with("BEGIN IMMEDIATE").await?;
        Ok(WriteTx { tx, _turn: turn })
    }

    /// Runs one write statement in its own transaction, in the writers' turn.
    pub async fn write_one<'q>(
        &self,
        q: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    ) -> std::result::Result<sqlx::sqlite::SqliteQueryResult, sqlx::Error> {
        let mut tx = self.write().await?;
        let r = q.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(r)
    }

    /// Follows the `host_auth_version` counter every `every` until shutdown: when it moved
    /// (a host's name, state or certificates changed, here or by another writer of the
    /// database), the cached hosts are read again. This bounds how long a change another
    /// process made can go unseen, without a query per poll.
    pub async fn run_host_watch(
        &self,
        every: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut seen: Option<i64> = None;
        loop {
            match sqlx::query_scalar::<_, i64>("SELECT n FROM host_auth_version WHERE id = 1")
                .fetch_one(&self.pool)
                .await
            {
                Ok(n) => {
                    if seen.is_some_and(|s| s != n) {
                        self.cache.hosts_changed();
                    }
                    seen = Some(n);
                }
                Err(e) => {
                    // Unknown state: trust nothing cached.
                    tracing::warn!(error = %e, "cannot read host_auth_version; dropping cached hosts");
                    self.cache.hosts_changed();
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Checkpoints the WAL and closes every connection.
    pub async fn close(&self) {
        let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.writes)
            .await;
        self.pool.close().await;
        self.writes.close().await;
    }

    /// Records the admin token (by hash) when it is not there yet.
    pub async fn ensure_admin_token(&self, secret_hash: &str) -> Result<()> {
        self.write_one(
            sqlx::query(
                "INSERT INTO api_tokens (id, name, role, secret_hash, created_at)
             VALUES ('admin', 'admin', 'admin', ?1, ?2)
             ON CONFLICT(id) DO UPDATE SET secret_hash = excluded.secret_hash
             WHERE api_tokens.revoked_at IS NULL",
            )
            .bind(secret_hash)
            .bind(now_unix()),
        )
        .await?;
        Ok(())
    }

    /// Records a new API token (by hash).
    pub async fn create_api_token(
        &self,
        id: &str,
        name: &str,
        role: Role,
        secret_hash: &str,
        actor: &str,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("INSERT INTO api_tokens (id, name, role, secret_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)")
            .bind(id)
            .bind(name)
            .bind(role.as_str())
            .bind(secret_hash)
            .bind(now_unix())
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            actor,
            "api-token.create",
            id,
            Some(&format!("{name} {}", role.as_str())),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The principal holding the API token with this hash, when it is valid.
    pub async fn api_principal(&self, secret_hash: &str) -> Result<Option<ApiPrincipal>> {
        let row = sqlx::query(
            "SELECT id, name, role FROM api_tokens WHERE secret_hash = ?1 AND revoked_at IS NULL",
        )
        .bind(secret_hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|r| {
            Some(ApiPrincipal {
                token_id: r.get("id"),
                name: r.get("name"),
                role: Role::parse(r.get::<&str, _>("role"))?,
            })
        }))
    }

    /// Runs one statement and, when it changed a row, records `action` on `target` in the
    /// audit log — in one transaction. Returns whether anything changed.
    pub(super) async fn change_audited<'q>(
        &self,
        q: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
        actor: &str,
        action: &str,
        target: &str,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        let n = q.execute(&mut *tx).await?.rows_affected();
        if n > 0 {
            audit(&mut tx, actor, action, target, None).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }
}

/// One row of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: Option<String>,
}

impl Store {
    /// Audits a read of secrets (a backup, cluster outputs): one row, committed before
    /// the secrets are sent.
    pub async fn audit_read(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        audit(&mut tx, actor, action, target, detail).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The newest `limit` audit rows, newest first.
    pub async fn audit_entries(&self, limit: u32) -> Result<Vec<AuditRow>> {
        let rows: Vec<(i64, String, String, String, Option<String>)> = sqlx::query_as(
            "SELECT at, actor, action, target, detail FROM audit_log ORDER BY id DESC LIMIT ?1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(at, actor, action, target, detail)| AuditRow {
                at,
                actor,
                action,
                target,
                detail,
            })
            .collect())
    }
}

/// What a push records.
pub struct NewBundle<'a> {
    pub digest: &'a str,
    pub size: u64,
    pub name: &'a str,
    pub version: &'a str,
    pub bundle_type: &'a str,
    pub manifest_json: &'a str,
    /// Its files, a JSON list of paths (what Configs may target).
    pub files: &'a str,
}

/// A stored bundle row.
#[derive(Debug, Clone)]
pub struct BundleRow {
    pub digest: String,
    pub size: i64,
    pub manifest: String,
    pub created_at: i64,
    pub tags: Vec<String>,
}

impl Store {
    /// Records a bundle blob; returns false when it was already recorded.
    pub async fn insert_bundle(&self, b: NewBundle<'_>, actor: &str) -> Result<bool> {
        let NewBundle {
            digest,
            size,
            name,
            version,
            bundle_type,
            manifest_json,
            files,
        } = b;
        let mut tx = self.write().await?;
        let n = sqlx::query(
            "INSERT INTO bundles (digest, size, name, version, type, manifest, created_at, files)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT(digest) DO NOTHING",
        )
        .bind(digest)
        .bind(size as i64)
        .bind(name)
        .bind(version)
        .bind(bundle_type)
        .bind(manifest_json)
        .bind(now_unix())
        .bind(files)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n > 0 {
            audit(
                &mut tx,
                actor,
                "bundle.push",
                digest,
                Some(&format!("{name} {version}")),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Points `name:tag` at `digest` for architecture `arch` (None: for every one, which
    /// replaces the whole tag); returns the digest it pointed at before, if it moved. With
    /// an architecture, the tag's primary digest moves only when it is absent or was that
    /// architecture's.
    pub async fn set_tag(
        &self,
        name: &str,
        tag: &str,
        digest: &str,
        arch: Option<&str>,
        actor: &str,
    ) -> Result<Option<String>> {
        let mut tx = self.write().await?;
        if let Some(a) = arch {
            let before: Option<String> = sqlx::query_scalar(
                "SELECT digest FROM bundle_tag_arches WHERE name = ?1 AND tag = ?2 AND arch = ?3",
            )
            .bind(name)
            .bind(tag)
            .bind(a)
            .fetch_optional(&mut *tx)
            .await?;
            let primary: Option<(String, Option<String>)> = sqlx::query_as(
                "SELECT t.digest, (SELECT arch FROM bundle_tag_arches a WHERE a.name = t.name AND a.tag = t.tag AND a.digest = t.digest LIMIT 1)
                 FROM bundle_tags t WHERE t.name = ?1 AND t.tag = ?2",
            )
            .bind(name)
            .bind(tag)
            .fetch_optional(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO bundle_tag_arches (name, tag, arch, digest, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(name, tag, arch) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at",
            )
            .bind(name)
            .bind(tag)
            .bind(a)
            .bind(digest)
            .bind(now_unix())
            .execute(&mut *tx)
            .await?;
            let moves_primary = match &primary {
                None => true,
                Some((_, p_arch)) => p_arch.as_deref() == Some(a),
            };
            if moves_primary {
                upsert_tag(&mut tx, name, tag, digest).await?;
            }
            audit(
                &mut tx,
                actor,
                "bundle.tag",
                &format!("{name}:{tag}"),
                Some(&format!("{digest} for {a}")),
            )
            .await?;
            tx.commit().await?;
            return Ok(before.filter(|b| b != digest));
        }
        // Every architecture: the tag is this digest alone.
        sqlx::query("DELETE FROM bundle_tag_arches WHERE name = ?1 AND tag = ?2")
            .bind(name)
            .bind(tag)
            .execute(&mut *tx)
            .await?;
        let old: Option<String> =
            sqlx::query_scalar("SELECT digest FROM bundle_tags WHERE name = ?1 AND tag = ?2")
                .bind(name)
                .bind(tag)
                .fetch_optional(&mut *tx)
                .await?;
        upsert_tag(&mut tx, name, tag, digest).await?;
        let moved = old.filter(|o| o != digest);
        if let Some(prev) = &moved {
            audit(
                &mut tx,
                actor,
                "bundle.retag",
                &format!("{name}:{tag}"),
                Some(&format!("{prev} -> {digest}")),
            )
            .await?;
        } else {
            audit(
                &mut tx,
                actor,
                "bundle.tag",
                &format!("{name}:{tag}"),
                Some(digest),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(moved)
    }

    /// The digest per architecture a tag holds (empty: one digest for every one).
    pub async fn tag_arches(
        &self,
        name: &str,
        tag: &str,
    ) -> Result<std::collections::BTreeMap<String, String>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT arch, digest FROM bundle_tag_arches WHERE name = ?1 AND tag = ?2 ORDER BY arch",
        )
        .bind(name)
        .bind(tag)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    pub async fn resolve_tag(&self, name: &str, tag: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT digest FROM bundle_tags WHERE name = ?1 AND tag = ?2")
                .bind(name)
                .bind(tag)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// The files of bundle `digest`, when they were recorded (bundles pushed before they
    /// were have none).
    pub async fn bundle_files(&self, digest: &str) -> Result<Option<Vec<String>>> {
        let files: Option<Option<String>> =
            sqlx::query_scalar("SELECT files FROM bundles WHERE digest = ?1")
                .bind(digest)
                .fetch_optional(&self.pool)
                .await?;
        Ok(files.flatten().and_then(|f| serde_json::from_str(&f).ok()))
    }

    pub async fn bundle(&self, digest: &str) -> Result<Option<BundleRow>> {
        Ok(self.bundles_where(Some(digest)).await?.into_iter().next())
    }

    pub async fn bundles(&self) -> Result<Vec<BundleRow>> {
        self.bundles_where(None).await
    }

    async fn bundles_where(&self, digest: Option<&str>) -> Result<Vec<BundleRow>> {
        let rows = sqlx::query(
            "SELECT b.digest, b.size, b.manifest, b.created_at,
                    (SELECT group_concat(t.name || ':' || t.tag, ' ') FROM
                        (SELECT name, tag FROM bundle_tags WHERE digest = b.digest ORDER BY name, tag) t) AS tags
             FROM bundles b WHERE ?1 IS NULL OR b.digest = ?1 ORDER BY b.name, b.created_at",
        )
        .bind(digest)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| BundleRow {
                digest: r.get("digest"),
                size: r.get("size"),
                manifest: r.get("manifest"),
                created_at: r.get("created_at"),
                tags: r
                    .get::<Option<String>, _>("tags")
                    .map(|t| t.split(' ').map(str::to_string).collect())
                    .unwrap_or_default(),
            })
            .collect())
    }

    /// Removes a tag; returns false when there was none.
    pub async fn delete_tag(&self, name: &str, tag: &str, actor: &str) -> Result<bool> {
        let q = sqlx::query("DELETE FROM bundle_tags WHERE name = ?1 AND tag = ?2")
            .bind(name)
            .bind(tag);
        self.change_audited(q, actor, "bundle.untag", &format!("{name}:{tag}"))
            .await
    }

    /// Removes a bundle and its tags; returns false when there was none.
    pub async fn delete_bundle(&self, digest: &str, actor: &str) -> Result<bool> {
        let q = sqlx::query("DELETE FROM bundles WHERE digest = ?1").bind(digest);
        self.change_audited(q, actor, "bundle.rm", digest).await
    }
}

/// Points the tag's primary digest at `digest`.
async fn upsert_tag(
    tx: &mut sqlx::SqliteConnection,
    name: &str,
    tag: &str,
    digest: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO bundle_tags (name, tag, digest, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(name, tag) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at",
    )
    .bind(name)
    .bind(tag)
    .bind(digest)
    .bind(now_unix())
    .execute(tx)
    .await?;
    Ok(())
}

pub(super) async fn audit(
    tx: &mut sqlx::SqliteConnection,
    actor: &str,
    action: &str,
    target: &str,
    detail: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .bind(now_unix())
    .bind(actor)
    .bind(action)
    .bind(target)
    .bind(detail)
    .execute(tx)
    .await?;
    Ok(())
}

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Hashes of equal length; compare without an early exit.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub mod agent_binaries;
pub mod backup;
mod cache;
pub mod clusters;
pub mod error;
pub mod events;
pub mod hosts;
pub mod images;
pub mod plans;

pub use error::StoreError;
pub use hosts::{BootstrapRow, EnrollError, HostRow, NewHost};

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Nice values of this process's SQLite connection threads.
    fn sqlite_thread_nices() -> Vec<i32> {
        let mut nices = Vec::new();
        for t in std::fs::read_dir("/proc/self/task")
            .expect("tasks")
            .flatten()
        {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let tid = t.file_name().to_str().and_then(|n| n.parse().ok());
            let nice = tid
                .and_then(rustix::process::Pid::from_raw)
                .and_then(|tid| rustix::process::getpriority_process(Some(tid)).ok());
            if let (true, Some(n)) = (comm.starts_with("sqlx-sqlite"), nice) {
                nices.push(n);
            }
        }
        nices
    }

    /// A new store and what `derive` makes of it on a lane at nice +`nice`, with the nice
    /// value the lane's threads have, and the lane (kept while the test runs, as the
    /// controller keeps its lanes).
    async fn derived_on_a_lane<F, Fut>(
        dir: &Path,
        nice: i32,
        derive: F,
    ) -> (Store, Store, i32, crate::lane::Lane)
    where
        F: FnOnce(Store) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = std::result::Result<Store, sqlx::Error>> + Send,
    {
        let store = Store::open(dir).await.expect("open");
        let base = rustix::process::getpriority_process(None).expect("getpriority");
        let lane = crate::lane::Lane::start("store-test", 1, nice).expect("lane");
        let shared = store.clone();
        let derived = lane
            .run(async move { derive(shared).await })
            .await
            .expect("ran")
            .expect("derived store");
        (store, derived, (base + nice).min(19), lane)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_view_with_its_own_reads_reads_at_its_openers_priority_and_writes_through_the_shared_pool(
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, view, lowered, _lane) =
            derived_on_a_lane(dir.path(), 6, |s| async move { s.with_own_reads(2).await }).await;
        assert!(
            sqlite_thread_nices()
                .iter()
                .filter(|n| **n == lowered)
                .count()
                >= 2,
            "the view's connection threads run at the lane's priority: {:?}",
            sqlite_thread_nices()
        );

        view.apply_generation("c", "text", "{}", Default::default(), "test", &[])
            .await
            .expect("a write through the view");
        assert!(store.cluster("c").await.expect("read").is_some());
        store
            .apply_generation("d", "text", "{}", Default::default(), "test", &[])
            .await
            .expect("a write through the store");
        assert!(view.cluster("d").await.expect("read").is_some());
    }

    #[tokio::test]
    async fn a_store_with_its_own_writes_writes_on_one_connection_at_its_openers_priority() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, writing, lowered, _lane) =
            derived_on_a_lane(dir.path(), 4, |s| async move { s.with_own_writes(1).await }).await;
        assert!(
            sqlite_thread_nices().contains(&lowered),
            "the write connection's thread runs at the lane's priority: {:?}",
            sqlite_thread_nices()
        );
        assert_eq!(writing.writes.size(), 1);
        assert_eq!(
            store.writes.size(),
            8,
            "the store it came from keeps its pool"
        );

        writing
            .apply_generation("c", "text", "{}", Default::default(), "test", &[])
            .await
            .expect("a write on the own connection");
        assert!(store.cluster("c").await.expect("read").is_some());
        assert!(writing.cluster("c").await.expect("read").is_some());
    }

    #[tokio::test]
    async fn heartbeats_of_more_hosts_than_a_chunk_all_land_and_never_move_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).await.expect("open");
        let n = hosts::HEARTBEAT_CHUNK as i64 * 2 + 7;
        sqlx::query(
            "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < ?1)
             INSERT INTO hosts (name, cert_fingerprint, cert_serial, facts, enrolled_with, enrolled_at, last_seen, cert_not_after)
             SELECT 'h' || i, 'fp' || i, 's' || i, '{}', 'test', 0, 0, 0 FROM k",
        )
        .bind(n)
        .execute(&store.pool)
        .await
        .expect("hosts");
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM hosts ORDER BY id")
            .fetch_all(&store.pool)
            .await
            .expect("ids");
        let at = |id: i64, base: i64| (id, base + id);
        let seen_at = |base: i64| {
            let pool = store.pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM hosts WHERE last_seen = ?1 + id")
                    .bind(base)
                    .fetch_one(&pool)
                    .await
                    .expect("count")
            }
        };
        let newer: Vec<(i64, i64)> = ids.iter().map(|id| at(*id, 100_000)).collect();
        store.record_heartbeats(&newer).await.expect("record");
        assert_eq!(seen_at(100_000).await, n, "every chunk landed");
        let older: Vec<(i64, i64)> = ids.iter().map(|id| at(*id, 50_000)).collect();
        store.record_heartbeats(&older).await.expect("record");
        assert_eq!(
            seen_at(100_000).await,
            n,
            "an older beat never moves last_seen back"
        );
    }
}
