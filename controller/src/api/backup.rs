//! `GET /v1/backup` (admin): the controller's consistent online backup, streamed.

use super::auth::Caller;
use super::error::ApiError;
use super::AppState;
use crate::backup::{read_pki, write_archive, Manifest, FORMAT};
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use berth_shared::Digest;
use std::collections::BTreeMap;

pub async fn backup(State(st): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let bucket_refusal = st.blobs.bucket().map(|b| {
        format!("this controller keeps bundle blobs in {}: back the bucket up with its own tools (versioning, replication or a copy), and the database beside it; see docs/scale-out.md", b.location)
    });
    if let Some(refusal) = st
        .store
        .backup_refusal()
        .map(str::to_string)
        .or(bucket_refusal)
    {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            berth_shared::api::codes::BACKUP_BY_STORAGE_TOOLS,
            refusal,
        ));
    }
    let tmp = tempfile::Builder::new()
        .prefix("backup-")
        .tempdir_in(st.blobs.root().join("tmp"))
        .map_err(|e| ApiError::Internal(e.into()))?;
    let snapshot = tmp.path().join("berth.db");
    // The database first, then the blob lists from that snapshot: the backup carries
    // exactly the files its database names.
    st.store.snapshot_into(&snapshot).await?;
    let [bundles, agents, images] = crate::store::Store::snapshot_blobs(&snapshot).await?;
    let parse = |rows: Vec<(String, i64)>| -> Result<BTreeMap<Digest, u64>, ApiError> {
        rows.into_iter()
            .map(|(d, n)| {
                d.parse::<Digest>()
                    .map(|d| (d, n as u64))
                    .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored digest: {e}")))
            })
            .collect()
    };
    let pki = read_pki(&st.data_dir).map_err(ApiError::Internal)?;
    let snap = snapshot.clone();
    let database = tokio::task::spawn_blocking(move || berth_bundle::hashio::digest_file(&snap))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(|e| ApiError::Internal(e.into()))?
        .0;
    let manifest = Manifest {
        format: FORMAT.into(),
        berth_version: berth_shared::VERSION.into(),
        created_at: crate::time::rfc3339(crate::time::now_unix()),
        ca_hash: st.pki.ca_hash(),
        database,
        pki: pki
            .iter()
            .map(|(n, b)| (n.clone(), Digest::of(b)))
            .collect(),
        blobs: parse(bundles)?,
        agent_binaries: parse(agents)?,
        images: parse(images)?,
    };
    // The backup holds the CA key and the admin token: audited before a byte is sent.
    st.store
        .audit_read(
            &caller.actor(),
            "backup.download",
            "controller",
            Some("database, PKI (CA key, admin token), blobs"),
        )
        .await?;
    tracing::info!(actor = %caller.actor(), blobs = manifest.blobs.len(), "backup started");
    let (writer, reader) = tokio::io::duplex(1 << 20);
    let stores = [
        st.blobs.local_store().clone(),
        st.agent_binaries.local.clone(),
        st.images.local.clone(),
    ];
    tokio::task::spawn_blocking(move || {
        let out = tokio_util::io::SyncIoBridge::new(writer);
        let result = write_archive(out, &snapshot, &pki, &manifest, &stores);
        drop(tmp);
        match result {
            Ok(()) => tracing::info!("backup sent"),
            // The client sees a cut stream, and `berth backup` refuses to keep it.
            Err(e) => tracing::error!(error = format!("{e:#}"), "backup failed"),
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-tar")],
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
            reader,
            256 * 1024,
        )),
    )
        .into_response())
}
