//! The audit record: what procguard reports for every handle request it
//! stripped, or would have stripped (audit-mode rules).
//!
//! Field names follow the handle-operation event of the usual process
//! filters (`duplication`, `process_id`, `originator_process_id`, …) and map
//! onto Sysmon's ProcessAccess event where they overlap.
//!
//! Wire form: 64 bytes, eight little-endian `u64` words:
//!
//! | word | bits 0–31 | bits 32–63 |
//! |---|---|---|
//! | 0 | `sequence` (all 64 bits) | |
//! | 1 | `timestamp` (all 64 bits: 100 ns units since 1601-01-01 UTC) | |
//! | 2 | `process_id` | `thread_id` |
//! | 3 | `originator_process_id` | `originator_thread_id` |
//! | 4 | `source_process_id` | `target_process_id` |
//! | 5 | `original_desired_access` | `desired_access` |
//! | 6 | `result_code` | `rule_id` (`u32::MAX`: none) |
//! | 7 | bits 0–7 object (1 process, 2 thread, 3 policy), bit 8 duplication, bits 16–23 mode (1 enforce, 2 audit, 3 ask, 4 policy applied, 5 policy rejected) | bits 0–7 ask outcome (0 not asked, else [`AskOutcome::code`]), bits 8–31 ask wait in microseconds (saturating at 2²⁴−1) |
//!
//! For an asked request (mode 3) `result_code` is the handler's `result_code`
//! (0 unless it answered with one) and `rule_id` the ask rule.
//!
//! ## Policy records
//!
//! A change of policy is a record too (object 3, mode 4 or 5), so the one
//! stream that carries the decisions also says which policy made them and
//! when a pushed policy was refused. Built by [`AuditRecord::policy_event`];
//! the handle fields are reused, not added:
//!
//! | field | policy applied (mode 4) | policy rejected (mode 5) |
//! |---|---|---|
//! | `rule_id` | id (CRC-32) of the new policy | id of the policy that stays in force |
//! | `result_code` | 0 | the NTSTATUS of the rejection |
//! | `desired_access` | rules in force now | rules in force (unchanged) |
//! | `source_process_id` | [`PolicySource::code`] | [`PolicySource::code`] |
//! | `originator_process_id`, `originator_thread_id` | who applied it (`IOCTL_SET_POLICY`); 0 for the registry | idem |
//! | everything else | 0 | 0 |

/// Words of one record.
pub const AUDIT_RECORD_WORDS: usize = 8;
/// Bytes of one record on the wire.
pub const AUDIT_RECORD_BYTES: usize = AUDIT_RECORD_WORDS * 8;
/// `rule_id` when no rule is named.
pub const NO_RULE: u32 = u32::MAX;
/// The word that holds `sequence` (a producer may build the other words
/// before its sequence number is known, then set this one).
pub const SEQUENCE_WORD: usize = 0;

/// What the handle is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditObject {
    /// A process handle.
    Process,
    /// A thread handle (`process_id` is the owning process).
    Thread,
    /// Not a handle: a policy was applied or rejected (see the module docs).
    Policy,
}

impl AuditObject {
    /// Lower-case name, as `procguardctl events` shows it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Thread => "thread",
            Self::Policy => "policy",
        }
    }
}

impl AuditMode {
    /// Lower-case name, as `procguardctl events` shows it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Audit => "audit",
            Self::Ask => "ask",
            Self::PolicyApplied => "policy-applied",
            Self::PolicyRejected => "policy-rejected",
        }
    }
}

/// Where a policy came from (a policy record's `source_process_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicySource {
    /// `Parameters\\Policy` read at driver start.
    Boot,
    /// `IOCTL_SET_POLICY` (`procguardctl apply`).
    Control,
    /// A live change of `Parameters\\Policy` (GPO, Intune, `reg import`, …).
    Registry,
}

impl PolicySource {
    /// Wire code: 1 boot, 2 control, 3 registry.
    #[must_use]
    pub const fn code(self) -> u32 {
        match self {
            Self::Boot => 1,
            Self::Control => 2,
            Self::Registry => 3,
        }
    }

    /// From a wire code.
    #[must_use]
    pub const fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(Self::Boot),
            2 => Some(Self::Control),
            3 => Some(Self::Registry),
            _ => None,
        }
    }

    /// Lower-case name (`"boot"`, `"control"`, `"registry"`), as JSON shows it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Boot => "boot",
            Self::Control => "control",
            Self::Registry => "registry",
        }
    }
}

use crate::ask::AskOutcome;

/// Largest ask wait a record holds, in microseconds (24 bits).
pub const MAX_ASK_WAIT_US: u32 = (1 << 24) - 1;

/// Whether the rights were removed or only reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditMode {
    /// The rights were removed.
    Enforce,
    /// Audit-mode rule: the rights would have been removed; nothing was.
    Audit,
    /// An ask rule matched: the handler (or the fallback) decided; see
    /// [`AuditRecord::ask_outcome`].
    Ask,
    /// A policy record: a new policy is in force.
    PolicyApplied,
    /// A policy record: a policy was refused; the one in force stays.
    PolicyRejected,
}

/// One audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AuditRecord {
    /// Position in the ring: consecutive; a gap means records were dropped.
    pub sequence: u64,
    /// When the request was decided (system time, 100 ns since 1601, UTC).
    pub timestamp: i64,
    /// Process or thread handle.
    pub object: AuditObject,
    /// True for `DuplicateHandle`, false for a new handle.
    pub duplication: bool,
    /// The process the handle is for (a thread's owning process).
    pub process_id: u32,
    /// For thread handles, the thread; 0 otherwise.
    pub thread_id: u32,
    /// The process that made the request (the current process).
    pub originator_process_id: u32,
    /// The thread that made the request.
    pub originator_thread_id: u32,
    /// Duplication: the process the handle is duplicated from; 0 otherwise.
    pub source_process_id: u32,
    /// Duplication: the process that receives the handle (the requester); 0 otherwise.
    pub target_process_id: u32,
    /// The access requested.
    pub original_desired_access: u32,
    /// The access granted (a subset of the request).
    pub desired_access: u32,
    /// Status of the pre-operation callback (procguard never fails a
    /// handle operation: it only removes rights, so this is 0).
    pub result_code: i32,
    /// The rule responsible, or [`NO_RULE`].
    pub rule_id: u32,
    /// Enforced, audit-only or asked.
    pub mode: AuditMode,
    /// For an asked request, what happened; `None` otherwise.
    pub ask_outcome: Option<AskOutcome>,
    /// For an asked request, how long the callback waited for the answer
    /// (microseconds, at most [`MAX_ASK_WAIT_US`]); 0 otherwise.
    pub ask_wait_us: u32,
}

fn pair(low: u32, high: u32) -> u64 {
    u64::from(low) | (u64::from(high) << 32)
}

fn low(word: u64) -> u32 {
    (word & 0xFFFF_FFFF) as u32
}

fn high(word: u64) -> u32 {
    (word >> 32) as u32
}

/// Why words or bytes are not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditRecordError {
    /// Not exactly [`AUDIT_RECORD_BYTES`] bytes.
    Length(usize),
    /// An object code other than 1, 2 or 3.
    Object(u8),
    /// A mode code other than 1 to 5.
    Mode(u8),
    /// An ask outcome code other than 0..=6.
    AskOutcome(u8),
    /// Reserved bits set.
    Reserved,
}

impl core::fmt::Display for AuditRecordError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Length(length) => write!(
                f,
                "an audit record is {AUDIT_RECORD_BYTES} bytes, not {length}"
            ),
            Self::Object(code) => write!(f, "unknown object code {code} in an audit record"),
            Self::Mode(code) => write!(f, "unknown mode code {code} in an audit record"),
            Self::AskOutcome(code) => {
                write!(f, "unknown ask outcome code {code} in an audit record")
            }
            Self::Reserved => f.write_str("reserved bits set in an audit record"),
        }
    }
}

impl AuditRecord {
    /// The record as eight words. Inlined: the driver's callbacks build a
    /// record whose mode and ask fields are constants, which then fold.
    #[must_use]
    #[inline(always)]
    pub fn to_words(&self) -> [u64; AUDIT_RECORD_WORDS] {
        let object = match self.object {
            AuditObject::Process => 1u64,
            AuditObject::Thread => 2,
            AuditObject::Policy => 3,
        };
        let mode = match self.mode {
            AuditMode::Enforce => 1u64,
            AuditMode::Audit => 2,
            AuditMode::Ask => 3,
            AuditMode::PolicyApplied => 4,
            AuditMode::PolicyRejected => 5,
        };
        let outcome = self.ask_outcome.map_or(0, AskOutcome::code);
        let wait = self.ask_wait_us.min(MAX_ASK_WAIT_US);
        [
            self.sequence,
            self.timestamp.cast_unsigned(),
            pair(self.process_id, self.thread_id),
            pair(self.originator_process_id, self.originator_thread_id),
            pair(self.source_process_id, self.target_process_id),
            pair(self.original_desired_access, self.desired_access),
            pair(self.result_code.cast_unsigned(), self.rule_id),
            object
                | (u64::from(self.duplication) << 8)
                | (mode << 16)
                | (u64::from(outcome) << 32)
                | (u64::from(wait) << 40),
        ]
    }

    /// A record from eight words.
    ///
    /// # Errors
    /// [`AuditRecordError`] for unknown codes or reserved bits.
    pub fn from_words(words: &[u64; AUDIT_RECORD_WORDS]) -> Result<Self, AuditRecordError> {
        let flags = words[7];
        if flags & !0xFFFF_FFFF_00FF_01FF != 0 {
            return Err(AuditRecordError::Reserved);
        }
        let object = match (flags & 0xFF) as u8 {
            1 => AuditObject::Process,
            2 => AuditObject::Thread,
            3 => AuditObject::Policy,
            code => return Err(AuditRecordError::Object(code)),
        };
        let mode = match ((flags >> 16) & 0xFF) as u8 {
            1 => AuditMode::Enforce,
            2 => AuditMode::Audit,
            3 => AuditMode::Ask,
            4 => AuditMode::PolicyApplied,
            5 => AuditMode::PolicyRejected,
            code => return Err(AuditRecordError::Mode(code)),
        };
        let ask_outcome = match ((flags >> 32) & 0xFF) as u8 {
            0 => None,
            code => Some(AskOutcome::from_code(code).ok_or(AuditRecordError::AskOutcome(code))?),
        };
        Ok(Self {
            sequence: words[0],
            timestamp: words[1].cast_signed(),
            object,
            duplication: flags & 0x100 != 0,
            process_id: low(words[2]),
            thread_id: high(words[2]),
            originator_process_id: low(words[3]),
            originator_thread_id: high(words[3]),
            source_process_id: low(words[4]),
            target_process_id: high(words[4]),
            original_desired_access: low(words[5]),
            desired_access: high(words[5]),
            result_code: low(words[6]).cast_signed(),
            rule_id: high(words[6]),
            mode,
            ask_outcome,
            ask_wait_us: (flags >> 40) as u32,
        })
    }

    /// A policy record (see the module docs): `applied` or rejected with
    /// `status`, `policy_id` the policy in force afterwards (or the new one),
    /// `rules` the rules in force afterwards, `by` the process and thread
    /// that sent the policy (0, 0 for the registry and boot).
    #[must_use]
    pub const fn policy_event(
        timestamp: i64,
        source: PolicySource,
        result: Result<(), i32>,
        policy_id: u32,
        rules: u32,
        by: (u32, u32),
    ) -> Self {
        let (mode, result_code) = match result {
            Ok(()) => (AuditMode::PolicyApplied, 0),
            Err(status) => (AuditMode::PolicyRejected, status),
        };
        Self {
            sequence: 0,
            timestamp,
            object: AuditObject::Policy,
            duplication: false,
            process_id: 0,
            thread_id: 0,
            originator_process_id: by.0,
            originator_thread_id: by.1,
            source_process_id: source.code(),
            target_process_id: 0,
            original_desired_access: 0,
            desired_access: rules,
            result_code,
            rule_id: policy_id,
            mode,
            ask_outcome: None,
            ask_wait_us: 0,
        }
    }

    /// For a policy record, where the policy came from; `None` for a
    /// handle record (or an unknown source code).
    #[must_use]
    pub const fn policy_source(&self) -> Option<PolicySource> {
        match self.object {
            AuditObject::Policy => PolicySource::from_code(self.source_process_id),
            AuditObject::Process | AuditObject::Thread => None,
        }
    }

    /// The wire form (little-endian words).
    #[must_use]
    pub fn to_bytes(&self) -> [u8; AUDIT_RECORD_BYTES] {
        let mut bytes = [0u8; AUDIT_RECORD_BYTES];
        for (chunk, word) in bytes.chunks_exact_mut(8).zip(self.to_words()) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        bytes
    }

    /// A record from its wire form.
    ///
    /// # Errors
    /// [`AuditRecordError`] when the length or content is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AuditRecordError> {
        if bytes.len() != AUDIT_RECORD_BYTES {
            return Err(AuditRecordError::Length(bytes.len()));
        }
        let mut words = [0u64; AUDIT_RECORD_WORDS];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut le = [0u8; 8];
            le.copy_from_slice(chunk);
            *word = u64::from_le_bytes(le);
        }
        Self::from_words(&words)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AuditRecord {
        AuditRecord {
            sequence: 0x0102_0304_0506_0708,
            timestamp: -5,
            object: AuditObject::Thread,
            duplication: true,
            process_id: 1000,
            thread_id: 1004,
            originator_process_id: 2000,
            originator_thread_id: 2004,
            source_process_id: 3000,
            target_process_id: 4000,
            original_desired_access: 0x1F_FFFF,
            desired_access: 0x1F_FFFE,
            result_code: -1_073_741_790,
            rule_id: 7,
            mode: AuditMode::Audit,
            ask_outcome: None,
            ask_wait_us: 0,
        }
    }

    #[test]
    fn the_sequence_is_the_sequence_word_alone() {
        let record = sample();
        let mut words = record.to_words();
        words[SEQUENCE_WORD] = 99;
        assert_eq!(
            AuditRecord::from_words(&words),
            Ok(AuditRecord {
                sequence: 99,
                ..record
            })
        );
    }

    #[test]
    fn words_and_bytes_round_trip() {
        let record = sample();
        assert_eq!(AuditRecord::from_words(&record.to_words()), Ok(record));
        assert_eq!(AuditRecord::from_bytes(&record.to_bytes()), Ok(record));
        let process = AuditRecord {
            object: AuditObject::Process,
            duplication: false,
            mode: AuditMode::Enforce,
            rule_id: NO_RULE,
            ..record
        };
        assert_eq!(AuditRecord::from_bytes(&process.to_bytes()), Ok(process));
    }

    #[test]
    fn the_wire_layout_is_the_documented_one() {
        let bytes = sample().to_bytes();
        assert_eq!(&bytes[0..8], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&bytes[16..20], &1000u32.to_le_bytes());
        assert_eq!(&bytes[20..24], &1004u32.to_le_bytes());
        assert_eq!(&bytes[40..44], &0x1F_FFFFu32.to_le_bytes());
        assert_eq!(&bytes[52..56], &7u32.to_le_bytes());
        assert_eq!(bytes[56], 2, "thread");
        assert_eq!(bytes[57], 1, "duplication");
        assert_eq!(bytes[58], 2, "audit");
    }

    #[test]
    fn policy_records_round_trip_with_the_documented_layout() {
        let applied =
            AuditRecord::policy_event(77, PolicySource::Registry, Ok(()), 0xBA8C_D4BC, 6, (0, 0));
        let bytes = applied.to_bytes();
        assert_eq!(bytes[56], 3, "policy object");
        assert_eq!(bytes[58], 4, "policy applied");
        assert_eq!(&bytes[32..36], &3u32.to_le_bytes(), "source: registry");
        assert_eq!(&bytes[52..56], &0xBA8C_D4BCu32.to_le_bytes(), "policy id");
        assert_eq!(&bytes[44..48], &6u32.to_le_bytes(), "rules");
        assert_eq!(AuditRecord::from_bytes(&bytes), Ok(applied));
        assert_eq!(applied.policy_source(), Some(PolicySource::Registry));

        let rejected = AuditRecord::policy_event(
            78,
            PolicySource::Control,
            Err(-1_073_741_811),
            0x1234,
            2,
            (4321, 8765),
        );
        assert_eq!(rejected.mode, AuditMode::PolicyRejected);
        assert_eq!(rejected.result_code, -1_073_741_811);
        let bytes = rejected.to_bytes();
        assert_eq!(bytes[58], 5, "policy rejected");
        assert_eq!(AuditRecord::from_bytes(&bytes), Ok(rejected));
        assert_eq!(rejected.policy_source(), Some(PolicySource::Control));
        assert_eq!(sample().policy_source(), None, "a handle record has none");
        for code in 1..=3 {
            let source = PolicySource::from_code(code).map(PolicySource::code);
            assert_eq!(source, Some(code));
        }
        assert_eq!(PolicySource::from_code(4), None);
    }

    #[test]
    fn ask_records_carry_their_outcome_and_wait() {
        let record = AuditRecord {
            mode: AuditMode::Ask,
            ask_outcome: Some(AskOutcome::TimedOut),
            ask_wait_us: 250_000,
            result_code: 5,
            ..sample()
        };
        let bytes = record.to_bytes();
        assert_eq!(bytes[58], 3, "ask mode");
        assert_eq!(bytes[60], 2, "timed out");
        assert_eq!(&bytes[61..64], &250_000u32.to_le_bytes()[..3]);
        assert_eq!(AuditRecord::from_bytes(&bytes), Ok(record));
        let long = AuditRecord {
            ask_wait_us: u32::MAX,
            ..record
        };
        assert_eq!(
            AuditRecord::from_bytes(&long.to_bytes()).map(|r| r.ask_wait_us),
            Ok(MAX_ASK_WAIT_US),
            "a longer wait saturates"
        );
    }

    #[test]
    fn malformed_records_are_rejected() {
        let good = sample().to_words();
        assert_eq!(
            AuditRecord::from_bytes(&[0; 63]),
            Err(AuditRecordError::Length(63))
        );
        let mut object = good;
        object[7] = (object[7] & !0xFF) | 9;
        assert_eq!(
            AuditRecord::from_words(&object),
            Err(AuditRecordError::Object(9))
        );
        let mut mode = good;
        mode[7] &= !0x00FF_0000;
        assert_eq!(
            AuditRecord::from_words(&mode),
            Err(AuditRecordError::Mode(0))
        );
        let mut outcome = good;
        outcome[7] |= 9 << 32;
        assert_eq!(
            AuditRecord::from_words(&outcome),
            Err(AuditRecordError::AskOutcome(9))
        );
        let mut reserved = good;
        reserved[7] |= 1 << 12;
        assert_eq!(
            AuditRecord::from_words(&reserved),
            Err(AuditRecordError::Reserved)
        );
    }
}
