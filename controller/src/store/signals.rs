//! What one controller tells the others sharing its database, as PostgreSQL notifications
//! on the channel `berth`: plans it changed (so their long-polls answer at once and their
//! plan-generation caches move), clusters it wants ticked by their holder, clusters it
//! ticked (their watchers look again), and host-record changes (a trigger sends those).
//! SQLite has one controller: nothing is sent, nothing arrives.
//!
//! Plan changes are sent inside the transaction that makes them, so they arrive exactly
//! when it commits and never for one rolled back. A listener that lost its connection
//! gets [`Signal::Missed`] and trusts nothing it cached.

use super::{Db, Store, WriteTx};

/// The notification channel.
const CHANNEL: &str = "berth";
/// PostgreSQL refuses a payload of 8,000 bytes or more; lists are sent in parts below it.
const MAX_PAYLOAD: usize = 7_000;

/// One message between controllers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// Hosts whose plans changed, with their new generations.
    Plans(Vec<(i64, u64)>),
    /// Clusters whose holder should tick them (reports about them arrived elsewhere).
    Tick(Vec<i64>),
    /// Clusters just ticked: what watchers of them wait for.
    Changed(Vec<i64>),
    /// A host's name, state or certificates changed.
    Hosts,
    /// The listener was disconnected: anything may have been missed.
    Missed,
}

/// A signal as it arrives: from which controller (`None`: a trigger).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub from: Option<String>,
    pub signal: Signal,
}

impl Signal {
    /// The payloads that carry this signal from `from`, each below PostgreSQL's limit.
    fn payloads(&self, from: &str) -> Vec<String> {
        let (tag, items): (&str, Vec<String>) = match self {
            Signal::Plans(v) => ("p", v.iter().map(|(h, g)| format!("{h}:{g}")).collect()),
            Signal::Tick(v) => ("t", v.iter().map(i64::to_string).collect()),
            Signal::Changed(v) => ("c", v.iter().map(i64::to_string).collect()),
            Signal::Hosts => return vec!["h".to_string()],
            Signal::Missed => return Vec::new(),
        };
        let mut out = Vec::new();
        let mut cur = String::new();
        for item in items {
            if !cur.is_empty() && cur.len() + 1 + item.len() > MAX_PAYLOAD {
                out.push(std::mem::take(&mut cur));
            }
            if cur.is_empty() {
                cur = format!("{tag} {from}");
            }
            cur.push(' ');
            cur.push_str(&item);
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }

    /// Reads a payload; `None` for anything malformed (ignored: the database's other
    /// users could send on the channel, and nothing here is worth trusting blindly).
    pub fn parse(payload: &str) -> Option<Received> {
        let mut words = payload.split(' ');
        let tag = words.next()?;
        if tag == "h" {
            return words.next().is_none().then_some(Received {
                from: None,
                signal: Signal::Hosts,
            });
        }
        let from = words.next().filter(|f| is_member_id(f))?.to_string();
        let ids = |words: std::str::Split<'_, char>| -> Option<Vec<i64>> {
            words.map(|w| w.parse().ok()).collect()
        };
        let signal = match tag {
            "p" => Signal::Plans(
                words
                    .map(|w| {
                        let (h, g) = w.split_once(':')?;
                        Some((h.parse().ok()?, g.parse().ok()?))
                    })
                    .collect::<Option<_>>()?,
            ),
            "t" => Signal::Tick(ids(words)?),
            "c" => Signal::Changed(ids(words)?),
            _ => return None,
        };
        Some(Received {
            from: Some(from),
            signal,
        })
    }
}

/// Sends `payload` on the channel through `conn` (inside a transaction: at its commit).
async fn notify<'c>(
    conn: impl sqlx::Executor<'c, Database = sqlx::Postgres>,
    payload: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(conn)
        .await
        .map(|_| ())
}

/// A controller's id: 16 lowercase hex digits.
pub fn is_member_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A new controller id (random, per start).
pub(super) fn new_member_id() -> String {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("the system random source works");
    hex::encode(b)
}

/// The signals other controllers send, in order.
pub struct Signals {
    listener: sqlx::postgres::PgListener,
    me: String,
}

impl Signals {
    /// The next signal another controller (or a trigger) sent. A lost connection is
    /// [`Signal::Missed`], after which the listener reconnects and listens again.
    pub async fn next(&mut self) -> Received {
        loop {
            match self.listener.try_recv().await {
                Ok(Some(n)) => match Signal::parse(n.payload()) {
                    Some(r) if r.from.as_deref() == Some(self.me.as_str()) => continue,
                    Some(r) => return r,
                    None => {
                        tracing::warn!(payload = %n.payload(), "ignoring a malformed notification");
                        continue;
                    }
                },
                Ok(None) => {
                    return Received {
                        from: None,
                        signal: Signal::Missed,
                    }
                }
                Err(e) => {
                    // Missed once listening again: what is read again after it must not
                    // miss what is sent before then.
                    tracing::warn!(error = %e, "listening for other controllers failed; retrying");
                    loop {
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        let _ = self.listener.unlisten_all().await;
                        match self.listener.listen(CHANNEL).await {
                            Ok(()) => break,
                            Err(e) => {
                                tracing::warn!(error = %e, "listening for other controllers failed; retrying")
                            }
                        }
                    }
                    return Received {
                        from: None,
                        signal: Signal::Missed,
                    };
                }
            }
        }
    }
}

impl Store {
    /// This controller's id among the controllers sharing the database.
    pub fn member_id(&self) -> &str {
        &self.member
    }

    /// Another controller changed these hosts' plans (committed): their generations are
    /// read from the database, not taken from the signal — any user of the database may
    /// send on the channel, and a generation taken on its word could make this controller
    /// sign a plan too new for the host ever to accept the next. (Read after the commit,
    /// so never older than what was signalled; a read that raced it is outgrown, as the
    /// cache keeps the highest.) A failed read forgets the hosts' cached generations.
    pub async fn plans_changed_elsewhere(&self, hosts: &[i64]) {
        match self.read_generations(hosts).await {
            Ok(rows) => {
                for (h, g) in rows {
                    self.cache.saw_generation(h, g);
                }
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "cannot read plan generations another controller changed; forgetting them"
                );
                self.cache.forget_generations(hosts);
            }
        }
    }

    /// Another controller changed a host record (committed).
    pub fn hosts_changed_elsewhere(&self) {
        self.cache.hosts_changed();
    }

    /// Signals may have been missed: nothing cached about hosts is trusted.
    pub fn forget_cached(&self) {
        self.cache.host_ids_changed();
    }

    /// Whether other controllers may share this database (PostgreSQL).
    pub fn shared(&self) -> bool {
        matches!(self.db, Db::Postgres(_))
    }

    /// Listens for the other controllers' signals (`None` on SQLite: there are none).
    pub async fn listen(&self) -> anyhow::Result<Option<Signals>> {
        let Db::Postgres(pool) = &self.db else {
            return Ok(None);
        };
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(Some(Signals {
            listener,
            me: self.member.to_string(),
        }))
    }

    /// Tells the other controllers (nothing on SQLite). Best effort: a signal that cannot
    /// be sent is logged, and the others' periodic checks (leases each second, the host
    /// watch) still catch up.
    pub async fn signal(&self, signal: Signal) {
        let Db::Postgres(pool) = &self.db else {
            return;
        };
        for p in signal.payloads(&self.member) {
            if let Err(e) = notify(pool, &p).await {
                tracing::warn!(error = %e, "cannot signal the other controllers");
            }
        }
    }

    /// Inside `tx`: the other controllers learn of these new plan generations when (and
    /// only if) it commits.
    pub(super) async fn announce_plans(
        &self,
        tx: &mut WriteTx,
        bumped: &[(i64, u64)],
    ) -> Result<(), sqlx::Error> {
        if bumped.is_empty() {
            return Ok(());
        }
        if let super::On::Postgres(conn) = tx.conn() {
            for p in Signal::Plans(bumped.to_vec()).payloads(&self.member) {
                notify(&mut *conn, &p).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "0123456789abcdef";

    #[test]
    fn signals_round_trip_in_parts_below_the_payload_limit() {
        let plans: Vec<(i64, u64)> = (1..=3000).map(|h| (h, 1_000_000 + h as u64)).collect();
        let parts = Signal::Plans(plans.clone()).payloads(ME);
        assert!(parts.len() > 1, "3000 hosts need several notifications");
        let mut back = Vec::new();
        for p in &parts {
            assert!(p.len() <= MAX_PAYLOAD, "{} bytes", p.len());
            let r = Signal::parse(p).unwrap();
            assert_eq!(r.from.as_deref(), Some(ME));
            let Signal::Plans(v) = r.signal else {
                panic!("{r:?}")
            };
            back.extend(v);
        }
        assert_eq!(back, plans);
        for s in [Signal::Tick(vec![4, 5]), Signal::Changed(vec![9])] {
            let [p] = &s.payloads(ME)[..] else { panic!() };
            assert_eq!(Signal::parse(p).unwrap().signal, s);
        }
        assert_eq!(
            Signal::parse("h").unwrap(),
            Received {
                from: None,
                signal: Signal::Hosts
            }
        );
        assert!(Signal::Tick(vec![]).payloads(ME).is_empty());
    }

    #[test]
    fn malformed_payloads_are_ignored() {
        for bad in [
            "",
            "x 0123456789abcdef 1",
            "p 0123456789abcdef 1",
            "p 0123456789abcdef 1:x",
            "t 0123456789abcdef 1 two",
            "t ABCDEF0123456789 1",
            "t 0123 1",
            "h extra",
            "c",
        ] {
            assert_eq!(Signal::parse(bad), None, "{bad:?}");
        }
    }
}
