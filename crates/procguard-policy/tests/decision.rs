//! Phase 1 and phase 2: every rule feature and every exemption, checked on the
//! compiled policy and on the reference evaluator.

use procguard_policy::reference::evaluate;
use procguard_policy::rights::*;
use procguard_policy::toml::parse_policy;
use procguard_policy::{
    CompiledPolicy, Decision, Exemption, HandleRequest, ObjectKind, Operation, Policy,
    ProcessIdentity, ProcessRecord,
};

const AGENT: ProcessIdentity<'static> = ProcessIdentity {
    pid: 1000,
    image_path: "\\Device\\HarddiskVolume3\\Program Files\\Acme\\agent.exe",
};
const TOOL: ProcessIdentity<'static> = ProcessIdentity {
    pid: 2000,
    image_path: "\\Device\\HarddiskVolume3\\Tools\\tool.exe",
};
const UPDATER: ProcessIdentity<'static> = ProcessIdentity {
    pid: 3000,
    image_path: "\\Device\\HarddiskVolume3\\Program Files\\Acme\\updater.exe",
};
const CSRSS: ProcessIdentity<'static> = ProcessIdentity {
    pid: 600,
    image_path: "\\Device\\HarddiskVolume3\\Windows\\System32\\csrss.exe",
};
const FAKE_CSRSS: ProcessIdentity<'static> = ProcessIdentity {
    pid: 601,
    image_path: "\\Device\\HarddiskVolume3\\Users\\bob\\csrss.exe",
};
const SYSTEM: ProcessIdentity<'static> = ProcessIdentity {
    pid: 4,
    image_path: "",
};

fn policy(src: &str) -> Policy {
    parse_policy(src).unwrap_or_else(|e| panic!("{e}"))
}

fn req(object: ObjectKind, operation: Operation, desired: u32) -> HandleRequest {
    HandleRequest {
        object,
        operation,
        desired_access: desired,
        kernel_handle: false,
        same_process: false,
    }
}

/// Decides with both the compiled policy and the reference evaluator; they must agree.
fn decide(
    p: &Policy,
    target: &ProcessIdentity<'_>,
    requester: &ProcessIdentity<'_>,
    r: &HandleRequest,
) -> Decision {
    let c = CompiledPolicy::new(p).unwrap();
    let d = c.decide(&c.classify(target), &c.classify(requester), r);
    let e = evaluate(p, target, requester, r).decision;
    assert_eq!(d, e, "compiled and reference disagree");
    assert_eq!(d.access & !r.desired_access, 0, "added bits");
    d
}

const KILL: &str = r#"
[[rule]]
name = "agent-no-kill"
target = { name = "AGENT.EXE" }
strip = ["no-kill"]
"#;

#[test]
fn enforce_rule_strips_only_requested_bits_and_names_rule() {
    let p = policy(KILL);
    let d = decide(
        &p,
        &AGENT,
        &TOOL,
        &req(
            ObjectKind::Process,
            Operation::Create,
            PROCESS_TERMINATE | PROCESS_VM_READ,
        ),
    );
    assert_eq!(d.access, PROCESS_VM_READ);
    assert_eq!(d.rule, Some(0));
    assert!(d.audit);
    assert_eq!(d.exemption, None);
}

#[test]
fn request_without_protected_bits_is_unchanged_and_not_audited() {
    let p = policy(KILL);
    let d = decide(
        &p,
        &AGENT,
        &TOOL,
        &req(ObjectKind::Process, Operation::Create, PROCESS_VM_READ),
    );
    assert_eq!(d, Decision::unchanged(PROCESS_VM_READ));
}

#[test]
fn unprotected_target_is_unchanged() {
    let p = policy(KILL);
    let d = decide(
        &p,
        &TOOL,
        &AGENT,
        &req(ObjectKind::Process, Operation::Create, PROCESS_ALL),
    );
    assert_eq!(d, Decision::unchanged(PROCESS_ALL));
}

const PROCESS_ALL: u32 = 0x001F_FFFF;

#[test]
fn thread_handles_use_thread_masks_of_owning_process_rules() {
    let p = policy(KILL);
    let d = decide(
        &p,
        &AGENT,
        &TOOL,
        &req(
            ObjectKind::Thread,
            Operation::Create,
            THREAD_TERMINATE | THREAD_GET_CONTEXT,
        ),
    );
    assert_eq!(d.access, THREAD_GET_CONTEXT);
}

#[test]
fn objects_restrict_rule_to_one_kind() {
    let p = policy(
        &format!("{KILL}objects = \"thread\"\n").replace("[\"no-kill\"]", "[\"THREAD_TERMINATE\"]"),
    );
    let d = decide(
        &p,
        &AGENT,
        &TOOL,
        &req(ObjectKind::Process, Operation::Create, PROCESS_TERMINATE),
    );
    assert_eq!(d.access, PROCESS_TERMINATE);
    let d = decide(
        &p,
        &AGENT,
        &TOOL,
        &req(ObjectKind::Thread, Operation::Create, THREAD_TERMINATE),
    );
    assert_eq!(d.access, 0);
}

#[test]
fn operations_restrict_rule_to_create_or_duplicate() {
    let p = policy(&format!("{KILL}operations = \"duplicate\"\n"));
    let d = decide(
        &p,
        &AGENT,
        &TOOL,
        &req(ObjectKind::Process, Operation::Create, PROCESS_TERMINATE),
    );
    assert_eq!(d.access, PROCESS_TERMINATE);
    let d = decide(
        &p,
        &AGENT,
        &TOOL,
        &req(ObjectKind::Process, Operation::Duplicate, PROCESS_TERMINATE),
    );
    assert_eq!(d.access, 0);
}

#[test]
fn audit_rule_strips_nothing_but_reports() {
    let p = policy(&format!("{KILL}mode = \"audit\"\n"));
    let d = decide(
        &p,
        &AGENT,
        &TOOL,
        &req(
            ObjectKind::Process,
            Operation::Create,
            PROCESS_TERMINATE | PROCESS_VM_READ,
        ),
    );
    assert_eq!(d.access, PROCESS_TERMINATE | PROCESS_VM_READ);
    assert_eq!(d.would_strip, PROCESS_TERMINATE);
    assert!(d.audit);
    assert_eq!(d.rule, Some(0));
}

#[test]
fn matching_enforce_rules_union_their_bits_and_report_lowest_rule() {
    let p = policy(
        r#"
[[rule]]
name = "audit-read"
target = { name = "agent.exe" }
strip = ["PROCESS_VM_READ"]
mode = "audit"
[[rule]]
name = "kill"
target = { pid = 1000 }
strip = ["PROCESS_TERMINATE"]
[[rule]]
name = "write"
target = { path = '\Device\HarddiskVolume*\Program Files\Acme\*.exe' }
strip = ["PROCESS_VM_WRITE"]
"#,
    );
    let all = PROCESS_TERMINATE | PROCESS_VM_WRITE | PROCESS_VM_READ;
    let d = decide(
        &p,
        &AGENT,
        &TOOL,
        &req(ObjectKind::Process, Operation::Create, all),
    );
    assert_eq!(d.access, PROCESS_VM_READ);
    assert_eq!(d.would_strip, PROCESS_VM_READ);
    assert_eq!(d.rule, Some(1));
    let d = decide(
        &p,
        &AGENT,
        &TOOL,
        &req(ObjectKind::Process, Operation::Create, PROCESS_VM_READ),
    );
    assert_eq!(d.rule, Some(0), "audit-only decision names the audit rule");
}

#[test]
fn requester_only_restricts_selected_processes() {
    let p = policy(&format!("{KILL}requester = {{ name = \"tool.exe\" }}\n"));
    let r = req(ObjectKind::Process, Operation::Create, PROCESS_TERMINATE);
    assert_eq!(decide(&p, &AGENT, &TOOL, &r).access, 0);
    assert_eq!(decide(&p, &AGENT, &UPDATER, &r).access, PROCESS_TERMINATE);
}

#[test]
fn requester_any_except_spares_listed_processes() {
    let p = policy(&format!(
        "{KILL}requester = {{ except = {{ name = \"updater.exe\" }} }}\n"
    ));
    let r = req(ObjectKind::Process, Operation::Create, PROCESS_TERMINATE);
    assert_eq!(decide(&p, &AGENT, &TOOL, &r).access, 0);
    assert_eq!(decide(&p, &AGENT, &UPDATER, &r).access, PROCESS_TERMINATE);
}

#[test]
fn unknown_requester_record_is_restricted_by_any_except_rules() {
    let p = policy(&format!(
        "{KILL}requester = {{ except = {{ name = \"updater.exe\" }} }}\n"
    ));
    let c = CompiledPolicy::new(&p).unwrap();
    let d = c.decide(
        &c.classify(&AGENT),
        &c.unknown_process_record(),
        &req(ObjectKind::Process, Operation::Create, PROCESS_TERMINATE),
    );
    assert_eq!(d.access, 0);
    let d = c.decide(
        &c.classify(&AGENT),
        &ProcessRecord::EMPTY,
        &req(ObjectKind::Process, Operation::Create, PROCESS_TERMINATE),
    );
    assert_eq!(
        d.access, PROCESS_TERMINATE,
        "EMPTY is restricted by no requester-dependent rule"
    );
}

#[test]
fn duplication_judges_the_receiving_process() {
    // Requester for a duplicate is the receiver: the caller passes its record.
    let p = policy(&format!("{KILL}requester = {{ name = \"tool.exe\" }}\n"));
    let r = req(ObjectKind::Process, Operation::Duplicate, PROCESS_TERMINATE);
    assert_eq!(decide(&p, &AGENT, &TOOL, &r).access, 0);
    assert_eq!(decide(&p, &AGENT, &UPDATER, &r).access, PROCESS_TERMINATE);
}

#[test]
fn kernel_handles_are_exempt_when_switched_on_only() {
    let mut r = req(ObjectKind::Process, Operation::Create, PROCESS_TERMINATE);
    r.kernel_handle = true;
    let d = decide(&policy(KILL), &AGENT, &TOOL, &r);
    assert_eq!(
        (d.access, d.exemption, d.audit),
        (PROCESS_TERMINATE, Some(Exemption::KernelHandle), false)
    );
    let off = policy(&format!(
        "[settings]\nexempt_kernel_handles = false\n{KILL}"
    ));
    assert_eq!(decide(&off, &AGENT, &TOOL, &r).access, 0);
}

#[test]
fn self_access_is_exempt_when_switched_on_only() {
    let mut r = req(ObjectKind::Thread, Operation::Create, THREAD_TERMINATE);
    r.same_process = true;
    let d = decide(&policy(KILL), &AGENT, &AGENT, &r);
    assert_eq!(
        (d.access, d.exemption),
        (THREAD_TERMINATE, Some(Exemption::SelfAccess))
    );
    let off = policy(&format!("[settings]\nexempt_self = false\n{KILL}"));
    assert_eq!(decide(&off, &AGENT, &AGENT, &r).access, 0);
}

#[test]
fn critical_requesters_are_exempt_and_recognised_by_path_not_name() {
    let r = req(ObjectKind::Process, Operation::Create, PROCESS_TERMINATE);
    let p = policy(KILL);
    for critical in [CSRSS, SYSTEM] {
        let d = decide(&p, &AGENT, &critical, &r);
        assert_eq!(
            (d.access, d.exemption),
            (PROCESS_TERMINATE, Some(Exemption::CriticalRequester))
        );
        assert_eq!(d.rule, Some(0), "exempted decisions still name the rule");
    }
    assert_eq!(
        decide(&p, &AGENT, &FAKE_CSRSS, &r).access,
        0,
        "csrss.exe outside System32 is not exempt"
    );
    let off = policy(&format!(
        "[settings]\nexempt_critical_requesters = false\n{KILL}"
    ));
    assert_eq!(decide(&off, &AGENT, &CSRSS, &r).access, 0);
}

#[test]
fn critical_process_spellings() {
    use procguard_policy::is_critical_system_process as crit;
    let id = |image_path| ProcessIdentity {
        pid: 77,
        image_path,
    };
    assert!(crit(&id("\\SystemRoot\\System32\\smss.exe")));
    assert!(crit(&id(
        "\\Device\\HarddiskVolume12\\WINDOWS\\system32\\LSASS.EXE"
    )));
    assert!(crit(&id("\\??\\C:\\Windows\\System32\\wininit.exe")));
    assert!(crit(&id("C:\\Windows\\System32\\services.exe")));
    assert!(!crit(&id(
        "\\Device\\HarddiskVolume\\Windows\\System32\\csrss.exe"
    )));
    assert!(!crit(&id(
        "\\Device\\HarddiskVolume3\\Windows\\System32\\sub\\csrss.exe"
    )));
    assert!(!crit(&id(
        "\\Device\\HarddiskVolume3\\Windows\\System32\\notepad.exe"
    )));
    assert!(!crit(&id("csrss.exe")));
    assert!(crit(&ProcessIdentity {
        pid: 4,
        image_path: ""
    }));
}

#[test]
fn globs_are_case_insensitive_and_star_stays_in_component() {
    let p = policy(
        "[[rule]]\nname = \"g\"\ntarget = { path = '\\device\\harddiskvolume*\\program files\\*\\agent.exe' }\nstrip = 1\n",
    );
    let c = CompiledPolicy::new(&p).unwrap();
    assert!(c.classify(&AGENT).is_protected());
    let deeper = ProcessIdentity {
        pid: 5,
        image_path: "\\Device\\HarddiskVolume3\\Program Files\\Acme\\x\\agent.exe",
    };
    assert!(!c.classify(&deeper).is_protected());
}

#[test]
fn double_star_spans_components() {
    use procguard_policy::glob::Glob;
    let g = Glob::new("\\Device\\**\\agent.exe").unwrap();
    assert!(g.matches("\\Device\\agent.exe"));
    assert!(g.matches("\\Device\\a\\b\\AGENT.exe"));
    assert!(!g.matches("\\Device\\a\\xagent.exe"));
    let g = Glob::new("**\\agent.exe").unwrap();
    assert!(g.matches("\\Device\\HarddiskVolume1\\agent.exe"));
    assert!(!g.matches("\\Device\\HarddiskVolume1\\agent.exe2"));
    let g = Glob::new("\\Device\\**").unwrap();
    assert!(g.matches("\\Device\\x\\y"));
    let g = Glob::new("\\a?c\\*.exe").unwrap();
    assert!(g.matches("\\abc\\x.exe") && g.matches("\\abc\\.exe"));
    assert!(!g.matches("\\a\\c\\x.exe") && !g.matches("\\abc\\x\\y.exe"));
}

#[test]
fn glob_errors_for_nul_and_overlong_patterns() {
    use procguard_policy::glob::{validate, GlobError};
    assert_eq!(validate("\\a\0b"), Err(GlobError::Nul));
    assert_eq!(
        validate(&format!("\\{}", "a".repeat(40_000))),
        Err(GlobError::TooLong)
    );
    assert_eq!(validate("***\\x"), Err(GlobError::BadDoubleStar));
    assert_eq!(validate("**"), Ok(()));
}

#[test]
fn pid_selector_matches_only_that_pid() {
    let p = policy("[[rule]]\nname = \"p\"\ntarget = { pid = 2000 }\nstrip = 1\n");
    let c = CompiledPolicy::new(&p).unwrap();
    assert!(c.classify(&TOOL).is_protected());
    assert!(!c.classify(&AGENT).is_protected());
}

#[test]
fn record_is_at_most_64_bytes() {
    assert!(core::mem::size_of::<ProcessRecord>() <= 64);
}

#[test]
fn policy_id_is_blob_checksum_and_changes_with_policy() {
    let a = policy(KILL);
    let b = policy(&KILL.replace("no-kill", "no-inject"));
    let (ca, cb) = (
        CompiledPolicy::new(&a).unwrap(),
        CompiledPolicy::new(&b).unwrap(),
    );
    let blob = procguard_policy::encode(&a);
    assert_eq!(ca.policy_id(), procguard_policy::blob::blob_checksum(&blob));
    assert_eq!(
        CompiledPolicy::from_blob(&blob).unwrap().policy_id(),
        ca.policy_id()
    );
    assert_ne!(ca.policy_id(), cb.policy_id());
}

#[test]
fn explain_says_which_rules_matched_and_why() {
    let p = policy(&format!(
        "{KILL}\n[[rule]]\nname = \"tool-only\"\ntarget = {{ name = \"agent.exe\" }}\nrequester = {{ name = \"other.exe\" }}\nstrip = [\"PROCESS_VM_WRITE\"]\n"
    ));
    let e = procguard_policy::explain(
        &p,
        &AGENT,
        &TOOL,
        &req(
            ObjectKind::Process,
            Operation::Create,
            PROCESS_TERMINATE | PROCESS_VM_WRITE,
        ),
    );
    let t = e.to_string();
    assert!(t.starts_with("Request: \\Device\\HarddiskVolume3\\Tools\\tool.exe (pid 2000) opens process handle to \\Device\\HarddiskVolume3\\Program Files\\Acme\\agent.exe (pid 1000), asking for PROCESS_TERMINATE|PROCESS_VM_WRITE."), "{t}");
    assert!(t.contains("Rule 0 \"agent-no-kill\" (enforce) protects the target: it applies and removes PROCESS_TERMINATE."), "{t}");
    assert!(t.contains("Rule 1 \"tool-only\" (enforce) protects the target: it does not restrict this requester."), "{t}");
    assert!(t.contains("Result: granted PROCESS_VM_WRITE; removed PROCESS_TERMINATE; responsible rule 0 \"agent-no-kill\"; audit record: yes."), "{t}");
    let e = procguard_policy::explain(
        &p,
        &AGENT,
        &CSRSS,
        &req(ObjectKind::Process, Operation::Create, PROCESS_TERMINATE),
    );
    assert!(
        e.text
            .contains("Exemption: critical system processes keep every right"),
        "{}",
        e.text
    );
}

#[test]
fn lint_flags_dangerous_and_useless_rules() {
    use procguard_policy::{lint, LintKind};
    let p = policy(
        r#"
[settings]
exempt_critical_requesters = false
[[rule]]
name = "terminate-only"
target = { name = "agent.exe" }
objects = "process"
strip = ["PROCESS_TERMINATE", "SYNCHRONIZE"]
[[rule]]
name = "everything"
target = { path = '**', pid = 5 }
strip = ["PROCESS_VM_WRITE"]
[[rule]]
name = "again"
target = { name = "agent.exe" }
objects = "process"
strip = ["PROCESS_TERMINATE"]
[[rule]]
name = "lsass"
target = { name = "lsass.exe" }
strip = ["no-kill"]
"#,
    );
    let w = lint(&p);
    let has = |i: Option<usize>, k: LintKind| w.iter().any(|x| x.rule == i && x.kind == k);
    assert!(has(None, LintKind::ExemptionDisabled));
    assert!(has(Some(0), LintKind::IncompleteKillProtection));
    assert!(has(Some(0), LintKind::ThreadsNotCovered));
    assert!(has(Some(0), LintKind::StripsHarmlessRights));
    assert!(has(Some(0), LintKind::RestrictsCriticalProcesses));
    assert!(has(Some(1), LintKind::TargetsEverything));
    assert!(has(Some(1), LintKind::PidSelector));
    assert!(has(Some(1), LintKind::IncompleteInjectionProtection));
    assert!(has(Some(1), LintKind::ObjectKindStripsNothing));
    assert!(has(Some(2), LintKind::Redundant));
    assert!(has(Some(3), LintKind::TargetsCriticalProcess));
    assert!(!has(Some(3), LintKind::IncompleteKillProtection));
    let clean = lint(&policy(include_str!("../examples/policy.toml")));
    assert!(
        clean
            .iter()
            .all(|x| x.kind != LintKind::Redundant && x.kind != LintKind::TargetsEverything),
        "{clean:?}"
    );
}

#[test]
fn lint_warns_about_enforced_rights_outside_the_documented_list_and_explain_notes_them() {
    use procguard_policy::{lint, LintKind};
    let p = policy(
        r#"
[[rule]]
name = "reads"
target = { name = "agent.exe" }
strip = ["PROCESS_VM_READ", "PROCESS_TERMINATE", "THREAD_GET_CONTEXT", "no-kill"]
[[rule]]
name = "documented"
target = { name = "agent.exe" }
strip = ["no-kill", "no-inject"]
[[rule]]
name = "watched"
target = { name = "agent.exe" }
strip = ["PROCESS_VM_READ"]
objects = "process"
mode = "audit"
"#,
    );
    let warnings: Vec<_> = lint(&p)
        .into_iter()
        .filter(|w| w.kind == LintKind::UndocumentedRights)
        .collect();
    assert_eq!(warnings.len(), 1, "only the enforced rule 0: {warnings:?}");
    assert_eq!(warnings[0].rule, Some(0));
    assert!(
        warnings[0]
            .message
            .contains("process handles: PROCESS_VM_READ; thread handles: THREAD_GET_CONTEXT"),
        "{}",
        warnings[0].message
    );
    // Allowed: it compiles and the driver removes the right.
    let compiled = CompiledPolicy::new(&p).expect("an undocumented right stays allowed");
    let request = req(
        ObjectKind::Process,
        Operation::Create,
        PROCESS_VM_READ | PROCESS_TERMINATE,
    );
    let agent = compiled.classify(&AGENT);
    let tool = compiled.classify(&TOOL);
    assert_eq!(compiled.decide(&agent, &tool, &request).access, 0);
    let e = procguard_policy::explain(&p, &AGENT, &TOOL, &request);
    assert_eq!(e.undocumented_removed, PROCESS_VM_READ);
    assert!(
        e.text.contains("Note: PROCESS_VM_READ is not among the rights Microsoft lists as removable by a driver (OB_PRE_CREATE_HANDLE_INFORMATION)"),
        "{}",
        e.text
    );
    let e = procguard_policy::explain(
        &p,
        &AGENT,
        &TOOL,
        &req(ObjectKind::Process, Operation::Create, PROCESS_TERMINATE),
    );
    assert_eq!(e.undocumented_removed, 0);
    assert!(!e.text.contains("Note:"), "{}", e.text);
}

const ASK: &str = r#"
[settings]
ask_timeout_ms = 100

[[rule]]
name = "agent-no-inject"
target = { name = "agent.exe" }
objects = "process"
strip = ["PROCESS_VM_WRITE", "PROCESS_VM_OPERATION", "PROCESS_CREATE_THREAD"]

[[rule]]
name = "ask-kill"
target = { name = "agent.exe" }
strip = ["no-kill"]
mode = "ask"

[[rule]]
name = "ask-read"
target = { name = "agent.exe" }
requester = { name = "tool.exe" }
objects = "process"
strip = ["PROCESS_VM_READ", "PROCESS_VM_WRITE"]
mode = "ask"
on_timeout = "allow"
"#;

#[test]
fn ask_rules_apply_after_enforce_rules_with_their_fallback() {
    use procguard_policy::AskPlan;
    let p = policy(ASK);
    let asked = PROCESS_TERMINATE | PROCESS_VM_READ | PROCESS_VM_WRITE | SYNCHRONIZE;
    let d = decide(
        &p,
        &AGENT,
        &TOOL,
        &req(ObjectKind::Process, Operation::Create, asked),
    );
    // Enforce first: VM_WRITE goes whatever the handler says, so it is not asked about.
    assert_eq!(d.access, PROCESS_TERMINATE | PROCESS_VM_READ | SYNCHRONIZE);
    assert_eq!(
        d.ask,
        AskPlan {
            rights: PROCESS_TERMINATE | PROCESS_VM_READ,
            // Only the on_timeout = "strip" rule's rights go without an answer.
            fallback_strip: PROCESS_TERMINATE,
            rule: Some(1),
            askable: true,
        }
    );
    assert_eq!(
        d.ask.fallback_access(d.access),
        PROCESS_VM_READ | SYNCHRONIZE
    );
    assert_eq!((d.rule, d.audit), (Some(0), true));
    // Another requester: only the "any" ask rule applies.
    let d = decide(
        &p,
        &AGENT,
        &UPDATER,
        &req(ObjectKind::Process, Operation::Create, asked),
    );
    assert_eq!(d.ask.rights, PROCESS_TERMINATE);
    // Nothing but ask rules: the lowest applicable ask rule is the responsible
    // one (like enforce rules, whether or not its own rights were requested), and
    // the request is audited.
    let d = decide(
        &p,
        &AGENT,
        &TOOL,
        &req(ObjectKind::Process, Operation::Create, PROCESS_VM_READ),
    );
    assert_eq!(d.access, PROCESS_VM_READ);
    assert_eq!((d.rule, d.audit, d.ask.rule), (Some(1), true, Some(1)));
    let d = decide(
        &p,
        &AGENT,
        &TOOL,
        &req(ObjectKind::Process, Operation::Duplicate, PROCESS_VM_READ),
    );
    assert_eq!(d.ask.rule, Some(1));
    assert_eq!(d.ask.fallback_access(d.access), PROCESS_VM_READ);
    // Rights no ask rule names: nothing to ask.
    let d = decide(
        &p,
        &AGENT,
        &TOOL,
        &req(ObjectKind::Process, Operation::Create, SYNCHRONIZE),
    );
    assert_eq!(d, Decision::unchanged(SYNCHRONIZE));
    // Thread handles: the "any" ask rule covers both kinds.
    let d = decide(
        &p,
        &AGENT,
        &TOOL,
        &req(ObjectKind::Thread, Operation::Duplicate, THREAD_TERMINATE),
    );
    assert_eq!(
        (d.ask.rights, d.ask.fallback_strip),
        (THREAD_TERMINATE, THREAD_TERMINATE)
    );
    assert_eq!(
        CompiledPolicy::new(&p).unwrap().settings().ask_timeout_ms,
        100
    );
}

#[test]
fn ask_rules_are_never_applied_under_exemptions_and_unaskable_without_them() {
    use procguard_policy::AskPlan;
    let p = policy(ASK);
    let mut q = req(ObjectKind::Process, Operation::Create, PROCESS_TERMINATE);
    q.kernel_handle = true;
    let d = decide(&p, &AGENT, &TOOL, &q);
    assert_eq!(
        (d.access, d.ask, d.exemption),
        (
            PROCESS_TERMINATE,
            AskPlan::NONE,
            Some(Exemption::KernelHandle)
        )
    );
    let mut q = req(ObjectKind::Process, Operation::Create, PROCESS_TERMINATE);
    q.same_process = true;
    let d = decide(&p, &AGENT, &AGENT, &q);
    assert_eq!(
        (d.ask, d.exemption),
        (AskPlan::NONE, Some(Exemption::SelfAccess))
    );
    let d = decide(
        &p,
        &AGENT,
        &CSRSS,
        &req(ObjectKind::Process, Operation::Create, PROCESS_TERMINATE),
    );
    assert_eq!(
        (d.ask, d.exemption),
        (AskPlan::NONE, Some(Exemption::CriticalRequester))
    );
    // Exemptions off: the ask rule applies, but a kernel handle or a critical
    // requester is never asked about (fallback at once).
    let mut off = p.clone();
    off.settings.exempt_kernel_handles = false;
    off.settings.exempt_critical_requesters = false;
    off.settings.exempt_self = false;
    let mut q = req(ObjectKind::Process, Operation::Create, PROCESS_TERMINATE);
    q.kernel_handle = true;
    let d = decide(&off, &AGENT, &TOOL, &q);
    assert_eq!((d.ask.rights, d.ask.askable), (PROCESS_TERMINATE, false));
    let d = decide(
        &off,
        &AGENT,
        &SYSTEM,
        &req(ObjectKind::Process, Operation::Create, PROCESS_TERMINATE),
    );
    assert_eq!((d.ask.rights, d.ask.askable), (PROCESS_TERMINATE, false));
    let mut q = req(ObjectKind::Process, Operation::Create, PROCESS_TERMINATE);
    q.same_process = true;
    let d = decide(&off, &AGENT, &AGENT, &q);
    assert_eq!((d.ask.rights, d.ask.askable), (PROCESS_TERMINATE, true));
}

#[test]
fn ask_rules_for_any_requester_are_entries_and_records_keep_their_size() {
    let p = policy(ASK);
    assert_eq!(procguard_policy::model::requester_entry_count(&p), 2);
    let c = CompiledPolicy::new(&p).unwrap();
    // The unknown-process record is restricted by the "any" ask rule's entry.
    let unknown = c.unknown_process_record();
    let d = c.decide(
        &c.classify(&AGENT),
        &unknown,
        &req(ObjectKind::Process, Operation::Create, PROCESS_TERMINATE),
    );
    assert_eq!(d.ask.rights, PROCESS_TERMINATE);
    assert!(c.classify(&AGENT).is_protected());
    assert!(!c.classify(&TOOL).is_protected());
}

#[test]
fn explain_shows_the_ask_rule_the_rights_asked_about_and_the_fallback() {
    let p = policy(ASK);
    let q = req(
        ObjectKind::Process,
        Operation::Create,
        PROCESS_TERMINATE | PROCESS_VM_READ | PROCESS_VM_WRITE,
    );
    let e = procguard_policy::explain(&p, &AGENT, &TOOL, &q);
    let t = &e.text;
    assert!(t.contains("Rule 1 \"ask-kill\" (ask, on timeout strip) protects the target: it applies and asks the handler about PROCESS_TERMINATE."), "{t}");
    assert!(t.contains("Rule 2 \"ask-read\" (ask, on timeout allow) protects the target: it applies and asks the handler about PROCESS_VM_READ."), "{t}");
    assert!(t.contains("Ask: the handler decides about PROCESS_TERMINATE|PROCESS_VM_READ (rule 1 \"ask-kill\"); it can only remove rights, never add them. Without an answer within 100 ms (no handler, timeout, pool full) the request gets PROCESS_VM_READ."), "{t}");
    assert!(
        t.contains(
            "Result: granted at most PROCESS_TERMINATE|PROCESS_VM_READ; removed PROCESS_VM_WRITE"
        ),
        "{t}"
    );
    assert_eq!(
        e.evaluation.decision.ask.rights,
        PROCESS_TERMINATE | PROCESS_VM_READ
    );
    // Enforce rules already remove an ask rule's right: said so, not asked.
    let q = req(ObjectKind::Process, Operation::Create, PROCESS_VM_WRITE);
    let t = procguard_policy::explain(&p, &AGENT, &TOOL, &q).text;
    assert!(
        t.contains("it applies, but enforce rules already remove PROCESS_VM_WRITE."),
        "{t}"
    );
    assert!(!t.contains("Ask:"), "{t}");
    // A kernel handle with the exemption off: never asked, fallback at once.
    let mut off = p.clone();
    off.settings.exempt_kernel_handles = false;
    let mut q = req(ObjectKind::Process, Operation::Create, PROCESS_TERMINATE);
    q.kernel_handle = true;
    let t = procguard_policy::explain(&off, &AGENT, &TOOL, &q).text;
    assert!(t.contains("never asked about"), "{t}");
    assert!(t.contains("the fallback applies at once, (none)."), "{t}");
    assert!(
        t.contains("Result: granted (none); removed PROCESS_TERMINATE; responsible rule 1"),
        "{t}"
    );
}

#[test]
fn lint_flags_ask_rules_for_critical_requesters_and_rights_enforce_rules_remove() {
    use procguard_policy::{lint, LintKind};
    let kinds =
        |src: &str| -> Vec<LintKind> { lint(&policy(src)).into_iter().map(|w| w.kind).collect() };
    // Exemption off and an "any" ask rule: critical processes would always get the fallback.
    let src = format!(
        "[settings]\nexempt_critical_requesters = false\n{}",
        &ASK[ASK.find("[[rule]]").unwrap()..]
    );
    let warnings = lint(&policy(&src));
    let w = warnings
        .iter()
        .find(|w| w.kind == LintKind::AskCriticalRequesters)
        .unwrap();
    assert_eq!(w.rule, Some(1));
    assert!(w.message.contains("never asked about"), "{}", w.message);
    assert_eq!(
        warnings
            .iter()
            .filter(|w| w.kind == LintKind::AskCriticalRequesters)
            .count(),
        1,
        "tool.exe is not critical"
    );
    assert!(!kinds(ASK).contains(&LintKind::AskCriticalRequesters));
    // An on_timeout = "allow" ask rule about rights an enforce rule already strips.
    let w = lint(&policy(ASK));
    let shadow: Vec<_> = w
        .iter()
        .filter(|w| w.kind == LintKind::AskShadowedByEnforce)
        .collect();
    assert_eq!(shadow.len(), 1, "{w:#?}");
    assert_eq!(shadow[0].rule, Some(2));
    assert!(
        shadow[0]
            .message
            .contains("enforce rule(s) 0 already remove process handles: PROCESS_VM_WRITE"),
        "{}",
        shadow[0].message
    );
    assert!(
        shadow[0].message.contains("these rights"),
        "{}",
        shadow[0].message
    );
    // Wholly shadowed: never asked at all.
    let all = r#"
[[rule]]
name = "no-kill"
target = { name = "agent.exe" }
strip = ["no-kill"]

[[rule]]
name = "ask-kill"
target = { name = "agent.exe" }
requester = { name = "tool.exe" }
strip = ["PROCESS_TERMINATE", "THREAD_TERMINATE"]
mode = "ask"
on_timeout = "allow"
"#;
    let w = lint(&policy(all));
    let shadow = w
        .iter()
        .find(|w| w.kind == LintKind::AskShadowedByEnforce)
        .unwrap();
    assert!(
        shadow.message.contains("this rule's rights at all"),
        "{}",
        shadow.message
    );
    // Another target, or an enforce rule restricting other requesters only: no warning.
    let other = all.replace("requester = { name = \"tool.exe\" }\n", "").replace("target = { name = \"agent.exe\" }\nstrip = [\"no-kill\"]", "target = { name = \"agent.exe\" }\nrequester = { name = \"x.exe\" }\nstrip = [\"no-kill\"]");
    assert!(
        !kinds(&other).contains(&LintKind::AskShadowedByEnforce),
        "{other}"
    );
}
