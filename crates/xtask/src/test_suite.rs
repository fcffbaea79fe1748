//! README command 2: every test layer, fast to real, with a summary.
//!
//! 1. formatting, lints (`clippy -D warnings`) and docs of every host crate;
//! 2. host tests (`cargo test --workspace`: policy engine, driver logic with
//!    kernel test doubles, layout check against the mingw DDK, xtask);
//!    bounded fuzzing sessions of the policy blob decoder and of the driver's
//!    IOCTL dispatcher, the policy
//!    benchmarks checked against their targets, and the loom model checks of
//!    the driver's lock-free protocols;
//! 3. the WDK build: `wdk-build` visible to `cargo metadata`, and the driver's
//!    `wdk` feature type-checked against stand-ins of the windows-drivers-rs
//!    crates (`tests/wdk-typecheck`);
//! 4. the package (README command 1: build, structural checks, signature);
//! 5. pytest: structural tests of the package (`tests/package`) and the
//!    emulator suite, the packaged `.sys` run in Speakeasy (`tests/emulator`);
//!    the packaged `.exe` programs run under Wine (`tests/wine`);
//! 6. the Python package's suite (`python/tests`: wire format against the
//!    Rust golden files, the API against an in-memory driver) and the fleet
//!    formats (`tests/fleet`: the metrics text read by a Prometheus parser),
//!    run after the host tests.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::{host_tools, package, wdk_typecheck};

struct Step {
    name: &'static str,
    seconds: u64,
    result: Result<(), String>,
}

fn cargo(root: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string()));
    command.current_dir(root).args(args);
    command
}

fn status_of(mut command: Command, what: &str) -> Result<(), String> {
    let status = command
        .status()
        .map_err(|error| format!("{what}: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

/// `python -m pytest PATHS -q -p no:cacheprovider` in the test virtualenv,
/// run from the repository root.
fn pytest_command(root: &Path, paths: &[&str]) -> Result<Command, String> {
    let mut pytest = Command::new(python_env(root)?);
    pytest
        .current_dir(root)
        .args(["-m", "pytest"])
        .args(paths)
        .args(["-q", "-p", "no:cacheprovider"]);
    Ok(pytest)
}

fn python_env(root: &Path) -> Result<std::path::PathBuf, String> {
    let venv = root.join(".venv");
    let python = venv.join("bin").join("python");
    if !python.exists() {
        println!("xtask: creating the test virtualenv in {}", venv.display());
        let mut create = Command::new("python3");
        create.args(["-m", "venv"]).arg(&venv);
        status_of(create, "python3 -m venv")?;
    }
    let requirements = root.join("tests").join("emulator").join("requirements.txt");
    let mut install = Command::new(&python);
    install
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements);
    status_of(install, "pip install (tests/emulator/requirements.txt)")?;
    Ok(python)
}

/// A bounded `cargo fuzz` session (the crate's `run-fuzz.sh`). libFuzzer
/// prints a line per new input: the log goes to `target/`, its end here.
fn fuzz(root: &Path, crate_name: &str, seconds: &str) -> Result<(), String> {
    let logs = root.join("target");
    std::fs::create_dir_all(&logs).map_err(|error| error.to_string())?;
    let log = logs.join(format!("fuzz-{crate_name}.log"));
    let file =
        std::fs::File::create(&log).map_err(|error| format!("{}: {error}", log.display()))?;
    let mut fuzz = Command::new("bash");
    fuzz.arg(root.join("crates").join(crate_name).join("run-fuzz.sh"))
        .arg(seconds);
    fuzz.stdout(file.try_clone().map_err(|error| error.to_string())?)
        .stderr(file);
    let result = status_of(fuzz, "run-fuzz.sh");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let shown = if result.is_ok() { 8 } else { 200 };
    for line in &lines[lines.len().saturating_sub(shown)..] {
        println!("{line}");
    }
    println!("xtask: full fuzzing log: {}", log.display());
    result
}

/// Runs every layer; fails if any step failed (all steps run regardless).
pub fn run(root: &Path) -> Result<(), String> {
    let mut steps: Vec<Step> = Vec::new();
    let mut step = |name: &'static str, body: &mut dyn FnMut() -> Result<(), String>| {
        println!("\n==== {name}");
        let started = Instant::now();
        let result = body();
        if let Err(message) = &result {
            println!("xtask: {name}: {message}");
        }
        steps.push(Step {
            name,
            seconds: started.elapsed().as_secs(),
            result,
        });
    };

    step("install test tools", &mut || host_tools::ensure(true));
    step("cargo fmt --check", &mut || {
        status_of(cargo(root, &["fmt", "--all", "--check"]), "cargo fmt")
    });
    step("cargo clippy -D warnings", &mut || {
        status_of(
            cargo(
                root,
                &[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ],
            ),
            "cargo clippy",
        )
    });
    step("cargo doc -D warnings", &mut || {
        let mut doc = cargo(root, &["doc", "--workspace", "--no-deps"]);
        doc.env("RUSTDOCFLAGS", "-D warnings");
        status_of(doc, "cargo doc")
    });
    let layout_json = root.join("target").join("layout").join("wdf-layout.json");
    step("host tests (cargo test --workspace)", &mut || {
        if let Some(parent) = layout_json.parent() {
            std::fs::create_dir_all(parent).map_err(|error| error.to_string())?;
        }
        let mut test = cargo(root, &["test", "--workspace"]);
        test.env("PROCGUARD_LAYOUT_JSON", &layout_json);
        status_of(test, "cargo test")
    });
    step(
        "Python package and fleet formats (pytest python/tests tests/fleet)",
        &mut || {
            status_of(
                pytest_command(root, &["python/tests", "tests/fleet"])?,
                "pytest python/tests tests/fleet",
            )
        },
    );
    let policy_crate = root.join("crates").join("procguard-policy");
    for (name, script, seconds) in [
        (
            "fuzzing: policy blob decoder (cargo fuzz, 30 s)",
            "procguard-policy",
            "30",
        ),
        (
            "fuzzing: driver IOCTL dispatcher (cargo fuzz, 20 s)",
            "procguard-protocol",
            "20",
        ),
    ] {
        step(name, &mut || fuzz(root, script, seconds));
    }
    step(
        "policy benchmarks against the issue targets (criterion)",
        &mut || {
            // Timing on a shared machine is noisy: one re-run before failing.
            let run = || {
                let mut bench = Command::new("bash");
                bench.arg(policy_crate.join("check-bench.sh"));
                status_of(bench, "check-bench.sh")
            };
            run().or_else(|first| {
                println!("xtask: {first}; running the benchmarks once more");
                run()
            })
        },
    );
    step("loom model checks of the lock-free protocols", &mut || {
        let mut loom = cargo(
            root,
            &[
                "test",
                "--package",
                "procguard",
                "--release",
                "--lib",
                "loom_tests",
                "--target-dir",
            ],
        );
        loom.arg(root.join("target").join("loom"));
        loom.env("RUSTFLAGS", "--cfg loom")
            .env("LOOM_MAX_PREEMPTIONS", "3");
        status_of(loom, "cargo test (loom)")
    });
    step("wdk-build visible to cargo metadata", &mut || {
        wdk_typecheck::metadata_lists_wdk_build(root)
    });
    step("WDK build type-check (stand-in wdk crates)", &mut || {
        wdk_typecheck::run(root)
    });
    let mut sys = None;
    step("package (README command 1)", &mut || {
        package::run(root).map(|path| sys = Some(path))
    });
    step(
        "package checks and emulator suite (pytest, Speakeasy)",
        &mut || {
            let mut pytest = pytest_command(root, &["tests/package", "tests/emulator"])?;
            pytest.env("PROCGUARD_LAYOUT_JSON", &layout_json);
            if let Some(path) = &sys {
                pytest.env("PROCGUARD_SYS", path);
            }
            status_of(pytest, "pytest tests/emulator")
        },
    );
    step(
        "Windows programs under Wine (pytest tests/wine)",
        &mut || status_of(pytest_command(root, &["tests/wine"])?, "pytest tests/wine"),
    );

    println!("\n==== summary");
    for Step {
        name,
        seconds,
        result,
    } in &steps
    {
        let verdict = if result.is_ok() { "ok" } else { "FAILED" };
        println!("{verdict:>6}  {seconds:>4} s  {name}");
    }
    let failed: Vec<&str> = steps
        .iter()
        .filter(|step| step.result.is_err())
        .map(|step| step.name)
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("failed: {}", failed.join(", ")))
    }
}
