//! Stand-in for wdk-sys 0.5.2 (KMDF): the module layout of the published
//! crate over bindings generated on Linux (see build.rs). Types and constants
//! (C enums as modules of constants, extern variables such as
//! `PsProcessType`) at the root, kernel functions in [`ntddk`], WDF calls
//! through [`call_unsafe_wdf_function_binding!`] (the real wdk-macros).
#![no_std]
#![allow(missing_docs)]

#[doc(hidden)]
pub use wdk_macros as __proc_macros;

pub use crate::{constants::*, types::*};

/// Kernel functions of `ntifs.h`/`ntddk.h`/`ntstrsafe.h`.
pub mod ntddk {
    pub use bindings::*;

    // The Windows 10+ WDK declares KeGetCurrentIrql as an ntoskrnl function on
    // x64 (wdk-sys' own PAGED_CODE! calls `ntddk::KeGetCurrentIrql`);
    // mingw-w64 10 defines it inline, which bindgen skips. Its generated shape:
    unsafe extern "C" {
        pub fn KeGetCurrentIrql() -> crate::types::KIRQL;
    }

    #[allow(clippy::all, non_snake_case, non_camel_case_types, non_upper_case_globals)]
    mod bindings {
        #[allow(unused_imports)]
        use crate::types::*;
        include!(concat!(env!("OUT_DIR"), "/ntddk.rs"));
    }
}

/// Functions from the WDF headers (none: KMDF calls are inline wrappers).
pub mod wdf {
    #[allow(unused_imports)]
    pub use bindings::*;
    #[allow(clippy::all, non_snake_case, non_camel_case_types, non_upper_case_globals)]
    mod bindings {
        #[allow(unused_imports)]
        use crate::types::*;
        include!(concat!(env!("OUT_DIR"), "/wdf.rs"));
    }

    #[doc(hidden)]
    pub mod __private {
        include!(concat!(env!("OUT_DIR"), "/wdf_function_count.rs"));
    }
}

mod constants {
    pub use bindings::*;
    pub use kernel_mode::*;
    pub use wdf::*;

    use crate::types::NTSTATUS;

    #[allow(clippy::all, non_snake_case, non_camel_case_types, non_upper_case_globals)]
    mod bindings {
        #[allow(unused_imports)]
        use crate::types::*;
        include!(concat!(env!("OUT_DIR"), "/constants.rs"));
    }

    // wdk-sys' hand-written constants (src/constants.rs of 0.5.2).
    mod wdf {
        use crate::types::{PVOID, PWDF_OBJECT_ATTRIBUTES};
        pub const WDF_NO_OBJECT_ATTRIBUTES: PWDF_OBJECT_ATTRIBUTES = core::ptr::null_mut();
        pub const WDF_NO_EVENT_CALLBACK: PVOID = core::ptr::null_mut();
        pub const WDF_NO_HANDLE: PVOID = core::ptr::null_mut();
        pub const WDF_NO_CONTEXT: PVOID = core::ptr::null_mut();
        pub const WDF_NO_SEND_OPTIONS: PVOID = core::ptr::null_mut();
    }

    mod kernel_mode {
        use crate::types::POOL_FLAGS;
        pub const POOL_FLAG_USE_QUOTA: POOL_FLAGS = 0x0000_0000_0000_0001;
        pub const POOL_FLAG_UNINITIALIZED: POOL_FLAGS = 0x0000_0000_0000_0002;
        pub const POOL_FLAG_CACHE_ALIGNED: POOL_FLAGS = 0x0000_0000_0000_0008;
        pub const POOL_FLAG_NON_PAGED: POOL_FLAGS = 0x0000_0000_0000_0040;
        pub const POOL_FLAG_NON_PAGED_EXECUTE: POOL_FLAGS = 0x0000_0000_0000_0080;
        pub const POOL_FLAG_PAGED: POOL_FLAGS = 0x0000_0000_0000_0100;
    }

    include!(concat!(env!("OUT_DIR"), "/ntstatus.rs"));
}

#[allow(clippy::all, non_snake_case, non_camel_case_types, non_upper_case_globals)]
mod types {
    include!(concat!(env!("OUT_DIR"), "/types.rs"));
}

mod macros {
    include!(concat!(env!("OUT_DIR"), "/call_unsafe_wdf_function_binding.rs"));
}

#[allow(missing_docs)]
#[unsafe(no_mangle)]
pub static _fltused: () = ();

#[must_use]
#[allow(non_snake_case)]
pub const fn NT_SUCCESS(nt_status: NTSTATUS) -> bool {
    nt_status >= 0
}
