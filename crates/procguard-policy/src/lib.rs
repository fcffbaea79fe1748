//! procguard's policy engine: the rule model, the TOML front end people write, the
//! compiled blob the kernel trusts, and a two-phase decision whose hot half is
//! constant-time.
//!
//! `#![no_std]` + `alloc`, `#![forbid(unsafe_code)]`, no Windows dependency, and no
//! dependency at all without features.
//!
//! # Kernel side (no features)
//!
//! 1. [`CompiledPolicy::from_blob`] (PASSIVE): decode + validate + compile. Never
//!    panics; every allocation is fallible (`try_reserve`), exhaustion is
//!    [`DecodeError::OutOfMemory`], an invalid policy [`DecodeError::Invalid`] (no
//!    strings, so no allocation). The blob format is in [`format`]; [`policy_id`] /
//!    [`CompiledPolicy::policy_id`] give the CRC-32 used as policy id.
//!    [`CompiledPolicy::empty`] is the policy without rules, built without allocating.
//! 2. Phase 1, [`CompiledPolicy::classify`] (PASSIVE, once per process, at creation
//!    or enumeration; **allocates nothing**): a [`ProcessIdentity`] (PID + NT image
//!    path) becomes a [`ProcessRecord`] (64 bytes, `Copy`, no pointers, packs into
//!    [`RECORD_WORDS`] = 8 `u64`s with [`ProcessRecord::to_words`]). For processes with
//!    no record use [`CompiledPolicy::unknown_process_record`].
//! 3. Phase 2, [`CompiledPolicy::decide`] (any IRQL the callback runs at; no
//!    allocation, no string work, no loop over rules or processes): (target record,
//!    requester record, [`HandleRequest`]) becomes a [`Decision`] whose `access` is
//!    always a subset of the desired access. How it stays constant-time is in
//!    [`compiled`].
//!
//! # Semantics
//!
//! - A policy is an ordered list of [`Rule`]s plus [`Settings`]. A rule's
//!   [`RuleId`] is its index.
//! - **Target** and **requester** [`Selector`]s select a process when any of their
//!   image names, path patterns ([`glob`]) or PIDs matches. Names and paths compare
//!   case-insensitively, as Windows does.
//! - A **thread** handle is judged by the rules of the process owning the thread.
//! - For a **duplicate**, the requester is the process that *receives* the handle
//!   (`TargetProcess`), since that is who gains the access; the source process only
//!   loses nothing.
//! - Every matching enforce rule contributes its strip bits (union); audit rules
//!   contribute [`Decision::would_strip`] only. [`Decision::rule`] names the
//!   lowest-numbered responsible rule.
//! - **Ask** rules ([`Mode::Ask`]) apply after the enforce rules: the rights they
//!   name that the request still has are [`AskPlan::rights`], which the driver asks
//!   the connected handler about (it can only remove them); without an answer the
//!   rights of the ask rules with `on_timeout = strip` ([`AskPlan::fallback_strip`])
//!   are removed. Ask rules are never applied under an exemption.
//! - Exemptions ([`Settings`], all on by default, each documented there): kernel
//!   handles, a process opening itself, critical system processes as requesters
//!   (recognised by PID 4/0 or by image path in the system directory, see
//!   [`identity::is_critical_system_process`]). They are applied only when rules
//!   matched, and reported in [`Decision::exemption`].
//!
//! # Control-tool side
//!
//! [`encode`] / [`decode`] (always available), [`lint()`], [`explain()`], the
//! [`reference`](mod@reference) evaluator, and with feature **`toml`** the TOML parser
//! `toml::parse_policy` with line/column errors. An example policy is in
//! `examples/policy.toml`.
//!
//! # Features
//!
//! - `toml` (off by default): the TOML front end; pulls the `toml` crate and `std`.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(any(test, feature = "toml"))]
extern crate std;

pub mod blob;
pub mod compiled;
pub mod decide;
pub mod explain;
pub mod fallible;
#[doc = include_str!("../FORMAT.md")]
pub mod format {}
pub mod glob;
pub mod identity;
pub mod lint;
pub mod model;
pub mod reference;
pub mod rights;
#[cfg(feature = "toml")]
pub mod toml;
mod view;

pub use blob::{decode, encode, policy_id, DecodeError};
pub use compiled::{CompiledPolicy, ProcessRecord, RequesterPart, TargetPart, RECORD_WORDS};
pub use decide::{AskPlan, Decision, Exemption, HandleRequest};
pub use explain::{explain, Explanation};
pub use identity::{is_critical_system_process, ProcessIdentity};
pub use lint::{lint, LintKind, LintWarning};
pub use model::{
    Mode, ObjectKind, Objects, OnTimeout, Operation, Operations, Policy, PolicyError, PolicyFault,
    Requester, Rule, RuleError, RuleFault, RuleId, Selector, Settings, DEFAULT_ASK_TIMEOUT_MS,
    MAX_ASK_TIMEOUT_MS, MIN_ASK_TIMEOUT_MS,
};
pub use rights::AccessMask;
