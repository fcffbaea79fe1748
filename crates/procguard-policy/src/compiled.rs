//! The runtime form the kernel holds: phase 1 (classify a process once) and the
//! tables phase 2 ([`crate::decide`]) reads.
//!
//! # How phase 2 stays constant-time
//!
//! Rules split in two:
//! - **requester-independent** rules (`requester = any`): whether they apply depends
//!   only on the target. Phase 1 folds every such rule that matches the process into
//!   the target part of its [`ProcessRecord`]: per slot (object kind x operation) the
//!   union of enforce strip bits, of audit bits, and the lowest responsible rule id.
//! - **requester-dependent** rules (`only` / `any except`): deduplicated by
//!   (target selector, requester selector) into at most
//!   [`MAX_REQUESTER_ENTRIES`](crate::model::MAX_REQUESTER_ENTRIES) = 63 *entries*.
//!   Phase 1 sets bit `e` of the record's target mask when the process matches entry
//!   `e`'s target selector, and bit `e` of its requester mask when the process is
//!   restricted by entry `e`'s requester condition (selected for `only`, not selected
//!   for `any except`). The entries that apply to a request are exactly
//!   `target_mask & requester_mask`. For each byte of that 64-bit mask the compiled
//!   policy holds, per slot, a 256-entry table of the precomputed union of those
//!   entries' strips, audits and lowest rule ids.
//!
//! Phase 2 is then: one slot read from the target record, one AND of two words and,
//! only when requester-dependent rules apply, at most 8 table reads (one per non-zero
//! byte). This bound does not depend on the number of rules or processes; it is the
//! reason for the 63-entry cap. Tables: 8 x 4 x 256 x 12 bytes = 96 KiB at most.

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use crate::glob::{self, Glob};
use crate::identity::{self, ProcessIdentity};
use crate::model::{
    Mode, ObjectKind, Operation, Policy, PolicyError, Requester, Selector, Settings,
};
use crate::rights::AccessMask;

/// Rule id sentinel inside records and tables.
pub(crate) const NO_RULE: u16 = 0xFFFF;
/// Bit of [`ProcessRecord`]'s requester mask that marks a critical system process.
pub(crate) const CRITICAL_BIT: u64 = 1 << 63;
/// Bits of the masks that are requester-dependent entries.
pub(crate) const ENTRY_BITS: u64 = !CRITICAL_BIT;

/// Per-slot summary: what to strip, what to audit, and who is responsible.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SlotSummary {
    pub(crate) strip: AccessMask,
    pub(crate) audit: AccessMask,
    pub(crate) rule: u16,
    pub(crate) audit_rule: u16,
}

impl SlotSummary {
    pub(crate) const EMPTY: Self = Self {
        strip: 0,
        audit: 0,
        rule: NO_RULE,
        audit_rule: NO_RULE,
    };

    #[inline]
    pub(crate) fn merge(self, o: Self) -> Self {
        Self {
            strip: self.strip | o.strip,
            audit: self.audit | o.audit,
            rule: if o.rule < self.rule {
                o.rule
            } else {
                self.rule
            },
            audit_rule: if o.audit_rule < self.audit_rule {
                o.audit_rule
            } else {
                self.audit_rule
            },
        }
    }

    fn add_rule(&mut self, id: u16, mode: Mode, strip: AccessMask) {
        if strip == 0 {
            return;
        }
        let one = match mode {
            Mode::Enforce => Self {
                strip,
                audit: 0,
                rule: id,
                audit_rule: NO_RULE,
            },
            Mode::Audit => Self {
                strip: 0,
                audit: strip,
                rule: NO_RULE,
                audit_rule: id,
            },
        };
        *self = self.merge(one);
    }
}

/// Slot index of (object kind, operation): 0..4.
#[inline]
pub(crate) const fn slot_index(kind: ObjectKind, op: Operation) -> usize {
    match (kind, op) {
        (ObjectKind::Process, Operation::Create) => 0,
        (ObjectKind::Process, Operation::Duplicate) => 1,
        (ObjectKind::Thread, Operation::Create) => 2,
        (ObjectKind::Thread, Operation::Duplicate) => 3,
    }
}

const SLOTS: [(ObjectKind, Operation); 4] = [
    (ObjectKind::Process, Operation::Create),
    (ObjectKind::Process, Operation::Duplicate),
    (ObjectKind::Thread, Operation::Create),
    (ObjectKind::Thread, Operation::Duplicate),
];

/// What phase 1 computed for one process: its target part (what to strip when a
/// handle to it is requested) and its requester part (which requester-dependent rules
/// restrict it, and whether it is a critical system process).
///
/// Plain data, no pointers, 64 bytes; valid only with the [`CompiledPolicy`] that
/// made it (recompute every record when the policy changes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProcessRecord {
    pub(crate) slots: [SlotSummary; 4],
    pub(crate) target_entries: u64,
    pub(crate) requester_entries: u64,
}

const _: () = assert!(core::mem::size_of::<ProcessRecord>() <= 64);

impl ProcessRecord {
    /// A record that protects nothing and is restricted by nothing but "any" rules.
    pub const EMPTY: Self = Self {
        slots: [SlotSummary::EMPTY; 4],
        target_entries: 0,
        requester_entries: 0,
    };

    /// Whether this process is a critical system process (exempt as a requester when
    /// the setting is on).
    #[must_use]
    pub fn is_critical_system_process(&self) -> bool {
        self.requester_entries & CRITICAL_BIT != 0
    }

    /// Whether any rule protects this process (as a target).
    #[must_use]
    pub fn is_protected(&self) -> bool {
        self.target_entries != 0 || self.slots.iter().any(|s| s.strip != 0 || s.audit != 0)
    }

    #[inline]
    pub(crate) fn slot(&self, index: usize) -> SlotSummary {
        match self.slots.get(index) {
            Some(s) => *s,
            None => SlotSummary::EMPTY,
        }
    }
}

#[derive(Clone, Debug)]
struct CompiledSelector {
    names: Vec<Arc<[char]>>,
    globs: Vec<Arc<Glob>>,
    pids: Vec<u32>,
}

/// Shares folded names and compiled patterns between every place that uses the
/// same string, so compiled memory stays proportional to the blob (a string stored
/// once in the blob may be referenced many times).
#[derive(Default)]
struct Interner<'p> {
    names: BTreeMap<&'p str, Arc<[char]>>,
    globs: BTreeMap<&'p str, Option<Arc<Glob>>>,
}

impl<'p> Interner<'p> {
    fn name(&mut self, s: &'p str) -> Arc<[char]> {
        self.names
            .entry(s)
            .or_insert_with(|| Arc::from(glob::fold(s)))
            .clone()
    }

    fn glob(&mut self, s: &'p str) -> Option<Arc<Glob>> {
        self.globs
            .entry(s)
            .or_insert_with(|| Glob::new(s).ok().map(Arc::new))
            .clone()
    }
}

impl CompiledSelector {
    fn new<'p>(s: &'p Selector, interner: &mut Interner<'p>) -> Self {
        let mut names: Vec<Arc<[char]>> = s.names.iter().map(|n| interner.name(n)).collect();
        names.sort_unstable();
        names.dedup();
        let mut paths: Vec<&str> = s.paths.iter().map(|p| &**p).collect();
        paths.sort_unstable();
        paths.dedup();
        let mut pids = s.pids.clone();
        pids.sort_unstable();
        pids.dedup();
        Self {
            names,
            globs: paths.into_iter().filter_map(|p| interner.glob(p)).collect(),
            pids,
        }
    }

    fn matches(&self, pid: u32, path: &[char], name: &[char]) -> bool {
        self.pids.binary_search(&pid).is_ok()
            || self.names.binary_search_by(|n| (**n).cmp(name)).is_ok()
            || self.globs.iter().any(|g| g.matches_folded(path))
    }
}

#[derive(Clone, Debug)]
struct RequesterEntry {
    selector: CompiledSelector,
    except: bool,
}

#[derive(Clone, Copy, Debug)]
struct CompiledRule {
    mode: Mode,
    strips: [AccessMask; 4],
    /// Requester-dependent entry, or `None` for "any".
    entry: Option<u8>,
}

/// The compiled policy the kernel holds. Built at PASSIVE level (allocates); then
/// read-only: [`classify`](Self::classify) and [`decide`](Self::decide) take `&self`
/// and may run concurrently.
#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    pub(crate) settings: Settings,
    id: u32,
    rules: Vec<CompiledRule>,
    /// Folded image name -> rules whose target names it, sorted by name.
    names: Vec<(Arc<[char]>, Vec<u16>)>,
    /// PID -> rules, sorted by pid.
    pids: Vec<(u32, Vec<u16>)>,
    /// Distinct patterns -> rules.
    globs: Vec<(Glob, Vec<u16>)>,
    entries: Vec<RequesterEntry>,
    /// `[chunk][slot][byte]` unions of entry summaries.
    pub(crate) dep_table: Vec<SlotSummary>,
}

fn push_index<K: Ord + Clone>(index: &mut Vec<(K, Vec<u16>)>, key: K, rule: u16) {
    match index.binary_search_by(|(k, _)| k.cmp(&key)) {
        Ok(i) => {
            if let Some((_, v)) = index.get_mut(i) {
                if v.last() != Some(&rule) {
                    v.push(rule);
                }
            }
        }
        Err(i) => index.insert(i, (key, vec![rule])),
    }
}

impl CompiledPolicy {
    /// Compiles a validated policy. The policy id is the checksum of its blob.
    ///
    /// # Errors
    /// The policy's validation error.
    pub fn new(policy: &Policy) -> Result<Self, PolicyError> {
        let id = crate::blob::policy_id_of(policy);
        Self::with_id(policy, id)
    }

    /// Decodes and compiles a blob (what the kernel does with a new policy).
    ///
    /// # Errors
    /// Any decode or validation error.
    pub fn from_blob(blob: &[u8]) -> Result<Self, crate::blob::DecodeError> {
        let policy = crate::blob::decode(blob)?;
        let id = crate::blob::policy_id(blob).unwrap_or(0);
        Self::with_id(&policy, id).map_err(crate::blob::DecodeError::InvalidPolicy)
    }

    fn with_id(policy: &Policy, id: u32) -> Result<Self, PolicyError> {
        policy.validate()?;
        let mut keys: Vec<(&Selector, &Requester)> = Vec::new();
        let mut entries = Vec::new();
        let mut rules = Vec::with_capacity(policy.rules.len());
        let mut interner = Interner::default();
        let mut names: Vec<(Arc<[char]>, Vec<u16>)> = Vec::new();
        let mut pids: Vec<(u32, Vec<u16>)> = Vec::new();
        let mut glob_keys: Vec<(&str, usize)> = Vec::new();
        let mut globs: Vec<(Glob, Vec<u16>)> = Vec::new();
        for (i, r) in policy.rules.iter().enumerate() {
            // validate() bounds the rule count below u16::MAX.
            let rid = u16::try_from(i).unwrap_or(NO_RULE);
            let entry = match &r.requester {
                Requester::Any => None,
                Requester::Only(s) | Requester::AnyExcept(s) => {
                    let pos = keys
                        .iter()
                        .position(|(t, q)| *t == &r.target && *q == &r.requester);
                    let e = pos.unwrap_or_else(|| {
                        keys.push((&r.target, &r.requester));
                        entries.push(RequesterEntry {
                            selector: CompiledSelector::new(s, &mut interner),
                            except: matches!(r.requester, Requester::AnyExcept(_)),
                        });
                        keys.len() - 1
                    });
                    u8::try_from(e).ok()
                }
            };
            let strips = SLOTS.map(|(k, o)| r.strip_for(k, o));
            rules.push(CompiledRule {
                mode: r.mode,
                strips,
                entry,
            });
            for n in &r.target.names {
                push_index(&mut names, interner.name(n), rid);
            }
            for p in &r.target.pids {
                push_index(&mut pids, *p, rid);
            }
            for p in &r.target.paths {
                if let Some((_, gi)) = glob_keys.iter().find(|(k, _)| *k == &**p) {
                    if let Some((_, v)) = globs.get_mut(*gi) {
                        if v.last() != Some(&rid) {
                            v.push(rid);
                        }
                    }
                } else if let Ok(g) = Glob::new(p) {
                    glob_keys.push((p, globs.len()));
                    globs.push((g, vec![rid]));
                }
            }
        }
        // Per-entry, per-slot summaries, then the byte tables.
        let mut entry_sums = vec![[SlotSummary::EMPTY; 4]; entries.len()];
        for (i, r) in rules.iter().enumerate() {
            if let Some(e) = r.entry {
                if let Some(sums) = entry_sums.get_mut(usize::from(e)) {
                    for (s, strip) in sums.iter_mut().zip(r.strips) {
                        s.add_rule(u16::try_from(i).unwrap_or(NO_RULE), r.mode, strip);
                    }
                }
            }
        }
        let chunks = entries.len().div_ceil(8);
        let mut dep_table = vec![SlotSummary::EMPTY; chunks * 4 * 256];
        for c in 0..chunks {
            for s in 0..4 {
                let base = (c * 4 + s) * 256;
                for v in 1usize..256 {
                    let low = v.trailing_zeros() as usize;
                    let prev = dep_table
                        .get(base + (v & (v - 1)))
                        .copied()
                        .unwrap_or(SlotSummary::EMPTY);
                    let add = entry_sums
                        .get(c * 8 + low)
                        .and_then(|sums| sums.get(s))
                        .copied()
                        .unwrap_or(SlotSummary::EMPTY);
                    if let Some(slot) = dep_table.get_mut(base + v) {
                        *slot = prev.merge(add);
                    }
                }
            }
        }
        Ok(Self {
            settings: policy.settings,
            id,
            rules,
            names,
            pids,
            globs,
            entries,
            dep_table,
        })
    }

    /// The policy id: CRC-32 of the blob (see FORMAT.md), for status reporting.
    #[must_use]
    pub fn policy_id(&self) -> u32 {
        self.id
    }

    /// The settings (exemption switches).
    #[must_use]
    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Number of rules.
    #[must_use]
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The record to use for a process that has not been classified (for example one
    /// that started between a policy swap and the enumeration that follows it):
    /// protected by nothing, not critical, restricted by every "any except" rule.
    #[must_use]
    pub fn unknown_process_record(&self) -> ProcessRecord {
        let mut rec = ProcessRecord::EMPTY;
        for (e, entry) in self.entries.iter().enumerate() {
            if entry.except {
                rec.requester_entries |= 1u64 << (e & 63);
            }
        }
        rec
    }

    /// Phase 1: evaluates every rule against a process identity, once per process
    /// (PASSIVE level; allocates a little scratch memory). Cost: a binary search for
    /// the image name and the PID, one match per distinct path pattern, one pass
    /// over the matching rules, one selector test per requester-dependent entry.
    #[must_use]
    pub fn classify(&self, id: &ProcessIdentity<'_>) -> ProcessRecord {
        let path = glob::fold(id.image_path);
        let name_start = path.iter().rposition(|c| *c == '\\').map_or(0, |p| p + 1);
        let name = path.get(name_start..).unwrap_or(&[]);
        let mut matched = vec![0u64; self.rules.len().div_ceil(64)];
        let mut mark = |list: &[u16]| {
            for r in list {
                if let Some(w) = matched.get_mut(usize::from(*r) / 64) {
                    *w |= 1u64 << (r % 64);
                }
            }
        };
        if let Ok(i) = self.names.binary_search_by(|(k, _)| (**k).cmp(name)) {
            if let Some((_, list)) = self.names.get(i) {
                mark(list);
            }
        }
        if let Ok(i) = self.pids.binary_search_by(|(k, _)| k.cmp(&id.pid)) {
            if let Some((_, list)) = self.pids.get(i) {
                mark(list);
            }
        }
        for (g, list) in &self.globs {
            if g.matches_folded(&path) {
                mark(list);
            }
        }
        let mut rec = ProcessRecord::EMPTY;
        for (wi, word) in matched.iter().enumerate() {
            let mut w = *word;
            while w != 0 {
                let bit = w.trailing_zeros() as usize;
                w &= w - 1;
                let ri = wi * 64 + bit;
                let Some(rule) = self.rules.get(ri) else {
                    continue;
                };
                let rid = u16::try_from(ri).unwrap_or(NO_RULE);
                match rule.entry {
                    Some(e) => rec.target_entries |= 1u64 << (e & 63),
                    None => {
                        for (slot, strip) in rec.slots.iter_mut().zip(rule.strips) {
                            slot.add_rule(rid, rule.mode, strip);
                        }
                    }
                }
            }
        }
        for (e, entry) in self.entries.iter().enumerate() {
            let selected = entry.selector.matches(id.pid, &path, name);
            if selected != entry.except {
                rec.requester_entries |= 1u64 << (e & 63);
            }
        }
        if identity::is_critical_system_process(id) {
            rec.requester_entries |= CRITICAL_BIT;
        }
        rec
    }
}

/// The kernel shares one compiled policy between CPUs and copies records freely.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<CompiledPolicy>();
    send_sync::<ProcessRecord>();
};
