//! Random policies, identities and requests for property tests and benchmarks.
#![allow(dead_code)]

use std::sync::Arc;

use proptest::prelude::*;

use procguard_policy::rights::{VALID_PROCESS_BITS, VALID_THREAD_BITS};
use procguard_policy::{
    HandleRequest, Mode, ObjectKind, Objects, OnTimeout, Operation, Operations, Policy, Requester,
    Rule, Selector, Settings,
};

pub const NAMES: &[&str] = &[
    "agent.exe",
    "AGENT.EXE",
    "tool.exe",
    "csrss.exe",
    "lsass.exe",
    "updater.exe",
    "kiosk.exe",
    "a.exe",
    "ß.exe",
];
pub const DIRS: &[&str] = &[
    "Windows",
    "System32",
    "Program Files",
    "Acme",
    "Tools",
    "x",
    "SYSTEM32",
];
pub const PIDS: &[u32] = &[0, 4, 600, 1000, 1001, 2000, 3000];

/// An owned identity (the engine takes `ProcessIdentity<'_>` borrowing from it).
#[derive(Clone, Debug)]
pub struct Ident {
    pub pid: u32,
    pub path: String,
}

impl Ident {
    pub fn id(&self) -> procguard_policy::ProcessIdentity<'_> {
        procguard_policy::ProcessIdentity {
            pid: self.pid,
            image_path: &self.path,
        }
    }
}

pub fn ident() -> impl Strategy<Value = Ident> {
    let pid = prop_oneof![prop::sample::select(PIDS), any::<u32>()];
    let path = prop_oneof![
        Just(String::new()),
        (
            1u8..4,
            prop::collection::vec(prop::sample::select(DIRS), 0..4),
            prop::sample::select(NAMES)
        )
            .prop_map(|(vol, dirs, name)| {
                let mut p = format!("\\Device\\HarddiskVolume{vol}");
                for d in dirs {
                    p.push('\\');
                    p.push_str(d);
                }
                p.push('\\');
                p.push_str(name);
                p
            }),
        prop::sample::select(NAMES).prop_map(|n| format!("\\SystemRoot\\System32\\{n}")),
    ];
    (pid, path).prop_map(|(pid, path)| Ident { pid, path })
}

pub fn glob() -> impl Strategy<Value = String> {
    let comp = prop_oneof![
        prop::sample::select(DIRS).prop_map(str::to_string),
        Just("*".to_string()),
        Just("**".to_string()),
        Just("?cme".to_string()),
        Just("HarddiskVolume*".to_string()),
        Just("Device".to_string()),
        Just("sys*32".to_string()),
    ];
    let file = prop_oneof![
        prop::sample::select(NAMES).prop_map(str::to_string),
        Just("*.exe".to_string()),
        Just("a?ent.exe".to_string()),
        Just("*".to_string()),
        Just("**".to_string()),
    ];
    (any::<bool>(), prop::collection::vec(comp, 0..5), file).prop_map(|(lead, comps, file)| {
        let mut p = if lead {
            "**".to_string()
        } else {
            String::new()
        };
        for c in comps {
            p.push('\\');
            p.push_str(&c);
        }
        p.push('\\');
        p.push_str(&file);
        p
    })
}

pub fn selector() -> impl Strategy<Value = Selector> {
    (
        prop::collection::vec(prop::sample::select(NAMES), 0..3),
        prop::collection::vec(glob(), 0..2),
        prop::collection::vec(prop::sample::select(PIDS), 0..2),
    )
        .prop_map(|(n, p, q)| Selector {
            names: n.into_iter().map(Arc::from).collect(),
            paths: p.into_iter().map(|s| Arc::from(s.as_str())).collect(),
            pids: q,
        })
        .prop_filter("non-empty", |s| !s.is_empty())
}

pub fn requester() -> impl Strategy<Value = Requester> {
    prop_oneof![
        2 => Just(Requester::Any),
        1 => selector().prop_map(Requester::Only),
        1 => selector().prop_map(Requester::AnyExcept),
    ]
}

pub fn rule(index: usize) -> impl Strategy<Value = Rule> {
    rule_with(index, requester().boxed())
}

/// A rule whose requester is never "any".
pub fn dependent_rule(index: usize) -> impl Strategy<Value = Rule> {
    let req = prop_oneof![
        selector().prop_map(Requester::Only),
        selector().prop_map(Requester::AnyExcept)
    ];
    rule_with(index, req.boxed())
}

fn rule_with(index: usize, requester: BoxedStrategy<Requester>) -> impl Strategy<Value = Rule> {
    (
        selector(),
        requester,
        1u8..4,
        1u8..4,
        any::<u32>(),
        any::<u32>(),
        mode(),
    )
        .prop_map(move |(target, requester, obj, ops, sp, st, mode)| {
            let objects = Objects {
                process: obj & 1 != 0,
                thread: obj & 2 != 0,
            };
            let mut strip_process = if objects.process {
                sp & VALID_PROCESS_BITS
            } else {
                0
            };
            let strip_thread = if objects.thread {
                st & VALID_THREAD_BITS
            } else {
                0
            };
            if strip_process == 0 && strip_thread == 0 && objects.process {
                strip_process = 1;
            }
            Rule {
                name: Arc::from(format!("rule-{index}").as_str()),
                target,
                requester,
                objects,
                operations: Operations {
                    create: ops & 1 != 0,
                    duplicate: ops & 2 != 0,
                },
                strip_process,
                strip_thread: if strip_process == 0 && strip_thread == 0 {
                    1
                } else {
                    strip_thread
                },
                mode,
            }
        })
}

/// Every mode, ask rules of both `on_timeout`s included.
pub fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        3 => Just(Mode::Enforce),
        2 => Just(Mode::Audit),
        1 => Just(Mode::Ask { on_timeout: OnTimeout::Strip }),
        1 => Just(Mode::Ask { on_timeout: OnTimeout::Allow }),
    ]
}

pub fn settings() -> impl Strategy<Value = Settings> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(250u32), Just(1), Just(5000), 1u32..=5000],
    )
        .prop_map(|(a, b, c, ms)| Settings {
            exempt_self: a,
            exempt_kernel_handles: b,
            exempt_critical_requesters: c,
            ask_timeout_ms: ms,
        })
}

/// A valid random policy of `n` rules whose requesters are never "any": up to 63
/// requester-dependent entries, so every byte table of the compiled form is used.
pub fn dependent_policy(min: usize, max: usize) -> impl Strategy<Value = Policy> {
    (settings(), min..max)
        .prop_flat_map(|(settings, n)| {
            let rules: Vec<_> = (0..n).map(dependent_rule).collect();
            (Just(settings), rules)
        })
        .prop_map(|(settings, rules)| Policy { settings, rules })
        .prop_filter("valid", |p| p.validate().is_ok())
}

/// A valid random policy of `min..max` rules.
pub fn policy(min: usize, max: usize) -> impl Strategy<Value = Policy> {
    (settings(), min..max)
        .prop_flat_map(|(settings, n)| {
            let rules: Vec<_> = (0..n).map(rule).collect();
            (Just(settings), rules)
        })
        .prop_map(|(settings, rules)| Policy { settings, rules })
        .prop_filter("valid", |p| p.validate().is_ok())
}

pub fn request() -> impl Strategy<Value = HandleRequest> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<u32>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(t, d, desired, k, s)| HandleRequest {
            object: if t {
                ObjectKind::Thread
            } else {
                ObjectKind::Process
            },
            operation: if d {
                Operation::Duplicate
            } else {
                Operation::Create
            },
            desired_access: desired,
            kernel_handle: k,
            same_process: s,
        })
}
