//! The global allocator of the cross build: non-paged pool with the driver's
//! tag (the Windows build uses `wdk_alloc::WdkAllocator`, which does the same).

use core::alloc::{GlobalAlloc, Layout};

use crate::ffi::{ntddk, POOL_FLAG_NON_PAGED};

/// Pool tag of every allocation the driver makes: `PGrd` in a pool dump.
pub const POOL_TAG: u32 = u32::from_le_bytes(*b"PGrd");

/// Pool allocations are 16-byte aligned on x64; larger alignments are refused.
const POOL_ALIGNMENT: usize = 16;

/// Allocates from non-paged pool (usable at any IRQL up to `DISPATCH_LEVEL`,
/// so nothing the callbacks touch can page-fault).
pub struct PoolAllocator;

// SAFETY: every block comes from ExAllocatePool2 and goes back to
// ExFreePoolWithTag with the same tag; alignments the pool cannot honour
// return null, which GlobalAlloc allows.
unsafe impl GlobalAlloc for PoolAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() > POOL_ALIGNMENT {
            return core::ptr::null_mut();
        }
        // SAFETY: a plain pool request; a zero-size layout is never passed by
        // the alloc crate, and ExAllocatePool2 returns null on failure.
        unsafe { ntddk::ExAllocatePool2(POOL_FLAG_NON_PAGED, layout.size() as u64, POOL_TAG) }
            .cast()
    }

    unsafe fn dealloc(&self, pointer: *mut u8, _layout: Layout) {
        // SAFETY: `pointer` came from `alloc` above, with the same tag.
        unsafe { ntddk::ExFreePoolWithTag(pointer.cast(), POOL_TAG) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::ntddk::{reset_host, with_host};

    #[test]
    fn blocks_are_tagged_and_returned() {
        reset_host();
        let layout = Layout::from_size_align(100, 8).unwrap();
        // SAFETY: non-zero layout; freed below with the same allocator.
        let block = unsafe { PoolAllocator.alloc(layout) };
        assert!(!block.is_null());
        assert_eq!(
            with_host(|host| host.pool.get(&(block as usize)).copied()),
            Some((100, POOL_TAG))
        );
        // SAFETY: allocated above.
        unsafe { PoolAllocator.dealloc(block, layout) };
        assert!(with_host(|host| host.pool.is_empty()));
    }

    #[test]
    fn over_aligned_requests_are_refused_not_misaligned() {
        reset_host();
        let layout = Layout::from_size_align(64, 64).unwrap();
        // SAFETY: non-zero layout.
        let block = unsafe { PoolAllocator.alloc(layout) };
        assert!(block.is_null());
        assert!(with_host(|host| host.pool.is_empty()));
    }
}
