//! The global allocator of both Windows builds: non-paged, no-execute pool
//! with the driver's tag.
//!
//! The image must not import `ExAllocatePool2`: it exists from Windows 10
//! 2004 on, and an unresolved import fails the load on the floor (1903/1909).
//! [`resolve_allocator`] looks it up once with `MmGetSystemRoutineAddress`
//! (PASSIVE_LEVEL only) at the start of `DriverEntry`; allocations then call
//! it through the resolved address, and fall back to
//! `ExAllocatePoolWithTag(NonPagedPoolNx)` plus zeroing (what `ExAllocatePool2`
//! guarantees) when it is absent — or not yet resolved: an allocation may come
//! before the lookup, or at DISPATCH_LEVEL where the lookup is not allowed,
//! and the fallback is right at any IRQL up to DISPATCH_LEVEL.
//!
//! The WDK build uses this allocator too: `wdk-alloc` 0.4.2's `WdkAllocator`
//! imports `ExAllocatePool2` (checked in its sources), the same defect.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::ffi::{
    deprecated_pool, ntddk, _POOL_TYPE, POOL_FLAGS, POOL_FLAG_NON_PAGED, PVOID, SIZE_T, ULONG,
};
use crate::platform::wide_string::{unicode_string, utf16};

/// Pool tag of every allocation the driver makes: `PGrd` in a pool dump.
pub const POOL_TAG: u32 = u32::from_le_bytes(*b"PGrd");

/// Pool allocations are 16-byte aligned on x64; larger alignments are refused.
const POOL_ALIGNMENT: usize = 16;

/// `ExAllocatePool2`'s prototype (wdm.h).
type ExAllocatePool2Fn =
    unsafe extern "system" fn(flags: POOL_FLAGS, bytes: SIZE_T, tag: ULONG) -> PVOID;

/// The run-time lookup of `ExAllocatePool2`.
struct Lookup {
    /// Its address once resolved; 0 = absent or not resolved yet.
    address: AtomicUsize,
    /// Set by the first [`resolve_allocator`]: the lookup runs once.
    resolved: AtomicBool,
}

impl Lookup {
    const fn new() -> Self {
        Self {
            address: AtomicUsize::new(0),
            resolved: AtomicBool::new(false),
        }
    }
}

#[cfg(not(test))]
static LOOKUP: Lookup = Lookup::new();

#[cfg(not(test))]
fn lookup<R>(f: impl FnOnce(&Lookup) -> R) -> R {
    f(&LOOKUP)
}

// Host tests: one lookup per test thread, like the fake kernel it resolves against.
#[cfg(test)]
std::thread_local! {
    static LOOKUP: Lookup = const { Lookup::new() };
}

#[cfg(test)]
fn lookup<R>(f: impl FnOnce(&Lookup) -> R) -> R {
    LOOKUP.with(f)
}

const EX_ALLOCATE_POOL2_NAME: [u16; 15] = utf16("ExAllocatePool2");

/// Which routine serves allocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolRoutine {
    /// `ExAllocatePool2` (Windows 10 2004 and later), found at run time.
    ExAllocatePool2,
    /// `ExAllocatePoolWithTag(NonPagedPoolNx)` plus zeroing.
    ExAllocatePoolWithTag,
}

/// Looks `ExAllocatePool2` up once. Call at PASSIVE_LEVEL (`DriverEntry`)
/// before the driver allocates; later calls return the first answer.
pub fn resolve_allocator() -> PoolRoutine {
    lookup(|lookup| {
        if !lookup.resolved.swap(true, Ordering::AcqRel) {
            let mut name = unicode_string(&EX_ALLOCATE_POOL2_NAME);
            // SAFETY: PASSIVE_LEVEL (documented contract of this function);
            // the kernel only reads the name, which lives in a constant.
            let address = unsafe { ntddk::MmGetSystemRoutineAddress(&mut name) };
            lookup.address.store(address as usize, Ordering::Release);
        }
    });
    current_routine()
}

/// The routine allocations use now.
pub fn current_routine() -> PoolRoutine {
    if lookup(|lookup| lookup.address.load(Ordering::Acquire)) == 0 {
        PoolRoutine::ExAllocatePoolWithTag
    } else {
        PoolRoutine::ExAllocatePool2
    }
}

/// Forgets the lookup (host tests: each test resolves against its own fake kernel).
#[cfg(test)]
pub fn reset_for_test() {
    lookup(|lookup| {
        lookup.address.store(0, Ordering::Release);
        lookup.resolved.store(false, Ordering::Release);
    });
}

/// Zeroed non-paged pool of `size` bytes with the driver's tag, or null.
fn allocate(size: usize) -> *mut u8 {
    let Ok(bytes) = SIZE_T::try_from(size) else {
        return core::ptr::null_mut();
    };
    let address = lookup(|lookup| lookup.address.load(Ordering::Acquire));
    if address != 0 {
        // SAFETY: `address` is what MmGetSystemRoutineAddress returned for
        // "ExAllocatePool2" (never changed afterwards), so it is that routine,
        // with that prototype.
        let routine = unsafe { core::mem::transmute::<usize, ExAllocatePool2Fn>(address) };
        // SAFETY: a plain non-paged request (any IRQL up to DISPATCH_LEVEL);
        // null on failure; ExAllocatePool2 zeroes the block.
        return unsafe { routine(POOL_FLAG_NON_PAGED, bytes, POOL_TAG) }.cast();
    }
    // SAFETY: non-paged pool may be requested at any IRQL up to DISPATCH_LEVEL;
    // null on failure.
    let block = unsafe {
        deprecated_pool::ExAllocatePoolWithTag(_POOL_TYPE::NonPagedPoolNx, bytes, POOL_TAG)
    }
    .cast::<u8>();
    if !block.is_null() {
        // SAFETY: the block holds `size` writable bytes.
        unsafe { core::ptr::write_bytes(block, 0, size) };
    }
    block
}

/// Allocates from non-paged pool (usable at any IRQL up to `DISPATCH_LEVEL`,
/// so nothing the callbacks touch can page-fault).
pub struct PoolAllocator;

// SAFETY: every block comes from ExAllocatePool2 or ExAllocatePoolWithTag
// (16-byte aligned, at least `size` bytes) and goes back to ExFreePoolWithTag
// with the same tag; alignments the pool cannot honour return null, which
// GlobalAlloc allows.
unsafe impl GlobalAlloc for PoolAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() > POOL_ALIGNMENT {
            return core::ptr::null_mut();
        }
        allocate(layout.size())
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

    fn allocate_and_check(routine: PoolRoutine) {
        let layout = Layout::from_size_align(100, 8).unwrap();
        // SAFETY: non-zero layout; freed below with the same allocator.
        let block = unsafe { PoolAllocator.alloc(layout) };
        assert!(!block.is_null());
        assert_eq!(
            with_host(|host| host.pool.get(&(block as usize)).copied()),
            Some((100, POOL_TAG))
        );
        // SAFETY: 100 bytes were allocated.
        let bytes = unsafe { core::slice::from_raw_parts(block, 100) };
        assert!(
            bytes.iter().all(|&byte| byte == 0),
            "{routine:?}: not zeroed"
        );
        let calls = with_host(|host| host.pool_routine_calls.clone());
        let expected = match routine {
            PoolRoutine::ExAllocatePool2 => "ExAllocatePool2",
            PoolRoutine::ExAllocatePoolWithTag => "ExAllocatePoolWithTag",
        };
        assert_eq!(calls.last().map(String::as_str), Some(expected));
        // SAFETY: allocated above.
        unsafe { PoolAllocator.dealloc(block, layout) };
        assert!(with_host(|host| host.pool.is_empty()));
    }

    #[test]
    fn found_pool2_serves_allocations() {
        reset_host();
        reset_for_test();
        assert_eq!(resolve_allocator(), PoolRoutine::ExAllocatePool2);
        assert_eq!(
            with_host(|host| host.routine_lookups.clone()),
            vec!["ExAllocatePool2".to_string()]
        );
        allocate_and_check(PoolRoutine::ExAllocatePool2);
        reset_for_test();
    }

    #[test]
    fn missing_pool2_falls_back_to_nx_pool_with_tag_zeroed() {
        reset_host();
        reset_for_test();
        // Windows 10 1903/1909: no ExAllocatePool2 export.
        with_host(|host| host.missing_routines.push("ExAllocatePool2".to_string()));
        assert_eq!(resolve_allocator(), PoolRoutine::ExAllocatePoolWithTag);
        // The fake ExAllocatePoolWithTag fills blocks with 0xCC: zeroing is ours.
        allocate_and_check(PoolRoutine::ExAllocatePoolWithTag);
        reset_for_test();
    }

    #[test]
    fn before_the_lookup_allocations_use_the_fallback_and_the_lookup_runs_once() {
        reset_host();
        reset_for_test();
        allocate_and_check(PoolRoutine::ExAllocatePoolWithTag);
        assert_eq!(resolve_allocator(), PoolRoutine::ExAllocatePool2);
        assert_eq!(resolve_allocator(), PoolRoutine::ExAllocatePool2);
        assert_eq!(with_host(|host| host.routine_lookups.len()), 1);
        reset_for_test();
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
