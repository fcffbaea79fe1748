//! End-to-end tests of the offline commands: the real binary, run on the
//! example policy and on broken ones, its exit code and exact output compared
//! with `tests/snapshots/*.txt` (set `UPDATE_SNAPSHOTS=1` to rewrite them
//! after a deliberate change, then review the diff).

use std::path::{Path, PathBuf};
use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_procguardctl");
const EXAMPLE: &str = "examples/protect-agent.toml";
const ASK_EXAMPLE: &str = "examples/ask-agent.toml";

/// Runs the binary in the crate directory; returns exit code, stdout, stderr.
fn procguardctl(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(EXE)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run procguardctl");
    (
        output.status.code().expect("exit code"),
        String::from_utf8(output.stdout).expect("UTF-8 stdout"),
        String::from_utf8(output.stderr).expect("UTF-8 stderr"),
    )
}

/// The transcript a snapshot holds.
fn transcript(args: &[&str], (code, stdout, stderr): &(i32, String, String)) -> String {
    format!(
        "$ procguardctl {}\nexit code: {code}\n--- stdout\n{stdout}--- stderr\n{stderr}",
        args.join(" ")
    )
}

/// A line diff good enough to read a snapshot mismatch.
fn diff(expected: &str, actual: &str) -> String {
    let (e, a): (Vec<_>, Vec<_>) = (expected.lines().collect(), actual.lines().collect());
    let mut out = String::new();
    for index in 0..e.len().max(a.len()) {
        match (e.get(index), a.get(index)) {
            (Some(x), Some(y)) if x == y => out.push_str(&format!("  {x}\n")),
            (x, y) => {
                if let Some(x) = x {
                    out.push_str(&format!("- {x}\n"));
                }
                if let Some(y) = y {
                    out.push_str(&format!("+ {y}\n"));
                }
            }
        }
    }
    out
}

/// Compares `actual` with `tests/snapshots/NAME.txt`.
fn snapshot(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_SNAPSHOTS=1 creates it)", path.display()));
    if expected != actual {
        eprintln!(
            "snapshot {name} differs (- expected, + actual):\n{}",
            diff(&expected, actual)
        );
    }
    assert_eq!(expected, actual, "snapshot {name}");
}

fn check_snapshot(name: &str, args: &[&str], expected_code: i32) -> (i32, String, String) {
    let result = procguardctl(args);
    snapshot(name, &transcript(args, &result));
    assert_eq!(result.0, expected_code, "exit code of {args:?}");
    result
}

/// A fresh scratch directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("procguardctl-cli-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
fn check_accepts_the_example_policy_without_warnings() {
    check_snapshot("check-example", &["check", EXAMPLE], 0);
    check_snapshot(
        "check-example-deny-warnings",
        &["check", "--deny-warnings", EXAMPLE],
        0,
    );
}

#[test]
fn check_reports_a_syntax_error_with_its_line_and_column() {
    check_snapshot(
        "check-syntax-error",
        &["check", "tests/policies/syntax-error.toml"],
        1,
    );
}

#[test]
fn check_reports_every_value_error_in_file_order() {
    check_snapshot(
        "check-bad-values",
        &["check", "tests/policies/bad-values.toml"],
        1,
    );
}

#[test]
fn check_passes_with_warnings_and_exits_2_when_they_are_denied() {
    check_snapshot(
        "check-warnings",
        &["check", "tests/policies/warnings.toml"],
        0,
    );
    check_snapshot(
        "check-warnings-denied",
        &["check", "--deny-warnings", "tests/policies/warnings.toml"],
        2,
    );
    // Errors win over denied warnings.
    let (code, _, _) =
        procguardctl(&["check", "--deny-warnings", "tests/policies/bad-values.toml"]);
    assert_eq!(code, 1);
}

#[test]
fn check_of_a_missing_file_says_so() {
    check_snapshot(
        "check-missing-file",
        &["check", "tests/policies/no-such-file.toml"],
        1,
    );
}

#[test]
fn compile_writes_the_engine_blob_and_describes_every_rule() {
    let dir = scratch("compile");
    let out = dir.join("policy.bin");
    let out_arg = out.to_str().expect("UTF-8 path");
    let args = ["compile", EXAMPLE, "-o", out_arg];
    let result = procguardctl(&args);
    let text = transcript(&args, &result).replace(out_arg, "OUT.bin");
    snapshot("compile-example", &text);
    assert_eq!(result.0, 0);
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(EXAMPLE)).unwrap();
    let policy = procguard_policy::toml::parse_policy(&source).unwrap();
    let blob = std::fs::read(&out).unwrap();
    assert_eq!(blob, procguard_policy::encode(&policy));
    assert_eq!(procguard_policy::decode(&blob), Ok(policy));
    assert!(procguard_policy::CompiledPolicy::from_blob(&blob).is_ok());
}

#[test]
fn check_and_compile_describe_ask_rules() {
    check_snapshot("check-ask-example", &["check", ASK_EXAMPLE], 0);
    let dir = scratch("compile-ask");
    let out = dir.join("policy.bin");
    let out_arg = out.to_str().expect("UTF-8 path");
    let args = ["compile", ASK_EXAMPLE, "-o", out_arg];
    let result = procguardctl(&args);
    snapshot(
        "compile-ask-example",
        &transcript(&args, &result).replace(out_arg, "OUT.bin"),
    );
    assert_eq!(result.0, 0);
    let blob = std::fs::read(&out).unwrap();
    let policy = procguard_policy::decode(&blob).unwrap();
    assert_eq!(policy.settings.ask_timeout_ms, 250);
    assert_eq!(policy.rules.iter().filter(|r| r.mode.is_ask()).count(), 2);
}

#[test]
fn explain_shows_the_ask_rule_the_rights_asked_about_and_the_fallback() {
    let request = [
        "--policy",
        ASK_EXAMPLE,
        "--requester",
        TASKMGR,
        "--target",
        AGENT,
        "--access",
        "PROCESS_TERMINATE|PROCESS_VM_WRITE|PROCESS_QUERY_LIMITED_INFORMATION",
    ];
    check_snapshot(
        "explain-ask-taskmgr-kills-agent",
        &[&["explain"][..], &request].concat(),
        0,
    );
    let (code, stdout, _) = procguardctl(&[&["explain", "--json"][..], &request].concat());
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(json["access"], 0x1001);
    assert_eq!(
        json["ask"],
        serde_json::json!({
            "rights": 0x1, "fallback_strip": 0x1, "fallback_access": 0x1000, "askable": true,
            "timeout_ms": 250, "rule": 1, "rule_name": "ask-agent-kill",
        })
    );
    // The updater's rule falls open: nothing removed without an answer.
    let updater = [
        "explain",
        "--json",
        "--policy",
        ASK_EXAMPLE,
        "--requester",
        TASKMGR,
        "--target",
        UPDATER,
        "--access",
        "PROCESS_TERMINATE",
    ];
    let (_, stdout, _) = procguardctl(&updater);
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(json["ask"]["fallback_strip"], 0);
    assert_eq!(json["ask"]["fallback_access"], 0x1);
    assert_eq!(json["ask"]["rule_name"], "ask-updater-kill");
}

#[test]
fn compile_writes_nothing_for_an_invalid_policy() {
    let dir = scratch("compile-invalid");
    let out = dir.join("policy.bin");
    let out_arg = out.to_str().expect("UTF-8 path");
    let args = ["compile", "tests/policies/bad-values.toml", "-o", out_arg];
    let result = procguardctl(&args);
    snapshot(
        "compile-invalid",
        &transcript(&args, &result).replace(out_arg, "OUT.bin"),
    );
    assert_eq!(result.0, 1);
    assert!(!out.exists(), "no blob for an invalid policy");
}

const TASKMGR: &str = r"\Device\HarddiskVolume3\Windows\System32\Taskmgr.exe";
const AGENT: &str = r"\Device\HarddiskVolume3\Program Files\Contoso\Agent\contoso-agent.exe";
const UPDATER: &str = r"\Device\HarddiskVolume3\Program Files\Contoso\Agent\contoso-updater.exe";
const CSRSS: &str = r"\Device\HarddiskVolume3\Windows\System32\csrss.exe";
/// Taskmgr opening the agent (pid 4242) under tests/policies/warnings.toml,
/// whose rule removes a right outside the documented list (SYNCHRONIZE).
const UNDOCUMENTED_RIGHT_REQUEST: [&str; 8] = [
    "--policy",
    "tests/policies/warnings.toml",
    "--requester",
    TASKMGR,
    "--target",
    AGENT,
    "--target-pid",
    "4242",
];

#[test]
fn explain_shows_task_manager_losing_the_right_to_kill_the_agent() {
    check_snapshot(
        "explain-taskmgr-kills-agent",
        &[
            "explain",
            "--policy",
            EXAMPLE,
            "--requester",
            TASKMGR,
            "--target",
            AGENT,
            "--object",
            "process",
            "--op",
            "create",
            "--access",
            "PROCESS_TERMINATE|PROCESS_QUERY_LIMITED_INFORMATION",
        ],
        0,
    );
}

#[test]
fn explain_shows_the_updater_excepted_but_still_unable_to_debug() {
    check_snapshot(
        "explain-updater-suspends-agent-thread",
        &[
            "explain",
            "--policy",
            EXAMPLE,
            "--requester",
            UPDATER,
            "--requester-pid",
            "3000",
            "--target",
            AGENT,
            "--object",
            "thread",
            "--op",
            "duplicate",
            "--access",
            "THREAD_TERMINATE,THREAD_SUSPEND_RESUME,THREAD_GET_CONTEXT",
        ],
        0,
    );
}

#[test]
fn explain_names_the_exemption_of_critical_processes() {
    check_snapshot(
        "explain-csrss-exempt",
        &[
            "explain",
            "--policy",
            EXAMPLE,
            "--requester",
            CSRSS,
            "--requester-pid",
            "612",
            "--target",
            AGENT,
            "--access",
            "PROCESS_ALL_ACCESS",
        ],
        0,
    );
}

#[test]
fn explain_json_gives_the_decision_as_one_object_with_the_text_s_answer() {
    let request = [
        "--policy",
        EXAMPLE,
        "--requester",
        TASKMGR,
        "--target",
        AGENT,
        "--access",
        "PROCESS_TERMINATE|PROCESS_VM_READ|PROCESS_QUERY_LIMITED_INFORMATION",
    ];
    let (code, stdout, stderr) = procguardctl(&[&["explain", "--json"][..], &request].concat());
    assert_eq!((code, stderr.as_str()), (0, ""));
    assert_eq!(stdout.lines().count(), 1, "one line: {stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let expected = serde_json::json!({
        "object": "process", "operation": "create", "kernel_handle": false,
        "same_process": false, "desired_access": 0x1011, "access": 0x1010,
        "removed": 0x1, "would_strip": 0x10, "audit": true, "rule": 0,
        "rule_name": "agent-no-tamper", "exemption": null, "requester_critical": false,
        "undocumented_removed": 0, "ask": null,
    });
    assert_eq!(json, expected);
    // The text form of the same request says the same.
    let (_, text, _) = procguardctl(&[&["explain"][..], &request].concat());
    assert!(
        text.contains("Result: granted PROCESS_VM_READ|PROCESS_QUERY_LIMITED_INFORMATION; removed PROCESS_TERMINATE; audit rules would have removed PROCESS_VM_READ; responsible rule 0"),
        "{text}"
    );
    // A kernel handle, exempt by the example's settings.
    let (_, stdout, _) =
        procguardctl(&[&["explain", "--json", "--kernel-handle"][..], &request].concat());
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(json["exemption"], "kernel_handle");
    assert_eq!(json["access"], 0x1011);
    // A removed right outside the documented list (SYNCHRONIZE, pid 4242).
    let (_, stdout, _) = procguardctl(
        &[
            &["explain", "--json"][..],
            &UNDOCUMENTED_RIGHT_REQUEST,
            &["--access", "PROCESS_TERMINATE|SYNCHRONIZE"],
        ]
        .concat(),
    );
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(json["access"], 0);
    assert_eq!(json["undocumented_removed"], 0x0010_0000);
}

#[test]
fn explain_notes_a_removed_right_outside_the_documented_list() {
    check_snapshot(
        "explain-undocumented-right",
        &[
            &["explain"][..],
            &UNDOCUMENTED_RIGHT_REQUEST,
            &[
                "--access",
                "PROCESS_TERMINATE|SYNCHRONIZE|PROCESS_QUERY_LIMITED_INFORMATION",
            ],
        ]
        .concat(),
        0,
    );
}

#[test]
fn explain_refuses_rights_of_the_wrong_object_kind() {
    check_snapshot(
        "explain-wrong-kind",
        &[
            "explain",
            "--policy",
            EXAMPLE,
            "--requester",
            "taskmgr.exe",
            "--target",
            "contoso-agent.exe",
            "--access",
            "THREAD_TERMINATE",
        ],
        1,
    );
}

#[test]
fn driver_commands_say_they_are_windows_only_and_exit_3() {
    if cfg!(windows) {
        return;
    }
    check_snapshot("status-not-windows", &["status"], 3);
    for args in [
        &["apply", EXAMPLE][..],
        &["policy", "show"],
        &["events", "--json"],
        &["counters", "--reset"],
    ] {
        let (code, stdout, stderr) = procguardctl(args);
        assert_eq!(code, 3, "{args:?}");
        assert_eq!(stdout, "", "{args:?}");
        assert_eq!(
            stderr,
            "error: this command talks to the driver: Windows only (check, compile and explain work anywhere)\n",
            "{args:?}"
        );
    }
}

#[test]
fn a_bad_command_line_exits_64_and_help_exits_0() {
    let (code, stdout, stderr) = procguardctl(&["explain", "--policy", EXAMPLE]);
    assert_eq!(code, 64);
    assert_eq!(stdout, "");
    assert!(
        stderr.contains("the following required arguments were not provided"),
        "{stderr}"
    );
    let (code, stdout, _) = procguardctl(&["--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("Exit codes: 0 ok, 1 error"), "{stdout}");
}
