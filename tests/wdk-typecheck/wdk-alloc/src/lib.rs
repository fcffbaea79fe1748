//! Stand-in for wdk-alloc 0.4.2: `WdkAllocator`, the same item the published
//! crate has (a unit struct implementing `GlobalAlloc` over `ExAllocatePool2`
//! and `ExFreePool`).
#![no_std]

use core::alloc::{GlobalAlloc, Layout};

use wdk_sys::ntddk::{ExAllocatePool2, ExFreePool};
use wdk_sys::{POOL_FLAG_NON_PAGED, SIZE_T, ULONG};

/// The kernel pool allocator.
pub struct WdkAllocator;

const RUST_TAG: ULONG = u32::from_ne_bytes(*b"rust");

// SAFETY: the pool returns memory aligned to 16 bytes or null.
unsafe impl GlobalAlloc for WdkAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: any size is a valid request.
        unsafe { ExAllocatePool2(POOL_FLAG_NON_PAGED, layout.size() as SIZE_T, RUST_TAG) }.cast()
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from `alloc`.
        unsafe { ExFreePool(ptr.cast()) }
    }
}
