//! `berth get events [CLUSTER] [--watch]`: the event log.

use crate::client::{Client, Target};
use crate::output::Format;
use anyhow::{bail, Result};
use berth_shared::routes::{self};
use std::time::Duration;

/// `GET /v1/events` for `cluster` (all when None), the newest `limit` after `after`.
pub async fn fetch(
    client: &Client,
    cluster: Option<&str>,
    after: i64,
    limit: u32,
    tail: bool,
) -> Result<Vec<berth_shared::api::EventView>> {
    let mut q = berth_shared::api::EventsQuery {
        after,
        limit,
        tail,
        ..Default::default()
    };
    if let Some(c) = cluster {
        if c.is_empty()
            || !c
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            bail!("`{c}` is not a cluster name (a-z, 0-9 and `-`)");
        }
        q.cluster = Some(c.to_string());
    }
    client.fetch::<routes::Events>(&[], &q).await
}

fn event_line(e: &berth_shared::api::EventView) -> String {
    format!(
        "{}  {:<10} {:<12} {:<8} {}",
        e.at,
        e.cluster.as_deref().unwrap_or("-"),
        e.host.as_deref().unwrap_or("-"),
        e.kind,
        e.message
    )
}

/// `berth get events [CLUSTER] [--watch]`.
pub async fn events(
    target: &Target,
    cluster: Option<&str>,
    watch: bool,
    limit: u32,
    out: Format,
) -> Result<()> {
    let client = Client::connect(target)?;
    let first = fetch(&client, cluster, 0, limit, true).await?;
    let mut last = first.last().map_or(0, |e| e.id);
    match out {
        Format::Table => {
            for e in &first {
                println!("{}", event_line(e));
            }
        }
        Format::Json if watch => {
            // One JSON object a line, so a script can read events as they come.
            for e in &first {
                println!("{}", serde_json::to_string(e)?);
            }
        }
        Format::Json => println!("{}", serde_json::to_string_pretty(&first)?),
        Format::Yaml if watch => {
            // One YAML document an event, so later ones read the same way.
            for e in &first {
                print!("---\n{}", serde_norway::to_string(e)?);
            }
        }
        Format::Yaml => print!("{}", serde_norway::to_string(&first)?),
    }
    if !watch {
        return Ok(());
    }
    use std::io::Write;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for e in fetch(&client, cluster, last, 1000, false).await? {
            last = e.id;
            match out {
                Format::Table => println!("{}", event_line(&e)),
                Format::Yaml => print!("---\n{}", serde_norway::to_string(&e)?),
                Format::Json => println!("{}", serde_json::to_string(&e)?),
            }
        }
        let _ = std::io::stdout().flush();
    }
}
