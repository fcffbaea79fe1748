//! What the pre-operation callback decides for one handle request, with the
//! kernel structures already read (`object_callbacks.rs` does that).
//!
//! Order of checks, each a documented decision:
//! 1. Kernel handles pass untouched: a kernel component can always obtain a
//!    full handle some other way, and stripping its rights breaks Windows
//!    components that rely on them.
//! 2. A process opening itself (or one of its own threads) passes untouched.
//! 3. Otherwise the policy's strip mask for the target process and object
//!    kind is removed. The result is always a subset of the request.
#![forbid(unsafe_code)]

use crate::pid_table::{ObjectKind, PidTable};

/// Create or duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `OB_OPERATION_HANDLE_CREATE`.
    Create,
    /// `OB_OPERATION_HANDLE_DUPLICATE`.
    Duplicate,
}

/// A handle request, as the callback sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandleRequest {
    /// Process or thread handle.
    pub object: ObjectKind,
    /// Create or duplicate.
    pub operation: Operation,
    /// `KernelHandle` flag.
    pub kernel_handle: bool,
    /// The process the handle is for (a thread's owning process).
    pub target_pid: usize,
    /// Who gains the access: the current process for a create, the process
    /// receiving the handle (`TargetProcess`) for a duplicate.
    pub requester_pid: usize,
    /// `DesiredAccess` as it reached the callback.
    pub desired_access: u32,
}

/// The callback's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Kernel handle: untouched.
    SkipKernelHandle,
    /// Self-open: untouched.
    SkipSelf,
    /// The policy strips nothing from this request.
    Allow,
    /// `DesiredAccess` becomes `access` (a strict subset of the request).
    Strip {
        /// The new `DesiredAccess`.
        access: u32,
    },
}

impl Verdict {
    /// The `DesiredAccess` to leave in place for `request`.
    #[must_use]
    pub const fn access(self, request: &HandleRequest) -> u32 {
        match self {
            Self::Strip { access } => access,
            _ => request.desired_access,
        }
    }
}

/// Decides a request. No allocation, no blocking, O(log n) in the table.
#[must_use]
pub fn decide(policy: &PidTable, request: &HandleRequest) -> Verdict {
    if request.kernel_handle {
        return Verdict::SkipKernelHandle;
    }
    if request.target_pid == request.requester_pid {
        return Verdict::SkipSelf;
    }
    // Process ids are 32-bit values on Windows; anything else matches no rule.
    let Ok(target) = u32::try_from(request.target_pid) else {
        return Verdict::Allow;
    };
    let strip = policy.strip_mask(target, request.object);
    let access = request.desired_access & !strip;
    if access == request.desired_access {
        Verdict::Allow
    } else {
        Verdict::Strip { access }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pid_table::PidRule;

    const TERMINATE: u32 = 0x0001;
    const VM_WRITE: u32 = 0x0020;
    const THREAD_SUSPEND: u32 = 0x0002;

    fn policy() -> PidTable {
        PidTable::from_rules(vec![PidRule {
            pid: 500,
            process_strip: TERMINATE | VM_WRITE,
            thread_strip: THREAD_SUSPEND,
        }])
    }

    fn request(object: ObjectKind, desired_access: u32) -> HandleRequest {
        HandleRequest {
            object,
            operation: Operation::Create,
            kernel_handle: false,
            target_pid: 500,
            requester_pid: 600,
            desired_access,
        }
    }

    #[test]
    fn protected_process_loses_exactly_the_policy_bits() {
        let verdict = decide(&policy(), &request(ObjectKind::Process, 0x1F_FFFF));
        assert_eq!(
            verdict,
            Verdict::Strip {
                access: 0x1F_FFFF & !(TERMINATE | VM_WRITE)
            }
        );
    }

    #[test]
    fn thread_handles_use_the_thread_mask() {
        let verdict = decide(
            &policy(),
            &request(ObjectKind::Thread, THREAD_SUSPEND | 0x40),
        );
        assert_eq!(verdict, Verdict::Strip { access: 0x40 });
    }

    #[test]
    fn kernel_handles_and_self_opens_pass_untouched() {
        let mut kernel = request(ObjectKind::Process, TERMINATE);
        kernel.kernel_handle = true;
        assert_eq!(decide(&policy(), &kernel), Verdict::SkipKernelHandle);
        let mut own = request(ObjectKind::Process, TERMINATE);
        own.requester_pid = 500;
        assert_eq!(decide(&policy(), &own), Verdict::SkipSelf);
    }

    #[test]
    fn requests_without_policy_bits_are_allowed() {
        assert_eq!(
            decide(&policy(), &request(ObjectKind::Process, 0x0400)),
            Verdict::Allow
        );
        let mut other = request(ObjectKind::Process, TERMINATE);
        other.target_pid = 501;
        assert_eq!(decide(&policy(), &other), Verdict::Allow);
        let mut huge = request(ObjectKind::Process, TERMINATE);
        huge.target_pid = usize::MAX;
        assert_eq!(decide(&policy(), &huge), Verdict::Allow);
    }

    #[test]
    fn the_result_is_always_a_subset_of_the_request() {
        // Every combination of a spread of masks, policies and requesters.
        let masks = [0, 1, 2, 0x20, 0x800, 0xFFFF, 0x1F_FFFF, u32::MAX];
        for &process_strip in &masks {
            for &thread_strip in &masks {
                let table = PidTable::from_rules(vec![PidRule {
                    pid: 500,
                    process_strip,
                    thread_strip,
                }]);
                for &desired in &masks {
                    for object in [ObjectKind::Process, ObjectKind::Thread] {
                        for operation in [Operation::Create, Operation::Duplicate] {
                            for requester_pid in [500, 600] {
                                let req = HandleRequest {
                                    operation,
                                    requester_pid,
                                    ..request(object, desired)
                                };
                                let verdict = decide(&table, &req);
                                let access = verdict.access(&req);
                                assert_eq!(access & !desired, 0, "{req:?} gained bits");
                                let strip = if object == ObjectKind::Process {
                                    process_strip
                                } else {
                                    thread_strip
                                };
                                let expected = if requester_pid == 500 {
                                    desired
                                } else {
                                    desired & !strip
                                };
                                assert_eq!(access, expected, "{req:?}");
                            }
                        }
                    }
                }
            }
        }
    }
}
