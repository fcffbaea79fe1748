//! The TOML renderer: `parse_policy(&render_policy(&p)) == p`.
//!
//! Property: 500 generated policies (0-11 rules) whose both-object rules strip the
//! same standard rights from both kinds (what TOML can express) round-trip; for
//! unrestricted generated policies, rendering fails exactly when a rule has no
//! TOML spelling.

mod support;

use std::sync::Arc;

use proptest::prelude::*;

use procguard_policy::rights::{self, STANDARD_RIGHTS};
use procguard_policy::toml::{parse_policy, render_policy, RenderError};
use procguard_policy::{
    Mode, Objects, OnTimeout, Operations, Policy, Requester, Rule, Selector, Settings,
};

const STANDARD: u32 = STANDARD_RIGHTS | rights::ACCESS_SYSTEM_SECURITY;

fn round_trip(policy: &Policy) {
    let text = render_policy(policy).unwrap_or_else(|e| panic!("{e}"));
    let back = parse_policy(&text).unwrap_or_else(|e| panic!("{e}\n--- rendered:\n{text}"));
    assert_eq!(&back, policy, "rendered:\n{text}");
}

fn expressible(rule: &Rule) -> bool {
    !(rule.objects.process
        && rule.objects.thread
        && rule.strip_process & STANDARD != rule.strip_thread & STANDARD)
}

#[test]
fn the_example_policy_round_trips() {
    let policy = parse_policy(include_str!("../examples/policy.toml")).unwrap();
    round_trip(&policy);
}

#[test]
fn the_example_policy_renders_with_sets_and_names() {
    let policy = parse_policy(include_str!("../examples/policy.toml")).unwrap();
    let expected = r#"[settings]
exempt_self = true
exempt_kernel_handles = true
exempt_critical_requesters = true
ask_timeout_ms = 250

[[rule]]
name = "agent-no-tamper"
target = { name = ['acme-agent.exe'], path = ['\Device\HarddiskVolume*\Program Files\Acme\**\*.exe'] }
requester = { except = { path = ['\Device\HarddiskVolume*\Program Files\Acme\acme-updater.exe'] } }
objects = "both"
operations = "both"
strip = ["no-tamper"]
mode = "enforce"

[[rule]]
name = "agent-no-read-audit"
target = { name = ['acme-agent.exe'] }
requester = "any"
objects = "process"
operations = "both"
strip = ["PROCESS_VM_READ"]
mode = "audit"

[[rule]]
name = "kiosk-no-debug"
target = { path = ['\Device\HarddiskVolume*\Kiosk\kiosk.exe'] }
requester = { name = ['msedge.exe', 'msedgewebview2.exe'] }
objects = "both"
operations = "both"
strip = ["no-debug", "no-kill"]
mode = "enforce"
"#;
    assert_eq!(render_policy(&policy).unwrap(), expected);
}

fn rule(name: &str) -> Rule {
    Rule {
        name: Arc::from(name),
        target: Selector {
            names: vec![Arc::from("agent.exe")],
            paths: Vec::new(),
            pids: Vec::new(),
        },
        requester: Requester::Any,
        objects: Objects {
            process: true,
            thread: true,
        },
        operations: Operations {
            create: true,
            duplicate: true,
        },
        strip_process: rights::PROCESS_TERMINATE,
        strip_thread: rights::THREAD_TERMINATE,
        mode: Mode::Enforce,
    }
}

#[test]
fn awkward_strings_pids_settings_and_every_choice_round_trip() {
    let mut rules = Vec::new();
    rules.push(Rule {
        name: Arc::from("quote \" backslash \\ apostrophe ' tab \t newline \n del \u{7f} é 漢"),
        target: Selector {
            names: vec![Arc::from("it's.exe"), Arc::from("Ünïcødé.exe")],
            paths: vec![
                Arc::from("\\Device\\HarddiskVolume?\\O'Brien\\**\\*.exe"),
                Arc::from("**\\a\"b.exe"),
            ],
            pids: vec![0, 1234, u32::MAX],
        },
        ..rule("a")
    });
    for (i, (objects, operations, requester)) in [
        (
            (true, false),
            (true, false),
            Requester::Only(Selector {
                pids: vec![7],
                ..Selector::default()
            }),
        ),
        (
            (false, true),
            (false, true),
            Requester::AnyExcept(Selector {
                names: vec![Arc::from("x.exe")],
                paths: vec![Arc::from("\\??\\C:\\x\\*.exe")],
                pids: Vec::new(),
            }),
        ),
        ((true, true), (true, true), Requester::Any),
    ]
    .into_iter()
    .enumerate()
    {
        rules.push(Rule {
            objects: Objects {
                process: objects.0,
                thread: objects.1,
            },
            operations: Operations {
                create: operations.0,
                duplicate: operations.1,
            },
            requester,
            strip_process: if objects.0 {
                rights::PROCESS_SET_LIMITED_INFORMATION | rights::DELETE
            } else {
                0
            },
            strip_thread: if objects.1 {
                rights::THREAD_RESUME | rights::DELETE
            } else {
                0
            },
            mode: match i % 4 {
                0 => Mode::Audit,
                1 => Mode::Enforce,
                2 => Mode::Ask {
                    on_timeout: OnTimeout::Strip,
                },
                _ => Mode::Ask {
                    on_timeout: OnTimeout::Allow,
                },
            },
            ..rule(&format!("rule-{i}"))
        });
    }
    let policy = Policy {
        settings: Settings {
            exempt_self: false,
            exempt_kernel_handles: false,
            exempt_critical_requesters: true,
            ask_timeout_ms: 40,
        },
        rules,
    };
    round_trip(&policy);
    round_trip(&Policy::default());
}

#[test]
fn different_standard_rights_per_object_kind_have_no_toml_spelling() {
    let policy = Policy {
        settings: Settings::default(),
        rules: vec![Rule {
            strip_process: rights::PROCESS_TERMINATE | rights::WRITE_DAC,
            ..rule("split")
        }],
    };
    let error = render_policy(&policy).unwrap_err();
    assert_eq!(
        error,
        RenderError::StandardRightsDiffer {
            rule: 0,
            name: "split".into()
        }
    );
    assert_eq!(
        error.to_string(),
        "rule 0 \"split\" strips different standard rights from process and thread handles, which TOML \
         cannot express (a standard right applies to every object kind a rule covers)"
    );
}

#[test]
fn invalid_policies_are_refused() {
    let policy = Policy {
        settings: Settings::default(),
        rules: vec![rule("same"), rule("same")],
    };
    assert!(matches!(
        render_policy(&policy),
        Err(RenderError::Invalid(_))
    ));
}

/// Makes the standard rights of both-object rules agree (what TOML can say).
fn make_expressible(mut policy: Policy) -> Policy {
    for rule in &mut policy.rules {
        if rule.objects.process && rule.objects.thread {
            let standard = rule.strip_process & STANDARD;
            rule.strip_thread = (rule.strip_thread & !STANDARD) | standard;
        }
    }
    policy
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]
    #[test]
    fn generated_policies_round_trip(p in support::policy(0, 12).prop_map(make_expressible)) {
        prop_assume!(p.validate().is_ok());
        let text = render_policy(&p).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back = parse_policy(&text)
            .map_err(|e| TestCaseError::fail(format!("{e}\n--- rendered:\n{text}")))?;
        prop_assert_eq!(back, p, "rendered:\n{}", text);
    }

    #[test]
    fn rendering_fails_exactly_for_rules_toml_cannot_express(p in support::policy(0, 6)) {
        let inexpressible = p.rules.iter().position(|r| !expressible(r));
        match (render_policy(&p), inexpressible) {
            (Ok(text), None) => prop_assert_eq!(parse_policy(&text).ok(), Some(p)),
            (Err(RenderError::StandardRightsDiffer { rule, .. }), Some(first)) => {
                prop_assert_eq!(rule, first);
            }
            (other, first) => prop_assert!(false, "{:?} for first inexpressible rule {:?}", other, first),
        }
    }
}
