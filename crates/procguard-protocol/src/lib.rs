//! The contract between procguard.sys and user mode: one definition, used by
//! the driver and by the control tool — the audit record and the control
//! device's IOCTLs (codes and every request and response structure).
//!
//! `no_std`, no dependencies, no `unsafe`: the driver compiles it for the
//! kernel, the control tool for user mode.
#![no_std]
#![forbid(unsafe_code)]

pub mod ask;
pub mod audit_record;
pub mod dispatch;
pub mod ioctl;
#[cfg(any(test, feature = "memory-target"))]
pub mod memory_target;

pub use audit_record::{
    AuditMode, AuditObject, AuditRecord, PolicySource, AUDIT_RECORD_BYTES, AUDIT_RECORD_WORDS,
};
