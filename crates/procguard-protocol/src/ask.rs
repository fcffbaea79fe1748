//! The ask protocol: how a user-mode handler decides requests that match an
//! `ask` rule (an inverted call over the control device).
//!
//! 1. The handler opens `\\.\ProcGuard` and sends [`IOCTL_ASK_CONNECT`]
//!    ([`ConnectRequest`] in, [`ConnectResponse`] out) on that handle. One
//!    connection at a time: a second one gets [`STATUS_SHARING_VIOLATION`].
//!    The connecting process becomes *the handler process*: its own handle
//!    requests are never asked about (they get the enforce rules only).
//! 2. Its worker threads each send [`IOCTL_ASK_GET_REQUEST`] on the same
//!    handle with an output buffer of at least [`AskRequest::SIZE`] bytes.
//!    The driver pends it until a request is to be decided, then completes it
//!    with one [`AskRequest`]. Cancelling it (`CancelIoEx`, closing the
//!    handle) completes it with `STATUS_CANCELLED`.
//! 3. The worker answers with [`IOCTL_ASK_REPLY`] ([`AskReply`] in, nothing
//!    out): the request's `id` and `generation`, the access to grant and a
//!    `result_code`. The driver ANDs the access into what the enforce rules
//!    left (it never adds a bit). A reply for a request that already timed
//!    out, or for no request at all, gets [`STATUS_NOT_FOUND`] and is counted
//!    as late; a malformed one gets `STATUS_INVALID_PARAMETER`.
//! 4. [`IOCTL_ASK_DISCONNECT`], or closing the handle (file cleanup, also
//!    when the process dies), ends the connection: every request waiting for
//!    an answer is released at once with its fallback.
//!
//! All four need `FILE_WRITE_ACCESS` and must come on the connected handle
//! (else `STATUS_INVALID_DEVICE_STATE`); all are `METHOD_BUFFERED`.
//!
//! [`IOCTL_WAIT_EVENTS`] (read access, no input, 8-byte output) is the
//! events stream's wait: it completes when at least one audit record is
//! waiting (at once if one already is) with the number waiting, so readers
//! never poll.

use crate::ioctl::{
    ctl_code, ProtocolError, DEVICE_TYPE, FILE_READ_ACCESS, FILE_WRITE_ACCESS, METHOD_BUFFERED,
};

/// Become the handler: [`ConnectRequest`] in, [`ConnectResponse`] out.
pub const IOCTL_ASK_CONNECT: u32 = ctl_code(DEVICE_TYPE, 0x806, METHOD_BUFFERED, FILE_WRITE_ACCESS);
/// Pend until a request is to be decided; completes with an [`AskRequest`].
pub const IOCTL_ASK_GET_REQUEST: u32 =
    ctl_code(DEVICE_TYPE, 0x807, METHOD_BUFFERED, FILE_WRITE_ACCESS);
/// Answer a request: [`AskReply`] in.
pub const IOCTL_ASK_REPLY: u32 = ctl_code(DEVICE_TYPE, 0x808, METHOD_BUFFERED, FILE_WRITE_ACCESS);
/// End the connection (closing the handle does the same).
pub const IOCTL_ASK_DISCONNECT: u32 =
    ctl_code(DEVICE_TYPE, 0x809, METHOD_BUFFERED, FILE_WRITE_ACCESS);
/// Wait until audit records are waiting: no input, [`EventsWaiting`] out.
pub const IOCTL_WAIT_EVENTS: u32 = ctl_code(DEVICE_TYPE, 0x80A, METHOD_BUFFERED, FILE_READ_ACCESS);

/// `STATUS_SHARING_VIOLATION`: another handler is connected.
pub const STATUS_SHARING_VIOLATION: i32 = 0xC000_0043_u32 as i32;
/// `STATUS_INVALID_DEVICE_STATE`: an ask IOCTL on a handle that is not the
/// connected handler's.
pub const STATUS_INVALID_DEVICE_STATE: i32 = 0xC000_0184_u32 as i32;
/// `STATUS_NOT_FOUND`: a reply for no waiting request (late or unknown).
pub const STATUS_NOT_FOUND: i32 = 0xC000_0225_u32 as i32;
/// `STATUS_CANCELLED`: a pended IOCTL cancelled (handle closed, `CancelIoEx`,
/// disconnect, unload).
pub const STATUS_CANCELLED: i32 = 0xC000_0120_u32 as i32;

/// Version of the ask protocol a handler speaks ([`ConnectRequest::version`]).
pub const ASK_PROTOCOL_VERSION: u32 = 1;

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    match bytes.get(at..at + 2) {
        Some(b) => u16::from_le_bytes([b[0], b[1]]),
        None => 0,
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    match bytes.get(at..at + 4) {
        Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    match bytes.get(at..at + 8) {
        Some(b) => {
            let mut le = [0u8; 8];
            le.copy_from_slice(b);
            u64::from_le_bytes(le)
        }
        None => 0,
    }
}

fn put(out: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(target) = out.get_mut(at..at + bytes.len()) {
        target.copy_from_slice(bytes);
    }
}

fn exact(bytes: &[u8], size: usize) -> Result<(), ProtocolError> {
    if bytes.len() < size {
        Err(ProtocolError::TooShort {
            needed: size,
            actual: bytes.len(),
        })
    } else if bytes.len() > size {
        Err(ProtocolError::TooLong {
            expected: size,
            actual: bytes.len(),
        })
    } else {
        Ok(())
    }
}

/// `IOCTL_ASK_CONNECT` input: 8 bytes.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | `version`: [`ASK_PROTOCOL_VERSION`] |
/// | 4 | 4 | `flags`: 0 (none defined) |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The ask protocol version the handler speaks.
    pub version: u32,
    /// No flags are defined: must be 0.
    pub flags: u32,
}

impl ConnectRequest {
    /// Encoded size.
    pub const SIZE: usize = 8;

    /// Encodes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        put(&mut out, 0, &self.version.to_le_bytes());
        put(&mut out, 4, &self.flags.to_le_bytes());
        out
    }

    /// Decodes: exact length, known version, no flags.
    ///
    /// # Errors
    /// [`ProtocolError`] naming what is wrong (an unknown version is
    /// reported as [`ProtocolError::UnknownFlags`] of the version).
    pub fn parse(bytes: &[u8]) -> Result<Self, ProtocolError> {
        exact(bytes, Self::SIZE)?;
        let request = Self {
            version: u32_at(bytes, 0),
            flags: u32_at(bytes, 4),
        };
        if request.flags != 0 {
            return Err(ProtocolError::UnknownFlags(request.flags));
        }
        if request.version != ASK_PROTOCOL_VERSION {
            return Err(ProtocolError::UnknownFlags(request.version));
        }
        Ok(request)
    }
}

/// `IOCTL_ASK_CONNECT` output: 16 bytes.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | `version`: the driver's [`ASK_PROTOCOL_VERSION`] |
/// | 4 | 4 | `slots`: requests that can wait for an answer at once |
/// | 8 | 4 | `timeout_ms`: the policy in force's `ask_timeout_ms` |
/// | 12 | 4 | `handler_pid`: the process now exempt as the handler |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectResponse {
    /// The driver's ask protocol version.
    pub version: u32,
    /// Size of the driver's slot pool.
    pub slots: u32,
    /// The ask timeout of the policy in force, in milliseconds.
    pub timeout_ms: u32,
    /// The handler process id the driver recorded.
    pub handler_pid: u32,
}

impl ConnectResponse {
    /// Encoded size.
    pub const SIZE: usize = 16;

    /// Encodes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        for (at, value) in [
            (0, self.version),
            (4, self.slots),
            (8, self.timeout_ms),
            (12, self.handler_pid),
        ] {
            put(&mut out, at, &value.to_le_bytes());
        }
        out
    }

    /// Decodes.
    ///
    /// # Errors
    /// [`ProtocolError`] when the length is not [`Self::SIZE`].
    pub fn parse(bytes: &[u8]) -> Result<Self, ProtocolError> {
        exact(bytes, Self::SIZE)?;
        Ok(Self {
            version: u32_at(bytes, 0),
            slots: u32_at(bytes, 4),
            timeout_ms: u32_at(bytes, 8),
            handler_pid: u32_at(bytes, 12),
        })
    }
}

/// UTF-16 units of an image name in an [`AskRequest`].
pub const IMAGE_NAME_UNITS: usize = 64;

/// An image file name (the last component of the image path, as the
/// policy's `names` match it), at most [`IMAGE_NAME_UNITS`] UTF-16 units;
/// longer names are cut there and flagged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageName {
    /// The units; those past `len` are zero.
    pub units: [u16; IMAGE_NAME_UNITS],
    /// Units in use.
    pub len: u16,
    /// The name was longer and was cut.
    pub truncated: bool,
}

impl Default for ImageName {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl ImageName {
    /// No name (the process was not classified yet, or has no image).
    pub const EMPTY: Self = Self {
        units: [0; IMAGE_NAME_UNITS],
        len: 0,
        truncated: false,
    };

    /// A name from UTF-16 units (cut at [`IMAGE_NAME_UNITS`]).
    #[must_use]
    pub fn from_units(units: &[u16]) -> Self {
        let mut name = Self::EMPTY;
        let keep = units.len().min(IMAGE_NAME_UNITS);
        name.units[..keep].copy_from_slice(&units[..keep]);
        name.len = keep as u16;
        name.truncated = units.len() > IMAGE_NAME_UNITS;
        name
    }

    /// The units in use.
    #[must_use]
    pub fn as_units(&self) -> &[u16] {
        &self.units[..usize::from(self.len).min(IMAGE_NAME_UNITS)]
    }
}

/// Object kind of an [`AskRequest`] (1 process, 2 thread on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AskObject {
    /// A process handle.
    Process,
    /// A thread handle (`process_id` is the owning process, `thread_id` the thread).
    Thread,
}

/// `IOCTL_ASK_GET_REQUEST` output: one request to decide, 368 bytes.
///
/// Field names and meanings are those of CBFS Filter's
/// `CBProcess.on_process_handle_operation` event where they exist.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | `id`: the slot; echo it in the reply |
/// | 4 | 4 | `generation`: echo it in the reply |
/// | 8 | 8 | `timestamp`: system time, 100 ns since 1601-01-01 UTC |
/// | 16 | 4 | `object`: 1 process, 2 thread |
/// | 20 | 4 | flags: bit 0 `duplication`, bit 1 requester image name cut, bit 2 target image name cut; others 0 |
/// | 24 | 4 | `rule_id`: the ask rule (its index in the policy) |
/// | 28 | 4 | `process_id`: the process the handle is for (a thread's owner) |
/// | 32 | 4 | `thread_id`: the thread, for thread handles; 0 otherwise |
/// | 36 | 4 | `originator_process_id`: the process making the request |
/// | 40 | 4 | `originator_thread_id`: the thread making the request |
/// | 44 | 4 | `source_process_id`: duplication: the process the handle is duplicated from; 0 otherwise |
/// | 48 | 4 | `target_process_id`: duplication: the process that receives the handle; 0 otherwise |
/// | 52 | 4 | `original_desired_access`: the access as requested |
/// | 56 | 4 | `desired_access`: the access after the enforce rules (what the handler may reduce) |
/// | 60 | 4 | `ask_rights`: the bits of `desired_access` the ask rules are about |
/// | 64 | 4 | `fallback_access`: what the request gets if no answer comes in time |
/// | 68 | 4 | `timeout_ms`: how long the driver waits for the answer |
/// | 72 | 4 | `requester_pid`: the process that gets the handle (create: the originator; duplication: `target_process_id`) |
/// | 76 | 4 | reserved, 0 |
/// | 80 | 8 | `requester_create_time`: creation key of the requester (100 ns system time) |
/// | 88 | 8 | `target_create_time`: creation key of `process_id` |
/// | 96 | 2 | requester image name length, UTF-16 units (at most 64) |
/// | 98 | 2 | target image name length, UTF-16 units (at most 64) |
/// | 100 | 4 | reserved, 0 |
/// | 104 | 128 | requester image name, UTF-16LE, zero-padded |
/// | 232 | 128 | target image name, UTF-16LE, zero-padded |
/// | 360 | 8 | reserved, 0 |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AskRequest {
    /// Slot of the request.
    pub id: u32,
    /// Generation of the slot (a reply must match both).
    pub generation: u32,
    /// When the request was made.
    pub timestamp: i64,
    /// Process or thread handle.
    pub object: AskObject,
    /// `DuplicateHandle` (true) or a new handle.
    pub duplication: bool,
    /// The ask rule.
    pub rule_id: u32,
    /// The process the handle is for.
    pub process_id: u32,
    /// The thread, for thread handles.
    pub thread_id: u32,
    /// The requesting process.
    pub originator_process_id: u32,
    /// The requesting thread.
    pub originator_thread_id: u32,
    /// Duplication: the source process.
    pub source_process_id: u32,
    /// Duplication: the receiving process.
    pub target_process_id: u32,
    /// The access requested.
    pub original_desired_access: u32,
    /// The access after the enforce rules.
    pub desired_access: u32,
    /// The bits the ask rules are about.
    pub ask_rights: u32,
    /// The access on timeout (or any other failure to get an answer).
    pub fallback_access: u32,
    /// The wait, in milliseconds.
    pub timeout_ms: u32,
    /// The process that gets the handle.
    pub requester_pid: u32,
    /// Creation key of the requester.
    pub requester_create_time: i64,
    /// Creation key of the target.
    pub target_create_time: i64,
    /// Image file name of the requester.
    pub requester_image: ImageName,
    /// Image file name of the target.
    pub target_image: ImageName,
}

impl AskRequest {
    /// Encoded size.
    pub const SIZE: usize = 368;

    /// Encodes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        let object = match self.object {
            AskObject::Process => 1u32,
            AskObject::Thread => 2,
        };
        let flags = u32::from(self.duplication)
            | (u32::from(self.requester_image.truncated) << 1)
            | (u32::from(self.target_image.truncated) << 2);
        put(&mut out, 0, &self.id.to_le_bytes());
        put(&mut out, 4, &self.generation.to_le_bytes());
        put(&mut out, 8, &self.timestamp.to_le_bytes());
        for (at, value) in [
            (16, object),
            (20, flags),
            (24, self.rule_id),
            (28, self.process_id),
            (32, self.thread_id),
            (36, self.originator_process_id),
            (40, self.originator_thread_id),
            (44, self.source_process_id),
            (48, self.target_process_id),
            (52, self.original_desired_access),
            (56, self.desired_access),
            (60, self.ask_rights),
            (64, self.fallback_access),
            (68, self.timeout_ms),
            (72, self.requester_pid),
        ] {
            put(&mut out, at, &value.to_le_bytes());
        }
        put(&mut out, 80, &self.requester_create_time.to_le_bytes());
        put(&mut out, 88, &self.target_create_time.to_le_bytes());
        for (length_at, text_at, name) in [
            (96, 104, &self.requester_image),
            (98, 232, &self.target_image),
        ] {
            let units = name.as_units();
            put(&mut out, length_at, &(units.len() as u16).to_le_bytes());
            for (index, unit) in units.iter().enumerate() {
                put(&mut out, text_at + index * 2, &unit.to_le_bytes());
            }
        }
        out
    }

    /// Decodes (user mode): exact length, known object code and flags, name
    /// lengths in range, reserved bytes zero.
    ///
    /// # Errors
    /// [`ProtocolError`] naming what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Self, ProtocolError> {
        exact(bytes, Self::SIZE)?;
        let object = match u32_at(bytes, 16) {
            1 => AskObject::Process,
            2 => AskObject::Thread,
            other => return Err(ProtocolError::UnknownFlags(other)),
        };
        let flags = u32_at(bytes, 20);
        if flags & !7 != 0 {
            return Err(ProtocolError::UnknownFlags(flags));
        }
        let reserved = u32_at(bytes, 76) | u32_at(bytes, 100) | (u64_at(bytes, 360) != 0) as u32;
        if reserved != 0 {
            return Err(ProtocolError::UnknownFlags(reserved));
        }
        let name = |length_at: usize, text_at: usize, truncated: bool| {
            let len = u16_at(bytes, length_at);
            if usize::from(len) > IMAGE_NAME_UNITS {
                return Err(ProtocolError::CountTooLarge(u64::from(len)));
            }
            let mut units = [0u16; IMAGE_NAME_UNITS];
            for (index, unit) in units.iter_mut().take(usize::from(len)).enumerate() {
                *unit = u16_at(bytes, text_at + index * 2);
            }
            Ok(ImageName {
                units,
                len,
                truncated,
            })
        };
        Ok(Self {
            id: u32_at(bytes, 0),
            generation: u32_at(bytes, 4),
            timestamp: u64_at(bytes, 8).cast_signed(),
            object,
            duplication: flags & 1 != 0,
            rule_id: u32_at(bytes, 24),
            process_id: u32_at(bytes, 28),
            thread_id: u32_at(bytes, 32),
            originator_process_id: u32_at(bytes, 36),
            originator_thread_id: u32_at(bytes, 40),
            source_process_id: u32_at(bytes, 44),
            target_process_id: u32_at(bytes, 48),
            original_desired_access: u32_at(bytes, 52),
            desired_access: u32_at(bytes, 56),
            ask_rights: u32_at(bytes, 60),
            fallback_access: u32_at(bytes, 64),
            timeout_ms: u32_at(bytes, 68),
            requester_pid: u32_at(bytes, 72),
            requester_create_time: u64_at(bytes, 80).cast_signed(),
            target_create_time: u64_at(bytes, 88).cast_signed(),
            requester_image: name(96, 104, flags & 2 != 0)?,
            target_image: name(98, 232, flags & 4 != 0)?,
        })
    }
}

/// `IOCTL_ASK_REPLY` input: 16 bytes.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | `id` (from the request) |
/// | 4 | 4 | `generation` (from the request) |
/// | 8 | 4 | `desired_access`: the access to grant; ANDed into the request's `desired_access` (bits are never added) |
/// | 12 | 4 | `result_code`: the handler's own status, reported in the audit record (0: none) |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AskReply {
    /// Slot of the request.
    pub id: u32,
    /// Generation of the request.
    pub generation: u32,
    /// The access to grant.
    pub desired_access: u32,
    /// The handler's result code.
    pub result_code: i32,
}

impl AskReply {
    /// Encoded size.
    pub const SIZE: usize = 16;

    /// Encodes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        put(&mut out, 0, &self.id.to_le_bytes());
        put(&mut out, 4, &self.generation.to_le_bytes());
        put(&mut out, 8, &self.desired_access.to_le_bytes());
        put(&mut out, 12, &self.result_code.to_le_bytes());
        out
    }

    /// Decodes: exactly [`Self::SIZE`] bytes (every value of each field is
    /// meaningful; the driver checks `id` and `generation`).
    ///
    /// # Errors
    /// [`ProtocolError`] when the length is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Self, ProtocolError> {
        exact(bytes, Self::SIZE)?;
        Ok(Self {
            id: u32_at(bytes, 0),
            generation: u32_at(bytes, 4),
            desired_access: u32_at(bytes, 8),
            result_code: u32_at(bytes, 12).cast_signed(),
        })
    }
}

/// `IOCTL_WAIT_EVENTS` output: 8 bytes, the audit records waiting (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventsWaiting {
    /// Records waiting in the ring.
    pub pending: u64,
}

impl EventsWaiting {
    /// Encoded size.
    pub const SIZE: usize = 8;

    /// Encodes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        self.pending.to_le_bytes()
    }

    /// Decodes.
    ///
    /// # Errors
    /// [`ProtocolError`] when the length is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Self, ProtocolError> {
        exact(bytes, Self::SIZE)?;
        Ok(Self {
            pending: u64_at(bytes, 0),
        })
    }
}

/// What happened to an asked request (audit records, word 7 bits 32–39).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AskOutcome {
    /// The handler answered in time: its access was ANDed in.
    Answered,
    /// No answer within the timeout: the fallback applied.
    TimedOut,
    /// No handler connected: the fallback applied at once.
    NoHandler,
    /// Every slot was taken: the fallback applied at once.
    PoolFull,
    /// The request could not be asked (APC_LEVEL or above, APCs disabled,
    /// a kernel handle or a critical system process as requester when their
    /// exemption is off): the fallback applied at once.
    Unaskable,
    /// The handler disconnected (or the driver unloaded) while the request
    /// waited: the fallback applied.
    Cancelled,
}

impl AskOutcome {
    /// Every outcome, in wire-code order.
    pub const ALL: [Self; 6] = [
        Self::Answered,
        Self::TimedOut,
        Self::NoHandler,
        Self::PoolFull,
        Self::Unaskable,
        Self::Cancelled,
    ];

    /// Wire code (1..=6; 0 means "not an asked request").
    #[must_use]
    pub const fn code(self) -> u8 {
        match self {
            Self::Answered => 1,
            Self::TimedOut => 2,
            Self::NoHandler => 3,
            Self::PoolFull => 4,
            Self::Unaskable => 5,
            Self::Cancelled => 6,
        }
    }

    /// From a wire code; `None` for 0 and unknown codes.
    #[must_use]
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Answered),
            2 => Some(Self::TimedOut),
            3 => Some(Self::NoHandler),
            4 => Some(Self::PoolFull),
            5 => Some(Self::Unaskable),
            6 => Some(Self::Cancelled),
            _ => None,
        }
    }

    /// Name used by `procguardctl events` and the Python package.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::TimedOut => "timed-out",
            Self::NoHandler => "no-handler",
            Self::PoolFull => "pool-full",
            Self::Unaskable => "unaskable",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The ask part of [`crate::ioctl::Status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AskStatus {
    /// Process id of the connected handler (0: none connected).
    pub handler_pid: u32,
    /// The ask timeout of the policy in force, milliseconds.
    pub timeout_ms: u32,
    /// Size of the slot pool.
    pub slots: u32,
    /// Requests waiting for an answer now.
    pub in_flight: u32,
    /// `IOCTL_ASK_GET_REQUEST`s pended now (idle handler workers).
    pub workers_waiting: u32,
    /// Counters since load (reset with the others).
    pub counters: AskCounters,
}

/// Ask totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AskCounters {
    /// Requests that matched an ask rule (every outcome below).
    pub asked: u64,
    /// Answered in time.
    pub answered: u64,
    /// Timed out.
    pub timed_out: u64,
    /// No handler connected.
    pub no_handler: u64,
    /// Slot pool full.
    pub pool_full: u64,
    /// Could not be asked.
    pub unaskable: u64,
    /// Released by disconnect or unload.
    pub cancelled: u64,
    /// Replies that matched no waiting request.
    pub late_replies: u64,
}

impl AskCounters {
    /// The counters in wire order.
    #[must_use]
    pub const fn to_array(&self) -> [u64; 8] {
        [
            self.asked,
            self.answered,
            self.timed_out,
            self.no_handler,
            self.pool_full,
            self.unaskable,
            self.cancelled,
            self.late_replies,
        ]
    }

    /// From the wire order.
    #[must_use]
    pub const fn from_array(values: [u64; 8]) -> Self {
        let [asked, answered, timed_out, no_handler, pool_full, unaskable, cancelled, late_replies] =
            values;
        Self {
            asked,
            answered,
            timed_out,
            no_handler,
            pool_full,
            unaskable,
            cancelled,
            late_replies,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AskRequest {
        AskRequest {
            id: 3,
            generation: 0x0102_0304,
            timestamp: 133_000_000_000_000_000,
            object: AskObject::Thread,
            duplication: true,
            rule_id: 2,
            process_id: 1000,
            thread_id: 1004,
            originator_process_id: 2000,
            originator_thread_id: 2004,
            source_process_id: 3000,
            target_process_id: 4000,
            original_desired_access: 0x1F_FFFF,
            desired_access: 0x1F_FFFE,
            ask_rights: 0x0001,
            fallback_access: 0x1F_FFFE,
            timeout_ms: 250,
            requester_pid: 4000,
            requester_create_time: 7,
            target_create_time: 9,
            requester_image: ImageName::from_units(&"tool.exe".encode_utf16_array()),
            target_image: ImageName::from_units(&[b'a' as u16; 70]),
        }
    }

    trait Utf16Array {
        fn encode_utf16_array(&self) -> [u16; 8];
    }

    impl Utf16Array for str {
        fn encode_utf16_array(&self) -> [u16; 8] {
            let mut out = [0u16; 8];
            for (slot, unit) in out.iter_mut().zip(self.encode_utf16()) {
                *slot = unit;
            }
            out
        }
    }

    #[test]
    fn ioctl_codes_match_the_ctl_code_macro() {
        // CTL_CODE(FILE_DEVICE_UNKNOWN, 0x806, METHOD_BUFFERED, FILE_WRITE_ACCESS)
        assert_eq!(IOCTL_ASK_CONNECT, 0x0022_A018);
        assert_eq!(IOCTL_ASK_GET_REQUEST, 0x0022_A01C);
        assert_eq!(IOCTL_ASK_REPLY, 0x0022_A020);
        assert_eq!(IOCTL_ASK_DISCONNECT, 0x0022_A024);
        // FILE_READ_ACCESS.
        assert_eq!(IOCTL_WAIT_EVENTS, 0x0022_6028);
    }

    #[test]
    fn requests_round_trip_and_names_are_cut_and_flagged() {
        let request = sample();
        let bytes = request.to_bytes();
        assert_eq!(AskRequest::parse(&bytes), Ok(request));
        assert_eq!(request.target_image.len, 64);
        assert!(request.target_image.truncated);
        assert_eq!(bytes[20], 1 | 4, "duplication and target name cut");
        assert_eq!(&bytes[96..98], &8u16.to_le_bytes());
        assert_eq!(&bytes[104..106], &(b't' as u16).to_le_bytes());
    }

    #[test]
    fn malformed_requests_are_refused() {
        let bytes = sample().to_bytes();
        assert!(AskRequest::parse(&bytes[..AskRequest::SIZE - 1]).is_err());
        let mut object = bytes;
        object[16] = 3;
        assert_eq!(
            AskRequest::parse(&object),
            Err(ProtocolError::UnknownFlags(3))
        );
        let mut length = bytes;
        length[96] = 65;
        assert_eq!(
            AskRequest::parse(&length),
            Err(ProtocolError::CountTooLarge(65))
        );
        let mut reserved = bytes;
        reserved[365] = 1;
        assert!(AskRequest::parse(&reserved).is_err());
    }

    #[test]
    fn replies_and_connects_need_their_exact_size() {
        let reply = AskReply {
            id: 1,
            generation: 2,
            desired_access: 0x1000,
            result_code: -5,
        };
        assert_eq!(AskReply::parse(&reply.to_bytes()), Ok(reply));
        assert!(AskReply::parse(&reply.to_bytes()[..15]).is_err());
        assert!(AskReply::parse(&[0u8; 17]).is_err());
        let connect = ConnectRequest {
            version: ASK_PROTOCOL_VERSION,
            flags: 0,
        };
        assert_eq!(ConnectRequest::parse(&connect.to_bytes()), Ok(connect));
        let mut flagged = connect;
        flagged.flags = 1;
        assert!(ConnectRequest::parse(&flagged.to_bytes()).is_err());
        let mut future = connect;
        future.version = 2;
        assert!(ConnectRequest::parse(&future.to_bytes()).is_err());
    }

    #[test]
    fn outcome_codes_round_trip_and_zero_is_none() {
        for outcome in AskOutcome::ALL {
            assert_eq!(AskOutcome::from_code(outcome.code()), Some(outcome));
        }
        assert_eq!(AskOutcome::from_code(0), None);
        assert_eq!(AskOutcome::from_code(7), None);
    }
}
