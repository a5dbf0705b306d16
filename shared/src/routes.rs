//! The route table: every route of the controller's `/v1/` API, one typed definition
//! each — method, path, who may call it, its query, request and response bodies, its
//! success status and the refusals it can answer with.
//!
//! The controller's router mounts its handlers by these definitions (and checks the
//! caller's role from them), the CLI's client and the agent build their URLs and decode
//! their answers from them, and the OpenAPI document (`GET /v1/openapi.json`) is generated
//! from them. No other place spells an API path.

use crate::api::{self, codes};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// An HTTP method of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

/// Who may call a route. Bearer roles are ordered: an admin may do what an operator may,
/// an operator what a viewer may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (enrollment proves itself with a bootstrap token in its body).
    Public,
    /// An enrolled agent, by its client certificate (mutual TLS).
    Agent,
    /// An agent's client certificate, or a viewer's bearer token.
    AgentOrViewer,
    Viewer,
    Operator,
    Admin,
}

impl Access {
    /// The least bearer-token role the route needs, if it takes a bearer token.
    pub fn bearer_role(self) -> Option<&'static str> {
        match self {
            Access::Public | Access::Agent => None,
            Access::AgentOrViewer | Access::Viewer => Some("viewer"),
            Access::Operator => Some("operator"),
            Access::Admin => Some("admin"),
        }
    }
    pub fn takes_client_cert(self) -> bool {
        matches!(self, Access::Agent | Access::AgentOrViewer)
    }
}

/// What a body is on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    /// No body.
    None,
    Json,
    /// A Clusterfile.
    Yaml,
    /// A bundle (`bundle.tar.zst`).
    Zstd,
    /// A tar archive (a backup; container images).
    Tar,
    /// Any bytes (an executable, a blob).
    Octets,
    /// Plain text (a checksum).
    Text,
    /// A PEM certificate.
    Pem,
    /// A shell script.
    Shell,
    /// Prometheus/OpenMetrics exposition text.
    OpenMetrics,
}

impl Media {
    /// The media type of the body; `None` for no body.
    pub fn content_type(self) -> Option<&'static str> {
        match self {
            Media::None => None,
            Media::Json => Some("application/json"),
            Media::Yaml => Some("application/yaml"),
            Media::Zstd => Some("application/zstd"),
            Media::Tar => Some("application/x-tar"),
            Media::Octets => Some("application/octet-stream"),
            Media::Text => Some("text/plain"),
            Media::Pem => Some("application/x-pem-file"),
            Media::Shell => Some("text/x-shellscript"),
            Media::OpenMetrics => Some("application/openmetrics-text"),
        }
    }
}

/// One route of the API.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// The OpenAPI `operationId`.
    pub id: &'static str,
    pub method: Method,
    /// The path template, `{param}` for a segment, `{*param}` for the rest of the path.
    pub path: &'static str,
    pub access: Access,
    /// The OpenAPI tag it is listed under.
    pub tag: &'static str,
    pub summary: &'static str,
    pub request: Media,
    pub response: Media,
    /// The statuses of a success, the usual one first.
    pub ok: &'static [u16],
    /// The refusals of this route beyond the ones every route of its kind can give
    /// (401/403 by access, 400/413 for bodies and parameters, 500): status and code.
    pub errors: &'static [(u16, &'static str)],
}

impl Route {
    /// The path with `params` put in for its parameters, in order, each percent-encoded
    /// (a `{*rest}` parameter keeps its slashes).
    pub fn url(&self, params: &[&str]) -> String {
        let mut out = String::with_capacity(self.path.len() + 32);
        let mut given = params.iter();
        let mut rest = self.path;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let close = rest[open..].find('}').map_or(rest.len(), |c| open + c);
            let wildcard = rest[open + 1..].starts_with('*');
            let value = given.next().copied().unwrap_or_default();
            encode_into(&mut out, value, wildcard);
            rest = &rest[(close + 1).min(rest.len())..];
        }
        out.push_str(rest);
        debug_assert!(given.next().is_none(), "{}: too many parameters", self.id);
        out
    }

    /// Whether `params` can be put in the path as they are meant: one per parameter, none
    /// empty, and none a `.` or `..` segment (URL parsers resolve those, even encoded, so
    /// `berth retry ..` would call another route).
    pub fn check_params(&self, params: &[&str]) -> Result<(), String> {
        let names = self.params();
        if names.len() != params.len() {
            return Err(format!(
                "{} takes {} path parameters, not {}",
                self.id,
                names.len(),
                params.len()
            ));
        }
        for (name, value) in names.iter().zip(params) {
            if value.is_empty() || value.split('/').any(|seg| seg == "." || seg == "..") {
                return Err(format!("`{value}` is not a valid {name}"));
            }
        }
        Ok(())
    }

    /// The names of the path's parameters, in order.
    pub fn params(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut rest = self.path;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                break;
            };
            out.push(rest[open + 1..open + close].trim_start_matches('*'));
            rest = &rest[open + close + 1..];
        }
        out
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (and `:`, which
/// bundle references carry; and `/` in a wildcard).
fn encode_into(out: &mut String, value: &str, keep_slash: bool) {
    for b in value.bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~' | b':')
            || (keep_slash && b == b'/');
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// A body type the OpenAPI document can describe (every type, when the `openapi` feature
/// is off).
#[cfg(feature = "openapi")]
pub trait Schema: utoipa::ToSchema {}
#[cfg(feature = "openapi")]
impl<T: utoipa::ToSchema> Schema for T {}
#[cfg(not(feature = "openapi"))]
pub trait Schema {}
#[cfg(not(feature = "openapi"))]
impl<T> Schema for T {}

/// A query type the OpenAPI document can describe.
#[cfg(feature = "openapi")]
pub trait Params: utoipa::IntoParams {}
#[cfg(feature = "openapi")]
impl<T: utoipa::IntoParams> Params for T {}
#[cfg(not(feature = "openapi"))]
pub trait Params {}
#[cfg(not(feature = "openapi"))]
impl<T> Params for T {}

/// A route with its types: what the client sends and what it gets back.
pub trait Endpoint {
    const ROUTE: Route;
    /// The query string (`NoQuery` when it takes none).
    type Query: Serialize + DeserializeOwned + Params;
    /// The request body (`NoBody`, or a marker for a non-JSON body).
    type Request: Schema;
    /// The response body on success.
    type Response: Schema;
}

/// No query parameters.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[serde(deny_unknown_fields)]
pub struct NoQuery {}

macro_rules! marker {
    ($(#[$m:meta])* $name:ident, $schema:expr) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $name;
        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                $schema
            }
        }
        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}
    };
}

#[cfg(feature = "openapi")]
fn bytes_schema(media: &str) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .content_media_type(media)
        .into()
}

marker!(
    /// No body.
    NoBody,
    utoipa::openapi::schema::empty().into()
);
marker!(
    /// A Clusterfile (YAML text).
    Clusterfile,
    bytes_schema("application/yaml")
);
marker!(
    /// A bundle: a zstd-compressed tar, streamed.
    BundleUpload,
    bytes_schema("application/zstd")
);
marker!(
    /// A tar archive, streamed.
    TarStream,
    bytes_schema("application/x-tar")
);
marker!(
    /// Bytes, streamed.
    Octets,
    bytes_schema("application/octet-stream")
);
marker!(
    /// Text.
    PlainText,
    bytes_schema("text/plain")
);
marker!(
    /// The OpenAPI document itself.
    OpenApiDocument,
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Object)
        .into()
);

macro_rules! routes {
    ($(
        $(#[$doc:meta])*
        $name:ident: $method:ident $path:literal, $access:ident, tag $tag:literal,
        $summary:literal,
        query $query:ty, request $req:ty as $reqm:ident, response $resp:ty as $respm:ident, ok [$($ok:literal),+],
        errors [$(($status:literal, $code:expr)),* $(,)?];
    )*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, Copy)]
            pub struct $name;
            impl Endpoint for $name {
                const ROUTE: Route = Route {
                    id: stringify!($name),
                    method: Method::$method,
                    path: $path,
                    access: Access::$access,
                    tag: $tag,
                    summary: $summary,
                    request: Media::$reqm,
                    response: Media::$respm,
                    ok: &[$($ok),+],
                    errors: &[$(($status, $code)),*],
                };
                type Query = $query;
                type Request = $req;
                type Response = $resp;
            }
        )*

        /// Every route, in the order of the API reference.
        pub const ALL: &[Route] = &[$(<$name as Endpoint>::ROUTE),*];

        /// Calls `visitor.visit::<E>()` for every endpoint (the OpenAPI document walks them
        /// with their types).
        pub fn visit_all<V: Visitor>(visitor: &mut V) {
            $(visitor.visit::<$name>();)*
        }
    };
}

/// Walks the endpoints with their types.
pub trait Visitor {
    fn visit<E: Endpoint>(&mut self);
}

use codes::*;

routes! {
    // ---- open ----
    Healthz: Get "/v1/healthz", Public, tag "controller",
        "The controller's version and CA hash",
        query NoQuery, request NoBody as None, response api::Health as Json, ok [200],
        errors [];
    OpenApi: Get "/v1/openapi.json", Public, tag "controller",
        "This API's OpenAPI 3.1 document",
        query NoQuery, request NoBody as None, response OpenApiDocument as Json, ok [200],
        errors [];
    EnrollCa: Get "/v1/enroll/ca", Public, tag "enrollment",
        "The controller's CA certificate (PEM); the join command pins its hash",
        query NoQuery, request NoBody as None, response PlainText as Pem, ok [200],
        errors [];
    Enroll: Post "/v1/enroll", Public, tag "enrollment",
        "An agent presents a bootstrap token and a CSR and gets its client certificate",
        query NoQuery, request api::EnrollRequest as Json, response api::EnrollResponse as Json, ok [200],
        errors [(401, TOKEN_INVALID), (401, TOKEN_EXPIRED), (401, TOKEN_EXHAUSTED),
                (409, HOST_EXISTS), (403, REENROLL_NOT_ALLOWED), (404, HOST_UNKNOWN),
                (403, HOST_REVOKED)];
    InstallScript: Get "/v1/install/agent.sh", Public, tag "enrollment",
        "The install script of the one-line install",
        query NoQuery, request NoBody as None, response PlainText as Shell, ok [200],
        errors [];
    InstallAgent: Get "/v1/install/berth-agent/{os}/{arch}", Public, tag "enrollment",
        "The berth-agent executable for an OS and architecture",
        query NoQuery, request NoBody as None, response Octets as Octets, ok [200, 206],
        errors [(404, NO_AGENT_BINARY)];
    InstallAgentSha256: Get "/v1/install/berth-agent/{os}/{arch}/sha256", Public, tag "enrollment",
        "The sha256 of that executable, hex",
        query NoQuery, request NoBody as None, response PlainText as Text, ok [200],
        errors [(404, NO_AGENT_BINARY)];

    // ---- agents (mutual TLS) ----
    AgentPoll: Post "/v1/agent/poll", Agent, tag "agent",
        "The long-poll that is also the heartbeat: a newer signed plan, or nothing",
        query NoQuery, request api::PollRequest as Json, response api::PollResponse as Json, ok [200],
        errors [(503, OVERLOADED)];
    AgentReports: Post "/v1/agent/reports", Agent, tag "agent",
        "Log chunks and step reports, in order; a refusal names the entry",
        query NoQuery, request api::ReportBatch as Json, response NoBody as None, ok [204],
        errors [(404, STEP_UNKNOWN), (403, STEP_NOT_YOURS), (409, STEP_NOT_RELEASED),
                (409, STALE_ATTEMPT), (409, ILLEGAL_TRANSITION), (422, OUTPUT_NOT_ALLOWED),
                (422, BAD_LOG_CHUNK)];
    AgentRenew: Post "/v1/agent/renew", Agent, tag "agent",
        "A new client certificate for a key generated on the host",
        query NoQuery, request api::RenewRequest as Json, response api::RenewResponse as Json, ok [200],
        errors [];
    AgentContext: Get "/v1/agent/contexts/sha256/{hex}", Agent, tag "agent",
        "A cluster context a plan names by digest",
        query NoQuery, request NoBody as None, response crate::plan::ClusterContext as Json, ok [200],
        errors [(404, CONTEXT_UNKNOWN), (403, CONTEXT_NOT_RELEASED)];
    Blob: Get "/v1/blobs/sha256/{hex}", AgentOrViewer, tag "bundles",
        "A bundle blob by digest (ranges supported)",
        query NoQuery, request NoBody as None, response Octets as Octets, ok [200, 206],
        errors [(404, NOT_FOUND), (403, BLOB_NOT_RELEASED)];

    // ---- clusters ----
    ClusterList: Get "/v1/clusters", Viewer, tag "clusters",
        "Every cluster with its members and step counts",
        query NoQuery, request NoBody as None, response Vec<api::ClusterSummary> as Json, ok [200],
        errors [];
    ClusterApply: Post "/v1/clusters", Operator, tag "clusters",
        "Create or change a cluster from a Clusterfile (or preview it with dry_run)",
        query api::ApplyQuery, request Clusterfile as Yaml, response api::ApplyResponse as Json, ok [200],
        errors [(422, INVALID_CLUSTERFILE), (422, AMBIGUOUS_ADDRESS), (422, UPGRADE_UNSUPPORTED),
                (409, CLUSTER_NOT_SETTLED), (409, CLUSTER_RESETTING), (409, APPLY_IN_PROGRESS),
                (409, CONFLICT), (404, NOT_FOUND), (422, MASTER0_REMOVAL)];
    ClusterStatus: Get "/v1/clusters/{name}", Viewer, tag "clusters",
        "A cluster's status: every step (or its summary); long-polls with wait and If-None-Match",
        query api::StatusQuery, request NoBody as None, response api::ClusterStatus as Json, ok [200, 304],
        errors [(404, NOT_FOUND)];
    ClusterRetry: Post "/v1/clusters/{name}/retry", Operator, tag "clusters",
        "Run the failed and interrupted steps again (resume, never restart)",
        query NoQuery, request NoBody as None, response api::RetryResponse as Json, ok [200],
        errors [(404, NOT_FOUND), (409, CLUSTER_RESETTING), (409, CONFLICT)];
    ClusterRollback: Post "/v1/clusters/{name}/rollback", Operator, tag "clusters",
        "Roll back the cluster's last upgrade",
        query NoQuery, request NoBody as None, response api::RollbackResponse as Json, ok [200],
        errors [(404, NOT_FOUND), (409, NOTHING_TO_ROLL_BACK), (409, CLUSTER_RESETTING),
                (409, CLUSTER_NOT_SETTLED), (409, CONFLICT)];
    ClusterReset: Post "/v1/clusters/{name}/reset", Operator, tag "clusters",
        "Tear the cluster down (each host runs its clean) and forget it",
        query NoQuery, request api::ResetRequest as Json, response api::ResetResponse as Json, ok [202],
        errors [(404, NOT_FOUND), (409, CONFLICT)];
    ClusterHosts: Post "/v1/clusters/{name}/hosts", Operator, tag "clusters",
        "Add hosts to a cluster or remove them (berth add / berth delete)",
        query NoQuery, request api::HostsEdit as Json, response api::ApplyResponse as Json, ok [200],
        errors [(404, NOT_FOUND), (422, INVALID_CLUSTERFILE), (422, AMBIGUOUS_ADDRESS),
                (422, MASTER0_REMOVAL), (409, CLUSTER_NOT_SETTLED), (409, CLUSTER_RESETTING),
                (409, APPLY_IN_PROGRESS), (409, CONFLICT)];
    ClusterLogs: Get "/v1/clusters/{name}/logs", Viewer, tag "clusters",
        "One page of a step's log",
        query api::LogQuery, request NoBody as None, response api::LogChunk as Json, ok [200],
        errors [(404, NOT_FOUND)];
    Exec: Post "/v1/exec", Operator, tag "clusters",
        "Run a command on hosts through their agents",
        query NoQuery, request api::ExecRequest as Json, response api::ExecResponse as Json, ok [200],
        errors [(404, NOT_FOUND), (422, BAD_REQUEST), (409, CLUSTER_RESETTING), (409, CONFLICT)];
    Events: Get "/v1/events", Viewer, tag "clusters",
        "The event log",
        query api::EventsQuery, request NoBody as None, response Vec<api::EventView> as Json, ok [200],
        errors [];

    // ---- hosts and tokens ----
    TokenCreate: Post "/v1/tokens", Operator, tag "hosts",
        "A bootstrap token, with the join and install lines to paste",
        query NoQuery, request api::CreateTokenRequest as Json, response api::CreateTokenResponse as Json, ok [201],
        errors [(404, NOT_FOUND)];
    HostList: Get "/v1/hosts", Viewer, tag "hosts",
        "Enrolled hosts with their state, facts and agent events",
        query NoQuery, request NoBody as None, response Vec<api::HostView> as Json, ok [200],
        errors [];
    HostDelete: Delete "/v1/hosts/{name}", Operator, tag "hosts",
        "Forget a host (force: remove it from its cluster first)",
        query api::DeleteHostQuery, request NoBody as None, response api::HostDeleted as Json, ok [200],
        errors [(404, NOT_FOUND), (409, HOST_IN_CLUSTER), (409, CLUSTER_NOT_SETTLED),
                (409, CLUSTER_RESETTING), (409, APPLY_IN_PROGRESS), (422, MASTER0_REMOVAL),
                (409, CONFLICT)];
    HostRevoke: Post "/v1/hosts/{name}/revoke", Operator, tag "hosts",
        "Refuse the host's certificate from now on",
        query NoQuery, request NoBody as None, response NoBody as None, ok [204],
        errors [(404, NOT_FOUND)];
    ApiTokenCreate: Post "/v1/api-tokens", Admin, tag "hosts",
        "A bearer token with a role, for a person or a script",
        query NoQuery, request api::CreateApiTokenRequest as Json, response api::CreateApiTokenResponse as Json, ok [201],
        errors [(409, CONFLICT)];
    Audit: Get "/v1/audit", Admin, tag "hosts",
        "The newest audited actions",
        query api::AuditQuery, request NoBody as None, response Vec<api::AuditEntryView> as Json, ok [200],
        errors [];

    // ---- bundles and images ----
    BundleList: Get "/v1/bundles", Viewer, tag "bundles",
        "Stored bundles with their tags",
        query NoQuery, request NoBody as None, response Vec<api::BundleView> as Json, ok [200],
        errors [];
    BundlePush: Post "/v1/bundles", Operator, tag "bundles",
        "Upload a bundle (optionally tag it); the answer is 201 when it was new, 200 when stored already",
        query api::PushQuery, request BundleUpload as Zstd, response api::PushResponse as Json, ok [201, 200],
        errors [(422, BAD_REQUEST), (422, INVALID_BUNDLE), (409, CONFLICT)];
    BundleInspect: Get "/v1/bundles/{*reference}", Viewer, tag "bundles",
        "A bundle by name:tag or digest",
        query NoQuery, request NoBody as None, response api::BundleView as Json, ok [200],
        errors [(404, NOT_FOUND)];
    BundleTag: Put "/v1/bundles/{*reference}", Operator, tag "bundles",
        "Point a name:tag at a stored bundle",
        query NoQuery, request api::TagRequest as Json, response api::BundleView as Json, ok [200],
        errors [(404, NOT_FOUND), (409, CONFLICT)];
    BundleRemove: Delete "/v1/bundles/{*reference}", Operator, tag "bundles",
        "Remove a tag, or a bundle by digest (refused while a cluster uses it)",
        query NoQuery, request NoBody as None, response NoBody as None, ok [204],
        errors [(404, NOT_FOUND), (409, CONFLICT)];
    Limits: Get "/v1/limits", Viewer, tag "bundles",
        "What this controller accepts (bundle sizes, JSON bodies)",
        query NoQuery, request NoBody as None, response api::ServerLimits as Json, ok [200],
        errors [];
    ImageList: Get "/v1/images", Viewer, tag "bundles",
        "Container images the controller's registry serves",
        query NoQuery, request NoBody as None, response Vec<api::ImageView> as Json, ok [200],
        errors [];
    ImageLoad: Post "/v1/images", Operator, tag "bundles",
        "Load a docker-archive or OCI-layout tar into the registry",
        query NoQuery, request TarStream as Tar, response api::ImagesLoaded as Json, ok [201],
        errors [(422, BAD_REQUEST), (422, INVALID_IMAGE_ARCHIVE)];

    // ---- the controller ----
    Metrics: Get "/metrics", Viewer, tag "controller",
        "Prometheus/OpenMetrics text",
        query NoQuery, request NoBody as None, response PlainText as OpenMetrics, ok [200],
        errors [];
    ControllerList: Get "/v1/controllers", Viewer, tag "controller",
        "The controllers serving this database and the clusters each one ticks",
        query NoQuery, request NoBody as None, response Vec<api::ControllerView> as Json, ok [200],
        errors [];
    Backup: Get "/v1/backup", Admin, tag "controller",
        "A consistent backup of the controller (tar, streamed)",
        query NoQuery, request NoBody as None, response TarStream as Tar, ok [200],
        errors [(409, BACKUP_BY_STORAGE_TOOLS)];
    AgentBinaryList: Get "/v1/agent-binaries", Viewer, tag "controller",
        "The berth-agent executables served to installing hosts",
        query NoQuery, request NoBody as None, response Vec<api::AgentBinaryView> as Json, ok [200],
        errors [];
    AgentBinaryAdd: Put "/v1/agent-binaries/{os}/{arch}", Admin, tag "controller",
        "Serve a berth-agent executable for an OS and architecture",
        query NoQuery, request Octets as Octets, response api::AgentBinaryView as Json, ok [201],
        errors [(422, ARCH_MISMATCH), (422, BAD_REQUEST), (404, NOT_FOUND)];
    AgentBinaryRemove: Delete "/v1/agent-binaries/{os}/{arch}", Admin, tag "controller",
        "Stop serving an added executable",
        query NoQuery, request NoBody as None, response NoBody as None, ok [204],
        errors [(404, NOT_FOUND), (404, NO_AGENT_BINARY)];
}

/// The paths of routes outside `/v1/` that are not part of this table: the container
/// registry (OCI distribution, `/v2/`) and the web console (`/ui/`).
pub const REGISTRY_PREFIX: &str = "/v2";
pub const CONSOLE_PREFIX: &str = "/ui";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_fill_and_encode_parameters() {
        assert_eq!(ClusterStatus::ROUTE.url(&["c1"]), "/v1/clusters/c1");
        assert_eq!(
            ClusterLogs::ROUTE.url(&["a b/../c"]),
            "/v1/clusters/a%20b%2F..%2Fc/logs"
        );
        assert_eq!(
            BundleInspect::ROUTE.url(&["lib/etcd:v1"]),
            "/v1/bundles/lib/etcd:v1"
        );
        assert_eq!(
            InstallAgentSha256::ROUTE.url(&["linux", "x86_64"]),
            "/v1/install/berth-agent/linux/x86_64/sha256"
        );
        assert_eq!(Healthz::ROUTE.url(&[]), "/v1/healthz");
        assert_eq!(AgentBinaryAdd::ROUTE.params(), vec!["os", "arch"]);
        assert!(ClusterRetry::ROUTE.check_params(&["c1"]).is_ok());
        for bad in [".", "..", ""] {
            assert!(ClusterRetry::ROUTE.check_params(&[bad]).is_err(), "{bad:?}");
        }
        assert!(BundleRemove::ROUTE.check_params(&["lib/x:v1"]).is_ok());
        assert!(BundleRemove::ROUTE.check_params(&["a/../b"]).is_err());
        assert!(ClusterRetry::ROUTE.check_params(&[]).is_err());
        assert_eq!(BundleTag::ROUTE.params(), vec!["reference"]);
    }

    #[test]
    fn every_route_is_unique_and_documented() {
        let mut seen = std::collections::BTreeSet::new();
        for r in ALL {
            assert!(
                seen.insert((r.path, r.method.as_str())),
                "{} {} twice",
                r.method.as_str(),
                r.path
            );
            assert!(!r.summary.is_empty(), "{} has no summary", r.id);
            assert!(
                r.path.starts_with("/v1/") || r.path == "/metrics",
                "{}: {}",
                r.id,
                r.path
            );
        }
        let ids: std::collections::BTreeSet<_> = ALL.iter().map(|r| r.id).collect();
        assert_eq!(ids.len(), ALL.len(), "operation ids are unique");
    }
}
