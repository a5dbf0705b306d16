//! Hosts and their identities: bootstrap tokens, enrollment and re-enrollment,
//! certificate renewal, heartbeats, revocation.

use super::Columns;
use super::WriteTx;
use super::{audit, constant_time_eq, Result, Store};
use crate::time::now_unix;
use berth_shared::api::HostFacts;

/// Heartbeats written per transaction (about 5 ms of the writers' turn).
pub const HEARTBEAT_CHUNK: usize = 1000;

/// An enrolled host row.
#[derive(Debug, Clone, Default)]
pub struct HostRow {
    pub id: i64,
    pub name: String,
    pub revoked: bool,
    pub facts: HostFacts,
    pub enrolled_at: i64,
    pub last_seen: i64,
    /// When the current certificate expires (unix seconds), if recorded.
    pub cert_not_after: Option<i64>,
    /// The caller presented the certificate this host renewed from (it has not switched
    /// to the new one yet).
    pub via_previous_cert: bool,
    /// A previous certificate is still accepted.
    pub has_previous_cert: bool,
}

/// A bootstrap token row.
#[derive(Debug, Clone)]
pub struct BootstrapRow {
    pub id: String,
    pub secret_hash: String,
    pub uses_left: i64,
    pub expires_at: i64,
    /// The one host this token may re-enroll, if it is a re-enrollment token.
    pub reenroll_host: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
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
    #[error("a host named `{name}` is already enrolled; to give it a new identity create a token with `berth token create --reenroll {name}` and join with `--reenroll`, or run `berth host delete {name}` first if it is being replaced")]
    HostExists { name: String },
    #[error("{0}")]
    ReenrollNotAllowed(String),
    #[error("no host named `{name}` is enrolled, so there is nothing to re-enroll; join without --reenroll")]
    HostUnknown { name: String },
    #[error("host `{name}` is revoked; delete it (`berth host delete {name}`) and join it again")]
    HostRevoked { name: String },
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
    /// Unix seconds.
    pub cert_not_before: i64,
    /// Unix seconds.
    pub cert_not_after: i64,
    pub facts: &'a HostFacts,
    /// Replace the identity of the existing host `name`.
    pub reenroll: bool,
}

/// How a host's enrollment went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrolled {
    New(i64),
    Reenrolled(i64),
}

/// A bootstrap token to record.
pub struct NewToken<'a> {
    pub id: &'a str,
    pub secret_hash: &'a str,
    pub uses: u32,
    pub expires_at: i64,
    pub description: Option<&'a str>,
    /// Bind it to this enrolled host, for re-enrollment only.
    pub reenroll_host: Option<&'a str>,
}

impl Store {
    pub async fn create_bootstrap_token(&self, t: NewToken<'_>, actor: &str) -> Result<()> {
        let NewToken {
            id,
            secret_hash,
            uses,
            expires_at,
            description,
            reenroll_host,
        } = t;
        let mut tx = self.write().await?;
        if let Some(name) = reenroll_host {
            let known: Option<i64> = run!(tx.conn(), sqlx::query_scalar("SELECT id FROM hosts WHERE name = $1")
                .bind(name) => fetch_optional)?;
            if known.is_none() {
                return Err(super::StoreError::NotFound(format!(
                    "no host named `{name}` is enrolled; a re-enrollment token is for an enrolled host"
                )));
            }
        }
        run!(tx.conn(), sqlx::query(
            "INSERT INTO bootstrap_tokens (id, secret_hash, description, uses_left, uses_total, expires_at, created_at, created_by, reenroll_host)
             VALUES ($1, $2, $3, $4, $4, $5, $6, $7, $8)",
        )
        .bind(id)
        .bind(secret_hash)
        .bind(description)
        .bind(uses as i64)
        .bind(expires_at)
        .bind(now_unix())
        .bind(actor)
        .bind(reenroll_host) => execute)?;
        let detail = match reenroll_host {
            Some(h) => format!("uses={uses} reenroll={h}"),
            None => format!("uses={uses}"),
        };
        audit(&mut tx, actor, "token.create", id, Some(&detail)).await?;
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
        usable_token(self.reads(), token_id, token_secret_hash)
            .await
            .map(|_| ())
    }

    /// Consumes one use of the bootstrap token and records the host (or, re-enrolling,
    /// replaces its identity), atomically: a refused enrollment consumes nothing.
    pub async fn enroll(&self, h: NewHost<'_>) -> Result<Enrolled, EnrollError> {
        let mut tx = self.write().await?;
        let token = usable_token(tx.conn(), h.token_id, h.token_secret_hash).await?;
        let existing = run!(tx.conn(), sqlx::query("SELECT id, state, enrolled_at FROM hosts WHERE name = $1")
        .bind(h.name) => fetch_optional |r| {
            (
                r.col::<i64>("id"),
                r.col::<String>("state"),
                r.col::<i64>("enrolled_at"),
            )
        })?;
        // A re-enrollment token is for the host that had the name when it was created, not
        // for a machine that enrolled under that name after (the old one deleted).
        if let (Some(_), Some((_, _, enrolled_at))) = (&token.reenroll_host, &existing) {
            if *enrolled_at > token.created_at {
                return Err(EnrollError::ReenrollNotAllowed(format!(
                    "this token was made for the host named `{}` before the current one enrolled; create a new one",
                    h.name
                )));
            }
        }
        let existing = existing.map(|(id, state, _)| (id, state));
        match (&token.reenroll_host, h.reenroll) {
            (Some(bound), true) if bound == h.name => {}
            (Some(bound), _) => {
                return Err(EnrollError::ReenrollNotAllowed(format!(
                    "this token only re-enrolls host `{bound}` (with `berth-agent join --reenroll --name {bound}`)"
                )))
            }
            (None, true) => {
                return Err(EnrollError::ReenrollNotAllowed(format!(
                    "this token does not allow re-enrolling `{}`; create one with `berth token create --reenroll {}`",
                    h.name, h.name
                )))
            }
            (None, false) => {}
        }
        let facts = serde_json::to_string(h.facts).unwrap_or_else(|_| "{}".into());
        let now = now_unix();
        let (outcome, action) = match (existing, h.reenroll) {
            (Some(_), false) => {
                return Err(EnrollError::HostExists {
                    name: h.name.to_string(),
                })
            }
            (None, true) => {
                return Err(EnrollError::HostUnknown {
                    name: h.name.to_string(),
                })
            }
            (Some((_, state)), true) if state == "revoked" => {
                return Err(EnrollError::HostRevoked {
                    name: h.name.to_string(),
                })
            }
            (Some((id, _)), true) => {
                // The old certificate (and any renewed-from one) is refused from now on.
                run!(tx.conn(), sqlx::query(
                    "UPDATE hosts SET cert_fingerprint = $1, cert_serial = $2, prev_cert_fingerprint = NULL,
                         cert_not_after = $3, facts = $4, last_seen = $5, cert_not_before = $7 WHERE id = $6",
                )
                .bind(h.cert_fingerprint)
                .bind(h.cert_serial)
                .bind(h.cert_not_after)
                .bind(&facts)
                .bind(now)
                .bind(id)
                .bind(h.cert_not_before) => execute)?;
                (Enrolled::Reenrolled(id), "host.reenroll")
            }
            (None, false) => {
                let id: i64 = run!(tx.conn(), sqlx::query_scalar(
                    "INSERT INTO hosts (name, cert_fingerprint, cert_serial, cert_not_after, facts, enrolled_with, enrolled_at, last_seen, cert_not_before)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8) RETURNING id",
                )
                .bind(h.name)
                .bind(h.cert_fingerprint)
                .bind(h.cert_serial)
                .bind(h.cert_not_after)
                .bind(&facts)
                .bind(&token.id)
                .bind(now)
                .bind(h.cert_not_before) => fetch_one)?;
                (Enrolled::New(id), "host.enroll")
            }
        };
        run!(tx.conn(), sqlx::query("UPDATE bootstrap_tokens SET uses_left = uses_left - 1 WHERE id = $1")
            .bind(&token.id) => execute)?;
        audit(
            &mut tx,
            &format!("bootstrap-token:{}", token.id),
            action,
            h.name,
            Some(&format!("serial={}", h.cert_serial)),
        )
        .await?;
        tx.commit().await?;
        self.cache.host_ids_changed();
        Ok(outcome)
    }

    /// Records a renewed certificate for `host_id`, which called with the certificate
    /// `presented`. The presented one stays accepted (as the previous certificate) until
    /// the host uses the new one, so an answer lost on the way costs nothing; a host that
    /// renews again with its previous certificate keeps that one as the previous.
    pub async fn renew_host_cert(
        &self,
        host_id: i64,
        presented: &str,
        fingerprint: &str,
        serial: &str,
        (not_before, not_after): (i64, i64),
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let (name, current, prev): (String, String, Option<String>) =
            run!(tx.conn(), sqlx::query_as(
            "SELECT name, cert_fingerprint, prev_cert_fingerprint FROM hosts WHERE id = $1",
        )
        .bind(host_id) => fetch_optional)?
            .ok_or_else(|| super::StoreError::NotFound("the host was deleted".into()))?;
        let keep_prev = if presented == current {
            Some(current)
        } else if prev.as_deref() == Some(presented) {
            prev
        } else {
            return Err(super::StoreError::Conflict(
                "the certificate presented is no longer this host's".into(),
            ));
        };
        run!(tx.conn(), sqlx::query(
            "UPDATE hosts SET cert_fingerprint = $1, cert_serial = $2, cert_not_after = $3,
                 prev_cert_fingerprint = $4, cert_not_before = $6 WHERE id = $5",
        )
        .bind(fingerprint)
        .bind(serial)
        .bind(not_after)
        .bind(keep_prev)
        .bind(host_id)
        .bind(not_before) => execute)?;
        audit(
            &mut tx,
            &format!("host:{name}"),
            "host.cert.renew",
            &name,
            Some(&format!("serial={serial}")),
        )
        .await?;
        tx.commit().await?;
        self.cache.hosts_changed();
        Ok(())
    }

    /// A certificate of this CA for host `name`, issued after the one on record (`not_before`
    /// later): this controller issued it before it was restored from an older backup. It
    /// becomes the host's certificate (audited) and the host row is returned. None when
    /// there is no such host or the certificate is not newer.
    pub async fn rebind_newer_cert(
        &self,
        name: &str,
        fingerprint: &str,
        (not_before, not_after): (i64, i64),
    ) -> Result<Option<HostRow>> {
        let mut tx = self.write().await?;
        let row: Option<(i64, Option<i64>)> = run!(tx.conn(), sqlx::query_as(
            "SELECT id, cert_not_before FROM hosts WHERE name = $1 AND state = 'active'",
        )
        .bind(name) => fetch_optional)?;
        let Some((id, on_record)) = row else {
            return Ok(None);
        };
        if on_record.is_some_and(|t| not_before <= t) {
            return Ok(None);
        }
        run!(tx.conn(), sqlx::query(
            "UPDATE hosts SET cert_fingerprint = $1, prev_cert_fingerprint = NULL, cert_not_before = $2,
                 cert_not_after = $3 WHERE id = $4",
        )
        .bind(fingerprint)
        .bind(not_before)
        .bind(not_after)
        .bind(id) => execute)?;
        audit(
            &mut tx,
            &format!("host:{name}"),
            "host.cert.rebind",
            name,
            Some("a newer certificate of this CA than the one on record (restored controller)"),
        )
        .await?;
        let host = run!(tx.conn(), sqlx::query(&format!("SELECT {HOST_COLUMNS} FROM hosts WHERE id = $1"))
            .bind(id) => fetch_one |r| host_row(r))?;
        tx.commit().await?;
        self.cache.hosts_changed();
        Ok(Some(host))
    }

    /// The host has used its renewed certificate: the one it renewed from is refused now.
    pub async fn forget_previous_cert(&self, host_id: i64, presented: &str) -> Result<()> {
        // Only while the presented certificate is still the current one: a renewal that
        // committed meanwhile made it the previous one, which must stay accepted.
        write_one!(self, sqlx::query(
            "UPDATE hosts SET prev_cert_fingerprint = NULL WHERE id = $1 AND cert_fingerprint = $2",
        )
        .bind(host_id)
        .bind(presented))?;
        self.cache.hosts_changed();
        Ok(())
    }

    /// The host presenting the client certificate with this fingerprint, if any.
    pub async fn host_by_fingerprint(&self, fingerprint: &str) -> Result<Option<HostRow>> {
        if let Some(h) = self.cache.host(fingerprint) {
            return Ok(Some(h));
        }
        // Read before the database (the query below runs after it, with others').
        let epoch = self.cache.epoch();
        let store = self.clone();
        let row = self
            .by_fingerprint
            .load(fingerprint.to_string(), move |fps| {
                let store = store.clone();
                async move { hosts_by_fingerprints(&store, &fps).await }
            })
            .await
            .map_err(super::StoreError::Other)?;
        if let Some(h) = &row {
            self.cache.put_host(fingerprint, epoch, h);
        }
        Ok(row)
    }

    pub async fn hosts(&self) -> Result<Vec<HostRow>> {
        Ok(
            run!(self.reads(), sqlx::query(&format!("SELECT {HOST_COLUMNS} FROM hosts ORDER BY name")) => fetch_all |r| host_row(r))?,
        )
    }

    /// Stores new facts of a host (and marks it seen). Plain heartbeats go through
    /// `crate::heartbeats` instead, in batches.
    pub async fn store_facts(&self, id: i64, facts: &HostFacts) -> Result<()> {
        write_one!(
            self,
            sqlx::query(&format!(
                "UPDATE hosts SET last_seen = {}(last_seen, $1), facts = $2 WHERE id = $3",
                self.dialect().greatest
            ),)
            .bind(now_unix())
            .bind(serde_json::to_string(facts)?)
            .bind(id)
        )?;
        self.cache.host_changed(id);
        Ok(())
    }

    /// Stores heartbeats (host id, unix seconds), [`HEARTBEAT_CHUNK`] hosts per
    /// transaction; a value never moves `last_seen` backwards. Between chunks the writers'
    /// turn passes on: a fleet's second of heartbeats (19,000 hosts held it for up to 90 ms
    /// in one transaction) never makes a report wait for more than one chunk.
    pub async fn record_heartbeats(&self, beats: &[(i64, i64)]) -> Result<()> {
        for chunk in beats.chunks(HEARTBEAT_CHUNK) {
            // One statement per chunk: [[id, at], …] as JSON.
            let batch = serde_json::to_string(chunk)?;
            write_one!(
                self,
                sqlx::query(&format!(
                    "UPDATE hosts SET last_seen = {}(last_seen, CAST(j.value ->> 1 AS BIGINT))
                         FROM {} WHERE hosts.id = CAST(j.value ->> 0 AS BIGINT)",
                    self.dialect().greatest,
                    (self.dialect().json_rows)(1)
                ),)
                .bind(batch)
            )?;
        }
        Ok(())
    }

    /// Revokes a host; returns false when there is no such host.
    pub async fn revoke_host(&self, name: &str, actor: &str) -> Result<bool> {
        let changed = change_audited!(
            self,
            sqlx::query("UPDATE hosts SET state = 'revoked', revoked_at = $1 WHERE name = $2")
                .bind(now_unix())
                .bind(name),
            actor,
            "host.revoke",
            name
        );
        self.cache.hosts_changed();
        changed
    }

    /// Deletes a host; returns false when there is no such host.
    pub async fn delete_host(&self, name: &str, actor: &str) -> Result<bool> {
        let changed = change_audited!(
            self,
            sqlx::query("DELETE FROM hosts WHERE name = $1").bind(name),
            actor,
            "host.delete",
            name
        );
        self.cache.host_ids_changed();
        changed
    }
}

/// The hosts presenting these certificate fingerprints (current or previous), by
/// fingerprint, in one query.
async fn hosts_by_fingerprints(
    store: &Store,
    fps: &[String],
) -> anyhow::Result<std::collections::HashMap<String, Option<HostRow>>> {
    let fps_in = (store.dialect().json_texts)(1);
    let rows = run!(store.reads(), sqlx::query(&format!(
        "SELECT {HOST_COLUMNS}, cert_fingerprint FROM hosts
         WHERE cert_fingerprint IN {fps_in} OR prev_cert_fingerprint IN {fps_in}"
    ))
    .bind(serde_json::to_string(fps)?) => fetch_all |r| {
        let current: String = r.col("cert_fingerprint");
        let previous: Option<String> = r.col("prev_cert_fingerprint");
        (current, previous, host_row(r))
    })?;
    let mut found = std::collections::HashMap::new();
    for (current, previous, row) in rows {
        if let Some(p) = previous {
            let via_prev = HostRow {
                via_previous_cert: true,
                ..row.clone()
            };
            found.insert(p, Some(via_prev));
        }
        found.insert(current, Some(row));
    }
    Ok(found)
}

fn host_row(r: impl super::Columns) -> HostRow {
    HostRow {
        id: r.col("id"),
        name: r.col("name"),
        revoked: &r.col::<String>("state") == "revoked",
        facts: serde_json::from_str(&r.col::<String>("facts")).unwrap_or_default(),
        enrolled_at: r.col("enrolled_at"),
        last_seen: r.col("last_seen"),
        cert_not_after: r.col("cert_not_after"),
        via_previous_cert: false,
        has_previous_cert: r.col::<Option<String>>("prev_cert_fingerprint").is_some(),
    }
}

const HOST_COLUMNS: &str =
    "id, name, state, facts, enrolled_at, last_seen, cert_not_after, prev_cert_fingerprint";

/// The bootstrap token `id` when its secret matches and it may still enroll a host.
async fn usable_token<'e, S: sqlx::SqliteExecutor<'e>, P: sqlx::PgExecutor<'e>>(
    on: super::On<S, P>,
    id: &str,
    secret_hash: &str,
) -> Result<BootstrapRow, EnrollError> {
    let row = run!(on, sqlx::query(
        "SELECT id, secret_hash, uses_left, expires_at, reenroll_host, created_at FROM bootstrap_tokens WHERE id = $1",
    )
    .bind(id) => fetch_optional |r| BootstrapRow {
        id: r.col("id"),
        secret_hash: r.col("secret_hash"),
        uses_left: r.col("uses_left"),
        expires_at: r.col("expires_at"),
        reenroll_host: r.col("reenroll_host"),
        created_at: r.col("created_at"),
    })?;
    let Some(token) = row else {
        return Err(EnrollError::TokenInvalid);
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

/// An agent-caused event as stored: one row per host and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEventRow {
    pub host_id: i64,
    pub kind: String,
    pub count: i64,
    pub first_at: i64,
    pub last_at: i64,
    pub message: String,
}

/// The longest event message stored or logged, in bytes.
pub const MAX_EVENT_MESSAGE: usize = 512;

impl Store {
    /// Counts `n` events of `kind` for a host into its one row for that kind, keeping the
    /// last message (one line, at most [`MAX_EVENT_MESSAGE`] bytes). Whatever an agent
    /// sends, the table holds at most one row per host and kind, gone with the host.
    /// Returns whether the event is news for a log line: the first of its kind, or the
    /// first a minute or more after the last one logged.
    pub async fn record_host_event(
        tx: &mut super::WriteTx,
        host_id: i64,
        kind: &str,
        message: &str,
        n: u32,
    ) -> Result<bool> {
        let tx: &mut WriteTx = tx;
        let now = now_unix();
        let logged: Option<i64> = run!(tx.conn(), sqlx::query_scalar(
            "SELECT logged_at FROM host_events WHERE host_id = $1 AND kind = $2",
        )
        .bind(host_id)
        .bind(kind) => fetch_optional)?;
        let news = logged.is_none_or(|t| now - t >= 60);
        let logged_at = if news { now } else { logged.unwrap_or(now) };
        run!(tx.conn(), sqlx::query(
            "INSERT INTO host_events (host_id, kind, count, first_at, last_at, message, logged_at) \
             VALUES ($1, $2, $3, $4, $4, $5, $6) \
             ON CONFLICT (host_id, kind) DO UPDATE SET count = host_events.count + excluded.count, \
             last_at = excluded.last_at, message = excluded.message, logged_at = excluded.logged_at",
        )
        .bind(host_id)
        .bind(kind)
        .bind(i64::from(n))
        .bind(now)
        .bind(berth_shared::text::one_line(message, MAX_EVENT_MESSAGE))
        .bind(logged_at) => execute)?;
        Ok(news)
    }

    /// Every host's events, by host.
    pub async fn host_events(&self) -> Result<Vec<HostEventRow>> {
        let rows: Vec<(i64, String, i64, i64, i64, String)> = run!(self.reads(), sqlx::query_as(
            "SELECT host_id, kind, count, first_at, last_at, message FROM host_events \
             ORDER BY host_id, last_at DESC",
        ) => fetch_all)?;
        Ok(rows
            .into_iter()
            .map(
                |(host_id, kind, count, first_at, last_at, message)| HostEventRow {
                    host_id,
                    kind,
                    count,
                    first_at,
                    last_at,
                    message,
                },
            )
            .collect())
    }
}
