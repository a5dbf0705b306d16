//! Turns on `cfg(berth_e2e)` when `BERTH_E2E` is set (non-empty, not `0`), so the root-only
//! network-namespace tests are compiled as ignored otherwise and show up as `ignored` in
//! the test summary instead of passing without running; `cfg(berth_browser)` likewise from
//! `BERTH_BROWSER` for the console's tests in headless Chromium (chromium, chromium-driver).

fn main() {
    for (var, cfg) in [
        ("BERTH_E2E", "berth_e2e"),
        ("BERTH_BROWSER", "berth_browser"),
    ] {
        println!("cargo::rerun-if-env-changed={var}");
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        let on = std::env::var(var).is_ok_and(|v| !v.is_empty() && v != "0");
        if on {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
