//! A checked, borrowed view of a blob: what both [`crate::decode`] and the kernel's
//! [`CompiledPolicy::from_blob`](crate::CompiledPolicy::from_blob) parse.
//!
//! Nothing here allocates infallibly: the only allocations are `Vec`s grown with
//! `try_reserve*` (a failure is [`DecodeError::OutOfMemory`]). Strings stay borrowed
//! from the blob.

use alloc::vec::Vec;
use core::cmp::Ordering;

use crate::blob::{
    blob_checksum, mode_of_byte, DecodeError, HEADER_SIZE, MAGIC, MAX_BLOB_SIZE, MIN_RULE_SIZE,
    SETTINGS_ALL, SETTING_CRITICAL, SETTING_KERNEL, SETTING_SELF, VERSION,
};
use crate::model::{
    ask_timeout_ok, check_rule, Mode, Objects, Operations, PolicyFault, RuleLike, SelectorLike,
    Settings, MAX_REQUESTER_ENTRIES, MAX_RULES,
};
use crate::rights::AccessMask;

/// `Vec::push` after a fallible reservation: never panics on allocation
/// failure, and keeps no regrow path in the image (see `fallible`).
pub(crate) fn try_push<T>(v: &mut Vec<T>, x: T) -> Result<(), DecodeError> {
    crate::fallible::try_push(v, x).map_err(|_| DecodeError::OutOfMemory)
}

pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
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

fn le32(b: &[u8]) -> u32 {
    match b {
        [a, b, c, d] => u32::from_le_bytes([*a, *b, *c, *d]),
        _ => 0,
    }
}

/// Little-endian `u32`s of a slice whose length is a multiple of 4.
pub(crate) fn u32s(b: &[u8]) -> impl Iterator<Item = u32> + Clone + '_ {
    b.chunks_exact(4).map(le32)
}

/// A selector inside the blob: string indexes (checked) and PIDs.
#[derive(Clone, Copy)]
pub(crate) struct SelView<'a> {
    pub(crate) names: &'a [u8],
    pub(crate) paths: &'a [u8],
    pub(crate) pids: &'a [u8],
    strings: &'a [&'a str],
}

impl<'a> SelView<'a> {
    pub(crate) fn name_indexes(&self) -> impl Iterator<Item = u32> + Clone + 'a {
        u32s(self.names)
    }
    pub(crate) fn path_indexes(&self) -> impl Iterator<Item = u32> + Clone + 'a {
        u32s(self.paths)
    }
    fn string(&self, i: u32) -> &'a str {
        self.strings.get(i as usize).copied().unwrap_or("")
    }
    /// Same content as another selector (what [`crate::Selector`]'s `==` compares).
    pub(crate) fn same_as(&self, o: &SelView<'_>) -> bool {
        self.names.len() == o.names.len()
            && self.paths.len() == o.paths.len()
            && self.pids == o.pids
            && self
                .name_indexes()
                .zip(o.name_indexes())
                .all(|(a, b)| self.string(a) == o.string(b))
            && self
                .path_indexes()
                .zip(o.path_indexes())
                .all(|(a, b)| self.string(a) == o.string(b))
    }
}

impl<'a> SelectorLike for SelView<'a> {
    type Str = &'a str;
    fn names(&self) -> impl Iterator<Item = &'a str> {
        let s = *self;
        self.name_indexes().map(move |i| s.string(i))
    }
    fn paths(&self) -> impl Iterator<Item = &'a str> {
        let s = *self;
        self.path_indexes().map(move |i| s.string(i))
    }
    fn pids(&self) -> impl Iterator<Item = u32> {
        u32s(self.pids)
    }
    fn is_empty(&self) -> bool {
        self.names.is_empty() && self.paths.is_empty() && self.pids.is_empty()
    }
}

/// A rule inside the blob.
#[derive(Clone, Copy)]
pub(crate) struct RuleView<'a> {
    pub(crate) name: u32,
    pub(crate) objects: Objects,
    pub(crate) operations: Operations,
    pub(crate) mode: Mode,
    /// 0 any, 1 only, 2 any except.
    pub(crate) kind: u8,
    pub(crate) strip_process: AccessMask,
    pub(crate) strip_thread: AccessMask,
    pub(crate) target: SelView<'a>,
    /// Meaningful only when `kind != 0`.
    pub(crate) requester: SelView<'a>,
}

impl RuleView<'_> {
    /// Whether the rule becomes a requester-dependent entry (as
    /// [`crate::model::is_requester_entry`]).
    pub(crate) const fn is_requester_entry(&self) -> bool {
        self.kind != 0 || self.mode.is_ask()
    }

    /// Same (target, requester) key as another rule (requester-dependent entries).
    pub(crate) fn same_entry_as(&self, o: &RuleView<'_>) -> bool {
        self.kind == o.kind
            && self.target.same_as(&o.target)
            && self.requester.same_as(&o.requester)
    }

    pub(crate) fn strip_for_slot(&self, slot: usize) -> AccessMask {
        let (process, create) = match slot {
            0 => (true, true),
            1 => (true, false),
            2 => (false, true),
            _ => (false, false),
        };
        let op_ok = if create {
            self.operations.create
        } else {
            self.operations.duplicate
        };
        if !op_ok {
            0
        } else if process {
            if self.objects.process {
                self.strip_process
            } else {
                0
            }
        } else if self.objects.thread {
            self.strip_thread
        } else {
            0
        }
    }
}

impl<'a> RuleLike for RuleView<'a> {
    type Sel = SelView<'a>;
    fn name_is_empty(&self) -> bool {
        self.target.string(self.name).is_empty()
    }
    fn target(&self) -> SelView<'a> {
        self.target
    }
    fn requester(&self) -> Option<(SelView<'a>, bool)> {
        match self.kind {
            0 => None,
            k => Some((self.requester, k == 2)),
        }
    }
    fn objects(&self) -> Objects {
        self.objects
    }
    fn operations(&self) -> Operations {
        self.operations
    }
    fn strip_process(&self) -> AccessMask {
        self.strip_process
    }
    fn strip_thread(&self) -> AccessMask {
        self.strip_thread
    }
}

/// A structurally checked blob.
pub(crate) struct BlobView<'a> {
    pub(crate) settings: Settings,
    /// Every string, by index (UTF-8 checked).
    pub(crate) strings: Vec<&'a str>,
    pub(crate) rule_count: u32,
    blob: &'a [u8],
    /// Offset of the first rule.
    rules_at: usize,
}

fn read_selector<'a>(
    r: &mut Reader<'a>,
    strings: &'a [&'a str],
) -> Result<SelView<'a>, DecodeError> {
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
    let count = strings.len();
    let mut refs = |k: u32| -> Result<&'a [u8], DecodeError> {
        let start = r.pos;
        for _ in 0..k {
            let offset = r.pos;
            let index = r.u32()?;
            if index as usize >= count {
                return Err(DecodeError::BadStringIndex { offset, index });
            }
        }
        r.buf
            .get(start..r.pos)
            .ok_or(DecodeError::Truncated { offset: start })
    };
    let names = refs(n)?;
    let paths = refs(p)?;
    let pids = r.take((q as usize).saturating_mul(4))?;
    Ok(SelView {
        names,
        paths,
        pids,
        strings,
    })
}

/// Reads one rule; the same checks, in the same order, as the format requires.
fn read_rule<'a>(r: &mut Reader<'a>, strings: &'a [&'a str]) -> Result<RuleView<'a>, DecodeError> {
    let offset = r.pos;
    let name = r.u32()?;
    if name as usize >= strings.len() {
        return Err(DecodeError::BadStringIndex {
            offset,
            index: name,
        });
    }
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
            offset: at.saturating_add(1),
        });
    }
    let Some(mode) = mode_of_byte(mode) else {
        return Err(DecodeError::BadEnum {
            field: "mode",
            offset: at.saturating_add(2),
            value: mode,
        });
    };
    if kind > 2 {
        return Err(DecodeError::BadEnum {
            field: "requester kind",
            offset: at.saturating_add(3),
            value: kind,
        });
    }
    let strip_process = r.u32()?;
    let strip_thread = r.u32()?;
    let target = read_selector(r, strings)?;
    let requester = if kind == 0 {
        SelView {
            names: &[],
            paths: &[],
            pids: &[],
            strings,
        }
    } else {
        read_selector(r, strings)?
    };
    Ok(RuleView {
        name,
        objects: Objects {
            process: objects & 1 != 0,
            thread: objects & 2 != 0,
        },
        operations: Operations {
            create: operations & 1 != 0,
            duplicate: operations & 2 != 0,
        },
        mode,
        kind,
        strip_process,
        strip_thread,
        target,
        requester,
    })
}

impl<'a> BlobView<'a> {
    /// Checks everything but the policy's validity and canonical form: header,
    /// checksum, strings, rule records, trailing bytes (in the order FORMAT.md lists
    /// the errors).
    pub(crate) fn parse(blob: &'a [u8]) -> Result<Self, DecodeError> {
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
        let string_count = r.u32()?;
        let rule_count = r.u32()?;
        let data_len = r.u32()?;
        // Checked against its bounds with the policy (validate), like any setting.
        let ask_timeout_ms = r.u32()?;
        if r.u32()? != 0 {
            return Err(DecodeError::ReservedBits {
                field: "reserved header word",
                offset: 36,
            });
        }
        let settings = Settings {
            exempt_self: flags & SETTING_SELF != 0,
            exempt_kernel_handles: flags & SETTING_KERNEL != 0,
            exempt_critical_requesters: flags & SETTING_CRITICAL != 0,
            ask_timeout_ms,
        };
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
        let mut strings: Vec<&'a str> = Vec::new();
        strings
            .try_reserve_exact(string_count as usize)
            .map_err(|_| DecodeError::OutOfMemory)?;
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
            let end = off.checked_add(len);
            let bytes = end
                .and_then(|end| data.get(off..end))
                .ok_or(DecodeError::StringOutOfBounds { index })?;
            if off != expected_offset {
                return Err(DecodeError::NonCanonical);
            }
            expected_offset = end.unwrap_or(usize::MAX);
            let s =
                core::str::from_utf8(bytes).map_err(|_| DecodeError::StringNotUtf8 { index })?;
            // Capacity reserved above: never grows.
            try_push(&mut strings, s)?;
        }
        if expected_offset != data.len() {
            return Err(DecodeError::NonCanonical);
        }
        let pad = (4 - data.len() % 4) % 4;
        if r.take(pad)?.iter().any(|b| *b != 0) {
            return Err(DecodeError::BadPadding);
        }
        if (rule_count as usize)
            .checked_mul(MIN_RULE_SIZE)
            .is_none_or(|b| b > r.remaining())
        {
            return Err(DecodeError::CountTooLarge {
                what: "rule",
                count: rule_count,
            });
        }
        let view = Self {
            settings,
            strings,
            rule_count,
            blob,
            rules_at: r.pos,
        };
        // Structural pass over the rules: every malformation is reported here.
        let mut rr = Reader {
            buf: blob,
            pos: r.pos,
        };
        for _ in 0..rule_count {
            read_rule(&mut rr, &view.strings)?;
        }
        if rr.remaining() != 0 {
            return Err(DecodeError::TrailingBytes {
                extra: rr.remaining(),
            });
        }
        Ok(view)
    }

    /// The rules, in order. Each yields `Ok` after a successful [`parse`](Self::parse).
    pub(crate) fn rules(&self) -> impl Iterator<Item = Result<RuleView<'_>, DecodeError>> + '_ {
        let mut r = Reader {
            buf: self.blob,
            pos: self.rules_at,
        };
        (0..self.rule_count).map(move |_| read_rule(&mut r, &self.strings))
    }

    pub(crate) fn string(&self, i: u32) -> &'a str {
        self.strings.get(i as usize).copied().unwrap_or("")
    }

    /// The checks of [`crate::Policy::validate`], on the view, without strings in
    /// the error and without infallible allocation (same results: property-tested).
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        let invalid = |f: PolicyFault| Err(DecodeError::Invalid(f));
        let ms = self.settings.ask_timeout_ms;
        if !ask_timeout_ok(ms) {
            return invalid(PolicyFault::AskTimeoutOutOfRange(ms));
        }
        let n = self.rule_count as usize;
        if n > MAX_RULES {
            return invalid(PolicyFault::TooManyRules(n));
        }
        // Duplicate names: sort (name, index) pairs, compare neighbours.
        let mut names: Vec<(u32, u32)> = Vec::new();
        names
            .try_reserve_exact(n)
            .map_err(|_| DecodeError::OutOfMemory)?;
        for (i, rule) in (0u32..).zip(self.rules()) {
            try_push(&mut names, (rule?.name, i))?;
        }
        crate::fallible::sort_unstable_by(&mut names, |a, b| {
            self.string(a.0).cmp(self.string(b.0)).then(a.1.cmp(&b.1))
        });
        for w in names.windows(2) {
            if let [(a, i), (b, j)] = w {
                if self.string(*a) == self.string(*b) {
                    return invalid(PolicyFault::DuplicateRuleName {
                        first: *i as usize,
                        second: *j as usize,
                    });
                }
            }
        }
        drop(names);
        for (index, rule) in self.rules().enumerate() {
            if let Err((error, _)) = check_rule(&rule?, &self.settings) {
                return invalid(PolicyFault::Rule { index, error });
            }
        }
        let entries = self.entry_count()?;
        if entries > MAX_REQUESTER_ENTRIES {
            return invalid(PolicyFault::TooManyRequesterEntries(entries));
        }
        Ok(())
    }

    /// Distinct requester-dependent (target, requester) keys, counted up to one
    /// past the limit (as [`crate::model::requester_entry_count`]).
    fn entry_count(&self) -> Result<usize, DecodeError> {
        let mut keys: Vec<RuleView<'_>> = Vec::new();
        keys.try_reserve_exact(MAX_REQUESTER_ENTRIES + 1)
            .map_err(|_| DecodeError::OutOfMemory)?;
        for rule in self.rules() {
            let rule = rule?;
            if rule.is_requester_entry() && !keys.iter().any(|k| k.same_entry_as(&rule)) {
                try_push(&mut keys, rule)?;
                if keys.len() > MAX_REQUESTER_ENTRIES {
                    break;
                }
            }
        }
        Ok(keys.len())
    }

    /// The canonical-form check: strings pairwise distinct, each used, numbered in
    /// order of first use (rule name, target names, target paths, requester names,
    /// requester paths). Exactly the blobs `encode` produces (given the checks of
    /// [`parse`](Self::parse)).
    pub(crate) fn check_canonical(&self) -> Result<(), DecodeError> {
        let mut next = 0u32;
        let mut use_ = |i: u32| -> Result<(), DecodeError> {
            match i.cmp(&next) {
                Ordering::Less => Ok(()),
                Ordering::Equal => {
                    next = next.saturating_add(1);
                    Ok(())
                }
                Ordering::Greater => Err(DecodeError::NonCanonical),
            }
        };
        for rule in self.rules() {
            let rule = rule?;
            use_(rule.name)?;
            let mut sels = [Some(rule.target), None];
            if rule.kind != 0 {
                sels[1] = Some(rule.requester);
            }
            for s in sels.iter().flatten() {
                for i in s.name_indexes().chain(s.path_indexes()) {
                    use_(i)?;
                }
            }
        }
        if next as usize != self.strings.len() {
            return Err(DecodeError::NonCanonical);
        }
        let mut order: Vec<u32> = Vec::new();
        order
            .try_reserve_exact(self.strings.len())
            .map_err(|_| DecodeError::OutOfMemory)?;
        for i in 0..next {
            try_push(&mut order, i)?;
        }
        crate::fallible::sort_unstable_by(&mut order, |a, b| self.string(*a).cmp(self.string(*b)));
        if order
            .windows(2)
            .any(|w| matches!(w, [a, b] if self.string(*a) == self.string(*b)))
        {
            return Err(DecodeError::NonCanonical);
        }
        Ok(())
    }
}
