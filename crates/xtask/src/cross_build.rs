//! The Linux cross build of `procguard.sys`: the driver crate compiled for
//! `x86_64-pc-windows-msvc` with Debian's rustc-web (`-Zbuild-std`) and linked
//! by `lld-link-16` with the flags a KMDF driver gets from the WDK build.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Target triple of the driver.
pub const TARGET: &str = "x86_64-pc-windows-msvc";

/// Link flags: what `wdk-build` passes for a KMDF driver, with the entry
/// stub of `driver/src/fx_entry.rs`, plus what lld-link does not do the way
/// link.exe `/DRIVER` does (non-pageable sections, `P` = not paged in lld).
const LINK_ARGS: &[&str] = &[
    "/DRIVER",
    "/SUBSYSTEM:NATIVE",
    "/ENTRY:FxDriverEntry",
    "/NODEFAULTLIB",
    "/INTEGRITYCHECK",
    "/OPT:REF,ICF",
    "/SECTION:.text,ERP",
    "/SECTION:.rdata,RP",
    "/SECTION:.data,RWP",
    "/SECTION:.pdata,RP",
];

/// The `-Z` flags that build core and alloc for the target (no prebuilt
/// standard library for it in Debian's rustc-web).
pub const BUILD_STD: &[&str] = &[
    "-Zbuild-std=core,alloc,compiler_builtins",
    "-Zbuild-std-features=compiler-builtins-mem",
];

/// Debian's `cargo` (rustc-web) run in `root`, with nightly features allowed
/// and nothing of the rustup toolchain that runs xtask: `CARGO`, `RUSTC`,
/// wrappers, target directory and flags must not leak into the Debian one.
/// The cross build and the WDK type-check both run the driver through it.
pub fn debian_cargo(root: &Path) -> Command {
    let mut command = Command::new("/usr/bin/cargo");
    for variable in [
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTUP_TOOLCHAIN",
        "RUSTC_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
    ] {
        command.env_remove(variable);
    }
    command
        .current_dir(root)
        .env("RUSTC", "/usr/bin/rustc")
        .env("RUSTC_BOOTSTRAP", "1");
    command
}

/// Builds the driver; returns the linked image (not yet signed).
pub fn build(root: &Path) -> Result<PathBuf, String> {
    let mut rustflags = vec![
        "-C".to_string(),
        "target-feature=+crt-static".to_string(),
        "-C".to_string(),
        "panic=abort".to_string(),
        "-C".to_string(),
        "linker=lld-link-16".to_string(),
    ];
    for arg in LINK_ARGS {
        rustflags.push("-C".to_string());
        rustflags.push(format!("link-arg={arg}"));
    }
    let target_dir = root.join("target").join("cross");
    let mut command = debian_cargo(root);
    command
        .env("RUSTFLAGS", rustflags.join(" "))
        .args([
            "build",
            "--package",
            "procguard",
            "--release",
            "--target",
            TARGET,
        ])
        .args(BUILD_STD)
        .arg("--target-dir")
        .arg(&target_dir);
    println!("xtask: cross-building procguard.sys ({TARGET}, rustc-web, lld-link-16)");
    let status = command
        .status()
        .map_err(|error| format!("/usr/bin/cargo: {error}"))?;
    if !status.success() {
        return Err(format!("cross build failed ({status})"));
    }
    let image = target_dir
        .join(TARGET)
        .join("release")
        .join("procguard.dll");
    if image.exists() {
        Ok(image)
    } else {
        Err(format!("cross build produced no {}", image.display()))
    }
}
