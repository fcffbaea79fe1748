//! Phase 2: decide one handle request from two precomputed records.
//!
//! No allocation, no string work, no loop over rules or processes: one slot read,
//! one AND, at most 8 table reads (see [`crate::compiled`]), a few bit operations.

use crate::compiled::{
    slot_index, CompiledPolicy, DepSummary, ProcessRecord, RequesterPart, SlotSummary, TargetPart,
    CRITICAL_BIT, ENTRY_BITS, NO_RULE,
};
use crate::model::{ObjectKind, Operation, RuleId};
use crate::rights::AccessMask;

/// One handle request as the callback sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandleRequest {
    /// Process or thread handle (a thread is judged by its owning process's record).
    pub object: ObjectKind,
    /// Create or duplicate.
    pub operation: Operation,
    /// `DesiredAccess` as the callback received it.
    pub desired_access: AccessMask,
    /// The `KernelHandle` flag.
    pub kernel_handle: bool,
    /// The requester is the target process itself (for a duplicate: the receiving
    /// process is the process the handle is for).
    pub same_process: bool,
}

/// A built-in exemption that left the request untouched although rules matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Exemption {
    /// A kernel handle (`settings.exempt_kernel_handles`).
    KernelHandle,
    /// A process opening itself or its own threads (`settings.exempt_self`).
    SelfAccess,
    /// The requester is a critical system process
    /// (`settings.exempt_critical_requesters`).
    CriticalRequester,
}

/// What the ask rules that apply want for a request. The driver asks the
/// connected handler when [`rights`](Self::rights) is non-zero (and the
/// request is askable), and otherwise, or when no answer comes in time,
/// removes [`fallback_strip`](Self::fallback_strip).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AskPlan {
    /// Bits of [`Decision::access`] the applicable ask rules are about; 0:
    /// nothing to ask.
    pub rights: AccessMask,
    /// Bits of [`Decision::access`] to remove when no answer comes: the
    /// `strip` sets of the applicable ask rules whose `on_timeout` is
    /// `"strip"` (a subset of `rights`).
    pub fallback_strip: AccessMask,
    /// The lowest-numbered applicable ask rule.
    pub rule: Option<RuleId>,
    /// False when the request must never wait for a handler whatever the
    /// driver's state (a kernel handle, or a critical system process as
    /// requester, whose exemption is off): the fallback applies at once.
    pub askable: bool,
}

impl AskPlan {
    /// Nothing to ask.
    pub const NONE: Self = Self {
        rights: 0,
        fallback_strip: 0,
        rule: None,
        askable: false,
    };

    /// Whether an ask rule applies to the request.
    #[must_use]
    pub const fn is_needed(&self) -> bool {
        self.rights != 0
    }

    /// The access a request whose enforce-rule result is `access` gets
    /// when no answer comes.
    #[must_use]
    pub const fn fallback_access(&self, access: AccessMask) -> AccessMask {
        access & !self.fallback_strip
    }
}

/// The outcome of a handle request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decision {
    /// The access to grant: always a subset of the desired access.
    pub access: AccessMask,
    /// The responsible rule: if bits were removed, the lowest-numbered matching
    /// enforce rule for this (object, operation); else, if audit rules would have
    /// removed bits, the lowest-numbered matching audit rule; else, if ask rules
    /// apply to rights the request still has, the lowest-numbered applicable ask
    /// rule. Reported also when an exemption applied (the rule that would have
    /// applied). `None` when nothing matched.
    pub rule: Option<RuleId>,
    /// Whether to emit an audit record: bits were removed, audit rules would have
    /// removed some, or an ask rule applies (`ask.rights != 0`). Exempted requests
    /// are not audited.
    pub audit: bool,
    /// Bits of the desired access that audit-mode rules would have removed (and that
    /// enforce rules did not).
    pub would_strip: AccessMask,
    /// The exemption that applied, if any (only reported when rules matched).
    pub exemption: Option<Exemption>,
    /// What the ask rules want ([`AskPlan::NONE`] when none applies, or when an
    /// exemption applied). Computed after the enforce rules: `ask.rights` is a
    /// subset of `access`. `access` is the answer-independent part: the final
    /// access is `access & answer` (or `ask.fallback_access(access)`).
    pub ask: AskPlan,
}

impl Decision {
    /// Leaves the request as it is.
    #[must_use]
    pub const fn unchanged(desired: AccessMask) -> Self {
        Self {
            access: desired,
            rule: None,
            audit: false,
            would_strip: 0,
            exemption: None,
            ask: AskPlan::NONE,
        }
    }

    /// Bits removed from `desired`.
    #[must_use]
    pub const fn removed(&self, desired: AccessMask) -> AccessMask {
        desired & !self.access
    }
}

#[inline]
const fn rule_of(id: u16) -> Option<RuleId> {
    if id == NO_RULE {
        None
    } else {
        Some(id)
    }
}

impl CompiledPolicy {
    /// Phase 2: the access to grant for a handle request.
    ///
    /// `target` is the record of the process the handle is for (for a thread: its
    /// owning process); `requester` the record of the process that gets the handle
    /// (create: the current process; duplicate: `TargetProcess`).
    #[inline]
    #[must_use]
    pub fn decide(
        &self,
        target: &ProcessRecord,
        requester: &ProcessRecord,
        req: &HandleRequest,
    ) -> Decision {
        let slot = slot_index(req.object, req.operation);
        self.decide_summary(
            target.slot(slot),
            target.target_entries,
            requester.requester_entries,
            req,
        )
    }

    /// [`decide`](Self::decide) from only the parts of the two records it
    /// reads (for a caller that copies just those words out of its process
    /// table: see [`ProcessRecord::target_words`]). `target` must be the part
    /// for `req`'s object kind and operation.
    #[inline]
    #[must_use]
    pub fn decide_parts(
        &self,
        target: TargetPart,
        requester: RequesterPart,
        req: &HandleRequest,
    ) -> Decision {
        self.decide_summary(target.summary(), target.entries(), requester.0, req)
    }

    /// The decision from the target's summary for `req`'s slot, its target
    /// entry mask and the requester's entry mask (both public forms unpack
    /// their records into these, each the cheapest way for its layout).
    /// Always inlined: the driver's two callbacks (process and thread) each
    /// carry a copy of the decision, and a call here would cost more than
    /// the body (measured in tests/emulator/measure_instructions.py).
    #[inline(always)]
    fn decide_summary(
        &self,
        summary: SlotSummary,
        target_entries: u64,
        requester_entries: u64,
        req: &HandleRequest,
    ) -> Decision {
        let dep = target_entries & requester_entries & ENTRY_BITS;
        if dep == 0 {
            // Ask rules are always entries: none applies, and with the ask part
            // constant the tail compiles to what it was before ask rules.
            return self.finish(DepSummary::from_slot(summary), requester_entries, req);
        }
        let slot = slot_index(req.object, req.operation);
        let sum = self.merge_dependent(DepSummary::from_slot(summary), dep, slot);
        self.finish(sum, requester_entries, req)
    }

    /// The decision from the merged summary (see [`decide_summary`](Self::decide_summary)).
    #[inline(always)]
    fn finish(&self, sum: DepSummary, requester_entries: u64, req: &HandleRequest) -> Decision {
        let desired = req.desired_access;
        let removed = desired & sum.base.strip;
        let would_strip = desired & sum.base.audit & !removed;
        let access = desired & !removed;
        let ask_rights = access & sum.ask;
        if removed == 0 && would_strip == 0 && ask_rights == 0 {
            return Decision::unchanged(desired);
        }
        let rule = if removed != 0 {
            rule_of(sum.base.rule)
        } else if would_strip != 0 {
            rule_of(sum.base.audit_rule)
        } else {
            rule_of(sum.ask_rule)
        };
        let s = &self.settings;
        let critical = requester_entries & CRITICAL_BIT != 0;
        let exemption = if req.kernel_handle && s.exempt_kernel_handles {
            Some(Exemption::KernelHandle)
        } else if req.same_process && s.exempt_self {
            Some(Exemption::SelfAccess)
        } else if critical && s.exempt_critical_requesters {
            Some(Exemption::CriticalRequester)
        } else {
            None
        };
        if exemption.is_some() {
            return Decision {
                access: desired,
                rule,
                audit: false,
                would_strip: 0,
                exemption,
                ask: AskPlan::NONE,
            };
        }
        let ask = if ask_rights == 0 {
            AskPlan::NONE
        } else {
            AskPlan {
                rights: ask_rights,
                fallback_strip: access & sum.ask_fallback,
                rule: rule_of(sum.ask_rule),
                askable: !req.kernel_handle && !critical,
            }
        };
        Decision {
            access,
            rule,
            audit: true,
            would_strip,
            exemption: None,
            ask,
        }
    }

    #[inline]
    fn merge_dependent(&self, mut sum: DepSummary, dep: u64, slot: usize) -> DepSummary {
        for (chunk, byte) in dep.to_le_bytes().into_iter().enumerate() {
            if byte != 0 {
                let at = (chunk * 4 + slot) * 256 + usize::from(byte);
                if let Some(e) = self.dep_table.get(at) {
                    sum = sum.merge(*e);
                }
            }
        }
        sum
    }
}
