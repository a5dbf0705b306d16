//! JSON bodies of the `/v1/` HTTP API, shared by the controller, the agent and the CLI.
//!
//! These are the only serializable types that cross the controller's boundary; the
//! controller's database rows are separate types.

use crate::{Digest, HostName};
use serde::{Deserialize, Serialize};

/// Every error response: a stable machine-readable `code` and a human `message`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    /// For a refused report batch: the index of the entry that was refused. Entries before
    /// it were applied; it and the ones after it were not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<usize>,
}

/// Facts an agent reports about its host at enrollment and whenever they change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostFacts {
    pub hostname: String,
    /// `PRETTY_NAME` from os-release, e.g. "Debian GNU/Linux 12 (bookworm)".
    pub os: String,
    pub kernel: String,
    /// Rust's name for the CPU architecture: `x86_64`, `aarch64`, ...
    pub arch: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// Non-loopback IP addresses, without prefix length.
    pub addresses: Vec<String>,
    pub agent_version: String,
}

/// `POST /v1/tokens`: create a bootstrap token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// Lifetime in seconds (1 second to 365 days).
    pub ttl_secs: u64,
    /// How many agents may enroll with it (1 to 10000).
    pub uses: u32,
    #[serde(default)]
    pub description: Option<String>,
    /// Bind the token to one enrolled host, which may then re-enroll with it (new key and
    /// certificate, same name and cluster membership): `berth-agent join --reenroll`.
    /// Such a token cannot enroll any other host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reenroll: Option<HostName>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateTokenResponse {
    pub id: String,
    /// `ID.SECRET`; shown once, never stored in clear by the controller.
    pub token: String,
    /// RFC 3339.
    pub expires_at: String,
    pub uses: u32,
    pub controller: String,
    pub ca_hash: Digest,
    /// The line to paste on a host that has `berth-agent` already.
    pub join_command: String,
    /// The line to paste on a host that has nothing but `sh` and `curl` (or GNU wget on
    /// GnuTLS): it carries the controller's CA certificate, trusted alone (never the
    /// system's CA store), and the install script's sha256, so nothing runs that did not
    /// come from this controller; the token reaches the host through a pipe into a 0600
    /// file, never a command line. The script checks the agent binary's sha256, installs
    /// it, enrolls and starts it.
    pub install_command: String,
    /// The host this token may re-enroll (`--reenroll`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reenroll: Option<HostName>,
}

/// `POST /v1/enroll`: an agent presents a bootstrap token and a CSR.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub token: String,
    pub name: HostName,
    /// PKCS#10 certificate signing request, PEM. The private key stays on the host.
    pub csr_pem: String,
    pub facts: HostFacts,
    /// Replace the identity of the enrolled host `name` (its certificate expired, or its
    /// disk was lost). Needs a token created with `berth token create --reenroll NAME`.
    #[serde(default)]
    pub reenroll: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollResponse {
    pub name: HostName,
    /// The agent's client certificate, PEM.
    pub certificate_pem: String,
    pub ca_pem: String,
    /// The controller's ed25519 plan-signing public key (32 bytes, hex).
    pub plan_public_key: String,
    /// Identifies the plan-signing key: the first 16 hex characters of its sha256.
    pub plan_key_id: String,
}

/// `POST /v1/agent/renew` (mutual TLS): a new certificate for a new key, generated on the
/// host. The certificate presented for the call stays valid until the agent uses the new
/// one, so a renewal lost on the way (a crash, a cut connection) costs nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RenewRequest {
    pub csr_pem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RenewResponse {
    pub certificate_pem: String,
    /// RFC 3339.
    pub not_after: String,
}

/// An agent executable the controller serves to installing hosts
/// (`GET /v1/agent-binaries`, `berth agent-binary list`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentBinaryView {
    /// `linux`.
    pub os: String,
    /// `uname -m` spelling: `x86_64`, `aarch64`, …
    pub arch: String,
    pub digest: Digest,
    pub size: u64,
    /// `bundled` (found next to the controller at start) or `added` (`berth agent-binary add`).
    pub source: String,
    /// RFC 3339.
    pub added_at: String,
}

/// A controller serving the database (`GET /v1/controllers`, `berth get controllers`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ControllerView {
    /// Random per start.
    pub id: String,
    /// `--controller-name`, or the machine's hostname.
    pub name: String,
    /// The URL it tells agents (its `--advertise-url`: the load balancer's, usually).
    pub url: String,
    pub version: String,
    /// `sha256:` of the CA it serves with (the same for every controller of a database).
    pub ca_hash: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339: its last lease round.
    pub seen_at: String,
    /// Seen within the lease time; a controller that is not has lost its clusters.
    pub live: bool,
    /// Whether this is the controller that answered.
    pub this: bool,
    /// The clusters it holds (ticks), by name.
    pub clusters: Vec<String>,
}

/// `POST /v1/agent/poll`: the long-poll that is also the heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PollRequest {
    /// Present only when the facts changed since the last accepted report.
    #[serde(default)]
    pub facts: Option<HostFacts>,
    /// How long the controller may hold the request, in seconds (capped by the controller).
    #[serde(default)]
    pub wait_secs: u64,
    /// The newest plan generation this agent accepted; a newer plan is returned at once.
    #[serde(default)]
    pub have_generation: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PollResponse {
    /// The host's name as the controller knows it.
    pub host: String,
    /// Whether the controller stored the facts sent with this poll.
    pub facts_accepted: bool,
    /// A signed plan newer than `have_generation`, if any.
    #[serde(default)]
    pub plan: Option<crate::plan::PlanEnvelope>,
}

/// A host as `GET /v1/hosts` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostView {
    pub name: String,
    /// `Ready`, `NotReady` (no heartbeat within the grace period) or `Revoked`.
    pub state: String,
    pub addresses: Vec<String>,
    pub arch: String,
    pub agent_version: String,
    /// RFC 3339.
    pub last_seen: String,
    pub last_seen_secs_ago: u64,
    /// RFC 3339.
    pub enrolled_at: String,
    /// When the host's current client certificate expires (RFC 3339); the agent renews it
    /// at two thirds of its lifetime. `None` for hosts enrolled before this was recorded.
    #[serde(default)]
    pub cert_expires_at: Option<String>,
    pub facts: HostFacts,
    /// What the host's agent reported going wrong (e.g. `plan_rejected`: a plan it
    /// refused), one entry per kind with a count and the last message, newest first.
    #[serde(default)]
    pub events: Vec<HostEventView>,
}

/// Events of one kind from one host: how many, when, and the last message (one line,
/// at most 512 bytes).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostEventView {
    pub kind: String,
    pub count: u64,
    /// RFC 3339.
    pub first_at: String,
    /// RFC 3339.
    pub last_at: String,
    pub last_secs_ago: u64,
    pub message: String,
}

/// `GET /v1/audit` (admin): one audited action — every change, and every read of
/// secrets (a backup, cluster outputs) — newest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntryView {
    /// RFC 3339.
    pub at: String,
    /// `api-token:ID` (`api-token:admin` for the admin token), `controller`, or the
    /// host for what an agent did.
    pub actor: String,
    pub action: String,
    pub target: String,
    #[serde(default)]
    pub detail: Option<String>,
}

/// `GET /v1/healthz`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    pub status: String,
    pub version: String,
    pub ca_hash: Digest,
}

/// Stable error codes. Clients match on these, never on messages.
impl crate::state::TransitionError {
    /// The API code of a refused transition (the state machine itself knows no API).
    pub fn code(&self) -> &'static str {
        use crate::state::TransitionError;
        match self {
            TransitionError::NotReleased { .. } => codes::STEP_NOT_RELEASED,
            TransitionError::StaleAttempt { .. } => codes::STALE_ATTEMPT,
            TransitionError::Illegal { .. } => codes::ILLEGAL_TRANSITION,
        }
    }
}

pub mod codes {
    pub const UNAUTHENTICATED: &str = "unauthenticated";
    pub const FORBIDDEN: &str = "forbidden";
    pub const BAD_REQUEST: &str = "bad_request";
    pub const NOT_FOUND: &str = "not_found";
    pub const CONFLICT: &str = "conflict";
    pub const TOKEN_INVALID: &str = "token_invalid";
    pub const TOKEN_EXPIRED: &str = "token_expired";
    pub const TOKEN_EXHAUSTED: &str = "token_exhausted";
    pub const HOST_EXISTS: &str = "host_exists";
    pub const HOST_UNKNOWN: &str = "host_unknown";
    pub const HOST_REVOKED: &str = "host_revoked";
    pub const CLIENT_CERT_REQUIRED: &str = "client_certificate_required";
    pub const OVERLOADED: &str = "overloaded";
    pub const INTERNAL: &str = "internal";
    pub const INVALID_CLUSTERFILE: &str = "invalid_clusterfile";
    /// A Clusterfile address matches more than one enrolled host.
    pub const AMBIGUOUS_ADDRESS: &str = "ambiguous_address";
    /// A re-apply changes a rootfs/patch bundle of an installed cluster.
    pub const UPGRADE_UNSUPPORTED: &str = "upgrade_unsupported";
    /// An upgrade of a cluster that is not Running (retry or roll back first).
    pub const CLUSTER_NOT_SETTLED: &str = "cluster_not_settled";
    /// `berth rollback` of a cluster whose last change was not an upgrade (or is running).
    pub const NOTHING_TO_ROLL_BACK: &str = "nothing_to_roll_back";
    /// The cluster is being reset (or its reset failed).
    pub const CLUSTER_RESETTING: &str = "cluster_resetting";
    /// An apply of the cluster is still running.
    pub const APPLY_IN_PROGRESS: &str = "apply_in_progress";
    /// `host delete` of a host that belongs to a cluster.
    pub const HOST_IN_CLUSTER: &str = "host_in_cluster";
    /// `delete` of the cluster's master0.
    pub const MASTER0_REMOVAL: &str = "master0_removal";
    // Agent reports.
    pub const STEP_UNKNOWN: &str = "step_unknown";
    pub const STEP_NOT_YOURS: &str = "step_not_yours";
    pub const STEP_NOT_RELEASED: &str = "step_not_released";
    pub const STALE_ATTEMPT: &str = "stale_attempt";
    pub const ILLEGAL_TRANSITION: &str = "illegal_transition";
    pub const OUTPUT_NOT_ALLOWED: &str = "output_not_allowed";
    pub const BAD_LOG_CHUNK: &str = "bad_log_chunk";
    /// A blob that is not part of any step released to the calling host.
    pub const BLOB_NOT_RELEASED: &str = "blob_not_released";
    /// A context digest no plan of this controller named (or one long superseded).
    pub const CONTEXT_UNKNOWN: &str = "context_unknown";
    /// A context of a cluster the host has no released step in.
    pub const CONTEXT_NOT_RELEASED: &str = "context_not_released";
    /// `--reenroll` with a token not bound to that host, or a bound token used otherwise.
    pub const REENROLL_NOT_ALLOWED: &str = "reenroll_not_allowed";
    /// `berth backup` of a controller whose state is in PostgreSQL, or whose bundle blobs
    /// are in a bucket: those are backed up with their own tools (docs/scale-out.md).
    pub const BACKUP_BY_STORAGE_TOOLS: &str = "backup_by_storage_tools";
    /// An agent binary whose ELF header does not match the architecture it is added for.
    pub const ARCH_MISMATCH: &str = "arch_mismatch";
    /// A client certificate past its end (on a connection opened before).
    pub const CERTIFICATE_EXPIRED: &str = "certificate_expired";
    /// No agent binary for the asked OS/architecture.
    pub const NO_AGENT_BINARY: &str = "no_agent_binary";
    /// A request body over the limit (`GET /v1/limits`).
    pub const TOO_LARGE: &str = "too_large";
    /// A pushed bundle that is not one (its manifest, layout or limits).
    pub const INVALID_BUNDLE: &str = "invalid_bundle";
    /// An image load of something that is neither an OCI layout nor a docker archive.
    pub const INVALID_IMAGE_ARCHIVE: &str = "invalid_image_archive";
}

/// A stored bundle as `GET /v1/bundles` and `GET /v1/bundles/{ref}` show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BundleView {
    pub digest: Digest,
    pub size: u64,
    pub name: String,
    pub version: String,
    #[serde(rename = "type")]
    pub bundle_type: String,
    /// `name:tag` refs pointing at this digest.
    pub tags: Vec<String>,
    /// RFC 3339.
    pub created_at: String,
    pub manifest: crate::bundle::Manifest,
    /// Inspected by `name:tag`: the digest the tag holds per architecture (empty: one for
    /// every architecture).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub arches: std::collections::BTreeMap<String, crate::Digest>,
}

/// `PUT /v1/bundles/{name:tag}`: point a tag at a stored bundle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TagRequest {
    pub digest: Digest,
}

/// The index at the start of a `berth bundle save` archive (`berth-bundles.json`),
/// followed by one `blobs/sha256/<hex>` entry per bundle, in the same order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BundleArchiveIndex {
    /// `berth-bundles/v1`.
    pub format: String,
    pub bundles: Vec<ArchivedBundle>,
}

/// `GET /v1/limits` (viewer): what this controller accepts, so a client can check a
/// whole batch (`bundle load`) before it uploads any of it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServerLimits {
    /// `--max-bundle-size`: the largest bundle blob accepted, in bytes.
    pub max_bundle_size: u64,
    /// `--max-unpacked-bytes`: what one bundle may unpack to.
    pub max_unpacked_bytes: u64,
    /// `--max-entries`: entries in one bundle.
    pub max_entries: u64,
    /// `--max-file-bytes`: one file in a bundle.
    pub max_file_bytes: u64,
    /// The largest JSON request body.
    pub max_json_body: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ArchivedBundle {
    pub digest: Digest,
    pub size: u64,
    pub name: String,
    pub version: String,
    /// `name:tag` refs restored by `berth bundle load`.
    pub tags: Vec<String>,
}

/// `POST /v1/bundles[?tag=name:tag]` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PushResponse {
    pub digest: Digest,
    pub size: u64,
    /// false when the blob was already stored (the upload was a no-op).
    pub created: bool,
    pub tag: Option<String>,
    /// The digest the tag pointed at before, when it moved.
    pub previous: Option<Digest>,
    pub manifest: crate::bundle::Manifest,
    /// Container images the bundle carries that the controller's registry now serves
    /// (`repo:tag`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    /// What of the bundle's `registry/` and `images/` was not served, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// `POST /v1/images`: what an image load stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImagesLoaded {
    /// `repo:tag`s now served.
    pub images: Vec<String>,
    pub warnings: Vec<String>,
}

/// An image the controller's registry serves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImageView {
    pub repo: String,
    pub tag: String,
    pub digest: String,
    /// What brought it: `bundle:sha256:…` or `load:sha256:…` (the archive's digest).
    pub source: String,
}

/// Agent → controller, in order: log chunks and step reports (spooled on the host).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReportEntry {
    Log {
        step_id: i64,
        attempt: u32,
        /// Byte offset of `data` in the step's log; re-sent chunks are ignored.
        offset: u64,
        data: String,
    },
    Step(StepReport),
    /// A plan the agent refused, and why.
    PlanRejected {
        reason: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StepReport {
    pub step_id: i64,
    pub attempt: u32,
    /// running | succeeded | failed | interrupted; anything else is refused.
    pub state: crate::state::StepState,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub log_tail: Option<String>,
    #[serde(default)]
    pub outputs: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReportBatch {
    pub entries: Vec<ReportEntry>,
}

/// A cluster as `berth status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterView {
    pub name: String,
    pub phase: crate::state::ClusterPhase,
    pub message: Option<String>,
    pub generation: i64,
    pub hosts: Vec<ClusterHostView>,
    pub steps: Vec<StepView>,
    /// Output keys; values only with `show_outputs` and an admin token.
    pub outputs: std::collections::BTreeMap<String, Option<String>>,
    pub warnings: Vec<String>,
}

/// One cluster in `GET /v1/clusters`: what a list needs, the same size for a cluster of
/// any number of steps (`GET /v1/clusters/{name}` has them all).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterSummary {
    pub name: String,
    pub phase: crate::state::ClusterPhase,
    pub message: Option<String>,
    pub generation: i64,
    /// Member host names, master0 first.
    pub hosts: Vec<String>,
    /// How many steps are in each state.
    pub steps: std::collections::BTreeMap<crate::state::StepState, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterHostView {
    pub name: String,
    pub role: crate::state::HostRole,
    pub ip: String,
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StepView {
    pub id: i64,
    pub host: String,
    pub kind: crate::state::StepKind,
    pub state: crate::state::StepState,
    pub attempt: u32,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub elapsed_secs: Option<i64>,
    pub log_tail: Option<String>,
}

/// `POST /v1/api-tokens` (admin): a bearer token for a person or a script.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateApiTokenRequest {
    pub name: String,
    /// admin | operator | viewer
    pub role: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateApiTokenResponse {
    pub id: String,
    pub name: String,
    pub role: String,
    /// Shown once; the controller keeps only its sha256.
    pub token: String,
}

/// `POST /v1/clusters` and `POST /v1/clusters/{name}/hosts` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApplyResponse {
    pub name: String,
    pub warnings: Vec<String>,
    /// `?dry_run=true`: what the apply would do (nothing was stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanPreview>,
}

/// What an apply would do, in the order it would happen (`berth apply --dry-run`,
/// `berth diff`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlanPreview {
    pub cluster: String,
    /// The cluster does not exist yet.
    pub create: bool,
    /// Anything would change: steps would run, hosts join or leave, or the stored spec
    /// change (`berth diff` exits 2).
    pub changes: bool,
    /// The stored Clusterfile/spec would change (even where nothing runs).
    pub spec_changed: bool,
    pub add_hosts: Vec<String>,
    pub remove_hosts: Vec<String>,
    /// An upgrade: the rootfs/patch bundles before and after, and its batch size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradePreview>,
    /// Failed or interrupted steps the apply would run again (resume, never restart).
    pub resumed: Vec<PreviewStep>,
    /// The steps, wave by wave: a wave starts when the one before it finished.
    pub waves: Vec<Vec<PreviewStep>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpgradePreview {
    pub from: Vec<String>,
    pub to: Vec<String>,
    pub max_unavailable: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PreviewStep {
    pub host: String,
    pub kind: crate::state::StepKind,
}

/// `POST /v1/clusters/{name}/hosts`: `berth add` / `berth delete`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HostsEdit {
    #[serde(default)]
    pub add_masters: Vec<String>,
    #[serde(default)]
    pub add_nodes: Vec<String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `POST /v1/clusters/{name}/retry` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RetryResponse {
    pub name: String,
    pub retried_steps: u64,
}

/// `POST /v1/exec` (operator): a command on hosts through their agents.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Every host of this cluster (narrowed by `hosts` and `role`)…
    #[serde(default)]
    pub cluster: Option<String>,
    /// …or these hosts (each a member of some cluster).
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub role: Option<crate::state::HostRole>,
    /// How long the command may run on a host (1 to 86400).
    pub timeout_secs: u64,
    /// The program and its arguments, run without a shell.
    pub command: Vec<String>,
}

/// Limits of an exec request.
pub const MAX_EXEC_ARGS: usize = 256;
pub const MAX_EXEC_BYTES: usize = 128 * 1024;

/// `POST /v1/exec` answer: the step each host runs it as.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecResponse {
    pub steps: Vec<ExecStep>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecStep {
    pub cluster: String,
    pub host: String,
    pub step_id: i64,
}

/// `GET /v1/events`: one event of the log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventView {
    pub id: i64,
    /// RFC 3339 with milliseconds.
    pub at: String,
    pub cluster: Option<String>,
    pub host: Option<String>,
    /// phase | step | apply | batch | rollback | reset | skip | exec
    pub kind: String,
    pub message: String,
}

/// `POST /v1/clusters/{name}/rollback` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RollbackResponse {
    pub name: String,
    /// Hosts that run `rollback`.
    pub hosts: usize,
}

/// `POST /v1/clusters/{name}/reset` body (optional).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// Finish even when hosts do not answer: their `clean` is skipped.
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/clusters/{name}/reset` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResetResponse {
    pub name: String,
    /// Hosts whose `clean` was skipped (`--force` and the host does not answer, or its clean
    /// failed).
    pub skipped: Vec<String>,
}

/// `GET /v1/clusters/{name}/logs` answer: one page of a step's log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogChunk {
    pub step_id: i64,
    pub kind: crate::state::StepKind,
    pub attempt: u32,
    pub state: crate::state::StepState,
    /// Offset to ask from next time.
    pub next: u64,
    /// More is stored past `next`: ask again at once.
    #[serde(default)]
    pub more: bool,
    pub data: String,
    /// The step's exit code once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it failed, was interrupted or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `DELETE /v1/hosts/{name}` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostDeleted {
    pub name: String,
    /// The cluster the host was removed from first (`--force`).
    pub removed_from: Option<String>,
}

/// `GET /v1/clusters/{name}`: every step, or with `summary=true` the summary.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum ClusterStatus {
    Full(ClusterView),
    Summary(ClusterSummary),
}

/// `POST /v1/clusters` query.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct ApplyQuery {
    /// Nodes an upgrade takes at once, 1 to 100000 (over the Clusterfile's
    /// `spec.maxUnavailable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<u32>,
    /// Answer with what the apply would do (`plan`); store nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// `GET /v1/clusters/{name}` query.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct StatusQuery {
    /// Include output values (admin only).
    #[serde(default)]
    pub show_outputs: bool,
    /// With `If-None-Match`: hold the request up to this many seconds (at most 60) until
    /// the status differs from that ETag; `304` if it did not.
    #[serde(default)]
    pub wait: u64,
    /// Answer with the cluster's summary (`ClusterSummary`: members and step counts)
    /// instead of every step: what a watcher of a large cluster needs.
    #[serde(default)]
    pub summary: bool,
}

/// `GET /v1/clusters/{name}/logs` query.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    pub host: String,
    /// Step kind (install, init, ...); default: the host's latest started step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// This step (an exec's), instead of the latest of a kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    /// The byte offset to read from.
    #[serde(default)]
    pub from: u64,
}

/// `GET /v1/events` query.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// One cluster's events (also of a cluster that is gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Only events after this id (what `--watch` passes on).
    #[serde(default)]
    pub after: i64,
    /// One kind: phase | step | apply | batch | rollback | reset | skip | exec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// 1 to 10000 (default 1000).
    #[serde(default = "default_events_limit")]
    pub limit: u32,
    /// The newest `limit` events instead of the oldest after `after`.
    #[serde(default)]
    pub tail: bool,
}

impl Default for EventsQuery {
    fn default() -> Self {
        EventsQuery {
            cluster: None,
            after: 0,
            kind: None,
            limit: default_events_limit(),
            tail: false,
        }
    }
}

fn default_events_limit() -> u32 {
    1000
}

/// `GET /v1/audit` query.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// At most this many rows (1 to 10,000; default 100).
    #[serde(default = "default_audit_limit")]
    pub limit: u32,
}

fn default_audit_limit() -> u32 {
    100
}

/// `DELETE /v1/hosts/{name}` query.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct DeleteHostQuery {
    /// Remove the host from its cluster first (its unfinished steps are cancelled).
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/bundles` query.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct PushQuery {
    /// `name:tag` to point at the uploaded digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The architecture the bundle is built for: the tag gets this digest for it, beside
    /// the others (over the bundle.yaml's `arch`, which must agree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
}

impl TryFrom<ClusterStatus> for ClusterView {
    type Error = &'static str;
    fn try_from(s: ClusterStatus) -> Result<Self, Self::Error> {
        match s {
            ClusterStatus::Full(v) => Ok(v),
            ClusterStatus::Summary(_) => Err("the controller answered a summary, not every step"),
        }
    }
}

impl TryFrom<ClusterStatus> for ClusterSummary {
    type Error = &'static str;
    fn try_from(s: ClusterStatus) -> Result<Self, Self::Error> {
        match s {
            ClusterStatus::Summary(v) => Ok(v),
            ClusterStatus::Full(_) => Err("the controller answered every step, not a summary"),
        }
    }
}
