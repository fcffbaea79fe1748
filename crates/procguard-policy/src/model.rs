//! The decoded rule model: what a policy says, independent of how it was written.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use crate::glob::{self, Glob, GlobError};
use crate::identity::{self, ProcessIdentity};
use crate::rights::{AccessMask, VALID_PROCESS_BITS, VALID_THREAD_BITS};

/// Index of a rule in [`Policy::rules`] (its position in the source file).
pub type RuleId = u16;

/// Most rules a policy may hold ([`RuleId`] is 16 bits and `0xFFFF` means "none").
pub const MAX_RULES: usize = 0xFFFE;

/// Most distinct requester-dependent entries (see [`crate::compiled`]): rules whose
/// requester is not "any", deduplicated by (target selector, requester selector).
pub const MAX_REQUESTER_ENTRIES: usize = 63;

/// Kind of object a handle is for. A thread handle is judged by the rules of the
/// process that owns the thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// A process handle.
    Process,
    /// A thread handle.
    Thread,
}

/// Handle operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `OB_OPERATION_HANDLE_CREATE` (`OpenProcess`, `OpenThread`, `CreateProcess`).
    Create,
    /// `OB_OPERATION_HANDLE_DUPLICATE` (`DuplicateHandle`). The requester is the
    /// process that *receives* the handle (`TargetProcess`), since it gains the access.
    Duplicate,
}

/// Enforce or only audit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Remove the rights.
    Enforce,
    /// Remove nothing; report what would have been removed.
    Audit,
}

/// Which object kinds a rule covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Objects {
    /// Process handles.
    pub process: bool,
    /// Thread handles.
    pub thread: bool,
}

/// Which operations a rule covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Operations {
    /// Handle creation.
    pub create: bool,
    /// Handle duplication.
    pub duplicate: bool,
}

/// Selects processes. A process is selected when *any* entry matches (union).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    /// Image file names (`agent.exe`), case-insensitive, no `\` nor wildcards.
    pub names: Vec<Arc<str>>,
    /// Full image path patterns (see [`crate::glob`]).
    pub paths: Vec<Arc<str>>,
    /// Process ids.
    pub pids: Vec<u32>,
}

impl Selector {
    /// No entry at all (selects nothing).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.paths.is_empty() && self.pids.is_empty()
    }

    /// Straightforward evaluation, string by string (the reference semantics).
    #[must_use]
    pub fn matches(&self, id: &ProcessIdentity<'_>) -> bool {
        crate::reference::selector_matches(self, id)
    }
}

/// Who a rule restricts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Requester {
    /// Every process.
    Any,
    /// Only the selected processes.
    Only(Selector),
    /// Every process except the selected ones.
    AnyExcept(Selector),
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Unique name, used in reports.
    pub name: Arc<str>,
    /// The processes it protects.
    pub target: Selector,
    /// The processes it restricts.
    pub requester: Requester,
    /// Object kinds covered.
    pub objects: Objects,
    /// Operations covered.
    pub operations: Operations,
    /// Rights removed from process handles (zero unless `objects.process`).
    pub strip_process: AccessMask,
    /// Rights removed from thread handles (zero unless `objects.thread`).
    pub strip_thread: AccessMask,
    /// Enforce or audit.
    pub mode: Mode,
}

impl Rule {
    /// The strip mask for a handle of `kind`, zero when the rule does not cover it.
    #[must_use]
    pub fn strip_for(&self, kind: ObjectKind, op: Operation) -> AccessMask {
        let op_ok = match op {
            Operation::Create => self.operations.create,
            Operation::Duplicate => self.operations.duplicate,
        };
        if !op_ok {
            return 0;
        }
        match kind {
            ObjectKind::Process if self.objects.process => self.strip_process,
            ObjectKind::Thread if self.objects.thread => self.strip_thread,
            _ => 0,
        }
    }
}

/// Global switches: the built-in exemptions. All on by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// A process opening a handle to itself (or its own threads) keeps every right:
    /// a process can already do anything to itself, and the loader, CRT and exit path
    /// open their own process; stripping breaks them for no protection.
    pub exempt_self: bool,
    /// Kernel handles (`OBJ_KERNEL_HANDLE`, `KernelHandle` flag) are never filtered: a
    /// kernel component can always get a full handle by other means, and drivers that
    /// lose rights they asked for may fail in ways that crash the system.
    pub exempt_kernel_handles: bool,
    /// The critical system processes (System, smss, csrss, wininit, services, lsass;
    /// see [`identity::is_critical_system_process`]) keep every right as requesters:
    /// they open every process (csrss for console and exit, services for service
    /// control, lsass for authentication, smss/wininit for session setup) and a
    /// failure there can hang or bugcheck Windows.
    pub exempt_critical_requesters: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            exempt_self: true,
            exempt_kernel_handles: true,
            exempt_critical_requesters: true,
        }
    }
}

/// A policy: ordered rules plus settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Global settings.
    pub settings: Settings,
    /// Rules in order; a rule's [`RuleId`] is its index.
    pub rules: Vec<Rule>,
}

/// Why one rule is invalid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleError {
    /// The rule name is empty.
    EmptyName,
    /// The target selector has no entry.
    EmptyTarget,
    /// A requester "only"/"any except" selector has no entry.
    EmptyRequester,
    /// An image name is empty or contains `\`, `*` or `?`.
    BadImageName(Arc<str>),
    /// A path pattern can never match.
    BadGlob(Arc<str>, GlobError),
    /// Covers no object kind.
    NoObjects,
    /// Covers no operation.
    NoOperations,
    /// Strips nothing from any object it covers.
    StripsNothing,
    /// A strip mask has bits for an object kind the rule does not cover.
    StripForUncoveredObject(ObjectKind),
    /// A strip mask has bits that are not rights of that object kind.
    UnknownBits(ObjectKind, AccessMask),
    /// The requester selector names a critical system process, which is exempt as a
    /// requester: the rule would try to strip rights from it.
    StripsFromCriticalProcess(Arc<str>),
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyName => f.write_str("the rule name is empty"),
            Self::EmptyTarget => f.write_str("the target selects no process (give name, path or pid)"),
            Self::EmptyRequester => f.write_str("the requester selector selects no process (give name, path or pid)"),
            Self::BadImageName(n) => write!(
                f,
                "image name {n:?} must be a plain file name without '\\', '*' or '?' (use 'path' for patterns)"
            ),
            Self::BadGlob(p, e) => write!(f, "path pattern {p:?} can never match: {e}"),
            Self::NoObjects => f.write_str("the rule covers no object kind (process, thread)"),
            Self::NoOperations => f.write_str("the rule covers no operation (create, duplicate)"),
            Self::StripsNothing => f.write_str("the strip mask removes nothing from the objects the rule covers"),
            Self::StripForUncoveredObject(k) => write!(
                f,
                "the rule strips {} rights but does not cover {} handles",
                kind_word(*k),
                kind_word(*k)
            ),
            Self::UnknownBits(k, m) => write!(f, "bits {m:#x} are not {} access rights", kind_word(*k)),
            Self::StripsFromCriticalProcess(what) => write!(
                f,
                "the requester selector includes the critical system process {what:?}, which is exempt as a \
                 requester (settings.exempt_critical_requesters): the rule would strip rights from it"
            ),
        }
    }
}

pub(crate) fn kind_word(k: ObjectKind) -> &'static str {
    match k {
        ObjectKind::Process => "process",
        ObjectKind::Thread => "thread",
    }
}

/// Why a policy is invalid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyError {
    /// More than [`MAX_RULES`] rules.
    TooManyRules(usize),
    /// Two rules share a name.
    DuplicateRuleName {
        /// The name.
        name: Arc<str>,
        /// Index of the first rule.
        first: usize,
        /// Index of the second rule.
        second: usize,
    },
    /// More than [`MAX_REQUESTER_ENTRIES`] distinct (target, requester) pairs among
    /// rules whose requester is not "any".
    TooManyRequesterEntries(usize),
    /// A rule is invalid.
    Rule {
        /// Its index.
        index: usize,
        /// What is wrong.
        error: RuleError,
    },
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooManyRules(n) => write!(f, "{n} rules; at most {MAX_RULES} are allowed"),
            Self::DuplicateRuleName { name, first, second } => {
                write!(f, "rules {first} and {second} are both named {name:?}; rule names must be unique")
            }
            Self::TooManyRequesterEntries(n) => write!(
                f,
                "{n} distinct (target, requester) pairs among rules with a requester other than \"any\"; at \
                 most {MAX_REQUESTER_ENTRIES} are allowed (merge rules that share a requester selector)"
            ),
            Self::Rule { index, error } => write!(f, "rule {index}: {error}"),
        }
    }
}

/// Checks an image name selector entry.
///
/// # Errors
/// [`RuleError::BadImageName`].
pub fn validate_image_name(name: &Arc<str>) -> Result<(), RuleError> {
    if name.is_empty() || name.contains(['\\', '*', '?', '\0']) {
        Err(RuleError::BadImageName(name.clone()))
    } else {
        Ok(())
    }
}

fn validate_selector(s: &Selector) -> Result<(), RuleError> {
    for n in &s.names {
        validate_image_name(n)?;
    }
    for p in &s.paths {
        glob::validate(p).map_err(|e| RuleError::BadGlob(p.clone(), e))?;
    }
    Ok(())
}

/// If the selector explicitly selects a critical system process, names the entry.
#[must_use]
pub fn selects_critical_process(s: &Selector) -> Option<Arc<str>> {
    if s.pids.contains(&identity::SYSTEM_PID) || s.pids.contains(&identity::IDLE_PID) {
        return Some(Arc::from("System (PID 4/0)"));
    }
    for n in &s.names {
        if identity::CRITICAL_IMAGE_NAMES
            .iter()
            .any(|c| identity::eq_fold(c, n))
        {
            return Some(n.clone());
        }
    }
    for p in &s.paths {
        let Ok(g) = Glob::new(p) else { continue };
        for c in identity::CRITICAL_IMAGE_NAMES {
            for dir in [
                "\\SystemRoot\\System32\\",
                "\\Device\\HarddiskVolume1\\Windows\\System32\\",
            ] {
                let mut full = alloc::string::String::from(dir);
                full.push_str(c);
                if g.matches(&full) {
                    return Some(p.clone());
                }
            }
        }
    }
    None
}

/// Checks one rule against the settings.
///
/// # Errors
/// The first problem found.
pub fn validate_rule(rule: &Rule, settings: &Settings) -> Result<(), RuleError> {
    if rule.name.is_empty() {
        return Err(RuleError::EmptyName);
    }
    if rule.target.is_empty() {
        return Err(RuleError::EmptyTarget);
    }
    validate_selector(&rule.target)?;
    match &rule.requester {
        Requester::Any => {}
        Requester::Only(s) | Requester::AnyExcept(s) => {
            if s.is_empty() {
                return Err(RuleError::EmptyRequester);
            }
            validate_selector(s)?;
        }
    }
    if let Requester::Only(s) = &rule.requester {
        if settings.exempt_critical_requesters {
            if let Some(what) = selects_critical_process(s) {
                return Err(RuleError::StripsFromCriticalProcess(what));
            }
        }
    }
    if !rule.objects.process && !rule.objects.thread {
        return Err(RuleError::NoObjects);
    }
    if !rule.operations.create && !rule.operations.duplicate {
        return Err(RuleError::NoOperations);
    }
    for (kind, mask, covered, valid) in [
        (
            ObjectKind::Process,
            rule.strip_process,
            rule.objects.process,
            VALID_PROCESS_BITS,
        ),
        (
            ObjectKind::Thread,
            rule.strip_thread,
            rule.objects.thread,
            VALID_THREAD_BITS,
        ),
    ] {
        if mask != 0 && !covered {
            return Err(RuleError::StripForUncoveredObject(kind));
        }
        if mask & !valid != 0 {
            return Err(RuleError::UnknownBits(kind, mask & !valid));
        }
    }
    if rule.strip_process == 0 && rule.strip_thread == 0 {
        return Err(RuleError::StripsNothing);
    }
    Ok(())
}

/// Number of distinct requester-dependent entries the compiled form needs.
#[must_use]
pub fn requester_entry_count(policy: &Policy) -> usize {
    let mut keys: Vec<(&Selector, &Requester)> = Vec::new();
    for r in &policy.rules {
        if r.requester != Requester::Any
            && !keys
                .iter()
                .any(|(t, q)| *t == &r.target && *q == &r.requester)
        {
            keys.push((&r.target, &r.requester));
            if keys.len() > MAX_REQUESTER_ENTRIES {
                break;
            }
        }
    }
    keys.len()
}

impl Policy {
    /// Checks every rule and the policy-wide limits.
    ///
    /// # Errors
    /// The first problem found.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.rules.len() > MAX_RULES {
            return Err(PolicyError::TooManyRules(self.rules.len()));
        }
        let mut names: Vec<(&str, usize)> = self
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| (&*r.name, i))
            .collect();
        names.sort_unstable();
        for w in names.windows(2) {
            if let [(a, i), (b, j)] = w {
                if a == b {
                    let (first, second) = if i < j { (*i, *j) } else { (*j, *i) };
                    return Err(PolicyError::DuplicateRuleName {
                        name: Arc::from(*a),
                        first,
                        second,
                    });
                }
            }
        }
        for (index, rule) in self.rules.iter().enumerate() {
            validate_rule(rule, &self.settings)
                .map_err(|error| PolicyError::Rule { index, error })?;
        }
        let entries = requester_entry_count(self);
        if entries > MAX_REQUESTER_ENTRIES {
            return Err(PolicyError::TooManyRequesterEntries(entries));
        }
        Ok(())
    }
}
