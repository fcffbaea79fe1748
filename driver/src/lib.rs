//! # procguard.sys
//!
//! A KMDF driver that registers `ObRegisterCallbacks` pre-operation callbacks
//! for process and thread handles and strips the access rights a policy
//! forbids from every handle being created or duplicated.
//!
//! Follow a handle request: [`callbacks::object_callbacks`] (reads the
//! kernel's request) → [`callbacks::handle_decision`] (process records,
//! decision, audit) → the policy engine
//! (`procguard_policy::CompiledPolicy::decide`).
//!
//! The modules, by concern: [`callbacks`] (the kernel's callbacks: handle
//! requests and process notifications), [`tracking`] (processes and their
//! records), [`state`] (policy generations and audit records that readers
//! see without locks), [`control`] (the control device, its IOCTLs, the
//! registry), [`platform`] (locks, pool, tracing, strings), and at the top
//! [`driver_state`] (what the driver owns), [`driver_entry`], `fx_entry` (the
//! Linux build's KMDF entry stub) and `ffi` (the binding layer). Imports go
//! one way between the groups: `callbacks` → `control` → `state` →
//! `tracking` → `platform`; only the top (`driver_state`, which every
//! callback receives as its context) is used from every level.
//!
//! One source, three builds (see `ffi`): Windows with the WDK (`--features
//! wdk`), the Linux cross build of the real `.sys`, and host unit tests with
//! kernel test doubles.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod ask;
pub mod callbacks;
pub mod control;
pub mod driver_entry;
pub mod driver_state;
#[cfg(test)]
mod end_to_end_tests;
pub mod ffi;
#[cfg(all(target_os = "windows", not(feature = "wdk")))]
pub mod fx_entry;
pub mod platform;
pub mod state;
pub mod tracking;

#[cfg(all(not(test), feature = "wdk"))]
extern crate wdk_panic;

/// Both Windows builds: `wdk_alloc::WdkAllocator` imports `ExAllocatePool2`,
/// which Windows 10 1903/1909 lack (see `pool`).
#[cfg(all(not(test), target_os = "windows"))]
#[global_allocator]
static GLOBAL_ALLOCATOR: platform::pool::PoolAllocator = platform::pool::PoolAllocator;

/// Required by the MSVC toolchain when floating point may appear; the driver
/// uses none (wdk-sys defines it in the Windows build).
#[cfg(all(target_os = "windows", not(feature = "wdk")))]
#[no_mangle]
pub static _fltused: i32 = 0;

/// A panic is a bug: stop the machine with a recognisable bug check
/// (`0x5047504E`, "PGPN") rather than run on in an unknown state.
/// The packaging check reports whether any panic path survived optimisation.
#[cfg(all(not(test), target_os = "windows", not(feature = "wdk")))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let line = info
        .location()
        .map_or(0, |location| u64::from(location.line()));
    // SAFETY: KeBugCheckEx never returns; the parameters are plain numbers.
    unsafe { ffi::ntddk::KeBugCheckEx(0x5047_504E, line, 0, 0, 0) }
}
