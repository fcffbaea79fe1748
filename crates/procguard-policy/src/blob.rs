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
    Mode, Objects, Operations, Policy, PolicyError, Requester, Rule, Selector, Settings,
};

/// `b"PGPB"`.
pub const MAGIC: [u8; 4] = *b"PGPB";
/// The only format version this crate reads and writes.
pub const VERSION: u16 = 1;
/// Size of the fixed header.
pub const HEADER_SIZE: usize = 40;
/// Largest blob accepted (16 MiB): keeps every offset far from `u32` overflow.
pub const MAX_BLOB_SIZE: usize = 16 << 20;

const SETTING_SELF: u32 = 1;
const SETTING_KERNEL: u32 = 2;
const SETTING_CRITICAL: u32 = 4;
const SETTINGS_ALL: u32 = SETTING_SELF | SETTING_KERNEL | SETTING_CRITICAL;
/// Smallest encoded rule: 16 fixed bytes + a 12-byte target selector header.
const MIN_RULE_SIZE: usize = 28;

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
    /// Well-formed, but the policy it holds is invalid.
    InvalidPolicy(PolicyError),
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

static CRC_TABLE: [u32; 256] = crc_table();

/// CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`) of the blob with the checksum
/// field (bytes 12..16) taken as zero.
#[must_use]
pub fn blob_checksum(blob: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for (i, b) in blob.iter().enumerate() {
        let b = if (12..16).contains(&i) { 0 } else { *b };
        let idx = usize::from((c as u8) ^ b);
        c = CRC_TABLE.get(idx).copied().unwrap_or(0) ^ (c >> 8);
    }
    !c
}

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
    put_u32(&mut out, 0);
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
        out.push(match r.mode {
            Mode::Enforce => 0,
            Mode::Audit => 1,
        });
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

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(DecodeError::Truncated { offset: self.pos })?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(DecodeError::Truncated { offset: self.pos })?;
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        let s = self.take(1)?;
        s.first()
            .copied()
            .ok_or(DecodeError::Truncated { offset: self.pos })
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let s = self.take(2)?;
        match s {
            [a, b] => Ok(u16::from_le_bytes([*a, *b])),
            _ => Err(DecodeError::Truncated { offset: self.pos }),
        }
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let s = self.take(4)?;
        match s {
            [a, b, c, d] => Ok(u32::from_le_bytes([*a, *b, *c, *d])),
            _ => Err(DecodeError::Truncated { offset: self.pos }),
        }
    }
}

fn string_ref(r: &mut Reader<'_>, strings: &[Arc<str>]) -> Result<Arc<str>, DecodeError> {
    let offset = r.pos;
    let index = r.u32()?;
    strings
        .get(index as usize)
        .cloned()
        .ok_or(DecodeError::BadStringIndex { offset, index })
}

fn read_selector(r: &mut Reader<'_>, strings: &[Arc<str>]) -> Result<Selector, DecodeError> {
    let n = r.u32()?;
    let p = r.u32()?;
    let q = r.u32()?;
    let total = u64::from(n) + u64::from(p) + u64::from(q);
    if total.saturating_mul(4) > r.remaining() as u64 {
        return Err(DecodeError::CountTooLarge {
            what: "selector entry",
            count: n.saturating_add(p).saturating_add(q),
        });
    }
    let mut s = Selector {
        names: Vec::with_capacity(n as usize),
        paths: Vec::with_capacity(p as usize),
        pids: Vec::with_capacity(q as usize),
    };
    for _ in 0..n {
        s.names.push(string_ref(r, strings)?);
    }
    for _ in 0..p {
        s.paths.push(string_ref(r, strings)?);
    }
    for _ in 0..q {
        s.pids.push(r.u32()?);
    }
    Ok(s)
}

/// Decodes a blob.
///
/// # Errors
/// A [`DecodeError`] naming the first malformation found.
pub fn decode(blob: &[u8]) -> Result<Policy, DecodeError> {
    if blob.len() < HEADER_SIZE {
        return Err(DecodeError::TooShort { len: blob.len() });
    }
    if blob.len() > MAX_BLOB_SIZE {
        return Err(DecodeError::TooLarge { len: blob.len() });
    }
    let mut r = Reader { buf: blob, pos: 0 };
    if r.take(4)? != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = r.u16()?;
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion { version });
    }
    let size = r.u16()?;
    if usize::from(size) != HEADER_SIZE {
        return Err(DecodeError::BadHeaderSize { size });
    }
    let declared = r.u32()?;
    if declared as usize != blob.len() {
        return Err(DecodeError::LengthMismatch {
            declared,
            actual: blob.len(),
        });
    }
    let stored = r.u32()?;
    let computed = blob_checksum(blob);
    if stored != computed {
        return Err(DecodeError::ChecksumMismatch { stored, computed });
    }
    let flags = r.u32()?;
    if flags & !SETTINGS_ALL != 0 {
        return Err(DecodeError::ReservedBits {
            field: "settings",
            offset: 16,
        });
    }
    let settings = Settings {
        exempt_self: flags & SETTING_SELF != 0,
        exempt_kernel_handles: flags & SETTING_KERNEL != 0,
        exempt_critical_requesters: flags & SETTING_CRITICAL != 0,
    };
    let string_count = r.u32()?;
    let rule_count = r.u32()?;
    let data_len = r.u32()?;
    for offset in [32, 36] {
        if r.u32()? != 0 {
            return Err(DecodeError::ReservedBits {
                field: "reserved header word",
                offset,
            });
        }
    }
    // Directory: 8 bytes per string, then the data.
    let dir_bytes = (string_count as usize)
        .checked_mul(8)
        .filter(|b| *b <= r.remaining())
        .ok_or(DecodeError::CountTooLarge {
            what: "string",
            count: string_count,
        })?;
    let dir = r.take(dir_bytes)?;
    let data = r
        .take(data_len as usize)
        .map_err(|_| DecodeError::CountTooLarge {
            what: "string byte",
            count: data_len,
        })?;
    let mut strings: Vec<Arc<str>> = Vec::with_capacity(string_count as usize);
    let mut expected_offset = 0usize;
    for (i, e) in dir.chunks_exact(8).enumerate() {
        let index = u32::try_from(i).unwrap_or(u32::MAX);
        let (off, len) = match e {
            [a, b, c, d, w, x, y, z] => (
                u32::from_le_bytes([*a, *b, *c, *d]) as usize,
                u32::from_le_bytes([*w, *x, *y, *z]) as usize,
            ),
            _ => return Err(DecodeError::StringOutOfBounds { index }),
        };
        let bytes = off
            .checked_add(len)
            .and_then(|end| data.get(off..end))
            .ok_or(DecodeError::StringOutOfBounds { index })?;
        if off != expected_offset {
            return Err(DecodeError::NonCanonical);
        }
        expected_offset = off + len;
        let s = core::str::from_utf8(bytes).map_err(|_| DecodeError::StringNotUtf8 { index })?;
        strings.push(Arc::from(s));
    }
    if expected_offset != data.len() {
        return Err(DecodeError::NonCanonical);
    }
    let pad = (4 - data.len() % 4) % 4;
    if r.take(pad)?.iter().any(|b| *b != 0) {
        return Err(DecodeError::BadPadding);
    }
    let rule_count_usize = rule_count as usize;
    if rule_count_usize
        .checked_mul(MIN_RULE_SIZE)
        .is_none_or(|b| b > r.remaining())
    {
        return Err(DecodeError::CountTooLarge {
            what: "rule",
            count: rule_count,
        });
    }
    let mut rules = Vec::with_capacity(rule_count_usize);
    for _ in 0..rule_count {
        let name = string_ref(&mut r, &strings)?;
        let at = r.pos;
        let objects = r.u8()?;
        let operations = r.u8()?;
        let mode = r.u8()?;
        let kind = r.u8()?;
        if objects & !3 != 0 {
            return Err(DecodeError::ReservedBits {
                field: "objects",
                offset: at,
            });
        }
        if operations & !3 != 0 {
            return Err(DecodeError::ReservedBits {
                field: "operations",
                offset: at + 1,
            });
        }
        let mode = match mode {
            0 => Mode::Enforce,
            1 => Mode::Audit,
            value => {
                return Err(DecodeError::BadEnum {
                    field: "mode",
                    offset: at + 2,
                    value,
                })
            }
        };
        if kind > 2 {
            return Err(DecodeError::BadEnum {
                field: "requester kind",
                offset: at + 3,
                value: kind,
            });
        }
        let strip_process = r.u32()?;
        let strip_thread = r.u32()?;
        let target = read_selector(&mut r, &strings)?;
        let requester = match kind {
            0 => Requester::Any,
            1 => Requester::Only(read_selector(&mut r, &strings)?),
            _ => Requester::AnyExcept(read_selector(&mut r, &strings)?),
        };
        rules.push(Rule {
            name,
            target,
            requester,
            objects: Objects {
                process: objects & 1 != 0,
                thread: objects & 2 != 0,
            },
            operations: Operations {
                create: operations & 1 != 0,
                duplicate: operations & 2 != 0,
            },
            strip_process,
            strip_thread,
            mode,
        });
    }
    if r.remaining() != 0 {
        return Err(DecodeError::TrailingBytes {
            extra: r.remaining(),
        });
    }
    let policy = Policy { settings, rules };
    policy.validate().map_err(DecodeError::InvalidPolicy)?;
    // Strings must be distinct, each used, in first-use order: the encoder's layout.
    if encode(&policy) != blob {
        return Err(DecodeError::NonCanonical);
    }
    Ok(policy)
}
