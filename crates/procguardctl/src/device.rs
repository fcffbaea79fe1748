//! The control device as the tool sees it: one call, [`Device::ioctl`], and
//! the errors it can give, in words a person can act on. The typed requests
//! built on it (status, policy, events, counters) check every response
//! against the protocol before anything is shown.

use std::fmt;

use procguard_protocol::ask::{
    EventsWaiting, IOCTL_WAIT_EVENTS, STATUS_CANCELLED, STATUS_INVALID_DEVICE_STATE,
    STATUS_NOT_FOUND, STATUS_SHARING_VIOLATION,
};
use procguard_protocol::dispatch::{
    STATUS_BUFFER_OVERFLOW, STATUS_BUFFER_TOO_SMALL, STATUS_INVALID_DEVICE_REQUEST,
    STATUS_INVALID_PARAMETER,
};
use procguard_protocol::ioctl::{
    EventsHeader, PolicyHeader, ProtocolError, RuleCountersResponse, SetPolicyRequest, Status,
    ALL_IOCTLS, IOCTL_GET_POLICY, IOCTL_GET_RULE_COUNTERS, IOCTL_GET_STATUS, IOCTL_READ_EVENTS,
    IOCTL_RESET_COUNTERS, IOCTL_SET_POLICY, MAX_POLICY_BYTES, USER_MODE_PATH,
};
use procguard_protocol::{AuditRecord, AUDIT_RECORD_BYTES};

/// The control device (`\\.\ProcGuard`), or anything that answers like it.
pub trait Device {
    /// Sends one IOCTL; returns the bytes the driver wrote into `output`.
    ///
    /// # Errors
    /// [`DeviceError`]: the driver failed the request, or it never got there.
    fn ioctl(&mut self, code: u32, input: &[u8], output: &mut [u8]) -> Result<usize, DeviceError>;

    /// From now on Ctrl-C (Ctrl-Break, closing the console) cancels this
    /// device's requests in flight (a blocked [`wait_events`] fails with
    /// `STATUS_CANCELLED`) and sets [`Device::interrupted`], instead of
    /// ending the process. Devices without a console do nothing.
    fn cancel_on_ctrl_c(&mut self) {}

    /// Whether Ctrl-C was pressed since [`Device::cancel_on_ctrl_c`].
    fn interrupted(&self) -> bool {
        false
    }
}

/// Why talking to the driver failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceError {
    /// Not on Windows: there is no driver to talk to.
    Unsupported,
    /// `\\.\ProcGuard` does not exist and neither does the procguard service.
    NotInstalled,
    /// The service exists but the device does not: the driver is not running.
    NotRunning {
        /// The service state, in words ("stopped", "start pending", ...).
        state: String,
    },
    /// `ERROR_ACCESS_DENIED`: the device admits only SYSTEM and Administrators.
    AccessDenied,
    /// The output buffer is too small for the response
    /// (`STATUS_BUFFER_TOO_SMALL`, `ERROR_INSUFFICIENT_BUFFER`).
    BufferTooSmall,
    /// Partial data: the response did not fit, `returned` bytes were written
    /// (`STATUS_BUFFER_OVERFLOW`, `ERROR_MORE_DATA`).
    MoreData {
        /// Bytes written.
        returned: usize,
    },
    /// The driver completed the request with this NTSTATUS failure.
    Driver(i32),
    /// Any other Win32 error, with the system's message.
    Win32 {
        /// `GetLastError()`.
        code: u32,
        /// `FormatMessageW` text.
        message: String,
    },
}

/// The name of an NTSTATUS the driver completes requests with.
#[must_use]
pub fn ntstatus_name(status: i32) -> Option<&'static str> {
    const STATUS_NO_MEMORY: i32 = 0xC000_0017_u32.cast_signed();
    const STATUS_INSUFFICIENT_RESOURCES: i32 = 0xC000_009A_u32.cast_signed();
    const STATUS_ACCESS_DENIED: i32 = 0xC000_0022_u32.cast_signed();
    const STATUS_NOT_SUPPORTED: i32 = 0xC000_00BB_u32.cast_signed();
    const STATUS_INVALID_IMAGE_FORMAT: i32 = 0xC000_007B_u32.cast_signed();
    const STATUS_DATA_ERROR: i32 = 0xC000_003E_u32.cast_signed();
    const STATUS_FLT_INSTANCE_ALTITUDE_COLLISION: i32 = 0xC01C_0011_u32.cast_signed();
    Some(match status {
        STATUS_INVALID_PARAMETER => "STATUS_INVALID_PARAMETER",
        STATUS_INVALID_DEVICE_REQUEST => "STATUS_INVALID_DEVICE_REQUEST",
        STATUS_BUFFER_TOO_SMALL => "STATUS_BUFFER_TOO_SMALL",
        STATUS_BUFFER_OVERFLOW => "STATUS_BUFFER_OVERFLOW",
        STATUS_NO_MEMORY => "STATUS_NO_MEMORY",
        STATUS_INSUFFICIENT_RESOURCES => "STATUS_INSUFFICIENT_RESOURCES",
        STATUS_ACCESS_DENIED => "STATUS_ACCESS_DENIED",
        STATUS_NOT_SUPPORTED => "STATUS_NOT_SUPPORTED",
        STATUS_INVALID_IMAGE_FORMAT => "STATUS_INVALID_IMAGE_FORMAT",
        STATUS_DATA_ERROR => "STATUS_DATA_ERROR",
        STATUS_FLT_INSTANCE_ALTITUDE_COLLISION => "STATUS_FLT_INSTANCE_ALTITUDE_COLLISION",
        STATUS_CANCELLED => "STATUS_CANCELLED",
        STATUS_NOT_FOUND => "STATUS_NOT_FOUND",
        STATUS_SHARING_VIOLATION => "STATUS_SHARING_VIOLATION",
        STATUS_INVALID_DEVICE_STATE => "STATUS_INVALID_DEVICE_STATE",
        _ => return None,
    })
}

/// An NTSTATUS as `NAME (0x...)`, or the number alone.
#[must_use]
pub fn describe_ntstatus(status: i32) -> String {
    let code = status.cast_unsigned();
    ntstatus_name(status).map_or_else(
        || format!("NTSTATUS {code:#010x}"),
        |name| format!("{name} ({code:#010x})"),
    )
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsupported => f.write_str(
                "this command talks to the driver: Windows only (check, compile and explain work anywhere)",
            ),
            Self::NotInstalled => write!(
                f,
                "procguard is not installed: {USER_MODE_PATH} does not exist and there is no procguard \
                 service (install procguard.inf, then run `sc start procguard`)"
            ),
            Self::NotRunning { state } => write!(
                f,
                "the procguard driver is not running (service state: {state}): start it with \
                 `sc start procguard`"
            ),
            Self::AccessDenied => write!(
                f,
                "access to {USER_MODE_PATH} denied: run procguardctl as Administrator (the device \
                 admits only SYSTEM and Administrators)"
            ),
            Self::BufferTooSmall => f.write_str("the response does not fit the buffer"),
            Self::MoreData { returned } => {
                write!(f, "the response did not fit the buffer ({returned} bytes returned)")
            }
            Self::Driver(status) => {
                write!(f, "the driver failed the request: {}", describe_ntstatus(*status))
            }
            Self::Win32 { code, message } => write!(f, "Windows error {code}: {message}"),
        }
    }
}

impl std::error::Error for DeviceError {}

/// A failed request: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// The device failed it.
    Device {
        /// The request ("get status", ...).
        request: &'static str,
        /// Why.
        error: DeviceError,
    },
    /// The request was not sent: it could not be valid.
    NotSent {
        /// The request.
        request: &'static str,
        /// Why.
        problem: String,
    },
    /// The driver answered something that breaks the protocol.
    BadResponse {
        /// The request.
        request: &'static str,
        /// What is wrong with the answer.
        problem: String,
    },
}

impl RequestError {
    /// The underlying device error, if that is what it is.
    #[must_use]
    pub const fn device_error(&self) -> Option<&DeviceError> {
        match self {
            Self::Device { error, .. } => Some(error),
            Self::NotSent { .. } | Self::BadResponse { .. } => None,
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // These say everything; the request name adds nothing.
            Self::Device {
                error:
                    error @ (DeviceError::Unsupported
                    | DeviceError::NotInstalled
                    | DeviceError::NotRunning { .. }
                    | DeviceError::AccessDenied),
                ..
            } => write!(f, "{error}"),
            Self::Device { request, error } => write!(f, "{request}: {error}"),
            Self::NotSent { request, problem } => write!(f, "{request}: not sent: {problem}"),
            Self::BadResponse { request, problem } => {
                write!(
                    f,
                    "{request}: the driver's response is malformed: {problem}"
                )
            }
        }
    }
}

impl std::error::Error for RequestError {}

fn request_name(code: u32) -> &'static str {
    ALL_IOCTLS
        .iter()
        .find(|(c, _, _)| *c == code)
        .map_or("ioctl", |(_, name, _)| *name)
}

fn call(
    device: &mut dyn Device,
    code: u32,
    input: &[u8],
    output: &mut [u8],
) -> Result<usize, RequestError> {
    let returned = device
        .ioctl(code, input, output)
        .map_err(|error| RequestError::Device {
            request: request_name(code),
            error,
        })?;
    if returned > output.len() {
        return Err(bad(
            code,
            format!(
                "{returned} bytes returned into a buffer of {}",
                output.len()
            ),
        ));
    }
    Ok(returned)
}

fn bad(code: u32, problem: impl Into<String>) -> RequestError {
    RequestError::BadResponse {
        request: request_name(code),
        problem: problem.into(),
    }
}

fn protocol(code: u32, error: ProtocolError) -> RequestError {
    bad(code, error.to_string())
}

/// `IOCTL_GET_STATUS`.
///
/// # Errors
/// [`RequestError`].
pub fn get_status(device: &mut dyn Device) -> Result<Status, RequestError> {
    let mut out = [0u8; Status::SIZE];
    let returned = call(device, IOCTL_GET_STATUS, &[], &mut out)?;
    Status::from_bytes(&out[..returned]).map_err(|e| protocol(IOCTL_GET_STATUS, e))
}

/// `IOCTL_SET_POLICY` with `blob`, persisted to the registry if asked.
///
/// # Errors
/// [`RequestError`]; a blob over [`MAX_POLICY_BYTES`] is refused before
/// anything is sent.
pub fn set_policy(device: &mut dyn Device, blob: &[u8], persist: bool) -> Result<(), RequestError> {
    let request = SetPolicyRequest {
        flags: if persist {
            SetPolicyRequest::PERSIST
        } else {
            0
        },
        blob,
    };
    let mut input = vec![0u8; SetPolicyRequest::HEADER + blob.len()];
    if request.write(&mut input).is_none() {
        return Err(RequestError::NotSent {
            request: request_name(IOCTL_SET_POLICY),
            problem: format!(
                "the blob is {} bytes; the driver accepts at most {MAX_POLICY_BYTES}",
                blob.len()
            ),
        });
    }
    let returned = call(device, IOCTL_SET_POLICY, &input, &mut [])?;
    if returned != 0 {
        return Err(bad(
            IOCTL_SET_POLICY,
            format!("{returned} bytes returned, none expected"),
        ));
    }
    Ok(())
}

/// `IOCTL_GET_POLICY`: the active blob and its id (the blob is empty when no
/// policy is in force). Asks again with a larger buffer when the first one
/// was too small, as the protocol says.
///
/// # Errors
/// [`RequestError`].
pub fn get_policy(device: &mut dyn Device) -> Result<(u32, Vec<u8>), RequestError> {
    let mut size = PolicyHeader::SIZE + 64 * 1024;
    // The policy may change between two calls; three tries are plenty.
    for _ in 0..3 {
        let mut out = vec![0u8; size];
        match device.ioctl(IOCTL_GET_POLICY, &[], &mut out) {
            Ok(returned) => {
                let body = out.get(..returned).ok_or_else(|| {
                    bad(
                        IOCTL_GET_POLICY,
                        format!("{returned} bytes returned into a buffer of {size}"),
                    )
                })?;
                let header =
                    PolicyHeader::parse(body).map_err(|e| protocol(IOCTL_GET_POLICY, e))?;
                let blob = &body[PolicyHeader::SIZE..];
                if blob.len() != header.blob_len as usize {
                    return Err(bad(
                        IOCTL_GET_POLICY,
                        format!(
                            "the header announces a {}-byte blob, {} bytes follow",
                            header.blob_len,
                            blob.len()
                        ),
                    ));
                }
                return Ok((header.policy_id, blob.to_vec()));
            }
            Err(DeviceError::MoreData { returned }) => {
                let header = PolicyHeader::parse(out.get(..returned).unwrap_or_default())
                    .map_err(|e| protocol(IOCTL_GET_POLICY, e))?;
                let needed = PolicyHeader::SIZE + header.blob_len as usize;
                if header.blob_len as usize > MAX_POLICY_BYTES || needed <= size {
                    return Err(bad(
                        IOCTL_GET_POLICY,
                        format!(
                            "a buffer of {size} bytes was too small for a {}-byte blob",
                            header.blob_len
                        ),
                    ));
                }
                size = needed;
            }
            Err(error) => {
                return Err(RequestError::Device {
                    request: request_name(IOCTL_GET_POLICY),
                    error,
                })
            }
        }
    }
    Err(bad(
        IOCTL_GET_POLICY,
        "the policy kept changing while it was read",
    ))
}

/// One `IOCTL_READ_EVENTS` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventBatch {
    /// Records, oldest first.
    pub records: Vec<AuditRecord>,
    /// Records still waiting in the driver.
    pub remaining: u32,
    /// Records the driver dropped so far (ring full).
    pub dropped: u64,
}

/// `IOCTL_READ_EVENTS`: drains at most `capacity` records.
///
/// # Errors
/// [`RequestError`], also when the answer's record count does not match its
/// length or a record does not decode.
pub fn read_events(device: &mut dyn Device, capacity: usize) -> Result<EventBatch, RequestError> {
    let mut out = vec![0u8; EventsHeader::SIZE + capacity.max(1) * AUDIT_RECORD_BYTES];
    let returned = call(device, IOCTL_READ_EVENTS, &[], &mut out)?;
    let (header, body) =
        EventsHeader::parse(&out[..returned]).map_err(|e| protocol(IOCTL_READ_EVENTS, e))?;
    let records = body
        .chunks_exact(AUDIT_RECORD_BYTES)
        .map(AuditRecord::from_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(IOCTL_READ_EVENTS, e.to_string()))?;
    Ok(EventBatch {
        records,
        remaining: header.remaining,
        dropped: header.dropped,
    })
}

/// `IOCTL_WAIT_EVENTS`: blocks until the driver holds at least one audit
/// record (returns at once when one is already waiting); returns how many
/// are waiting. A driver older than protocol 2 fails it with
/// `STATUS_INVALID_DEVICE_REQUEST`; a cancelled wait (Ctrl-C through
/// [`Device::cancel_on_ctrl_c`], the driver stopping) fails with
/// `STATUS_CANCELLED`.
///
/// # Errors
/// [`RequestError`], also when the answer is not one [`EventsWaiting`] or
/// says nothing is waiting (a driver answering that at once would make the
/// reader spin).
pub fn wait_events(device: &mut dyn Device) -> Result<u64, RequestError> {
    let mut out = [0u8; EventsWaiting::SIZE];
    let returned = call(device, IOCTL_WAIT_EVENTS, &[], &mut out)?;
    let waiting =
        EventsWaiting::parse(&out[..returned]).map_err(|e| protocol(IOCTL_WAIT_EVENTS, e))?;
    if waiting.pending == 0 {
        return Err(bad(
            IOCTL_WAIT_EVENTS,
            "the wait ended with no record waiting",
        ));
    }
    Ok(waiting.pending)
}

/// `IOCTL_RESET_COUNTERS`.
///
/// # Errors
/// [`RequestError`].
pub fn reset_counters(device: &mut dyn Device) -> Result<(), RequestError> {
    call(device, IOCTL_RESET_COUNTERS, &[], &mut []).map(drop)
}

/// `IOCTL_GET_RULE_COUNTERS`: the policy id they belong to and (hits,
/// strips) per rule. `rules` sizes the first buffer (from the status); a
/// larger one is tried if the policy grew meanwhile.
///
/// # Errors
/// [`RequestError`].
pub fn get_rule_counters(
    device: &mut dyn Device,
    rules: usize,
) -> Result<(u32, Vec<(u64, u64)>), RequestError> {
    let sizes = [rules, rules.max(1) * 4, procguard_policy::model::MAX_RULES];
    let mut last = None;
    for rules in sizes {
        let mut out = vec![0u8; RuleCountersResponse::size(rules)];
        match call(device, IOCTL_GET_RULE_COUNTERS, &[], &mut out) {
            Ok(returned) => {
                let mut counters = Vec::new();
                let id = RuleCountersResponse::parse(&out[..returned], |hits, strips| {
                    counters.push((hits, strips));
                })
                .map_err(|e| protocol(IOCTL_GET_RULE_COUNTERS, e))?;
                return Ok((id, counters));
            }
            Err(RequestError::Device {
                error: DeviceError::BufferTooSmall,
                ..
            }) => {
                last = Some(DeviceError::BufferTooSmall);
            }
            Err(other) => return Err(other),
        }
    }
    Err(RequestError::Device {
        request: request_name(IOCTL_GET_RULE_COUNTERS),
        error: last.unwrap_or(DeviceError::BufferTooSmall),
    })
}
