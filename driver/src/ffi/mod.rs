//! The binding layer: the one seam between the two builds of the driver.
//!
//! - With the `wdk` feature (Windows, WDK installed) everything is re-exported
//!   from `wdk-sys`: types and constants at the root, kernel functions in
//!   [`ntddk`], WDF calls through `call_unsafe_wdf_function_binding!`.
//! - Without it, the same names with the same shapes come from [`types`] and
//!   from either the kernel's export tables (the cross build for
//!   `x86_64-pc-windows-msvc`: `ntoskrnl.exe` and `WDFLDR.SYS` linked as
//!   `raw-dylib`, WDF calls through the function table the loader fills) or
//!   host test doubles (`cargo test` on Linux).
//!
//! Every other module of the driver uses `crate::ffi::*` and is ignorant of
//! which build it is in.

// Also brings in wdk-sys's `#[macro_export]` `call_unsafe_wdf_function_binding!`.

#[cfg(feature = "wdk")]
pub use wdk_sys::*;

#[cfg(not(feature = "wdk"))]
pub mod types;
#[cfg(not(feature = "wdk"))]
pub use types::*;

// `PsProcessType`/`PsThreadType` at the root, as wdk-sys has them.
#[cfg(not(feature = "wdk"))]
mod kernel_variables;
#[cfg(not(feature = "wdk"))]
pub use kernel_variables::{PsProcessType, PsThreadType};

/// Kernel functions exported by `ntoskrnl.exe` (cross build).
#[cfg(all(not(feature = "wdk"), target_os = "windows"))]
#[path = "ntoskrnl_imports.rs"]
pub mod ntddk;

/// Kernel functions replaced by test doubles (host unit tests).
#[cfg(not(target_os = "windows"))]
#[path = "host_kernel.rs"]
pub mod ntddk;

/// `ExAllocatePoolWithTag`, the pool allocator's fallback where
/// `ExAllocatePool2` is not exported (Windows 10 1903/1909). wdk-sys leaves
/// it out (wdk-build 0.6.0 blocklists it as deprecated), so the WDK build
/// declares it here; ntoskrnl exports it on every supported Windows.
#[cfg(feature = "wdk")]
pub mod deprecated_pool {
    use super::{POOL_TYPE, PVOID, SIZE_T, ULONG};
    extern "C" {
        /// Allocates `NumberOfBytes` of `PoolType` pool tagged `Tag`; the
        /// block is not zeroed. IRQL <= DISPATCH_LEVEL for non-paged pool.
        pub fn ExAllocatePoolWithTag(
            PoolType: POOL_TYPE,
            NumberOfBytes: SIZE_T,
            Tag: ULONG,
        ) -> PVOID;
    }
}

/// `ExAllocatePoolWithTag` where the binding layer already declares it.
#[cfg(not(feature = "wdk"))]
pub mod deprecated_pool {
    pub use super::ntddk::ExAllocatePoolWithTag;
}

/// `ZwQuerySystemInformation` and its process list (not in the WDK headers).
pub mod system_information;

#[cfg(not(feature = "wdk"))]
pub mod wdf;

#[cfg(not(feature = "wdk"))]
pub(crate) use wdf::call_unsafe_wdf_function_binding;

#[cfg(all(test, not(feature = "wdk")))]
mod layout_check;
