//! The controller's store, on SQLite (the default) or PostgreSQL. Architecture invariant:
//! only this module knows SQL, and only `sqlite` and `postgres` know an engine's dialect.

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

/// Where the store keeps its rows: `<data-dir>/berth.db` (the default) or a PostgreSQL
/// database named by URL (`berth serve --database-url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl Location {
    /// The database for `data_dir`, or the one `database_url` names (a PostgreSQL URL:
    /// `postgres://` or `postgresql://`).
    pub fn new(data_dir: &std::path::Path, database_url: Option<&str>) -> anyhow::Result<Location> {
        match database_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Location::Postgres(url.to_string()))
            }
            Some(url) => anyhow::bail!(
                "--database-url {} is not a PostgreSQL URL (postgres://USER@HOST/DATABASE)",
                postgres::redacted(url)
            ),
            None => Ok(Location::Sqlite(data_dir.join("berth.db"))),
        }
    }

    /// For messages: the file, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Location::Sqlite(p) => p.display().to_string(),
            Location::Postgres(url) => postgres::redacted(url),
        }
    }
}

/// The engine behind a store, with its connection pools. SQL that both engines speak
/// alike is written once and run on either (`run!`); what differs lives in `sqlite` and
/// `postgres` (`Store::dialect`).
#[derive(Clone)]
enum Db {
    Sqlite(sqlite::Pools),
    Postgres(sqlx::PgPool),
}

/// An executor of either engine: a pool for reads, a transaction's connection for writes.
pub(crate) enum On<S, P> {
    Sqlite(S),
    Postgres(P),
}

/// Runs one query, written once, on whichever engine `$on` is: `$q` is compiled for each.
/// `=> execute` answers the number of rows changed.
macro_rules! run {
    ($on:expr, $q:expr => execute) => {
        match $on {
            $crate::store::On::Sqlite(c) => $q.execute(c).await.map(|r| r.rows_affected()),
            $crate::store::On::Postgres(c) => $q.execute(c).await.map(|r| r.rows_affected()),
        }
    };
    ($on:expr, $q:expr => $finish:ident) => {
        match $on {
            $crate::store::On::Sqlite(c) => $q.$finish(c).await,
            $crate::store::On::Postgres(c) => $q.$finish(c).await,
        }
    };
    ($on:expr, $q:expr => fetch_all |$r:ident| $row:expr) => {
        match $on {
            $crate::store::On::Sqlite(c) => $q
                .fetch_all(c)
                .await
                .map(|rows| rows.into_iter().map(|$r| $row).collect::<Vec<_>>()),
            $crate::store::On::Postgres(c) => $q
                .fetch_all(c)
                .await
                .map(|rows| rows.into_iter().map(|$r| $row).collect::<Vec<_>>()),
        }
    };
    ($on:expr, $q:expr => fetch_optional |$r:ident| $row:expr) => {
        match $on {
            $crate::store::On::Sqlite(c) => $q.fetch_optional(c).await.map(|o| o.map(|$r| $row)),
            $crate::store::On::Postgres(c) => $q.fetch_optional(c).await.map(|o| o.map(|$r| $row)),
        }
    };
    ($on:expr, $q:expr => fetch_one |$r:ident| $row:expr) => {
        match $on {
            $crate::store::On::Sqlite(c) => $q.fetch_one(c).await.map(|$r| $row),
            $crate::store::On::Postgres(c) => $q.fetch_one(c).await.map(|$r| $row),
        }
    };
}
pub(crate) use run;

/// Runs one write statement in a transaction of its own, in the writers' turn; answers the
/// number of rows it changed.
macro_rules! write_one {
    ($store:expr, $q:expr) => {
        async {
            let mut tx = $store.write().await?;
            let n = $crate::store::run!(tx.conn(), $q => execute)?;
            tx.commit().await?;
            Ok::<u64, $crate::store::StoreError>(n)
        }
        .await
    };
}
#[allow(unused_imports)]
pub(crate) use write_one;

/// Runs one statement and, when it changed a row, records `action` on `target` in the
/// audit log — in one transaction. Answers whether anything changed.
macro_rules! change_audited {
    ($store:expr, $q:expr, $actor:expr, $action:expr, $target:expr) => {
        async {
            let mut tx = $store.write().await?;
            let n = $crate::store::run!(tx.conn(), $q => execute)?;
            if n > 0 {
                $crate::store::audit(&mut tx, $actor, $action, $target, None).await?;
            }
            tx.commit().await?;
            Ok::<bool, $crate::store::StoreError>(n > 0)
        }
        .await
    };
}
#[allow(unused_imports)]
pub(crate) use change_audited;

/// A column value both engines decode.
pub(crate) trait Value:
    for<'r> sqlx::Decode<'r, sqlx::Sqlite>
    + sqlx::Type<sqlx::Sqlite>
    + for<'r> sqlx::Decode<'r, sqlx::Postgres>
    + sqlx::Type<sqlx::Postgres>
{
}
impl<T> Value for T where
    T: for<'r> sqlx::Decode<'r, sqlx::Sqlite>
        + sqlx::Type<sqlx::Sqlite>
        + for<'r> sqlx::Decode<'r, sqlx::Postgres>
        + sqlx::Type<sqlx::Postgres>
{
}

/// A row of either engine, for row decoders written once.
pub(crate) trait Columns {
    /// Column `name` (panics, as `sqlx::Row::get` does, when it is missing or of another
    /// type: a query and its decoder disagree).
    fn col<T: Value>(&self, name: &str) -> T;

    /// A TEXT column holding one of `T`'s names (the schema's CHECK constraints keep
    /// anything else out).
    fn parsed<T>(&self, name: &str) -> T
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        let text: String = self.col(name);
        text.parse()
            .unwrap_or_else(|e| panic!("column {name} holds `{text}`: {e}"))
    }
}

impl Columns for sqlx::sqlite::SqliteRow {
    fn col<T: Value>(&self, name: &str) -> T {
        sqlx::Row::get(self, name)
    }
}

impl Columns for sqlx::postgres::PgRow {
    fn col<T: Value>(&self, name: &str) -> T {
        sqlx::Row::get(self, name)
    }
}

type SqlitePoolRef<'a> = &'a sqlx::SqlitePool;
type PgPoolRef<'a> = &'a sqlx::PgPool;

#[derive(Clone)]
pub struct Store {
    db: Db,
    /// Writers take turns here, in arrival order, before the engine's write lock: a queue
    /// in memory instead of connections sleeping in SQLite's busy handler (whose back-off
    /// grows to 100 ms a try), or waiting on PostgreSQL's lock, while one of them writes.
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
    cache: std::sync::Arc<cache::Cache>,
    /// Cache misses of many concurrent requests (thousands of agents connecting at once)
    /// read together: hosts by certificate fingerprint, plan generations by host id.
    by_fingerprint: std::sync::Arc<crate::coalesce::Coalescer<String, Option<HostRow>>>,
    generations: std::sync::Arc<crate::coalesce::Coalescer<i64, Option<u64>>>,
    /// This controller's id among those sharing the database (random, per start).
    member: std::sync::Arc<str>,
}

/// A write transaction holding the writers' turn until it ends: on SQLite `BEGIN
/// IMMEDIATE` (the database's one write lock), on PostgreSQL the transaction-scoped
/// advisory lock `postgres::WRITE_LOCK`, the same one lock across every controller
/// sharing the database. A transaction dropped without `commit` is rolled back.
pub struct WriteTx {
    tx: Tx,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

enum Tx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl WriteTx {
    pub async fn commit(self) -> std::result::Result<(), sqlx::Error> {
        match self.tx {
            Tx::Sqlite(tx) => tx.commit().await,
            Tx::Postgres(tx) => tx.commit().await,
        }
    }

    /// The transaction's connection, for `run!`.
    pub(crate) fn conn(&mut self) -> On<&mut sqlx::SqliteConnection, &mut sqlx::PgConnection> {
        match &mut self.tx {
            Tx::Sqlite(tx) => On::Sqlite(&mut **tx),
            Tx::Postgres(tx) => On::Postgres(&mut **tx),
        }
    }

    pub(crate) fn dialect(&self) -> &'static Dialect {
        match self.tx {
            Tx::Sqlite(_) => &sqlite::DIALECT,
            Tx::Postgres(_) => &postgres::DIALECT,
        }
    }
}

/// The pieces of SQL the two engines spell differently, for statements otherwise written
/// once. `$N` placeholders work in both.
pub(crate) struct Dialect {
    /// `INDEXED BY <index>` where SQLite's planner needs the hint (nothing on PostgreSQL).
    pub indexed_by: fn(&'static str) -> &'static str,
    /// A subquery of the integers in the JSON array bound at `$n`.
    pub json_ints: fn(usize) -> String,
    /// A subquery of the strings in the JSON array bound at `$n`.
    pub json_texts: fn(usize) -> String,
    /// The elements of the JSON array bound at `$n` as a table `j` with columns `value`
    /// (read with `->>`) and `key` (the position).
    pub json_rows: fn(usize) -> String,
    /// Aggregate joining text with a space.
    pub join_space: fn(&str) -> String,
    /// The larger of two integers.
    pub greatest: &'static str,
    /// A column that orders a table's rows by insertion.
    pub insert_order: &'static str,
    /// The database's clock in Unix milliseconds (what the event triggers stamp with).
    pub now_ms: &'static str,
}

impl Store {
    /// Opens the store at `location` (creating it when missing) and applies that engine's
    /// migrations.
    pub async fn open_at(location: &Location) -> anyhow::Result<Store> {
        let db = match location {
            Location::Sqlite(path) => Db::Sqlite(sqlite::open(path).await?),
            Location::Postgres(url) => Db::Postgres(postgres::open(url).await?),
        };
        Ok(Store {
            db,
            writer: Default::default(),
            cache: Default::default(),
            by_fingerprint: Default::default(),
            generations: Default::default(),
            member: signals::new_member_id().into(),
        })
    }

    /// Opens (creating when missing) `<data-dir>/berth.db`.
    pub async fn open(data_dir: &std::path::Path) -> anyhow::Result<Store> {
        Store::open_at(&Location::new(data_dir, None)?).await
    }

    /// Which engine this store runs on, for messages and `berth get controllers`.
    pub fn engine(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    pub(crate) fn reads(&self) -> On<SqlitePoolRef<'_>, PgPoolRef<'_>> {
        match &self.db {
            Db::Sqlite(p) => On::Sqlite(&p.reads),
            Db::Postgres(p) => On::Postgres(p),
        }
    }

    pub(crate) fn dialect(&self) -> &'static Dialect {
        match self.db {
            Db::Sqlite(_) => &sqlite::DIALECT,
            Db::Postgres(_) => &postgres::DIALECT,
        }
    }

    /// A view of the store whose reads go through `connections` connections of their own,
    /// opened now by the calling thread: SQLite runs each connection on a thread of its own,
    /// which inherits the caller's CPU priority, so the plan lane's reads run at the lane's
    /// priority instead of queueing with the report path's. Writes, the writers' turn and
    /// the caches stay shared, so [`Store::close`] belongs to the store the view came from.
    /// (PostgreSQL's connections are processes of the server: the view is the store.)
    pub async fn with_own_reads(
        &self,
        connections: u32,
    ) -> std::result::Result<Store, sqlx::Error> {
        Ok(match &self.db {
            Db::Sqlite(p) => Store {
                db: Db::Sqlite(p.with_own_reads(connections).await?),
                ..self.clone()
            },
            Db::Postgres(_) => self.clone(),
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
        Ok(match &self.db {
            Db::Sqlite(p) => Store {
                db: Db::Sqlite(p.with_own_writes(connections).await?),
                ..self.clone()
            },
            Db::Postgres(_) => self.clone(),
        })
    }

    /// Starts a write transaction once it is this writer's turn. A statement run on it
    /// without `commit` is rolled back: writes always commit.
    pub async fn write(&self) -> std::result::Result<WriteTx, sqlx::Error> {
        let turn = self.writer.clone().lock_owned().await;
        let tx = match &self.db {
            Db::Sqlite(p) => Tx::Sqlite(p.writes.begin_with("BEGIN IMMEDIATE").await?),
            Db::Postgres(p) => Tx::Postgres(postgres::begin_write(p).await?),
        };
        Ok(WriteTx { tx, _turn: turn })
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
            match run!(self.reads(), sqlx::query_scalar::<_, i64>("SELECT n FROM host_auth_version WHERE id = 1") => fetch_one)
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

    /// Closes every connection (on SQLite after checkpointing the WAL).
    pub async fn close(&self) {
        match &self.db {
            Db::Sqlite(p) => p.close().await,
            Db::Postgres(p) => p.close().await,
        }
    }

    /// Records the admin token (by hash) when it is not there yet.
    pub async fn ensure_admin_token(&self, secret_hash: &str) -> Result<()> {
        write_one!(
            self,
            sqlx::query(
                "INSERT INTO api_tokens (id, name, role, secret_hash, created_at)
             VALUES ('admin', 'admin', 'admin', $1, $2)
             ON CONFLICT(id) DO UPDATE SET secret_hash = excluded.secret_hash
             WHERE api_tokens.revoked_at IS NULL",
            )
            .bind(secret_hash)
            .bind(now_unix())
        )?;
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
        run!(tx.conn(), sqlx::query("INSERT INTO api_tokens (id, name, role, secret_hash, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(id)
            .bind(name)
            .bind(role.as_str())
            .bind(secret_hash)
            .bind(now_unix()) => execute)?;
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
        let row = run!(self.reads(), sqlx::query(
            "SELECT id, name, role FROM api_tokens WHERE secret_hash = $1 AND revoked_at IS NULL",
        )
        .bind(secret_hash) => fetch_optional |r| {
            Role::parse(&r.col::<String>("role")).map(|role| ApiPrincipal {
                token_id: r.col("id"),
                name: r.col("name"),
                role,
            })
        })?;
        Ok(row.flatten())
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
        let rows: Vec<(i64, String, String, String, Option<String>)> = run!(self.reads(), sqlx::query_as(
            "SELECT at, actor, action, target, detail FROM audit_log ORDER BY id DESC LIMIT $1",
        )
        .bind(i64::from(limit)) => fetch_all)?;
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
        let n = run!(tx.conn(), sqlx::query(
            "INSERT INTO bundles (digest, size, name, version, type, manifest, created_at, files)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT(digest) DO NOTHING",
        )
        .bind(digest)
        .bind(size as i64)
        .bind(name)
        .bind(version)
        .bind(bundle_type)
        .bind(manifest_json)
        .bind(now_unix())
        .bind(files) => execute)?;
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
            let before: Option<String> = run!(tx.conn(), sqlx::query_scalar(
                "SELECT digest FROM bundle_tag_arches WHERE name = $1 AND tag = $2 AND arch = $3",
            )
            .bind(name)
            .bind(tag)
            .bind(a) => fetch_optional)?;
            let primary: Option<(String, Option<String>)> = run!(tx.conn(), sqlx::query_as(
                "SELECT t.digest, (SELECT arch FROM bundle_tag_arches a WHERE a.name = t.name AND a.tag = t.tag AND a.digest = t.digest LIMIT 1)
                 FROM bundle_tags t WHERE t.name = $1 AND t.tag = $2",
            )
            .bind(name)
            .bind(tag) => fetch_optional)?;
            run!(tx.conn(), sqlx::query(
                "INSERT INTO bundle_tag_arches (name, tag, arch, digest, updated_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT(name, tag, arch) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at",
            )
            .bind(name)
            .bind(tag)
            .bind(a)
            .bind(digest)
            .bind(now_unix()) => execute)?;
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
        run!(tx.conn(), sqlx::query("DELETE FROM bundle_tag_arches WHERE name = $1 AND tag = $2")
            .bind(name)
            .bind(tag) => execute)?;
        let old: Option<String> = run!(tx.conn(), sqlx::query_scalar("SELECT digest FROM bundle_tags WHERE name = $1 AND tag = $2")
                .bind(name)
                .bind(tag) => fetch_optional)?;
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
        let rows: Vec<(String, String)> = run!(self.reads(), sqlx::query_as(
            "SELECT arch, digest FROM bundle_tag_arches WHERE name = $1 AND tag = $2 ORDER BY arch",
        )
        .bind(name)
        .bind(tag) => fetch_all)?;
        Ok(rows.into_iter().collect())
    }

    pub async fn resolve_tag(&self, name: &str, tag: &str) -> Result<Option<String>> {
        Ok(
            run!(self.reads(), sqlx::query_scalar("SELECT digest FROM bundle_tags WHERE name = $1 AND tag = $2")
                .bind(name)
                .bind(tag) => fetch_optional)?,
        )
    }

    /// The files of bundle `digest`, when they were recorded (bundles pushed before they
    /// were have none).
    pub async fn bundle_files(&self, digest: &str) -> Result<Option<Vec<String>>> {
        let files: Option<Option<String>> = run!(self.reads(), sqlx::query_scalar("SELECT files FROM bundles WHERE digest = $1")
                .bind(digest) => fetch_optional)?;
        Ok(files.flatten().and_then(|f| serde_json::from_str(&f).ok()))
    }

    pub async fn bundle(&self, digest: &str) -> Result<Option<BundleRow>> {
        Ok(self.bundles_where(Some(digest)).await?.into_iter().next())
    }

    pub async fn bundles(&self) -> Result<Vec<BundleRow>> {
        self.bundles_where(None).await
    }

    async fn bundles_where(&self, digest: Option<&str>) -> Result<Vec<BundleRow>> {
        let tags = (self.dialect().join_space)("t.name || ':' || t.tag");
        let rows = run!(self.reads(), sqlx::query(&format!(
            "SELECT b.digest, b.size, b.manifest, b.created_at,
                    (SELECT {tags} FROM
                        (SELECT name, tag FROM bundle_tags WHERE digest = b.digest ORDER BY name, tag) t) AS tags
             FROM bundles b WHERE $1 IS NULL OR b.digest = $1 ORDER BY b.name, b.created_at",
        ))
        .bind(digest) => fetch_all |r| BundleRow {
                digest: r.col("digest"),
                size: r.col("size"),
                manifest: r.col("manifest"),
                created_at: r.col("created_at"),
                tags: r
                    .col::<Option<String>>("tags")
                    .map(|t| t.split(' ').map(str::to_string).collect())
                    .unwrap_or_default(),
            })?;
        Ok(rows.into_iter().collect())
    }

    /// Removes a tag; returns false when there was none.
    pub async fn delete_tag(&self, name: &str, tag: &str, actor: &str) -> Result<bool> {
        change_audited!(
            self,
            sqlx::query("DELETE FROM bundle_tags WHERE name = $1 AND tag = $2")
                .bind(name)
                .bind(tag),
            actor,
            "bundle.untag",
            &format!("{name}:{tag}")
        )
    }

    /// Removes a bundle and its tags; returns false when there was none.
    pub async fn delete_bundle(&self, digest: &str, actor: &str) -> Result<bool> {
        change_audited!(
            self,
            sqlx::query("DELETE FROM bundles WHERE digest = $1").bind(digest),
            actor,
            "bundle.rm",
            digest
        )
    }
}

/// Points the tag's primary digest at `digest`.
async fn upsert_tag(
    tx: &mut WriteTx,
    name: &str,
    tag: &str,
    digest: &str,
) -> Result<(), sqlx::Error> {
    run!(tx.conn(), sqlx::query(
        "INSERT INTO bundle_tags (name, tag, digest, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT(name, tag) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at",
    )
    .bind(name)
    .bind(tag)
    .bind(digest)
    .bind(now_unix()) => execute)?;
    Ok(())
}

pub(super) async fn audit(
    tx: &mut WriteTx,
    actor: &str,
    action: &str,
    target: &str,
    detail: Option<&str>,
) -> Result<(), sqlx::Error> {
    run!(tx.conn(), sqlx::query(
        "INSERT INTO audit_log (at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(now_unix())
    .bind(actor)
    .bind(action)
    .bind(target)
    .bind(detail) => execute)?;
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
pub mod leases;
pub mod plans;
mod postgres;
mod signals;
mod sqlite;

pub use error::StoreError;
pub use hosts::{BootstrapRow, EnrollError, HostRow, NewHost};
pub use signals::{Received, Signal, Signals};

#[cfg(test)]
mod tests {
    use super::*;

    impl Store {
        fn sqlite_pools(&self) -> &sqlite::Pools {
            match &self.db {
                Db::Sqlite(p) => p,
                Db::Postgres(_) => panic!("a SQLite store"),
            }
        }
    }

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
        dir: &std::path::Path,
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
        assert_eq!(writing.sqlite_pools().writes.size(), 1);
        assert_eq!(
            store.sqlite_pools().writes.size(),
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
        run!(store.reads(), sqlx::query(
            "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < $1)
             INSERT INTO hosts (name, cert_fingerprint, cert_serial, facts, enrolled_with, enrolled_at, last_seen, cert_not_after)
             SELECT 'h' || i, 'fp' || i, 's' || i, '{}', 'test', 0, 0, 0 FROM k",
        )
        .bind(n) => execute)
        .expect("hosts");
        let ids: Vec<i64> = run!(store.reads(), sqlx::query_scalar("SELECT id FROM hosts ORDER BY id") => fetch_all)
            .expect("ids");
        let at = |id: i64, base: i64| (id, base + id);
        let seen_at = |base: i64| {
            let pool = store.sqlite_pools().reads.clone();
            async move {
                sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM hosts WHERE last_seen = $1 + id")
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
