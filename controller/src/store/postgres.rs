//! The PostgreSQL engine (`berth serve --database-url postgres://…`): a pool of
//! connections to a server any number of controllers may share.
//!
//! SQLite lets one writer in at a time; berth's write transactions are written for that
//! (read, decide, write). Here every write transaction takes one transaction-scoped
//! advisory lock first, [`WRITE_LOCK`]: the same one-writer rule, held across every
//! controller on the database, released by commit, rollback or a dead connection.

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;
use std::time::Duration;

use super::Dialect;

pub(super) static DIALECT: Dialect = Dialect {
    indexed_by: |_| "",
    json_ints: |n| format!("(SELECT value::BIGINT FROM jsonb_array_elements_text(${n}::JSONB))"),
    json_texts: |n| format!("(SELECT value FROM jsonb_array_elements_text(${n}::JSONB))"),
    json_rows: |n| format!("jsonb_array_elements(${n}::JSONB) WITH ORDINALITY AS j(value, key)"),
    join_space: |e| format!("string_agg({e}, ' ')"),
    greatest: "GREATEST",
    insert_order: "seq",
    now_ms: "berth_now_ms()",
};

/// The advisory lock key every write transaction holds (`berth` in ASCII).
pub(super) const WRITE_LOCK: i64 = 0x0062_6572_7468;

/// What `berth backup` answers on a PostgreSQL store.
pub(super) const BACKUP_REFUSAL: &str = "this controller keeps its state in PostgreSQL: back it up with PostgreSQL's tools (`pg_dump --format=custom`, or continuous archiving) and copy the data directory's `pki/` and blob store beside it; see docs/scale-out.md";

/// Connects to the database at `url` and applies the PostgreSQL migrations (one
/// controller at a time: sqlx holds an advisory lock while it migrates).
pub(super) async fn open(url: &str) -> anyhow::Result<PgPool> {
    let shown = redacted(url);
    let opts = PgConnectOptions::from_str(url)
        .with_context(|| format!("--database-url {shown} is not a PostgreSQL URL"))?
        .application_name("berth");
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .min_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {shown}"))?;
    sqlx::migrate!("../migrations/postgres")
        .run(&pool)
        .await
        .with_context(|| format!("cannot apply migrations to {shown}"))?;
    Ok(pool)
}

/// Begins a write transaction and waits for the write lock.
pub(super) async fn begin_write(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(WRITE_LOCK)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// `url` without its password, for messages and logs.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let password = if userinfo.contains(':') { ":***" } else { "" };
            format!(
                "{scheme}://{user}{password}@{host}{}",
                &rest[authority_end..]
            )
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_url_is_shown_without_its_password() {
        assert_eq!(
            super::redacted("postgres://berth:s3cret@db.example:5432/berth?sslmode=require"),
            "postgres://berth:***@db.example:5432/berth?sslmode=require"
        );
        assert_eq!(
            super::redacted("postgres://berth@db/berth"),
            "postgres://berth@db/berth"
        );
        assert_eq!(
            super::redacted("postgres:///berth?host=/run/postgresql"),
            "postgres:///berth?host=/run/postgresql"
        );
        assert_eq!(super::redacted("berth:pw@db"), "(not a URL)");
    }
}
