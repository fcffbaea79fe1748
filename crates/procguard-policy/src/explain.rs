//! `explain`: the decision for one request, in words a person can read.

use alloc::string::String;
use core::fmt::{self, Write as _};

use crate::decide::{Exemption, HandleRequest};
use crate::identity::ProcessIdentity;
use crate::model::{kind_word, Mode, OnTimeout, Operation, Policy};
use crate::reference::{evaluate, Evaluation, RuleOutcome};
use crate::rights::{undocumented_removal, AccessMask, MaskNames};

/// Explains how `policy` decides a request from `requester` for a handle to
/// `target` (same argument order as [`crate::CompiledPolicy::decide`]): which rules
/// matched the target, which applied, which exemption applied, and the result.
#[must_use]
pub fn explain(
    policy: &Policy,
    target: &ProcessIdentity<'_>,
    requester: &ProcessIdentity<'_>,
    req: &HandleRequest,
) -> Explanation {
    let ev = evaluate(policy, target, requester, req);
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = write_text(&mut text, policy, requester, target, req, &ev);
    Explanation {
        undocumented_removed: undocumented_removal(
            req.object,
            ev.decision.removed(req.desired_access),
        ),
        evaluation: ev,
        text,
    }
}

/// The result of [`explain`]: the structured evaluation and its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// Structured form.
    pub evaluation: Evaluation,
    /// Human-readable form (also its `Display`).
    pub text: String,
    /// The removed rights that `OB_PRE_CREATE_HANDLE_INFORMATION`'s
    /// documentation does not list as removable by a driver
    /// ([`crate::rights::undocumented_removal`]); the text says so too.
    pub undocumented_removed: AccessMask,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn who(id: &ProcessIdentity<'_>) -> String {
    let mut s = String::new();
    let path = if id.image_path.is_empty() {
        "(no image path)"
    } else {
        id.image_path
    };
    let _ = write!(s, "{path} (pid {})", id.pid);
    s
}

fn write_text(
    out: &mut String,
    policy: &Policy,
    requester: &ProcessIdentity<'_>,
    target: &ProcessIdentity<'_>,
    req: &HandleRequest,
    ev: &Evaluation,
) -> fmt::Result {
    let kind = kind_word(req.object);
    let how = match req.operation {
        Operation::Create => "opens",
        Operation::Duplicate => "receives a duplicated",
    };
    writeln!(
        out,
        "Request: {} {how} {kind} handle to {}, asking for {}{}.",
        who(requester),
        who(target),
        MaskNames(req.object, req.desired_access),
        if req.kernel_handle {
            " (kernel handle)"
        } else {
            ""
        }
    )?;
    if ev.matches.is_empty() {
        writeln!(out, "No rule protects the target.")?;
    }
    for m in &ev.matches {
        let r = policy.rules.get(usize::from(m.rule));
        let name = r.map_or("?", |r| &*r.name);
        let mode = match m.mode {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
            Mode::Ask {
                on_timeout: OnTimeout::Strip,
            } => "ask, on timeout strip",
            Mode::Ask {
                on_timeout: OnTimeout::Allow,
            } => "ask, on timeout allow",
        };
        write!(
            out,
            "Rule {} \"{name}\" ({mode}) protects the target: ",
            m.rule
        )?;
        match m.outcome {
            RuleOutcome::NotThisHandle => {
                writeln!(out, "it does not cover this object kind and operation.")?
            }
            RuleOutcome::RequesterNotRestricted => {
                writeln!(out, "it does not restrict this requester.")?
            }
            RuleOutcome::Applies(0) => writeln!(
                out,
                "it applies, but the request asks for none of its rights."
            )?,
            RuleOutcome::Applies(bits) if m.mode.is_ask() => {
                // Asked about only what the enforce rules left.
                let left = bits & !ev.decision.removed(req.desired_access);
                if left == 0 {
                    writeln!(
                        out,
                        "it applies, but enforce rules already remove {}.",
                        MaskNames(req.object, bits)
                    )?;
                } else {
                    writeln!(
                        out,
                        "it applies and asks the handler about {}.",
                        MaskNames(req.object, left)
                    )?;
                }
            }
            RuleOutcome::Applies(bits) => {
                let verb = if m.mode == Mode::Enforce {
                    "removes"
                } else {
                    "would remove (audit only)"
                };
                writeln!(
                    out,
                    "it applies and {verb} {}.",
                    MaskNames(req.object, bits)
                )?;
            }
        }
    }
    if ev.requester_critical {
        writeln!(out, "The requester is a critical system process.")?;
    }
    let d = &ev.decision;
    if let Some(e) = d.exemption {
        let why = match e {
            Exemption::KernelHandle => {
                "kernel handles are not filtered (settings.exempt_kernel_handles)"
            }
            Exemption::SelfAccess => {
                "a process opening itself keeps every right (settings.exempt_self)"
            }
            Exemption::CriticalRequester => {
                "critical system processes keep every right (settings.exempt_critical_requesters)"
            }
        };
        writeln!(out, "Exemption: {why}.")?;
    }
    let removed = req.desired_access & !d.access;
    let undocumented = undocumented_removal(req.object, removed);
    if undocumented != 0 {
        writeln!(
            out,
            "Note: {} {} not among the rights Microsoft lists as removable by a driver \
             (OB_PRE_CREATE_HANDLE_INFORMATION): removed, but what Windows and programs do \
             without {} is undocumented.",
            MaskNames(req.object, undocumented),
            if undocumented.count_ones() == 1 {
                "is"
            } else {
                "are"
            },
            if undocumented.count_ones() == 1 {
                "it"
            } else {
                "them"
            },
        )?;
    }
    if d.ask.is_needed() {
        let rule = d.ask.rule.map_or(0, usize::from);
        let name = policy.rules.get(rule).map_or("?", |r| &*r.name);
        let fallback = d.ask.fallback_access(d.access);
        if d.ask.askable {
            writeln!(
                out,
                "Ask: the handler decides about {} (rule {rule} \"{name}\"); it can only remove rights, \
                 never add them. Without an answer within {} ms (no handler, timeout, pool full) the request \
                 gets {}.",
                MaskNames(req.object, d.ask.rights),
                policy.settings.ask_timeout_ms,
                MaskNames(req.object, fallback),
            )?;
        } else {
            writeln!(
                out,
                "Ask: rule {rule} \"{name}\" applies to {}, but the request is never asked \
                 about (a kernel handle or a critical system process as requester): the \
                 fallback applies at once, {}.",
                MaskNames(req.object, d.ask.rights),
                MaskNames(req.object, fallback),
            )?;
        }
    }
    // Unaskable: the fallback is the result; askable: the handler may remove more.
    let (granted_word, granted) = match (d.ask.is_needed(), d.ask.askable) {
        (true, true) => ("granted at most", d.access),
        (true, false) => ("granted", d.ask.fallback_access(d.access)),
        _ => ("granted", d.access),
    };
    let removed_total = req.desired_access & !granted;
    write!(
        out,
        "Result: {granted_word} {}",
        MaskNames(req.object, granted)
    )?;
    if removed_total != 0 {
        write!(out, "; removed {}", MaskNames(req.object, removed_total))?;
    }
    if d.would_strip != 0 {
        write!(
            out,
            "; audit rules would have removed {}",
            MaskNames(req.object, d.would_strip)
        )?;
    }
    if let Some(rule) = d.rule {
        let name = policy
            .rules
            .get(usize::from(rule))
            .map_or("?", |r| &*r.name);
        write!(out, "; responsible rule {rule} \"{name}\"")?;
    }
    writeln!(
        out,
        "; audit record: {}.",
        if d.audit { "yes" } else { "no" }
    )
}
