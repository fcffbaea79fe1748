//! `procguardctl learn` end to end: the real binary on the example policy and
//! recorded event sets in `tests/learn/` (set `UPDATE_SNAPSHOTS=1` to rewrite
//! `*.expected.txt` after a deliberate change, then review the diff).

use std::path::{Path, PathBuf};
use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_procguardctl");
const EXAMPLE: &str = "examples/protect-agent.toml";

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

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/learn")
        .join(name)
}

/// A fresh scratch directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("procguardctl-learn-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
fn an_audit_week_on_the_example_policy_gives_the_expected_proposal_and_diff() {
    let args = [
        "learn",
        "--policy",
        EXAMPLE,
        "--events",
        "tests/learn/audit-week.jsonl",
    ];
    let (code, stdout, stderr) = procguardctl(&args);
    assert_eq!(code, 0, "{stderr}");
    let expected_path = fixture("audit-week.expected.txt");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&expected_path, &stdout).expect("write snapshot");
    }
    let expected = std::fs::read_to_string(&expected_path).expect("snapshot");
    assert_eq!(stdout, expected);
    // The essentials, independently of the snapshot's wording.
    assert!(stdout.contains("+requester = { except = { path = ['\\Device\\HarddiskVolume*\\Program Files\\Backup\\backup.exe'] } }"));
    assert!(stdout.contains("'\\Device\\HarddiskVolume*\\Program Files\\Contoso\\Agent\\contoso-updater.exe', '\\Device\\HarddiskVolume*\\Program Files\\Contoso\\Agent\\contoso-installer.exe'"));
    assert!(stdout.contains("2 records of rule \"watch-agent-queries\" without a SourceImage"));
    assert!(stdout.contains("1 record of rule \"old-rule\", which"));
    assert!(stdout.contains("in ask mode"));
    assert!(!stdout.contains("dbg.exe'"), "ask records teach nothing");
}

#[test]
fn write_makes_a_new_file_that_check_accepts_and_never_overwrites() {
    let dir = scratch("write");
    let policy = dir.join("policy.toml");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join(EXAMPLE), &policy).expect("copy");
    let original = std::fs::read_to_string(&policy).expect("read");
    let events = fixture("audit-week.jsonl");
    let new = dir.join("proposed.toml");
    let (p, e, n) = (
        policy.to_str().unwrap(),
        events.to_str().unwrap(),
        new.to_str().unwrap(),
    );
    let (code, stdout, stderr) =
        procguardctl(&["learn", "--policy", p, "--events", e, "--write", n]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&format!("wrote {n}")), "{stdout}");
    let (code, stdout, stderr) = procguardctl(&["check", n]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let written = std::fs::read_to_string(&new).expect("written");
    assert!(written.contains("contoso-installer.exe"));
    assert!(
        written.starts_with("# procguard example policy"),
        "comments kept"
    );
    // Learning again from the same events proposes nothing more.
    let (code, stdout, _) = procguardctl(&["learn", "--policy", n, "--events", e]);
    assert_eq!(code, 0);
    assert!(stdout.contains("no change to propose"), "{stdout}");
    // Never over the input, never over an existing file.
    let (code, _, stderr) = procguardctl(&["learn", "--policy", p, "--events", e, "--write", p]);
    assert_eq!(code, 1);
    assert!(stderr.contains("that is the input policy"), "{stderr}");
    let (code, _, stderr) = procguardctl(&["learn", "--policy", p, "--events", e, "--write", n]);
    assert_eq!(code, 1);
    assert!(stderr.contains("the file exists"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&policy).unwrap(), original);
    assert_eq!(std::fs::read_to_string(&new).unwrap(), written);
}

#[test]
fn bad_event_lines_are_errors_with_their_line_number() {
    for (file, line, message) in [
        ("bad-json.jsonl", 2, "not a JSON object"),
        ("missing-field.jsonl", 3, "missing field \"GrantedAccess\""),
    ] {
        let path = format!("tests/learn/{file}");
        let (code, stdout, stderr) =
            procguardctl(&["learn", "--policy", EXAMPLE, "--events", &path]);
        assert_eq!(code, 1, "{file}");
        assert!(stdout.is_empty(), "{file}: {stdout}");
        assert!(
            stderr.contains(&format!("error: {path}:{line}: {message}")),
            "{file}: {stderr}"
        );
    }
}

#[test]
fn records_without_images_are_reported_and_propose_nothing() {
    let dir = scratch("no-images");
    let new = dir.join("new.toml");
    let (code, stdout, stderr) = procguardctl(&[
        "learn",
        "--policy",
        EXAMPLE,
        "--events",
        "tests/learn/no-images.jsonl",
        "--write",
        new.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("2 records of rule \"watch-updater-tamper\" without a SourceImage"),
        "{stdout}"
    );
    assert!(stdout.contains("no change to propose"), "{stdout}");
    assert!(!new.exists(), "nothing written");
}
