//! Kernel synchronisation, wrapped once: a writer lock that owns the data
//! it protects and keeps its holder at PASSIVE_LEVEL, and a scope that runs a
//! few stores at DISPATCH_LEVEL.
//!
//! Only writers use these (process creation and exit, enumeration, policy
//! changes), all at PASSIVE_LEVEL. The callbacks never take a lock.
//!
//! Why an `ERESOURCE` and not a guarded mutex: since Windows 8 a guarded
//! mutex is a fast mutex, and its holder runs at APC_LEVEL; the writers call
//! PASSIVE-only functions while holding the lock (`Zw*` registry and query
//! functions, `PsSetCreateProcessNotifyRoutineEx`, `SeLocateProcessImageName`),
//! which Driver Verifier rejects there (IrqlZwPassive, IrqlPsPassive). An
//! `ERESOURCE` acquired inside a critical region leaves the IRQL alone; the
//! critical region (normal kernel APCs off) is what its documentation asks
//! of the acquirer, so the holder cannot be suspended while others wait.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::ffi::{ntddk, _MODE, ERESOURCE, KSPIN_LOCK, LARGE_INTEGER};

/// An executive resource, held exclusively, protecting a `T`. Acquire at
/// PASSIVE_LEVEL (the holder stays there). Its storage must be non-paged:
/// the driver state that holds it is allocated from non-paged pool.
pub struct PassiveLock<T> {
    resource: UnsafeCell<MaybeUninit<ERESOURCE>>,
    initialised: AtomicBool,
    data: UnsafeCell<T>,
}

// SAFETY: the data is only reached through `lock`, which holds the resource
// exclusively for the guard's lifetime, so at most one thread accesses it.
unsafe impl<T: Send> Sync for PassiveLock<T> {}
// SAFETY: moving the lock moves the data with it; the kernel object is only
// initialised after the value has reached its final address (`init`).
unsafe impl<T: Send> Send for PassiveLock<T> {}

/// Exclusive access to the data while the resource is held.
pub struct PassiveLockGuard<'a, T> {
    owner: &'a PassiveLock<T>,
}

impl<T> PassiveLock<T> {
    /// A lock that must be [`PassiveLock::init`]ialised at its final address
    /// before first use.
    pub const fn new(data: T) -> Self {
        Self {
            resource: UnsafeCell::new(MaybeUninit::uninit()),
            initialised: AtomicBool::new(false),
            data: UnsafeCell::new(data),
        }
    }

    /// Initialises the kernel object in place.
    ///
    /// # Safety
    /// Called once, before any `lock`, with `self` at the address it keeps
    /// until it is dropped, in non-paged memory.
    pub unsafe fn init(&self) {
        // SAFETY: the caller guarantees the final, non-paged address and a
        // single call; ExInitializeResourceLite writes the whole structure
        // and cannot fail for a valid address.
        unsafe { ntddk::ExInitializeResourceLite(self.resource.get().cast()) };
        self.initialised.store(true, Ordering::Release);
    }

    /// Acquires the resource exclusively (waits if another writer holds it),
    /// inside a critical region that the guard leaves on release.
    pub fn lock(&self) -> PassiveLockGuard<'_, T> {
        // SAFETY: no IRQL change; paired with KeLeaveCriticalRegion in drop.
        unsafe { ntddk::KeEnterCriticalRegion() };
        // SAFETY: initialised by `init` (the type's contract); Wait = TRUE,
        // so it returns only once the resource is held.
        unsafe { ntddk::ExAcquireResourceExclusiveLite(self.resource.get().cast(), 1) };
        PassiveLockGuard { owner: self }
    }
}

impl<T> Drop for PassiveLock<T> {
    fn drop(&mut self) {
        if self.initialised.load(Ordering::Acquire) {
            // SAFETY: initialised and, with `&mut self`, not held (a guard
            // borrows the lock); the kernel forgets it before the memory goes.
            unsafe { ntddk::ExDeleteResourceLite(self.resource.get().cast()) };
        }
    }
}

impl<T> core::ops::Deref for PassiveLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while the resource is held.
        unsafe { &*self.owner.data.get() }
    }
}

impl<T> core::ops::DerefMut for PassiveLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard exists only while the resource is held, and
        // `&mut self` makes this the only reference through it.
        unsafe { &mut *self.owner.data.get() }
    }
}

impl<T> Drop for PassiveLockGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: this guard acquired the resource and releases it once.
        unsafe { ntddk::ExReleaseResourceLite(self.owner.resource.get().cast()) };
        // SAFETY: leaves the critical region `lock` entered, after the
        // release (the resource must not be held with APCs enabled).
        unsafe { ntddk::KeLeaveCriticalRegion() };
    }
}

/// Runs `body` at DISPATCH_LEVEL (under a spin lock only this scope uses), so
/// the thread cannot be preempted in the middle: the process table's slot
/// writes use it, so that a reader never waits for a preempted writer.
/// Inlined: the callbacks' audit appends use it too (`audit_ring.rs`).
#[inline(always)]
pub fn without_preemption<R>(body: impl FnOnce() -> R) -> R {
    let mut lock: KSPIN_LOCK = 0;
    // SAFETY: a spin lock on this stack frame, acquired and released here.
    let old_irql = unsafe { ntddk::KeAcquireSpinLockRaiseToDpc(&raw mut lock) };
    let result = body();
    // SAFETY: releases the lock acquired above, restoring the old IRQL.
    unsafe { ntddk::KeReleaseSpinLock(&raw mut lock, old_irql) };
    result
}

/// Current IRQL.
pub fn current_irql() -> u8 {
    // SAFETY: a plain query, valid at any IRQL.
    unsafe { ntddk::KeGetCurrentIrql() }
}

/// Sleeps for about `microseconds` (PASSIVE_LEVEL only): how writers wait
/// for a grace period to end.
pub fn sleep_microseconds(microseconds: i64) {
    // Negative: a relative time, in 100 ns units.
    let mut interval = LARGE_INTEGER {
        QuadPart: -(microseconds.max(1) * 10),
    };
    // SAFETY: a kernel-mode, non-alertable wait on a local interval.
    unsafe { ntddk::KeDelayExecutionThread(_MODE::KernelMode as i8, 0, &raw mut interval) };
}

/// System time (100 ns units since 1601, UTC), for audit records.
/// Left uninitialised for the kernel to write: one store fewer on the
/// callbacks' audited path.
#[inline(always)]
pub fn system_time() -> i64 {
    let mut now = MaybeUninit::<LARGE_INTEGER>::uninit();
    // SAFETY: writes the time to a local.
    unsafe { ntddk::KeQuerySystemTimePrecise(now.as_mut_ptr()) };
    // SAFETY: KeQuerySystemTimePrecise wrote the whole LARGE_INTEGER.
    let now = unsafe { now.assume_init() };
    // SAFETY: QuadPart covers the whole union.
    unsafe { now.QuadPart }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::ntddk::{reset_host, with_host};

    #[test]
    fn the_guard_holds_the_resource_at_passive_level_in_a_critical_region() {
        reset_host();
        {
            let lock = PassiveLock::new(5);
            // SAFETY: a local that does not move before it is dropped.
            unsafe { lock.init() };
            {
                let mut guard = lock.lock();
                *guard += 1;
                with_host(|host| {
                    assert!(host.mutex_held);
                    assert_eq!(host.critical_regions, 1);
                });
                // What the writers call under the lock needs PASSIVE_LEVEL.
                assert_eq!(current_irql(), 0);
            }
            with_host(|host| {
                assert!(!host.mutex_held);
                assert_eq!(host.critical_regions, 0);
            });
            assert_eq!(*lock.lock(), 6);
            assert_eq!(with_host(|host| host.live_resources), 1);
        }
        // Dropping the lock deletes the resource.
        assert_eq!(with_host(|host| host.live_resources), 0);
    }

    #[test]
    fn without_preemption_runs_at_dispatch_and_restores_the_irql() {
        reset_host();
        let seen = without_preemption(current_irql);
        assert_eq!(seen, crate::ffi::DISPATCH_LEVEL as u8);
        assert_eq!(current_irql(), 0);
    }

    #[test]
    fn sleeping_and_time_go_through_the_kernel() {
        reset_host();
        sleep_microseconds(50);
        assert_eq!(with_host(|host| host.delays), 1);
        let first = system_time();
        assert!(system_time() > first);
    }
}
