//! Turns on a `cfg` for each suite that needs something a plain machine lacks, when its
//! variable is set (non-empty, not `0`), so those tests are compiled as ignored otherwise
//! and show up as `ignored` in the test summary instead of passing without running:
//! `BERTH_E2E` → `berth_e2e` (root: network namespaces), `BERTH_BROWSER` → `berth_browser`
//! (the console's tests in headless Chromium: chromium, chromium-driver), `BERTH_CONTRACT`
//! → `berth_contract` (Schemathesis from PyPI; the variable names its executable),
//! `BERTH_TEST_PG` → `berth_postgres` (every controller on a database of its own in the
//! PostgreSQL server whose socket directory the variable names; tests of what only the
//! SQLite store has are ignored then, and PostgreSQL's own tests run), `BERTH_TEST_S3` →
//! `berth_s3` (every controller on this machine keeps bundle blobs in a bucket of its own
//! in the S3-compatible server the variable names, e.g. moto's `http://127.0.0.1:5390`).

const SUITES: &[(&str, &str)] = &[
    ("BERTH_E2E", "berth_e2e"),
    ("BERTH_BROWSER", "berth_browser"),
    ("BERTH_CONTRACT", "berth_contract"),
    ("BERTH_TEST_PG", "berth_postgres"),
    ("BERTH_TEST_S3", "berth_s3"),
];

fn main() {
    for (var, cfg) in SUITES {
        println!("cargo::rerun-if-env-changed={var}");
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if std::env::var(var).is_ok_and(|v| !v.is_empty() && v != "0") {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
