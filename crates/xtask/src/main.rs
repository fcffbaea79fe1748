//! Linux entry points of the procguard build (README commands 1 and 2).
//!
//! - `cargo xtask package`: installs the Debian packages the cross build
//!   needs, cross-builds `procguard.sys`, checks its structure, test-signs it
//!   and writes the package folder (`package/`).
//! - `cargo xtask test`: everything `package` does, then formatting, lints,
//!   docs, host tests and the emulator suite.
//! - `cargo xtask wdk-typecheck`: the WDK build's two Linux checks alone
//!   (`wdk-build` in `cargo metadata`; `--features wdk` type-checked against
//!   the stand-ins in `tests/wdk-typecheck`).
//! - `cargo xtask check-pe [--signed] FILE`: the structural checks alone.
//! - `cargo xtask compile-policy POLICY.toml OUT.bin`: a TOML policy to the
//!   blob the driver reads (errors with line and column; lint warnings).
//! - `cargo xtask catalog OUT.cat FILE...`: a signed catalog of the files
//!   (what `package` writes as `procguard.cat`).
//!
//! On Windows with the WDK, `cargo make` (Makefile.toml) is the entry point.

mod catalog;
mod compile_policy;
mod cross_build;
mod host_tools;
mod inf_stamp;
#[cfg(test)]
mod module_layers;
mod package;
mod pe_check;
mod python_wheel;
mod signing;
mod test_suite;
mod wdk_typecheck;
mod windows_support;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The workspace root (two levels above this crate).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

const USAGE: &str =
    "usage: cargo xtask <package | test | wdk-typecheck | check-pe [--signed] FILE (structure; unsigned: also the supported-Windows matrix) | compile-policy POLICY.toml OUT.bin | catalog OUT.cat FILE...>";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = repo_root();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["package"] => package::run(&root).map(|_| ()),
        ["test"] => test_suite::run(&root),
        ["wdk-typecheck"] => {
            wdk_typecheck::metadata_lists_wdk_build(&root).and_then(|()| wdk_typecheck::run(&root))
        }
        ["check-pe", file] => {
            let structure =
                pe_check::check_file(Path::new(file), false).map(|report| println!("{report}"));
            let matrix = windows_support::check_image_file(&root, Path::new(file));
            let errors: Vec<String> = [structure, matrix]
                .into_iter()
                .filter_map(Result::err)
                .collect();
            if errors.is_empty() {
                Ok(())
            } else {
                Err(errors.join("\n"))
            }
        }
        ["check-pe", "--signed", file] => {
            pe_check::check_file(Path::new(file), true).map(|report| println!("{report}"))
        }
        ["compile-policy", input, output] => {
            compile_policy::run(Path::new(input), Path::new(output))
        }
        ["catalog", output, files @ ..] if !files.is_empty() => {
            let files: Vec<&Path> = files.iter().map(Path::new).collect();
            signing::ensure_certificate(&signing::signing_dir(&root)).and_then(|certificate| {
                signing::make_catalog(&certificate, &files, Path::new(output))
            })
        }
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}
