//! Case-insensitive path patterns and the path folding Windows uses to compare names.
//!
//! Syntax (on NT image paths such as `\Device\HarddiskVolume3\Windows\explorer.exe`):
//! - `?` matches one character other than `\`;
//! - `*` matches any run of characters other than `\` (stays inside one component);
//! - `**` as a whole component matches any number of components: `\**\` matches one
//!   separator or `\anything\`, a leading `**\` matches any leading directories (or
//!   none), a trailing `\**` matches everything below;
//! - every other character matches itself, compared case-insensitively (simple
//!   one-to-one uppercase mapping, as `RtlUpcaseUnicodeChar` does).
//!
//! A pattern must start with `\` or `**`, contain no `/`, no empty component (`\\`),
//! not end with `\`, and use `**` only as a whole component: otherwise it could never
//! match an image path and [`GlobError`] says why.

use alloc::vec::Vec;
use core::fmt;

/// Longest path Windows can name (UNICODE_STRING limit, in characters).
pub const MAX_PATH_CHARS: usize = 32_767;

/// Folds one character the way Windows compares names: its simple uppercase
/// mapping when that is a single character, else the character itself.
#[must_use]
pub fn fold_char(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_uppercase();
    }
    let mut up = c.to_uppercase();
    match (up.next(), up.next()) {
        (Some(u), None) => u,
        _ => c,
    }
}

/// Folds a whole string into characters (allocates; control-tool side).
#[must_use]
pub fn fold(s: &str) -> Vec<char> {
    s.chars().map(fold_char).collect()
}

/// The characters of `s`, folded one by one as they are read (no allocation).
pub(crate) type FoldChars<'a> = core::iter::Map<core::str::Chars<'a>, fn(char) -> char>;

/// Folds `s` lazily, character by character.
pub(crate) fn fold_chars(s: &str) -> FoldChars<'_> {
    s.chars().map(fold_char as fn(char) -> char)
}

/// Whether `c` is the path separator `\`.
pub(crate) fn is_backslash(c: char) -> bool {
    c == '\\'
}

/// The components of a path split at `\` by a predicate.
pub(crate) type StrComponents<'a> =
    core::iter::Map<core::str::Split<'a, fn(char) -> bool>, fn(&str) -> FoldChars<'_>>;

/// The `\`-separated components of a path, each folded lazily. (A predicate,
/// not the `char` pattern: that one searches with `memchr`, whose slicing
/// keeps a panic path in the kernel image.)
pub(crate) fn str_components(s: &str) -> StrComponents<'_> {
    s.split(is_backslash as fn(char) -> bool)
        .map(fold_chars as fn(&str) -> FoldChars<'_>)
}

type CharComponent<'a> = core::iter::Copied<core::slice::Iter<'a, char>>;

fn char_component(c: &[char]) -> CharComponent<'_> {
    c.iter().copied()
}

fn is_separator(c: &char) -> bool {
    *c == '\\'
}

/// Components of folded characters, see [`char_components`].
pub(crate) type CharComponents<'a> = core::iter::Map<
    core::slice::Split<'a, char, fn(&char) -> bool>,
    fn(&[char]) -> CharComponent<'_>,
>;

/// The `\`-separated components of already folded characters.
pub(crate) fn char_components(s: &[char]) -> CharComponents<'_> {
    s.split(is_separator as fn(&char) -> bool)
        .map(char_component as fn(&[char]) -> CharComponent<'_>)
}

/// Whether one pattern component (`*` = any run, `?` = one character, else the
/// character itself) matches one text component. Both are folded and contain no
/// separator. Classic single-backtrack-point wildcard matching: O(pattern x text)
/// steps, no allocation, no recursion.
fn component_matches<P, T>(pattern: P, text: T) -> bool
where
    P: Iterator<Item = char> + Clone,
    T: Iterator<Item = char> + Clone,
{
    let mut p = pattern;
    let mut t = text;
    // (pattern after the last `*`, text position that `*` has absorbed up to)
    let mut star: Option<(P, T)> = None;
    loop {
        let mut p_next = p.clone();
        let pc = p_next.next();
        if pc == Some('*') {
            p = p_next;
            star = Some((p.clone(), t.clone()));
            continue;
        }
        let mut t_next = t.clone();
        match (pc, t_next.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a == '?' || a == b => {
                p = p_next;
                t = t_next;
                continue;
            }
            _ => {}
        }
        // Mismatch: the last `*` absorbs one more character, or there is no match.
        let Some((sp, st)) = star.as_mut() else {
            return false;
        };
        if st.next().is_none() {
            return false;
        }
        p = sp.clone();
        t = st.clone();
    }
}

fn is_double_star<C: Iterator<Item = char>>(mut c: C) -> bool {
    c.next() == Some('*') && c.next() == Some('*') && c.next().is_none()
}

/// Number of components before the next `**` component (or the end), and whether a
/// `**` ends them.
fn segment<P, PC>(pattern: P) -> (usize, bool)
where
    P: Iterator<Item = PC>,
    PC: Iterator<Item = char> + Clone,
{
    let mut n = 0usize;
    for pc in pattern {
        if is_double_star(pc) {
            return (n, true);
        }
        n = n.saturating_add(1);
    }
    (n, false)
}

/// Whether the components of `pattern` up to its next `**` (or end) match the
/// components at the start of `text`, one to one.
fn segment_matches<P, PC, T, TC>(pattern: P, mut text: T) -> bool
where
    P: Iterator<Item = PC>,
    PC: Iterator<Item = char> + Clone,
    T: Iterator<Item = TC>,
    TC: Iterator<Item = char> + Clone,
{
    for pc in pattern {
        if is_double_star(pc.clone()) {
            return true;
        }
        let Some(tc) = text.next() else {
            return false;
        };
        if !component_matches(pc, tc) {
            return false;
        }
    }
    true
}

/// Matches a pattern against a path, both given as sequences of folded components.
///
/// Components are matched one to one, except `**`: followed by more components
/// (`**\`), it stands for zero or more components; as the last component, for one
/// or more (the one may be empty). Segments between `**`s are placed leftmost first,
/// which is optimal since a `**` in between absorbs any gap. No allocation, no
/// recursion: O(components x segment x component length) steps.
pub(crate) fn path_matches<P, PC, T, TC>(pattern: P, text: T) -> bool
where
    P: Iterator<Item = PC> + Clone,
    PC: Iterator<Item = char> + Clone,
    T: Iterator<Item = TC> + Clone,
    TC: Iterator<Item = char> + Clone,
{
    let (first, has_double) = segment(pattern.clone());
    let total = text.clone().count();
    if !has_double {
        return first == total && segment_matches(pattern, text);
    }
    if first > total || !segment_matches(pattern.clone(), text.clone()) {
        return false;
    }
    let mut pat = pattern;
    let mut t = text;
    // Skip the first segment and its `**`.
    let _ = pat.nth(first);
    for _ in 0..first {
        let _ = t.next();
    }
    let mut cur = first;
    loop {
        let (len, more) = segment(pat.clone());
        let left = total.saturating_sub(cur);
        if !more {
            if len == 0 {
                // Trailing `**`: at least one (possibly empty) component.
                return left >= 1;
            }
            if left < len {
                return false;
            }
            for _ in 0..left.saturating_sub(len) {
                let _ = t.next();
            }
            return segment_matches(pat, t);
        }
        // A middle segment: its leftmost occurrence.
        loop {
            if total.saturating_sub(cur) < len {
                return false;
            }
            if segment_matches(pat.clone(), t.clone()) {
                break;
            }
            let _ = t.next();
            cur = cur.saturating_add(1);
        }
        for _ in 0..len {
            let _ = t.next();
        }
        cur = cur.saturating_add(len);
        let _ = pat.nth(len);
    }
}

/// Why a pattern can never match an image path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GlobError {
    /// The pattern is empty.
    Empty,
    /// Longer than any Windows path.
    TooLong,
    /// Does not start with `\` or `**`: image paths are absolute NT paths.
    NotAbsolute,
    /// Contains `/`, which never appears in an NT image path.
    ForwardSlash,
    /// Contains an empty component (`\\`).
    EmptyComponent,
    /// Ends with `\`: an image path names a file, not a directory.
    TrailingSeparator,
    /// `**` glued to other characters, or three or more `*` in a row.
    BadDoubleStar,
    /// Contains a NUL character.
    Nul,
}

impl fmt::Display for GlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "the pattern is empty",
            Self::TooLong => "the pattern is longer than any Windows path (32767 characters)",
            Self::NotAbsolute => {
                "image paths are NT paths such as \\Device\\HarddiskVolume3\\...; a pattern must \
                 start with '\\' or '**' (a DOS path like C:\\... never matches)"
            }
            Self::ForwardSlash => "NT image paths use '\\'; a '/' never matches",
            Self::EmptyComponent => "an empty path component ('\\\\') never matches",
            Self::TrailingSeparator => "an image path names a file; a trailing '\\' never matches",
            Self::BadDoubleStar => {
                "'**' must be a whole path component (\\**\\), and '***' is invalid"
            }
            Self::Nul => "a NUL character never appears in a path",
        })
    }
}

/// A compiled pattern: its folded characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    chars: Vec<char>,
}

/// Checks a pattern without compiling it (no allocation).
///
/// # Errors
/// The reason the pattern can never match.
pub fn validate(pattern: &str) -> Result<(), GlobError> {
    // Every character tested below is ASCII; folding never maps a non-ASCII
    // character to one of them, and UTF-8 continuation bytes are never ASCII, so
    // the raw bytes give the same answers as the folded characters.
    let b = pattern.as_bytes();
    if b.is_empty() {
        return Err(GlobError::Empty);
    }
    if pattern.chars().count() > MAX_PATH_CHARS {
        return Err(GlobError::TooLong);
    }
    if b.contains(&0) {
        return Err(GlobError::Nul);
    }
    if b.contains(&b'/') {
        return Err(GlobError::ForwardSlash);
    }
    if b.first() != Some(&b'\\') && !b.starts_with(b"**") {
        return Err(GlobError::NotAbsolute);
    }
    if b.last() == Some(&b'\\') {
        return Err(GlobError::TrailingSeparator);
    }
    if b.windows(2).any(|w| w == b"\\\\") {
        return Err(GlobError::EmptyComponent);
    }
    let mut i = 0usize;
    while let Some(&c) = b.get(i) {
        if c == b'*' && b.get(i.saturating_add(1)) == Some(&b'*') {
            let before_ok = i == 0 || b.get(i.wrapping_sub(1)) == Some(&b'\\');
            let after = b.get(i.saturating_add(2));
            if !before_ok || !(after.is_none() || after == Some(&b'\\')) {
                return Err(GlobError::BadDoubleStar);
            }
            i = i.saturating_add(3);
        } else {
            i = i.saturating_add(1);
        }
    }
    Ok(())
}

impl Glob {
    /// Compiles a pattern (allocates; control-tool side).
    ///
    /// # Errors
    /// The reason the pattern can never match.
    pub fn new(pattern: &str) -> Result<Self, GlobError> {
        validate(pattern)?;
        Ok(Self {
            chars: fold(pattern),
        })
    }

    /// Whether the pattern matches an already folded path.
    #[must_use]
    pub fn matches_folded(&self, text: &[char]) -> bool {
        path_matches(char_components(&self.chars), char_components(text))
    }

    /// Whether the pattern matches a path (folded as it is read; no allocation).
    #[must_use]
    pub fn matches(&self, path: &str) -> bool {
        path_matches(char_components(&self.chars), str_components(path))
    }

    /// Whether the pattern matches every path (`**`).
    #[must_use]
    pub fn matches_everything(&self) -> bool {
        self.chars == ['*', '*']
    }
}
