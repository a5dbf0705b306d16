//! `berth serve`: opens the store and PKI, then serves the API over HTTPS until shutdown.

use crate::api::auth::{PeerCert, PresentedCert};
use crate::api::{self, AppState};
use crate::config::{self, ServeConfig};
use crate::pki::{hash_secret, Pki};
use crate::secrets::{create_private_dir, write_public};
use crate::store::Store;
use anyhow::{Context, Result};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::Service;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// File descriptors kept out of the connections' reach: the store's SQLite files, blobs
/// being served or received, bundle and backup work. Connections beyond the open-files
/// limit minus these wait in the listen queue instead of starving the store.
const FD_RESERVE: u64 = 512;

use crate::local::{ControllerInfo, INFO_FILE};

/// Runs the controller until `shutdown` is cancelled.
pub async fn run(cfg: ServeConfig, shutdown: CancellationToken) -> Result<()> {
    create_private_dir(&cfg.data_dir)?;
    // What a restore killed beside this data dir left (a copy of a CA key among it).
    if let Some(parent) = std::fs::canonicalize(&cfg.data_dir)
        .ok()
        .and_then(|d| d.parent().map(std::path::Path::to_path_buf))
    {
        crate::backup::remove_stale_staging(&parent);
    }
    let open_files = match berth_files::raise_open_files_limit() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-files limit");
            1024
        }
    };
    let max_connections = open_files.saturating_sub(FD_RESERVE).max(16) as usize;
    tracing::info!(open_files, max_connections, "open-files limit");
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let bound = listener.local_addr()?;
    let advertise_url = match &cfg.advertise_url {
        Some(u) => u.clone(),
        None => config::derive_advertise_url(bound),
    };

    let sans = server_sans(&advertise_url, &cfg.extra_sans);
    let pki = Arc::new(Pki::load_or_create(&cfg.data_dir, &sans, cfg.lifetimes)?);
    // Report groups, ticks and heartbeat flushes run on the writer lane, and every write
    // goes through a connection opened from it (SQLite's connection thread shares its
    // priority), before anything clones the store.
    let writer = crate::lane::Lane::start("writer", 1, crate::engine::WRITER_NICE)?;
    let store = {
        let store = Store::open_at(&cfg.database).await?;
        tracing::info!(engine = store.engine(), database = %cfg.database.describe(), "store open");
        writer
            .run(async move { store.with_own_writes(1).await })
            .await??
    };
    // Among the controllers of the database (one on SQLite), with the same PKI as the
    // others — checked before this start writes anything.
    let member = crate::store::leases::Member {
        name: cfg.controller_name.clone().unwrap_or_else(config::hostname),
        url: advertise_url.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        ca_hash: pki.ca_hash().to_string(),
        plan_key_id: pki.plan_key_id(),
    };
    store
        .join(
            &member,
            cfg.engine.lease_ttl.as_millis() as i64,
            pki.created,
        )
        .await?;
    store
        .ensure_admin_token(&hash_secret(&pki.admin_token))
        .await?;

    let info = ControllerInfo {
        local_url: config::local_url(bound),
        advertise_url: advertise_url.clone(),
        ca_hash: pki.ca_hash(),
    };
    write_public(
        &cfg.data_dir.join(INFO_FILE),
        serde_json::to_string_pretty(&info)?.as_bytes(),
    )?;

    let tls = Arc::new(tls_config(&pki)?);
    let plans = crate::plans::Plans::start(store.clone(), pki.clone()).await?;
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let engine = Arc::new(crate::engine::Engine::new(
        store.clone(),
        plans,
        writer,
        cfg.engine,
        metrics.clone(),
    ));
    // Listening to the other controllers before taking leases, so nothing they send
    // from then on is missed.
    let signals = store.listen().await?;
    engine.take_leases(member).await?;
    if let Some(signals) = signals {
        tokio::spawn(engine.clone().run_signals(signals, shutdown.clone()));
    }
    let leases = engine.spawn_writer(engine.clone().run_leases(shutdown.clone()));
    // Continue whatever was in flight before a restart.
    engine.tick_all().await?;
    // Declare lost what no host will finish; checked a few times per grace period.
    let reap_every = (cfg.engine.host_lost_after.min(cfg.engine.step_grace) / 4)
        .clamp(Duration::from_millis(500), Duration::from_secs(15));
    tokio::spawn(engine.clone().run_reaper(reap_every, shutdown.clone()));
    tokio::spawn(
        engine
            .clone()
            .run_forced_resets(cfg.host_grace, shutdown.clone()),
    );
    engine.spawn_writer(engine.clone().run_ticker(shutdown.clone()));
    tokio::spawn(renew_server_cert(pki.clone(), shutdown.clone()));
    {
        // Host changes made by another writer of the database reach the host cache.
        let (store, shutdown) = (store.clone(), shutdown.clone());
        tokio::spawn(async move { store.run_host_watch(Duration::from_secs(2), shutdown).await });
    }
    let bundled = crate::install::bundled_agent(cfg.agent_binary.as_deref())?;
    let heartbeats = Arc::new(crate::heartbeats::Heartbeats::default());
    let flusher = engine.spawn_writer(heartbeats.clone().run_flusher(
        store.clone(),
        Duration::from_secs(1),
        shutdown.clone(),
    ));
    let (bundled_ready, bundled_ready_rx) = tokio::sync::watch::channel(false);
    let local_blobs = crate::blobs::BlobStore::open(&cfg.data_dir)?;
    let blobs = match &cfg.blob_store {
        None => crate::bundle_blobs::BundleBlobs::local(local_blobs),
        Some(at) => {
            let bucket =
                crate::s3::S3Blobs::open(at.clone(), cfg.blob_store_credentials.as_deref()).await?;
            tracing::info!(bucket = %at, "bundle blobs in object storage");
            crate::bundle_blobs::BundleBlobs::in_bucket(local_blobs, bucket)
        }
    };
    // The registry's image blobs and the agent executables: on this disk, shared with the
    // other controllers through the bucket when there is one.
    let images = crate::mirror::Mirrored::new(
        crate::registry::open(&cfg.data_dir)?,
        blobs.bucket(),
        "images",
    );
    let agent_binaries = crate::mirror::Mirrored::new(
        crate::install::open_store(&cfg.data_dir)?,
        blobs.bucket(),
        "agent-binaries",
    );
    let state = AppState {
        store: store.clone(),
        data_dir: cfg.data_dir.clone(),
        pki: pki.clone(),
        advertise_url: advertise_url.clone(),
        host_grace: cfg.host_grace,
        poll_hold: cfg.poll_hold,
        poll_slots: Arc::new(Semaphore::new(cfg.max_polls)),
        shutdown: shutdown.clone(),
        blobs,
        max_bundle_size: cfg.max_bundle_size,
        images,
        registry_auth: cfg.registry_auth,
        unpack_limits: cfg.unpack_limits,
        engine: engine.clone(),
        agent_binaries,
        bundled_agent_ready: bundled_ready_rx,
        bundled_agent: bundled.clone(),
        heartbeats: heartbeats.clone(),
        metrics: metrics.clone(),
        max_polls: cfg.max_polls,
    };
    let state_heartbeats = heartbeats;
    match bundled {
        Some(path) => {
            // Hashing a large executable must not delay serving.
            let (store, bins) = (store.clone(), state.agent_binaries.clone());
            tokio::spawn(async move {
                if let Err(e) = crate::install::import_bundled(&store, &bins, &path).await {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "cannot serve the bundled berth-agent"
                    );
                }
                let _ = bundled_ready.send(true);
            });
        }
        None => {
            let _ = bundled_ready.send(true);
            tracing::info!(
                "no berth-agent next to this berth: hosts cannot install themselves until `berth agent-binary add FILE --arch ARCH`"
            )
        }
    }
    if let Some(addr) = cfg.metrics_listen {
        serve_metrics(addr, state.clone(), shutdown.clone()).await?;
    }
    let app = api::router(state, crate::ui::router());
    tracing::info!(
        listen = %bound,
        advertise_url = %advertise_url,
        ca_hash = %pki.ca_hash(),
        data_dir = %cfg.data_dir.display(),
        first_start = pki.created,
        "controller serving"
    );

    serve(
        listener,
        TlsAcceptor::from(tls),
        app,
        shutdown.clone(),
        cfg.shutdown_grace,
        max_connections,
        metrics,
    )
    .await;
    // The last heartbeats (also those of polls answered during the grace), this
    // controller's leases (given up when the shutdown began), the store.
    let _ = flusher.await;
    let _ = leases.await;
    state_heartbeats.flush(&store).await;
    store.close().await;
    tracing::info!("controller stopped");
    Ok(())
}

/// `--metrics-listen`: `GET /metrics` without authentication over plain HTTP, for a
/// Prometheus that scrapes from where only it can reach (bind it to loopback or a
/// management network). Nothing else is served there.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    state: api::AppState,
    shutdown: CancellationToken,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics-listen {addr}: cannot listen"))?;
    let path = <berth_shared::routes::Metrics as berth_shared::routes::Endpoint>::ROUTE.path;
    let app = axum::Router::new()
        .route(path, axum::routing::get(api::admin::metrics))
        .with_state(state);
    tracing::info!(listen = %listener.local_addr()?, "metrics served without authentication");
    tokio::spawn(async move {
        let stop = shutdown.cancelled_owned();
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    });
    Ok(())
}

/// Renews the server certificate at two thirds of its lifetime, for as long as the
/// controller serves. A failed renewal is retried every minute (the old certificate still
/// has a third of its life).
async fn renew_server_cert(pki: Arc<Pki>, shutdown: CancellationToken) {
    loop {
        let wait = pki
            .server
            .until_renewal()
            .clamp(Duration::from_secs(1), Duration::from_secs(3600));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let p = pki.clone();
        match tokio::task::spawn_blocking(move || p.renew_server_cert_if_due()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "cannot renew the server certificate; retrying in a minute"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                }
            }
            Err(e) => tracing::error!(error = %e, "server certificate renewal task failed"),
        }
    }
}

/// Every name the server certificate must cover.
fn server_sans(advertise_url: &str, extra: &[String]) -> BTreeSet<String> {
    let mut sans: BTreeSet<String> = ["localhost", "127.0.0.1", "::1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if let Some(h) = reqwest::Url::parse(advertise_url)
        .ok()
        .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()))
    {
        sans.insert(h);
    }
    let hn = config::hostname();
    if !hn.is_empty() {
        sans.insert(hn);
    }
    for a in config::local_addresses() {
        sans.insert(a.to_string());
    }
    sans.extend(extra.iter().cloned());
    sans
}

/// TLS 1.3, and TLS 1.2 with AEAD suites only (rustls offers no others), with optional
/// client certificates that must chain to our CA when presented.
fn tls_config(pki: &Pki) -> Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca_der.clone())?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(pki.server.clone());
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: axum::Router,
    shutdown: CancellationToken,
    grace: Duration,
    max_connections: usize,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut waited_since: Option<std::time::Instant> = None;
    loop {
        // A slot before accepting: at the limit, new connections wait in the listen queue.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(s) => s,
            Err(_) => {
                if waited_since.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(
                        max_connections,
                        "connection limit reached (open-files limit minus {FD_RESERVE}); new connections wait until one closes"
                    );
                    waited_since = Some(std::time::Instant::now());
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    s = slots.clone().acquire_owned() => match s {
                        Ok(s) => s,
                        Err(_) => break,
                    },
                }
            }
        };
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    metrics.handshake_failed("error");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    metrics.handshake_failed("timeout");
                    return;
                }
            };
            let _open = crate::metrics::OpenConnection::new(metrics);
            let peer_cert = PeerCert(
                tls.get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| Arc::new(PresentedCert::of(c.as_ref()))),
            );
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(peer_cert.clone());
                let mut app = app.clone();
                async move { app.call(req).await }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; waiting for in-flight requests");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?grace, "in-flight requests did not finish in time; closing them");
    }
}
