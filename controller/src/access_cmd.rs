//! Who may reach the controller: `berth token create`, `berth api-token create`,
//! `berth get hosts`, `berth host revoke|delete` and `berth get audit`.

use crate::client::{Client, Target};
use crate::output::{self, Format, TextOrJson};
use anyhow::Result;
use berth_shared::api::{
    AuditQuery, CreateApiTokenRequest, CreateTokenRequest, DeleteHostQuery, HostEventView, HostView,
};
use berth_shared::routes::{self, NoQuery};
use clap::Subcommand;
use std::time::Duration;

#[derive(Subcommand, Debug)]
pub enum HostCmd {
    /// Reject every further call from this host's certificate
    Revoke { name: String },
    /// Forget the host; its name can then enroll again. Refused for a cluster member
    Delete {
        name: String,
        /// Remove the host from its cluster first, without running leave/remove
        #[arg(long)]
        force: bool,
    },
}

/// What `berth token create` asks for.
pub struct TokenFlags {
    pub ttl: Duration,
    pub uses: u32,
    pub description: Option<String>,
    /// Print the install line instead of the join line.
    pub install: bool,
    pub reenroll: Option<String>,
}

pub async fn token_create(target: &Target, f: TokenFlags, out: TextOrJson) -> Result<()> {
    let reenroll = f
        .reenroll
        .map(|n| n.parse::<berth_shared::HostName>())
        .transpose()
        .map_err(|e| anyhow::anyhow!("--reenroll: {e}"))?;
    let c = Client::connect(target)?;
    let req = CreateTokenRequest {
        ttl_secs: f.ttl.as_secs(),
        uses: f.uses,
        description: f.description,
        reenroll,
    };
    let resp = c
        .send::<routes::TokenCreate>(&[], &NoQuery {}, &req)
        .await?;
    match out {
        TextOrJson::Json => println!("{}", serde_json::to_string_pretty(&resp)?),
        TextOrJson::Text if f.install => println!("{}", resp.install_command),
        TextOrJson::Text => println!("{}", resp.join_command),
    }
    Ok(())
}

pub async fn api_token_create(
    target: &Target,
    name: String,
    role: String,
    out: TextOrJson,
) -> Result<()> {
    let c = Client::connect(target)?;
    let req = CreateApiTokenRequest { name, role };
    let r = c
        .send::<routes::ApiTokenCreate>(&[], &NoQuery {}, &req)
        .await?;
    match out {
        TextOrJson::Text => println!("{}", r.token),
        TextOrJson::Json => println!("{}", serde_json::to_string_pretty(&r)?),
    }
    Ok(())
}

pub async fn audit(target: &Target, limit: u32, out: Format) -> Result<()> {
    let c = Client::connect(target)?;
    let rows = c.fetch::<routes::Audit>(&[], &AuditQuery { limit }).await?;
    output::print(
        out,
        &rows,
        &["AT", "ACTOR", "ACTION", "TARGET", "DETAIL"],
        || {
            rows.iter()
                .map(|r| {
                    vec![
                        r.at.clone(),
                        r.actor.clone(),
                        r.action.clone(),
                        r.target.clone(),
                        r.detail.clone().unwrap_or_default(),
                    ]
                })
                .collect()
        },
    )
}

/// `berth get controllers`: the controllers serving the database, live ones first, and
/// the clusters each one ticks. `*` marks the one that answered.
pub async fn controllers(target: &Target, out: Format) -> Result<()> {
    let c = Client::connect(target)?;
    let rows = c.fetch::<routes::ControllerList>(&[], &NoQuery {}).await?;
    output::print(
        out,
        &rows,
        &[
            "NAME", "STATE", "URL", "VERSION", "SEEN", "STARTED", "CLUSTERS",
        ],
        || {
            rows.iter()
                .map(|r| {
                    vec![
                        if r.this {
                            format!("{} *", r.name)
                        } else {
                            r.name.clone()
                        },
                        if r.live { "live" } else { "gone" }.to_string(),
                        r.url.clone(),
                        r.version.clone(),
                        r.seen_at.clone(),
                        r.started_at.clone(),
                        if r.clusters.is_empty() {
                            "-".to_string()
                        } else {
                            r.clusters.join(",")
                        },
                    ]
                })
                .collect()
        },
    )
}

/// `berth get hosts [--watch]`.
pub async fn hosts(target: &Target, out: Format, watch: bool) -> Result<()> {
    const HEADER: &[&str] = &[
        "NAME",
        "STATE",
        "ADDRESSES",
        "ARCH",
        "LAST SEEN",
        "VERSION",
        "CERT EXPIRES",
        "EVENTS",
    ];
    let rows = |hosts: &Vec<HostView>| {
        hosts
            .iter()
            .map(|h| {
                vec![
                    h.name.clone(),
                    h.state.clone(),
                    h.addresses.join(","),
                    h.arch.clone(),
                    format!("{} ago", output::ago(h.last_seen_secs_ago)),
                    h.agent_version.clone(),
                    h.cert_expires_at.clone().unwrap_or_else(|| "-".into()),
                    events_cell(&h.events),
                ]
            })
            .collect()
    };
    let c = Client::connect(target)?;
    let fetch = || c.fetch::<routes::HostList>(&[], &NoQuery {});
    if watch {
        // A change is a host's state, addresses, version, certificate or events — not the
        // heartbeat that moves `last seen` every few seconds.
        let key = |hosts: &Vec<HostView>| {
            hosts
                .iter()
                .map(|h| {
                    let events: Vec<(&str, u64)> = h
                        .events
                        .iter()
                        .map(|e| (e.kind.as_str(), e.count))
                        .collect();
                    format!(
                        "{} {} {:?} {} {:?} {events:?}",
                        h.name, h.state, h.addresses, h.agent_version, h.cert_expires_at
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        return output::watch(out, HEADER, fetch, rows, key).await;
    }
    let hosts = fetch().await?;
    output::print(out, &hosts, HEADER, || rows(&hosts))
}

pub async fn host(target: &Target, cmd: HostCmd) -> Result<()> {
    let c = Client::connect(target)?;
    match cmd {
        HostCmd::Revoke { name } => {
            c.act::<routes::HostRevoke>(&[&name], &NoQuery {}).await?;
            println!("host {name} revoked");
        }
        HostCmd::Delete { name, force } => {
            let d = c
                .fetch::<routes::HostDelete>(&[&name], &DeleteHostQuery { force })
                .await?;
            match d.removed_from {
                Some(cluster) => println!("host {name} deleted (removed from cluster {cluster})"),
                None => println!("host {name} deleted"),
            }
        }
    }
    Ok(())
}

/// A host's agent events in one cell: `kind xN (T ago)`, newest kind first.
fn events_cell(events: &[HostEventView]) -> String {
    if events.is_empty() {
        return "-".into();
    }
    events
        .iter()
        .map(|e| {
            format!(
                "{} x{} ({} ago)",
                e.kind,
                e.count,
                output::ago(e.last_secs_ago)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
