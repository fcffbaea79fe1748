//! The control device and its IOCTLs: codes, and every request and response
//! structure, with their byte encodings.
//!
//! The driver creates `\Device\ProcGuard` (user mode: `\\.\ProcGuard`),
//! openable by SYSTEM and Administrators only. Every IOCTL is
//! `METHOD_BUFFERED`; those that change anything need `FILE_WRITE_ACCESS`,
//! the others `FILE_READ_ACCESS`. All integers are little-endian; every
//! structure has a fixed layout documented on its type, and decoding checks
//! every length and count (the driver treats every buffer as hostile).

/// NT name of the control device.
pub const DEVICE_NAME: &str = "\\Device\\ProcGuard";
/// Symbolic link the driver creates.
pub const SYMBOLIC_LINK_NAME: &str = "\\DosDevices\\ProcGuard";
/// What user mode opens.
pub const USER_MODE_PATH: &str = "\\\\.\\ProcGuard";
/// Only SYSTEM and the Administrators group may open the device
/// (`SDDL_DEVOBJ_SYS_ALL_ADM_ALL`).
pub const DEVICE_SDDL: &str = "D:P(A;;GA;;;SY)(A;;GA;;;BA)";

/// `FILE_DEVICE_UNKNOWN`.
pub const DEVICE_TYPE: u32 = 0x0000_0022;
/// `METHOD_BUFFERED`.
pub const METHOD_BUFFERED: u32 = 0;
/// `FILE_READ_ACCESS`.
pub const FILE_READ_ACCESS: u32 = 0x0001;
/// `FILE_WRITE_ACCESS`.
pub const FILE_WRITE_ACCESS: u32 = 0x0002;

/// `CTL_CODE(DeviceType, Function, Method, Access)`.
#[must_use]
pub const fn ctl_code(device_type: u32, function: u32, method: u32, access: u32) -> u32 {
    (device_type << 16) | (access << 14) | (function << 2) | method
}

/// Driver status: [`Status`]. Read access.
pub const IOCTL_GET_STATUS: u32 = ctl_code(DEVICE_TYPE, 0x800, METHOD_BUFFERED, FILE_READ_ACCESS);
/// Replace the policy: [`SetPolicyRequest`]. Write access.
pub const IOCTL_SET_POLICY: u32 = ctl_code(DEVICE_TYPE, 0x801, METHOD_BUFFERED, FILE_WRITE_ACCESS);
/// The active policy blob. Read access.
pub const IOCTL_GET_POLICY: u32 = ctl_code(DEVICE_TYPE, 0x802, METHOD_BUFFERED, FILE_READ_ACCESS);
/// Drain audit records: [`EventsHeader`] and the records. Write access (it consumes them).
pub const IOCTL_READ_EVENTS: u32 = ctl_code(DEVICE_TYPE, 0x803, METHOD_BUFFERED, FILE_WRITE_ACCESS);
/// Reset the counters. Write access.
pub const IOCTL_RESET_COUNTERS: u32 =
    ctl_code(DEVICE_TYPE, 0x804, METHOD_BUFFERED, FILE_WRITE_ACCESS);
/// Per-rule counters: [`RuleCountersResponse`]. Read access.
pub const IOCTL_GET_RULE_COUNTERS: u32 =
    ctl_code(DEVICE_TYPE, 0x805, METHOD_BUFFERED, FILE_READ_ACCESS);

/// Every IOCTL, with whether it changes anything (the ask and wait IOCTLs
/// are in [`crate::ask`]).
pub const ALL_IOCTLS: [(u32, &str, bool); 11] = [
    (IOCTL_GET_STATUS, "get status", false),
    (IOCTL_SET_POLICY, "set policy", true),
    (IOCTL_GET_POLICY, "get policy", false),
    (IOCTL_READ_EVENTS, "read events", true),
    (IOCTL_RESET_COUNTERS, "reset counters", true),
    (IOCTL_GET_RULE_COUNTERS, "get rule counters", false),
    (crate::ask::IOCTL_ASK_CONNECT, "ask: connect", true),
    (crate::ask::IOCTL_ASK_GET_REQUEST, "ask: get request", true),
    (crate::ask::IOCTL_ASK_REPLY, "ask: reply", true),
    (crate::ask::IOCTL_ASK_DISCONNECT, "ask: disconnect", true),
    (crate::ask::IOCTL_WAIT_EVENTS, "wait for events", false),
];

/// Version of this protocol; [`Status::protocol_version`] reports the driver's.
/// 2: ask rules (the ask IOCTLs, a 320-byte [`Status`], ask outcomes in
/// audit records).
pub const PROTOCOL_VERSION: u32 = 2;

/// Why bytes are not a valid structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// Shorter than the structure (or than its counts say).
    TooShort {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        actual: usize,
    },
    /// Longer than the structure and its counts say.
    TooLong {
        /// Bytes expected.
        expected: usize,
        /// Bytes present.
        actual: usize,
    },
    /// A flag this version does not know.
    UnknownFlags(u32),
    /// A count above its documented maximum.
    CountTooLarge(u64),
}

impl core::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::TooShort { needed, actual } => {
                write!(f, "buffer of {actual} bytes, {needed} needed")
            }
            Self::TooLong { expected, actual } => {
                write!(f, "buffer of {actual} bytes, {expected} expected")
            }
            Self::UnknownFlags(flags) => write!(f, "unknown flags {flags:#x}"),
            Self::CountTooLarge(count) => write!(f, "count {count} is too large"),
        }
    }
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        bytes.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// `IOCTL_SET_POLICY` input: an 8-byte header, then the blob.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | flags: [`SetPolicyRequest::PERSIST`] |
/// | 4 | 4 | blob length `n` (at most [`MAX_POLICY_BYTES`]) |
/// | 8 | n | the policy blob (`procguard-policy` FORMAT.md) |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetPolicyRequest<'a> {
    /// Flags.
    pub flags: u32,
    /// The blob.
    pub blob: &'a [u8],
}

/// Largest policy blob the driver accepts (the registry value's cap).
pub const MAX_POLICY_BYTES: usize = 1024 * 1024;

impl<'a> SetPolicyRequest<'a> {
    /// Also write the blob to `Parameters\Policy`, so it is in force from boot.
    pub const PERSIST: u32 = 1;
    /// Header size.
    pub const HEADER: usize = 8;

    /// Parses an input buffer: exact length, known flags, bounded blob.
    ///
    /// # Errors
    /// [`ProtocolError`] naming what is wrong.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ProtocolError> {
        let short = ProtocolError::TooShort {
            needed: Self::HEADER,
            actual: bytes.len(),
        };
        let flags = u32_at(bytes, 0).ok_or(short)?;
        let length = u32_at(bytes, 4).ok_or(short)? as usize;
        if flags & !Self::PERSIST != 0 {
            return Err(ProtocolError::UnknownFlags(flags));
        }
        if length > MAX_POLICY_BYTES {
            return Err(ProtocolError::CountTooLarge(length as u64));
        }
        let expected = Self::HEADER + length;
        if bytes.len() < expected {
            return Err(ProtocolError::TooShort {
                needed: expected,
                actual: bytes.len(),
            });
        }
        if bytes.len() > expected {
            return Err(ProtocolError::TooLong {
                expected,
                actual: bytes.len(),
            });
        }
        Ok(Self {
            flags,
            blob: bytes.get(Self::HEADER..).unwrap_or_default(),
        })
    }

    /// Writes the request into `out` (header + blob); returns the length, or
    /// `None` if `out` is too small or the blob too large.
    pub fn write(&self, out: &mut [u8]) -> Option<usize> {
        let length = u32::try_from(self.blob.len())
            .ok()
            .filter(|&n| n as usize <= MAX_POLICY_BYTES)?;
        let total = Self::HEADER + self.blob.len();
        let target = out.get_mut(..total)?;
        target[0..4].copy_from_slice(&self.flags.to_le_bytes());
        target[4..8].copy_from_slice(&length.to_le_bytes());
        target[8..].copy_from_slice(self.blob);
        Some(total)
    }
}

/// `IOCTL_GET_POLICY` output: an 8-byte header, then the active blob.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | blob length `n` |
/// | 4 | 4 | `policy_id` |
/// | 8 | n | the blob (empty when no policy is in force) |
///
/// An output buffer that holds the header but not the blob gets the header
/// alone with `STATUS_BUFFER_OVERFLOW`: the caller learns the size and asks
/// again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyHeader {
    /// Blob length.
    pub blob_len: u32,
    /// Id of the policy.
    pub policy_id: u32,
}

impl PolicyHeader {
    /// Header size.
    pub const SIZE: usize = 8;

    /// Encodes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        out[0..4].copy_from_slice(&self.blob_len.to_le_bytes());
        out[4..8].copy_from_slice(&self.policy_id.to_le_bytes());
        out
    }

    /// Decodes the header of a response.
    ///
    /// # Errors
    /// [`ProtocolError::TooShort`] under 8 bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let short = ProtocolError::TooShort {
            needed: Self::SIZE,
            actual: bytes.len(),
        };
        Ok(Self {
            blob_len: u32_at(bytes, 0).ok_or(short)?,
            policy_id: u32_at(bytes, 4).ok_or(short)?,
        })
    }
}

/// `IOCTL_GET_STATUS` output: 320 bytes.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | `protocol_version` |
/// | 4 | 4 | driver version: major << 16 \| minor << 8 \| patch |
/// | 8 | 4 | flags: 1 callbacks registered, 2 process notify registered, 4 a handler is connected |
/// | 12 | 4 | `policy_id` |
/// | 16 | 4 | `rule_count` |
/// | 20 | 4 | `tracked_processes` |
/// | 24 | 4 | `last_error` (NTSTATUS, 0: none) |
/// | 28 | 4 | `audit_capacity` |
/// | 32 | 8×9 | counters: seen, modified, audited, skipped_kernel, skipped_self, exempt, unclassified, events_dropped, events_pending |
/// | 104 | 2 | altitude length in UTF-16 units (at most 40) |
/// | 106 | 80 | altitude, UTF-16LE, zero-padded |
/// | 186 | 2 | reserved, zero |
/// | 188 | 4 | ask: `handler_pid` (0: none connected) |
/// | 192 | 8×8 | ask counters: asked, answered, timed_out, no_handler, pool_full, unaskable, cancelled, late_replies |
/// | 256 | 4 | ask: `timeout_ms` of the policy in force |
/// | 260 | 4 | ask: `slots` (pool size) |
/// | 264 | 4 | ask: `in_flight` (requests waiting for an answer) |
/// | 268 | 4 | ask: `workers_waiting` (pended get-request IOCTLs) |
/// | 272 | 4 | policy updates: `applied` (policies put in force since load, every source) |
/// | 276 | 4 | policy updates: `rejected` (policies refused since load, every source) |
/// | 280 | 4 | policy updates: `last_rejected_status` (NTSTATUS of the last refusal, 0: none) |
/// | 284 | 1 | policy updates: `source` of the policy in force ([`crate::PolicySource::code`], 0: none yet) |
/// | 285 | 3 | reserved, zero |
/// | 288 | 32 | reserved, zero |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// [`PROTOCOL_VERSION`] of the driver.
    pub protocol_version: u32,
    /// Driver version, `major << 16 | minor << 8 | patch`.
    pub driver_version: u32,
    /// Object callbacks registered.
    pub callbacks_registered: bool,
    /// Process notify routine registered.
    pub notify_registered: bool,
    /// Id (CRC-32) of the policy in force.
    pub policy_id: u32,
    /// Rules in force.
    pub rule_count: u32,
    /// Processes in the process table.
    pub tracked_processes: u32,
    /// Last failure status seen by the driver (0: none).
    pub last_error: i32,
    /// Audit ring size, in records.
    pub audit_capacity: u32,
    /// Counters.
    pub counters: Counters,
    /// Altitude in use, UTF-16 (at most 40 units).
    pub altitude: [u16; 40],
    /// Units of `altitude` in use.
    pub altitude_len: u16,
    /// The ask path: handler connection and counters.
    pub ask: crate::ask::AskStatus,
    /// Policies applied and refused, from every source.
    pub policy_updates: PolicyUpdates,
}

/// Policies applied and refused since the driver loaded ([`Status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyUpdates {
    /// Policies put in force (boot, `IOCTL_SET_POLICY`, registry change).
    pub applied: u32,
    /// Policies refused (invalid blob, wrong type or size in the registry,
    /// out of memory); the policy in force stayed.
    pub rejected: u32,
    /// NTSTATUS of the last refusal (0: none).
    pub last_rejected_status: i32,
    /// Where the policy in force came from; `None` before any.
    pub source: Option<crate::PolicySource>,
}

/// Request totals reported by [`Status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Pre-operation calls seen.
    pub seen: u64,
    /// Requests whose access was reduced.
    pub modified: u64,
    /// Requests audited (stripped or audit-only).
    pub audited: u64,
    /// Kernel handles passed untouched.
    pub skipped_kernel: u64,
    /// Self-opens passed untouched although a rule matched.
    pub skipped_self: u64,
    /// Requests another exemption passed untouched although a rule matched.
    pub exempt: u64,
    /// Lookups that found no current record.
    pub unclassified: u64,
    /// Audit records dropped because the ring was full.
    pub events_dropped: u64,
    /// Audit records waiting to be read.
    pub events_pending: u64,
}

impl Default for Status {
    fn default() -> Self {
        Self {
            protocol_version: PROTOCOL_VERSION,
            driver_version: 0,
            callbacks_registered: false,
            notify_registered: false,
            policy_id: 0,
            rule_count: 0,
            tracked_processes: 0,
            last_error: 0,
            audit_capacity: 0,
            counters: Counters::default(),
            altitude: [0; 40],
            altitude_len: 0,
            ask: crate::ask::AskStatus::default(),
            policy_updates: PolicyUpdates::default(),
        }
    }
}

impl Status {
    /// Encoded size.
    pub const SIZE: usize = 320;

    /// Encodes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        let flags = u32::from(self.callbacks_registered)
            | (u32::from(self.notify_registered) << 1)
            | (u32::from(self.ask.handler_pid != 0) << 2);
        for (at, value) in [
            (0, self.protocol_version),
            (4, self.driver_version),
            (8, flags),
            (12, self.policy_id),
            (16, self.rule_count),
            (20, self.tracked_processes),
            (24, self.last_error.cast_unsigned()),
            (28, self.audit_capacity),
        ] {
            out[at..at + 4].copy_from_slice(&value.to_le_bytes());
        }
        let c = &self.counters;
        let counters = [
            c.seen,
            c.modified,
            c.audited,
            c.skipped_kernel,
            c.skipped_self,
            c.exempt,
            c.unclassified,
            c.events_dropped,
            c.events_pending,
        ];
        for (index, value) in counters.iter().enumerate() {
            let at = 32 + index * 8;
            out[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        let length = self.altitude_len.min(40);
        out[104..106].copy_from_slice(&length.to_le_bytes());
        for (index, unit) in self.altitude.iter().take(usize::from(length)).enumerate() {
            let at = 106 + index * 2;
            out[at..at + 2].copy_from_slice(&unit.to_le_bytes());
        }
        let ask = &self.ask;
        out[188..192].copy_from_slice(&ask.handler_pid.to_le_bytes());
        for (index, value) in ask.counters.to_array().iter().enumerate() {
            let at = 192 + index * 8;
            out[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        for (at, value) in [
            (256, ask.timeout_ms),
            (260, ask.slots),
            (264, ask.in_flight),
            (268, ask.workers_waiting),
            (272, self.policy_updates.applied),
            (276, self.policy_updates.rejected),
            (
                280,
                self.policy_updates.last_rejected_status.cast_unsigned(),
            ),
        ] {
            out[at..at + 4].copy_from_slice(&value.to_le_bytes());
        }
        out[284] = self
            .policy_updates
            .source
            .map_or(0, |source| source.code() as u8);
        out
    }

    /// Decodes.
    ///
    /// # Errors
    /// [`ProtocolError`] when the length is not [`Status::SIZE`] or the
    /// altitude length is out of range.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtocolError> {
        if bytes.len() < Self::SIZE {
            return Err(ProtocolError::TooShort {
                needed: Self::SIZE,
                actual: bytes.len(),
            });
        }
        if bytes.len() > Self::SIZE {
            return Err(ProtocolError::TooLong {
                expected: Self::SIZE,
                actual: bytes.len(),
            });
        }
        let word = |at| u32_at(bytes, at).unwrap_or(0);
        let long = |index: usize| u64_at(bytes, 32 + index * 8).unwrap_or(0);
        let altitude_len = u16::from_le_bytes([bytes[104], bytes[105]]);
        if altitude_len > 40 {
            return Err(ProtocolError::CountTooLarge(u64::from(altitude_len)));
        }
        let mut altitude = [0u16; 40];
        for (index, unit) in altitude.iter_mut().enumerate() {
            *unit = u16::from_le_bytes([bytes[106 + index * 2], bytes[107 + index * 2]]);
        }
        Ok(Self {
            protocol_version: word(0),
            driver_version: word(4),
            callbacks_registered: word(8) & 1 != 0,
            notify_registered: word(8) & 2 != 0,
            policy_id: word(12),
            rule_count: word(16),
            tracked_processes: word(20),
            last_error: word(24).cast_signed(),
            audit_capacity: word(28),
            counters: Counters {
                seen: long(0),
                modified: long(1),
                audited: long(2),
                skipped_kernel: long(3),
                skipped_self: long(4),
                exempt: long(5),
                unclassified: long(6),
                events_dropped: long(7),
                events_pending: long(8),
            },
            altitude,
            altitude_len,
            ask: crate::ask::AskStatus {
                handler_pid: word(188),
                timeout_ms: word(256),
                slots: word(260),
                in_flight: word(264),
                workers_waiting: word(268),
                counters: crate::ask::AskCounters::from_array(core::array::from_fn(|index| {
                    u64_at(bytes, 192 + index * 8).unwrap_or(0)
                })),
            },
            policy_updates: PolicyUpdates {
                applied: word(272),
                rejected: word(276),
                last_rejected_status: word(280).cast_signed(),
                source: crate::PolicySource::from_code(u32::from(bytes[284])),
            },
        })
    }
}

/// `IOCTL_READ_EVENTS` output: a 16-byte header, then whole 64-byte audit
/// records (`audit_record.rs`); the driver never splits a record.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | records in this response `n` |
/// | 4 | 4 | records still waiting in the ring |
/// | 8 | 8 | records dropped since load (ring full) |
/// | 16 | 64·n | records, oldest first |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventsHeader {
    /// Records in this response.
    pub records: u32,
    /// Records still waiting.
    pub remaining: u32,
    /// Records dropped since load.
    pub dropped: u64,
}

impl EventsHeader {
    /// Header size.
    pub const SIZE: usize = 16;

    /// Records that fit in an output buffer of `buffer_len` bytes.
    #[must_use]
    pub const fn capacity(buffer_len: usize) -> usize {
        buffer_len.saturating_sub(Self::SIZE) / crate::AUDIT_RECORD_BYTES
    }

    /// Encodes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        out[0..4].copy_from_slice(&self.records.to_le_bytes());
        out[4..8].copy_from_slice(&self.remaining.to_le_bytes());
        out[8..16].copy_from_slice(&self.dropped.to_le_bytes());
        out
    }

    /// Decodes a whole response: the header and the record bytes after it.
    ///
    /// # Errors
    /// [`ProtocolError`] when the length does not match the record count.
    pub fn parse(bytes: &[u8]) -> Result<(Self, &[u8]), ProtocolError> {
        let short = ProtocolError::TooShort {
            needed: Self::SIZE,
            actual: bytes.len(),
        };
        let header = Self {
            records: u32_at(bytes, 0).ok_or(short)?,
            remaining: u32_at(bytes, 4).ok_or(short)?,
            dropped: u64_at(bytes, 8).ok_or(short)?,
        };
        let expected = (header.records as usize)
            .checked_mul(crate::AUDIT_RECORD_BYTES)
            .and_then(|records| records.checked_add(Self::SIZE))
            .ok_or(ProtocolError::CountTooLarge(u64::from(header.records)))?;
        if bytes.len() < expected {
            return Err(ProtocolError::TooShort {
                needed: expected,
                actual: bytes.len(),
            });
        }
        if bytes.len() > expected {
            return Err(ProtocolError::TooLong {
                expected,
                actual: bytes.len(),
            });
        }
        Ok((header, bytes.get(Self::SIZE..).unwrap_or_default()))
    }
}

/// `IOCTL_GET_RULE_COUNTERS` output: an 8-byte header, then 16 bytes per
/// rule (hits, strips), in rule order.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | rules `n` |
/// | 4 | 4 | `policy_id` the counters belong to |
/// | 8 | 16·n | `hits: u64`, `strips: u64` per rule |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleCountersResponse;

impl RuleCountersResponse {
    /// Header size.
    pub const HEADER: usize = 8;
    /// Bytes per rule.
    pub const PER_RULE: usize = 16;

    /// Bytes needed for `rules` rules.
    #[must_use]
    pub const fn size(rules: usize) -> usize {
        Self::HEADER + rules * Self::PER_RULE
    }

    /// Decodes into (`policy_id`, per-rule (hits, strips)) via `each`.
    ///
    /// # Errors
    /// [`ProtocolError`] when the length does not match the rule count.
    pub fn parse(bytes: &[u8], mut each: impl FnMut(u64, u64)) -> Result<u32, ProtocolError> {
        let short = ProtocolError::TooShort {
            needed: Self::HEADER,
            actual: bytes.len(),
        };
        let rules = u32_at(bytes, 0).ok_or(short)? as usize;
        let policy_id = u32_at(bytes, 4).ok_or(short)?;
        let expected = rules
            .checked_mul(Self::PER_RULE)
            .and_then(|body| body.checked_add(Self::HEADER))
            .ok_or(ProtocolError::CountTooLarge(rules as u64))?;
        if bytes.len() != expected {
            return Err(if bytes.len() < expected {
                ProtocolError::TooShort {
                    needed: expected,
                    actual: bytes.len(),
                }
            } else {
                ProtocolError::TooLong {
                    expected,
                    actual: bytes.len(),
                }
            });
        }
        for rule in 0..rules {
            let at = Self::HEADER + rule * Self::PER_RULE;
            each(
                u64_at(bytes, at).unwrap_or(0),
                u64_at(bytes, at + 8).unwrap_or(0),
            );
        }
        Ok(policy_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mutating_ioctl_needs_write_access_and_all_are_buffered() {
        for (code, name, mutates) in ALL_IOCTLS {
            assert_eq!(code & 3, METHOD_BUFFERED, "{name}");
            assert_eq!(code >> 16, DEVICE_TYPE, "{name}");
            let access = (code >> 14) & 3;
            if mutates {
                assert_ne!(
                    access & FILE_WRITE_ACCESS,
                    0,
                    "{name} changes state: needs FILE_WRITE_ACCESS"
                );
            } else {
                assert_eq!(access, FILE_READ_ACCESS, "{name}");
            }
        }
        let mut codes: [u32; 11] = ALL_IOCTLS.map(|(code, _, _)| code);
        codes.sort_unstable();
        assert!(
            codes.windows(2).all(|pair| pair[0] != pair[1]),
            "codes are distinct"
        );
    }

    #[test]
    fn ctl_code_matches_the_windows_macro() {
        // CTL_CODE(FILE_DEVICE_UNKNOWN, 0x800, METHOD_BUFFERED, FILE_READ_ACCESS) = 0x00226000
        assert_eq!(IOCTL_GET_STATUS, 0x0022_6000);
        assert_eq!(IOCTL_SET_POLICY, 0x0022_A004);
    }

    #[test]
    fn set_policy_requests_round_trip_and_every_malformation_is_caught() {
        let blob = [1u8, 2, 3, 4, 5];
        let mut buffer = [0u8; 64];
        let request = SetPolicyRequest {
            flags: SetPolicyRequest::PERSIST,
            blob: &blob,
        };
        let length = request.write(&mut buffer).unwrap();
        assert_eq!(SetPolicyRequest::parse(&buffer[..length]), Ok(request));
        assert_eq!(
            SetPolicyRequest::parse(&buffer[..7]),
            Err(ProtocolError::TooShort {
                needed: 8,
                actual: 7
            })
        );
        assert_eq!(
            SetPolicyRequest::parse(&buffer[..length - 1]),
            Err(ProtocolError::TooShort {
                needed: 13,
                actual: 12
            })
        );
        assert_eq!(
            SetPolicyRequest::parse(&buffer[..length + 1]),
            Err(ProtocolError::TooLong {
                expected: 13,
                actual: 14
            })
        );
        let mut flags = buffer;
        flags[0] = 0x81;
        assert_eq!(
            SetPolicyRequest::parse(&flags[..length]),
            Err(ProtocolError::UnknownFlags(0x81))
        );
        let mut huge = buffer;
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            SetPolicyRequest::parse(&huge[..length]),
            Err(ProtocolError::CountTooLarge(u64::from(u32::MAX)))
        );
        assert_eq!(request.write(&mut [0u8; 12]), None, "output too small");
    }

    #[test]
    fn status_round_trips_at_its_documented_size() {
        let mut altitude = [0u16; 40];
        for (unit, byte) in altitude.iter_mut().zip(b"385201.1") {
            *unit = u16::from(*byte);
        }
        let status = Status {
            protocol_version: PROTOCOL_VERSION,
            driver_version: 0x0001_0200,
            callbacks_registered: true,
            notify_registered: true,
            policy_id: 0xDEAD_BEEF,
            rule_count: 3,
            tracked_processes: 120,
            last_error: -1_073_741_790,
            audit_capacity: 4096,
            counters: Counters {
                seen: 1,
                modified: 2,
                audited: 3,
                skipped_kernel: 4,
                skipped_self: 5,
                exempt: 6,
                unclassified: 7,
                events_dropped: 8,
                events_pending: 9,
            },
            altitude,
            altitude_len: 8,
            ask: crate::ask::AskStatus {
                handler_pid: 1234,
                timeout_ms: 250,
                slots: 64,
                in_flight: 3,
                workers_waiting: 4,
                counters: crate::ask::AskCounters::from_array([11, 12, 13, 14, 15, 16, 17, 18]),
            },
            policy_updates: PolicyUpdates {
                applied: 5,
                rejected: 2,
                last_rejected_status: -1_073_741_811,
                source: Some(crate::PolicySource::Registry),
            },
        };
        let bytes = status.to_bytes();
        assert_eq!(Status::from_bytes(&bytes), Ok(status));
        assert_eq!(&bytes[272..276], &5u32.to_le_bytes(), "policies applied");
        assert_eq!(&bytes[276..280], &2u32.to_le_bytes(), "policies rejected");
        assert_eq!(&bytes[280..284], &0xC000_000Du32.to_le_bytes());
        assert_eq!(bytes[284], 3, "policy source: registry");
        assert!(bytes[285..].iter().all(|&byte| byte == 0), "reserved");
        assert_eq!(bytes[8], 7, "callbacks, notify, handler connected");
        assert_eq!(&bytes[188..192], &1234u32.to_le_bytes());
        assert_eq!(&bytes[192..200], &11u64.to_le_bytes());
        assert_eq!(&bytes[248..256], &18u64.to_le_bytes());
        assert_eq!(&bytes[268..272], &4u32.to_le_bytes());
        assert_eq!(
            Status::from_bytes(&bytes[..319]),
            Err(ProtocolError::TooShort {
                needed: 320,
                actual: 319
            })
        );
        let mut bad = bytes;
        bad[104] = 41;
        assert_eq!(
            Status::from_bytes(&bad),
            Err(ProtocolError::CountTooLarge(41))
        );
    }

    #[test]
    fn events_responses_hold_whole_records_only() {
        assert_eq!(EventsHeader::capacity(16 + 64 * 3 + 63), 3);
        assert_eq!(EventsHeader::capacity(10), 0);
        let header = EventsHeader {
            records: 2,
            remaining: 5,
            dropped: 9,
        };
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend([0xAB; 128]);
        let (parsed, records) = EventsHeader::parse(&bytes).unwrap();
        assert_eq!((parsed, records.len()), (header, 128));
        assert!(EventsHeader::parse(&bytes[..bytes.len() - 1]).is_err());
        let mut lying = bytes.clone();
        lying[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(EventsHeader::parse(&lying).is_err());
    }

    #[test]
    fn rule_counters_parse_checks_the_count() {
        let mut bytes = [0u8; 8 + 32];
        bytes[0..4].copy_from_slice(&2u32.to_le_bytes());
        bytes[4..8].copy_from_slice(&7u32.to_le_bytes());
        bytes[8..16].copy_from_slice(&11u64.to_le_bytes());
        bytes[32..40].copy_from_slice(&5u64.to_le_bytes());
        let mut seen = [(0u64, 0u64); 2];
        let mut index = 0;
        assert_eq!(
            RuleCountersResponse::parse(&bytes, |hits, strips| {
                seen[index] = (hits, strips);
                index += 1;
            }),
            Ok(7)
        );
        assert_eq!(seen, [(11, 0), (0, 5)]);
        assert!(RuleCountersResponse::parse(&bytes[..39], |_, _| {}).is_err());
    }
}
