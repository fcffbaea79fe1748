//! README command 1: the signed, verified driver package in `package/`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::{cross_build, host_tools, inf_stamp, pe_check, python_wheel, signing, windows_support};

/// Where the package is written.
pub fn package_dir(root: &Path) -> PathBuf {
    root.join("package")
}

/// Builds, checks, signs and assembles the package; returns the `.sys` path.
pub fn run(root: &Path) -> Result<PathBuf, String> {
    let started = Instant::now();
    host_tools::ensure(false)?;
    let image = cross_build::build(root)?;

    // The unsigned image must already be a well-formed driver.
    let unsigned = pe_check::check_file(&image, false)?;
    // Every import and the bound KMDF exist on the floor (windows-support.toml).
    windows_support::check_image_file(root, &image)?;
    let support = windows_support::SupportTable::load(root)?;
    let out = package_dir(root);
    std::fs::create_dir_all(&out).map_err(|error| format!("{}: {error}", out.display()))?;

    let certificate = signing::ensure_certificate(&signing::signing_dir(root))?;
    let sys = out.join("procguard.sys");
    signing::sign(&certificate, &image, &sys)?;
    let signed = pe_check::check_file(&sys, true)?;
    signing::verify(&certificate, &sys)?;
    signing::export_der(&certificate, &out.join("procguard.cer"))?;

    let pdb = image.with_extension("pdb");
    if pdb.exists() {
        std::fs::copy(&pdb, out.join("procguard.pdb"))
            .map_err(|error| format!("copy pdb: {error}"))?;
    }

    // The control tool, cross-built for Windows (mingw; see the script),
    // test-signed like the driver (Windows does not require it for an exe).
    let mut control_tool = std::process::Command::new("bash");
    control_tool.arg(
        root.join("crates")
            .join("procguardctl")
            .join("build-windows.sh"),
    );
    let status = control_tool
        .status()
        .map_err(|error| format!("build-windows.sh: {error}"))?;
    if !status.success() {
        return Err(format!(
            "building procguardctl.exe, procguard-smoke.exe and procguard-events.exe failed ({status})"
        ));
    }
    let exe = root.join("target/windows-user/x86_64-pc-windows-gnu/release/procguardctl.exe");
    signing::sign(&certificate, &exe, &out.join("procguardctl.exe"))?;
    signing::verify(&certificate, &out.join("procguardctl.exe"))?;
    // The VM smoke test (crates/procguard-smoke), built by the same script.
    let smoke = root.join("target/windows-user/x86_64-pc-windows-gnu/release/procguard-smoke.exe");
    signing::sign(&certificate, &smoke, &out.join("procguard-smoke.exe"))?;
    signing::verify(&certificate, &out.join("procguard-smoke.exe"))?;
    // The events service (crates/procguard-events, its message table linked
    // in), installed by `procguardctl service install` from this folder.
    let events =
        root.join("target/windows-user/x86_64-pc-windows-gnu/release/procguard-events.exe");
    signing::sign(&certificate, &events, &out.join("procguard-events.exe"))?;
    signing::verify(&certificate, &out.join("procguard-events.exe"))?;

    // The VM scripts (tests/vm, run from the package folder on the VM) and
    // the example policy Install-ProcGuard.ps1 -ApplyExamplePolicy applies.
    copy_vm_kit(root, &out)?;

    let template_path = root.join("inf").join("procguard.inx");
    let template = std::fs::read_to_string(&template_path)
        .map_err(|error| format!("{}: {error}", template_path.display()))?;
    let inf = inf_stamp::stamp(
        &template,
        &inf_stamp::today(),
        env!("CARGO_PKG_VERSION"),
        &support.bind.to_string(),
    )?;
    std::fs::write(out.join("procguard.inf"), inf)
        .map_err(|error| format!("write procguard.inf: {error}"))?;

    // The catalog of the signed image (its Authenticode hash excludes the
    // signature) and of the final INF, signed with the same certificate.
    signing::make_catalog(
        &certificate,
        &[&sys, &out.join("procguard.inf")],
        &out.join("procguard.cat"),
    )?;

    // The Python package (python/): `pip install procguard-*.whl` on the VM.
    let wheel = python_wheel::build(root, &out)?;

    println!("{signed}");
    println!(
        "xtask: package ready in {} ({} s): procguard.sys ({} bytes unsigned, {} signed), procguard.inf, procguard.cat, procguard.cer, procguardctl.exe, procguard-smoke.exe, procguard-events.exe, the VM scripts, protect-agent.toml and {}",
        out.display(),
        started.elapsed().as_secs(),
        unsigned.size,
        signed.size,
        wheel.file_name().unwrap_or_default().to_string_lossy()
    );
    Ok(sys)
}

/// Copies every `tests/vm/*.ps1` and the example policy
/// (`crates/procguardctl/examples/protect-agent.toml`) into the package.
fn copy_vm_kit(root: &Path, out: &Path) -> Result<(), String> {
    let scripts = root.join("tests").join("vm");
    let entries =
        std::fs::read_dir(&scripts).map_err(|error| format!("{}: {error}", scripts.display()))?;
    let mut copied = 0;
    for entry in entries {
        let path = entry
            .map_err(|error| format!("{}: {error}", scripts.display()))?
            .path();
        if path.extension().is_some_and(|extension| extension == "ps1") {
            if let Some(name) = path.file_name() {
                std::fs::copy(&path, out.join(name))
                    .map_err(|error| format!("copy {}: {error}", path.display()))?;
                copied += 1;
            }
        }
    }
    if copied == 0 {
        return Err(format!("no PowerShell scripts in {}", scripts.display()));
    }
    let policy = root
        .join("crates")
        .join("procguardctl")
        .join("examples")
        .join("protect-agent.toml");
    std::fs::copy(&policy, out.join("protect-agent.toml"))
        .map_err(|error| format!("copy {}: {error}", policy.display()))?;
    Ok(())
}
