//! The driver's interim policy: target process id → rights to strip, per
//! object type. The policy engine (`crates/procguard-policy`) replaces it when
//! the driver adopts the engine; until then this is the `Policy` registry
//! value's format.
//!
//! Blob layout (little-endian, exact length, no padding):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `PGPT` |
//! | 4 | 2 | version, 1 |
//! | 6 | 2 | entry count `n`, at most [`MAX_ENTRIES`] |
//! | 8 | 12·n | entries: `pid: u32`, `process_strip: u32`, `thread_strip: u32`, strictly ascending by pid |
//!
//! Decoding checks everything and never panics: the kernel reads this from
//! the registry, which an administrator (or an attacker with admin rights)
//! controls.
#![forbid(unsafe_code)]

use alloc::vec::Vec;

/// The blob's magic bytes.
pub const MAGIC: [u8; 4] = *b"PGPT";
/// The one version this driver reads.
pub const VERSION: u16 = 1;
/// Most entries a table may hold (bounds the allocation a blob can cause).
pub const MAX_ENTRIES: usize = 4096;
const HEADER_LEN: usize = 8;
const ENTRY_LEN: usize = 12;

/// Which kind of object a handle request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// A process handle (`PsProcessType`).
    Process,
    /// A thread handle (`PsThreadType`); the thread's process decides.
    Thread,
}

/// What to strip from handles to one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidRule {
    /// The protected process.
    pub pid: u32,
    /// Rights removed from process handles to it.
    pub process_strip: u32,
    /// Rights removed from handles to its threads.
    pub thread_strip: u32,
}

/// Why a blob was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidTableError {
    /// Shorter than the header.
    TooShort {
        /// Bytes present.
        len: usize,
    },
    /// The first four bytes are not `PGPT`.
    BadMagic,
    /// A version this driver does not read.
    UnsupportedVersion(u16),
    /// More entries than [`MAX_ENTRIES`].
    TooManyEntries(usize),
    /// The length does not equal header + count × entry size.
    LengthMismatch {
        /// Length the count implies.
        expected: usize,
        /// Length present.
        actual: usize,
    },
    /// No pool memory for the table (not a fault of the blob).
    OutOfMemory {
        /// Entries the blob holds.
        entries: usize,
    },
    /// Entries not strictly ascending by pid (unsorted or duplicated).
    NotAscending {
        /// Index of the first entry out of order.
        index: usize,
    },
}

impl core::fmt::Display for PidTableError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::TooShort { len } => write!(
                f,
                "policy blob of {len} bytes is shorter than its 8-byte header"
            ),
            Self::BadMagic => write!(f, "policy blob does not start with PGPT"),
            Self::UnsupportedVersion(version) => {
                write!(f, "policy blob version {version} is not {VERSION}")
            }
            Self::TooManyEntries(count) => write!(
                f,
                "policy blob has {count} entries, more than {MAX_ENTRIES}"
            ),
            Self::LengthMismatch { expected, actual } => {
                write!(
                    f,
                    "policy blob is {actual} bytes, its count implies {expected}"
                )
            }
            Self::OutOfMemory { entries } => {
                write!(f, "no memory for the {entries} entries of the policy blob (0xC000009A, STATUS_INSUFFICIENT_RESOURCES)")
            }
            Self::NotAscending { index } => {
                write!(f, "policy entry {index} is not in ascending pid order")
            }
        }
    }
}

/// A decoded table, sorted by pid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PidTable {
    rules: Vec<PidRule>,
}

fn le_u16(bytes: &[u8], at: usize) -> Option<u16> {
    let field = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([field[0], field[1]]))
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let field: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(field))
}

impl PidTable {
    /// A table that strips nothing.
    #[must_use]
    pub const fn empty() -> Self {
        Self { rules: Vec::new() }
    }

    /// Decodes and validates a blob. Allocates at most `blob.len()` bytes'
    /// worth of entries, and only after the length has been checked.
    ///
    /// # Errors
    /// A [`PidTableError`] naming the first malformation found.
    pub fn decode(blob: &[u8]) -> Result<Self, PidTableError> {
        let too_short = PidTableError::TooShort { len: blob.len() };
        if blob.len() < HEADER_LEN {
            return Err(too_short);
        }
        if blob.get(0..4) != Some(&MAGIC[..]) {
            return Err(PidTableError::BadMagic);
        }
        let version = le_u16(blob, 4).ok_or(too_short)?;
        if version != VERSION {
            return Err(PidTableError::UnsupportedVersion(version));
        }
        let count = usize::from(le_u16(blob, 6).ok_or(too_short)?);
        if count > MAX_ENTRIES {
            return Err(PidTableError::TooManyEntries(count));
        }
        let expected = HEADER_LEN + count * ENTRY_LEN;
        if blob.len() != expected {
            return Err(PidTableError::LengthMismatch {
                expected,
                actual: blob.len(),
            });
        }
        let mut rules = Vec::new();
        if rules.try_reserve_exact(count).is_err() {
            return Err(PidTableError::OutOfMemory { entries: count });
        }
        for (index, entry) in blob[HEADER_LEN..].chunks_exact(ENTRY_LEN).enumerate() {
            let (Some(pid), Some(process_strip), Some(thread_strip)) =
                (le_u32(entry, 0), le_u32(entry, 4), le_u32(entry, 8))
            else {
                return Err(too_short);
            };
            if rules
                .last()
                .is_some_and(|previous: &PidRule| previous.pid >= pid)
            {
                return Err(PidTableError::NotAscending { index });
            }
            rules.push(PidRule {
                pid,
                process_strip,
                thread_strip,
            });
        }
        Ok(Self { rules })
    }

    /// Encodes the table (the inverse of [`PidTable::decode`]); used by tests
    /// and tools.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut blob = Vec::with_capacity(HEADER_LEN + self.rules.len() * ENTRY_LEN);
        blob.extend_from_slice(&MAGIC);
        blob.extend_from_slice(&VERSION.to_le_bytes());
        blob.extend_from_slice(
            &u16::try_from(self.rules.len())
                .unwrap_or(u16::MAX)
                .to_le_bytes(),
        );
        for rule in &self.rules {
            blob.extend_from_slice(&rule.pid.to_le_bytes());
            blob.extend_from_slice(&rule.process_strip.to_le_bytes());
            blob.extend_from_slice(&rule.thread_strip.to_le_bytes());
        }
        blob
    }

    /// Builds a table from rules in any order; later duplicates are merged
    /// into the first (union of their strip masks).
    #[must_use]
    pub fn from_rules(mut rules: Vec<PidRule>) -> Self {
        rules.sort_by_key(|rule| rule.pid);
        rules.dedup_by(|later, kept| {
            let same = later.pid == kept.pid;
            if same {
                kept.process_strip |= later.process_strip;
                kept.thread_strip |= later.thread_strip;
            }
            same
        });
        rules.truncate(MAX_ENTRIES);
        Self { rules }
    }

    /// Number of protected processes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when the table strips nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rights to remove from a handle of `kind` to process `target_pid`
    /// (0 when the process is not protected). O(log n), no allocation.
    #[must_use]
    pub fn strip_mask(&self, target_pid: u32, kind: ObjectKind) -> u32 {
        match self
            .rules
            .binary_search_by_key(&target_pid, |rule| rule.pid)
        {
            Ok(found) => self.rules.get(found).map_or(0, |rule| match kind {
                ObjectKind::Process => rule.process_strip,
                ObjectKind::Thread => rule.thread_strip,
            }),
            Err(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> PidTable {
        PidTable::from_rules(vec![
            PidRule {
                pid: 900,
                process_strip: 0x1,
                thread_strip: 0x2,
            },
            PidRule {
                pid: 40,
                process_strip: 0x0800,
                thread_strip: 0,
            },
        ])
    }

    #[test]
    fn lookup_returns_the_mask_for_the_object_kind() {
        let table = table();
        assert_eq!(table.strip_mask(900, ObjectKind::Process), 0x1);
        assert_eq!(table.strip_mask(900, ObjectKind::Thread), 0x2);
        assert_eq!(table.strip_mask(40, ObjectKind::Process), 0x0800);
        assert_eq!(table.strip_mask(41, ObjectKind::Process), 0);
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let table = table();
        assert_eq!(PidTable::decode(&table.encode()), Ok(table));
        assert_eq!(
            PidTable::decode(&PidTable::empty().encode()),
            Ok(PidTable::empty())
        );
    }

    #[test]
    fn duplicate_pids_merge_when_built_from_rules() {
        let merged = PidTable::from_rules(vec![
            PidRule {
                pid: 7,
                process_strip: 0x1,
                thread_strip: 0,
            },
            PidRule {
                pid: 7,
                process_strip: 0x20,
                thread_strip: 0x10,
            },
        ]);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged.strip_mask(7, ObjectKind::Process), 0x21);
        assert_eq!(merged.strip_mask(7, ObjectKind::Thread), 0x10);
    }

    #[test]
    fn each_malformation_gets_its_own_error() {
        let good = table().encode();
        assert_eq!(
            PidTable::decode(&good[..7]),
            Err(PidTableError::TooShort { len: 7 })
        );
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert_eq!(PidTable::decode(&bad_magic), Err(PidTableError::BadMagic));
        let mut bad_version = good.clone();
        bad_version[4] = 2;
        assert_eq!(
            PidTable::decode(&bad_version),
            Err(PidTableError::UnsupportedVersion(2))
        );
        let mut huge = good.clone();
        huge[6..8].copy_from_slice(&5000u16.to_le_bytes());
        assert_eq!(
            PidTable::decode(&huge),
            Err(PidTableError::TooManyEntries(5000))
        );
        assert_eq!(
            PidTable::decode(&good[..good.len() - 1]),
            Err(PidTableError::LengthMismatch {
                expected: good.len(),
                actual: good.len() - 1
            })
        );
        let mut long = good.clone();
        long.push(0);
        assert_eq!(
            PidTable::decode(&long),
            Err(PidTableError::LengthMismatch {
                expected: good.len(),
                actual: good.len() + 1
            })
        );
        let mut unsorted = good.clone();
        unsorted[8..12].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(
            PidTable::decode(&unsorted),
            Err(PidTableError::NotAscending { index: 1 })
        );
    }

    #[test]
    fn decode_of_arbitrary_bytes_never_panics_and_valid_results_reencode() {
        // A deterministic sweep over prefixes and single-byte mutations of a
        // valid blob: every outcome is an error or a table that re-encodes to
        // the same bytes.
        let good = table().encode();
        for len in 0..=good.len() + 2 {
            for position in 0..good.len() {
                for value in [0u8, 1, 0x7F, 0xFF] {
                    let mut bytes = good.clone();
                    bytes.resize(len, 0xAA);
                    if let Some(byte) = bytes.get_mut(position) {
                        *byte = value;
                    }
                    if let Ok(decoded) = PidTable::decode(&bytes) {
                        assert_eq!(decoded.encode(), bytes);
                    }
                }
            }
        }
    }
}
