//! The WDK build checked on Linux, where windows-drivers-rs does not build.
//!
//! - [`metadata_lists_wdk_build`]: wdk-sys's build script and wdk-build's
//!   cargo-make loader find `wdk-build` in `cargo metadata` run with default
//!   features; the driver's build-dependency must be visible there.
//! - [`run`]: `cargo check -p procguard --features wdk --target
//!   x86_64-pc-windows-msvc` with the cross build's toolchain, the published
//!   crates replaced (`[patch.crates-io]` given on the command line, a lock
//!   file of its own) by the stand-ins in `tests/wdk-typecheck`, whose items
//!   have the shapes the real ones generate (bindgen with wdk-build's settings
//!   over the mingw-w64 DDK headers, the real wdk-macros). A name, module or
//!   type that differs from wdk-sys fails here instead of on the first
//!   Windows build. Normal builds never see the patch.

use std::path::Path;
use std::process::Command;

use crate::cross_build::{debian_cargo, BUILD_STD, TARGET};

/// The stand-ins, by crate name (directory names under tests/wdk-typecheck).
const STAND_INS: &[&str] = &["wdk", "wdk-sys", "wdk-alloc", "wdk-panic", "wdk-build"];

/// Fails unless `cargo metadata` (default features) has a `wdk-build` package.
pub fn metadata_lists_wdk_build(root: &Path) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let output = Command::new(cargo)
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .map_err(|error| format!("cargo metadata: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    // Package ids look like "registry+https://...crates.io-index#wdk-build@0.6.0";
    // a declared but unresolved (optional, feature-gated) dependency has none.
    let json = String::from_utf8_lossy(&output.stdout);
    if json.contains("#wdk-build@") {
        println!("xtask: cargo metadata (default features) lists wdk-build");
        Ok(())
    } else {
        Err(
            "cargo metadata (default features) has no wdk-build package: wdk-sys's build \
             script and wdk-build's cargo-make loader would fail (\"cannot find wdk-build\"); \
             it must be a non-optional build-dependency of the driver"
                .to_string(),
        )
    }
}

/// Type-checks the driver's `wdk` feature against the stand-ins.
pub fn run(root: &Path) -> Result<(), String> {
    let work = root.join("target").join("wdk-typecheck");
    std::fs::create_dir_all(&work).map_err(|error| format!("{}: {error}", work.display()))?;
    // Its own lock file, seeded from the repository's so every other crate
    // keeps its locked version; the repository's Cargo.lock is not touched.
    let lock = work.join("Cargo.lock");
    std::fs::copy(root.join("Cargo.lock"), &lock)
        .map_err(|error| format!("copy Cargo.lock: {error}"))?;
    forget_wdk_macros_cache(&work)?;

    let stand_ins = root.join("tests").join("wdk-typecheck");
    let mut command = debian_cargo(root);
    command
        .args([
            "check",
            "--package",
            "procguard",
            "--features",
            "wdk",
            "--target",
            TARGET,
            "--message-format",
            "short",
        ])
        .args(BUILD_STD)
        .args(["-Zlockfile-path", "--config"])
        .arg(format!("resolver.lockfile-path={}", toml_string(&lock)))
        .arg("--target-dir")
        .arg(&work);
    for name in STAND_INS {
        command.arg("--config").arg(format!(
            "patch.crates-io.{name}.path={}",
            toml_string(&stand_ins.join(name))
        ));
    }
    println!("xtask: type-checking the WDK build (--features wdk) against tests/wdk-typecheck");
    let status = command
        .status()
        .map_err(|error| format!("/usr/bin/cargo: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "the WDK build does not type-check against wdk-sys's shapes ({status})"
        ))
    }
}

/// wdk-macros caches what it parsed from wdk-sys's types.rs in its `scratch`
/// directory for good; a stand-in that changed would be read stale.
fn forget_wdk_macros_cache(work: &Path) -> Result<(), String> {
    let Ok(builds) = std::fs::read_dir(work.join("debug").join("build")) else {
        return Ok(());
    };
    for build in builds.flatten() {
        let cache = build.path().join("out").join("wdk_macros_ast_fragments");
        if cache.is_dir() {
            std::fs::remove_dir_all(&cache)
                .map_err(|error| format!("{}: {error}", cache.display()))?;
        }
    }
    Ok(())
}

/// A path as a TOML basic string for `--config`.
fn toml_string(path: &Path) -> String {
    let text = path.display().to_string();
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}
