//! Whole smoke runs on the host: the real procguardctl (`procguardctl::run`,
//! in-process) over its fake device (the driver's own dispatcher and policy
//! engine), handle opens decided by that fake driver's policy as the
//! callback would, and drivers or tools that misbehave. Each test checks the
//! exit code, the rows, and that the policy in force before the run is the
//! one in force after it.

use std::cell::RefCell;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use procguard_policy::toml::parse_policy;
use procguard_policy::{decode, encode, ObjectKind, Operation, ProcessIdentity};
use procguard_smoke::platform::{CtlOutput, Platform, Target, TerminateAttempt};
use procguard_smoke::probe::{observe, render_probe, Outcome};
use procguard_smoke::rights::{PROCESS_ALL_ACCESS, RIGHTS};
use procguard_smoke::{run, run_smoke, RunOptions};
use procguardctl::device::{Device, DeviceError};
use procguardctl::fake_device::{FakeDevice, SimulatedRequest};

const SMOKE_PID: u32 = 5000;
const SMOKE_TID: u32 = 5004;
const EXEMPT_PID: u32 = 6000;
const TARGET: Target = Target {
    pid: 7000,
    tid: 7004,
};
/// 2026-03-14 15:09:26.535 UTC as a FILETIME.
const T0: i64 = 134_179_745_665_350_000;
const EXAMPLE: &str = "../procguardctl/examples/protect-agent.toml";

/// A device shared between the test and the procguardctl runs.
#[derive(Clone)]
struct Shared(Rc<RefCell<FakeDevice>>);

impl Device for Shared {
    fn ioctl(&mut self, code: u32, input: &[u8], output: &mut [u8]) -> Result<usize, DeviceError> {
        self.0.borrow_mut().ioctl(code, input, output)
    }
}

/// How the fake machine misbehaves.
#[derive(Default, Clone, Copy)]
struct Faults {
    not_elevated: bool,
    /// procguardctl cannot open the device.
    driver_missing: bool,
    /// The callback lets everything through (and audits nothing).
    callback_ignores_policy: bool,
    /// `procguardctl apply` of this file name fails.
    refuse_apply_of: Option<&'static str>,
    /// The driver loses its audit records before they are read.
    lose_events: bool,
    /// The exempt probe prints nonsense.
    garbled_probe: bool,
}

struct FakeWindows {
    device: Shared,
    exe: PathBuf,
    faults: Faults,
    target_image: Option<String>,
    target_running: bool,
    ctl_calls: Vec<Vec<String>>,
}

fn nt_path(path: &Path) -> String {
    format!(
        r"\Device\HarddiskVolume3\smoke\{}",
        path.file_name().unwrap().to_string_lossy()
    )
}

impl FakeWindows {
    fn new(device: FakeDevice, exe: PathBuf, faults: Faults) -> Self {
        Self {
            device: Shared(Rc::new(RefCell::new(device))),
            exe,
            faults,
            target_image: None,
            target_running: false,
            ctl_calls: Vec::new(),
        }
    }

    fn blob(&self) -> Vec<u8> {
        self.device.0.borrow().driver.state.borrow().blob.clone()
    }

    /// A handle request from `requester` to the target, decided like the callback.
    fn decide(&self, requester: (u32, &str), object: ObjectKind, access: u32) -> Outcome {
        if !self.target_running {
            return Outcome::OpenFailed(87);
        }
        if self.faults.callback_ignores_policy {
            return Outcome::Granted(access);
        }
        let image = self.target_image.clone().unwrap();
        let granted = self.device.0.borrow().driver.simulate(&SimulatedRequest {
            target: ProcessIdentity {
                pid: TARGET.pid,
                image_path: &image,
            },
            requester: ProcessIdentity {
                pid: requester.0,
                image_path: requester.1,
            },
            duplicate_source_pid: 0,
            requester_thread_id: requester.0 + 4,
            thread_id: if object == ObjectKind::Thread {
                TARGET.tid
            } else {
                0
            },
            object,
            operation: Operation::Create,
            desired_access: access,
            timestamp: T0,
        });
        Outcome::Granted(granted)
    }

    fn smoke_identity(&self) -> (u32, String) {
        (SMOKE_PID, nt_path(&self.exe))
    }
}

impl Platform for FakeWindows {
    fn is_elevated(&mut self) -> Result<bool, String> {
        Ok(!self.faults.not_elevated)
    }

    fn current_exe(&mut self) -> Result<PathBuf, String> {
        Ok(self.exe.clone())
    }

    fn current_pid(&self) -> u32 {
        SMOKE_PID
    }

    fn current_thread_id(&self) -> u32 {
        SMOKE_TID
    }

    fn stdin(&mut self) -> Box<dyn Read + Send> {
        Box::new(std::io::empty())
    }

    fn procguardctl(&mut self, ctl: &Path, args: &[OsString]) -> Result<CtlOutput, String> {
        assert!(ctl.is_file(), "{} missing", ctl.display());
        let words: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        self.ctl_calls.push(words.clone());
        if let (Some(name), Some("apply"), Some(file)) = (
            self.faults.refuse_apply_of,
            words.first().map(String::as_str),
            words.get(1),
        ) {
            if Path::new(file).file_name().unwrap() == name {
                return Ok(CtlOutput {
                    code: Some(1),
                    stdout: String::new(),
                    stderr: "error: the driver refused the policy (STATUS_INVALID_PARAMETER)\n"
                        .to_owned(),
                });
            }
        }
        if self.faults.lose_events && words.first().map(String::as_str) == Some("events") {
            self.device
                .0
                .borrow()
                .driver
                .state
                .borrow_mut()
                .events
                .clear();
        }
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let device = self.device.clone();
        let missing = self.faults.driver_missing;
        let code = procguardctl::run(
            std::iter::once(OsString::from("procguardctl")).chain(args.iter().cloned()),
            &mut out,
            &mut err,
            &mut || {
                if missing {
                    Err(DeviceError::NotInstalled)
                } else {
                    Ok(Box::new(device.clone()) as Box<dyn Device>)
                }
            },
        );
        Ok(CtlOutput {
            code: Some(i32::from(code)),
            stdout: String::from_utf8(out).unwrap(),
            stderr: String::from_utf8(err).unwrap(),
        })
    }

    fn start_target(&mut self, exe: &Path) -> Result<Target, String> {
        assert!(
            exe.is_file(),
            "the target copy {} is missing",
            exe.display()
        );
        assert_eq!(
            std::fs::read(exe).unwrap(),
            std::fs::read(&self.exe).unwrap()
        );
        self.target_image = Some(nt_path(exe));
        self.target_running = true;
        Ok(TARGET)
    }

    fn open(&mut self, object: ObjectKind, target: &Target, access: u32) -> Outcome {
        assert_eq!(*target, TARGET);
        let (pid, image) = self.smoke_identity();
        self.decide((pid, &image), object, access)
    }

    fn try_terminate(&mut self, target: &Target) -> TerminateAttempt {
        let open = self.open(ObjectKind::Process, target, PROCESS_ALL_ACCESS);
        let terminate = match open {
            Outcome::Granted(granted) if granted & 1 != 0 => {
                self.target_running = false;
                Some(Ok(()))
            }
            Outcome::Granted(_) => Some(Err(5)),
            _ => None,
        };
        TerminateAttempt { open, terminate }
    }

    fn target_alive(&mut self, _target: &Target) -> bool {
        self.target_running
    }

    fn run_probe(&mut self, exe: &Path, target: &Target) -> Result<String, String> {
        assert!(
            exe.is_file(),
            "the exempt copy {} is missing",
            exe.display()
        );
        assert_eq!(*target, TARGET);
        if self.faults.garbled_probe {
            return Ok(
                "procguard-smoke-probe 1 pid 6000\nprocess PROCESS_TERMINATE 0x1 granted\n"
                    .to_owned(),
            );
        }
        let image = nt_path(exe);
        let observations =
            observe(|object, access| self.decide((EXEMPT_PID, &image), object, access));
        Ok(render_probe(EXEMPT_PID, &observations))
    }

    fn stop_target(&mut self, target: &Target) -> Result<(), String> {
        assert_eq!(*target, TARGET);
        self.target_running = false;
        Ok(())
    }
}

/// A scratch directory with procguard-smoke.exe and procguardctl.exe (fake
/// files) and an empty temporary root.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "procguard-smoke-test-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        std::fs::write(dir.join("procguard-smoke.exe"), b"MZ fake smoke").unwrap();
        std::fs::write(dir.join("procguardctl.exe"), b"MZ fake ctl").unwrap();
        Self { dir }
    }

    fn exe(&self) -> PathBuf {
        self.dir.join("procguard-smoke.exe")
    }

    fn options(&self) -> RunOptions {
        RunOptions {
            ctl: None,
            keep_temp: false,
            temp_root: self.dir.join("tmp"),
        }
    }

    fn leftovers(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Finished {
    code: u8,
    table: String,
    progress: String,
}

impl Finished {
    /// The table's data rows (no heading, no verdict) as (check, result).
    fn rows(&self) -> Vec<(String, &str)> {
        let lines: Vec<&str> = self.table.lines().collect();
        lines[1..lines.len() - 1]
            .iter()
            .map(|line| {
                let result = if line.ends_with("PASS") {
                    "PASS"
                } else {
                    "FAIL"
                };
                let check = line.split("  ").next().unwrap().trim().to_owned();
                (check, result)
            })
            .collect()
    }

    fn failed(&self) -> Vec<String> {
        self.rows()
            .into_iter()
            .filter(|(_, r)| *r == "FAIL")
            .map(|(c, _)| c)
            .collect()
    }

    fn row(&self, check: &str) -> &str {
        self.table
            .lines()
            .find(|l| l.starts_with(&format!("{check}  ")))
            .unwrap_or_else(|| panic!("no row {check:?} in\n{}", self.table))
    }
}

fn smoke(platform: &mut FakeWindows, options: &RunOptions) -> Finished {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run_smoke(platform, options, &mut out, &mut err);
    Finished {
        code,
        table: String::from_utf8(out).unwrap(),
        progress: String::from_utf8(err).unwrap(),
    }
}

fn example_device() -> FakeDevice {
    let policy = parse_policy(&std::fs::read_to_string(EXAMPLE).unwrap()).unwrap();
    FakeDevice::with_policy(&encode(&policy))
}

fn ctl_verbs(platform: &FakeWindows) -> Vec<String> {
    platform
        .ctl_calls
        .iter()
        .map(|call| {
            call.iter()
                .map(|w| {
                    Path::new(w)
                        .file_name()
                        .filter(|_| w.ends_with(".toml"))
                        .map_or_else(|| w.clone(), |n| n.to_string_lossy().into_owned())
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn stripped_count() -> usize {
    RIGHTS.iter().filter(|r| r.stripped).count()
}

#[test]
fn a_protecting_driver_passes_every_check_and_the_policy_in_force_is_restored() {
    let scratch = Scratch::new("pass");
    let mut platform = FakeWindows::new(example_device(), scratch.exe(), Faults::default());
    let before = platform.blob();
    let run = smoke(&mut platform, &scratch.options());
    assert_eq!(run.code, 0, "{}\n{}", run.table, run.progress);
    assert!(run.failed().is_empty(), "{}", run.table);
    // apply + 3 x rights (smoke, exempt, no rules) + handle + kill + alive
    // + events + records + 2 no-record checks + apply + restore + stop.
    let expected_rows = 1 + 3 * RIGHTS.len() + 3 + 1 + stripped_count() + 1 + 2 + 1 + 2;
    assert_eq!(run.rows().len(), expected_rows, "{}", run.table);
    assert!(run
        .row("smoke requester: process PROCESS_TERMINATE")
        .contains("stripped (granted 0x0)"));
    assert!(run
        .row("exempt requester: thread THREAD_SET_CONTEXT")
        .contains("kept (granted 0x10)"));
    assert!(run
        .row("no rules: process PROCESS_TERMINATE")
        .contains("kept (granted 0x1)"));
    assert!(run
        .row("smoke requester: process PROCESS_ALL_ACCESS")
        .contains("granted 0x1ff594"));
    assert!(run
        .row("smoke requester: TerminateProcess on it")
        .contains("failed: error 5"));
    assert!(run
        .row("audit record: thread THREAD_SET_CONTEXT")
        .contains("record #"));
    assert!(run.table.ends_with(&format!(
        "procguard-smoke: {expected_rows} checks, 0 failed: PASS\n"
    )));
    assert_eq!(
        ctl_verbs(&platform),
        [
            "status",
            "policy show",
            "apply smoke-policy.toml",
            "events --json",
            "apply no-rules.toml",
            "apply saved-policy.toml"
        ]
    );
    assert_eq!(
        platform.blob(),
        before,
        "the example policy is in force again"
    );
    assert!(!platform.target_running);
    assert!(scratch.leftovers().is_empty(), "{:?}", scratch.leftovers());
    assert!(run.progress.contains("saved the policy in force to "));
}

#[test]
fn with_no_policy_in_force_the_run_passes_and_leaves_a_policy_without_rules() {
    let scratch = Scratch::new("nopolicy");
    let mut platform = FakeWindows::new(FakeDevice::default(), scratch.exe(), Faults::default());
    let run = smoke(&mut platform, &scratch.options());
    assert_eq!(run.code, 0, "{}", run.table);
    assert!(decode(&platform.blob()).unwrap().rules.is_empty());
}

#[test]
fn a_driver_that_strips_nothing_fails_every_protection_check_and_still_restores() {
    let scratch = Scratch::new("nostrip");
    let faults = Faults {
        callback_ignores_policy: true,
        ..Faults::default()
    };
    let mut platform = FakeWindows::new(example_device(), scratch.exe(), faults);
    let before = platform.blob();
    let run = smoke(&mut platform, &scratch.options());
    assert_eq!(run.code, 1);
    let failed = run.failed();
    for right in RIGHTS.iter().filter(|r| r.stripped) {
        assert!(failed
            .iter()
            .any(|c| c.starts_with("smoke requester: ") && c.ends_with(right.name)));
        assert!(failed
            .iter()
            .any(|c| c.starts_with("audit record: ") && c.ends_with(right.name)));
    }
    assert!(run
        .row("smoke requester: TerminateProcess on it")
        .contains("succeeded"));
    assert!(run
        .row("smoke requester: target alive after TerminateProcess")
        .contains("exited"));
    // The target is gone: the opens with no rules fail too.
    assert!(run
        .row("no rules: process PROCESS_TERMINATE")
        .contains("open failed: error 87"));
    assert!(run.table.trim_end().ends_with("failed: FAIL"));
    assert_eq!(platform.blob(), before);
    assert!(scratch.leftovers().is_empty());
}

#[test]
fn a_refused_smoke_policy_fails_and_the_saved_policy_is_still_reapplied() {
    let scratch = Scratch::new("refused");
    let faults = Faults {
        refuse_apply_of: Some("smoke-policy.toml"),
        ..Faults::default()
    };
    let mut platform = FakeWindows::new(example_device(), scratch.exe(), faults);
    let before = platform.blob();
    let run = smoke(&mut platform, &scratch.options());
    assert_eq!(run.code, 1);
    assert_eq!(
        run.rows(),
        [
            ("setup: apply the smoke policy".to_owned(), "FAIL"),
            ("teardown: restore the saved policy".to_owned(), "PASS"),
            ("teardown: stop the target".to_owned(), "PASS"),
        ]
    );
    assert!(run
        .row("setup: apply the smoke policy")
        .contains("exit 1: error: the driver refused the policy"));
    assert_eq!(
        ctl_verbs(&platform).last().unwrap(),
        "apply saved-policy.toml"
    );
    assert_eq!(platform.blob(), before);
    assert!(!platform.target_running);
}

#[test]
fn lost_audit_records_fail_the_audit_rows_only() {
    let scratch = Scratch::new("lost");
    let faults = Faults {
        lose_events: true,
        ..Faults::default()
    };
    let mut platform = FakeWindows::new(example_device(), scratch.exe(), faults);
    let run = smoke(&mut platform, &scratch.options());
    assert_eq!(run.code, 1);
    let failed = run.failed();
    assert_eq!(failed.len(), stripped_count() + 1, "{}", run.table);
    assert!(failed.iter().all(|c| c.starts_with("audit record: ")));
    assert!(run
        .row("audit record: process PROCESS_TERMINATE")
        .contains("missing"));
}

#[test]
fn a_garbled_probe_report_fails() {
    let scratch = Scratch::new("garbled");
    let faults = Faults {
        garbled_probe: true,
        ..Faults::default()
    };
    let mut platform = FakeWindows::new(example_device(), scratch.exe(), faults);
    let run = smoke(&mut platform, &scratch.options());
    assert_eq!(run.code, 1);
    assert_eq!(run.failed(), ["exempt requester: probe report"]);
    assert!(run
        .row("exempt requester: probe report")
        .contains("line 2: expected 5 words"));
}

#[test]
fn a_failed_restore_keeps_the_saved_policy_and_says_how_to_restore_it() {
    let scratch = Scratch::new("norestore");
    let faults = Faults {
        refuse_apply_of: Some("saved-policy.toml"),
        ..Faults::default()
    };
    let mut platform = FakeWindows::new(example_device(), scratch.exe(), faults);
    let run = smoke(&mut platform, &scratch.options());
    assert_eq!(run.code, 1);
    assert_eq!(run.failed(), ["teardown: restore the saved policy"]);
    let left = scratch.leftovers();
    assert_eq!(left.len(), 1);
    let saved = left[0].join("saved-policy.toml");
    let text = std::fs::read_to_string(&saved).unwrap();
    assert!(text.contains("agent-no-tamper"), "{text}");
    assert!(run
        .progress
        .contains("the saved policy was NOT restored: restore it with: procguardctl apply"));
    assert!(run.progress.contains(&saved.display().to_string()));
}

#[test]
fn keep_temp_keeps_the_copies_and_the_policies() {
    let scratch = Scratch::new("keep");
    let mut platform = FakeWindows::new(example_device(), scratch.exe(), Faults::default());
    let options = RunOptions {
        keep_temp: true,
        ..scratch.options()
    };
    let run = smoke(&mut platform, &options);
    assert_eq!(run.code, 0, "{}", run.table);
    let left = scratch.leftovers();
    assert_eq!(left.len(), 1);
    let mut names: Vec<String> = std::fs::read_dir(&left[0])
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "no-rules.toml",
            "procguard-smoke-exempt.exe",
            "procguard-smoke-target.exe",
            "saved-policy.toml",
            "smoke-policy.toml"
        ]
    );
}

fn assert_cannot_start(platform: &FakeWindows, scratch: &Scratch, run: &Finished, message: &str) {
    assert_eq!(run.code, 2, "{}", run.progress);
    assert!(run.table.is_empty());
    assert!(run.progress.contains(message), "{}", run.progress);
    assert!(!platform.ctl_calls.iter().any(|c| c[0] == "apply"));
    assert!(!platform.target_running);
    assert!(scratch.leftovers().is_empty());
}

#[test]
fn not_elevated_cannot_start_and_touches_nothing() {
    let scratch = Scratch::new("notadmin");
    let faults = Faults {
        not_elevated: true,
        ..Faults::default()
    };
    let mut platform = FakeWindows::new(example_device(), scratch.exe(), faults);
    let run = smoke(&mut platform, &scratch.options());
    assert_cannot_start(
        &platform,
        &scratch,
        &run,
        "cannot start: not elevated: run procguard-smoke from an Administrator command prompt",
    );
    assert!(platform.ctl_calls.is_empty());
}

#[test]
fn a_missing_procguardctl_cannot_start() {
    let scratch = Scratch::new("noctl");
    std::fs::remove_file(scratch.dir.join("procguardctl.exe")).unwrap();
    let mut platform = FakeWindows::new(example_device(), scratch.exe(), Faults::default());
    let run = smoke(&mut platform, &scratch.options());
    assert_cannot_start(&platform, &scratch, &run, "procguardctl.exe not found: put procguardctl.exe beside procguard-smoke.exe or pass --ctl PATH");
    // --ctl points elsewhere.
    let other = scratch.dir.join("tools").join("ctl.exe");
    std::fs::create_dir_all(other.parent().unwrap()).unwrap();
    std::fs::write(&other, b"MZ").unwrap();
    let options = RunOptions {
        ctl: Some(other.clone()),
        ..scratch.options()
    };
    let run = smoke(&mut platform, &options);
    assert_eq!(run.code, 0, "{}", run.progress);
}

#[test]
fn an_unreachable_driver_cannot_start() {
    let scratch = Scratch::new("nodriver");
    let faults = Faults {
        driver_missing: true,
        ..Faults::default()
    };
    let mut platform = FakeWindows::new(example_device(), scratch.exe(), faults);
    let run = smoke(&mut platform, &scratch.options());
    assert_cannot_start(&platform, &scratch, &run, "the procguard driver cannot be reached (procguardctl status: exit 1: error: procguard is not installed");
    assert_eq!(ctl_verbs(&platform), ["status"]);
}

fn run_cli(args: &[&str], platform: Option<&mut dyn Platform>) -> (u8, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run(
        std::iter::once("procguard-smoke").chain(args.iter().copied()),
        &mut out,
        &mut err,
        platform,
    );
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[test]
fn without_a_platform_every_run_exits_3_but_help_works() {
    let (code, _, err) = run_cli(&[], None);
    assert_eq!(code, 3);
    assert!(err.contains("runs only on Windows"), "{err}");
    let (code, _, _) = run_cli(&["--probe", "1", "2"], None);
    assert_eq!(code, 3);
    let (code, out, _) = run_cli(&["--help"], None);
    assert_eq!(code, 0);
    assert!(
        out.contains("--ctl <PATH>") && out.contains("--keep-temp"),
        "{out}"
    );
    assert!(
        !out.contains("--probe") && !out.contains("--serve"),
        "internal modes are hidden: {out}"
    );
}

#[test]
fn a_bad_command_line_exits_2() {
    for args in [
        &["--bogus"][..],
        &["--probe", "1"],
        &["--serve", "--probe", "1", "2"],
        &["--serve", "--ctl", "x"],
        &["--probe", "x", "2"],
    ] {
        let (code, out, err) = run_cli(args, None);
        assert_eq!(code, 2, "{args:?}");
        assert!(out.is_empty() && err.contains("error:"), "{args:?}: {err}");
    }
}

#[test]
fn the_probe_mode_prints_a_report_of_what_this_process_was_granted() {
    let scratch = Scratch::new("probe");
    let mut platform = FakeWindows::new(example_device(), scratch.exe(), Faults::default());
    platform.start_target(&scratch.exe()).unwrap();
    let (code, out, err) = run_cli(&["--probe", "7000", "7004"], Some(&mut platform));
    assert_eq!(code, 0, "{err}");
    let report = procguard_smoke::probe::parse_probe(&out).unwrap();
    assert_eq!(report.pid, SMOKE_PID);
    assert_eq!(report.observations.len(), RIGHTS.len());
    // The example policy does not protect procguard-smoke.exe: all kept.
    assert!(report
        .observations
        .iter()
        .all(|o| o.outcome == Outcome::Granted(o.right.mask)));
}

#[test]
fn the_serve_mode_prints_its_ids_and_exits_when_stdin_closes() {
    let scratch = Scratch::new("serve");
    let mut platform = FakeWindows::new(FakeDevice::default(), scratch.exe(), Faults::default());
    let (code, out, _) = run_cli(&["--serve", "--serve-timeout", "60"], Some(&mut platform));
    assert_eq!(code, 0);
    assert_eq!(out, "ready 5000 5004\n");
}

#[cfg(not(windows))]
#[test]
fn the_binary_exits_3_off_windows() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_procguard-smoke"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&output.stderr).contains("runs only on Windows"));
}
