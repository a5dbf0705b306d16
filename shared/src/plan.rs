//! Signed per-host plans: the payload, the envelope, and verification.
//!
//! The controller signs the exact payload bytes with ed25519; the agent verifies the
//! signature over those bytes *before* parsing anything out of them, then checks format
//! version, host, generation and expiry.
//!
//! A plan carries only what is the host's own: its steps, bundle digests and per-host env.
//! What every host of a cluster shares (the Clusterfile, the master and node lists, outputs,
//! Configs) is one [`ClusterContext`] document per cluster version, named in the signed plan
//! by its sha256 and fetched once. So a plan stays a few KB at any cluster size, and the
//! controller builds the shared part once per change, not once per host.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The plan format. 3: a step's `kind` is a [`crate::state::StepKind`] (an agent of version
/// 2 refuses it by its version rather than misreading a kind). 4: the upgrade, rollback and
/// exec kinds, `PlanStep::from` and `exec`, `PlanBundle::arch`.
pub const PLAN_VERSION: u32 = 4;

/// Largest context document an agent accepts.
pub const MAX_CONTEXT_BYTES: u64 = 64 << 20;

/// What travels: the payload bytes (base64), the signature over them, the signing key's id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlanEnvelope {
    pub payload: String,
    pub signature: String,
    pub key_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlanPayload {
    pub version: u32,
    pub cluster: String,
    pub host: String,
    /// Strictly increasing per host.
    pub generation: u64,
    /// Unix seconds.
    pub issued_at: i64,
    pub expires_at: i64,
    /// The cluster's shared context: the agent fetches it by digest and checks the digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<ContextRef>,
    pub steps: Vec<PlanStep>,
}

/// Names a context document: its sha256 and size.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContextRef {
    pub digest: crate::Digest,
    pub size: u64,
    /// How many Configs the context holds: an agent whose bundles have no hooks and no
    /// templates needs the context only when there are some (for distribute). Absent:
    /// unknown, so the agent fetches the context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configs: Option<u32>,
}

/// What every host of a cluster shares at one cluster version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterContext {
    pub cluster: String,
    /// The stored Clusterfile.
    pub clusterfile: String,
    /// Lowest precedence: cluster outputs, then the Clusterfile's `spec.env`.
    pub env: BTreeMap<String, String>,
    /// Highest precedence: the cluster-wide `BERTH_*` values (master0, masters, nodes).
    pub berth: BTreeMap<String, String>,
    /// Configs applied during distribute.
    pub configs: Vec<PlanConfig>,
}

impl ClusterContext {
    /// A step's env with the context around it: the context's env, then the host's own
    /// (`host_env`, from the plan), then the cluster's `BERTH_*`, which nothing overrides.
    pub fn env_around(&self, host_env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut env = self.env.clone();
        env.extend(host_env.clone());
        env.extend(self.berth.clone());
        env
    }
}

/// One released step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlanStep {
    pub id: i64,
    pub attempt: u32,
    /// What the step does; the agent matches every kind.
    pub kind: crate::state::StepKind,
    /// Bundles in Clusterfile order (for upgrade and rollback: the rootfs generation the
    /// host moves to).
    pub bundles: Vec<PlanBundle>,
    /// Upgrade and rollback: the rootfs generation the host moves from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<PlanBundle>,
    /// Exec: the program and its arguments (run without a shell), and how long it may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<PlanExec>,
    /// The host's own env composed by the controller (per-host env and the host's
    /// `BERTH_*`); the agent adds the context's around it.
    pub env: BTreeMap<String, String>,
}

/// What an exec step runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlanExec {
    pub command: Vec<String>,
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlanBundle {
    pub reference: String,
    pub digest: crate::Digest,
    pub manifest: crate::bundle::Manifest,
    /// The architecture this digest is built for (None: any): the check step refuses a
    /// bundle built for another one than the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlanConfig {
    pub path: crate::SafeRelPath,
    pub strategy: String,
    pub data: String,
    /// `name:tag` of the bundle it applies to; None = the merged rootfs.
    pub matches: Option<String>,
}

/// Why an agent refused a plan. The messages are what it reports.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("plan signed with unknown key id `{got}` (this agent trusts `{want}`)")]
    UnknownKey { got: String, want: String },
    #[error("plan signature does not verify")]
    BadSignature,
    #[error("plan payload is not valid JSON: {0}")]
    Malformed(String),
    #[error("plan format version {0} is not supported (this agent understands version {PLAN_VERSION}); upgrade the agent to the controller's version")]
    Version(u32),
    #[error("plan is for host `{got}`, not `{want}`")]
    WrongHost { got: String, want: String },
    #[error("plan generation {got} is older than the last accepted generation {last} (replay or rollback)")]
    Replayed { got: u64, last: u64 },
    #[error("plan expired at {expires_at} (now {now})")]
    Expired { expires_at: i64, now: i64 },
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Wraps payload bytes and their signature.
pub fn envelope(payload: &[u8], signature: &[u8], key_id: &str) -> PlanEnvelope {
    PlanEnvelope {
        payload: b64().encode(payload),
        signature: b64().encode(signature),
        key_id: key_id.to_string(),
    }
}

/// Verifies the signature over the exact payload bytes, then parses and checks the plan.
/// `public_key` is the 32-byte ed25519 key, `last_generation` the newest accepted one.
pub fn verify(
    env: &PlanEnvelope,
    key_id: &str,
    public_key: &[u8],
    host: &str,
    last_generation: u64,
    now: i64,
) -> Result<PlanPayload, PlanError> {
    if env.key_id != key_id {
        return Err(PlanError::UnknownKey {
            got: env.key_id.clone(),
            want: key_id.to_string(),
        });
    }
    let payload = b64()
        .decode(&env.payload)
        .map_err(|_| PlanError::BadSignature)?;
    let sig = b64()
        .decode(&env.signature)
        .map_err(|_| PlanError::BadSignature)?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key)
        .verify(&payload, &sig)
        .map_err(|_| PlanError::BadSignature)?;
    // Only now is anything read out of the payload: its format version first, so a plan
    // of another version is refused as that, not as a payload that does not parse.
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let v: Versioned =
        serde_json::from_slice(&payload).map_err(|e| PlanError::Malformed(e.to_string()))?;
    if v.version != PLAN_VERSION {
        return Err(PlanError::Version(v.version));
    }
    let plan: PlanPayload =
        serde_json::from_slice(&payload).map_err(|e| PlanError::Malformed(e.to_string()))?;
    if plan.host != host {
        return Err(PlanError::WrongHost {
            got: plan.host,
            want: host.to_string(),
        });
    }
    if plan.generation < last_generation {
        return Err(PlanError::Replayed {
            got: plan.generation,
            last: last_generation,
        });
    }
    if plan.expires_at <= now {
        return Err(PlanError::Expired {
            expires_at: plan.expires_at,
            now,
        });
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn key() -> Ed25519KeyPair {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn plan(host: &str, generation: u64, version: u32, expires_at: i64) -> Vec<u8> {
        serde_json::to_vec(&PlanPayload {
            version,
            cluster: "c".into(),
            host: host.into(),
            generation,
            issued_at: 100,
            expires_at,
            context: None,
            steps: vec![],
        })
        .unwrap()
    }

    fn signed(k: &Ed25519KeyPair, payload: &[u8]) -> PlanEnvelope {
        envelope(payload, k.sign(payload).as_ref(), "kid")
    }

    #[test]
    fn accepts_a_good_plan_and_refuses_each_bad_one_with_the_exact_reason() {
        let k = key();
        let pk = k.public_key().as_ref().to_vec();
        let good = signed(&k, &plan("h1", 5, PLAN_VERSION, 1000));
        assert_eq!(
            verify(&good, "kid", &pk, "h1", 5, 500).unwrap().generation,
            5
        );

        let mut tampered = good.clone();
        let mut bytes = b64().decode(&tampered.payload).unwrap();
        let i = bytes.iter().position(|b| *b == b'5').unwrap();
        bytes[i] = b'9';
        tampered.payload = b64().encode(&bytes);
        assert_eq!(
            verify(&tampered, "kid", &pk, "h1", 0, 500),
            Err(PlanError::BadSignature)
        );

        let other = key();
        let forged = signed(&other, &plan("h1", 5, PLAN_VERSION, 1000));
        assert_eq!(
            verify(&forged, "kid", &pk, "h1", 0, 500),
            Err(PlanError::BadSignature)
        );

        let mut unknown = good.clone();
        unknown.key_id = "other".into();
        assert_eq!(
            verify(&unknown, "kid", &pk, "h1", 0, 500)
                .unwrap_err()
                .to_string(),
            "plan signed with unknown key id `other` (this agent trusts `kid`)"
        );
        assert_eq!(
            verify(&good, "kid", &pk, "h1", 6, 500)
                .unwrap_err()
                .to_string(),
            "plan generation 5 is older than the last accepted generation 6 (replay or rollback)"
        );
        assert_eq!(
            verify(&good, "kid", &pk, "h2", 0, 500)
                .unwrap_err()
                .to_string(),
            "plan is for host `h1`, not `h2`"
        );
        assert_eq!(
            verify(&good, "kid", &pk, "h1", 0, 1000)
                .unwrap_err()
                .to_string(),
            "plan expired at 1000 (now 1000)"
        );
        let v1 = signed(&k, &plan("h1", 5, 1, 1000));
        assert_eq!(
            verify(&v1, "kid", &pk, "h1", 0, 500)
                .unwrap_err()
                .to_string(),
            "plan format version 1 is not supported (this agent understands version 4); upgrade the agent to the controller's version"
        );
        // A newer controller's plan, with a kind this agent does not know: refused by its
        // version, with that reason.
        let future = br#"{"version":5,"cluster":"c","host":"h1","generation":5,"issued_at":1,"expires_at":1000,"steps":[{"id":1,"attempt":1,"kind":"teleport","bundles":[],"env":{}}]}"#;
        assert_eq!(
            verify(&signed(&k, future), "kid", &pk, "h1", 0, 500)
                .unwrap_err()
                .to_string(),
            "plan format version 5 is not supported (this agent understands version 4); upgrade the agent to the controller's version"
        );
        // This version with a kind it does not know is malformed.
        let odd = br#"{"version":4,"cluster":"c","host":"h1","generation":5,"issued_at":1,"expires_at":1000,"steps":[{"id":1,"attempt":1,"kind":"teleport","bundles":[],"env":{}}]}"#;
        assert!(verify(&signed(&k, odd), "kid", &pk, "h1", 0, 500)
            .unwrap_err()
            .to_string()
            .starts_with("plan payload is not valid JSON: unknown variant `teleport`"));
    }

    #[test]
    fn the_context_goes_around_the_host_env_with_berth_values_last() {
        let step = PlanStep {
            id: 1,
            attempt: 1,
            kind: crate::state::StepKind::Install,
            bundles: vec![],
            from: vec![],
            exec: None,
            env: [
                ("A", "host"),
                ("BERTH_HOST", "n1"),
                ("BERTH_NODES", "forged"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        };
        let p = PlanPayload {
            version: PLAN_VERSION,
            cluster: "c".into(),
            host: "n1".into(),
            generation: 1,
            issued_at: 0,
            expires_at: 1,
            context: None,
            steps: vec![step],
        };
        // The plan carries neither: they are in the context.
        let wire = serde_json::to_string(&p).unwrap();
        assert!(!wire.contains("clusterfile") && !wire.contains("configs"));
        let ctx = ClusterContext {
            cluster: "c".into(),
            clusterfile: "kind: Cluster".into(),
            env: [("A", "cluster"), ("B", "cluster")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            berth: [("BERTH_NODES", "10.0.0.2")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            configs: vec![],
        };
        let env = &ctx.env_around(&p.steps[0].env);
        assert_eq!(env["A"], "host");
        assert_eq!(env["B"], "cluster");
        assert_eq!(env["BERTH_HOST"], "n1");
        assert_eq!(env["BERTH_NODES"], "10.0.0.2");
        assert!(serde_json::from_str::<ClusterContext>(
            r#"{"cluster":"c","clusterfile":"","env":{},"berth":{},"configs":[],"extra":1}"#
        )
        .is_err());
    }
}
