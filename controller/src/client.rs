//! The CLI's API client: finds the controller, verifies it against the CA, sends bearer
//! tokens, and turns error bodies into one clear line.

use crate::pki::PkiPaths;
use crate::server::{ControllerInfo, INFO_FILE};
use anyhow::{anyhow, bail, Context, Result};
use berth_shared::api::ErrorBody;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where the CLI finds the controller: flags/env first, then the controller's data dir.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub server: Option<String>,
    pub token: Option<String>,
    pub ca: Option<PathBuf>,
    pub data_dir: PathBuf,
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    pub fn connect(t: &Target) -> Result<Client> {
        let info_path = t.data_dir.join(INFO_FILE);
        let info: Option<ControllerInfo> = std::fs::read(&info_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let hint = |what: &str, flag: &str, env: &str| {
            anyhow!(
                "no {what}: pass {flag} or set {env}, or run on the controller machine with --data-dir pointing at its data dir (looked in {})",
                t.data_dir.display()
            )
        };
        let base = match (&t.server, &info) {
            (Some(s), _) => s.trim_end_matches('/').to_string(),
            (None, Some(i)) => i.local_url.clone(),
            (None, None) => return Err(hint("controller URL", "--server", "BERTH_SERVER")),
        };
        let pki = PkiPaths::new(&t.data_dir);
        let token = match &t.token {
            Some(tok) => tok.clone(),
            None => std::fs::read_to_string(pki.admin_token())
                .map(|s| s.trim().to_string())
                .map_err(|_| hint("API token", "--token", "BERTH_TOKEN"))?,
        };
        let ca_path = t.ca.clone().unwrap_or_else(|| pki.ca_cert());
        let ca_pem = std::fs::read(&ca_path).map_err(|_| {
            anyhow!(
                "cannot read the controller's CA certificate at {}: pass --ca or set BERTH_CA",
                ca_path.display()
            )
        })?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls_client_config(&ca_pem, &ca_path)?)
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Client { http, base, token })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send::<(), T>(Method::GET, path, None).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.send(Method::POST, path, Some(body)).await
    }

    /// POSTs a streaming body (e.g. a bundle upload).
    pub async fn post_body<T: DeserializeOwned>(
        &self,
        path: &str,
        body: reqwest::Body,
    ) -> Result<T> {
        self.upload(Method::POST, path, "application/zstd", body)
            .await
    }

    /// Sends a streaming body with `method`.
    pub async fn upload<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: reqwest::Body,
    ) -> Result<T> {
        let url = format!("{}{}", self.base, path);
        let sent = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await;
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) => {
                // The controller refuses some uploads (a role, a platform) before it reads
                // the body, and closes the connection: the client then sees a broken pipe
                // where the answer was. Ask again with no body to learn that answer.
                if let Some(refusal) = self.refusal_before_body(method, path, content_type).await {
                    return Err(refusal);
                }
                bail!("upload to {} failed: {}", self.base, error_chain(&e));
            }
        };
        let resp = check(resp).await?;
        let bytes = resp.bytes().await?;
        serde_json::from_slice(&bytes).with_context(|| format!("unexpected response from {path}"))
    }

    /// The answer to `method path` with an empty body, when it is a refusal the server
    /// gives before reading a body (401, 403, 400, 404); `None` for anything else (e.g.
    /// 422 for the empty body itself, which says nothing about the real upload).
    async fn refusal_before_body(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
    ) -> Option<anyhow::Error> {
        let resp = self
            .builder(method, path)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(Vec::new())
            .send()
            .await
            .ok()?;
        if !matches!(resp.status().as_u16(), 400 | 401 | 403 | 404) {
            return None;
        }
        check(resp).await.err()
    }

    /// POSTs a text body (a Clusterfile).
    pub async fn post_text<T: DeserializeOwned>(&self, path: &str, body: String) -> Result<T> {
        let url = format!("{}{}", self.base, path);
        let resp = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/yaml")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                anyhow!(
                    "cannot reach the controller at {}: {}",
                    self.base,
                    error_chain(&e)
                )
            })?;
        let resp = check(resp).await?;
        let bytes = resp.bytes().await?;
        serde_json::from_slice(&bytes).with_context(|| format!("unexpected response from {path}"))
    }

    /// A conditional GET held by the server until the answer differs from `etag` (or the
    /// server's wait is over: `None`). Returns the answer and its ETag.
    pub async fn get_changed<T: DeserializeOwned>(
        &self,
        path: &str,
        etag: Option<&str>,
        hold: Duration,
    ) -> Result<Option<(T, Option<String>)>> {
        // A connection that dies during the hold must not hang the command.
        let mut req = self
            .builder(Method::GET, path)
            .timeout(hold + Duration::from_secs(30));
        if let Some(t) = etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, t);
        }
        let resp = self.dispatch(req).await?;
        if resp.status() == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        let resp = check(resp).await?;
        let tag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = resp.bytes().await?;
        let v = serde_json::from_slice(&bytes)
            .with_context(|| format!("unexpected response from {path}"))?;
        Ok(Some((v, tag)))
    }

    /// A GET whose successful answer is returned unread (to stream a large body).
    pub async fn get_response(&self, path: &str) -> Result<reqwest::Response> {
        let resp = self.request(Method::GET, path, None::<&()>).await?;
        check(resp).await
    }

    /// A JSON call with `method` and a body (PUT, …).
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T> {
        self.send(method, path, Some(body)).await
    }

    /// A call whose success has no body (204).
    pub async fn call_empty(&self, method: Method, path: &str) -> Result<()> {
        let resp = self.request(method, path, None::<&()>).await?;
        check(resp).await.map(|_| ())
    }

    async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let resp = self.request(method, path, body).await?;
        let resp = check(resp).await?;
        let bytes = resp.bytes().await?;
        serde_json::from_slice(&bytes).with_context(|| format!("unexpected response from {path}"))
    }

    async fn request<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<reqwest::Response> {
        let mut req = self.builder(method, path);
        if let Some(b) = body {
            req = req.json(b);
        }
        self.dispatch(req).await
    }

    /// An authenticated request to `path`.
    fn builder(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.token)
    }

    /// Sends `req`; a transport failure says which controller could not be reached.
    async fn dispatch(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        req.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the controller at {}: {}",
                self.base,
                error_chain(&e)
            )
        })
    }
}

async fn check(resp: reqwest::Response) -> Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let bytes = resp.bytes().await.unwrap_or_default();
    match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(e) => Err(ApiCallError {
            status: status.as_u16(),
            code: e.code,
            message: e.message,
        }
        .into()),
        Err(_) => bail!("controller answered {status}"),
    }
}

/// An error answer of the API. Callers decide by `code` (downcast the `anyhow::Error`),
/// never by the message.
#[derive(Debug, thiserror::Error)]
#[error("{message} ({code}){}", if *status == 401 { "; check --token / BERTH_TOKEN" } else { "" })]
pub struct ApiCallError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

/// The API error code of an error, if it is an API answer.
pub fn api_code(e: &anyhow::Error) -> Option<&str> {
    e.downcast_ref::<ApiCallError>().map(|e| e.code.as_str())
}

/// A rustls client config that trusts only the given CA (ring provider).
pub fn tls_client_config(ca_pem: &[u8], ca_path: &Path) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots
            .add(cert.with_context(|| format!("{} is not a PEM certificate", ca_path.display()))?)
            .with_context(|| format!("{} is not a usable CA certificate", ca_path.display()))?;
    }
    if roots.is_empty() {
        bail!("{} holds no certificate", ca_path.display());
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

pub use berth_shared::error_chain;

/// Uploads the bundle file `file` (`POST /v1/bundles`, tagged `tag`), with a progress bar
/// when `bar` and stdout is a terminal.
pub async fn upload_bundle(
    client: &Client,
    file: &Path,
    tag: Option<&str>,
    arch: Option<&str>,
    bar: bool,
) -> Result<berth_shared::api::PushResponse> {
    let f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("cannot open {}", file.display()))?;
    let len = f.metadata().await?.len();
    let pb = if bar && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        let pb = indicatif::ProgressBar::new(len);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Some(pb)
    } else {
        None
    };
    let counter = pb.clone();
    let stream = futures_util::StreamExt::inspect(
        tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024),
        move |chunk| {
            if let (Some(pb), Ok(c)) = (&counter, chunk) {
                pb.inc(c.len() as u64);
            }
        },
    );
    let mut q = Vec::new();
    if let Some(t) = tag {
        q.push(format!("tag={t}"));
    }
    if let Some(a) = arch {
        q.push(format!("arch={a}"));
    }
    let path = match q.is_empty() {
        true => "/v1/bundles".to_string(),
        false => format!("/v1/bundles?{}", q.join("&")),
    };
    let result = client
        .post_body(&path, reqwest::Body::wrap_stream(stream))
        .await;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    result
}
