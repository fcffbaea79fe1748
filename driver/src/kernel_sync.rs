//! Kernel synchronisation, wrapped once: a guarded mutex that owns the data
//! it protects, and a scope that runs a few stores at DISPATCH_LEVEL.
//!
//! Only writers use these (process creation and exit, enumeration, policy
//! changes), all at PASSIVE_LEVEL. The callbacks never take a lock.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;

use crate::ffi::{ntddk, _MODE, KGUARDED_MUTEX, KSPIN_LOCK, LARGE_INTEGER};

/// A `KGUARDED_MUTEX` protecting a `T`. Acquire at IRQL ≤ APC_LEVEL only.
pub struct GuardedMutex<T> {
    mutex: UnsafeCell<MaybeUninit<KGUARDED_MUTEX>>,
    data: UnsafeCell<T>,
}

// SAFETY: the data is only reached through `lock`, which holds the kernel
// mutex for the guard's lifetime, so at most one thread accesses it at a time.
unsafe impl<T: Send> Sync for GuardedMutex<T> {}
// SAFETY: moving the mutex moves the data with it; the kernel object is only
// initialised after the value has reached its final address (`init`).
unsafe impl<T: Send> Send for GuardedMutex<T> {}

/// Exclusive access to the data while the mutex is held.
pub struct GuardedMutexGuard<'a, T> {
    owner: &'a GuardedMutex<T>,
}

impl<T> GuardedMutex<T> {
    /// A mutex that must be [`GuardedMutex::init`]ialised at its final address
    /// before first use.
    pub const fn new(data: T) -> Self {
        Self {
            mutex: UnsafeCell::new(MaybeUninit::uninit()),
            data: UnsafeCell::new(data),
        }
    }

    /// Initialises the kernel object in place.
    ///
    /// # Safety
    /// Called once, before any `lock`, with `self` at the address it keeps
    /// (it is heap-allocated or static and never moved afterwards).
    pub unsafe fn init(&self) {
        // SAFETY: the caller guarantees the final address and single call;
        // KeInitializeGuardedMutex writes the whole structure.
        unsafe { ntddk::KeInitializeGuardedMutex(self.mutex.get().cast()) };
    }

    /// Acquires the mutex (waits if another writer holds it).
    pub fn lock(&self) -> GuardedMutexGuard<'_, T> {
        // SAFETY: initialised by `init` (the type's contract); the kernel
        // serialises acquisitions.
        unsafe { ntddk::KeAcquireGuardedMutex(self.mutex.get().cast()) };
        GuardedMutexGuard { owner: self }
    }
}

impl<T> core::ops::Deref for GuardedMutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while the mutex is held.
        unsafe { &*self.owner.data.get() }
    }
}

impl<T> core::ops::DerefMut for GuardedMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard exists only while the mutex is held, and `&mut
        // self` makes this the only reference through it.
        unsafe { &mut *self.owner.data.get() }
    }
}

impl<T> Drop for GuardedMutexGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: this guard acquired the mutex and releases it once.
        unsafe { ntddk::KeReleaseGuardedMutex(self.owner.mutex.get().cast()) };
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
    fn the_guard_holds_the_mutex_and_releases_it() {
        reset_host();
        let mutex = GuardedMutex::new(5);
        // SAFETY: a local that does not move before it is dropped.
        unsafe { mutex.init() };
        {
            let mut guard = mutex.lock();
            *guard += 1;
            assert!(with_host(|host| host.mutex_held));
        }
        assert!(!with_host(|host| host.mutex_held));
        assert_eq!(*mutex.lock(), 6);
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
