//! Builds `sandpit-helper` (crates/sandpit-helper: standard library only)
//! into one static binary with rustc alone, for the driver to mount into
//! every sandbox whatever its image holds (a libc, a shell or neither).
//! glibc's static archive comes with the toolchain's usual libc6-dev, so
//! nothing is downloaded: no registry, no extra target.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let src = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("../sandpit-helper/src");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    let common = |crate_type: &str, name: &str| {
        let mut c = Command::new(&rustc);
        c.args(["--edition", "2021", "--crate-type", crate_type, "--crate-name", name, "--target", &target])
            .args(["-C", "opt-level=s", "-C", "target-feature=+crt-static", "-C", "strip=symbols"])
            .args(["-C", "panic=abort", "--cap-lints", "allow", "--out-dir"])
            .arg(&out);
        c
    };
    let run = |mut c: Command, what: &str| {
        let status = c.status().unwrap_or_else(|e| panic!("running rustc for {what}: {e}"));
        assert!(status.success(), "rustc failed building {what}");
    };
    let mut lib = common("rlib", "sandpit_helper");
    lib.arg(src.join("lib.rs"));
    run(lib, "sandpit-helper's library");
    let mut bin = common("bin", "sandpit_helper_static");
    bin.arg("--extern").arg(format!("sandpit_helper={}", out.join("libsandpit_helper.rlib").display()));
    bin.arg(src.join("main.rs"));
    run(bin, "sandpit-helper");
    // Names the installed binary, so that the daemon need not read the
    // embedded bytes to know whether the file on disk is this build's.
    let built = std::fs::read(out.join("sandpit_helper_static")).expect("rustc wrote the helper");
    let fnv = built.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    println!("cargo:rustc-env=SANDPIT_HELPER_HASH={fnv:016x}");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-changed=build.rs");
}
