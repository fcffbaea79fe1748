//! Rendering a [`Policy`] back to the TOML people write (the control tool's
//! `policy show`): `parse_policy(&render_policy(&p)?) == p` for every policy the
//! TOML language can express (property-tested).

use std::format;
use std::string::{String, ToString};
use std::vec::Vec;

use core::fmt::{self, Write as _};

use crate::model::{Mode, Policy, PolicyError, Requester, Rule, Selector};
use crate::rights::{self, RightKind, STANDARD_RIGHTS};

/// Why a policy cannot be rendered as TOML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RenderError {
    /// The policy does not pass [`Policy::validate`].
    Invalid(PolicyError),
    /// A rule covering both object kinds strips different standard rights
    /// (`DELETE`, `WRITE_DAC`, ...) from process and thread handles: in TOML a
    /// standard right or a number always applies to every object kind a rule
    /// covers, so the rule has no TOML spelling. (Policies compiled from TOML
    /// never have such a rule.)
    StandardRightsDiffer {
        /// Index of the rule.
        rule: usize,
        /// Its name.
        name: String,
    },
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(e) => write!(f, "invalid policy: {e}"),
            Self::StandardRightsDiffer { rule, name } => write!(
                f,
                "rule {rule} {name:?} strips different standard rights from process and thread handles, \
                 which TOML cannot express (a standard right applies to every object kind a rule covers)"
            ),
        }
    }
}

impl std::error::Error for RenderError {}

/// Renders `policy` as TOML that [`super::parse_policy`] reads back to an equal
/// policy: every setting and key written out, strip masks as named sets (those
/// wholly contained in the masks) plus right names, paths as literal strings.
///
/// # Errors
/// [`RenderError`] when the policy is invalid or has no TOML spelling.
pub fn render_policy(policy: &Policy) -> Result<String, RenderError> {
    policy.validate().map_err(RenderError::Invalid)?;
    let s = &policy.settings;
    let mut out = format!(
        "[settings]\nexempt_self = {}\nexempt_kernel_handles = {}\nexempt_critical_requesters = {}\n\
         ask_timeout_ms = {}\n",
        s.exempt_self, s.exempt_kernel_handles, s.exempt_critical_requesters, s.ask_timeout_ms
    );
    for (index, rule) in policy.rules.iter().enumerate() {
        let strip = strip_items(rule).ok_or_else(|| RenderError::StandardRightsDiffer {
            rule: index,
            name: String::from(&*rule.name),
        })?;
        // Writing to a String cannot fail.
        let _ = write_rule(&mut out, rule, &strip);
    }
    Ok(out)
}

fn write_rule(out: &mut String, rule: &Rule, strip: &[String]) -> fmt::Result {
    writeln!(out)?;
    writeln!(out, "[[rule]]")?;
    writeln!(out, "name = {}", basic_string(&rule.name))?;
    writeln!(out, "target = {}", selector(&rule.target))?;
    match &rule.requester {
        Requester::Any => writeln!(out, "requester = \"any\"")?,
        Requester::Only(s) => writeln!(out, "requester = {}", selector(s))?,
        Requester::AnyExcept(s) => writeln!(out, "requester = {{ except = {} }}", selector(s))?,
    }
    let objects = match (rule.objects.process, rule.objects.thread) {
        (true, true) => "both",
        (true, false) => "process",
        _ => "thread",
    };
    writeln!(out, "objects = \"{objects}\"")?;
    let operations = match (rule.operations.create, rule.operations.duplicate) {
        (true, true) => "both",
        (true, false) => "create",
        _ => "duplicate",
    };
    writeln!(out, "operations = \"{operations}\"")?;
    writeln!(out, "strip = [{}]", strip.join(", "))?;
    writeln!(out, "mode = \"{}\"", rule.mode.name())?;
    if let Mode::Ask { on_timeout } = rule.mode {
        writeln!(out, "on_timeout = \"{}\"", on_timeout.name())?;
    }
    Ok(())
}

/// The `strip` array items: the named sets wholly inside the masks (largest
/// first, skipping a set that adds nothing to those already chosen), then the
/// names of the rights no chosen set covers. `None` when the rule has no TOML
/// spelling.
fn strip_items(rule: &Rule) -> Option<Vec<String>> {
    let (covers_p, covers_t) = (rule.objects.process, rule.objects.thread);
    let p = if covers_p { rule.strip_process } else { 0 };
    let t = if covers_t { rule.strip_thread } else { 0 };
    if covers_p && covers_t && p & STANDARD_RIGHTS_ALL != t & STANDARD_RIGHTS_ALL {
        return None;
    }
    let part = |set: &rights::RightSet| {
        (
            if covers_p { set.process } else { 0 },
            if covers_t { set.thread } else { 0 },
        )
    };
    let mut sets: Vec<&rights::RightSet> = rights::RIGHT_SETS.iter().collect();
    sets.sort_by_key(|set| {
        let (sp, st) = part(set);
        core::cmp::Reverse(sp.count_ones() + st.count_ones())
    });
    let mut items = Vec::new();
    let (mut left_p, mut left_t) = (p, t);
    for set in sets {
        let (sp, st) = part(set);
        let inside = sp & !p == 0 && st & !t == 0;
        let adds = sp & left_p != 0 || st & left_t != 0;
        if inside && adds {
            items.push(basic_string(set.name));
            left_p &= !sp;
            left_t &= !st;
        }
    }
    // A standard right named goes to both covered kinds; the check above makes
    // that exact.
    let standard_left = (left_p | left_t) & STANDARD_RIGHTS_ALL;
    for right in rights::ALL_RIGHTS {
        let wanted = match right.kind {
            RightKind::Process => left_p & right.mask != 0,
            RightKind::Thread => left_t & right.mask != 0,
            RightKind::Standard => standard_left & right.mask != 0,
        };
        if wanted {
            items.push(basic_string(right.name));
        }
    }
    Some(items)
}

/// Standard rights plus `ACCESS_SYSTEM_SECURITY`: the bits that route to every
/// covered object kind.
const STANDARD_RIGHTS_ALL: u32 = STANDARD_RIGHTS | rights::ACCESS_SYSTEM_SECURITY;

fn selector(s: &Selector) -> String {
    let mut parts = Vec::new();
    if !s.names.is_empty() {
        let names: Vec<String> = s.names.iter().map(|n| literal_or_basic(n)).collect();
        parts.push(format!("name = [{}]", names.join(", ")));
    }
    if !s.paths.is_empty() {
        let paths: Vec<String> = s.paths.iter().map(|p| literal_or_basic(p)).collect();
        parts.push(format!("path = [{}]", paths.join(", ")));
    }
    if !s.pids.is_empty() {
        let pids: Vec<String> = s.pids.iter().map(u32::to_string).collect();
        parts.push(format!("pid = [{}]", pids.join(", ")));
    }
    format!("{{ {} }}", parts.join(", "))
}

/// A TOML literal string (`'...'`, no escapes: readable Windows paths) when the
/// text allows one, else a basic string.
fn literal_or_basic(text: &str) -> String {
    if text.contains(|c: char| c == '\'' || c.is_control()) {
        basic_string(text)
    } else {
        format!("'{text}'")
    }
}

/// A TOML basic string (`"..."`) with every character TOML requires escaped.
#[must_use]
pub fn basic_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
