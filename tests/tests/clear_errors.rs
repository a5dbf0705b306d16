//! Clear errors at the API's and CLI's edges (issue 22, finding 8): a refused upload says
//! why instead of "Broken pipe"; a JSON body over the limit is a 413 `too_large` over
//! HTTP/1.1 and HTTP/2 alike.
#![allow(clippy::unwrap_used)]

use berth_tests::*;
use serde_json::Value;

/// 2 MiB of JSON to an admin call, over HTTP/2 and HTTP/1.1: an answer, 413, with the
/// stable code and the limit in the message — never a reset stream.
#[test]
fn a_json_body_over_the_limit_is_413_on_http2_and_http1() {
    let ctl = Controller::start(&[]);
    let body =
        serde_json::json!({"name": "big", "role": "viewer", "description": "x".repeat(2 << 20)})
            .to_string();
    for (proto, c) in [
        ("h2", client_h2(&ctl.ca_pem(), None).unwrap()),
        ("http/1.1", client(&ctl.ca_pem(), None).unwrap()),
    ] {
        for i in 0..6 {
            // With a length, and streamed without one (the server finds out as it reads).
            let b = if i % 2 == 0 {
                reqwest::blocking::Body::from(body.clone())
            } else {
                reqwest::blocking::Body::new(std::io::Cursor::new(body.clone().into_bytes()))
            };
            let r = c
                .post(format!("{}/v1/api-tokens", ctl.url()))
                .bearer_auth(ctl.admin_token())
                .header("content-type", "application/json")
                .body(b)
                .send()
                .unwrap_or_else(|e| panic!("{proto}: no answer: {e:?}"));
            let version = r.version();
            assert_eq!(r.status().as_u16(), 413, "{proto}");
            let v: Value = r.json().unwrap();
            assert_eq!(v["code"], "too_large", "{proto} {v}");
            assert_eq!(
                v["message"],
                "the request body is larger than 1048576 bytes (1 MiB), the most this API accepts",
                "{proto}"
            );
            if proto == "h2" {
                assert_eq!(version, reqwest::Version::HTTP_2);
            }
        }
    }
}

/// `agent-binary add` with a token whose role may not: the controller's 403, not a
/// broken pipe, every time (it refuses before reading the 100+ MiB body).
#[test]
fn a_refused_upload_says_why_not_broken_pipe() {
    let ctl = Controller::start(&[]);
    let viewer = stdout(&ctl.cli(&["api-token", "create", "--name", "v", "--role", "viewer"]));
    for _ in 0..3 {
        let out = ctl
            .cli_command(&[
                "agent-binary",
                "add",
                agent_bin().to_str().unwrap(),
                "--arch",
                "x86_64",
            ])
            .env("BERTH_TOKEN", viewer.trim())
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(!out.status.success());
        assert!(
            err.contains("token `v` has role viewer; this needs admin or higher (forbidden)"),
            "{err}"
        );
        assert!(!err.contains("Broken pipe"), "{err}");
    }
}
