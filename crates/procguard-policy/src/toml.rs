//! The TOML front end (feature `toml`): the format people write.
//!
//! ```toml
//! [settings]                      # optional; every exemption defaults to true
//! exempt_self = true
//! exempt_kernel_handles = true
//! exempt_critical_requesters = true
//! ask_timeout_ms = 250            # how long ask rules wait for the handler, 1..=5000
//!
//! [[rule]]
//! name = "agent-no-kill"          # required, unique
//! # target: required; any of name / path / pid (a value or an array); union.
//! target = { name = "agent.exe", path = ['\Device\HarddiskVolume*\Program Files\Acme\*.exe'] }
//! requester = "any"               # default; or { name = [...], ... } ("only these"),
//!                                 # or { except = { name = [...] } } ("any except")
//! objects = "both"                # "process" | "thread" | "both" | ["process", "thread"]
//! operations = "both"             # "create" | "duplicate" | "both" | [...]
//! strip = ["no-kill", "PROCESS_VM_WRITE", 0x20]   # rights, named sets, numbers
//! mode = "enforce"                # default; or "audit", or "ask" (the handler decides
//!                                 # which of the strip rights to remove)
//! on_timeout = "strip"            # ask rules only: without an answer remove the strip
//!                                 # rights ("strip", the default) or not ("allow")
//! ```
//!
//! [`render_policy`] writes a [`Policy`] back in this syntax (the control
//! tool's `policy show`); `parse_policy(&render_policy(&p)?) == p`.
//!
//! Use TOML literal strings (`'...'`) for paths so backslashes need no escaping.
//! Right names route to their object kind (`PROCESS_*` to process handles,
//! `THREAD_*` to thread handles, standard rights to both); named sets contribute
//! their process part and thread part; a number applies to every object kind the
//! rule covers.

use std::borrow::ToOwned;
use std::format;
use std::string::{String, ToString};
use std::sync::Arc;
use std::vec::Vec;

use core::fmt;
use core::ops::Range;

use ::toml::de::{DeTable, DeValue};
use ::toml::Spanned;

use crate::glob;
use crate::model::{
    self, Mode, ObjectKind, Objects, OnTimeout, Operations, Policy, PolicyError, Requester, Rule,
    RuleError, Selector, Settings,
};
use crate::rights::{self, RightKind, VALID_PROCESS_BITS, VALID_THREAD_BITS};

mod render;
pub use render::{basic_string, render_policy, RenderError};

/// One error in a TOML policy, located precisely.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TomlError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// The offending key (dotted path such as `rule[2].strip`), if any.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
    /// The valid choices, when the value must be one of a known set.
    pub valid: Vec<String>,
}

impl fmt::Display for TomlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}: ", self.line, self.column)?;
        if let Some(k) = &self.key {
            write!(f, "{k}: ")?;
        }
        f.write_str(&self.message)?;
        if !self.valid.is_empty() {
            write!(f, " (valid choices: {})", self.valid.join(", "))?;
        }
        Ok(())
    }
}

/// Every error found in a TOML policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TomlErrors(pub Vec<TomlError>);

impl fmt::Display for TomlErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for TomlErrors {}
impl std::error::Error for TomlError {}

struct Ctx<'s> {
    src: &'s str,
    errors: Vec<TomlError>,
}

type Table<'i> = DeTable<'i>;
/// Spans of a rule table, its `name` value and its `requester` value.
type RuleSpans = (Range<usize>, Option<Range<usize>>, Option<Range<usize>>);
type Val<'i> = Spanned<DeValue<'i>>;

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

impl Ctx<'_> {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = self.src.get(..offset).unwrap_or(self.src);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |p| p + 1);
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        (line, column)
    }

    fn err(
        &mut self,
        span: &Range<usize>,
        key: &str,
        message: impl Into<String>,
        valid: Vec<String>,
    ) {
        let (line, column) = self.line_col(span.start);
        let key = if key.is_empty() {
            None
        } else {
            Some(key.to_owned())
        };
        self.errors.push(TomlError {
            line,
            column,
            key,
            message: message.into(),
            valid,
        });
    }

    fn check_keys(&mut self, table: &Table<'_>, path: &str, valid: &[&str]) {
        for (k, _) in table.iter() {
            if !valid.contains(&k.get_ref().as_ref()) {
                let key = if path.is_empty() {
                    k.get_ref().to_string()
                } else {
                    format!("{path}.{}", k.get_ref())
                };
                self.err(
                    &k.span(),
                    &key,
                    format!("unknown key {:?}", k.get_ref()),
                    strings(valid),
                );
            }
        }
    }

    fn bool_value(&mut self, v: &Val<'_>, key: &str) -> Option<bool> {
        if let DeValue::Boolean(b) = v.get_ref() {
            Some(*b)
        } else {
            self.err(
                &v.span(),
                key,
                format!("expected true or false, found {}", v.get_ref().type_str()),
                Vec::new(),
            );
            None
        }
    }

    fn string_value<'v>(&mut self, v: &'v Val<'_>, key: &str) -> Option<&'v str> {
        if let DeValue::String(s) = v.get_ref() {
            Some(s)
        } else {
            self.err(
                &v.span(),
                key,
                format!("expected a string, found {}", v.get_ref().type_str()),
                Vec::new(),
            );
            None
        }
    }

    fn integer_value(&mut self, v: &Val<'_>, key: &str) -> Option<i128> {
        if let DeValue::Integer(i) = v.get_ref() {
            let parsed = i128::from_str_radix(i.as_str(), i.radix()).ok();
            if parsed.is_none() {
                self.err(&v.span(), key, "integer out of range", Vec::new());
            }
            parsed
        } else {
            self.err(
                &v.span(),
                key,
                format!("expected an integer, found {}", v.get_ref().type_str()),
                Vec::new(),
            );
            None
        }
    }

    /// A value or an array of values.
    fn one_or_many<'v, 'i>(v: &'v Val<'i>) -> Vec<&'v Val<'i>> {
        match v.get_ref() {
            DeValue::Array(a) => a.iter().collect(),
            _ => std::vec![v],
        }
    }

    fn selector(&mut self, v: &Val<'_>, key: &str) -> Option<Selector> {
        let DeValue::Table(t) = v.get_ref() else {
            self.err(
                &v.span(),
                key,
                "expected a table such as { name = \"agent.exe\" }",
                Vec::new(),
            );
            return None;
        };
        self.check_keys(t, key, &["name", "path", "pid"]);
        let mut s = Selector::default();
        let mut ok = true;
        for (k, val) in t.iter() {
            let sub = format!("{key}.{}", k.get_ref());
            for item in Self::one_or_many(val) {
                match k.get_ref().as_ref() {
                    "name" => match self.string_value(item, &sub) {
                        Some(n) => {
                            let n: Arc<str> = Arc::from(n);
                            if let Err(e) = model::validate_image_name(&n) {
                                self.err(&item.span(), &sub, e.to_string(), Vec::new());
                                ok = false;
                            }
                            s.names.push(n);
                        }
                        None => ok = false,
                    },
                    "path" => match self.string_value(item, &sub) {
                        Some(p) => {
                            if let Err(e) = glob::validate(p) {
                                self.err(
                                    &item.span(),
                                    &sub,
                                    format!("path pattern {p:?} can never match: {e}"),
                                    Vec::new(),
                                );
                                ok = false;
                            }
                            s.paths.push(Arc::from(p));
                        }
                        None => ok = false,
                    },
                    "pid" => match self.integer_value(item, &sub).map(u32::try_from) {
                        Some(Ok(p)) => s.pids.push(p),
                        Some(Err(_)) => {
                            self.err(
                                &item.span(),
                                &sub,
                                "a PID is a 32-bit unsigned number",
                                Vec::new(),
                            );
                            ok = false;
                        }
                        None => ok = false,
                    },
                    _ => {}
                }
            }
        }
        if s.is_empty() && ok {
            self.err(
                &v.span(),
                key,
                "the selector selects no process: give name, path or pid",
                Vec::new(),
            );
            return None;
        }
        ok.then_some(s)
    }

    fn requester(&mut self, v: &Val<'_>, key: &str) -> Option<Requester> {
        match v.get_ref() {
            DeValue::String(s) if s == "any" => Some(Requester::Any),
            DeValue::Table(t) if t.iter().any(|(k, _)| k.get_ref() == "except") => {
                self.check_keys(t, key, &["except"]);
                let (_, inner) = t.iter().find(|(k, _)| k.get_ref() == "except")?;
                self.selector(inner, &format!("{key}.except"))
                    .map(Requester::AnyExcept)
            }
            DeValue::Table(_) => self.selector(v, key).map(Requester::Only),
            _ => {
                self.err(
                    &v.span(),
                    key,
                    "expected \"any\", a selector table, or { except = <selector> }",
                    strings(&[
                        "\"any\"",
                        "{ name/path/pid = ... }",
                        "{ except = { name/path/pid = ... } }",
                    ]),
                );
                None
            }
        }
    }

    fn choice_set(&mut self, v: &Val<'_>, key: &str, a: &str, b: &str) -> Option<(bool, bool)> {
        let valid = strings(&[a, b, "both"]);
        let mut out = (false, false);
        for item in Self::one_or_many(v) {
            let s = self.string_value(item, key)?;
            match s {
                _ if s == a => out.0 = true,
                _ if s == b => out.1 = true,
                "both" => out = (true, true),
                _ => {
                    self.err(&item.span(), key, format!("unknown value {s:?}"), valid);
                    return None;
                }
            }
        }
        if out == (false, false) {
            self.err(
                &v.span(),
                key,
                format!("covers nothing: give {a:?}, {b:?} or \"both\""),
                valid,
            );
            return None;
        }
        Some(out)
    }

    fn strip(&mut self, v: &Val<'_>, key: &str, objects: Objects) -> Option<(u32, u32)> {
        let (mut p, mut t) = (0u32, 0u32);
        let mut ok = true;
        let covered_word = match (objects.process, objects.thread) {
            (true, true) => "process and thread",
            (true, false) => "process",
            _ => "thread",
        };
        for item in Self::one_or_many(v) {
            match item.get_ref() {
                DeValue::String(name) => {
                    if let Some(r) = rights::right_by_name(name) {
                        let (wants_p, wants_t) = match r.kind {
                            RightKind::Process => (true, false),
                            RightKind::Thread => (false, true),
                            RightKind::Standard => (objects.process, objects.thread),
                        };
                        if (wants_p && !objects.process) || (wants_t && !objects.thread) {
                            let k = if wants_p { "process" } else { "thread" };
                            self.err(
                                &item.span(),
                                key,
                                format!("{} is a {k} right, but the rule covers only {covered_word} handles", r.name),
                                Vec::new(),
                            );
                            ok = false;
                        }
                        if wants_p && objects.process {
                            p |= r.mask;
                        }
                        if wants_t && objects.thread {
                            t |= r.mask;
                        }
                    } else if let Some(set) = rights::set_by_name(name) {
                        if objects.process {
                            p |= set.process;
                        }
                        if objects.thread {
                            t |= set.thread;
                        }
                    } else {
                        let valid = valid_rights(objects);
                        let hint = closest(name, &valid)
                            .map_or(String::new(), |c| format!("; did you mean {c}?"));
                        self.err(
                            &item.span(),
                            key,
                            format!("unknown right {name:?}{hint}"),
                            valid,
                        );
                        ok = false;
                    }
                }
                DeValue::Integer(_) => match self.integer_value(item, key).map(u32::try_from) {
                    Some(Ok(m)) => {
                        for (covered, valid, kind, acc) in [
                            (
                                objects.process,
                                VALID_PROCESS_BITS,
                                ObjectKind::Process,
                                &mut p,
                            ),
                            (
                                objects.thread,
                                VALID_THREAD_BITS,
                                ObjectKind::Thread,
                                &mut t,
                            ),
                        ] {
                            if covered {
                                if m & !valid != 0 {
                                    let e = RuleError::UnknownBits(kind, m & !valid);
                                    self.err(&item.span(), key, e.to_string(), Vec::new());
                                    ok = false;
                                }
                                *acc |= m;
                            }
                        }
                    }
                    Some(Err(_)) => {
                        self.err(
                            &item.span(),
                            key,
                            "an access mask is a 32-bit unsigned number",
                            Vec::new(),
                        );
                        ok = false;
                    }
                    None => ok = false,
                },
                other => {
                    self.err(
                        &item.span(),
                        key,
                        format!(
                            "expected a right name, a set name or a number, found {}",
                            other.type_str()
                        ),
                        Vec::new(),
                    );
                    ok = false;
                }
            }
        }
        if ok && p == 0 && t == 0 {
            self.err(
                &v.span(),
                key,
                RuleError::StripsNothing.to_string(),
                Vec::new(),
            );
            return None;
        }
        ok.then_some((p, t))
    }

    fn rule(&mut self, index: usize, v: &Val<'_>) -> Option<Rule> {
        let key = format!("rule[{index}]");
        let DeValue::Table(t) = v.get_ref() else {
            self.err(&v.span(), &key, "expected a table ([[rule]])", Vec::new());
            return None;
        };
        let valid = [
            "name",
            "target",
            "requester",
            "objects",
            "operations",
            "strip",
            "mode",
            "on_timeout",
        ];
        self.check_keys(t, &key, &valid);
        let get = |name: &str| t.iter().find(|(k, _)| k.get_ref() == name).map(|(_, v)| v);
        let before = self.errors.len();
        let name = match get("name") {
            Some(n) => {
                let s = self.string_value(n, &format!("{key}.name"));
                if s == Some("") {
                    self.err(
                        &n.span(),
                        &format!("{key}.name"),
                        RuleError::EmptyName.to_string(),
                        Vec::new(),
                    );
                }
                s.map(Arc::<str>::from)
            }
            None => {
                self.err(&v.span(), &key, "missing key \"name\"", Vec::new());
                None
            }
        };
        let target = match get("target") {
            Some(tv) => self.selector(tv, &format!("{key}.target")),
            None => {
                self.err(&v.span(), &key, "missing key \"target\"", Vec::new());
                None
            }
        };
        let requester = match get("requester") {
            Some(rv) => self.requester(rv, &format!("{key}.requester")),
            None => Some(Requester::Any),
        };
        let objects = match get("objects") {
            Some(ov) => self
                .choice_set(ov, &format!("{key}.objects"), "process", "thread")
                .map(|(process, thread)| Objects { process, thread }),
            None => Some(Objects {
                process: true,
                thread: true,
            }),
        };
        let operations = match get("operations") {
            Some(ov) => self
                .choice_set(ov, &format!("{key}.operations"), "create", "duplicate")
                .map(|(create, duplicate)| Operations { create, duplicate }),
            None => Some(Operations {
                create: true,
                duplicate: true,
            }),
        };
        let mode = match get("mode") {
            Some(mv) => match self.string_value(mv, &format!("{key}.mode")) {
                Some("enforce") => Some(Mode::Enforce),
                Some("audit") => Some(Mode::Audit),
                Some("ask") => Some(Mode::Ask {
                    on_timeout: OnTimeout::default(),
                }),
                Some(other) => {
                    self.err(
                        &mv.span(),
                        &format!("{key}.mode"),
                        format!("unknown mode {other:?}"),
                        strings(&["enforce", "audit", "ask"]),
                    );
                    None
                }
                None => None,
            },
            None => Some(Mode::Enforce),
        };
        let mode = match (get("on_timeout"), mode) {
            (Some(tv), Some(Mode::Ask { .. })) => self.on_timeout(tv, &format!("{key}.on_timeout")),
            (Some(tv), Some(_)) => {
                self.err(
                    &tv.span(),
                    &format!("{key}.on_timeout"),
                    "on_timeout applies only to ask rules (mode = \"ask\")",
                    Vec::new(),
                );
                None
            }
            (_, mode) => mode,
        };
        let strip = match (get("strip"), objects) {
            (Some(sv), Some(o)) => self.strip(sv, &format!("{key}.strip"), o),
            (None, _) => {
                self.err(&v.span(), &key, "missing key \"strip\"", Vec::new());
                None
            }
            (Some(_), None) => None,
        };
        if self.errors.len() != before {
            return None;
        }
        let (strip_process, strip_thread) = strip?;
        Some(Rule {
            name: name?,
            target: target?,
            requester: requester?,
            objects: objects?,
            operations: operations?,
            strip_process,
            strip_thread,
            mode: mode?,
        })
    }

    fn on_timeout(&mut self, v: &Val<'_>, key: &str) -> Option<Mode> {
        let on_timeout = match self.string_value(v, key)? {
            "strip" => OnTimeout::Strip,
            "allow" => OnTimeout::Allow,
            other => {
                self.err(
                    &v.span(),
                    key,
                    format!("unknown on_timeout {other:?}"),
                    strings(&["strip", "allow"]),
                );
                return None;
            }
        };
        Some(Mode::Ask { on_timeout })
    }

    fn settings(&mut self, v: &Val<'_>) -> Settings {
        let mut s = Settings::default();
        let DeValue::Table(t) = v.get_ref() else {
            self.err(
                &v.span(),
                "settings",
                "expected a table ([settings])",
                Vec::new(),
            );
            return s;
        };
        let valid = [
            "exempt_self",
            "exempt_kernel_handles",
            "exempt_critical_requesters",
            "ask_timeout_ms",
        ];
        self.check_keys(t, "settings", &valid);
        for (k, val) in t.iter() {
            let key = format!("settings.{}", k.get_ref());
            if k.get_ref() == "ask_timeout_ms" {
                if let Some(ms) = self.integer_value(val, &key) {
                    match u32::try_from(ms) {
                        Ok(ms) if model::ask_timeout_ok(ms) => s.ask_timeout_ms = ms,
                        _ => self.err(
                            &val.span(),
                            &key,
                            format!(
                                "{ms} is out of range: the ask timeout is {}..={} milliseconds",
                                model::MIN_ASK_TIMEOUT_MS,
                                model::MAX_ASK_TIMEOUT_MS
                            ),
                            Vec::new(),
                        ),
                    }
                }
                continue;
            }
            let slot = match k.get_ref().as_ref() {
                "exempt_self" => &mut s.exempt_self,
                "exempt_kernel_handles" => &mut s.exempt_kernel_handles,
                "exempt_critical_requesters" => &mut s.exempt_critical_requesters,
                _ => continue,
            };
            if let Some(b) = self.bool_value(val, &key) {
                *slot = b;
            }
        }
        s
    }
}

fn valid_rights(objects: Objects) -> Vec<String> {
    let mut v: Vec<String> = rights::ALL_RIGHTS
        .iter()
        .filter(|r| match r.kind {
            RightKind::Process => objects.process,
            RightKind::Thread => objects.thread,
            RightKind::Standard => true,
        })
        .map(|r| r.name.to_owned())
        .collect();
    v.extend(rights::RIGHT_SETS.iter().map(|s| s.name.to_owned()));
    v.push("a number such as 0x0001".to_owned());
    v
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().map(|c| c.to_ascii_uppercase()).collect();
    let b: Vec<char> = b.chars().map(|c| c.to_ascii_uppercase()).collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = std::vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev.get(j).copied().unwrap_or(0) + usize::from(ca != cb);
            let del = prev.get(j + 1).copied().unwrap_or(0) + 1;
            let ins = cur.get(j).copied().unwrap_or(0) + 1;
            cur.push(sub.min(del).min(ins));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

fn closest<'v>(name: &str, valid: &'v [String]) -> Option<&'v str> {
    valid
        .iter()
        .map(|v| (edit_distance(name, v), v))
        .filter(|(d, v)| *d <= 3.max(v.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, v)| v.as_str())
}

/// Parses a TOML policy, reporting every error with line, column, key and valid
/// choices. The result has passed [`Policy::validate`].
///
/// # Errors
/// Every problem found (at least one).
pub fn parse_policy(src: &str) -> Result<Policy, TomlErrors> {
    let mut cx = Ctx {
        src,
        errors: Vec::new(),
    };
    let root = match DeTable::parse(src) {
        Ok(r) => r,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            cx.err(
                &span,
                "",
                format!("TOML syntax error: {}", e.message().trim()),
                Vec::new(),
            );
            return Err(TomlErrors(cx.errors));
        }
    };
    let root = root.get_ref();
    cx.check_keys(root, "", &["settings", "rule"]);
    let settings = root
        .iter()
        .find(|(k, _)| k.get_ref() == "settings")
        .map_or_else(Settings::default, |(_, v)| cx.settings(v));
    let mut rules = Vec::new();
    let mut spans: Vec<RuleSpans> = Vec::new();
    if let Some((_, rv)) = root.iter().find(|(k, _)| k.get_ref() == "rule") {
        match rv.get_ref() {
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(rule) = cx.rule(i, item) {
                        let field = |n: &str| match item.get_ref() {
                            DeValue::Table(t) => t
                                .iter()
                                .find(|(k, _)| k.get_ref() == n)
                                .map(|(_, v)| v.span()),
                            _ => None,
                        };
                        spans.push((item.span(), field("name"), field("requester")));
                        rules.push((i, rule));
                    }
                }
            }
            _ => cx.err(
                &rv.span(),
                "rule",
                "expected an array of tables ([[rule]])",
                Vec::new(),
            ),
        }
    }
    // Policy-wide checks, located at the offending rule.
    for (pos, (i, rule)) in rules.iter().enumerate() {
        let (rule_span, name_span, req_span) =
            spans.get(pos).cloned().unwrap_or((0..0, None, None));
        if let Some((first, _)) = rules.iter().take(pos).find(|(_, r)| r.name == rule.name) {
            let first_line = spans
                .iter()
                .zip(rules.iter())
                .find(|(_, (j, _))| j == first)
                .map_or(0, |((s, n, _), _)| {
                    cx.line_col(n.clone().unwrap_or_else(|| s.clone()).start).0
                });
            cx.err(
                &name_span.unwrap_or_else(|| rule_span.clone()),
                &format!("rule[{i}].name"),
                format!(
                    "duplicate rule name {:?} (first used by rule[{first}] on line {first_line})",
                    rule.name
                ),
                Vec::new(),
            );
        }
        if let Err(e) = model::validate_rule(rule, &settings) {
            let span = match e {
                RuleError::StripsFromCriticalProcess(_) => req_span.unwrap_or(rule_span),
                _ => rule_span,
            };
            let key = match e {
                RuleError::StripsFromCriticalProcess(_) => format!("rule[{i}].requester"),
                _ => format!("rule[{i}]"),
            };
            cx.err(&span, &key, e.to_string(), Vec::new());
        }
    }
    if !cx.errors.is_empty() {
        return Err(TomlErrors(cx.errors));
    }
    let policy = Policy {
        settings,
        rules: rules.into_iter().map(|(_, r)| r).collect(),
    };
    if let Err(e) = policy.validate() {
        let index = match &e {
            PolicyError::Rule { index, .. } => Some(*index),
            PolicyError::TooManyRequesterEntries(_) => Some(model::MAX_REQUESTER_ENTRIES),
            _ => None,
        };
        let span = index
            .and_then(|i| spans.get(i))
            .map_or(0..0, |(s, _, _)| s.clone());
        cx.err(&span, "", e.to_string(), Vec::new());
        return Err(TomlErrors(cx.errors));
    }
    Ok(policy)
}
