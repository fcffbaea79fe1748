//! The decoded rule model: what a policy says, independent of how it was written.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use crate::glob::{self, GlobError};
use crate::identity::{self, ProcessIdentity};
use crate::rights::{AccessMask, VALID_PROCESS_BITS, VALID_THREAD_BITS};

/// Index of a rule in [`Policy::rules`] (its position in the source file).
pub type RuleId = u16;

/// Most rules a policy may hold ([`RuleId`] is 16 bits and `0xFFFF` means "none").
pub const MAX_RULES: usize = 0xFFFE;

/// Most distinct requester-dependent entries (see [`crate::compiled`]): rules whose
/// requester is not "any", and every ask rule, deduplicated by (target selector,
/// requester selector).
pub const MAX_REQUESTER_ENTRIES: usize = 63;

/// Default of [`Settings::ask_timeout_ms`]: long enough for a handler that answers
/// in well under a millisecond on a loaded machine (a few timer ticks of ~15.6 ms),
/// short enough that a stuck handler costs the requester a quarter second at most.
pub const DEFAULT_ASK_TIMEOUT_MS: u32 = 250;
/// Smallest valid [`Settings::ask_timeout_ms`].
pub const MIN_ASK_TIMEOUT_MS: u32 = 1;
/// Largest valid [`Settings::ask_timeout_ms`]: a requester (possibly a system
/// component) never waits more than 5 s for a handler.
pub const MAX_ASK_TIMEOUT_MS: u32 = 5000;

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

/// What an ask rule does with its rights when no answer comes in time (no
/// handler, timeout, pool full, unaskable request, disconnect).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OnTimeout {
    /// Remove the rule's `strip` set (fail closed): the default.
    #[default]
    Strip,
    /// Leave the request as the other rules left it (fail open).
    Allow,
}

impl OnTimeout {
    /// The TOML spelling: `"strip"` or `"allow"`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Strip => "strip",
            Self::Allow => "allow",
        }
    }
}

/// What a rule does with the rights it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Remove the rights.
    Enforce,
    /// Remove nothing; report what would have been removed.
    Audit,
    /// Ask the connected handler which of the rights to remove (it can only
    /// remove, never add); without an answer, `on_timeout` decides. Enforce rules
    /// apply first: the handler is asked only about what they left.
    Ask {
        /// What happens without an answer.
        on_timeout: OnTimeout,
    },
}

impl Mode {
    /// Whether this is an ask rule.
    #[must_use]
    pub const fn is_ask(self) -> bool {
        matches!(self, Self::Ask { .. })
    }

    /// The TOML spelling of the mode: `"enforce"`, `"audit"` or `"ask"`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Audit => "audit",
            Self::Ask { .. } => "ask",
        }
    }
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
    /// When false, rules apply to kernel handles as to any other request (the
    /// other exemptions still do).
    pub exempt_kernel_handles: bool,
    /// The critical system processes (System, smss, csrss, wininit, services, lsass;
    /// see [`identity::is_critical_system_process`]) keep every right as requesters:
    /// they open every process (csrss for console and exit, services for service
    /// control, lsass for authentication, smss/wininit for session setup) and a
    /// failure there can hang or bugcheck Windows.
    pub exempt_critical_requesters: bool,
    /// How long a request an ask rule applies to waits for the handler's answer,
    /// in milliseconds ([`MIN_ASK_TIMEOUT_MS`]..=[`MAX_ASK_TIMEOUT_MS`], default
    /// [`DEFAULT_ASK_TIMEOUT_MS`]). Past it the rules' `on_timeout` applies. The
    /// effective granularity on Windows is the timer tick (about 15.6 ms).
    pub ask_timeout_ms: u32,
}

impl Settings {
    /// The defaults: every exemption on, [`DEFAULT_ASK_TIMEOUT_MS`].
    pub const DEFAULT: Self = Self {
        exempt_self: true,
        exempt_kernel_handles: true,
        exempt_critical_requesters: true,
        ask_timeout_ms: DEFAULT_ASK_TIMEOUT_MS,
    };
}

impl Default for Settings {
    fn default() -> Self {
        Self::DEFAULT
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

// Names are quoted by hand, not with `{:?}`: `str`'s Debug escaping keeps a
// panic path in the kernel image (the driver prints these errors).
impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyName => f.write_str("the rule name is empty"),
            Self::EmptyTarget => f.write_str("the target selects no process (give name, path or pid)"),
            Self::EmptyRequester => f.write_str("the requester selector selects no process (give name, path or pid)"),
            Self::BadImageName(n) => write!(
                f,
                "image name \"{n}\" must be a plain file name without '\\', '*' or '?' (use 'path' for patterns)"
            ),
            Self::BadGlob(p, e) => write!(f, "path pattern \"{p}\" can never match: {e}"),
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
                "the requester selector includes the critical system process \"{what}\", which is exempt as a \
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
    /// [`Settings::ask_timeout_ms`] is outside
    /// [`MIN_ASK_TIMEOUT_MS`]..=[`MAX_ASK_TIMEOUT_MS`].
    AskTimeoutOutOfRange(u32),
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
            Self::AskTimeoutOutOfRange(ms) => write!(
                f,
                "settings.ask_timeout_ms = {ms} is out of range: give {MIN_ASK_TIMEOUT_MS}..={MAX_ASK_TIMEOUT_MS} \
                 milliseconds"
            ),
            Self::TooManyRules(n) => write!(f, "{n} rules; at most {MAX_RULES} are allowed"),
            Self::DuplicateRuleName { name, first, second } => {
                write!(f, "rules {first} and {second} are both named \"{name}\"; rule names must be unique")
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

/// Whether an ask timeout is in [`MIN_ASK_TIMEOUT_MS`]..=[`MAX_ASK_TIMEOUT_MS`].
#[must_use]
pub const fn ask_timeout_ok(ms: u32) -> bool {
    ms >= MIN_ASK_TIMEOUT_MS && ms <= MAX_ASK_TIMEOUT_MS
}

/// Checks an image name selector entry.
///
/// # Errors
/// [`RuleError::BadImageName`].
pub fn validate_image_name(name: &Arc<str>) -> Result<(), RuleError> {
    if image_name_ok(name) {
        Ok(())
    } else {
        Err(RuleError::BadImageName(name.clone()))
    }
}

pub(crate) fn image_name_ok(name: &str) -> bool {
    !(name.is_empty() || name.contains(['\\', '*', '?', '\0']))
}

/// What rule validation needs from a selector: implemented by [`Selector`] and by
/// the kernel's view of a selector inside a blob, so both are checked by the same
/// code ([`check_rule`]).
pub(crate) trait SelectorLike {
    /// How a string of the selector is held.
    type Str: AsRef<str> + Clone;
    fn names(&self) -> impl Iterator<Item = Self::Str>;
    fn paths(&self) -> impl Iterator<Item = Self::Str>;
    fn pids(&self) -> impl Iterator<Item = u32>;
    fn is_empty(&self) -> bool;
}

impl<'s> SelectorLike for &'s Selector {
    type Str = &'s Arc<str>;
    fn names(&self) -> impl Iterator<Item = Self::Str> {
        let s: &'s Selector = self;
        s.names.iter()
    }
    fn paths(&self) -> impl Iterator<Item = Self::Str> {
        let s: &'s Selector = self;
        s.paths.iter()
    }
    fn pids(&self) -> impl Iterator<Item = u32> {
        let s: &'s Selector = self;
        s.pids.iter().copied()
    }
    fn is_empty(&self) -> bool {
        Selector::is_empty(self)
    }
}

/// What rule validation needs from a rule (see [`SelectorLike`]).
pub(crate) trait RuleLike {
    type Sel: SelectorLike;
    fn name_is_empty(&self) -> bool;
    fn target(&self) -> Self::Sel;
    /// The requester selector and whether it is "any except"; `None` for "any".
    fn requester(&self) -> Option<(Self::Sel, bool)>;
    fn objects(&self) -> Objects;
    fn operations(&self) -> Operations;
    fn strip_process(&self) -> AccessMask;
    fn strip_thread(&self) -> AccessMask;
}

impl<'r> RuleLike for &'r Rule {
    type Sel = &'r Selector;
    fn name_is_empty(&self) -> bool {
        self.name.is_empty()
    }
    fn target(&self) -> &'r Selector {
        let r: &'r Rule = self;
        &r.target
    }
    fn requester(&self) -> Option<(&'r Selector, bool)> {
        let r: &'r Rule = self;
        match &r.requester {
            Requester::Any => None,
            Requester::Only(s) => Some((s, false)),
            Requester::AnyExcept(s) => Some((s, true)),
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

/// A rule check failure: the fault, and the selector string it is about (none for
/// the PID 4/0 case of [`RuleFault::StripsFromCriticalProcess`]).
pub(crate) type RuleCheck<S> = Result<(), (RuleFault, Option<S>)>;

fn check_selector<S: SelectorLike>(s: &S) -> RuleCheck<S::Str> {
    for n in s.names() {
        if !image_name_ok(n.as_ref()) {
            return Err((RuleFault::BadImageName, Some(n)));
        }
    }
    for p in s.paths() {
        if let Err(e) = glob::validate(p.as_ref()) {
            return Err((RuleFault::BadGlob(e), Some(p)));
        }
    }
    Ok(())
}

/// Which entry of a selector selects a critical system process (no allocation).
/// `Some(None)`: PID 4 or 0.
pub(crate) fn critical_entry<S: SelectorLike>(s: &S) -> Option<Option<S::Str>> {
    if s.pids()
        .any(|p| p == identity::SYSTEM_PID || p == identity::IDLE_PID)
    {
        return Some(None);
    }
    for n in s.names() {
        if identity::CRITICAL_IMAGE_NAMES
            .iter()
            .any(|c| identity::eq_fold(c, n.as_ref()))
        {
            return Some(Some(n));
        }
    }
    for p in s.paths() {
        if glob::validate(p.as_ref()).is_err() {
            continue;
        }
        for c in identity::CRITICAL_IMAGE_NAMES {
            for dir in [
                "\\SystemRoot\\System32",
                "\\Device\\HarddiskVolume1\\Windows\\System32",
            ] {
                let text = glob::str_components(dir).chain(core::iter::once(glob::fold_chars(c)));
                if glob::path_matches(glob::str_components(p.as_ref()), text) {
                    return Some(Some(p));
                }
            }
        }
    }
    None
}

/// If the selector explicitly selects a critical system process, names the entry.
#[must_use]
pub fn selects_critical_process(s: &Selector) -> Option<Arc<str>> {
    critical_entry(&s).map(|which| match which {
        Some(n) => n.clone(),
        None => Arc::from(CRITICAL_PID_ENTRY),
    })
}

const CRITICAL_PID_ENTRY: &str = "System (PID 4/0)";

/// Checks one rule (the code shared by [`validate_rule`] and the kernel's blob
/// validation; no allocation).
pub(crate) fn check_rule<R: RuleLike>(
    rule: &R,
    settings: &Settings,
) -> RuleCheck<<R::Sel as SelectorLike>::Str> {
    if rule.name_is_empty() {
        return Err((RuleFault::EmptyName, None));
    }
    let target = rule.target();
    if target.is_empty() {
        return Err((RuleFault::EmptyTarget, None));
    }
    check_selector(&target)?;
    if let Some((s, except)) = rule.requester() {
        if s.is_empty() {
            return Err((RuleFault::EmptyRequester, None));
        }
        check_selector(&s)?;
        if !except && settings.exempt_critical_requesters {
            if let Some(what) = critical_entry(&s) {
                return Err((RuleFault::StripsFromCriticalProcess, what));
            }
        }
    }
    let objects = rule.objects();
    let operations = rule.operations();
    if !objects.process && !objects.thread {
        return Err((RuleFault::NoObjects, None));
    }
    if !operations.create && !operations.duplicate {
        return Err((RuleFault::NoOperations, None));
    }
    for (kind, mask, covered, valid) in [
        (
            ObjectKind::Process,
            rule.strip_process(),
            objects.process,
            VALID_PROCESS_BITS,
        ),
        (
            ObjectKind::Thread,
            rule.strip_thread(),
            objects.thread,
            VALID_THREAD_BITS,
        ),
    ] {
        if mask != 0 && !covered {
            return Err((RuleFault::StripForUncoveredObject(kind), None));
        }
        if mask & !valid != 0 {
            return Err((RuleFault::UnknownBits(kind, mask & !valid), None));
        }
    }
    if rule.strip_process() == 0 && rule.strip_thread() == 0 {
        return Err((RuleFault::StripsNothing, None));
    }
    Ok(())
}

/// Checks one rule against the settings.
///
/// # Errors
/// The first problem found.
pub fn validate_rule(rule: &Rule, settings: &Settings) -> Result<(), RuleError> {
    check_rule(&rule, settings).map_err(|(fault, which)| {
        let text = || match which {
            Some(s) => s.clone(),
            None => Arc::from(CRITICAL_PID_ENTRY),
        };
        match fault {
            RuleFault::EmptyName => RuleError::EmptyName,
            RuleFault::EmptyTarget => RuleError::EmptyTarget,
            RuleFault::EmptyRequester => RuleError::EmptyRequester,
            RuleFault::BadImageName => RuleError::BadImageName(text()),
            RuleFault::BadGlob(e) => RuleError::BadGlob(text(), e),
            RuleFault::NoObjects => RuleError::NoObjects,
            RuleFault::NoOperations => RuleError::NoOperations,
            RuleFault::StripsNothing => RuleError::StripsNothing,
            RuleFault::StripForUncoveredObject(k) => RuleError::StripForUncoveredObject(k),
            RuleFault::UnknownBits(k, m) => RuleError::UnknownBits(k, m),
            RuleFault::StripsFromCriticalProcess => RuleError::StripsFromCriticalProcess(text()),
        }
    })
}

/// A [`RuleError`] without its string: what the kernel-side
/// [`CompiledPolicy::from_blob`](crate::CompiledPolicy::from_blob) reports, since
/// building an error string would allocate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuleFault {
    /// [`RuleError::EmptyName`].
    EmptyName,
    /// [`RuleError::EmptyTarget`].
    EmptyTarget,
    /// [`RuleError::EmptyRequester`].
    EmptyRequester,
    /// [`RuleError::BadImageName`].
    BadImageName,
    /// [`RuleError::BadGlob`].
    BadGlob(GlobError),
    /// [`RuleError::NoObjects`].
    NoObjects,
    /// [`RuleError::NoOperations`].
    NoOperations,
    /// [`RuleError::StripsNothing`].
    StripsNothing,
    /// [`RuleError::StripForUncoveredObject`].
    StripForUncoveredObject(ObjectKind),
    /// [`RuleError::UnknownBits`].
    UnknownBits(ObjectKind, AccessMask),
    /// [`RuleError::StripsFromCriticalProcess`].
    StripsFromCriticalProcess,
}

impl fmt::Display for RuleFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadImageName => f.write_str(
                "an image name is empty or contains '\\', '*' or '?' (use 'path' for patterns)",
            ),
            Self::BadGlob(e) => write!(f, "a path pattern can never match: {e}"),
            Self::StripsFromCriticalProcess => f.write_str(
                "the requester selector includes a critical system process, which is exempt as a \
                 requester (settings.exempt_critical_requesters)",
            ),
            Self::EmptyName => RuleError::EmptyName.fmt(f),
            Self::EmptyTarget => RuleError::EmptyTarget.fmt(f),
            Self::EmptyRequester => RuleError::EmptyRequester.fmt(f),
            Self::NoObjects => RuleError::NoObjects.fmt(f),
            Self::NoOperations => RuleError::NoOperations.fmt(f),
            Self::StripsNothing => RuleError::StripsNothing.fmt(f),
            Self::StripForUncoveredObject(k) => RuleError::StripForUncoveredObject(*k).fmt(f),
            Self::UnknownBits(k, m) => RuleError::UnknownBits(*k, *m).fmt(f),
        }
    }
}

impl RuleError {
    /// The same error without its string.
    #[must_use]
    pub fn fault(&self) -> RuleFault {
        match self {
            Self::EmptyName => RuleFault::EmptyName,
            Self::EmptyTarget => RuleFault::EmptyTarget,
            Self::EmptyRequester => RuleFault::EmptyRequester,
            Self::BadImageName(_) => RuleFault::BadImageName,
            Self::BadGlob(_, e) => RuleFault::BadGlob(*e),
            Self::NoObjects => RuleFault::NoObjects,
            Self::NoOperations => RuleFault::NoOperations,
            Self::StripsNothing => RuleFault::StripsNothing,
            Self::StripForUncoveredObject(k) => RuleFault::StripForUncoveredObject(*k),
            Self::UnknownBits(k, m) => RuleFault::UnknownBits(*k, *m),
            Self::StripsFromCriticalProcess(_) => RuleFault::StripsFromCriticalProcess,
        }
    }
}

/// A [`PolicyError`] without its strings (see [`RuleFault`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PolicyFault {
    /// [`PolicyError::AskTimeoutOutOfRange`].
    AskTimeoutOutOfRange(u32),
    /// [`PolicyError::TooManyRules`].
    TooManyRules(usize),
    /// [`PolicyError::DuplicateRuleName`].
    DuplicateRuleName {
        /// Index of the first rule.
        first: usize,
        /// Index of the second rule.
        second: usize,
    },
    /// [`PolicyError::TooManyRequesterEntries`].
    TooManyRequesterEntries(usize),
    /// [`PolicyError::Rule`].
    Rule {
        /// The rule's index.
        index: usize,
        /// What is wrong.
        error: RuleFault,
    },
}

impl fmt::Display for PolicyFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AskTimeoutOutOfRange(ms) => PolicyError::AskTimeoutOutOfRange(*ms).fmt(f),
            Self::TooManyRules(n) => PolicyError::TooManyRules(*n).fmt(f),
            Self::DuplicateRuleName { first, second } => write!(
                f,
                "rules {first} and {second} have the same name; rule names must be unique"
            ),
            Self::TooManyRequesterEntries(n) => PolicyError::TooManyRequesterEntries(*n).fmt(f),
            Self::Rule { index, error } => write!(f, "rule {index}: {error}"),
        }
    }
}

impl PolicyError {
    /// The same error without its strings.
    #[must_use]
    pub fn fault(&self) -> PolicyFault {
        match self {
            Self::AskTimeoutOutOfRange(ms) => PolicyFault::AskTimeoutOutOfRange(*ms),
            Self::TooManyRules(n) => PolicyFault::TooManyRules(*n),
            Self::DuplicateRuleName { first, second, .. } => PolicyFault::DuplicateRuleName {
                first: *first,
                second: *second,
            },
            Self::TooManyRequesterEntries(n) => PolicyFault::TooManyRequesterEntries(*n),
            Self::Rule { index, error } => PolicyFault::Rule {
                index: *index,
                error: error.fault(),
            },
        }
    }
}

/// Whether a rule becomes a requester-dependent entry of the compiled form: its
/// requester is not "any", or it is an ask rule (ask rules live only in entries,
/// so a process record never carries them).
#[must_use]
pub fn is_requester_entry(rule: &Rule) -> bool {
    rule.requester != Requester::Any || rule.mode.is_ask()
}

/// Number of distinct requester-dependent entries the compiled form needs.
#[must_use]
pub fn requester_entry_count(policy: &Policy) -> usize {
    let mut keys: Vec<(&Selector, &Requester)> = Vec::new();
    for r in &policy.rules {
        if is_requester_entry(r)
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
        let ms = self.settings.ask_timeout_ms;
        if !ask_timeout_ok(ms) {
            return Err(PolicyError::AskTimeoutOutOfRange(ms));
        }
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
