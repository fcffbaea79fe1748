//! `lint`: warnings about rules that are legal but dangerous or useless.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use crate::glob::Glob;
use crate::model::{selects_critical_process, Mode, Policy, Requester, Rule, Selector};
use crate::model::{ObjectKind, Operation};
use crate::rights::{
    undocumented_removal, MaskNames, PROCESS_CREATE_THREAD, PROCESS_QUERY_LIMITED_INFORMATION,
    PROCESS_SUSPEND_RESUME, PROCESS_TERMINATE, PROCESS_VM_OPERATION, PROCESS_VM_WRITE, SYNCHRONIZE,
    THREAD_SUSPEND_RESUME, THREAD_TERMINATE,
};

/// What a warning is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LintKind {
    /// Strips `PROCESS_TERMINATE` but not `PROCESS_SUSPEND_RESUME`: the process can
    /// still be frozen, or killed through its threads (PITFALLS 9).
    IncompleteKillProtection,
    /// Strips VM write but leaves thread creation or VM operation (or the reverse):
    /// injection stays possible.
    IncompleteInjectionProtection,
    /// Covers process handles with kill protection but not thread handles, whose
    /// `THREAD_TERMINATE`/`THREAD_SUSPEND_RESUME` still stop the process.
    ThreadsNotCovered,
    /// Covers both object kinds but strips nothing from one of them.
    ObjectKindStripsNothing,
    /// The target selector matches every process.
    TargetsEverything,
    /// The target selector selects a critical system process.
    TargetsCriticalProcess,
    /// Critical system processes are not exempt and the rule restricts them.
    RestrictsCriticalProcesses,
    /// A built-in exemption is switched off.
    ExemptionDisabled,
    /// A PID selector: PIDs are reused, so a stored policy may hit another process.
    PidSelector,
    /// Strips rights that waits, Task Manager or the shell rely on
    /// (`SYNCHRONIZE`, `PROCESS_QUERY_LIMITED_INFORMATION`).
    StripsHarmlessRights,
    /// An earlier rule with the same selectors, objects, operations and mode
    /// already strips everything this one strips.
    Redundant,
    /// The requester selector also selects the target, and `exempt_self` only
    /// covers the same process: other instances of the target are restricted too.
    RequesterIncludesTarget,
    /// An enforce rule removes rights that `OB_PRE_CREATE_HANDLE_INFORMATION`'s
    /// documentation does not list as removable by a driver
    /// ([`crate::rights::DOCUMENTED_PROCESS_RIGHTS`],
    /// [`crate::rights::DOCUMENTED_THREAD_RIGHTS`]), such as `PROCESS_VM_READ`.
    /// Allowed (and removed), but what Windows does without them is not a
    /// documented behaviour. Audit rules remove nothing and are not warned.
    UndocumentedRights,
    /// An ask rule that can apply to critical system processes as requesters
    /// while `exempt_critical_requesters` is off: they are never asked about (a
    /// handler must not be able to stall them), so they always get the fallback.
    AskCriticalRequesters,
    /// An ask rule asks about rights that an enforce rule with the same target
    /// (for every requester it restricts) already removes: the handler is never
    /// asked about those rights.
    AskShadowedByEnforce,
}

/// One warning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LintWarning {
    /// Index of the rule, or `None` for a policy-wide warning.
    pub rule: Option<usize>,
    /// Name of the rule.
    pub rule_name: Option<Arc<str>>,
    /// What it is about.
    pub kind: LintKind,
    /// Explanation for a person.
    pub message: String,
}

impl fmt::Display for LintWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.rule, &self.rule_name) {
            (Some(i), Some(n)) => write!(f, "warning: rule {i} {n:?}: {}", self.message),
            _ => write!(f, "warning: {}", self.message),
        }
    }
}

fn targets_everything(s: &Selector) -> bool {
    s.paths
        .iter()
        .any(|p| Glob::new(p).is_ok_and(|g| g.matches_everything()))
}

/// Lints a (valid) policy.
#[must_use]
pub fn lint(policy: &Policy) -> Vec<LintWarning> {
    let mut out = Vec::new();
    let st = &policy.settings;
    for (what, on) in [
        ("exempt_self", st.exempt_self),
        ("exempt_kernel_handles", st.exempt_kernel_handles),
        ("exempt_critical_requesters", st.exempt_critical_requesters),
    ] {
        if !on {
            out.push(LintWarning {
                rule: None,
                rule_name: None,
                kind: LintKind::ExemptionDisabled,
                message: format!("settings.{what} is off: see the documentation of Settings for what this can break"),
            });
        }
    }
    for (i, r) in policy.rules.iter().enumerate() {
        let mut warn = |kind: LintKind, message: String| {
            out.push(LintWarning {
                rule: Some(i),
                rule_name: Some(r.name.clone()),
                kind,
                message,
            });
        };
        lint_rule(policy, i, r, &mut warn);
    }
    out
}

fn lint_rule(policy: &Policy, i: usize, r: &Rule, warn: &mut dyn FnMut(LintKind, String)) {
    let p = if r.objects.process {
        r.strip_process
    } else {
        0
    };
    if p & PROCESS_TERMINATE != 0 && p & PROCESS_SUSPEND_RESUME == 0 {
        warn(
            LintKind::IncompleteKillProtection,
            "strips PROCESS_TERMINATE but not PROCESS_SUSPEND_RESUME: the process can still be frozen; \
             consider the \"no-kill\" set"
                .into(),
        );
    }
    let inject = PROCESS_VM_WRITE | PROCESS_CREATE_THREAD | PROCESS_VM_OPERATION;
    if p & inject != 0 && p & inject != inject {
        warn(
            LintKind::IncompleteInjectionProtection,
            "strips some but not all of PROCESS_VM_WRITE, PROCESS_VM_OPERATION, PROCESS_CREATE_THREAD: code \
             injection stays possible; consider the \"no-inject\" set"
                .into(),
        );
    }
    if r.objects.process
        && !r.objects.thread
        && p & (PROCESS_TERMINATE | PROCESS_SUSPEND_RESUME) != 0
    {
        warn(
            LintKind::ThreadsNotCovered,
            "protects process handles against kill/suspend but not thread handles: THREAD_TERMINATE and \
             THREAD_SUSPEND_RESUME on every thread stop the process just as well"
                .into(),
        );
    }
    if r.objects.process && r.objects.thread && (r.strip_process == 0 || r.strip_thread == 0) {
        let which = if r.strip_process == 0 {
            "process"
        } else {
            "thread"
        };
        warn(
            LintKind::ObjectKindStripsNothing,
            format!("covers {which} handles but strips no {which} right: drop that object kind or add rights"),
        );
    }
    let t = if r.objects.thread { r.strip_thread } else { 0 };
    if r.objects.thread
        && t & (THREAD_TERMINATE | THREAD_SUSPEND_RESUME) == 0
        && p & PROCESS_TERMINATE != 0
    {
        warn(
            LintKind::ThreadsNotCovered,
            "covers thread handles but strips neither THREAD_TERMINATE nor THREAD_SUSPEND_RESUME"
                .into(),
        );
    }
    if targets_everything(&r.target) {
        warn(
            LintKind::TargetsEverything,
            "the target selector matches every process: every handle request in the system is filtered".into(),
        );
    }
    if let Some(what) = selects_critical_process(&r.target) {
        warn(
            LintKind::TargetsCriticalProcess,
            format!("the target selects the critical system process {what:?}: Windows components that manage it may fail"),
        );
    }
    let hits_critical = match &r.requester {
        Requester::Any => true,
        Requester::Only(s) => selects_critical_process(s).is_some(),
        Requester::AnyExcept(s) => selects_critical_process(s).is_none(),
    };
    if let Mode::Ask { on_timeout } = r.mode {
        if !policy.settings.exempt_critical_requesters && hits_critical {
            warn(
                LintKind::AskCriticalRequesters,
                format!(
                    "critical system processes are not exempt and this ask rule applies to them as requesters: \
                     they are never asked about (a handler must not stall them), so they always get the \
                     fallback (on_timeout = \"{}\")",
                    on_timeout.name()
                ),
            );
        }
        lint_ask_shadowed(policy, r, warn);
    }
    if !policy.settings.exempt_critical_requesters && r.mode == Mode::Enforce && hits_critical {
        warn(
            LintKind::RestrictsCriticalProcesses,
            "critical system processes are not exempt and this rule strips rights from them: this can hang \
             or crash Windows"
                .into(),
        );
    }
    let has_pid = !r.target.pids.is_empty()
        || matches!(&r.requester, Requester::Only(s) | Requester::AnyExcept(s) if !s.pids.is_empty());
    if has_pid {
        warn(
            LintKind::PidSelector,
            "selects by PID: PIDs are reused, so a stored policy may later match an unrelated process".into(),
        );
    }
    let harmless = SYNCHRONIZE | PROCESS_QUERY_LIMITED_INFORMATION;
    // Ask rules remove their rights too (by the handler's answer or the fallback).
    let removes = r.mode != Mode::Audit;
    if (p | t) & harmless != 0 && removes {
        warn(
            LintKind::StripsHarmlessRights,
            "strips SYNCHRONIZE or *_QUERY_LIMITED_INFORMATION: waiting on the process, Task Manager and the shell \
             break, and nothing is protected by it"
                .into(),
        );
    }
    if removes {
        let mut undocumented = String::new();
        for (kind, mask) in [(ObjectKind::Process, p), (ObjectKind::Thread, t)] {
            let bits = undocumented_removal(kind, mask);
            if bits != 0 {
                let separator = if undocumented.is_empty() { "" } else { "; " };
                undocumented.push_str(&format!(
                    "{separator}{} handles: {}",
                    crate::model::kind_word(kind),
                    MaskNames(kind, bits)
                ));
            }
        }
        if !undocumented.is_empty() {
            warn(
                LintKind::UndocumentedRights,
                format!(
                    "strips rights Microsoft does not list as removable by a driver \
                     (OB_PRE_CREATE_HANDLE_INFORMATION): {undocumented}; they are removed, but \
                     what Windows and programs do without them is undocumented"
                ),
            );
        }
    }
    if let Requester::Only(s) = &r.requester {
        if *s == r.target {
            warn(
                LintKind::RequesterIncludesTarget,
                "the requester selector is the target selector: instances of the target restrict each other \
                 (exempt_self covers only a process opening itself)"
                    .into(),
            );
        }
    }
    for (j, e) in policy.rules.iter().enumerate().take(i) {
        if e.target == r.target
            && e.requester == r.requester
            && e.objects == r.objects
            && e.operations == r.operations
            && e.mode == r.mode
            && r.strip_process & !e.strip_process == 0
            && r.strip_thread & !e.strip_thread == 0
        {
            warn(
                LintKind::Redundant,
                format!("rule {j} {:?} already strips everything this rule strips from the same processes", e.name),
            );
            break;
        }
    }
}

/// [`LintKind::AskShadowedByEnforce`]: the rights of ask rule `r` that enforce
/// rules with the same target, restricting every requester `r` restricts (their
/// requester is "any" or the same), remove for every handle `r` covers.
fn lint_ask_shadowed(policy: &Policy, r: &Rule, warn: &mut dyn FnMut(LintKind, String)) {
    let mut shadowed = [
        (ObjectKind::Process, u32::MAX),
        (ObjectKind::Thread, u32::MAX),
    ];
    let mut by = Vec::new();
    for (kind, acc) in &mut shadowed {
        for op in [Operation::Create, Operation::Duplicate] {
            let asked = r.strip_for(*kind, op);
            if asked == 0 {
                continue;
            }
            let mut stripped = 0;
            for (j, e) in policy.rules.iter().enumerate() {
                if e.mode == Mode::Enforce
                    && e.target == r.target
                    && (e.requester == Requester::Any || e.requester == r.requester)
                {
                    let bits = e.strip_for(*kind, op) & asked;
                    if bits != 0 && !by.contains(&j) {
                        by.push(j);
                    }
                    stripped |= bits;
                }
            }
            *acc &= stripped;
        }
        let covered = match kind {
            ObjectKind::Process => r.objects.process && r.strip_process != 0,
            ObjectKind::Thread => r.objects.thread && r.strip_thread != 0,
        };
        if !covered {
            *acc = 0;
        }
    }
    let [(_, p), (_, t)] = shadowed;
    if p == 0 && t == 0 {
        return;
    }
    let all = p == r.strip_process && t == r.strip_thread;
    let mut what = String::new();
    for (kind, bits) in [(ObjectKind::Process, p), (ObjectKind::Thread, t)] {
        if bits != 0 {
            let separator = if what.is_empty() { "" } else { "; " };
            what.push_str(&format!(
                "{separator}{} handles: {}",
                crate::model::kind_word(kind),
                MaskNames(kind, bits)
            ));
        }
    }
    let rules: Vec<String> = by.iter().map(|j| format!("{j}")).collect();
    warn(
        LintKind::AskShadowedByEnforce,
        format!(
            "enforce rule(s) {} already remove {what} for the same target and requesters: the handler is \
             never asked about {}",
            rules.join(", "),
            if all { "this rule's rights at all" } else { "these rights" }
        ),
    );
}
