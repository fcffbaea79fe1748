//! The Debian packages the Linux build and tests need, installed on demand.
//!
//! A fresh Debian 12 machine has none of them. As root, missing ones are
//! installed with apt-get; otherwise the exact command is printed.

use std::path::Path;
use std::process::Command;

/// A file that must exist, and the Debian package that provides it.
struct Requirement {
    path: &'static str,
    package: &'static str,
    why: &'static str,
}

const BUILD: &[Requirement] = &[
    Requirement {
        path: "/usr/bin/rustc",
        package: "rustc-web",
        why: "rustc that can build core for the Windows target",
    },
    Requirement {
        path: "/usr/bin/cargo",
        package: "cargo-web",
        why: "the cargo of that rustc (-Zbuild-std)",
    },
    Requirement {
        path: "/usr/lib/rustlib/src/rust/library/core/Cargo.toml",
        package: "rust-web-src",
        why: "core/alloc sources for -Zbuild-std",
    },
    Requirement {
        path: "/usr/bin/lld-link-16",
        package: "lld-16",
        why: "the PE/COFF linker",
    },
    Requirement {
        path: "/usr/bin/osslsigncode",
        package: "osslsigncode",
        why: "Authenticode test signing",
    },
    Requirement {
        path: "/usr/bin/openssl",
        package: "openssl",
        why: "the test-signing certificate",
    },
];

const TEST: &[Requirement] = &[
    Requirement {
        path: "/usr/bin/x86_64-w64-mingw32-gcc",
        package: "gcc-mingw-w64-x86-64",
        why: "layout check compiler",
    },
    Requirement {
        path: "/usr/share/mingw-w64/include/ddk/ntddk.h",
        package: "mingw-w64-x86-64-dev",
        why: "DDK headers of the layout check",
    },
    Requirement {
        path: "/usr/lib/llvm-14/lib/libclang.so",
        package: "libclang-dev",
        why: "bindgen of the WDK type-check's wdk-sys stand-in",
    },
    Requirement {
        path: "/usr/bin/clang",
        package: "clang",
        why: "clang's own headers for that bindgen run",
    },
    Requirement {
        path: "/usr/lib/wine/wine64",
        package: "wine64",
        why: "runs procguardctl.exe and procguard-smoke.exe (tests/wine)",
    },
];

/// Installs whatever the build (and, with `for_tests`, the tests) lack.
pub fn ensure(for_tests: bool) -> Result<(), String> {
    let mut missing: Vec<&Requirement> = BUILD
        .iter()
        .filter(|req| !Path::new(req.path).exists())
        .collect();
    if for_tests {
        missing.extend(TEST.iter().filter(|req| !Path::new(req.path).exists()));
    }
    let mut packages: Vec<&str> = missing.iter().map(|req| req.package).collect();
    // The Python package's wheel (python/) is built with `python3 -m pip wheel`.
    if !python_has_pip() {
        packages.push("python3-pip");
    }
    if for_tests && !python_has_venv() {
        packages.push("python3-venv");
    }
    packages.sort_unstable();
    packages.dedup();
    if packages.is_empty() {
        return Ok(());
    }
    for req in &missing {
        println!(
            "xtask: missing {} ({}): package {}",
            req.path, req.why, req.package
        );
    }
    let install = format!(
        "apt-get install -y --no-install-recommends {}",
        packages.join(" ")
    );
    if !is_root() {
        return Err(format!("run as root: apt-get update && {install}"));
    }
    println!("xtask: installing {}", packages.join(" "));
    run_apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(packages.iter().copied());
    run_apt(&args)?;
    Ok(())
}

fn run_apt(args: &[&str]) -> Result<(), String> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(|error| format!("apt-get: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("apt-get {} failed ({status})", args.join(" ")))
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn python_has_venv() -> bool {
    Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .status()
        .is_ok_and(|status| status.success())
}

fn python_has_pip() -> bool {
    Command::new("python3")
        .args(["-m", "pip", "--version"])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}
