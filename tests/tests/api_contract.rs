//! The API against its own OpenAPI document, fuzzed by Schemathesis (from PyPI) against a
//! live controller that holds a running cluster, enrolled hosts and stored bundles: with
//! an admin token, no answer is a server error and every answer matches the document
//! (status, content type, body — error `code`s included); without credentials, every
//! protected operation answers 401 (`tests/contract/hooks.py`).
//!
//! Needs Schemathesis: `.ci/run` installs it into a virtualenv and sets `BERTH_CONTRACT` to
//! its executable; otherwise these tests are ignored.
#![allow(clippy::unwrap_used)]

use berth_tests::*;
use std::process::Command;
use std::time::Duration;

/// Checks every answer is held to (Schemathesis names).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance";

/// A controller with something in it to read: two hosts, a running cluster, bundles.
fn populated() -> (Controller, Vec<Proc>) {
    let ctl = Controller::start(&[]);
    let agents = ctl.agents(&["m0", "n1"]);
    ctl.push_examples();
    let cf = ctl.clusterfile("c1", &["m0"], &["n1"], &["hello:v1", "hello-app:v1"], &[]);
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap(), "--wait"]);
    assert!(out.status.success(), "apply: {}", stderr(&out));
    (ctl, agents)
}

fn schemathesis(ctl: &Controller, token: Option<&str>, extra: &[&str]) -> (bool, String) {
    let exe = std::env::var("BERTH_CONTRACT").expect("BERTH_CONTRACT names schemathesis");
    let mut cmd = Command::new(exe);
    cmd.args([
        "run",
        &format!("{}/v1/openapi.json", ctl.url()),
        "--tls-verify",
        ctl.data_dir.join("pki/ca.crt").to_str().unwrap(),
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "25",
        "--workers",
        "2",
        "--seed",
        "1",
        "--request-timeout",
        "30",
        "--no-color",
    ])
    .args(extra)
    .env(
        "SCHEMATHESIS_HOOKS",
        "hooks", // tests/contract/hooks.py
    )
    .env("PYTHONPATH", repo_root().join("tests/contract"))
    .current_dir(ctl.dir.path());
    if let Some(t) = token {
        cmd.args(["--header", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.output().expect("run schemathesis");
    let text = format!("{}{}", stdout(&out), stderr(&out));
    (out.status.success(), text)
}

#[test]
#[cfg_attr(
    not(berth_contract),
    ignore = "needs Schemathesis: BERTH_CONTRACT=/path/to/schemathesis (.ci/run installs it)"
)]
fn the_api_keeps_its_openapi_contract_under_fuzzing() {
    let (ctl, _agents) = populated();
    let admin = ctl.admin_token();
    // The admin run changes things (tokens, tags, hosts deleted): after the unauthenticated
    // run, which must change nothing.
    let (ok, text) = schemathesis(
        &ctl,
        None,
        &["--checks", &format!("{CHECKS},refused_without_credentials")],
    );
    println!("{text}");
    assert!(ok, "without credentials:\n{text}");
    let still = ctl.status("c1");
    assert_eq!(still["phase"], "Running");
    let (ok, text) = schemathesis(&ctl, Some(&admin), &["--checks", CHECKS]);
    println!("{text}");
    assert!(ok, "with an admin token:\n{text}");
    // Still serving.
    let http = ctl.api_client().unwrap();
    let r = http
        .get(format!("{}/v1/healthz", ctl.url()))
        .timeout(Duration::from_secs(10))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// The route table's roles are what the controller enforces: a viewer token is refused
/// (403 `forbidden`) on every operator and admin route, an operator token on every admin
/// route — before anything about the request is looked at — and a route open to viewers
/// is not refused to one.
#[test]
fn every_route_refuses_a_role_below_its_own() {
    use berth_shared::routes::{Access, Method, ALL};
    let ctl = Controller::start(&[]);
    let token = |role: &str| {
        let out = ctl.cli(&["api-token", "create", "--name", role, "--role", role]);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).trim().to_string()
    };
    let (viewer, operator) = (token("viewer"), token("operator"));
    let http = ctl.api_client().unwrap();
    let call = |r: &berth_shared::routes::Route, tok: &str| {
        let params: Vec<&str> = r.params().iter().map(|_| "x").collect();
        let url = format!("{}{}", ctl.url(), r.url(&params));
        let req = match r.method {
            Method::Get => http.get(url),
            Method::Post => http.post(url),
            Method::Put => http.put(url),
            Method::Delete => http.delete(url),
        };
        let resp = req.bearer_auth(tok).body("{}").send().unwrap();
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().unwrap_or_default();
        (
            status,
            body["code"].as_str().unwrap_or_default().to_string(),
        )
    };
    let mut checked = 0;
    for r in ALL {
        let refused_to: &[&str] = match r.access {
            Access::Operator => &[viewer.as_str()],
            Access::Admin => &[viewer.as_str(), operator.as_str()],
            _ => &[],
        };
        for tok in refused_to {
            assert_eq!(
                call(r, tok),
                (403, "forbidden".to_string()),
                "{} {}",
                r.method.as_str(),
                r.path
            );
            checked += 1;
        }
        if r.access == Access::Viewer && r.method == Method::Get && r.id != "Backup" {
            let (status, code) = call(r, &viewer);
            assert!(
                status != 401 && status != 403,
                "{} refused a viewer: {status} {code}",
                r.path
            );
        }
    }
    assert!(checked > 20, "checked {checked} refusals");
    // The one role check inside a route: a status's output values are for admins.
    for tok in [&viewer, &operator] {
        let r = http
            .get(format!("{}/v1/clusters/x?show_outputs=true", ctl.url()))
            .bearer_auth(tok)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 403);
        let body: serde_json::Value = r.json().unwrap();
        assert_eq!(body["code"], "forbidden");
    }
}
