//! Turns on `cfg(berth_e2e)` when `BERTH_E2E` is set (non-empty, not `0`), so the root-only
//! network-namespace tests are compiled as ignored otherwise and show up as `ignored` in
//! the test summary instead of passing without running.

fn main() {
    println!("cargo::rerun-if-env-changed=BERTH_E2E");
    println!("cargo::rustc-check-cfg=cfg(berth_e2e)");
    let on = std::env::var("BERTH_E2E").is_ok_and(|v| !v.is_empty() && v != "0");
    if on {
        println!("cargo::rustc-cfg=berth_e2e");
    }
}
