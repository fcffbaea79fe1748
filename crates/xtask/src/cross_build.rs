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
    let mut command = Command::new("/usr/bin/cargo");
    // The rustup toolchain that runs xtask must not leak into the Debian one.
    for variable in [
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTUP_TOOLCHAIN",
        "RUSTC_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_ENCODED_RUSTFLAGS",
    ] {
        command.env_remove(variable);
    }
    command
        .current_dir(root)
        .env("RUSTC", "/usr/bin/rustc")
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTFLAGS", rustflags.join(" "))
        .args([
            "build",
            "--package",
            "procguard",
            "--release",
            "--target",
            TARGET,
        ])
        .args([
            "-Zbuild-std=core,alloc,compiler_builtins",
            "-Zbuild-std-features=compiler-builtins-mem",
        ])
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
