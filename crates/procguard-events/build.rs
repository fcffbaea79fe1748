//! Compiles the message table (`messages.mc`) into the Windows executable:
//! `x86_64-w64-mingw32-windmc` makes a resource script and the binary
//! table, `x86_64-w64-mingw32-windres` a COFF object holding the
//! `RT_MESSAGETABLE` resource, linked into the `procguard-events` binary.
//! Only when building for windows-gnu (crates/procguardctl/build-windows.sh,
//! which installs binutils-mingw-w64-x86-64); other targets need no table.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn tool(name: &str, args: &[&std::ffi::OsStr]) {
    let status = Command::new(name)
        .args(args)
        .status()
        .unwrap_or_else(|error| {
            panic!("{name} could not be run ({error}): install binutils-mingw-w64-x86-64")
        });
    assert!(status.success(), "{name} failed ({status})");
}

fn main() {
    println!("cargo:rerun-if-changed=messages.mc");
    println!("cargo:rerun-if-changed=build.rs");
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let target_env = env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os != "windows" || target_env != "gnu" {
        return;
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let mc = manifest.join("messages.mc");
    tool(
        "x86_64-w64-mingw32-windmc",
        &[
            "-h".as_ref(),
            out.as_os_str(),
            "-r".as_ref(),
            out.as_os_str(),
            mc.as_os_str(),
        ],
    );
    let object = out.join("messages.res.o");
    tool(
        "x86_64-w64-mingw32-windres",
        &[
            "-I".as_ref(),
            out.as_os_str(),
            "-i".as_ref(),
            out.join("messages.rc").as_os_str(),
            "-o".as_ref(),
            object.as_os_str(),
        ],
    );
    println!("cargo:rustc-link-arg-bins={}", object.display());
}
