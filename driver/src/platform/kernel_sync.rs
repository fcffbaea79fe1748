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

use crate::ffi::{
    ntddk, _EVENT_TYPE, _KWAIT_REASON, _MODE, ERESOURCE, KEVENT, KSPIN_LOCK, LARGE_INTEGER,
    STATUS_SUCCESS,
};

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

/// A spin lock protecting a `T`: held at DISPATCH_LEVEL for a few stores
/// (the ask path's slot states and FIFO). Usable at IRQL <= DISPATCH_LEVEL;
/// its storage must be non-paged.
pub struct SpinLock<T> {
    lock: UnsafeCell<KSPIN_LOCK>,
    data: UnsafeCell<T>,
}

// SAFETY: the data is only reached through `lock`, which holds the spin lock
// for the guard's lifetime, so at most one thread accesses it.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: a KSPIN_LOCK is a plain word (0 = free) that may move while free.
unsafe impl<T: Send> Send for SpinLock<T> {}

/// Exclusive access to a [`SpinLock`]'s data at DISPATCH_LEVEL.
pub struct SpinLockGuard<'a, T> {
    owner: &'a SpinLock<T>,
    old_irql: u8,
}

impl<T> SpinLock<T> {
    /// A free lock (a zero `KSPIN_LOCK` is initialised: `KeInitializeSpinLock`
    /// only zeroes it).
    pub const fn new(data: T) -> Self {
        Self {
            lock: UnsafeCell::new(0),
            data: UnsafeCell::new(data),
        }
    }

    /// Raises to DISPATCH_LEVEL and acquires the lock (IRQL <= DISPATCH_LEVEL).
    pub fn lock(&self) -> SpinLockGuard<'_, T> {
        // SAFETY: our spin lock word, released by the guard's drop.
        let old_irql = unsafe { ntddk::KeAcquireSpinLockRaiseToDpc(self.lock.get()) };
        SpinLockGuard {
            owner: self,
            old_irql,
        }
    }
}

impl<T> core::ops::Deref for SpinLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while the lock is held.
        unsafe { &*self.owner.data.get() }
    }
}

impl<T> core::ops::DerefMut for SpinLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard exists only while the lock is held, and `&mut
        // self` makes this the only reference through it.
        unsafe { &mut *self.owner.data.get() }
    }
}

impl<T> Drop for SpinLockGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: this guard acquired the lock and releases it once,
        // restoring the IRQL it found.
        unsafe { ntddk::KeReleaseSpinLock(self.owner.lock.get(), self.old_irql) };
    }
}

/// How a [`KernelEvent`] wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnd {
    /// The event was set (and reset by the wait: a synchronization event).
    Signaled,
    /// The timeout expired first (or the wait failed).
    TimedOut,
}

/// A synchronization event (auto-reset: a satisfied wait clears it).
/// Non-paged storage, initialised at its final address with [`KernelEvent::init`].
pub struct KernelEvent {
    event: UnsafeCell<MaybeUninit<KEVENT>>,
}

// SAFETY: the kernel synchronises every operation on a KEVENT internally;
// we only pass its address to the kernel's functions.
unsafe impl Sync for KernelEvent {}
// SAFETY: moved only before `init` (the owner's contract).
unsafe impl Send for KernelEvent {}

impl KernelEvent {
    /// Storage for an event; [`KernelEvent::init`] it before use.
    pub const fn new() -> Self {
        Self {
            event: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }

    fn raw(&self) -> *mut KEVENT {
        self.event.get().cast()
    }

    /// Initialises the event, not signaled (any IRQL).
    ///
    /// # Safety
    /// Called once before any other use, with `self` at the address it keeps
    /// until it is dropped, in non-paged memory, with no waiter.
    pub unsafe fn init(&self) {
        // SAFETY: the caller guarantees the final, non-paged address;
        // KeInitializeEvent writes the whole structure.
        unsafe {
            ntddk::KeInitializeEvent(self.raw(), _EVENT_TYPE::SynchronizationEvent, 0);
        };
    }

    /// Sets the event (IRQL <= DISPATCH_LEVEL; Wait = FALSE).
    pub fn set(&self) {
        // SAFETY: an initialised event (the type's contract); Wait = FALSE
        // keeps the IRQL rules of the caller.
        unsafe { ntddk::KeSetEvent(self.raw(), 0, 0) };
    }

    /// Clears the event (IRQL <= DISPATCH_LEVEL).
    pub fn clear(&self) {
        // SAFETY: an initialised event.
        unsafe { ntddk::KeClearEvent(self.raw()) };
    }

    /// Waits for the event, kernel mode, not alertable, for at most
    /// `timeout_ms` milliseconds (PASSIVE or APC_LEVEL: a wait with a
    /// non-zero timeout).
    pub fn wait(&self, timeout_ms: u32) -> WaitEnd {
        // Negative: relative, in 100 ns units.
        let mut timeout = LARGE_INTEGER {
            QuadPart: -(i64::from(timeout_ms) * 10_000),
        };
        // SAFETY: an initialised event and a local timeout; kernel-mode,
        // non-alertable, so only the event or the timeout ends the wait.
        let status = unsafe {
            ntddk::KeWaitForSingleObject(
                self.raw().cast(),
                _KWAIT_REASON::Executive,
                _MODE::KernelMode as i8,
                0,
                &raw mut timeout,
            )
        };
        if status == STATUS_SUCCESS {
            WaitEnd::Signaled
        } else {
            WaitEnd::TimedOut
        }
    }
}

impl Default for KernelEvent {
    fn default() -> Self {
        Self::new()
    }
}

/// The current thread may wait: PASSIVE_LEVEL with APCs enabled
/// (`KeAreAllApcsDisabled` is FALSE: no guarded region; a critical region,
/// which the object callbacks run in, is allowed).
pub fn may_wait() -> bool {
    if current_irql() != 0 {
        return false;
    }
    // SAFETY: a plain query, valid at any IRQL.
    unsafe { ntddk::KeAreAllApcsDisabled() == 0 }
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
