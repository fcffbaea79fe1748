//! The policy in force and everything computed from it, published as one
//! generation that the callbacks read without locks.
//!
//! A [`Generation`] holds the compiled policy, the blob it came from, the
//! process table classified by it and its per-rule counters. Changing the
//! policy builds a complete new generation off to the side (PASSIVE level,
//! under the writer mutex), publishes it with one atomic pointer swap, waits
//! for a grace period (`grace_period.rs`) so no callback can still be reading
//! the old one, and frees the old one. A callback therefore sees either the
//! old policy with the old table or the new policy with the new table, never
//! a mix.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use procguard_policy::{
    CompiledPolicy, ObjectKind, Operation, ProcessIdentity, ProcessRecord, RequesterPart,
    TargetPart,
};

use crate::platform::kernel_sync;
use crate::state::grace_period::{GracePeriod, ReadSection};
use crate::tracking::process_identity::{self, Identity};
use crate::tracking::process_table::{Entry, InsertError, ProcessTable, TrackedSlot};

/// Hit and strip counts of one rule.
#[derive(Debug, Default)]
pub struct RuleStats {
    /// Requests the rule decided (it was the responsible rule).
    pub hits: AtomicU64,
    /// Of those, requests whose access it reduced.
    pub strips: AtomicU64,
}

/// One published policy and what was computed from it.
pub struct Generation {
    /// The compiled policy.
    pub policy: CompiledPolicy,
    /// The blob it was compiled from (empty for the built-in empty policy).
    pub blob: Vec<u8>,
    /// Every tracked process, classified by `policy`.
    pub table: ProcessTable,
    /// Per-rule counters, indexed by rule id.
    pub rule_stats: Vec<RuleStats>,
    /// Set once the generation is unpublished and its grace period is over,
    /// just before it is freed: no reader may ever observe it set.
    retired: core::sync::atomic::AtomicBool,
}

impl core::fmt::Debug for Generation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Generation")
            .field("policy_id", &self.policy.policy_id())
            .field("rules", &self.policy.rule_count())
            .field("table", &self.table)
            .finish()
    }
}

/// Why a generation could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildError {
    /// Out of pool memory.
    OutOfMemory,
}

impl Generation {
    /// A generation for `policy` with an empty table of room for
    /// `processes` processes.
    pub fn new(
        policy: CompiledPolicy,
        blob: Vec<u8>,
        processes: usize,
    ) -> Result<Self, BuildError> {
        let table = ProcessTable::with_capacity(processes).ok_or(BuildError::OutOfMemory)?;
        let rule_stats = procguard_policy::fallible::try_vec_from_fn(policy.rule_count(), |_| {
            RuleStats::default()
        })
        .map_err(|_| BuildError::OutOfMemory)?;
        Ok(Self {
            policy,
            blob,
            table,
            rule_stats,
            retired: core::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Classifies one process.
    pub fn classify(&self, identity: &Identity) -> ProcessRecord {
        self.policy.classify(&ProcessIdentity {
            pid: identity.pid,
            image_path: &identity.image_path,
        })
    }

    /// Classifies and stores one process (writers only).
    pub fn track(&self, identity: &Identity) -> Result<(), InsertError> {
        let record = self.classify(identity);
        let entry = Entry {
            pid: identity.pid,
            creation_key: identity.creation_key,
            record: record.to_words(),
            protected: record.is_protected(),
            image_name: process_identity::image_file_name(&identity.image_path),
        };
        // A slot write must not be preempted half-way: readers would spin.
        kernel_sync::without_preemption(|| self.table.insert(&entry))
    }

    /// Forgets one process (writers only), if the creation key matches.
    pub fn untrack(&self, pid: u32, creation_key: u64) -> bool {
        kernel_sync::without_preemption(|| self.table.remove(pid, creation_key))
    }

    /// A copy of this generation with a fresh table of room for `processes`:
    /// the same policy (compiled again from its blob: compiling allocates
    /// fallibly, `Clone` would not), every live record copied as it stands —
    /// no enumeration, no classification, no I/O: the work is bounded by the
    /// table and the policy, not by the system — and the rule counters
    /// carried over. Tombstones stay behind. Writers only.
    pub fn rebuilt(&self, processes: usize) -> Result<Self, BuildError> {
        let mut blob = Vec::new();
        procguard_policy::fallible::try_extend_from_slice(&mut blob, &self.blob)
            .map_err(|_| BuildError::OutOfMemory)?;
        let policy = if blob.is_empty() {
            CompiledPolicy::empty()
        } else {
            CompiledPolicy::from_blob(&blob).map_err(|_| BuildError::OutOfMemory)?
        };
        let next = Self::new(policy, blob, processes)?;
        for entry in self.table.entries() {
            // Unpublished: no reader sees a slot half-written, so no need
            // for `without_preemption` here.
            next.table
                .insert(&entry)
                .map_err(|_| BuildError::OutOfMemory)?;
        }
        for (new, old) in next.rule_stats.iter().zip(&self.rule_stats) {
            new.hits
                .store(old.hits.load(Ordering::Relaxed), Ordering::Relaxed);
            new.strips
                .store(old.strips.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        Ok(next)
    }

    /// Classifies every running process into this (unpublished) generation.
    /// Returns how many were tracked; processes that vanish meanwhile are
    /// skipped (their exit notification finds nothing to remove).
    pub fn track_running_processes(&self) -> Result<usize, i32> {
        let mut tracked = 0;
        for pid in process_identity::running_process_ids()? {
            if let Some(identity) = process_identity::identify(pid) {
                if self.track(&identity).is_ok() {
                    tracked += 1;
                }
            }
        }
        Ok(tracked)
    }

    /// The table's creation key and record of `pid` as the *target* of a
    /// request on `object` with `operation`: only the part that decision
    /// reads, copied from three record words (`ProcessRecord::target_words`),
    /// from `slot` if the fast path found it there, else looked up. `None`
    /// when `pid` is not in the table (or its slot stayed busy). The caller
    /// compares the key with the process object's own.
    #[inline(always)]
    pub fn target_record(
        &self,
        pid: u32,
        slot: Option<TrackedSlot<'_>>,
        object: ObjectKind,
        operation: Operation,
    ) -> Option<(u64, TargetPart)> {
        let indices = ProcessRecord::target_words(object, operation);
        let (key, words) = match slot {
            Some(slot) => slot.read_words(indices),
            None => self.table.read_words(pid, indices),
        }?;
        Some((key, TargetPart::from_words(object, operation, words)))
    }

    /// The table's creation key and record of `pid` as the *requester* of a
    /// request: only the part a decision reads, one record word
    /// (`ProcessRecord::REQUESTER_WORD`). `None` as for
    /// [`target_record`](Self::target_record).
    #[inline(always)]
    pub fn requester_record(&self, pid: u32) -> Option<(u64, RequesterPart)> {
        let (key, [word]) = self
            .table
            .read_words(pid, [ProcessRecord::REQUESTER_WORD])?;
        Some((key, RequesterPart::from_word(word)))
    }

    /// True once retired (see the field): a reader seeing this is a bug.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    /// Counts a decision against its rule.
    pub fn count(&self, rule: Option<u16>, stripped: bool) {
        if let Some(stats) = rule.and_then(|id| self.rule_stats.get(usize::from(id))) {
            stats.hits.fetch_add(1, Ordering::Relaxed);
            if stripped {
                stats.strips.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Proof of being the one writer: exists once, inside the driver's writer
/// mutex, so holding `&Writer` or `&mut Writer` means holding the mutex.
#[derive(Debug)]
pub struct Writer {
    _private: (),
}

impl Writer {
    /// The one writer token (the driver state creates it once).
    pub(crate) const fn new() -> Self {
        Self { _private: () }
    }
}

/// The published generation and the grace period that protects it.
pub struct ActivePolicy {
    current: AtomicPtr<Generation>,
    grace: GracePeriod,
    /// A copy of the published policy's `exempt_kernel_handles`, so a
    /// callback can pass a kernel handle with one load and before any read
    /// section (the default setting's cost). It is cleared before a policy
    /// that filters kernel handles is published and set only after one that
    /// exempts them is: whenever it reads true, the policy in force exempts
    /// kernel handles (or did when the request arrived).
    kernel_handles_exempt: AtomicBool,
}

impl core::fmt::Debug for ActivePolicy {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ActivePolicy")
            .field("readers", &self.grace.readers())
            .finish_non_exhaustive()
    }
}

/// A generation being read: valid while this lives.
pub struct PolicyRead<'a> {
    _section: ReadSection<'a>,
    generation: &'a Generation,
}

impl core::ops::Deref for PolicyRead<'_> {
    type Target = Generation;
    fn deref(&self) -> &Generation {
        self.generation
    }
}

impl Default for ActivePolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl ActivePolicy {
    /// Nothing published yet (not `const`: loom's atomics are not).
    pub fn new() -> Self {
        Self {
            current: AtomicPtr::new(ptr::null_mut()),
            grace: GracePeriod::new(),
            // No policy yet: nothing is decided, so passing is what happens anyway.
            kernel_handles_exempt: AtomicBool::new(true),
        }
    }

    /// Whether kernel handles pass untouched under the policy in force
    /// (`settings.exempt_kernel_handles`). When false the callback decides a
    /// kernel handle like any other request, and the engine applies the
    /// setting of the generation it reads.
    #[inline(always)]
    pub fn kernel_handles_exempt(&self) -> bool {
        self.kernel_handles_exempt.load(Ordering::SeqCst)
    }

    /// The generation in force, for the duration of the returned guard.
    /// Lock-free; `None` before the first publication and after teardown.
    pub fn read(&self) -> Option<PolicyRead<'_>> {
        let section = self.grace.read();
        let current = self.current.load(Ordering::SeqCst);
        // SAFETY: a published generation is freed only after a grace period
        // that started after it was unpublished (`publish`, `take`); this read
        // section began before that grace period could end, so the pointer
        // stays valid while `section` lives, and it is only read through `&`.
        let generation = unsafe { current.as_ref() }?;
        Some(PolicyRead {
            _section: section,
            generation,
        })
    }

    /// Publishes `next` and frees the previous generation once no reader can
    /// see it. PASSIVE level.
    pub fn publish(&self, _writer: &mut Writer, next: Box<Generation>) {
        let exempt = next.policy.settings().exempt_kernel_handles;
        if !exempt {
            // Before the swap: a callback that still sees the old hint then
            // still sees (at most) the old policy.
            self.kernel_handles_exempt.store(false, Ordering::SeqCst);
        }
        let previous = self.current.swap(Box::into_raw(next), Ordering::SeqCst);
        if exempt {
            self.kernel_handles_exempt.store(true, Ordering::SeqCst);
        }
        self.retire(previous);
    }

    /// Unpublishes and returns the current generation after a grace period
    /// (unload, after the callbacks are unregistered).
    pub fn take(&self, _writer: &mut Writer) -> Option<Box<Generation>> {
        let previous = self.current.swap(ptr::null_mut(), Ordering::SeqCst);
        self.grace
            .synchronize(|| kernel_sync::sleep_microseconds(50));
        // SAFETY: `previous` came from Box::into_raw in `publish`, was just
        // unpublished, and the grace period ended every read of it.
        (!previous.is_null()).then(|| unsafe { Box::from_raw(previous) })
    }

    fn retire(&self, previous: *mut Generation) {
        if previous.is_null() {
            return;
        }
        self.grace
            .synchronize(|| kernel_sync::sleep_microseconds(50));
        // SAFETY: as in `take`: unpublished, then a full grace period.
        let previous = unsafe { Box::from_raw(previous) };
        previous.retired.store(true, Ordering::SeqCst);
        // Host tests keep retired generations allocated, so that a reader that
        // held one too long sees `is_retired` instead of freed memory.
        #[cfg(test)]
        core::mem::forget(previous);
        #[cfg(not(test))]
        drop(previous);
    }

    /// The current generation, for the writer: it cannot be retired while
    /// the writer token is borrowed, since retiring needs `&mut Writer`.
    pub fn writer_view<'a>(&'a self, _writer: &'a Writer) -> Option<&'a Generation> {
        // SAFETY: generations are retired only by `publish`/`take`, which need
        // `&mut Writer`; the shared borrow of the one token held for 'a
        // excludes them, so the pointer stays valid for 'a.
        unsafe { self.current.load(Ordering::SeqCst).as_ref() }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::format;
    use std::string::String;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    const POLICIES: usize = 6;
    const PROCESSES: u32 = 64;

    fn image(pid: u32) -> String {
        format!(
            "\\Device\\HarddiskVolume3\\Apps\\agent{}.exe",
            pid / 4 % POLICIES as u32
        )
    }

    /// Policy `k` protects exactly the processes whose image is `agent{k}.exe`.
    fn blob(k: usize) -> Vec<u8> {
        let toml = format!("[[rule]]\nname = \"protect-{k}\"\ntarget = {{ name = \"agent{k}.exe\" }}\nstrip = [\"PROCESS_TERMINATE\"]\n");
        procguard_policy::encode(&procguard_policy::toml::parse_policy(&toml).expect("valid"))
    }

    fn generation(k: usize) -> Box<Generation> {
        let blob = blob(k);
        let policy = CompiledPolicy::from_blob(&blob).expect("valid");
        let generation =
            Box::new(Generation::new(policy, blob, PROCESSES as usize).expect("memory"));
        for pid in (4..=PROCESSES * 4).step_by(4) {
            generation
                .track(&Identity {
                    pid,
                    creation_key: u64::from(pid),
                    image_path: image(pid),
                })
                .expect("room");
        }
        generation
    }

    /// Readers look processes up through whatever generation is published
    /// while a writer swaps policies and adds and removes processes: every
    /// record a reader sees was classified by the policy of the generation it
    /// read it from (never a mix of old and new), and the writer never frees
    /// a generation a reader still holds (a freed generation's table would be
    /// read as garbage or crash the test).
    #[test]
    fn readers_see_one_whole_generation_while_a_writer_swaps_and_edits() {
        let ids: Arc<HashMap<u32, usize>> = Arc::new(
            (0..POLICIES)
                .map(|k| (procguard_policy::policy_id(&blob(k)).expect("id"), k))
                .collect(),
        );
        let active = Arc::new(ActivePolicy::new());
        let mut writer = Writer::new();
        active.publish(&mut writer, generation(0));
        let done = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (active, done, ids) = (active.clone(), done.clone(), ids.clone());
                std::thread::spawn(move || {
                    let mut checked = 0u64;
                    loop {
                        {
                            let generation = active.read().expect("published");
                            let k = ids[&generation.policy.policy_id()];
                            assert!(!generation.is_retired());
                            for pid in (4..=PROCESSES * 4).step_by(4) {
                                if let Some((key, record)) = generation.target_record(
                                    pid,
                                    None,
                                    ObjectKind::Process,
                                    Operation::Create,
                                ) {
                                    assert_eq!(key, u64::from(pid));
                                    let expected = pid / 4 % POLICIES as u32 == k as u32;
                                    assert_eq!(
                                        record.is_protected(),
                                        expected,
                                        "pid {pid} under policy {k}"
                                    );
                                    assert!(
                                        !generation.is_retired(),
                                        "generation retired while being read"
                                    );
                                    checked += 1;
                                }
                            }
                        }
                        if done.load(Ordering::Relaxed) {
                            return checked;
                        }
                    }
                })
            })
            .collect();
        for round in 1..150usize {
            active.publish(&mut writer, generation(round % POLICIES));
            if let Some(current) = active.writer_view(&writer) {
                let pid = u32::try_from(round % PROCESSES as usize + 1).expect("small") * 4;
                assert!(current.untrack(pid, u64::from(pid)));
                current
                    .track(&Identity {
                        pid,
                        creation_key: u64::from(pid),
                        image_path: image(pid),
                    })
                    .expect("room");
            }
        }
        done.store(true, Ordering::Relaxed);
        let checked: u64 = readers
            .into_iter()
            .map(|reader| reader.join().expect("reader"))
            .sum();
        assert!(checked > 0);
        assert!(active.take(&mut writer).is_some());
        assert!(active.read().is_none());
    }
}
