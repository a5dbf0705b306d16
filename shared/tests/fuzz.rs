//! Bounded fuzzing of the parsers of untrusted input in `shared`: Clusterfiles and signed
//! plan envelopes. Every property must hold without a panic, a crash or a hang.
//!
//! Each property runs a fixed number of cases chosen to take a few seconds in a debug
//! build; `BERTH_FUZZ_CASES=N` runs N cases of every property instead (CI can raise it).
//! Each case runs in a forked test process with a timeout, so a stack overflow or a hang
//! is reported as a failing (and shrunk) input rather than killing or stalling the run.
#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use berth_shared::clusterfile::{edit_hosts, Clusterfile};
use berth_shared::plan::{envelope, verify, PlanEnvelope, PlanError, PlanPayload, PlanStep};
use proptest::prelude::*;
use ring::signature::{Ed25519KeyPair, KeyPair};
use std::collections::BTreeMap;
use std::sync::LazyLock;

/// `default` cases per property, or `BERTH_FUZZ_CASES`.
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("BERTH_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        // A case that takes longer is a hang.
        timeout: 20_000,
        max_shrink_time: 60_000,
        ..ProptestConfig::default()
    }
}

const GOOD: &str = r#"apiVersion: apps.sealos.io/v1beta1
kind: Cluster
metadata:
  name: default
spec:
  hosts:
  - ips: [10.0.0.1:22, node-a]
    roles: [master, amd64]
    env: [ROLE_ENV=m]
  - ips: [10.0.0.3:22]
    roles: [node, amd64]
    ssh: {user: root}
  image: [labring/kubernetes:v1.25.0, labring/calico:v3.24.1]
  env: [A=1, B=x=y]
  ssh: {passwd: hunter2}
status: {}
---
apiVersion: kubeadm.k8s.io/v1beta2
kind: ClusterConfiguration
networking:
  podSubnet: 10.160.0.0/12
---
apiVersion: apps.sealos.io/v1beta1
kind: Config
metadata:
  name: calico
spec:
  path: manifests/calico.yaml
  match: labring/calico:v3.24.1
  strategy: merge
  data: |
    spec: {x: 1}
"#;

/// Characters YAML gives meaning to, and a few that break UTF-8 assumptions in other code.
const YAML_CHARS: &[char] = &[
    ' ', ' ', ' ', '\n', '\n', '\t', ':', '-', '[', ']', '{', '}', ',', '&', '*', '!', '|', '>',
    '\'', '"', '#', '%', '@', '`', '?', '=', '.', '/', '\\', 'a', 'b', 'x', '0', '1', 'é', '\u{0}',
    '\u{feff}', '\r',
];

fn yaml_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::sample::select(YAML_CHARS),
        1 => any::<char>(),
    ]
}

/// One edit of a text: replace, insert or delete at a relative position.
#[derive(Debug, Clone)]
enum Edit {
    Replace(prop::sample::Index, char),
    Insert(prop::sample::Index, String),
    Delete(prop::sample::Index, usize),
    /// Duplicates a line (a second document, a second key, a deeper indent).
    DupLine(prop::sample::Index),
    DropLine(prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    let snippet = prop_oneof![
        prop::collection::vec(yaml_char(), 1..8).prop_map(String::from_iter),
        prop::sample::select(vec![
            "---\n",
            "\n  ",
            "*a",
            "&a ",
            "[",
            "{",
            "!!binary ",
            "~",
            "null",
            "<<: *a\n",
            "master",
            "node",
            ":22",
            "[::1]:22",
            "../",
            "/etc/passwd",
            "- ",
            "kind: Cluster\n",
            "apiVersion: apps.sealos.io/v1beta1\n",
            "kind: Config\n",
        ])
        .prop_map(str::to_string),
    ];
    prop_oneof![
        (any::<prop::sample::Index>(), yaml_char()).prop_map(|(i, c)| Edit::Replace(i, c)),
        (any::<prop::sample::Index>(), snippet).prop_map(|(i, s)| Edit::Insert(i, s)),
        (any::<prop::sample::Index>(), 1usize..20).prop_map(|(i, n)| Edit::Delete(i, n)),
        any::<prop::sample::Index>().prop_map(Edit::DupLine),
        any::<prop::sample::Index>().prop_map(Edit::DropLine),
    ]
}

fn apply_edits(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for e in edits {
        let at = |i: &prop::sample::Index, len: usize| if len == 0 { 0 } else { i.index(len) };
        match e {
            Edit::Replace(i, c) => {
                if !chars.is_empty() {
                    let p = at(i, chars.len());
                    chars[p] = *c;
                }
            }
            Edit::Insert(i, s) => {
                let p = at(i, chars.len() + 1);
                chars.splice(p..p, s.chars());
            }
            Edit::Delete(i, n) => {
                let p = at(i, chars.len());
                let end = (p + n).min(chars.len());
                chars.drain(p..end);
            }
            Edit::DupLine(i) | Edit::DropLine(i) => {
                let s: String = chars.iter().collect();
                let mut lines: Vec<&str> = s.split('\n').collect();
                let p = at(i, lines.len());
                if matches!(e, Edit::DupLine(_)) {
                    lines.insert(p, lines[p]);
                } else {
                    lines.remove(p);
                }
                chars = lines.join("\n").chars().collect();
            }
        }
    }
    chars.into_iter().collect()
}

/// What every accepted Clusterfile must satisfy, whatever the input.
fn check_accepted(c: &Clusterfile) {
    assert!(!c.images.is_empty(), "accepted without images");
    assert!(
        c.hosts.iter().any(|h| h.is_master()),
        "accepted without a master"
    );
    assert!(c.hosts.iter().all(|h| !h.ips.is_empty()));
    assert!(!c.name.is_empty() && c.name.len() <= 63);
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn clusterfile_parse_never_panics_on_arbitrary_text(text in any::<String>()) {
        if let Ok(c) = Clusterfile::parse(&text) {
            check_accepted(&c);
        }
    }

    #[test]
    fn clusterfile_parse_never_panics_on_yaml_soup(
        chars in prop::collection::vec(yaml_char(), 0..600)
    ) {
        let text: String = chars.into_iter().collect();
        if let Ok(c) = Clusterfile::parse(&text) {
            check_accepted(&c);
        }
        let _ = edit_hosts(&text, &["10.0.0.9".into()], &[], &["10.0.0.1".into()]);
    }

    #[test]
    fn clusterfile_parse_never_panics_on_mutated_valid_files(
        edits in prop::collection::vec(edit(), 1..6)
    ) {
        let text = apply_edits(GOOD, &edits);
        if let Ok(c) = Clusterfile::parse(&text) {
            check_accepted(&c);
        }
        if let Ok(out) = edit_hosts(&text, &["10.0.0.9".into()], &["n2".into()], &["node-a".into()]) {
            let _ = Clusterfile::parse(&out);
        }
    }
}

/// The YAML parser stops at its recursion limit (128). Kept at a few thousand levels: the
/// scanner is quadratic in the flow nesting depth (40,000 `[` take 16 s in a debug build),
/// which is for `Clusterfile::parse` to bound, not for this test to time.
#[test]
fn forty_thousand_nested_flow_collections_are_refused_before_the_quadratic_scanner() {
    for open in ["[", "{a: "] {
        let text = format!(
            "apiVersion: apps.sealos.io/v1beta1\nkind: Cluster\nx: {}",
            open.repeat(40_000)
        );
        let start = std::time::Instant::now();
        let err = Clusterfile::parse(&text).unwrap_err();
        assert_eq!(
            (err.doc, err.field.as_str(), err.message.as_str()),
            (0, "(nesting)", "line 3: `[` / `{` nested deeper than 64"),
            "{err}"
        );
        assert!(
            start.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }
    // Brackets in quotes and comments do not count; 64 levels are fine.
    let ok = format!(
        "apiVersion: apps.sealos.io/v1beta1\nkind: Cluster\nmetadata: {{name: c}}\n# {}\nx: \"{}\"\ny: {}{}\n",
        "[".repeat(100),
        "{".repeat(100),
        "[".repeat(64),
        "]".repeat(64)
    );
    if let Err(e) = Clusterfile::parse(&ok) {
        assert_ne!(e.field, "(nesting)", "{e}");
    }
}

#[test]
fn deeply_nested_yaml_is_an_error_not_a_stack_overflow() {
    for open in ["[", "{a: ", "- "] {
        let text = format!(
            "apiVersion: apps.sealos.io/v1beta1\nkind: Cluster\nx: {}",
            open.repeat(2_000)
        );
        let err = Clusterfile::parse(&text).unwrap_err();
        // Flow collections are refused by the depth pre-check, block ones by the parser.
        let want = if open == "- " {
            (1, "(document)")
        } else {
            (0, "(nesting)")
        };
        assert_eq!((err.doc, err.field.as_str()), want, "{err}");
    }
}

// ---- plans --------------------------------------------------------------------------------

static KEY: LazyLock<Ed25519KeyPair> = LazyLock::new(|| {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
});

fn public_key() -> Vec<u8> {
    KEY.public_key().as_ref().to_vec()
}

fn signed(payload: &[u8]) -> PlanEnvelope {
    envelope(payload, KEY.sign(payload).as_ref(), "kid")
}

const HOST: &str = "h1";
const NOW: i64 = 500;

fn good_payload() -> Vec<u8> {
    serde_json::to_vec(&PlanPayload {
        version: berth_shared::plan::PLAN_VERSION,
        cluster: "c".into(),
        host: HOST.into(),
        generation: 5,
        issued_at: 100,
        expires_at: 1000,
        context: Some(berth_shared::plan::ContextRef {
            digest: berth_shared::Digest::of(b"context"),
            size: 7,
            configs: Some(0),
        }),
        steps: vec![PlanStep {
            id: 1,
            attempt: 1,
            kind: berth_shared::state::StepKind::Install,
            bundles: vec![],
            from: vec![],
            exec: None,
            env: BTreeMap::from([("A".to_string(), "1".to_string())]),
        }],
    })
    .unwrap()
}

/// What every accepted plan must satisfy.
fn check_verified(p: &PlanPayload, last_generation: u64, now: i64) {
    assert_eq!(p.version, berth_shared::plan::PLAN_VERSION);
    assert_eq!(p.host, HOST);
    assert!(p.generation >= last_generation);
    assert!(p.expires_at > now);
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn verify_never_panics_on_arbitrary_envelopes(
        payload in any::<String>(),
        signature in any::<String>(),
        key_id in prop_oneof![Just("kid".to_string()), any::<String>()],
        last in any::<u64>(),
        now in any::<i64>(),
    ) {
        let env = PlanEnvelope { payload, signature, key_id };
        prop_assert!(verify(&env, "kid", &public_key(), HOST, last, now).is_err());
    }

    #[test]
    fn verify_never_panics_on_validly_signed_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        last in 0u64..10,
    ) {
        if let Ok(p) = verify(&signed(&bytes), "kid", &public_key(), HOST, last, NOW) {
            check_verified(&p, last, NOW);
        }
    }

    #[test]
    fn verify_never_panics_on_validly_signed_mutated_plans(
        edits in prop::collection::vec(edit(), 1..6),
        last in 0u64..10,
    ) {
        let text = String::from_utf8(good_payload()).unwrap();
        let mutated = apply_edits(&text, &edits);
        if let Ok(p) = verify(&signed(mutated.as_bytes()), "kid", &public_key(), HOST, last, NOW) {
            check_verified(&p, last, NOW);
        }
    }

    #[test]
    fn a_mutated_envelope_never_verifies(
        payload_flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..4),
        signature_flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..4),
        text_edits in prop::collection::vec(edit(), 0..3),
    ) {
        let good = good_payload();
        let env = signed(&good);
        prop_assert!(verify(&env, "kid", &public_key(), HOST, 0, NOW).is_ok());
        let mut payload = b64().decode(&env.payload).unwrap();
        let mut sig = b64().decode(&env.signature).unwrap();
        for (i, x) in &payload_flips {
            let p = i.index(payload.len());
            payload[p] ^= x;
        }
        for (i, x) in &signature_flips {
            let p = i.index(sig.len());
            sig[p] ^= x;
        }
        // Edits of the base64 text itself (padding, alphabet, length).
        let payload_text = apply_edits(&b64().encode(&payload), &text_edits);
        let tampered = PlanEnvelope {
            payload: payload_text.clone(),
            signature: b64().encode(&sig),
            key_id: "kid".into(),
        };
        let result = verify(&tampered, "kid", &public_key(), HOST, 0, NOW);
        let unchanged = b64().decode(&payload_text).ok().as_deref() == Some(&good[..])
            && sig == b64().decode(&env.signature).unwrap();
        if unchanged {
            prop_assert!(result.is_ok());
        } else {
            prop_assert_eq!(result.unwrap_err(), PlanError::BadSignature);
        }
    }
}
