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
    let mut up = c.to_uppercase();
    match (up.next(), up.next()) {
        (Some(u), None) => u,
        _ => c,
    }
}

/// Folds a whole string into characters.
#[must_use]
pub fn fold(s: &str) -> Vec<char> {
    s.chars().map(fold_char).collect()
}

/// Why a pattern can never match an image path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Lit(char),
    One,
    Star,
    /// Zero or more whole components followed by their separator: "" or "x\y\".
    Dirs,
    /// Anything at all (trailing `**`).
    Rest,
}

/// A compiled pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    tokens: Vec<Token>,
    /// Literal characters every match starts with.
    prefix: Vec<char>,
    /// Literal characters every match ends with.
    suffix: Vec<char>,
    /// The pattern has no wildcard at all.
    literal: bool,
}

/// Checks a pattern without compiling it.
///
/// # Errors
/// The reason the pattern can never match.
pub fn validate(pattern: &str) -> Result<(), GlobError> {
    Glob::new(pattern).map(|_| ())
}

impl Glob {
    /// Compiles a pattern.
    ///
    /// # Errors
    /// The reason the pattern can never match.
    pub fn new(pattern: &str) -> Result<Self, GlobError> {
        if pattern.is_empty() {
            return Err(GlobError::Empty);
        }
        let chars = fold(pattern);
        if chars.len() > MAX_PATH_CHARS {
            return Err(GlobError::TooLong);
        }
        if chars.contains(&'\0') {
            return Err(GlobError::Nul);
        }
        if chars.contains(&'/') {
            return Err(GlobError::ForwardSlash);
        }
        let starts_double = chars.starts_with(&['*', '*']);
        if chars.first() != Some(&'\\') && !starts_double {
            return Err(GlobError::NotAbsolute);
        }
        if chars.last() == Some(&'\\') {
            return Err(GlobError::TrailingSeparator);
        }
        if chars.windows(2).any(|w| w == ['\\', '\\']) {
            return Err(GlobError::EmptyComponent);
        }
        let mut tokens = Vec::with_capacity(chars.len());
        let mut i = 0;
        while let Some(&c) = chars.get(i) {
            match c {
                '*' if chars.get(i + 1) == Some(&'*') => {
                    let before_ok = i == 0 || chars.get(i.wrapping_sub(1)) == Some(&'\\');
                    let after = chars.get(i + 2);
                    if !before_ok || !(after.is_none() || after == Some(&'\\')) {
                        return Err(GlobError::BadDoubleStar);
                    }
                    if after.is_none() {
                        tokens.push(Token::Rest);
                        i += 2;
                    } else {
                        // `**\` : the separator belongs to the token.
                        tokens.push(Token::Dirs);
                        i += 3;
                    }
                }
                '*' => {
                    tokens.push(Token::Star);
                    i += 1;
                }
                '?' => {
                    tokens.push(Token::One);
                    i += 1;
                }
                other => {
                    tokens.push(Token::Lit(other));
                    i += 1;
                }
            }
        }
        let prefix: Vec<char> = tokens
            .iter()
            .map_while(|t| {
                if let Token::Lit(c) = t {
                    Some(*c)
                } else {
                    None
                }
            })
            .collect();
        let literal = prefix.len() == tokens.len();
        let mut suffix: Vec<char> = if literal {
            Vec::new()
        } else {
            tokens
                .iter()
                .rev()
                .map_while(|t| {
                    if let Token::Lit(c) = t {
                        Some(*c)
                    } else {
                        None
                    }
                })
                .collect()
        };
        suffix.reverse();
        Ok(Self {
            tokens,
            prefix,
            suffix,
            literal,
        })
    }

    /// Whether the pattern matches an already folded path.
    #[must_use]
    pub fn matches_folded(&self, text: &[char]) -> bool {
        if self.literal {
            return self.prefix == text;
        }
        if !text.starts_with(&self.prefix) || !text.ends_with(&self.suffix) {
            return false;
        }
        if text.len() < self.prefix.len().saturating_add(self.suffix.len()) {
            return false;
        }
        let n = text.len();
        let mut reach = alloc::vec![false; n + 1];
        let mut next = alloc::vec![false; n + 1];
        if let Some(r) = reach.first_mut() {
            *r = true;
        }
        for tok in &self.tokens {
            next.iter_mut().for_each(|b| *b = false);
            match tok {
                Token::Lit(c) => {
                    for (j, t) in text.iter().enumerate() {
                        if reach.get(j) == Some(&true) && t == c {
                            if let Some(b) = next.get_mut(j + 1) {
                                *b = true;
                            }
                        }
                    }
                }
                Token::One => {
                    for (j, t) in text.iter().enumerate() {
                        if reach.get(j) == Some(&true) && *t != '\\' {
                            if let Some(b) = next.get_mut(j + 1) {
                                *b = true;
                            }
                        }
                    }
                }
                Token::Star => {
                    let mut carry = false;
                    for j in 0..=n {
                        // carry: reachable at j-1 (after star) and text[j-1] is not '\'.
                        let here = reach.get(j) == Some(&true) || carry;
                        if let Some(b) = next.get_mut(j) {
                            *b = here;
                        }
                        carry = here && text.get(j).is_some_and(|t| *t != '\\');
                    }
                }
                Token::Dirs => {
                    let mut seen = false;
                    for j in 0..=n {
                        let sep_before = j > 0 && text.get(j - 1) == Some(&'\\');
                        let here = reach.get(j) == Some(&true) || (seen && sep_before);
                        if let Some(b) = next.get_mut(j) {
                            *b = here;
                        }
                        seen = seen || reach.get(j) == Some(&true);
                    }
                }
                Token::Rest => {
                    let mut seen = false;
                    for j in 0..=n {
                        seen = seen || reach.get(j) == Some(&true);
                        if let Some(b) = next.get_mut(j) {
                            *b = seen;
                        }
                    }
                }
            }
            core::mem::swap(&mut reach, &mut next);
        }
        reach.get(n) == Some(&true)
    }

    /// Whether the pattern matches a path (folds it first).
    #[must_use]
    pub fn matches(&self, path: &str) -> bool {
        self.matches_folded(&fold(path))
    }

    /// Whether the pattern matches every path (`**`).
    #[must_use]
    pub fn matches_everything(&self) -> bool {
        self.tokens == [Token::Rest]
    }
}
