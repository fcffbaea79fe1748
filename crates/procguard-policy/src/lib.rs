//! procguard's policy engine.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(any(test, feature = "toml"))]
extern crate std;

pub mod blob;
pub mod compiled;
pub mod decide;
pub mod explain;
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

pub use blob::{decode, encode, policy_id, DecodeError};
pub use compiled::{CompiledPolicy, ProcessRecord};
pub use decide::{Decision, Exemption, HandleRequest};
pub use explain::{explain, Explanation};
pub use identity::{is_critical_system_process, ProcessIdentity};
pub use lint::{lint, LintKind, LintWarning};
pub use model::{
    Mode, ObjectKind, Objects, Operation, Operations, Policy, PolicyError, Requester, Rule,
    RuleError, RuleId, Selector, Settings,
};
pub use rights::AccessMask;
