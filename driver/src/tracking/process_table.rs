//! The process table: pid → (creation key, classification record), read by
//! the callbacks without locks.
//!
//! Open addressing with linear probing over a fixed, power-of-two number of
//! slots. Each slot is a sequence lock made only of atomics: a writer makes
//! the sequence odd, writes, and makes it even again; a reader copies the
//! slot and keeps the copy only if the sequence was even and unchanged. A
//! reader never waits on a writer for more than [`READ_RETRIES`] attempts
//! (writers hold a slot for a few stores, at DISPATCH_LEVEL in the kernel, so
//! they cannot be preempted mid-write); past that the read reports nothing
//! and the caller falls back as for a process missing from the table. The
//! callbacks' common case needs only a slot's pid and protected flag, which
//! share one atomic word: it reads that word alone, without the sequence lock.
//!
//! Writers (process creation and exit, enumeration) are serialised by the
//! caller. Removed entries leave tombstones; the table is rebuilt (a fresh
//! one is published) at every policy change, and when tombstones pile up.
//!
//! A record can never be mistaken for a later process with the same pid:
//! entries carry the process's creation key, removal happens at process exit
//! and only for the matching key, and lookups return the key for the caller
//! to compare with the object's own.
//!
//! Each entry also keeps its process's image file name (what an ask request
//! carries: `procguard_protocol::ask::ImageName`), in a side array indexed
//! like the slots and written under the slot's sequence lock, so the slots
//! the callbacks probe keep their size (88 bytes) and only an asked request
//! reads a name ([`ProcessTable::image_name`]). Cost: 128 bytes per slot
//! (64 UTF-16 units), plus the length and cut flag in what was the padding
//! after the slot's sequence word.
#![forbid(unsafe_code)]

use alloc::vec::Vec;

use procguard_protocol::ask::{ImageName, IMAGE_NAME_UNITS};

#[cfg(not(loom))]
use core::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicUsize, Ordering};
#[cfg(loom)]
use loom::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Words of a stored record (64 bytes: the policy engine's process record).
pub const RECORD_WORDS: usize = 8;
/// A record as stored.
pub type RecordWords = [u64; RECORD_WORDS];
/// Words of a stored image name: its UTF-16 units, four to a word.
pub const NAME_WORDS: usize = IMAGE_NAME_UNITS / 4;
/// Attempts a reader makes on a slot being written before giving up.
pub const READ_RETRIES: u32 = 64;
/// Largest table: 2^20 slots (~88 MiB); far above any real process count.
pub const MAX_SLOTS: usize = 1 << 20;

// Windows process ids are multiples of 4: these two values never are.
const EMPTY: u32 = u32::MAX;
const TOMBSTONE: u32 = u32::MAX - 1;

/// A tracked process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Process id.
    pub pid: u32,
    /// Distinguishes this process from a later one with the same id (the
    /// creation time, in the kernel).
    pub creation_key: u64,
    /// The classification record.
    pub record: RecordWords,
    /// Whether any rule may apply with this process as the target: the
    /// callbacks' common case reads only this (see [`ProcessTable::protection`]).
    pub protected: bool,
    /// The image file name (last path component, cut at 64 units), for ask
    /// requests; empty when the process has no image path.
    pub image_name: ImageName,
}

/// Result of a whole-entry lookup (tests only: the callbacks read just the
/// words they need, [`ProcessTable::read_words`]).
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // tests only: a copy of the whole entry is the point
pub enum Lookup {
    /// The pid is tracked.
    Found(Entry),
    /// The pid is not in the table.
    Absent,
    /// A slot on the probe path stayed busy for [`READ_RETRIES`] attempts.
    Busy,
}

/// What the callbacks' fast path learns about a target.
#[derive(Debug, Clone, Copy)]
pub enum Protection<'a> {
    /// Tracked, and no rule applies to it as a target: nothing to do.
    Unprotected,
    /// The full decision is needed: the target is tracked and protected
    /// (`Some`: its slot, so the decision reads the record without probing
    /// again), or the fast path did not find it (`None`: absent, its slot
    /// stayed busy, or it was rewritten meanwhile).
    NeedsDecision(Option<TrackedSlot<'a>>),
}

/// The slot the fast path found a protected process in
/// ([`Protection::NeedsDecision`]).
#[derive(Clone, Copy)]
pub struct TrackedSlot<'a> {
    slot: &'a Slot,
    pid: u32,
}

impl core::fmt::Debug for TrackedSlot<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TrackedSlot")
            .field("pid", &self.pid)
            .finish()
    }
}

impl TrackedSlot<'_> {
    /// As [`ProcessTable::read_words`], from this slot: `None` if it no
    /// longer holds the pid (the process exited) or stayed busy.
    #[inline(always)]
    pub fn read_words<const N: usize>(&self, indices: [usize; N]) -> Option<(u64, [u64; N])> {
        self.slot.read_words(self.pid, indices)
    }
}

/// Why an insertion failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// No free slot (the table needs rebuilding with more room).
    Full,
    /// The pid is one of the two reserved sentinel values.
    ReservedPid,
}

/// [`Slot::head`]'s bit for [`Entry::protected`].
const PROTECTED: u64 = 1 << 32;

/// A slot's head word: the pid in the low half, [`PROTECTED`] above it.
fn head_word(pid: u32, protected: bool) -> u64 {
    u64::from(pid) | if protected { PROTECTED } else { 0 }
}

/// The pid of a head word.
fn pid_of(head: u64) -> u32 {
    head as u32
}

/// [`Slot::name_info`]'s bit for [`ImageName::truncated`].
const NAME_CUT: u32 = 1 << 16;

/// A stored image name's units (see [`Slot::name_info`] for its length).
type NameSlot = [AtomicU64; NAME_WORDS];

fn empty_name_slot() -> NameSlot {
    core::array::from_fn(|_| AtomicU64::new(0))
}

/// The `name_info` word and the packed units of `name`.
fn pack_name(name: &ImageName) -> (u32, [u64; NAME_WORDS]) {
    let len = name.len.min(IMAGE_NAME_UNITS as u16);
    let mut words = [0u64; NAME_WORDS];
    for (index, unit) in name.as_units().iter().enumerate() {
        if let Some(word) = words.get_mut(index / 4) {
            *word |= u64::from(*unit) << (16 * (index % 4));
        }
    }
    let cut = if name.truncated { NAME_CUT } else { 0 };
    (u32::from(len) | cut, words)
}

/// The words of a name slot that hold the units of a name whose
/// `name_info` is `info` (readers and the writer touch only those).
fn name_words(info: u32) -> usize {
    ((info & 0xFFFF) as usize).min(IMAGE_NAME_UNITS).div_ceil(4)
}

/// The name [`pack_name`] stored (units past the length read as zero).
fn unpack_name(info: u32, words: &[u64; NAME_WORDS]) -> ImageName {
    let mut name = ImageName::EMPTY;
    let len = (info & 0xFFFF).min(IMAGE_NAME_UNITS as u32) as u16;
    for (index, unit) in name.units.iter_mut().take(usize::from(len)).enumerate() {
        if let Some(word) = words.get(index / 4) {
            *unit = (word >> (16 * (index % 4))) as u16;
        }
    }
    name.len = len;
    name.truncated = info & NAME_CUT != 0;
    name
}

struct Slot {
    sequence: AtomicU32,
    /// The stored image name's length in UTF-16 units, and [`NAME_CUT`] if
    /// it was cut (the units are in the table's side array, same index).
    /// Beside the sequence word, in what would otherwise be padding.
    name_info: AtomicU32,
    /// The pid and the protected flag, in one word: the probe's one load of
    /// it gives the callbacks' fast path its answer, the pid and the flag
    /// of the same entry, without the sequence lock (see
    /// [`ProcessTable::protection`]).
    head: AtomicU64,
    creation_key: AtomicU64,
    record: [AtomicU64; RECORD_WORDS],
}

impl Slot {
    fn empty() -> Self {
        Self {
            sequence: AtomicU32::new(0),
            name_info: AtomicU32::new(0),
            head: AtomicU64::new(head_word(EMPTY, false)),
            creation_key: AtomicU64::new(0),
            record: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// One reader's attempt: what `copy` read, if the sequence was even
    /// before and unchanged after (no writer was in the slot meanwhile).
    #[inline(always)]
    fn try_read<T>(&self, copy: impl FnOnce(&Self) -> T) -> Option<T> {
        let before = self.sequence.load(Ordering::Acquire);
        if before & 1 != 0 {
            return None;
        }
        let value = copy(self);
        fence(Ordering::Acquire);
        (self.sequence.load(Ordering::Relaxed) == before).then_some(value)
    }

    /// What `copy` reads of the slot, consistently: the first attempt
    /// inline, the rare retries (a writer was in the slot) out of line so
    /// the callbacks' path carries no retry loop. `None` if the slot stayed
    /// busy for [`READ_RETRIES`] attempts.
    #[inline(always)]
    fn read_with<T>(&self, copy: impl Fn(&Self) -> T) -> Option<T> {
        match self.try_read(&copy) {
            Some(value) => Some(value),
            None => self.read_again(copy),
        }
    }

    /// The retries of [`read_with`](Self::read_with).
    #[cold]
    #[inline(never)]
    fn read_again<T>(&self, copy: impl Fn(&Self) -> T) -> Option<T> {
        for _ in 1..READ_RETRIES {
            core::hint::spin_loop();
            #[cfg(loom)]
            loom::thread::yield_now();
            if let Some(value) = self.try_read(&copy) {
                return Some(value);
            }
        }
        None
    }

    /// A consistent copy of the slot with its name from `name` (the side
    /// array's element of the same index), or `None` if it stayed busy.
    fn read(&self, name: &NameSlot) -> Option<Entry> {
        self.read_with(|slot| {
            let head = slot.head.load(Ordering::Relaxed);
            let mut record = [0u64; RECORD_WORDS];
            for (word, stored) in record.iter_mut().zip(&slot.record) {
                *word = stored.load(Ordering::Relaxed);
            }
            // Only the words that hold the name's units: the rest may be a
            // longer earlier name's, which the length leaves unread.
            let info = slot.name_info.load(Ordering::Relaxed);
            let mut units = [0u64; NAME_WORDS];
            for (word, stored) in units.iter_mut().zip(name).take(name_words(info)) {
                *word = stored.load(Ordering::Relaxed);
            }
            Entry {
                pid: pid_of(head),
                creation_key: slot.creation_key.load(Ordering::Relaxed),
                record,
                protected: head & PROTECTED != 0,
                image_name: unpack_name(info, &units),
            }
        })
    }

    /// A consistent copy of the slot's creation key and of the record words
    /// at `indices` (an index past the record reads as 0), if the slot holds
    /// `pid`; `None` if it holds another pid (rewritten since the probe) or
    /// stayed busy. Reads only what the caller needs: a decision needs three
    /// words of the target's record and one of the requester's.
    #[inline(always)]
    fn read_words<const N: usize>(&self, pid: u32, indices: [usize; N]) -> Option<(u64, [u64; N])> {
        let (found, creation_key, words) = self.read_with(|slot| {
            (
                pid_of(slot.head.load(Ordering::Relaxed)),
                slot.creation_key.load(Ordering::Relaxed),
                indices.map(|index| {
                    slot.record
                        .get(index)
                        .map_or(0, |word| word.load(Ordering::Relaxed))
                }),
            )
        })?;
        (found == pid).then_some((creation_key, words))
    }

    /// Writes the slot, and `name` into `name_slot` (the side array's
    /// element of the same index) under the same sequence (writers are
    /// serialised by the caller).
    fn write(
        &self,
        pid: u32,
        creation_key: u64,
        record: &RecordWords,
        protected: bool,
        name: (&ImageName, &NameSlot),
    ) {
        let (info, words) = pack_name(name.0);
        let sequence = self.sequence.load(Ordering::Relaxed);
        self.sequence
            .store(sequence.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.head
            .store(head_word(pid, protected), Ordering::Relaxed);
        self.creation_key.store(creation_key, Ordering::Relaxed);
        for (stored, word) in self.record.iter().zip(record) {
            stored.store(*word, Ordering::Relaxed);
        }
        self.name_info.store(info, Ordering::Relaxed);
        for (stored, word) in name.1.iter().zip(words).take(name_words(info)) {
            stored.store(word, Ordering::Relaxed);
        }
        self.sequence
            .store(sequence.wrapping_add(2), Ordering::Release);
    }
}

/// The table. Readers use `&self` from any thread; writers too, serialised
/// by the caller.
pub struct ProcessTable {
    slots: Vec<Slot>,
    /// The image names, indexed like `slots` (see the module documentation).
    names: Vec<NameSlot>,
    /// `slots.len() - 1` (the length is a power of two), kept so a probe
    /// does not recompute it.
    mask: usize,
    /// `64 - log2(slots.len())`: [`home`] keeps the hash's top bits.
    shift: u32,
    live: AtomicUsize,
    tombstones: AtomicUsize,
}

impl core::fmt::Debug for ProcessTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ProcessTable")
            .field("slots", &self.slots.len())
            .field("live", &self.len())
            .field("tombstones", &self.tombstones())
            .finish()
    }
}

/// The home slot of `pid` in a table of `2^(64 - shift)` slots: Fibonacci
/// hashing of pid/4 (the low two bits of a pid are always zero), keeping the
/// product's *top* bits, the well-mixed ones.
fn home(pid: u32, shift: u32) -> usize {
    let hashed = u64::from(pid >> 2).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift;
    usize::try_from(hashed).unwrap_or(0)
}

impl ProcessTable {
    /// A table with room for at least `processes` entries at a load factor of
    /// at most one half. `None` when the allocation fails or the size is
    /// beyond [`MAX_SLOTS`]: never a panic.
    pub fn with_capacity(processes: usize) -> Option<Self> {
        let wanted = processes.checked_mul(2)?.max(16);
        let slots_len = wanted.checked_next_power_of_two()?;
        if slots_len > MAX_SLOTS {
            return None;
        }
        // No push after the reservation: it would keep a regrow (panic) path.
        let slots =
            procguard_policy::fallible::try_vec_from_fn(slots_len, |_| Slot::empty()).ok()?;
        let names =
            procguard_policy::fallible::try_vec_from_fn(slots_len, |_| empty_name_slot()).ok()?;
        Some(Self {
            slots,
            names,
            mask: slots_len - 1,
            shift: 64 - slots_len.trailing_zeros(),
            live: AtomicUsize::new(0),
            tombstones: AtomicUsize::new(0),
        })
    }

    fn mask(&self) -> usize {
        self.mask
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Tracked processes.
    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// True when nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots left by removals; a rebuild clears them.
    pub fn tombstones(&self) -> usize {
        self.tombstones.load(Ordering::Relaxed)
    }

    /// True when insertions should go to a rebuilt table: over half full
    /// counting tombstones (probe paths grow long).
    pub fn needs_rebuild(&self) -> bool {
        (self.len() + self.tombstones()) * 2 > self.capacity()
    }

    /// The slot holding `pid`, found by probing with one plain atomic load of
    /// each slot's pid (no sequence check: a slot whose pid matches is then
    /// read under its sequence lock, which checks the pid again, so a slot
    /// rewritten meanwhile is never taken for `pid`'s). `None` when the probe
    /// reaches an empty slot: `pid` is absent (or being inserted right now,
    /// which the caller cannot tell from absent either way).
    ///
    /// The probe needs no bound of its own: it ends within one lap of the
    /// table, because an insertion never takes the last EMPTY slot
    /// ([`insert`](Self::insert)) and no slot ever becomes EMPTY again (a
    /// removal leaves a tombstone; only a new table has fresh EMPTY slots),
    /// so the slots EMPTY at the end were EMPTY all along, and the probe
    /// meets one.
    ///
    /// Returns the slot with the head word the probe read in it.
    #[inline(always)]
    fn find(&self, pid: u32) -> Option<(&Slot, u64)> {
        if pid == EMPTY || pid == TOMBSTONE {
            return None;
        }
        let mask = self.mask;
        let mut index = home(pid, self.shift);
        loop {
            let slot = self.slots.get(index)?;
            let head = slot.head.load(Ordering::Relaxed);
            let found = pid_of(head);
            if found == pid {
                return Some((slot, head));
            }
            if found == EMPTY {
                return None;
            }
            index = (index + 1) & mask;
        }
    }

    /// The index of the slot holding `pid`, probing as [`find`](Self::find)
    /// does (the same walk, kept apart so the callbacks' inlined probe
    /// carries no index it does not use). For the rare reads that need the
    /// side array: image names, tests.
    fn find_index(&self, pid: u32) -> Option<usize> {
        if pid == EMPTY || pid == TOMBSTONE {
            return None;
        }
        let mut index = home(pid, self.shift);
        loop {
            let found = pid_of(self.slots.get(index)?.head.load(Ordering::Relaxed));
            if found == pid {
                return Some(index);
            }
            if found == EMPTY {
                return None;
            }
            index = (index + 1) & self.mask;
        }
    }

    /// The slot at `index` and its name slot.
    fn slot_and_name(&self, index: usize) -> Option<(&Slot, &NameSlot)> {
        Some((self.slots.get(index)?, self.names.get(index)?))
    }

    /// Looks `pid` up: the whole entry (tests only). Lock-free; bounded by
    /// the table size and [`READ_RETRIES`].
    #[cfg(test)]
    pub fn lookup(&self, pid: u32) -> Lookup {
        let Some((slot, name)) = self
            .find_index(pid)
            .and_then(|index| self.slot_and_name(index))
        else {
            return Lookup::Absent;
        };
        match slot.read(name) {
            None => Lookup::Busy,
            Some(entry) if entry.pid == pid => Lookup::Found(entry),
            // Rewritten since the probe: the process exited.
            Some(_) => Lookup::Absent,
        }
    }

    /// The creation key of `pid` and its record words at `indices` (what one
    /// decision needs: see `ProcessRecord::target_words`), read consistently.
    /// `None` when `pid` is absent or its slot stayed busy for
    /// [`READ_RETRIES`] attempts; the caller falls back as for an unknown
    /// process. Lock-free.
    #[inline(always)]
    pub fn read_words<const N: usize>(
        &self,
        pid: u32,
        indices: [usize; N],
    ) -> Option<(u64, [u64; N])> {
        self.find(pid)?.0.read_words(pid, indices)
    }

    /// The creation key and image file name of `pid`, read consistently
    /// (lock-free, no I/O: an asked request reads them at PASSIVE or APC
    /// level). `None` as for [`read_words`](Self::read_words); the caller
    /// compares the key with the process object's own.
    pub fn image_name(&self, pid: u32) -> Option<(u64, ImageName)> {
        let (slot, name) = self.slot_and_name(self.find_index(pid)?)?;
        let (found, creation_key, info, words) = slot.read_with(|slot| {
            (
                pid_of(slot.head.load(Ordering::Relaxed)),
                slot.creation_key.load(Ordering::Relaxed),
                slot.name_info.load(Ordering::Relaxed),
                name.each_ref().map(|word| word.load(Ordering::Relaxed)),
            )
        })?;
        (found == pid).then(|| (creation_key, unpack_name(info, &words)))
    }

    /// Whether a request for a handle to `pid` needs the full decision: the
    /// common case (a tracked process no rule protects) reads one word per
    /// probed slot and ends here. The flag comes from the same atomic load
    /// as the pid it was compared with, so it is that entry's flag, as
    /// consistent as a read under the sequence lock (which the decision
    /// still uses for the rest of the record).
    #[inline(always)]
    pub fn protection(&self, pid: u32) -> Protection<'_> {
        match self.find(pid) {
            Some((_, head)) if head & PROTECTED == 0 => Protection::Unprotected,
            Some((slot, _)) => Protection::NeedsDecision(Some(TrackedSlot { slot, pid })),
            None => Protection::NeedsDecision(None),
        }
    }

    /// Inserts or replaces the entry for `pid` (writers only).
    ///
    /// # Errors
    /// [`InsertError`] when the table is full or the pid is reserved.
    pub fn insert(&self, entry: &Entry) -> Result<(), InsertError> {
        let pid = entry.pid;
        if pid == EMPTY || pid == TOMBSTONE {
            return Err(InsertError::ReservedPid);
        }
        let mask = self.mask();
        let mut index = home(pid, self.shift);
        let mut reusable = None;
        for _ in 0..self.slots.len() {
            let Some((slot, name)) = self.slot_and_name(index) else {
                break;
            };
            // Writers are serialised, so a plain load of pid is current.
            let current = pid_of(slot.head.load(Ordering::Relaxed));
            if current == pid {
                slot.write(
                    pid,
                    entry.creation_key,
                    &entry.record,
                    entry.protected,
                    (&entry.image_name, name),
                );
                return Ok(());
            }
            if current == TOMBSTONE && reusable.is_none() {
                reusable = Some(index);
            }
            if current == EMPTY {
                break;
            }
            index = (index + 1) & mask;
        }
        let target = match reusable {
            Some(tombstone) => {
                self.tombstones.fetch_sub(1, Ordering::Relaxed);
                tombstone
            }
            None => {
                let free = self
                    .slots
                    .get(index)
                    .is_some_and(|slot| pid_of(slot.head.load(Ordering::Relaxed)) == EMPTY);
                if !free || (self.len() + self.tombstones() + 1) >= self.capacity() {
                    // Keep at least one EMPTY slot so every probe terminates early.
                    return Err(InsertError::Full);
                }
                index
            }
        };
        if let Some((slot, name)) = self.slot_and_name(target) {
            slot.write(
                pid,
                entry.creation_key,
                &entry.record,
                entry.protected,
                (&entry.image_name, name),
            );
            self.live.fetch_add(1, Ordering::Relaxed);
            Ok(())
        } else {
            Err(InsertError::Full)
        }
    }

    /// Removes `pid` if its creation key matches (writers only); returns
    /// whether it was removed.
    pub fn remove(&self, pid: u32, creation_key: u64) -> bool {
        let mask = self.mask();
        let mut index = home(pid, self.shift);
        for _ in 0..self.slots.len() {
            let Some((slot, name)) = self.slot_and_name(index) else {
                return false;
            };
            let current = pid_of(slot.head.load(Ordering::Relaxed));
            if current == EMPTY {
                return false;
            }
            if current == pid {
                if slot.creation_key.load(Ordering::Relaxed) != creation_key {
                    return false;
                }
                slot.write(
                    TOMBSTONE,
                    0,
                    &[0; RECORD_WORDS],
                    false,
                    (&ImageName::EMPTY, name),
                );
                self.live.fetch_sub(1, Ordering::Relaxed);
                self.tombstones.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            index = (index + 1) & mask;
        }
        false
    }

    /// Every tracked process (writers only; for rebuilds and reclassification).
    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        self.slots
            .iter()
            .zip(&self.names)
            .filter_map(|(slot, name)| slot.read(name))
            .filter(|entry| entry.pid != EMPTY && entry.pid != TOMBSTONE)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    /// A name of `fill % 70` units, each `fill` (cut past 64).
    fn name(fill: u64) -> ImageName {
        ImageName::from_units(&vec![fill as u16; (fill % 70) as usize])
    }

    fn entry(pid: u32, key: u64, fill: u64) -> Entry {
        Entry {
            pid,
            creation_key: key,
            record: [fill; RECORD_WORDS],
            protected: fill % 2 == 1,
            image_name: name(fill),
        }
    }

    #[test]
    fn names_pack_and_unpack_at_every_length_with_the_cut_flag() {
        for len in [0usize, 1, 3, 4, 5, 63, 64, 65, 200] {
            let units: Vec<u16> = (0..len as u16).map(|unit| 0xD7FF - unit).collect();
            let original = ImageName::from_units(&units);
            let (info, words) = pack_name(&original);
            assert_eq!(unpack_name(info, &words), original, "{len} units");
            assert_eq!(unpack_name(info, &words).truncated, len > 64);
        }
        // A corrupt length cannot read past the name.
        assert_eq!(unpack_name(0xFFFF, &[u64::MAX; NAME_WORDS]).len, 64);
    }

    #[test]
    fn image_names_are_kept_per_entry_and_go_with_it() {
        let table = ProcessTable::with_capacity(8).unwrap();
        table.insert(&entry(4, 1, 9)).unwrap();
        table.insert(&entry(8, 2, 66)).unwrap();
        assert_eq!(table.image_name(4), Some((1, name(9))));
        let (key, cut) = table.image_name(8).unwrap();
        assert_eq!((key, cut.len, cut.truncated), (2, 64, true));
        assert_eq!(table.image_name(12), None, "absent");
        // Replaced, then removed: the new name, then none.
        table.insert(&entry(4, 3, 5)).unwrap();
        assert_eq!(table.image_name(4), Some((3, name(5))));
        assert!(table.remove(4, 3));
        assert_eq!(table.image_name(4), None);
        // A reused slot holds only the newcomer's name, not a longer old one's tail.
        table.insert(&entry(4, 4, 1)).unwrap();
        assert_eq!(table.image_name(4), Some((4, name(1))));
        // Carried by whole-entry reads (a rebuild copies `entries()`).
        let rebuilt = ProcessTable::with_capacity(8).unwrap();
        for entry in table.entries() {
            rebuilt.insert(&entry).unwrap();
        }
        assert_eq!(rebuilt.image_name(8), table.image_name(8));
        assert_eq!(rebuilt.lookup(4), Lookup::Found(entry(4, 4, 1)));
    }

    /// The probed slots keep their size: the names live in the side array.
    #[test]
    fn names_do_not_grow_the_probed_slots() {
        assert_eq!(core::mem::size_of::<Slot>(), 88);
        assert_eq!(core::mem::size_of::<NameSlot>(), 128);
    }

    #[test]
    fn protection_reads_the_flag_and_treats_unknown_pids_as_needing_a_decision() {
        let table = ProcessTable::with_capacity(8).unwrap();
        table.insert(&entry(4, 1, 1)).unwrap();
        table.insert(&entry(8, 1, 2)).unwrap();
        let Protection::NeedsDecision(Some(slot)) = table.protection(4) else {
            panic!("4 is protected");
        };
        assert_eq!(slot.read_words([0]), Some((1, [1])));
        assert!(matches!(table.protection(8), Protection::Unprotected));
        assert!(
            matches!(table.protection(12), Protection::NeedsDecision(None)),
            "absent"
        );
        assert!(table.remove(4, 1));
        assert_eq!(slot.read_words([0]), None, "the slot no longer holds 4");
        assert!(
            matches!(table.protection(4), Protection::NeedsDecision(None)),
            "removed"
        );
    }

    #[test]
    fn read_words_copies_the_key_and_the_named_words_of_the_right_pid_only() {
        let table = ProcessTable::with_capacity(8).unwrap();
        let mut record = [0u64; RECORD_WORDS];
        for (index, word) in record.iter_mut().enumerate() {
            *word = 100 + index as u64;
        }
        table
            .insert(&Entry {
                pid: 4,
                creation_key: 77,
                record,
                protected: true,
                image_name: ImageName::EMPTY,
            })
            .unwrap();
        assert_eq!(table.read_words(4, [2, 5, 6]), Some((77, [102, 105, 106])));
        assert_eq!(table.read_words(4, [7]), Some((77, [107])));
        assert_eq!(
            table.read_words(4, [RECORD_WORDS]),
            Some((77, [0])),
            "past the record"
        );
        assert_eq!(table.read_words(8, [0]), None, "absent");
        assert_eq!(table.read_words(EMPTY, [0]), None);
        assert_eq!(table.read_words(TOMBSTONE, [0]), None);
        assert!(table.remove(4, 77));
        assert_eq!(table.read_words(4, [0]), None, "removed");
    }

    /// Every pid's home is a slot of the table, at every size, and the
    /// homes of consecutive pids spread over the whole table.
    #[test]
    fn homes_are_in_range_and_spread() {
        for processes in [1, 8, 100, 1000, 100_000, MAX_SLOTS / 2] {
            let Some(table) = ProcessTable::with_capacity(processes) else {
                continue;
            };
            let len = table.capacity();
            let mut used = vec![false; len];
            for pid in (0..u32::try_from(len).unwrap() * 4).step_by(4) {
                let index = home(pid, table.shift);
                assert!(index < len, "{pid} -> {index} of {len}");
                used[index] = true;
            }
            for pid in [u32::MAX, u32::MAX - 3, 0x8000_0000] {
                assert!(home(pid, table.shift) < len);
            }
            let spread = used.iter().filter(|&&u| u).count();
            assert!(spread * 2 > len, "{spread} of {len} slots are homes");
        }
    }

    #[test]
    fn inserted_processes_are_found_and_others_are_absent() {
        let table = ProcessTable::with_capacity(100).unwrap();
        for pid in (4..400).step_by(4) {
            table
                .insert(&entry(pid, u64::from(pid) * 10, u64::from(pid)))
                .unwrap();
        }
        assert_eq!(table.len(), 99);
        for pid in (4..400).step_by(4) {
            assert_eq!(
                table.lookup(pid),
                Lookup::Found(entry(pid, u64::from(pid) * 10, u64::from(pid)))
            );
        }
        assert_eq!(table.lookup(8000), Lookup::Absent);
        assert_eq!(table.lookup(EMPTY), Lookup::Absent);
    }

    #[test]
    fn reinserting_a_pid_replaces_its_entry() {
        let table = ProcessTable::with_capacity(4).unwrap();
        table.insert(&entry(40, 1, 7)).unwrap();
        table.insert(&entry(40, 2, 9)).unwrap();
        assert_eq!(table.len(), 1);
        assert_eq!(table.lookup(40), Lookup::Found(entry(40, 2, 9)));
    }

    #[test]
    fn removal_needs_the_matching_creation_key() {
        let table = ProcessTable::with_capacity(4).unwrap();
        table.insert(&entry(40, 1, 7)).unwrap();
        assert!(
            !table.remove(40, 2),
            "a later process's exit must not remove this one"
        );
        assert!(table.remove(40, 1));
        assert_eq!(table.lookup(40), Lookup::Absent);
        assert!(!table.remove(40, 1));
        assert_eq!((table.len(), table.tombstones()), (0, 1));
    }

    #[test]
    fn pid_reuse_after_exit_gets_the_new_record() {
        let table = ProcessTable::with_capacity(4).unwrap();
        table.insert(&entry(1000, 111, 0xAA)).unwrap();
        assert!(table.remove(1000, 111));
        table.insert(&entry(1000, 222, 0xBB)).unwrap();
        assert_eq!(table.lookup(1000), Lookup::Found(entry(1000, 222, 0xBB)));
        assert_eq!(table.tombstones(), 0, "the tombstone was reused");
    }

    #[test]
    fn probes_continue_past_tombstones_and_colliding_pids() {
        let table = ProcessTable::with_capacity(8).unwrap();
        let colliding: Vec<u32> = (1..100_000u32)
            .map(|n| n * 4)
            .filter(|&pid| home(pid, table.shift) == home(4, table.shift))
            .take(4)
            .collect();
        for &pid in &colliding {
            table.insert(&entry(pid, 1, u64::from(pid))).unwrap();
        }
        assert!(table.remove(colliding[1], 1));
        assert_eq!(
            table.lookup(colliding[3]),
            Lookup::Found(entry(colliding[3], 1, u64::from(colliding[3])))
        );
        assert_eq!(table.lookup(colliding[1]), Lookup::Absent);
        // The callbacks' reads walk the same chain.
        for &pid in [colliding[0], colliding[2], colliding[3]].iter() {
            assert_eq!(table.read_words(pid, [0]), Some((1, [u64::from(pid)])));
            // Found (unprotected: even fill), not taken for absent.
            assert!(matches!(table.protection(pid), Protection::Unprotected));
        }
        assert_eq!(table.read_words(colliding[1], [0]), None);
    }

    #[test]
    fn a_full_table_refuses_instead_of_looping() {
        let table = ProcessTable::with_capacity(8).unwrap();
        let capacity = table.capacity();
        let mut inserted = 0;
        for n in 1..=capacity as u32 {
            match table.insert(&entry(n * 4, 1, 0)) {
                Ok(()) => inserted += 1,
                Err(error) => assert_eq!(error, InsertError::Full),
            }
        }
        assert_eq!(inserted, capacity - 1, "one slot stays empty");
        assert!(table.needs_rebuild());
        // Lookups still end, whichever slot their probe starts from, also
        // once removals have left tombstones and insertions reused them.
        let absent = |table: &ProcessTable| {
            (capacity as u32 + 1..=capacity as u32 * 8)
                .map(|n| n * 4)
                .all(|pid| {
                    table.lookup(pid) == Lookup::Absent && table.read_words(pid, [0]).is_none()
                })
        };
        assert!(absent(&table));
        for n in (1..capacity as u32).step_by(2) {
            assert!(table.remove(n * 4, 1));
        }
        assert!(absent(&table));
        for n in (1..capacity as u32).step_by(2) {
            table.insert(&entry(n * 4 + 1_000_000, 1, 0)).unwrap();
        }
        assert_eq!(
            table.insert(&entry(999_996, 1, 0)),
            Err(InsertError::Full),
            "tombstones reused, the last EMPTY slot still kept"
        );
        assert!(absent(&table));
        assert_eq!(
            table.insert(&entry(EMPTY, 0, 0)),
            Err(InsertError::ReservedPid)
        );
    }

    #[test]
    fn oversized_tables_are_refused_not_panicked_on() {
        assert!(ProcessTable::with_capacity(usize::MAX).is_none());
        assert!(ProcessTable::with_capacity(MAX_SLOTS).is_none());
    }

    #[test]
    fn entries_lists_live_processes_only() {
        let table = ProcessTable::with_capacity(8).unwrap();
        table.insert(&entry(4, 1, 1)).unwrap();
        table.insert(&entry(8, 2, 2)).unwrap();
        assert!(table.remove(4, 1));
        let entries: Vec<Entry> = table.entries().collect();
        assert_eq!(entries, [entry(8, 2, 2)]);
    }

    /// Readers hammer lookups while a writer inserts, rewrites and removes:
    /// every entry a reader sees is whole (all record words and the key carry
    /// the same generation number), never torn.
    #[test]
    fn concurrent_readers_never_see_a_torn_entry() {
        let table = Arc::new(ProcessTable::with_capacity(64).unwrap());
        let done = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (table, done) = (table.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut found = 0u64;
                    loop {
                        for pid in (4..=64).step_by(4) {
                            if let Lookup::Found(entry) = table.lookup(pid) {
                                assert_eq!(entry.pid, pid);
                                assert!(
                                    entry.record.iter().all(|&word| word == entry.creation_key),
                                    "torn: {entry:?}"
                                );
                                assert_eq!(entry.image_name, name(entry.creation_key), "torn name");
                                found += 1;
                            }
                            if let Some((key, image)) = table.image_name(pid) {
                                assert_eq!(image, name(key), "torn name of {pid}");
                                found += 1;
                            }
                            if let Some((key, words)) = table.read_words(pid, [0, 5, 7]) {
                                assert_eq!(words, [key; 3], "torn words of {pid}");
                                found += 1;
                            }
                        }
                        if done.load(Ordering::Relaxed) {
                            return found;
                        }
                    }
                })
            })
            .collect();
        for generation in 1..20_000u64 {
            let pid = u32::try_from(generation % 16 + 1).unwrap() * 4;
            if generation % 3 == 0 {
                table.remove(pid, generation - 1);
            }
            table
                .insert(&entry(pid, generation, generation))
                .unwrap_or(());
        }
        done.store(true, Ordering::Relaxed);
        let found: u64 = readers
            .into_iter()
            .map(|reader| reader.join().unwrap())
            .sum();
        assert!(found > 0);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    /// Runs `model` in every interleaving up to three preemptions.
    fn check(model: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(model);
    }

    /// Every interleaving of a reader and a writer rewriting one slot: the
    /// reader gets the old entry, the new entry or Busy — never a mix.
    #[test]
    fn a_slot_read_is_never_torn() {
        check(|| {
            let slot = Arc::new((Slot::empty(), empty_name_slot()));
            let one = ImageName::from_units(&[1]);
            slot.0
                .write(4, 1, &[1; RECORD_WORDS], true, (&one, &slot.1));
            let writer = {
                let slot = slot.clone();
                loom::thread::spawn(move || {
                    let two = ImageName::from_units(&[2, 2]);
                    slot.0
                        .write(4, 2, &[2; RECORD_WORDS], false, (&two, &slot.1))
                })
            };
            if let Some(entry) = slot.0.read(&slot.1) {
                assert_eq!(
                    entry.image_name.as_units(),
                    &[entry.creation_key as u16; 2][..entry.creation_key as usize],
                    "torn name: {entry:?}"
                );
                assert!(
                    entry.record.iter().all(|&word| word == entry.creation_key),
                    "torn read: {entry:?}"
                );
                assert_eq!(
                    entry.protected,
                    entry.creation_key == 1,
                    "torn flag: {entry:?}"
                );
            }
            writer.join().unwrap();
        });
    }

    /// The same for the partial read the callbacks use: the key and the
    /// words come from one write, and a slot rewritten to another pid (a
    /// removal) is never read as the old pid's.
    #[test]
    fn a_partial_read_is_never_torn_nor_of_another_pid() {
        check(|| {
            let slot = Arc::new((Slot::empty(), empty_name_slot()));
            let empty = (&ImageName::EMPTY, &slot.1);
            slot.0.write(4, 1, &[1; RECORD_WORDS], true, empty);
            let writer = {
                let slot = slot.clone();
                loom::thread::spawn(move || {
                    let empty = (&ImageName::EMPTY, &slot.1);
                    slot.0.write(4, 2, &[2; RECORD_WORDS], false, empty);
                    slot.0.write(TOMBSTONE, 0, &[0; RECORD_WORDS], false, empty);
                })
            };
            if let Some((key, words)) = slot.0.read_words(4, [0, 7]) {
                assert!(key == 1 || key == 2, "key of another pid: {key}");
                assert_eq!(words, [key; 2], "torn partial read");
            }
            writer.join().unwrap();
        });
    }

    /// The fast path's answer without the sequence lock: while a writer
    /// removes protected pid 4 and reuses its slot for an unprotected pid
    /// (the two slot writes `remove` and `insert` make),
    /// `protection(4)` may say "decide" (found, or absent) but never
    /// "unprotected": the flag it reads is always pid 4's own. (With the pid
    /// and the flag read by two loads, it pairs pid 4 with the newcomer's
    /// flag: tried, this model fails.) The slot writes are made directly:
    /// with `remove` itself in the writer, whose first step is an atomic
    /// load, loom 0.7 explores one interleaving only (tokio-rs/loom#392).
    #[test]
    fn the_fast_path_never_pairs_a_pid_with_another_entrys_flag() {
        check(|| {
            let table = Arc::new(ProcessTable::with_capacity(1).unwrap());
            let newcomer = (2..1_000u32)
                .map(|n| n * 4)
                .find(|&pid| home(pid, table.shift) == home(4, table.shift))
                .unwrap();
            let slot = home(4, table.shift);
            let empty = (&ImageName::EMPTY, &table.names[slot]);
            table.slots[slot].write(4, 1, &[0; RECORD_WORDS], true, empty);
            let writer = {
                let table = table.clone();
                loom::thread::spawn(move || {
                    let empty = (&ImageName::EMPTY, &table.names[slot]);
                    table.slots[slot].write(TOMBSTONE, 0, &[0; RECORD_WORDS], false, empty);
                    table.slots[slot].write(newcomer, 1, &[0; RECORD_WORDS], false, empty);
                })
            };
            assert!(
                !matches!(table.protection(4), Protection::Unprotected),
                "pid 4 read as unprotected"
            );
            writer.join().unwrap();
            assert!(matches!(
                table.protection(newcomer),
                Protection::Unprotected
            ));
        });
    }
}
