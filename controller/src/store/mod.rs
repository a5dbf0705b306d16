//! The controller's SQLite store. Architecture invariant: only this module knows SQL.

use anyhow::Context;
use berth_shared::api::HostFacts;
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

/// An enrolled host row.
#[derive(Debug, Clone)]
pub struct HostRow {
    pub id: i64,
    pub name: String,
    pub revoked: bool,
    pub facts: HostFacts,
    pub enrolled_at: i64,
    pub last_seen: i64,
}

/// A bootstrap token row.
#[derive(Debug, Clone)]
pub struct BootstrapRow {
    pub id: String,
    pub secret_hash: String,
    pub uses_left: i64,
    pub expires_at: i64,
}

/// Why an enrollment was refused by the store.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("bootstrap token is not valid")]
    TokenInvalid,
    #[error("bootstrap token {id} expired at {at}; create a new one with `berth token create`")]
    TokenExpired { id: String, at: String },
    #[error("bootstrap token {id} has no uses left; create a new one with `berth token create --uses N`")]
    TokenExhausted { id: String },
    #[error("a host named `{name}` is already enrolled; run `berth host delete {name}` first if it is being replaced")]
    HostExists { name: String },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// What an enrollment writes.
pub struct NewHost<'a> {
    pub name: &'a str,
    pub token_id: &'a str,
    pub token_secret_hash: &'a str,
    pub cert_fingerprint: &'a str,
    pub cert_serial: &'a str,
    pub facts: &'a HostFacts,
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
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
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts.foreign_keys(true))
            .await
            .with_context(|| format!("cannot open database {}", path.display()))?;
        Ok(Store { pool })
    }

    /// Checkpoints the WAL and closes every connection.
    pub async fn close(&self) {
        let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await;
        self.pool.close().await;
    }

    /// Records the admin token (by hash) when it is not there yet.
    pub async fn ensure_admin_token(&self, secret_hash: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_tokens (id, name, role, secret_hash, created_at)
             VALUES ('admin', 'admin', 'admin', ?1, ?2)
             ON CONFLICT(id) DO UPDATE SET secret_hash = excluded.secret_hash
             WHERE api_tokens.revoked_at IS NULL",
        )
        .bind(secret_hash)
        .bind(now_unix())
        .execute(&self.pool)
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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

    pub async fn create_bootstrap_token(
        &self,
        id: &str,
        secret_hash: &str,
        uses: u32,
        expires_at: i64,
        description: Option<&str>,
        actor: &str,
    ) -> Result<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "INSERT INTO bootstrap_tokens (id, secret_hash, description, uses_left, uses_total, expires_at, created_at, created_by)
             VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, ?7)",
        )
        .bind(id)
        .bind(secret_hash)
        .bind(description)
        .bind(uses as i64)
        .bind(expires_at)
        .bind(now_unix())
        .bind(actor)
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            actor,
            "token.create",
            id,
            Some(&format!("uses={uses}")),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Checks a bootstrap token (exists, secret matches, not expired, uses left) without
    /// consuming it: enrollment judges the token before it parses or signs anything.
    pub async fn check_bootstrap_token(
        &self,
        token_id: &str,
        token_secret_hash: &str,
    ) -> Result<(), EnrollError> {
        let mut conn = self.pool.acquire().await?;
        usable_token(&mut conn, token_id, token_secret_hash)
            .await
            .map(|_| ())
    }

    /// Consumes one use of the bootstrap token and records the host, atomically: a refused
    /// enrollment consumes nothing.
    pub async fn enroll(&self, h: NewHost<'_>) -> Result<i64, EnrollError> {
        let now = now_unix();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let token = usable_token(&mut tx, h.token_id, h.token_secret_hash).await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM hosts WHERE name = ?1")
            .bind(h.name)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Err(EnrollError::HostExists {
                name: h.name.to_string(),
            });
        }
        sqlx::query("UPDATE bootstrap_tokens SET uses_left = uses_left - 1 WHERE id = ?1")
            .bind(&token.id)
            .execute(&mut *tx)
            .await?;
        let facts = serde_json::to_string(h.facts).unwrap_or_else(|_| "{}".into());
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO hosts (name, cert_fingerprint, cert_serial, facts, enrolled_with, enrolled_at, last_seen)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) RETURNING id",
        )
        .bind(h.name)
        .bind(h.cert_fingerprint)
        .bind(h.cert_serial)
        .bind(facts)
        .bind(&token.id)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        audit(
            &mut tx,
            &format!("bootstrap-token:{}", token.id),
            "host.enroll",
            h.name,
            Some(&format!("serial={}", h.cert_serial)),
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// The host presenting the client certificate with this fingerprint, if any.
    pub async fn host_by_fingerprint(&self, fingerprint: &str) -> Result<Option<HostRow>> {
        let row = sqlx::query(
            "SELECT id, name, state, facts, enrolled_at, last_seen FROM hosts WHERE cert_fingerprint = ?1",
        )
        .bind(fingerprint)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(host_row))
    }

    pub async fn hosts(&self) -> Result<Vec<HostRow>> {
        let rows = sqlx::query(
            "SELECT id, name, state, facts, enrolled_at, last_seen FROM hosts ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(host_row).collect())
    }

    /// Marks a heartbeat, storing new facts when given.
    pub async fn touch_host(&self, id: i64, facts: Option<&HostFacts>) -> Result<()> {
        match facts {
            Some(f) => {
                sqlx::query("UPDATE hosts SET last_seen = ?1, facts = ?2 WHERE id = ?3")
                    .bind(now_unix())
                    .bind(serde_json::to_string(f)?)
                    .bind(id)
                    .execute(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("UPDATE hosts SET last_seen = ?1 WHERE id = ?2")
                    .bind(now_unix())
                    .bind(id)
                    .execute(&self.pool)
                    .await?
            }
        };
        Ok(())
    }

    /// Revokes a host; returns false when there is no such host.
    pub async fn revoke_host(&self, name: &str, actor: &str) -> Result<bool> {
        let q = sqlx::query("UPDATE hosts SET state = 'revoked', revoked_at = ?1 WHERE name = ?2")
            .bind(now_unix())
            .bind(name);
        self.change_audited(q, actor, "host.revoke", name).await
    }

    /// Deletes a host; returns false when there is no such host.
    pub async fn delete_host(&self, name: &str, actor: &str) -> Result<bool> {
        let q = sqlx::query("DELETE FROM hosts WHERE name = ?1").bind(name);
        self.change_audited(q, actor, "host.delete", name).await
    }

    /// Runs one statement and, when it changed a row, records `action` on `target` in the
    /// audit log — in one transaction. Returns whether anything changed.
    async fn change_audited<'q>(
        &self,
        q: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
        actor: &str,
        action: &str,
        target: &str,
    ) -> Result<bool> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let n = q.execute(&mut *tx).await?.rows_affected();
        if n > 0 {
            audit(&mut tx, actor, action, target, None).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
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
        } = b;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let n = sqlx::query(
            "INSERT INTO bundles (digest, size, name, version, type, manifest, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(digest) DO NOTHING",
        )
        .bind(digest)
        .bind(size as i64)
        .bind(name)
        .bind(version)
        .bind(bundle_type)
        .bind(manifest_json)
        .bind(now_unix())
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

    /// Points `name:tag` at `digest`; returns the digest it pointed at before, if it moved.
    pub async fn set_tag(
        &self,
        name: &str,
        tag: &str,
        digest: &str,
        actor: &str,
    ) -> Result<Option<String>> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let old: Option<String> =
            sqlx::query_scalar("SELECT digest FROM bundle_tags WHERE name = ?1 AND tag = ?2")
                .bind(name)
                .bind(tag)
                .fetch_optional(&mut *tx)
                .await?;
        sqlx::query(
            "INSERT INTO bundle_tags (name, tag, digest, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name, tag) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(tag)
        .bind(digest)
        .bind(now_unix())
        .execute(&mut *tx)
        .await?;
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

    pub async fn resolve_tag(&self, name: &str, tag: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT digest FROM bundle_tags WHERE name = ?1 AND tag = ?2")
                .bind(name)
                .bind(tag)
                .fetch_optional(&self.pool)
                .await?,
        )
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

fn host_row(r: sqlx::sqlite::SqliteRow) -> HostRow {
    HostRow {
        id: r.get("id"),
        name: r.get("name"),
        revoked: r.get::<&str, _>("state") == "revoked",
        facts: serde_json::from_str(r.get::<&str, _>("facts")).unwrap_or_default(),
        enrolled_at: r.get("enrolled_at"),
        last_seen: r.get("last_seen"),
    }
}

/// The bootstrap token `id` when its secret matches and it may still enroll a host.
async fn usable_token(
    conn: &mut sqlx::SqliteConnection,
    id: &str,
    secret_hash: &str,
) -> Result<BootstrapRow, EnrollError> {
    let row = sqlx::query(
        "SELECT id, secret_hash, uses_left, expires_at FROM bootstrap_tokens WHERE id = ?1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    let Some(r) = row else {
        return Err(EnrollError::TokenInvalid);
    };
    let token = BootstrapRow {
        id: r.get("id"),
        secret_hash: r.get("secret_hash"),
        uses_left: r.get("uses_left"),
        expires_at: r.get("expires_at"),
    };
    if !constant_time_eq(token.secret_hash.as_bytes(), secret_hash.as_bytes()) {
        return Err(EnrollError::TokenInvalid);
    }
    if token.expires_at <= now_unix() {
        return Err(EnrollError::TokenExpired {
            id: token.id,
            at: crate::time::rfc3339(token.expires_at),
        });
    }
    if token.uses_left <= 0 {
        return Err(EnrollError::TokenExhausted { id: token.id });
    }
    Ok(token)
}

async fn audit(
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Hashes of equal length; compare without an early exit.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub mod clusters;
pub mod error;

pub use error::StoreError;
