//! The agent's session with its controller: the identity in use and the mutual-TLS client
//! built from it, shared by the poll loop, the report sender and the fetcher, and swapped
//! in place when the certificate is renewed or the host re-enrolled.
//!
//! Renewal: at two thirds of the certificate's lifetime the agent generates a new key,
//! sends a CSR over mutual TLS (`POST /v1/agent/renew`), stores the new identity in one
//! atomic directory exchange and only then switches to it. The controller keeps
//! accepting the old certificate until the new one is used, so a crash or a lost answer
//! anywhere in between costs nothing: the next attempt renews again.

use crate::identity::Identity;
use crate::join::chain;
use crate::now_unix;
use anyhow::{anyhow, Context, Result};
use berth_shared::api::{ErrorBody, RenewRequest, RenewResponse};
use berth_shared::routes::{self, Endpoint};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct Session {
    data_dir: PathBuf,
    connect: crate::tls::Connect,
    inner: Arc<RwLock<(Identity, reqwest::Client)>>,
}

impl Session {
    /// Loads the stored identity. An expired certificate is an error that says how to
    /// re-enroll: no controller accepts it any more.
    pub fn open(data_dir: PathBuf) -> Result<Session> {
        Session::open_with(data_dir, crate::tls::Connect::default())
    }

    /// `open`, with the client connecting as `connect` says.
    pub fn open_with(data_dir: PathBuf, connect: crate::tls::Connect) -> Result<Session> {
        let id = Identity::load(&data_dir)?;
        let validity = id.cert_validity()?;
        if validity.expired(now_unix()) {
            anyhow::bail!(
                "this host's certificate expired at {} (the agent was not running to renew it). \
                 Re-enroll, keeping the host's name and cluster membership: on the controller run \
                 `berth token create --reenroll {name}`, then here \
                 `berth-agent join --reenroll --controller {ctl} --token TOKEN --ca-hash HASH --data-dir {dir}`",
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_secs(validity.not_after.max(0) as u64)
                ),
                name = id.meta.name,
                ctl = id.meta.controller,
                dir = data_dir.display(),
            );
        }
        let client = crate::tls::agent_client(&id, &connect)?;
        Ok(Session {
            data_dir,
            connect,
            inner: Arc::new(RwLock::new((id, client))),
        })
    }

    pub fn client(&self) -> reqwest::Client {
        self.read().1.clone()
    }

    pub fn identity(&self) -> Identity {
        self.read().0.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, (Identity, reqwest::Client)> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn install(&self, id: Identity) -> Result<()> {
        let client = crate::tls::agent_client(&id, &self.connect)?;
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = (id, client);
        Ok(())
    }

    /// Picks up an identity replaced on disk (a `join --reenroll` while this agent ran).
    /// Returns whether it changed.
    pub fn reload_if_replaced(&self) -> bool {
        let Ok(on_disk) = Identity::load(&self.data_dir) else {
            return false;
        };
        if on_disk.cert_pem == self.read().0.cert_pem {
            return false;
        }
        match self.install(on_disk) {
            Ok(()) => {
                tracing::info!("the identity on disk was replaced; using it");
                true
            }
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "cannot use the replaced identity");
                false
            }
        }
    }

    /// Renews the certificate at two thirds of its lifetime, for as long as the agent runs.
    pub async fn run_renewer(self, shutdown: CancellationToken) {
        loop {
            let validity = match self.identity().cert_validity() {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "cannot read the certificate; not renewing"
                    );
                    return;
                }
            };
            // Slept in slices of at most an hour, judged again from the wall clock each
            // time: a monotonic sleep does not count a suspended host's time.
            let wait = validity
                .until_renewal(now_unix())
                .min(Duration::from_secs(3600));
            if !wait.is_zero() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            if validity.expired(now_unix()) {
                tracing::error!(
                    "the certificate expired before it could be renewed; re-enroll this host (`berth token create --reenroll NAME`, then `berth-agent join --reenroll`)"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(300)) => {}
                }
                // A re-enrollment may have replaced it on disk meanwhile.
                self.reload_if_replaced();
                continue;
            }
            match self.renew_once().await {
                Ok(not_after) => {
                    tracing::info!(%not_after, "certificate renewed");
                }
                Err(e) => {
                    let left = (validity.not_after - now_unix()).max(0) as u64;
                    let retry = Duration::from_secs(left / 8)
                        .clamp(Duration::from_secs(1), Duration::from_secs(300));
                    tracing::warn!(error = format!("{e:#}"), retry_in = ?retry, "certificate renewal failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(retry) => {}
                    }
                }
            }
        }
    }

    async fn renew_once(&self) -> Result<String> {
        let id = self.identity();
        let key = KeyPair::generate().context("cannot generate a key")?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id.meta.name.as_str());
        params.distinguished_name = dn;
        let csr = params.serialize_request(&key)?.pem()?;
        let resp = self
            .client()
            .post(format!(
                "{}{}",
                id.meta.controller,
                routes::AgentRenew::ROUTE.path
            ))
            .json(&RenewRequest { csr_pem: csr })
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach the controller: {}", chain(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await.unwrap_or_default();
            return Err(match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(e) => anyhow!("controller refused: {} ({})", e.message, e.code),
                Err(_) => anyhow!("controller answered {status}"),
            });
        }
        let renewed: RenewResponse = resp.json().await.context("unexpected renewal answer")?;
        let next = Identity {
            cert_pem: renewed.certificate_pem,
            key_pem: key.serialize_pem(),
            ..id
        };
        next.cert_validity()?;
        // Build the client first: a certificate it cannot use must not replace a good one.
        crate::tls::agent_client(&next, &self.connect)?;
        let (dir, staged, expect) = (self.data_dir.clone(), next.clone(), id.cert_pem.clone());
        if let Err(e) =
            tokio::task::spawn_blocking(move || staged.replace(&dir, Some(&expect))).await?
        {
            self.reload_if_replaced();
            return Err(e);
        }
        self.install(next)?;
        Ok(renewed.not_after)
    }
}
