//! `berth-agent join`: pin the controller's CA, enroll with a bootstrap token and a CSR,
//! store the identity. Nothing is written unless every check passed.

use crate::identity::{Identity, IdentityMeta};
use crate::{facts, tls};
use anyhow::{anyhow, bail, Context, Result};
use berth_shared::api::{EnrollRequest, EnrollResponse, ErrorBody};
use berth_shared::routes::{self, Endpoint};
use berth_shared::{BootstrapToken, Digest, HostName};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct JoinConfig {
    pub controller: String,
    pub token: BootstrapToken,
    pub ca_hash: Digest,
    pub name: HostName,
    pub data_dir: PathBuf,
    /// Replace the identity of the enrolled host `name`.
    pub reenroll: bool,
}

/// Reads a bootstrap token from `path`: one line, the file private to its owner (a token
/// readable by other users could enroll hosts of theirs).
pub fn read_token_file(path: &std::path::Path) -> Result<String> {
    let bytes = berth_files::read_secret(path)
        .with_context(|| format!("--token-file {}", path.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow!("--token-file {}: not text", path.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    match (lines.next(), lines.next()) {
        (Some(t), None) => Ok(t.trim().to_string()),
        (None, _) => bail!("--token-file {}: the file is empty", path.display()),
        (Some(_), Some(_)) => bail!(
            "--token-file {}: more than one line; the file holds only the token ID.SECRET",
            path.display()
        ),
    }
}

/// Parses and checks the join arguments before any network call.
pub fn validate(
    controller: &str,
    token: &str,
    ca_hash: &str,
    name: Option<&str>,
    data_dir: PathBuf,
    reenroll: bool,
) -> Result<JoinConfig> {
    let url = reqwest::Url::parse(controller)
        .map_err(|e| anyhow!("--controller `{controller}` is not a URL: {e}"))?;
    if url.scheme() != "https" {
        bail!("--controller `{controller}` must be an https:// URL");
    }
    let token: BootstrapToken = token.parse().map_err(|e| anyhow!("--token: {e}"))?;
    let ca_hash: Digest = ca_hash.parse().map_err(|e| anyhow!("--ca-hash: {e}"))?;
    let stored = reenroll
        .then(|| Identity::load(&data_dir).ok().map(|i| i.meta.name))
        .flatten();
    let name = match (name, stored) {
        (Some(n), _) => n.parse::<HostName>()?,
        (None, Some(n)) => n.parse::<HostName>()?,
        (None, None) => {
            let hn = gethostname::gethostname().to_string_lossy().to_lowercase();
            hn.parse::<HostName>()
                .map_err(|e| anyhow!("{e}; this machine's hostname cannot be used, pass --name"))?
        }
    };
    Ok(JoinConfig {
        controller: controller.trim_end_matches('/').to_string(),
        token,
        ca_hash,
        name,
        data_dir,
        reenroll,
    })
}

pub async fn join(cfg: &JoinConfig) -> Result<Identity> {
    if Identity::exists(&cfg.data_dir) && !cfg.reenroll {
        let existing = Identity::load(&cfg.data_dir)
            .map(|i| i.meta.name)
            .unwrap_or_else(|_| "?".into());
        bail!(
            "{} already holds the identity of host `{existing}`; run `berth-agent run --data-dir {}`, use another --data-dir, or give it a new identity with --reenroll",
            cfg.data_dir.display(),
            cfg.data_dir.display()
        );
    }

    // 1. Fetch the CA without trusting anyone, and pin it.
    let probe = reqwest::Client::builder()
        .use_preconfigured_tls(tls::unverified_for_ca_fetch()?)
        .timeout(Duration::from_secs(30))
        .build()?;
    let ca_url = format!("{}{}", cfg.controller, routes::EnrollCa::ROUTE.path);
    let resp = probe.get(&ca_url).send().await.map_err(|e| {
        anyhow!(
            "cannot reach the controller at {}: {}",
            cfg.controller,
            chain(&e)
        )
    })?;
    if !resp.status().is_success() {
        bail!(
            "{ca_url} answered {}; is --controller a berth controller?",
            resp.status()
        );
    }
    let ca_pem = resp.text().await?;
    let ca_der = rustls_pemfile::certs(&mut ca_pem.as_bytes())
        .next()
        .ok_or_else(|| anyhow!("{ca_url} returned no PEM certificate"))?
        .context("the controller's CA is not valid PEM")?;
    let got = Digest::of(ca_der.as_ref());
    if got != cfg.ca_hash {
        bail!(
            "the controller's CA has hash {got}, but --ca-hash is {}; refusing to trust it. \
             Check that the join command is for this controller (or that nothing intercepts the connection); nothing was written",
            cfg.ca_hash
        );
    }

    // 2. Key pair on this host; only the CSR leaves it.
    let key = KeyPair::generate().context("cannot generate the agent key")?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cfg.name.as_str());
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?.pem()?;

    // 3. Enroll over TLS pinned to that CA.
    let pinned = reqwest::Client::builder()
        .use_preconfigured_tls(tls::pinned(&ca_pem)?)
        .timeout(Duration::from_secs(30))
        .build()?;
    let resp = pinned
        .post(format!("{}{}", cfg.controller, routes::Enroll::ROUTE.path))
        .json(&EnrollRequest {
            token: cfg.token.to_string(),
            name: cfg.name.clone(),
            csr_pem: csr,
            facts: facts::collect(),
            reenroll: cfg.reenroll,
        })
        .send()
        .await
        .map_err(|e| anyhow!("cannot enroll with {}: {}", cfg.controller, chain(&e)))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.bytes().await.unwrap_or_default();
        return Err(match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => anyhow!("enrollment refused: {} ({})", e.message, e.code),
            Err(_) => anyhow!("enrollment refused: controller answered {status}"),
        });
    }
    let enrolled: EnrollResponse = resp.json().await.context("unexpected enrollment answer")?;
    if enrolled.ca_pem.trim() != ca_pem.trim() {
        bail!(
            "the controller answered with a different CA than the one pinned; nothing was written"
        );
    }

    // 4. Store it.
    let id = Identity {
        meta: IdentityMeta {
            name: enrolled.name.to_string(),
            controller: cfg.controller.clone(),
            plan_public_key: enrolled.plan_public_key,
            plan_key_id: enrolled.plan_key_id,
        },
        ca_pem,
        cert_pem: enrolled.certificate_pem,
        key_pem: key.serialize_pem(),
    };
    if cfg.reenroll {
        id.replace(&cfg.data_dir, None)?;
    } else {
        id.save(&cfg.data_dir)?;
    }
    Ok(id)
}

/// All causes of an error on one line.
pub use berth_shared::error_chain as chain;
