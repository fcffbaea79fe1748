//! The compiled blob: the only policy format the kernel parses.
//!
//! The byte layout is specified in `FORMAT.md` (included in the crate docs under
//! [`crate::format`]). Decoding checks every offset and count before use, never
//! panics, allocates at most a small multiple of the blob length, accepts only
//! the canonical encoding (so `encode(decode(b)?) == b`), and validates the policy.

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use crate::model::{
    Mode, OnTimeout, Policy, PolicyError, PolicyFault, Requester, Rule, Selector,
    DEFAULT_ASK_TIMEOUT_MS,
};
use crate::view::{BlobView, SelView};

/// `b"PGPB"`.
pub const MAGIC: [u8; 4] = *b"PGPB";
/// The only format version this crate reads and writes (2: ask rules and the ask
/// timeout; version 1 blobs are refused with [`DecodeError::UnsupportedVersion`]).
pub const VERSION: u16 = 2;
/// Offset of the header's `ask_timeout_ms` word (reserved in version 1).
pub const ASK_TIMEOUT_OFFSET: usize = 32;
/// Size of the fixed header.
pub const HEADER_SIZE: usize = 40;
/// Largest blob accepted (16 MiB): keeps every offset far from `u32` overflow.
pub const MAX_BLOB_SIZE: usize = 16 << 20;

pub(crate) const SETTING_SELF: u32 = 1;
pub(crate) const SETTING_KERNEL: u32 = 2;
pub(crate) const SETTING_CRITICAL: u32 = 4;
pub(crate) const SETTINGS_ALL: u32 = SETTING_SELF | SETTING_KERNEL | SETTING_CRITICAL;
/// Rule mode bytes.
pub(crate) const MODE_ENFORCE: u8 = 0;
pub(crate) const MODE_AUDIT: u8 = 1;
pub(crate) const MODE_ASK_STRIP: u8 = 2;
pub(crate) const MODE_ASK_ALLOW: u8 = 3;

/// The mode byte of a rule.
pub(crate) const fn mode_byte(mode: Mode) -> u8 {
    match mode {
        Mode::Enforce => MODE_ENFORCE,
        Mode::Audit => MODE_AUDIT,
        Mode::Ask {
            on_timeout: OnTimeout::Strip,
        } => MODE_ASK_STRIP,
        Mode::Ask {
            on_timeout: OnTimeout::Allow,
        } => MODE_ASK_ALLOW,
    }
}

/// The mode of a mode byte, `None` for an undefined value.
pub(crate) const fn mode_of_byte(b: u8) -> Option<Mode> {
    match b {
        MODE_ENFORCE => Some(Mode::Enforce),
        MODE_AUDIT => Some(Mode::Audit),
        MODE_ASK_STRIP => Some(Mode::Ask {
            on_timeout: OnTimeout::Strip,
        }),
        MODE_ASK_ALLOW => Some(Mode::Ask {
            on_timeout: OnTimeout::Allow,
        }),
        _ => None,
    }
}

/// Smallest encoded rule: 16 fixed bytes + a 12-byte target selector header.
pub(crate) const MIN_RULE_SIZE: usize = 28;

/// Why a blob was rejected. One variant per kind of malformation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than the header.
    TooShort {
        /// Buffer length.
        len: usize,
    },
    /// Larger than [`MAX_BLOB_SIZE`].
    TooLarge {
        /// Buffer length.
        len: usize,
    },
    /// The first four bytes are not `PGPB`.
    BadMagic,
    /// A version this decoder does not know.
    UnsupportedVersion {
        /// Version found.
        version: u16,
    },
    /// The header size field is not 40.
    BadHeaderSize {
        /// Value found.
        size: u16,
    },
    /// The total length field differs from the buffer length.
    LengthMismatch {
        /// Length the header declares.
        declared: u32,
        /// Buffer length.
        actual: usize,
    },
    /// The CRC-32 does not match.
    ChecksumMismatch {
        /// Stored value.
        stored: u32,
        /// Computed value.
        computed: u32,
    },
    /// Undefined bits or reserved fields are not zero.
    ReservedBits {
        /// Which field.
        field: &'static str,
        /// Offset of the field.
        offset: usize,
    },
    /// A count cannot fit in the bytes that remain.
    CountTooLarge {
        /// What is counted.
        what: &'static str,
        /// The count.
        count: u32,
    },
    /// A field runs past the end of the blob.
    Truncated {
        /// Offset of the field.
        offset: usize,
    },
    /// A string directory entry points outside the string data.
    StringOutOfBounds {
        /// String index.
        index: u32,
    },
    /// A string is not valid UTF-8.
    StringNotUtf8 {
        /// String index.
        index: u32,
    },
    /// A string reference is not a valid string index.
    BadStringIndex {
        /// Offset of the reference.
        offset: usize,
        /// The index found.
        index: u32,
    },
    /// An enumeration byte has an undefined value.
    BadEnum {
        /// Which field.
        field: &'static str,
        /// Offset of the field.
        offset: usize,
        /// Value found.
        value: u8,
    },
    /// Padding bytes after the string data are not zero.
    BadPadding,
    /// Bytes remain after the last rule.
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// Well-formed but not the canonical encoding (strings out of order, duplicated,
    /// unused or overlapping).
    NonCanonical,
    /// Well-formed, but the policy it holds is invalid ([`decode`]).
    InvalidPolicy(PolicyError),
    /// Well-formed, but the policy it holds is invalid: what
    /// [`CompiledPolicy::from_blob`](crate::CompiledPolicy::from_blob) reports instead
    /// of [`InvalidPolicy`](Self::InvalidPolicy), the same error without its strings
    /// (building them would allocate). See [`DecodeError::without_strings`].
    Invalid(PolicyFault),
    /// An allocation failed (the blob may be fine: retry when memory is available).
    /// Never a panic: every allocation of decoding and compiling is fallible.
    OutOfMemory,
}

impl DecodeError {
    /// The error as the kernel side reports it: [`InvalidPolicy`](Self::InvalidPolicy)
    /// becomes [`Invalid`](Self::Invalid), everything else is unchanged. For any blob,
    /// `CompiledPolicy::from_blob(b)` fails with `decode(b)`'s error in this form.
    #[must_use]
    pub fn without_strings(&self) -> Self {
        match self {
            Self::InvalidPolicy(e) => Self::Invalid(e.fault()),
            other => other.clone(),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { len } => write!(
                f,
                "blob of {len} bytes is shorter than the {HEADER_SIZE}-byte header"
            ),
            Self::TooLarge { len } => write!(
                f,
                "blob of {len} bytes exceeds the {MAX_BLOB_SIZE}-byte limit"
            ),
            Self::BadMagic => f.write_str("bad magic (expected \"PGPB\")"),
            Self::UnsupportedVersion { version } => {
                write!(f, "unsupported format version {version}")
            }
            Self::BadHeaderSize { size } => write!(f, "header size {size}, expected {HEADER_SIZE}"),
            Self::LengthMismatch { declared, actual } => {
                write!(f, "header declares {declared} bytes, buffer has {actual}")
            }
            Self::ChecksumMismatch { stored, computed } => {
                write!(
                    f,
                    "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
                )
            }
            Self::ReservedBits { field, offset } => {
                write!(f, "reserved bits set in {field} at offset {offset}")
            }
            Self::CountTooLarge { what, count } => {
                write!(f, "{what} count {count} cannot fit in the blob")
            }
            Self::Truncated { offset } => write!(f, "truncated at offset {offset}"),
            Self::StringOutOfBounds { index } => {
                write!(f, "string {index} lies outside the string data")
            }
            Self::StringNotUtf8 { index } => write!(f, "string {index} is not valid UTF-8"),
            Self::BadStringIndex { offset, index } => {
                write!(
                    f,
                    "string reference {index} at offset {offset} is out of range"
                )
            }
            Self::BadEnum {
                field,
                offset,
                value,
            } => write!(f, "invalid {field} value {value} at offset {offset}"),
            Self::BadPadding => f.write_str("non-zero padding after the string data"),
            Self::TrailingBytes { extra } => write!(f, "{extra} bytes after the last rule"),
            Self::NonCanonical => f.write_str("not the canonical encoding of its policy"),
            Self::InvalidPolicy(e) => write!(f, "invalid policy: {e}"),
            Self::Invalid(e) => write!(f, "invalid policy: {e}"),
            Self::OutOfMemory => f.write_str("out of memory while decoding the policy"),
        }
    }
}

const fn crc_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

const CRC_TABLE: [u32; 256] = crc_table();

/// CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`) of the blob with the checksum
/// field (bytes 12..16) taken as zero.
#[must_use]
pub const fn blob_checksum(blob: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    let mut i = 0;
    while i < blob.len() {
        let b = if i >= 12 && i < 16 { 0 } else { blob[i] };
        c = CRC_TABLE[((c as u8) ^ b) as usize] ^ (c >> 8);
        i += 1;
    }
    !c
}

/// The blob of the empty policy (no rules, default settings).
const EMPTY_BLOB: [u8; HEADER_SIZE] = {
    let mut b = [0u8; HEADER_SIZE];
    let mut i = 0;
    while i < 4 {
        b[i] = MAGIC[i];
        i += 1;
    }
    b[4] = VERSION as u8;
    b[6] = HEADER_SIZE as u8;
    b[8] = HEADER_SIZE as u8;
    b[16] = SETTINGS_ALL as u8;
    let ms = DEFAULT_ASK_TIMEOUT_MS.to_le_bytes();
    let mut k = 0;
    while k < 4 {
        b[ASK_TIMEOUT_OFFSET + k] = ms[k];
        k += 1;
    }
    b
};

/// Policy id of the empty policy (what [`crate::CompiledPolicy::empty`] reports).
pub(crate) const EMPTY_POLICY_ID: u32 = blob_checksum(&EMPTY_BLOB);
/// The policy id stored in a blob's header (its checksum), without validating it;
/// `None` if the buffer is shorter than the header.
#[must_use]
pub fn policy_id(blob: &[u8]) -> Option<u32> {
    let b = blob.get(12..16)?;
    Some(u32::from_le_bytes([
        *b.first()?,
        *b.get(1)?,
        *b.get(2)?,
        *b.get(3)?,
    ]))
}

/// The policy id `encode(policy)` would carry.
#[must_use]
pub fn policy_id_of(policy: &Policy) -> u32 {
    policy_id(&encode(policy)).unwrap_or(0)
}

struct Strings<'a> {
    index: BTreeMap<&'a str, u32>,
    list: Vec<&'a str>,
}

impl<'a> Strings<'a> {
    fn intern(&mut self, s: &'a str) -> u32 {
        if let Some(i) = self.index.get(s) {
            return *i;
        }
        let i = u32::try_from(self.list.len()).unwrap_or(u32::MAX);
        self.index.insert(s, i);
        self.list.push(s);
        i
    }
}

fn selector_strings<'a>(s: &'a Selector, st: &mut Strings<'a>) {
    for n in &s.names {
        st.intern(n);
    }
    for p in &s.paths {
        st.intern(p);
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn put_selector(out: &mut Vec<u8>, s: &Selector, st: &Strings<'_>) {
    put_u32(out, len_u32(s.names.len()));
    put_u32(out, len_u32(s.paths.len()));
    put_u32(out, len_u32(s.pids.len()));
    for n in s.names.iter().chain(s.paths.iter()) {
        put_u32(out, st.index.get(&**n).copied().unwrap_or(u32::MAX));
    }
    for p in &s.pids {
        put_u32(out, *p);
    }
}

/// Encodes a policy into its canonical blob. The policy should be valid
/// ([`Policy::validate`]); an invalid one encodes but will not decode.
#[must_use]
pub fn encode(policy: &Policy) -> Vec<u8> {
    let mut st = Strings {
        index: BTreeMap::new(),
        list: Vec::new(),
    };
    for r in &policy.rules {
        st.intern(&r.name);
        selector_strings(&r.target, &mut st);
        if let Requester::Only(s) | Requester::AnyExcept(s) = &r.requester {
            selector_strings(s, &mut st);
        }
    }
    let data_len: usize = st.list.iter().map(|s| s.len()).sum();
    let mut out = Vec::with_capacity(
        HEADER_SIZE + 8 * st.list.len() + data_len + 3 + 64 * policy.rules.len(),
    );
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&u16::try_from(HEADER_SIZE).unwrap_or(0).to_le_bytes());
    put_u32(&mut out, 0); // total length, patched below
    put_u32(&mut out, 0); // checksum, patched below
    let s = policy.settings;
    put_u32(
        &mut out,
        (u32::from(s.exempt_self) * SETTING_SELF)
            | (u32::from(s.exempt_kernel_handles) * SETTING_KERNEL)
            | (u32::from(s.exempt_critical_requesters) * SETTING_CRITICAL),
    );
    put_u32(&mut out, len_u32(st.list.len()));
    put_u32(&mut out, len_u32(policy.rules.len()));
    put_u32(&mut out, len_u32(data_len));
    put_u32(&mut out, s.ask_timeout_ms);
    put_u32(&mut out, 0);
    let mut offset = 0usize;
    for s in &st.list {
        put_u32(&mut out, len_u32(offset));
        put_u32(&mut out, len_u32(s.len()));
        offset += s.len();
    }
    for s in &st.list {
        out.extend_from_slice(s.as_bytes());
    }
    while out.len() % 4 != 0 {
        out.push(0);
    }
    for r in &policy.rules {
        put_u32(
            &mut out,
            st.index.get(&*r.name).copied().unwrap_or(u32::MAX),
        );
        out.push(u8::from(r.objects.process) | u8::from(r.objects.thread) << 1);
        out.push(u8::from(r.operations.create) | u8::from(r.operations.duplicate) << 1);
        out.push(mode_byte(r.mode));
        out.push(match r.requester {
            Requester::Any => 0,
            Requester::Only(_) => 1,
            Requester::AnyExcept(_) => 2,
        });
        put_u32(&mut out, r.strip_process);
        put_u32(&mut out, r.strip_thread);
        put_selector(&mut out, &r.target, &st);
        if let Requester::Only(s) | Requester::AnyExcept(s) = &r.requester {
            put_selector(&mut out, s, &st);
        }
    }
    let total = len_u32(out.len()).to_le_bytes();
    if let Some(dst) = out.get_mut(8..12) {
        dst.copy_from_slice(&total);
    }
    let crc = blob_checksum(&out).to_le_bytes();
    if let Some(dst) = out.get_mut(12..16) {
        dst.copy_from_slice(&crc);
    }
    out
}

fn selector_of(s: &SelView<'_>, strings: &[Arc<str>]) -> Selector {
    let get = |i: u32| {
        strings
            .get(i as usize)
            .cloned()
            .unwrap_or_else(|| Arc::from(""))
    };
    Selector {
        names: s.name_indexes().map(get).collect(),
        paths: s.path_indexes().map(get).collect(),
        pids: crate::view::u32s(s.pids).collect(),
    }
}

/// Decodes a blob (control-tool side: the policy it builds allocates infallibly).
///
/// # Errors
/// A [`DecodeError`] naming the first malformation found.
pub fn decode(blob: &[u8]) -> Result<Policy, DecodeError> {
    let view = BlobView::parse(blob)?;
    let strings: Vec<Arc<str>> = view.strings.iter().map(|s| Arc::from(*s)).collect();
    let mut rules = Vec::with_capacity(view.rule_count as usize);
    for r in view.rules() {
        let r = r?;
        rules.push(Rule {
            name: strings
                .get(r.name as usize)
                .cloned()
                .unwrap_or_else(|| Arc::from("")),
            target: selector_of(&r.target, &strings),
            requester: match r.kind {
                0 => Requester::Any,
                1 => Requester::Only(selector_of(&r.requester, &strings)),
                _ => Requester::AnyExcept(selector_of(&r.requester, &strings)),
            },
            objects: r.objects,
            operations: r.operations,
            strip_process: r.strip_process,
            strip_thread: r.strip_thread,
            mode: r.mode,
        });
    }
    let policy = Policy {
        settings: view.settings,
        rules,
    };
    policy.validate().map_err(DecodeError::InvalidPolicy)?;
    // Strings must be distinct, each used, in first-use order: the encoder's layout.
    view.check_canonical()?;
    Ok(policy)
}
