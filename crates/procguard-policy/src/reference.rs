//! The reference evaluator: walks every rule and matches strings, with its own glob
//! matcher. Slow on purpose and obviously right; property tests and benchmarks
//! compare [`CompiledPolicy`](crate::CompiledPolicy) against it, and
//! [`explain()`](crate::explain()) is built on it.

use alloc::vec::Vec;

use crate::decide::{AskPlan, Decision, Exemption, HandleRequest};
use crate::glob::fold;
use crate::identity::{file_name, is_critical_system_process, ProcessIdentity};
use crate::model::{Mode, OnTimeout, Policy, Requester, RuleId, Selector};
use crate::rights::AccessMask;

/// Backtracking glob matcher over folded characters (independent of
/// [`crate::glob::Glob`]'s component-wise one).
fn glob_match(p: &[char], t: &[char]) -> bool {
    match p {
        [] => t.is_empty(),
        ['*', '*'] => true,
        ['*', '*', '\\', rest @ ..] => (0..=t.len()).any(|k| {
            (k == 0 || t.get(k - 1) == Some(&'\\'))
                && t.get(k..).is_some_and(|tt| glob_match(rest, tt))
        }),
        ['*', rest @ ..] => {
            let mut k = 0;
            loop {
                if t.get(k..).is_some_and(|tt| glob_match(rest, tt)) {
                    return true;
                }
                match t.get(k) {
                    Some(c) if *c != '\\' => k += 1,
                    _ => return false,
                }
            }
        }
        ['?', rest @ ..] => {
            matches!(t.first(), Some(c) if *c != '\\')
                && glob_match(rest, t.get(1..).unwrap_or(&[]))
        }
        [c, rest @ ..] => t.first() == Some(c) && glob_match(rest, t.get(1..).unwrap_or(&[])),
    }
}

/// Whether a selector selects a process: any PID, image name or path pattern matches.
#[must_use]
pub fn selector_matches(s: &Selector, id: &ProcessIdentity<'_>) -> bool {
    if s.pids.contains(&id.pid) {
        return true;
    }
    let name = fold(file_name(id.image_path));
    if s.names.iter().any(|n| fold(n) == name) {
        return true;
    }
    let path = fold(id.image_path);
    s.paths.iter().any(|p| glob_match(&fold(p), &path))
}

/// Whether a rule's requester condition restricts this requester.
#[must_use]
pub fn requester_restricted(r: &Requester, id: &ProcessIdentity<'_>) -> bool {
    match r {
        Requester::Any => true,
        Requester::Only(s) => selector_matches(s, id),
        Requester::AnyExcept(s) => !selector_matches(s, id),
    }
}

/// Why a rule whose target matched did or did not contribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleOutcome {
    /// It applies; these bits of the request would be removed (audit rules:
    /// reported; ask rules: asked about, unless enforce rules removed them).
    Applies(AccessMask),
    /// The requester is not restricted by it.
    RequesterNotRestricted,
    /// It does not cover this object kind and operation.
    NotThisHandle,
}

/// A rule whose target selector selected the target process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleMatch {
    /// The rule.
    pub rule: RuleId,
    /// Its mode.
    pub mode: Mode,
    /// Its outcome for this request.
    pub outcome: RuleOutcome,
}

/// The full evaluation of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evaluation {
    /// Every rule whose target selected the target process, in rule order.
    pub matches: Vec<RuleMatch>,
    /// Whether the requester is a critical system process.
    pub requester_critical: bool,
    /// The decision (identical to what the compiled policy decides).
    pub decision: Decision,
}

/// Evaluates a request by walking every rule.
#[must_use]
pub fn evaluate(
    policy: &Policy,
    target: &ProcessIdentity<'_>,
    requester: &ProcessIdentity<'_>,
    req: &HandleRequest,
) -> Evaluation {
    let mut matches = Vec::new();
    let (mut strip, mut audit, mut ask, mut ask_fallback) = (0u32, 0u32, 0u32, 0u32);
    let (mut rule, mut audit_rule, mut ask_rule) = (None, None, None);
    for (i, r) in policy.rules.iter().enumerate() {
        if !selector_matches(&r.target, target) {
            continue;
        }
        let id = RuleId::try_from(i).unwrap_or(RuleId::MAX);
        let s = r.strip_for(req.object, req.operation);
        let outcome = if s == 0 {
            RuleOutcome::NotThisHandle
        } else if !requester_restricted(&r.requester, requester) {
            RuleOutcome::RequesterNotRestricted
        } else {
            match r.mode {
                Mode::Enforce => {
                    strip |= s;
                    rule = rule.or(Some(id));
                }
                Mode::Audit => {
                    audit |= s;
                    audit_rule = audit_rule.or(Some(id));
                }
                Mode::Ask { on_timeout } => {
                    ask |= s;
                    if on_timeout == OnTimeout::Strip {
                        ask_fallback |= s;
                    }
                    ask_rule = ask_rule.or(Some(id));
                }
            }
            RuleOutcome::Applies(s & req.desired_access)
        };
        matches.push(RuleMatch {
            rule: id,
            mode: r.mode,
            outcome,
        });
    }
    let requester_critical = is_critical_system_process(requester);
    let desired = req.desired_access;
    // 1. enforce rules first; 2. audit rules report; 3. ask rules on what is left.
    let removed = desired & strip;
    let would_strip = desired & audit & !removed;
    let access = desired & !removed;
    let ask_rights = access & ask;
    let decision = if removed == 0 && would_strip == 0 && ask_rights == 0 {
        Decision::unchanged(desired)
    } else {
        let rule = if removed != 0 {
            rule
        } else if would_strip != 0 {
            audit_rule
        } else {
            ask_rule
        };
        let st = &policy.settings;
        let exemption = if req.kernel_handle && st.exempt_kernel_handles {
            Some(Exemption::KernelHandle)
        } else if req.same_process && st.exempt_self {
            Some(Exemption::SelfAccess)
        } else if requester_critical && st.exempt_critical_requesters {
            Some(Exemption::CriticalRequester)
        } else {
            None
        };
        if exemption.is_some() {
            Decision {
                access: desired,
                rule,
                audit: false,
                would_strip: 0,
                exemption,
                ask: AskPlan::NONE,
            }
        } else {
            Decision {
                access,
                rule,
                audit: true,
                would_strip,
                exemption: None,
                ask: if ask_rights == 0 {
                    AskPlan::NONE
                } else {
                    AskPlan {
                        rights: ask_rights,
                        fallback_strip: access & ask_fallback,
                        rule: ask_rule,
                        askable: !req.kernel_handle && !requester_critical,
                    }
                },
            }
        }
    };
    Evaluation {
        matches,
        requester_critical,
        decision,
    }
}
