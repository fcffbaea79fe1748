//! The TOML front end: every feature and every error message, located precisely.

use procguard_policy::rights::*;
use procguard_policy::toml::{parse_policy, TomlError};
use procguard_policy::{Mode, OnTimeout, Requester};

fn errors(src: &str) -> Vec<TomlError> {
    match parse_policy(src) {
        Ok(p) => panic!("expected errors, parsed {p:?}"),
        Err(e) => e.0,
    }
}

fn one_error(src: &str) -> TomlError {
    let e = errors(src);
    assert_eq!(e.len(), 1, "{e:#?}");
    e.into_iter().next().unwrap()
}

const BASE: &str = "[[rule]]\nname = \"r\"\ntarget = { name = \"agent.exe\" }\n";

#[test]
fn example_policy_parses_with_expected_rules() {
    let src = include_str!("../examples/policy.toml");
    let p = parse_policy(src).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.rules.len(), 3);
    let r0 = &p.rules[0];
    assert_eq!(&*r0.name, "agent-no-tamper");
    assert!(matches!(r0.requester, Requester::AnyExcept(_)));
    assert_eq!(
        r0.strip_process,
        procguard_policy::rights::set_by_name("no-tamper")
            .unwrap()
            .process
    );
    assert_eq!(p.rules[1].mode, Mode::Audit);
    assert!(!p.rules[1].objects.thread);
    assert_eq!(
        p.rules[2].strip_process & PROCESS_TERMINATE,
        PROCESS_TERMINATE
    );
    assert_eq!(p.rules[2].strip_thread & THREAD_TERMINATE, THREAD_TERMINATE);
}

#[test]
fn defaults_are_any_requester_both_objects_both_operations_enforce() {
    let p = parse_policy(&format!("{BASE}strip = [\"PROCESS_TERMINATE\"]\n")).unwrap();
    let r = &p.rules[0];
    assert_eq!(r.requester, Requester::Any);
    assert!(r.objects.process && r.objects.thread);
    assert!(r.operations.create && r.operations.duplicate);
    assert_eq!(r.mode, Mode::Enforce);
    assert!(
        p.settings.exempt_self
            && p.settings.exempt_kernel_handles
            && p.settings.exempt_critical_requesters
    );
}

#[test]
fn right_names_route_to_their_object_kind_and_numbers_to_all_covered() {
    let p = parse_policy(&format!(
        "{BASE}strip = [\"PROCESS_VM_WRITE\", \"thread_set_context\", \"SYNCHRONIZE\", 0x40]\n"
    ))
    .unwrap();
    let r = &p.rules[0];
    assert_eq!(r.strip_process, PROCESS_VM_WRITE | SYNCHRONIZE | 0x40);
    assert_eq!(r.strip_thread, THREAD_SET_CONTEXT | SYNCHRONIZE | 0x40);
}

#[test]
fn settings_switches_are_read() {
    let p = parse_policy(&format!(
        "[settings]\nexempt_self = false\nexempt_kernel_handles = false\nexempt_critical_requesters = false\n{BASE}strip = 1\n"
    ))
    .unwrap();
    assert!(
        !p.settings.exempt_self
            && !p.settings.exempt_kernel_handles
            && !p.settings.exempt_critical_requesters
    );
}

#[test]
fn selectors_accept_single_values_and_arrays() {
    let p = parse_policy(
        "[[rule]]\nname = \"r\"\ntarget = { name = [\"a.exe\", \"b.exe\"], path = '\\Device\\*\\x.exe', pid = [10, 20] }\nrequester = { pid = 7 }\nstrip = 1\n",
    )
    .unwrap();
    let t = &p.rules[0].target;
    assert_eq!(t.names.len(), 2);
    assert_eq!(&*t.paths[0], "\\Device\\*\\x.exe");
    assert_eq!(t.pids, vec![10, 20]);
    assert!(matches!(&p.rules[0].requester, Requester::Only(s) if s.pids == vec![7]));
}

#[test]
fn unknown_right_is_located_with_suggestion_and_choices() {
    let e = one_error(&format!("{BASE}strip = [\"PROCESS_TERMINAT\"]\n"));
    assert_eq!((e.line, e.column), (4, 10));
    assert_eq!(e.key.as_deref(), Some("rule[0].strip"));
    assert!(
        e.message.contains("unknown right \"PROCESS_TERMINAT\""),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("did you mean PROCESS_TERMINATE"),
        "{}",
        e.message
    );
    assert!(e.valid.iter().any(|v| v == "THREAD_SUSPEND_RESUME"));
    assert!(e.valid.iter().any(|v| v == "no-kill"));
}

#[test]
fn thread_right_on_process_only_rule_is_an_error() {
    let e = one_error(&format!(
        "{BASE}objects = \"process\"\nstrip = [\"THREAD_TERMINATE\"]\n"
    ));
    assert_eq!(e.line, 5);
    assert!(
        e.message.contains("THREAD_TERMINATE is a thread right"),
        "{}",
        e.message
    );
}

#[test]
fn empty_target_selector_is_an_error_at_the_target() {
    let e = one_error("[[rule]]\nname = \"r\"\ntarget = { name = [] }\nstrip = 1\n");
    assert_eq!((e.line, e.column), (3, 10));
    assert!(e.message.contains("selects no process"), "{}", e.message);
}

#[test]
fn empty_requester_selector_is_an_error() {
    let e = one_error(&format!(
        "{BASE}requester = {{ except = {{}} }}\nstrip = 1\n"
    ));
    assert_eq!(e.key.as_deref(), Some("rule[0].requester.except"));
    assert!(e.message.contains("selects no process"));
}

#[test]
fn impossible_globs_are_errors_with_reason() {
    for (pat, why) in [
        ("C:\\\\Program Files\\\\x.exe", "NT paths"),
        ("\\\\Device\\\\dir\\\\", "trailing"),
        ("\\\\Device\\\\\\\\x.exe", "empty path component"),
        ("\\\\Device/x.exe", "'/'"),
        ("\\\\Device\\\\a**\\\\x.exe", "whole path component"),
        ("", "empty"),
    ] {
        let e = one_error(&format!(
            "[[rule]]\nname = \"r\"\ntarget = {{ path = \"{pat}\" }}\nstrip = 1\n"
        ));
        assert_eq!((e.line, e.column), (3, 19), "{pat}");
        assert!(
            e.message.contains("can never match") && e.message.contains(why),
            "{pat}: {}",
            e.message
        );
    }
}

#[test]
fn image_name_with_wildcard_or_separator_is_an_error() {
    let e = one_error("[[rule]]\nname = \"r\"\ntarget = { name = \"a*.exe\" }\nstrip = 1\n");
    assert!(
        e.message.contains("use 'path' for patterns"),
        "{}",
        e.message
    );
}

#[test]
fn duplicate_rule_names_point_at_second_and_mention_first() {
    let src = format!("{BASE}strip = 1\n{BASE}strip = 1\n");
    let e = one_error(&src);
    assert_eq!((e.line, e.column), (6, 8));
    assert!(
        e.message.contains("duplicate rule name \"r\""),
        "{}",
        e.message
    );
    assert!(e.message.contains("rule[0] on line 2"), "{}", e.message);
}

#[test]
fn mask_that_strips_nothing_is_an_error() {
    for strip in ["[]", "0", "[0]"] {
        let e = one_error(&format!("{BASE}strip = {strip}\n"));
        assert_eq!(e.line, 4, "{strip}");
        assert!(
            e.message.contains("removes nothing"),
            "{strip}: {}",
            e.message
        );
    }
}

#[test]
fn unknown_bits_in_number_are_an_error() {
    let e = one_error(&format!("{BASE}objects = \"thread\"\nstrip = 0x2000\n"));
    assert!(
        e.message.contains("not thread access rights"),
        "{}",
        e.message
    );
}

#[test]
fn rule_restricting_exempt_critical_process_is_an_error() {
    for req in [
        "{ name = \"csrss.exe\" }",
        "{ pid = 4 }",
        "{ path = '\\Device\\HarddiskVolume*\\Windows\\System32\\*.exe' }",
    ] {
        let e = one_error(&format!("{BASE}requester = {req}\nstrip = 1\n"));
        assert_eq!((e.line, e.column), (4, 13), "{req}");
        assert_eq!(e.key.as_deref(), Some("rule[0].requester"));
        assert!(
            e.message.contains("critical system process"),
            "{req}: {}",
            e.message
        );
    }
    // With the exemption off, the same rule is legal (lint warns instead).
    let ok = format!("[settings]\nexempt_critical_requesters = false\n{BASE}requester = {{ name = \"csrss.exe\" }}\nstrip = 1\n");
    assert!(parse_policy(&ok).is_ok());
}

#[test]
fn unknown_keys_list_valid_keys() {
    let e = one_error(&format!("{BASE}strip = 1\nstirp = 2\n"));
    assert_eq!((e.line, e.column), (5, 1));
    assert_eq!(e.key.as_deref(), Some("rule[0].stirp"));
    assert!(e.valid.iter().any(|v| v == "strip"));
    let e = one_error("[setting]\nexempt_self = true\n");
    assert_eq!(e.valid, vec!["settings".to_string(), "rule".to_string()]);
}

#[test]
fn bad_enum_values_list_choices() {
    let e = one_error(&format!("{BASE}strip = 1\nmode = \"warn\"\n"));
    assert_eq!(e.valid, vec!["enforce", "audit", "ask"]);
    let e = one_error(&format!(
        "{BASE}strip = 1\nobjects = [\"process\", \"file\"]\n"
    ));
    assert!(e.message.contains("\"file\""));
    assert_eq!(
        e.valid,
        vec![
            "process".to_string(),
            "thread".to_string(),
            "both".to_string()
        ]
    );
    let e = one_error(&format!("{BASE}strip = 1\noperations = []\n"));
    assert!(e.message.contains("covers nothing"));
}

#[test]
fn missing_required_keys_are_reported() {
    let e = errors("[[rule]]\nname = \"r\"\n");
    assert!(e
        .iter()
        .any(|e| e.message.contains("missing key \"target\"")));
    assert!(e
        .iter()
        .any(|e| e.message.contains("missing key \"strip\"")));
}

#[test]
fn syntax_errors_are_located() {
    let e = one_error("[[rule]]\nname = \"r\n");
    assert_eq!(e.line, 2);
    assert!(e.message.starts_with("TOML syntax error"), "{}", e.message);
}

#[test]
fn several_errors_are_all_reported() {
    let e = errors(&format!(
        "{BASE}strip = [\"NOPE\"]\n[[rule]]\nname = \"\"\ntarget = {{}}\nstrip = 1\n"
    ));
    assert!(e.len() >= 3, "{e:#?}");
}

#[test]
fn display_has_line_column_key_and_choices() {
    let e = one_error(&format!("{BASE}strip = 1\nmode = \"warn\"\n"));
    assert_eq!(
        e.to_string(),
        "line 5, column 8: rule[0].mode: unknown mode \"warn\" (valid choices: enforce, audit, ask)"
    );
}

#[test]
fn ask_rules_default_to_on_timeout_strip() {
    let p = parse_policy(&format!("{BASE}strip = \"no-kill\"\nmode = \"ask\"\n")).unwrap();
    assert_eq!(
        p.rules[0].mode,
        Mode::Ask {
            on_timeout: OnTimeout::Strip
        }
    );
    assert_eq!(p.settings.ask_timeout_ms, 250);
    for (word, on_timeout) in [("strip", OnTimeout::Strip), ("allow", OnTimeout::Allow)] {
        let p = parse_policy(&format!(
            "{BASE}strip = 1\nmode = \"ask\"\non_timeout = \"{word}\"\n"
        ))
        .unwrap();
        assert_eq!(p.rules[0].mode, Mode::Ask { on_timeout });
    }
}

#[test]
fn on_timeout_outside_ask_rules_is_located() {
    for mode in ["", "mode = \"enforce\"\n", "mode = \"audit\"\n"] {
        let e = one_error(&format!("{BASE}strip = 1\n{mode}on_timeout = \"allow\"\n"));
        let line = if mode.is_empty() { 5 } else { 6 };
        assert_eq!((e.line, e.column), (line, 14), "{e}");
        assert_eq!(e.key.as_deref(), Some("rule[0].on_timeout"));
        assert!(e.message.contains("only to ask rules"), "{e}");
    }
}

#[test]
fn bad_on_timeout_lists_choices() {
    let e = one_error(&format!(
        "{BASE}strip = 1\nmode = \"ask\"\non_timeout = \"deny\"\n"
    ));
    assert_eq!(
        e.to_string(),
        "line 6, column 14: rule[0].on_timeout: unknown on_timeout \"deny\" (valid choices: strip, allow)"
    );
    let e = one_error(&format!(
        "{BASE}strip = 1\nmode = \"ask\"\non_timeout = true\n"
    ));
    assert_eq!((e.line, e.column), (6, 14));
}

#[test]
fn ask_timeout_is_bounded_with_its_location() {
    for (value, ok) in [
        ("1", true),
        ("5000", true),
        ("250", true),
        ("0", false),
        ("5001", false),
        ("-3", false),
        ("99999999999", false),
    ] {
        let src = format!("[settings]\nask_timeout_ms = {value}\n{BASE}strip = 1\n");
        match parse_policy(&src) {
            Ok(p) => {
                assert!(ok, "{value} accepted");
                assert_eq!(p.settings.ask_timeout_ms.to_string(), value);
            }
            Err(e) => {
                assert!(!ok, "{value} refused: {e}");
                assert_eq!(e.0.len(), 1, "{e}");
                let e = &e.0[0];
                assert_eq!((e.line, e.column), (2, 18), "{e}");
                assert_eq!(e.key.as_deref(), Some("settings.ask_timeout_ms"));
                assert!(e.message.contains("1..=5000"), "{e}");
            }
        }
    }
    let e = one_error("[settings]\nask_timeout_ms = \"fast\"\n");
    assert_eq!((e.line, e.column), (2, 18));
}
