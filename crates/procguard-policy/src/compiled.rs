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
//! - **requester-dependent** rules (`only` / `any except`, and every `ask` rule):
//!   deduplicated by (target selector, requester selector) into at most
//!   [`MAX_REQUESTER_ENTRIES`] = 63 *entries*. An ask rule whose requester is
//!   "any" becomes an entry whose requester condition holds for every process
//!   (an "any except" of nothing): ask rules live only in entries, so the
//!   [`ProcessRecord`] layout knows nothing of them, and a request no ask rule
//!   can touch never reads the ask part of a table. Ask rules count toward the cap.
//!   Phase 1 sets bit `e` of the record's target mask when the process matches entry
//!   `e`'s target selector, and bit `e` of its requester mask when the process is
//!   restricted by entry `e`'s requester condition (selected for `only`, not selected
//!   for `any except`). The entries that apply to a request are exactly
//!   `target_mask & requester_mask`. For each byte of that 64-bit mask the compiled
//!   policy holds, per slot, a 256-entry table of the precomputed union of those
//!   entries' strips, audits, ask rights, ask fallback strips and lowest rule
//!   ids (enforce, audit, ask).
//!
//! Phase 2 is then: one slot read from the target record, one AND of two words and,
//! only when requester-dependent rules apply, at most 8 table reads (one per non-zero
//! byte). This bound does not depend on the number of rules or processes; it is the
//! reason for the 63-entry cap. Tables: 8 x 4 x 256 x 24 bytes = 192 KiB at most
//! (one chunk of 8 entries: 24 KiB).

use alloc::vec::Vec;

use crate::blob::DecodeError;
use crate::identity::{self, ProcessIdentity};
use crate::model::{
    Mode, ObjectKind, OnTimeout, Operation, Policy, PolicyFault, Settings, MAX_REQUESTER_ENTRIES,
};
use crate::rights::AccessMask;
use crate::view::{try_push, u32s, BlobView, RuleView, SelView};
use crate::{fallible, glob};

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

    /// Folds in one requester-independent rule (never an ask rule: those are
    /// always entries, see [`DepSummary::add_rule`]).
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
            Mode::Ask { .. } => return,
        };
        *self = self.merge(one);
    }
}

/// A slot summary of the requester-dependent tables: a [`SlotSummary`] plus what
/// the ask rules among the entries want.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct DepSummary {
    pub(crate) base: SlotSummary,
    /// Union of the ask rules' strip sets (the rights to ask about).
    pub(crate) ask: AccessMask,
    /// Union of the strip sets of the ask rules whose `on_timeout` is strip.
    pub(crate) ask_fallback: AccessMask,
    /// Lowest ask rule id, [`NO_RULE`] for none.
    pub(crate) ask_rule: u16,
}

impl DepSummary {
    pub(crate) const EMPTY: Self = Self {
        base: SlotSummary::EMPTY,
        ask: 0,
        ask_fallback: 0,
        ask_rule: NO_RULE,
    };

    #[inline]
    pub(crate) fn merge(self, o: Self) -> Self {
        Self {
            base: self.base.merge(o.base),
            ask: self.ask | o.ask,
            ask_fallback: self.ask_fallback | o.ask_fallback,
            ask_rule: if o.ask_rule < self.ask_rule {
                o.ask_rule
            } else {
                self.ask_rule
            },
        }
    }

    /// The summary of a target's record slot: no ask rule.
    #[inline(always)]
    pub(crate) const fn from_slot(base: SlotSummary) -> Self {
        Self {
            base,
            ask: 0,
            ask_fallback: 0,
            ask_rule: NO_RULE,
        }
    }

    fn add_rule(&mut self, id: u16, mode: Mode, strip: AccessMask) {
        if strip == 0 {
            return;
        }
        match mode {
            Mode::Enforce | Mode::Audit => self.base.add_rule(id, mode, strip),
            Mode::Ask { on_timeout } => {
                *self = self.merge(Self {
                    base: SlotSummary::EMPTY,
                    ask: strip,
                    ask_fallback: match on_timeout {
                        OnTimeout::Strip => strip,
                        OnTimeout::Allow => 0,
                    },
                    ask_rule: id,
                });
            }
        }
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

/// Number of `u64` words a [`ProcessRecord`] packs into
/// ([`ProcessRecord::to_words`]): the driver's lock-free process table stores a
/// record as that many atomic words.
pub const RECORD_WORDS: usize = 8;

const _: () = assert!(core::mem::size_of::<ProcessRecord>() <= RECORD_WORDS * 8);

const fn slot_word(s: &SlotSummary) -> u64 {
    s.strip as u64 | (s.audit as u64) << 32
}

const fn ids_word(a: &SlotSummary, b: &SlotSummary) -> u64 {
    a.rule as u64
        | (a.audit_rule as u64) << 16
        | (b.rule as u64) << 32
        | (b.audit_rule as u64) << 48
}

const fn slot_of(word: u64, ids: u64) -> SlotSummary {
    SlotSummary {
        strip: word as u32,
        audit: (word >> 32) as u32,
        rule: ids as u16,
        audit_rule: (ids >> 16) as u16,
    }
}

impl ProcessRecord {
    /// A record that protects nothing and is restricted by nothing but "any" rules.
    pub const EMPTY: Self = Self {
        slots: [SlotSummary::EMPTY; 4],
        target_entries: 0,
        requester_entries: 0,
    };

    /// Packs the record into [`RECORD_WORDS`] words; [`from_words`](Self::from_words)
    /// gives it back exactly. Layout (stable within this crate version only): words
    /// 0-3 are the strip (low half) and audit (high half) masks of the four
    /// (object, operation) slots, words 4-5 their rule ids (16 bits each: rule, audit
    /// rule, two slots per word), word 6 the target entry mask, word 7 the requester
    /// entry mask.
    #[must_use]
    pub const fn to_words(&self) -> [u64; RECORD_WORDS] {
        let [a, b, c, d] = &self.slots;
        [
            slot_word(a),
            slot_word(b),
            slot_word(c),
            slot_word(d),
            ids_word(a, b),
            ids_word(c, d),
            self.target_entries,
            self.requester_entries,
        ]
    }

    /// Unpacks words made by [`to_words`](Self::to_words). Any words at all give a
    /// record [`CompiledPolicy::decide`] handles without panicking (entry bits beyond
    /// the policy's entries select nothing; rule ids are reported as they are), but
    /// only words from a record of the same policy give meaningful decisions.
    #[must_use]
    pub const fn from_words(words: [u64; RECORD_WORDS]) -> Self {
        let [w0, w1, w2, w3, ab, cd, target_entries, requester_entries] = words;
        Self {
            slots: [
                slot_of(w0, ab),
                slot_of(w1, ab >> 32),
                slot_of(w2, cd),
                slot_of(w3, cd >> 32),
            ],
            target_entries,
            requester_entries,
        }
    }

    /// The indices of the words (of [`to_words`](Self::to_words)) that
    /// [`CompiledPolicy::decide`] reads from a *target's* record for a request
    /// on `object` with `operation`: that slot's masks, its rule ids and the
    /// target entry mask. A reader that copies only these words
    /// ([`TargetPart::from_words`]) gets the same decisions for that kind of
    /// request as with the whole record.
    #[must_use]
    pub const fn target_words(object: ObjectKind, operation: Operation) -> [usize; 3] {
        let slot = slot_index(object, operation);
        [slot, 4 + slot / 2, 6]
    }

    /// The index of the one word [`CompiledPolicy::decide`] reads from a
    /// *requester's* record (its requester entry mask and critical bit).
    pub const REQUESTER_WORD: usize = 7;

    /// What a decision on a request for `object` with `operation` reads from
    /// this record as the target.
    #[must_use]
    pub fn target_part(&self, object: ObjectKind, operation: Operation) -> TargetPart {
        let summary = self.slot(slot_index(object, operation));
        TargetPart {
            masks: slot_word(&summary),
            ids: summary.rule as u32 | (summary.audit_rule as u32) << 16,
            entries: self.target_entries,
        }
    }

    /// What a decision reads from this record as the requester.
    #[must_use]
    pub const fn requester_part(&self) -> RequesterPart {
        RequesterPart(self.requester_entries)
    }

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

/// The part of a target's [`ProcessRecord`] that a decision on one kind of
/// request (object kind and operation) reads: that slot's summary and the
/// target entry mask. 24 bytes, made from the whole record
/// ([`ProcessRecord::target_part`]) or from just the three record words that
/// hold it ([`TargetPart::from_words`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TargetPart {
    /// The slot's strip (low half) and audit (high half) masks, as stored.
    masks: u64,
    /// The slot's rule (low half) and audit rule (high half) ids.
    ids: u32,
    entries: u64,
}

impl TargetPart {
    /// The part for a request on `object` with `operation`, from the
    /// record's words (of [`ProcessRecord::to_words`]) at
    /// [`ProcessRecord::target_words`]`(object, operation)`, in that order.
    /// Equal to `ProcessRecord::from_words(all).target_part(object, operation)`.
    #[must_use]
    pub const fn from_words(object: ObjectKind, operation: Operation, words: [u64; 3]) -> Self {
        let [masks, ids, entries] = words;
        let ids = if slot_index(object, operation) & 1 == 0 {
            ids
        } else {
            ids >> 32
        };
        Self {
            masks,
            ids: ids as u32,
            entries,
        }
    }

    /// Whether any rule may touch this kind of request for this target:
    /// when false, every decision on it leaves the request unchanged.
    #[must_use]
    pub const fn is_protected(&self) -> bool {
        self.masks | self.entries != 0
    }

    /// The slot's summary.
    #[inline]
    pub(crate) const fn summary(&self) -> SlotSummary {
        slot_of(self.masks, self.ids as u64)
    }

    /// The target entry mask.
    #[inline]
    pub(crate) const fn entries(&self) -> u64 {
        self.entries
    }
}

/// The part of a requester's [`ProcessRecord`] that a decision reads: its
/// requester entry mask and critical-process bit (the record's word
/// [`ProcessRecord::REQUESTER_WORD`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequesterPart(pub(crate) u64);

impl RequesterPart {
    /// The part from the record's word at [`ProcessRecord::REQUESTER_WORD`].
    /// Equal to `ProcessRecord::from_words(all).requester_part()`.
    #[must_use]
    pub const fn from_word(word: u64) -> Self {
        Self(word)
    }
}

/// A run of folded characters in [`CompiledPolicy`]'s character pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: u32,
    len: u32,
}

/// A run of elements in one of [`CompiledPolicy`]'s flat vectors.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    first: u32,
    count: u32,
}

/// A key (image name, PID or path pattern) and the rules whose target selects it.
#[derive(Clone, Copy, Debug)]
struct Keyed<K> {
    key: K,
    rules: Run,
}

/// A requester-dependent entry's requester selector.
#[derive(Clone, Copy, Debug)]
struct RequesterEntry {
    except: bool,
    /// Into `sel_names`, sorted by folded name, distinct.
    names: Run,
    /// Into `sel_globs`.
    globs: Run,
    /// Into `sel_pids`, sorted, distinct.
    pids: Run,
}

#[derive(Clone, Copy, Debug)]
struct CompiledRule {
    mode: Mode,
    strips: [AccessMask; 4],
    /// Requester-dependent entry, or `None` for "any".
    entry: Option<u8>,
}

/// The compiled policy the kernel holds. Built at PASSIVE level by
/// [`from_blob`](Self::from_blob), whose every allocation is fallible; then
/// read-only: [`classify`](Self::classify) and [`decide`](Self::decide) take `&self`,
/// never allocate, and may run concurrently.
///
/// Everything lives in flat vectors (no `Arc`, no maps). `Clone` allocates
/// infallibly: control-tool side only.
#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    pub(crate) settings: Settings,
    id: u32,
    rules: Vec<CompiledRule>,
    /// Every folded name and pattern, each string of the blob at most once.
    chars: Vec<char>,
    /// Folded image name -> rules whose target names it, sorted by name.
    names: Vec<Keyed<Span>>,
    /// PID -> rules, sorted by PID.
    pids: Vec<Keyed<u32>>,
    /// Distinct patterns -> rules.
    globs: Vec<Keyed<Span>>,
    /// The rule lists of `names`, `pids` and `globs`.
    lists: Vec<u16>,
    entries: Vec<RequesterEntry>,
    sel_names: Vec<Span>,
    sel_globs: Vec<Span>,
    sel_pids: Vec<u32>,
    /// `[chunk][slot][byte]` unions of entry summaries.
    pub(crate) dep_table: Vec<DepSummary>,
}

fn run<T>(v: &[T], r: Run) -> &[T] {
    let first = r.first as usize;
    v.get(first..first.saturating_add(r.count as usize))
        .unwrap_or(&[])
}

/// Offsets and lengths stay far below `u32::MAX` (blobs are at most 16 MiB); a
/// value that does not fit is reported as exhaustion rather than truncated.
fn len32(n: usize) -> Result<u32, DecodeError> {
    u32::try_from(n).map_err(|_| DecodeError::OutOfMemory)
}

fn oom<E>(_: E) -> DecodeError {
    DecodeError::OutOfMemory
}

fn reserve_exact<T>(v: &mut Vec<T>, n: usize) -> Result<(), DecodeError> {
    v.try_reserve_exact(n).map_err(oom)
}

/// Interns folded strings (by blob string index: in a canonical blob equal
/// strings have equal indexes) so compiled memory stays proportional to the blob
/// even when one long string is referenced many times.
struct Builder<'v, 'a> {
    view: &'v BlobView<'a>,
    chars: Vec<char>,
    interned: Vec<Option<Span>>,
}

impl Builder<'_, '_> {
    fn intern(&mut self, index: u32) -> Result<Span, DecodeError> {
        if let Some(Some(s)) = self.interned.get(index as usize) {
            return Ok(*s);
        }
        let s = self.view.string(index);
        let n = s.chars().count();
        self.chars.try_reserve(n).map_err(oom)?;
        let span = Span {
            start: len32(self.chars.len())?,
            len: len32(n)?,
        };
        for c in glob::fold_chars(s) {
            // Capacity reserved above: never grows.
            if fallible::push_within_capacity(&mut self.chars, c).is_err() {
                return Err(DecodeError::OutOfMemory);
            }
        }
        if let Some(slot) = self.interned.get_mut(index as usize) {
            *slot = Some(span);
        }
        Ok(span)
    }

    fn text(&self, s: Span) -> &[char] {
        span_chars(&self.chars, s)
    }
}

fn span_chars(chars: &[char], s: Span) -> &[char] {
    let start = s.start as usize;
    chars
        .get(start..start.saturating_add(s.len as usize))
        .unwrap_or(&[])
}

/// Appends `pairs` grouped by key (`pairs` sorted by key, then rule): one
/// [`Keyed`] per distinct key, its distinct rules appended to `lists`.
fn group<K: Copy>(
    pairs: &[(K, u16)],
    same: impl Fn(&K, &K) -> bool,
    out: &mut Vec<Keyed<K>>,
    lists: &mut Vec<u16>,
) -> Result<(), DecodeError> {
    for &(key, rule) in pairs {
        let new_key = out.last().is_none_or(|last| !same(&last.key, &key));
        if new_key {
            let first = len32(lists.len())?;
            try_push(
                out,
                Keyed {
                    key,
                    rules: Run { first, count: 0 },
                },
            )?;
        } else if lists.last() == Some(&rule) {
            continue;
        }
        try_push(lists, rule)?;
        if let Some(last) = out.last_mut() {
            last.rules.count = last.rules.count.saturating_add(1);
        }
    }
    Ok(())
}

/// Appends `items` to `dst` (fallibly) and returns where they went.
fn append<T: Copy>(dst: &mut Vec<T>, items: &[T]) -> Result<Run, DecodeError> {
    let first = len32(dst.len())?;
    fallible::try_extend_from_slice(dst, items).map_err(oom)?;
    Ok(Run {
        first,
        count: len32(items.len())?,
    })
}

impl CompiledPolicy {
    /// Compiles a policy (control-tool side: encodes it, then
    /// [`from_blob`](Self::from_blob)). The policy id is the checksum of its blob.
    ///
    /// # Errors
    /// [`DecodeError::InvalidPolicy`] with the policy's validation error;
    /// [`DecodeError::TooLarge`] if its blob would exceed the size limit;
    /// [`DecodeError::OutOfMemory`].
    pub fn new(policy: &Policy) -> Result<Self, DecodeError> {
        policy.validate().map_err(DecodeError::InvalidPolicy)?;
        Self::from_blob(&crate::blob::encode(policy))
    }

    /// Decodes, validates and compiles a blob: what the kernel does with a new policy
    /// (PASSIVE level). Never panics, whatever the bytes, and every allocation is
    /// fallible: memory exhaustion is [`DecodeError::OutOfMemory`]. The strings of the
    /// blob are not copied except as folded name and pattern characters.
    ///
    /// # Errors
    /// The error [`decode`](crate::decode) reports for the same bytes, in the form
    /// [`DecodeError::without_strings`] gives (an invalid policy is
    /// [`DecodeError::Invalid`], without strings); or [`DecodeError::OutOfMemory`].
    pub fn from_blob(blob: &[u8]) -> Result<Self, DecodeError> {
        let view = BlobView::parse(blob)?;
        view.validate()?;
        view.check_canonical()?;
        Self::compile(&view, crate::blob::policy_id(blob).unwrap_or(0))
    }

    /// A policy without rules, with the default [`Settings`]: what a driver holds
    /// before any policy is loaded. Allocates nothing. It equals the compiled empty
    /// policy (`encode(&Policy::default())`), including its [`policy_id`](Self::policy_id).
    #[must_use]
    pub const fn empty() -> Self {
        Self {
            settings: Settings::DEFAULT,
            id: crate::blob::EMPTY_POLICY_ID,
            rules: Vec::new(),
            chars: Vec::new(),
            names: Vec::new(),
            pids: Vec::new(),
            globs: Vec::new(),
            lists: Vec::new(),
            entries: Vec::new(),
            sel_names: Vec::new(),
            sel_globs: Vec::new(),
            sel_pids: Vec::new(),
            dep_table: Vec::new(),
        }
    }

    /// Compiles a parsed, validated, canonical blob.
    fn compile(view: &BlobView<'_>, id: u32) -> Result<Self, DecodeError> {
        let string_count = view.strings.len();
        let rule_count = view.rule_count as usize;
        let mut b = Builder {
            view,
            chars: Vec::new(),
            interned: Vec::new(),
        };
        reserve_exact(&mut b.interned, string_count)?;
        fallible::try_resize(&mut b.interned, string_count, None).map_err(oom)?;
        // Room for every string folded (rule names are counted but never stored):
        // interning then never grows the pool, so the peak is one copy, not two.
        let total_chars = view
            .strings
            .iter()
            .fold(0usize, |n, s| n.saturating_add(s.chars().count()));
        reserve_exact(&mut b.chars, total_chars)?;

        let mut out = Self::empty();
        out.settings = view.settings;
        out.id = id;
        reserve_exact(&mut out.rules, rule_count)?;
        let mut keys: Vec<RuleView<'_>> = Vec::new();
        reserve_exact(&mut keys, MAX_REQUESTER_ENTRIES)?;
        reserve_exact(&mut out.entries, MAX_REQUESTER_ENTRIES)?;
        let mut name_pairs: Vec<(Span, u16)> = Vec::new();
        let mut pid_pairs: Vec<(u32, u16)> = Vec::new();
        let mut glob_pairs: Vec<(Span, u16)> = Vec::new();
        for (i, r) in view.rules().enumerate() {
            let r = r?;
            // validate() bounds the rule count below u16::MAX.
            let rid = u16::try_from(i).unwrap_or(NO_RULE);
            let entry = if !r.is_requester_entry() {
                None
            } else if let Some(e) = keys.iter().position(|k| k.same_entry_as(&r)) {
                u8::try_from(e).ok()
            } else {
                if keys.len() >= MAX_REQUESTER_ENTRIES {
                    // Excluded by validate(); kept so no index can exceed the masks.
                    return Err(DecodeError::Invalid(PolicyFault::TooManyRequesterEntries(
                        keys.len().saturating_add(1),
                    )));
                }
                // Kind 0 (an ask rule for "any"): "any except" an empty selector.
                let e = Self::requester_entry(&mut b, &mut out, &r.requester, r.kind != 1)?;
                try_push(&mut out.entries, e)?;
                try_push(&mut keys, r)?;
                u8::try_from(keys.len().saturating_sub(1)).ok()
            };
            try_push(
                &mut out.rules,
                CompiledRule {
                    mode: r.mode,
                    strips: [0, 1, 2, 3].map(|s| r.strip_for_slot(s)),
                    entry,
                },
            )?;
            for n in r.target.name_indexes() {
                let span = b.intern(n)?;
                try_push(&mut name_pairs, (span, rid))?;
            }
            for p in u32s(r.target.pids) {
                try_push(&mut pid_pairs, (p, rid))?;
            }
            for p in r.target.path_indexes() {
                let span = b.intern(p)?;
                try_push(&mut glob_pairs, (span, rid))?;
            }
        }
        drop(keys);

        // Target indexes: sort (key, rule) pairs, group by key.
        reserve_exact(
            &mut out.lists,
            name_pairs
                .len()
                .saturating_add(pid_pairs.len())
                .saturating_add(glob_pairs.len()),
        )?;
        fallible::sort_unstable_by(&mut name_pairs, |x, y| {
            b.text(x.0).cmp(b.text(y.0)).then(x.1.cmp(&y.1))
        });
        reserve_exact(&mut out.names, name_pairs.len())?;
        group(
            &name_pairs,
            |x, y| b.text(*x) == b.text(*y),
            &mut out.names,
            &mut out.lists,
        )?;
        drop(name_pairs);
        fallible::sort_unstable(&mut pid_pairs);
        reserve_exact(&mut out.pids, pid_pairs.len())?;
        group(&pid_pairs, |x, y| x == y, &mut out.pids, &mut out.lists)?;
        drop(pid_pairs);
        // One span per blob string, so equal starts are the same pattern.
        fallible::sort_unstable_by(&mut glob_pairs, |(s, r), (t, q)| {
            (s.start, *r).cmp(&(t.start, *q))
        });
        reserve_exact(&mut out.globs, glob_pairs.len())?;
        group(
            &glob_pairs,
            |x, y| x.start == y.start,
            &mut out.globs,
            &mut out.lists,
        )?;
        drop(glob_pairs);
        out.chars = b.chars;

        // Per-entry, per-slot summaries, then the byte tables.
        let mut entry_sums: Vec<[DepSummary; 4]> = Vec::new();
        reserve_exact(&mut entry_sums, out.entries.len())?;
        fallible::try_resize(&mut entry_sums, out.entries.len(), [DepSummary::EMPTY; 4])
            .map_err(oom)?;
        for (i, r) in out.rules.iter().enumerate() {
            if let Some(e) = r.entry {
                if let Some(sums) = entry_sums.get_mut(usize::from(e)) {
                    for (s, strip) in sums.iter_mut().zip(r.strips) {
                        s.add_rule(u16::try_from(i).unwrap_or(NO_RULE), r.mode, strip);
                    }
                }
            }
        }
        // At most 8 chunks x 4 slots x 256 (entries <= 63).
        let chunks = out.entries.len().div_ceil(8);
        let size = chunks.saturating_mul(4 * 256);
        reserve_exact(&mut out.dep_table, size)?;
        fallible::try_resize(&mut out.dep_table, size, DepSummary::EMPTY).map_err(oom)?;
        for c in 0..chunks {
            for s in 0..4 {
                let base = (c * 4 + s) * 256;
                for v in 1usize..256 {
                    let low = v.trailing_zeros() as usize;
                    let prev = out
                        .dep_table
                        .get(base + (v & (v - 1)))
                        .copied()
                        .unwrap_or(DepSummary::EMPTY);
                    let add = entry_sums
                        .get(c * 8 + low)
                        .and_then(|sums| sums.get(s))
                        .copied()
                        .unwrap_or(DepSummary::EMPTY);
                    if let Some(slot) = out.dep_table.get_mut(base + v) {
                        *slot = prev.merge(add);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Compiles one requester selector: folded names sorted and distinct, distinct
    /// patterns, PIDs sorted and distinct.
    fn requester_entry(
        b: &mut Builder<'_, '_>,
        out: &mut Self,
        s: &SelView<'_>,
        except: bool,
    ) -> Result<RequesterEntry, DecodeError> {
        let mut names: Vec<Span> = Vec::new();
        reserve_exact(&mut names, s.names.len() / 4)?;
        for n in s.name_indexes() {
            let span = b.intern(n)?;
            try_push(&mut names, span)?;
        }
        fallible::sort_unstable_by(&mut names, |x, y| b.text(*x).cmp(b.text(*y)));
        names.dedup_by(|x, y| b.text(*x) == b.text(*y));
        let mut paths: Vec<u32> = Vec::new();
        reserve_exact(&mut paths, s.paths.len() / 4)?;
        for p in s.path_indexes() {
            try_push(&mut paths, p)?;
        }
        fallible::sort_unstable(&mut paths);
        paths.dedup();
        let mut globs: Vec<Span> = Vec::new();
        reserve_exact(&mut globs, paths.len())?;
        for p in paths {
            let span = b.intern(p)?;
            try_push(&mut globs, span)?;
        }
        let mut pids: Vec<u32> = Vec::new();
        reserve_exact(&mut pids, s.pids.len() / 4)?;
        for p in u32s(s.pids) {
            try_push(&mut pids, p)?;
        }
        fallible::sort_unstable(&mut pids);
        pids.dedup();
        Ok(RequesterEntry {
            except,
            names: append(&mut out.sel_names, &names)?,
            globs: append(&mut out.sel_globs, &globs)?,
            pids: append(&mut out.sel_pids, &pids)?,
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

    fn chars_of(&self, s: Span) -> &[char] {
        span_chars(&self.chars, s)
    }

    /// Binary search of a folded name (given unfolded; folded while comparing).
    fn find_name<'s>(&self, keys: &'s [Span], name: &str) -> Option<&'s Span> {
        keys.binary_search_by(|k| {
            self.chars_of(*k)
                .iter()
                .copied()
                .cmp(glob::fold_chars(name))
        })
        .ok()
        .and_then(|i| keys.get(i))
    }

    fn glob_matches(&self, pattern: Span, path: &str) -> bool {
        glob::path_matches(
            glob::char_components(self.chars_of(pattern)),
            glob::str_components(path),
        )
    }

    /// Folds the rules of one list into the record.
    fn apply(&self, rec: &mut ProcessRecord, rules: Run) {
        for r in run(&self.lists, rules) {
            let Some(rule) = self.rules.get(usize::from(*r)) else {
                continue;
            };
            match rule.entry {
                Some(e) => rec.target_entries |= 1u64 << (e & 63),
                None => {
                    for (slot, strip) in rec.slots.iter_mut().zip(rule.strips) {
                        slot.add_rule(*r, rule.mode, strip);
                    }
                }
            }
        }
    }

    fn entry_selects(&self, e: &RequesterEntry, id: &ProcessIdentity<'_>, name: &str) -> bool {
        run(&self.sel_pids, e.pids).binary_search(&id.pid).is_ok()
            || self
                .find_name(run(&self.sel_names, e.names), name)
                .is_some()
            || run(&self.sel_globs, e.globs)
                .iter()
                .any(|g| self.glob_matches(*g, id.image_path))
    }

    /// Phase 1: evaluates every rule against a process identity, once per process
    /// (PASSIVE level). **Allocates nothing**: names and paths are case-folded
    /// character by character while they are compared. Cost: a binary search for the
    /// image name and the PID, one match per distinct path pattern, one pass over the
    /// matching rules, one selector test per requester-dependent entry.
    #[must_use]
    pub fn classify(&self, id: &ProcessIdentity<'_>) -> ProcessRecord {
        let name = identity::file_name(id.image_path);
        let mut rec = ProcessRecord::EMPTY;
        // Folding rules into the record is a union with a minimum: order and
        // repetition do not matter.
        if let Ok(i) = self.names.binary_search_by(|k| {
            self.chars_of(k.key)
                .iter()
                .copied()
                .cmp(glob::fold_chars(name))
        }) {
            if let Some(k) = self.names.get(i) {
                self.apply(&mut rec, k.rules);
            }
        }
        if let Ok(i) = self.pids.binary_search_by(|k| k.key.cmp(&id.pid)) {
            if let Some(k) = self.pids.get(i) {
                self.apply(&mut rec, k.rules);
            }
        }
        for g in &self.globs {
            if self.glob_matches(g.key, id.image_path) {
                self.apply(&mut rec, g.rules);
            }
        }
        for (e, entry) in self.entries.iter().enumerate() {
            let selected = self.entry_selects(entry, id, name);
            if selected != entry.except {
                rec.requester_entries |= 1u64 << (e & 63);
            }
        }
        rec.target_entries &= ENTRY_BITS;
        rec.requester_entries &= ENTRY_BITS;
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
