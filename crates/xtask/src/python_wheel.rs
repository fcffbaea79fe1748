//! The Python package's wheel (`python/`, built by its PEP 517 backend,
//! flit_core, through `pip wheel`) into the package folder.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `procguard-<version>-py3-none-any.whl` from `python/` into `out`
/// (older procguard wheels there are removed first); returns its path.
///
/// `pip wheel` fetches the build backend from PyPI into an isolated build
/// environment, so nothing is installed into the system Python.
pub fn build(root: &Path, out: &Path) -> Result<PathBuf, String> {
    let entries = std::fs::read_dir(out).map_err(|error| format!("{}: {error}", out.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("procguard-") && name.ends_with(".whl") {
            std::fs::remove_file(entry.path())
                .map_err(|error| format!("remove {name}: {error}"))?;
        }
    }
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            "--wheel-dir",
        ])
        .arg(out)
        .arg(root.join("python"))
        .status()
        .map_err(|error| format!("python3 -m pip wheel: {error}"))?;
    if !status.success() {
        return Err(format!(
            "building the Python wheel failed ({status}): python3 -m pip wheel --no-deps -w package python/"
        ));
    }
    std::fs::read_dir(out)
        .map_err(|error| format!("{}: {error}", out.display()))?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("procguard-") && name.ends_with(".whl"))
        })
        .ok_or_else(|| format!("pip wheel wrote no procguard wheel into {}", out.display()))
}
