//! `PsProcessType` and `PsThreadType` for the builds without the WDK, with
//! the shape `wdk-sys` gives them: root-level `static mut X: *mut POBJECT_TYPE`.
//!
//! The WDK headers declare `extern POBJECT_TYPE *PsProcessType;`: the C name
//! stands for the import slot, which holds the ADDRESS of the kernel's
//! variable (`POBJECT_TYPE*`). So `PsProcessType` is what
//! `OB_OPERATION_REGISTRATION.ObjectType` wants, and `*PsProcessType` is the
//! object type the object manager puts in `OB_PRE_OPERATION_INFORMATION`.
#![allow(non_upper_case_globals, missing_docs)]

use super::types::POBJECT_TYPE;

/// Cross build: the import slot itself. The `raw-dylib` block makes rustc
/// import the two data exports from `ntoskrnl.exe` (which defines
/// `__imp_PsProcessType`, the slot the loader fills with the variable's
/// address); the second block names that slot `PsProcessType`.
#[cfg(target_os = "windows")]
mod imported {
    use super::POBJECT_TYPE;

    // Never read under these names: declared so that rustc imports them.
    #[allow(dead_code)]
    #[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
    unsafe extern "C" {
        #[link_name = "PsProcessType"]
        static PS_PROCESS_TYPE_EXPORT: POBJECT_TYPE;
        #[link_name = "PsThreadType"]
        static PS_THREAD_TYPE_EXPORT: POBJECT_TYPE;
    }

    unsafe extern "C" {
        #[link_name = "__imp_PsProcessType"]
        pub static mut PsProcessType: *mut POBJECT_TYPE;
        #[link_name = "__imp_PsThreadType"]
        pub static mut PsThreadType: *mut POBJECT_TYPE;
    }
}
#[cfg(target_os = "windows")]
pub use imported::{PsProcessType, PsThreadType};

/// Host tests: the fake kernel's variables and the slots pointing at them.
#[cfg(not(target_os = "windows"))]
mod fake {
    use super::POBJECT_TYPE;
    use crate::ffi::ntddk::{FAKE_PROCESS_TYPE, FAKE_THREAD_TYPE};

    static mut PS_PROCESS_TYPE_VARIABLE: POBJECT_TYPE = FAKE_PROCESS_TYPE as POBJECT_TYPE;
    static mut PS_THREAD_TYPE_VARIABLE: POBJECT_TYPE = FAKE_THREAD_TYPE as POBJECT_TYPE;

    pub static mut PsProcessType: *mut POBJECT_TYPE = &raw mut PS_PROCESS_TYPE_VARIABLE;
    pub static mut PsThreadType: *mut POBJECT_TYPE = &raw mut PS_THREAD_TYPE_VARIABLE;
}
#[cfg(not(target_os = "windows"))]
pub use fake::{PsProcessType, PsThreadType};
