//! One smoke run, step by step, over a [`Platform`]: save the policy in
//! force, start the target copy, apply the smoke policy, open the target as
//! a restricted and as an exempt requester, read the audit records, remove
//! the policy and open again, then restore the saved policy, stop the target
//! and delete the temporary directory, whatever failed before.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use procguard_policy::ObjectKind;

use crate::events::{check_no_records, check_records, parse_events, ExpectedRecord};
use crate::platform::{CtlOutput, Platform, Target};
use crate::policy::{empty_policy, smoke_policy, EXEMPT_NAME, RULE_NAME, TARGET_NAME};
use crate::probe::{observe, parse_probe, Outcome};
use crate::report::{evaluate_opens, exit_code, render_table, Expect, Row, EXIT_CANNOT_START};
use crate::rights::{self, strip_mask, RightOfInterest, PROCESS_ALL_ACCESS, RIGHTS};

/// The control tool's file name, looked for beside the smoke executable.
pub const CTL_NAME: &str = "procguardctl.exe";
/// `ERROR_ACCESS_DENIED`.
pub const ERROR_ACCESS_DENIED: u32 = 5;

/// How to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    /// procguardctl.exe; default: [`CTL_NAME`] beside the running executable.
    pub ctl: Option<PathBuf>,
    /// Keep the temporary directory (policies, copies) after the run.
    pub keep_temp: bool,
    /// Where the temporary directory is made.
    pub temp_root: PathBuf,
}

/// What the run set up before changing anything.
struct Prepared {
    ctl: PathBuf,
    dir: PathBuf,
    saved: PathBuf,
    exempt: PathBuf,
    target: Target,
    smoke_pid: u32,
}

fn progress(err: &mut dyn Write, message: &str) {
    let _ = writeln!(err, "procguard-smoke: {message}");
}

fn ctl(
    platform: &mut dyn Platform,
    ctl: &Path,
    args: &[&std::ffi::OsStr],
) -> Result<CtlOutput, String> {
    let args: Vec<OsString> = args.iter().map(|&a| a.to_owned()).collect();
    platform
        .procguardctl(ctl, &args)
        .map_err(|e| format!("cannot run {}: {e}", ctl.display()))
}

/// A fresh directory under `root`, named after `pid`.
fn make_temp_dir(root: &Path, pid: u32) -> Result<PathBuf, String> {
    let mut last = String::new();
    for attempt in 0..16 {
        let name = if attempt == 0 {
            format!("procguard-smoke-{pid}")
        } else {
            format!("procguard-smoke-{pid}-{attempt}")
        };
        let dir = root.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) => last = format!("{}: {e}", dir.display()),
        }
    }
    Err(format!("cannot make a temporary directory: {last}"))
}

/// Deletes `dir`, retrying for a while: Windows keeps an image file locked
/// for a moment after its process has exited.
fn remove_dir(dir: &Path) -> Result<(), String> {
    let mut last = None;
    for _ in 0..25 {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(last.map_or_else(String::new, |e| e.to_string()))
}

/// Checks that the run can start, saves the policy in force, makes the
/// temporary directory, the two copies and starts the target. Changes
/// nothing in the driver; on failure removes what it made.
fn prepare(
    platform: &mut dyn Platform,
    options: &RunOptions,
    err: &mut dyn Write,
) -> Result<Prepared, String> {
    match platform.is_elevated() {
        Ok(true) => {}
        Ok(false) => {
            return Err(
                "not elevated: run procguard-smoke from an Administrator command prompt".to_owned(),
            )
        }
        Err(e) => return Err(format!("cannot tell whether this process is elevated: {e}")),
    }
    let exe = platform.current_exe()?;
    let ctl_path = options
        .ctl
        .clone()
        .unwrap_or_else(|| exe.with_file_name(CTL_NAME));
    if !ctl_path.is_file() {
        return Err(format!(
            "{} not found: put {CTL_NAME} beside procguard-smoke.exe or pass --ctl PATH",
            ctl_path.display()
        ));
    }
    let status = ctl(platform, &ctl_path, &["status".as_ref()])?;
    if !status.success() {
        return Err(format!(
            "the procguard driver cannot be reached (procguardctl status: {})",
            status.summary()
        ));
    }
    progress(err, "the driver answers (procguardctl status)");
    let shown = ctl(platform, &ctl_path, &["policy".as_ref(), "show".as_ref()])?;
    if !shown.success() {
        return Err(format!(
            "cannot read the policy in force (procguardctl policy show: {})",
            shown.summary()
        ));
    }
    let smoke_pid = platform.current_pid();
    let dir = make_temp_dir(&options.temp_root, smoke_pid)?;
    let result = populate(platform, &exe, &dir, &shown.stdout, err);
    match result {
        Ok((saved, exempt, target)) => Ok(Prepared {
            ctl: ctl_path,
            dir,
            saved,
            exempt,
            target,
            smoke_pid,
        }),
        Err(message) => {
            let _ = remove_dir(&dir);
            Err(message)
        }
    }
}

/// Writes the saved policy, copies the executable twice, starts the target.
fn populate(
    platform: &mut dyn Platform,
    exe: &Path,
    dir: &Path,
    policy_in_force: &str,
    err: &mut dyn Write,
) -> Result<(PathBuf, PathBuf, Target), String> {
    let saved = dir.join("saved-policy.toml");
    std::fs::write(&saved, policy_in_force)
        .map_err(|e| format!("cannot write {}: {e}", saved.display()))?;
    progress(
        err,
        &format!(
            "saved the policy in force to {} (if this run is interrupted, restore it with: procguardctl apply \"{}\")",
            saved.display(),
            saved.display()
        ),
    );
    let target_exe = dir.join(TARGET_NAME);
    let exempt = dir.join(EXEMPT_NAME);
    for copy in [&target_exe, &exempt] {
        std::fs::copy(exe, copy)
            .map_err(|e| format!("cannot copy {} to {}: {e}", exe.display(), copy.display()))?;
    }
    let target = platform
        .start_target(&target_exe)
        .map_err(|e| format!("cannot start {}: {e}", target_exe.display()))?;
    progress(
        err,
        &format!(
            "target {TARGET_NAME} running: pid {}, main thread {}",
            target.pid, target.tid
        ),
    );
    Ok((saved, exempt, target))
}

/// Writes `text` to `file`, applies it; one row. Returns whether it applied.
fn apply(
    platform: &mut dyn Platform,
    prepared: &Prepared,
    file: &Path,
    text: Option<&str>,
    check: &str,
    rows: &mut Vec<Row>,
) -> bool {
    let written = text.map_or(Ok(()), |text| {
        std::fs::write(file, text).map_err(|e| format!("cannot write {}: {e}", file.display()))
    });
    let observed = written
        .and_then(|()| {
            ctl(
                platform,
                &prepared.ctl,
                &["apply".as_ref(), file.as_os_str()],
            )
        })
        .map_or_else(
            |e| e,
            |output| {
                if output.success() {
                    "applied".to_owned()
                } else {
                    output.summary()
                }
            },
        );
    let pass = observed == "applied";
    rows.push(Row::new(check, "applied", observed, pass));
    pass
}

fn by_policy(right: &RightOfInterest) -> Expect {
    if right.stripped {
        Expect::Stripped
    } else {
        Expect::Kept
    }
}

/// The checks, with the smoke policy in force and then with no rules.
fn exercise(
    platform: &mut dyn Platform,
    prepared: &Prepared,
    rows: &mut Vec<Row>,
    err: &mut dyn Write,
) {
    let smoke_file = prepared.dir.join("smoke-policy.toml");
    let policy = smoke_policy();
    if !apply(
        platform,
        prepared,
        &smoke_file,
        Some(&policy),
        "setup: apply the smoke policy",
        rows,
    ) {
        return;
    }
    let target = prepared.target;
    progress(
        err,
        "smoke policy in force: opening the target as a restricted requester",
    );
    let observations = observe(|object, access| platform.open(object, &target, access));
    rows.extend(evaluate_opens("smoke requester", &observations, by_policy));

    progress(err, &format!("running {EXEMPT_NAME} --probe"));
    let probe = platform
        .run_probe(&prepared.exempt, &target)
        .and_then(|text| parse_probe(&text));
    let exempt_pid = match probe {
        Ok(report) => {
            rows.extend(evaluate_opens(
                "exempt requester",
                &report.observations,
                |_| Expect::Kept,
            ));
            Some(report.pid)
        }
        Err(e) => {
            rows.push(Row::new(
                "exempt requester: probe report",
                "complete",
                e,
                false,
            ));
            None
        }
    };

    let attempt = platform.try_terminate(&target);
    rows.extend(terminate_rows(attempt.open, attempt.terminate));
    let alive = platform.target_alive(&target);
    rows.push(Row::new(
        "smoke requester: target alive after TerminateProcess",
        "running",
        if alive { "running" } else { "exited" },
        alive,
    ));

    audit_rows(
        platform,
        prepared,
        &observations,
        attempt.open,
        exempt_pid,
        rows,
    );

    let empty_file = prepared.dir.join("no-rules.toml");
    if apply(
        platform,
        prepared,
        &empty_file,
        Some(&empty_policy()),
        "setup: apply a policy with no rules",
        rows,
    ) {
        progress(err, "no rules in force: opening the target again");
        let observations = observe(|object, access| platform.open(object, &target, access));
        rows.extend(evaluate_opens("no rules", &observations, |_| Expect::Kept));
    }
}

/// The `PROCESS_ALL_ACCESS` handle's access and `TerminateProcess` on it.
fn terminate_rows(open: Outcome, terminate: Option<Result<(), u32>>) -> [Row; 2] {
    let left = PROCESS_ALL_ACCESS & !strip_mask(ObjectKind::Process);
    let (observed, pass) = match open {
        Outcome::Granted(granted) => (
            format!("granted {granted:#x}"),
            granted & PROCESS_ALL_ACCESS == left,
        ),
        other => (other.to_string(), false),
    };
    let handle = Row::new(
        "smoke requester: process PROCESS_ALL_ACCESS",
        format!("granted {left:#x}"),
        observed,
        pass,
    );
    let (observed, pass) = match terminate {
        None => ("not tried: no handle".to_owned(), false),
        Some(Ok(())) => ("succeeded".to_owned(), false),
        Some(Err(code)) => (format!("failed: error {code}"), code == ERROR_ACCESS_DENIED),
    };
    let kill = Row::new(
        "smoke requester: TerminateProcess on it",
        format!("failed: error {ERROR_ACCESS_DENIED}"),
        observed,
        pass,
    );
    [handle, kill]
}

/// Reads the audit records and checks one per stripped open.
fn audit_rows(
    platform: &mut dyn Platform,
    prepared: &Prepared,
    observations: &[crate::probe::Observation],
    all_access: Outcome,
    exempt_pid: Option<u32>,
    rows: &mut Vec<Row>,
) {
    let check = "audit: procguardctl events --json";
    let output = match ctl(
        platform,
        &prepared.ctl,
        &["events".as_ref(), "--json".as_ref()],
    ) {
        Ok(output) if output.success() => output,
        Ok(output) => {
            rows.push(Row::new(check, "records", output.summary(), false));
            return;
        }
        Err(e) => {
            rows.push(Row::new(check, "records", e, false));
            return;
        }
    };
    let (events, problems) = parse_events(&output.stdout);
    let observed = match problems.first() {
        None => format!("{} records", events.len()),
        Some(first) => format!(
            "{} records, {} bad lines ({first})",
            events.len(),
            problems.len()
        ),
    };
    rows.push(Row::new(check, "records", observed, problems.is_empty()));
    let target = prepared.target;
    let expected_record = |label: String, object: ObjectKind, requested: u32| ExpectedRecord {
        label,
        object,
        target_pid: target.pid,
        thread_id: if object == ObjectKind::Thread {
            target.tid
        } else {
            0
        },
        source_pid: prepared.smoke_pid,
        requested,
    };
    let mut expected: Vec<ExpectedRecord> = RIGHTS
        .iter()
        .filter(|r| r.stripped)
        .filter(|r| {
            // A failed open never reached the callback: its row already fails.
            !observations
                .iter()
                .any(|o| o.right == *r && matches!(o.outcome, Outcome::OpenFailed(_)))
        })
        .map(|r| {
            expected_record(
                format!("{} {}", rights::object_word(r.object), r.name),
                r.object,
                r.mask,
            )
        })
        .collect();
    if !matches!(all_access, Outcome::OpenFailed(_)) {
        expected.push(expected_record(
            "process PROCESS_ALL_ACCESS".to_owned(),
            ObjectKind::Process,
            PROCESS_ALL_ACCESS,
        ));
    }
    rows.extend(check_records(&events, &expected, RULE_NAME));
    rows.push(check_no_records(
        &events,
        "audit: no record for the rights the policy keeps",
        prepared.smoke_pid,
        target.pid,
        true,
    ));
    if let Some(pid) = exempt_pid {
        rows.push(check_no_records(
            &events,
            "audit: no record for the exempt requester",
            pid,
            target.pid,
            false,
        ));
    }
}

/// Restores the saved policy, stops the target, deletes the directory
/// (kept when asked, or when the restore failed: it holds the saved policy).
fn teardown(
    platform: &mut dyn Platform,
    prepared: &Prepared,
    keep: bool,
    rows: &mut Vec<Row>,
    err: &mut dyn Write,
) {
    let restored = apply(
        platform,
        prepared,
        &prepared.saved,
        None,
        "teardown: restore the saved policy",
        rows,
    );
    if !restored {
        progress(
            err,
            &format!(
                "the saved policy was NOT restored: restore it with: procguardctl apply \"{}\"",
                prepared.saved.display()
            ),
        );
    }
    let stopped = platform.stop_target(&prepared.target);
    let pass = stopped.is_ok();
    rows.push(Row::new(
        "teardown: stop the target",
        "stopped",
        stopped.map_or_else(|e| e, |()| "stopped".to_owned()),
        pass,
    ));
    if keep || !restored {
        progress(
            err,
            &format!("kept the temporary directory {}", prepared.dir.display()),
        );
    } else if let Err(e) = remove_dir(&prepared.dir) {
        progress(
            err,
            &format!("warning: cannot delete {}: {e}", prepared.dir.display()),
        );
    }
}

/// Runs the smoke test; prints the table on `out`, progress on `err`.
/// Returns the exit code: 0 every check passed, 1 one failed, 2 the run
/// could not start (nothing was changed).
pub fn run_smoke(
    platform: &mut dyn Platform,
    options: &RunOptions,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let prepared = match prepare(platform, options, err) {
        Ok(prepared) => prepared,
        Err(message) => {
            progress(err, &format!("cannot start: {message}"));
            return EXIT_CANNOT_START;
        }
    };
    let mut rows = Vec::new();
    exercise(platform, &prepared, &mut rows, err);
    teardown(platform, &prepared, options.keep_temp, &mut rows, err);
    let _ = out.write_all(render_table(&rows).as_bytes());
    let _ = out.flush();
    exit_code(&rows)
}
