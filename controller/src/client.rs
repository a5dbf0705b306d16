//! The CLI's API client: finds the controller, verifies it against the CA, sends bearer
//! tokens, and turns error bodies into one clear line.

use crate::local::{ControllerInfo, INFO_FILE};
use crate::pki::PkiPaths;
use anyhow::{anyhow, bail, Context, Result};
use berth_shared::api::ErrorBody;
use berth_shared::routes::{self, Endpoint, NoBody};
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

    /// An authenticated request of endpoint `E` with its path parameters and query.
    fn builder<E: Endpoint>(
        &self,
        params: &[&str],
        query: &E::Query,
    ) -> Result<reqwest::RequestBuilder> {
        let route = E::ROUTE;
        route.check_params(params).map_err(anyhow::Error::msg)?;
        let method = match route.method {
            routes::Method::Get => Method::GET,
            routes::Method::Post => Method::POST,
            routes::Method::Put => Method::PUT,
            routes::Method::Delete => Method::DELETE,
        };
        Ok(self
            .http
            .request(method, format!("{}{}", self.base, route.url(params)))
            .bearer_auth(&self.token)
            .query(query))
    }

    /// Calls an endpoint that takes no body and answers JSON.
    pub async fn fetch<E>(&self, params: &[&str], query: &E::Query) -> Result<E::Response>
    where
        E: Endpoint<Request = NoBody>,
        E::Response: DeserializeOwned,
    {
        let resp = self.dispatch(self.builder::<E>(params, query)?).await?;
        decode::<E>(check(resp).await?).await
    }

    /// Calls an endpoint with a JSON body that answers JSON.
    pub async fn send<E>(
        &self,
        params: &[&str],
        query: &E::Query,
        body: &E::Request,
    ) -> Result<E::Response>
    where
        E: Endpoint,
        E::Request: Serialize,
        E::Response: DeserializeOwned,
    {
        let req = self.builder::<E>(params, query)?.json(body);
        decode::<E>(check(self.dispatch(req).await?).await?).await
    }

    /// Calls an endpoint that takes no body and answers with none (a 204).
    pub async fn act<E>(&self, params: &[&str], query: &E::Query) -> Result<()>
    where
        E: Endpoint<Request = NoBody, Response = NoBody>,
    {
        let resp = self.dispatch(self.builder::<E>(params, query)?).await?;
        check(resp).await.map(|_| ())
    }

    /// Calls an endpoint that takes no body; its successful answer is returned unread (to
    /// stream a large body).
    pub async fn stream<E>(&self, params: &[&str], query: &E::Query) -> Result<reqwest::Response>
    where
        E: Endpoint<Request = NoBody>,
    {
        let resp = self.dispatch(self.builder::<E>(params, query)?).await?;
        check(resp).await
    }

    /// Sends a streaming or text body (a bundle, an image archive, an executable, a
    /// Clusterfile) of the endpoint's media type; the answer is JSON.
    pub async fn upload<E>(
        &self,
        params: &[&str],
        query: &E::Query,
        body: reqwest::Body,
    ) -> Result<E::Response>
    where
        E: Endpoint,
        E::Response: DeserializeOwned,
    {
        let content_type = E::ROUTE
            .request
            .content_type()
            .unwrap_or("application/octet-stream");
        let sent = self
            .builder::<E>(params, query)?
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await;
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) if E::ROUTE.request == routes::Media::Yaml => bail!(
                "cannot reach the controller at {}: {}",
                self.base,
                error_chain(&e)
            ),
            Err(e) => {
                // The controller refuses some uploads (a role, a platform) before it reads
                // the body, and closes the connection: the client then sees a broken pipe
                // where the answer was. Ask again with no body to learn that answer.
                if let Some(refusal) = self.refusal_before_body::<E>(params, query).await {
                    return Err(refusal);
                }
                bail!("upload to {} failed: {}", self.base, error_chain(&e));
            }
        };
        decode::<E>(check(resp).await?).await
    }

    /// The answer to the endpoint with an empty body, when it is a refusal the server
    /// gives before reading a body (401, 403, 400, 404); `None` for anything else (e.g.
    /// 422 for the empty body itself, which says nothing about the real upload).
    async fn refusal_before_body<E: Endpoint>(
        &self,
        params: &[&str],
        query: &E::Query,
    ) -> Option<anyhow::Error> {
        let content_type = E::ROUTE
            .request
            .content_type()
            .unwrap_or("application/octet-stream");
        let resp = self
            .builder::<E>(params, query)
            .ok()?
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

    /// A conditional GET held by the server until the answer differs from `etag` (or the
    /// server's wait is over: `None`). Returns the answer and its ETag.
    pub async fn fetch_changed<E>(
        &self,
        params: &[&str],
        query: &E::Query,
        etag: Option<&str>,
        hold: Duration,
    ) -> Result<Option<(E::Response, Option<String>)>>
    where
        E: Endpoint<Request = NoBody>,
        E::Response: DeserializeOwned,
    {
        // A connection that dies during the hold must not hang the command.
        let mut req = self
            .builder::<E>(params, query)?
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
        Ok(Some((decode::<E>(resp).await?, tag)))
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

/// Reads a successful answer as the endpoint's response body.
async fn decode<E: Endpoint>(resp: reqwest::Response) -> Result<E::Response>
where
    E::Response: DeserializeOwned,
{
    let bytes = resp.bytes().await?;
    serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "unexpected response from {} {}",
            E::ROUTE.method.as_str(),
            E::ROUTE.path
        )
    })
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
    let query = berth_shared::api::PushQuery {
        tag: tag.map(str::to_string),
        arch: arch.map(str::to_string),
    };
    let result = client
        .upload::<routes::BundlePush>(&[], &query, reqwest::Body::wrap_stream(stream))
        .await;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    result
}
