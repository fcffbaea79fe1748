//! Windows access rights for process and thread objects, their names, and the named
//! sets people use in policies.
//!
//! Values are those of `winnt.h`. Process and thread specific rights share the low
//! 16 bits, so a right's *kind* matters: `PROCESS_TERMINATE` and `THREAD_TERMINATE`
//! are both `0x0001`. A rule therefore keeps one strip mask per object kind.

/// An `ACCESS_MASK`.
pub type AccessMask = u32;

/// Which object kind a right belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RightKind {
    /// Process-specific right (`PROCESS_*`).
    Process,
    /// Thread-specific right (`THREAD_*`).
    Thread,
    /// Standard right, valid for both kinds (`DELETE`, `SYNCHRONIZE`, ...).
    Standard,
}

/// A named access right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Right {
    /// Name as in `winnt.h`.
    pub name: &'static str,
    /// Object kind the right applies to.
    pub kind: RightKind,
    /// Bit value.
    pub mask: AccessMask,
}

macro_rules! rights {
    ($($(#[$doc:meta])* $name:ident = $value:expr, $kind:ident;)*) => {
        $( $(#[$doc])* pub const $name: AccessMask = $value; )*
        /// Every right this crate knows, in `winnt.h` order.
        pub const ALL_RIGHTS: &[Right] = &[
            $( Right { name: stringify!($name), kind: RightKind::$kind, mask: $value }, )*
        ];
    };
}

rights! {
    /// Terminate the process (`TerminateProcess`).
    PROCESS_TERMINATE = 0x0001, Process;
    /// Create a thread in the process (`CreateRemoteThread`): code injection.
    PROCESS_CREATE_THREAD = 0x0002, Process;
    /// Set the session id.
    PROCESS_SET_SESSIONID = 0x0004, Process;
    /// Change the address space (`VirtualAllocEx`, `VirtualProtectEx`).
    PROCESS_VM_OPERATION = 0x0008, Process;
    /// Read memory (`ReadProcessMemory`).
    PROCESS_VM_READ = 0x0010, Process;
    /// Write memory (`WriteProcessMemory`).
    PROCESS_VM_WRITE = 0x0020, Process;
    /// Duplicate handles out of the process (`DuplicateHandle`).
    PROCESS_DUP_HANDLE = 0x0040, Process;
    /// Create a process with this one as parent.
    PROCESS_CREATE_PROCESS = 0x0080, Process;
    /// Set memory quotas.
    PROCESS_SET_QUOTA = 0x0100, Process;
    /// Set process information (priority, affinity, mitigation, ...).
    PROCESS_SET_INFORMATION = 0x0200, Process;
    /// Query process information (token, exit code, ...).
    PROCESS_QUERY_INFORMATION = 0x0400, Process;
    /// Suspend or resume the process (`NtSuspendProcess`); also needed to debug it.
    PROCESS_SUSPEND_RESUME = 0x0800, Process;
    /// Query limited information (image name, exit code); what Task Manager uses.
    PROCESS_QUERY_LIMITED_INFORMATION = 0x1000, Process;
    /// Set limited information.
    PROCESS_SET_LIMITED_INFORMATION = 0x2000, Process;
    /// Terminate the thread.
    THREAD_TERMINATE = 0x0001, Thread;
    /// Suspend or resume the thread.
    THREAD_SUSPEND_RESUME = 0x0002, Thread;
    /// Alert the thread.
    THREAD_ALERT = 0x0004, Thread;
    /// Read the thread context (`GetThreadContext`).
    THREAD_GET_CONTEXT = 0x0008, Thread;
    /// Write the thread context (`SetThreadContext`): hijacking.
    THREAD_SET_CONTEXT = 0x0010, Thread;
    /// Set thread information.
    THREAD_SET_INFORMATION = 0x0020, Thread;
    /// Query thread information.
    THREAD_QUERY_INFORMATION = 0x0040, Thread;
    /// Set the thread token.
    THREAD_SET_THREAD_TOKEN = 0x0080, Thread;
    /// Impersonate through the thread.
    THREAD_IMPERSONATE = 0x0100, Thread;
    /// Direct impersonation.
    THREAD_DIRECT_IMPERSONATION = 0x0200, Thread;
    /// Set limited thread information.
    THREAD_SET_LIMITED_INFORMATION = 0x0400, Thread;
    /// Query limited thread information.
    THREAD_QUERY_LIMITED_INFORMATION = 0x0800, Thread;
    /// Resume the thread.
    THREAD_RESUME = 0x1000, Thread;
    /// Delete the object.
    DELETE = 0x0001_0000, Standard;
    /// Read the security descriptor.
    READ_CONTROL = 0x0002_0000, Standard;
    /// Change the DACL.
    WRITE_DAC = 0x0004_0000, Standard;
    /// Change the owner.
    WRITE_OWNER = 0x0008_0000, Standard;
    /// Wait on the object.
    SYNCHRONIZE = 0x0010_0000, Standard;
    /// Read or write the SACL.
    ACCESS_SYSTEM_SECURITY = 0x0100_0000, Standard;
}

/// The standard rights (valid for every object kind).
pub const STANDARD_RIGHTS: AccessMask =
    DELETE | READ_CONTROL | WRITE_DAC | WRITE_OWNER | SYNCHRONIZE;

/// Every bit a process strip mask may contain.
pub const VALID_PROCESS_BITS: AccessMask = 0x3FFF | STANDARD_RIGHTS | ACCESS_SYSTEM_SECURITY;
/// Every bit a thread strip mask may contain.
pub const VALID_THREAD_BITS: AccessMask = 0x1FFF | STANDARD_RIGHTS | ACCESS_SYSTEM_SECURITY;

/// The process rights an `ObRegisterCallbacks` pre-operation callback may
/// remove, as `OB_PRE_CREATE_HANDLE_INFORMATION`'s documentation lists them
/// ("Drivers can use the following flags for handles to processes",
/// <https://learn.microsoft.com/windows-hardware/drivers/ddi/wdm/ns-wdm-_ob_pre_create_handle_information>).
/// Removing any other right works today but is undocumented: `lint` warns,
/// `explain` says so. The one list the engine uses.
pub const DOCUMENTED_PROCESS_RIGHTS: &[AccessMask] = &[
    PROCESS_CREATE_PROCESS,
    PROCESS_CREATE_THREAD,
    PROCESS_DUP_HANDLE,
    PROCESS_SET_QUOTA,
    PROCESS_SET_INFORMATION,
    PROCESS_SUSPEND_RESUME,
    PROCESS_TERMINATE,
    PROCESS_VM_OPERATION,
    PROCESS_VM_WRITE,
];

/// The thread rights the same page lists ("for handles to threads").
pub const DOCUMENTED_THREAD_RIGHTS: &[AccessMask] = &[
    THREAD_DIRECT_IMPERSONATION,
    THREAD_IMPERSONATE,
    THREAD_SET_CONTEXT,
    THREAD_SET_INFORMATION,
    THREAD_SET_LIMITED_INFORMATION,
    THREAD_SET_THREAD_TOKEN,
    THREAD_SUSPEND_RESUME,
    THREAD_TERMINATE,
];

const fn union(rights: &[AccessMask]) -> AccessMask {
    let mut mask = 0;
    let mut index = 0;
    while index < rights.len() {
        mask |= rights[index];
        index += 1;
    }
    mask
}

/// [`DOCUMENTED_PROCESS_RIGHTS`] as one mask.
pub const DOCUMENTED_PROCESS_MASK: AccessMask = union(DOCUMENTED_PROCESS_RIGHTS);
/// [`DOCUMENTED_THREAD_RIGHTS`] as one mask.
pub const DOCUMENTED_THREAD_MASK: AccessMask = union(DOCUMENTED_THREAD_RIGHTS);

/// The bits of `mask` (rights removed from handles of `kind`) that the
/// documentation does not list as removable by a driver.
#[must_use]
pub const fn undocumented_removal(kind: crate::ObjectKind, mask: AccessMask) -> AccessMask {
    match kind {
        crate::ObjectKind::Process => mask & !DOCUMENTED_PROCESS_MASK,
        crate::ObjectKind::Thread => mask & !DOCUMENTED_THREAD_MASK,
    }
}

/// A named set of rights ("no-kill", ...), with one mask per object kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RightSet {
    /// Name used in policies.
    pub name: &'static str,
    /// Rights removed from process handles.
    pub process: AccessMask,
    /// Rights removed from thread handles.
    pub thread: AccessMask,
    /// One line saying what it prevents.
    pub summary: &'static str,
}

/// The named sets. See PITFALLS 9: `PROCESS_TERMINATE` alone does not stop a kill.
pub const RIGHT_SETS: &[RightSet] = &[
    RightSet {
        name: "no-kill",
        process: PROCESS_TERMINATE | PROCESS_SUSPEND_RESUME,
        thread: THREAD_TERMINATE | THREAD_SUSPEND_RESUME,
        summary: "terminating or suspending the process or its threads",
    },
    RightSet {
        name: "no-inject",
        process: PROCESS_CREATE_THREAD
            | PROCESS_VM_OPERATION
            | PROCESS_VM_WRITE
            | PROCESS_DUP_HANDLE
            | PROCESS_SET_INFORMATION,
        thread: THREAD_SET_CONTEXT | THREAD_SET_INFORMATION | THREAD_SET_LIMITED_INFORMATION,
        summary: "writing code or data into the process, or hijacking its threads",
    },
    RightSet {
        name: "no-debug",
        process: PROCESS_VM_READ
            | PROCESS_VM_WRITE
            | PROCESS_VM_OPERATION
            | PROCESS_SUSPEND_RESUME
            | PROCESS_CREATE_THREAD,
        thread: THREAD_GET_CONTEXT | THREAD_SET_CONTEXT | THREAD_SUSPEND_RESUME,
        summary: "attaching a debugger, reading memory or thread contexts",
    },
    RightSet {
        name: "no-tamper",
        process: PROCESS_TERMINATE
            | PROCESS_SUSPEND_RESUME
            | PROCESS_CREATE_THREAD
            | PROCESS_VM_OPERATION
            | PROCESS_VM_WRITE
            | PROCESS_DUP_HANDLE
            | PROCESS_SET_INFORMATION
            | PROCESS_SET_QUOTA
            | PROCESS_SET_LIMITED_INFORMATION
            | WRITE_DAC
            | WRITE_OWNER,
        thread: THREAD_TERMINATE
            | THREAD_SUSPEND_RESUME
            | THREAD_SET_CONTEXT
            | THREAD_SET_INFORMATION
            | THREAD_SET_LIMITED_INFORMATION
            | THREAD_SET_THREAD_TOKEN
            | WRITE_DAC
            | WRITE_OWNER,
        summary: "killing, suspending, injecting into or re-securing the process",
    },
];

/// Looks up a right by name, ignoring ASCII case.
#[must_use]
pub fn right_by_name(name: &str) -> Option<&'static Right> {
    ALL_RIGHTS
        .iter()
        .find(|r| r.name.eq_ignore_ascii_case(name))
}

/// Looks up a named set by name, ignoring ASCII case.
#[must_use]
pub fn set_by_name(name: &str) -> Option<&'static RightSet> {
    RIGHT_SETS
        .iter()
        .find(|s| s.name.eq_ignore_ascii_case(name))
}

/// Writes the names of the rights in `mask` for `kind` (`PROCESS_*` or `THREAD_*`
/// plus standard rights), `|`-separated; unknown bits are written in hex.
///
/// # Errors
/// Only those of the writer.
pub fn write_mask(
    out: &mut dyn core::fmt::Write,
    kind: crate::ObjectKind,
    mask: AccessMask,
) -> core::fmt::Result {
    if mask == 0 {
        return out.write_str("(none)");
    }
    let wanted = match kind {
        crate::ObjectKind::Process => RightKind::Process,
        crate::ObjectKind::Thread => RightKind::Thread,
    };
    let mut rest = mask;
    let mut first = true;
    for r in ALL_RIGHTS {
        if (r.kind == wanted || r.kind == RightKind::Standard) && rest & r.mask != 0 {
            if !first {
                out.write_str("|")?;
            }
            out.write_str(r.name)?;
            rest &= !r.mask;
            first = false;
        }
    }
    if rest != 0 {
        if !first {
            out.write_str("|")?;
        }
        write!(out, "{rest:#x}")?;
    }
    Ok(())
}

/// A value that displays an access mask by name.
#[derive(Clone, Copy, Debug)]
pub struct MaskNames(pub crate::ObjectKind, pub AccessMask);

impl core::fmt::Display for MaskNames {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write_mask(f, self.0, self.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ObjectKind;

    /// The flag names exactly as the documentation page lists them.
    const PAGE_PROCESS: &[&str] = &[
        "PROCESS_CREATE_PROCESS",
        "PROCESS_CREATE_THREAD",
        "PROCESS_DUP_HANDLE",
        "PROCESS_SET_QUOTA",
        "PROCESS_SET_INFORMATION",
        "PROCESS_SUSPEND_RESUME",
        "PROCESS_TERMINATE",
        "PROCESS_VM_OPERATION",
        "PROCESS_VM_WRITE",
    ];
    const PAGE_THREAD: &[&str] = &[
        "THREAD_DIRECT_IMPERSONATION",
        "THREAD_IMPERSONATE",
        "THREAD_SET_CONTEXT",
        "THREAD_SET_INFORMATION",
        "THREAD_SET_LIMITED_INFORMATION",
        "THREAD_SET_THREAD_TOKEN",
        "THREAD_SUSPEND_RESUME",
        "THREAD_TERMINATE",
    ];

    fn by_names(names: &[&str], kind: RightKind) -> alloc::vec::Vec<AccessMask> {
        names
            .iter()
            .map(|name| {
                let right = right_by_name(name).unwrap_or_else(|| panic!("{name}"));
                assert_eq!(right.kind, kind, "{name}");
                right.mask
            })
            .collect()
    }

    #[test]
    fn the_documented_lists_are_the_page_s_flags_one_bit_each() {
        assert_eq!(
            DOCUMENTED_PROCESS_RIGHTS,
            by_names(PAGE_PROCESS, RightKind::Process)
        );
        assert_eq!(
            DOCUMENTED_THREAD_RIGHTS,
            by_names(PAGE_THREAD, RightKind::Thread)
        );
        for list in [DOCUMENTED_PROCESS_RIGHTS, DOCUMENTED_THREAD_RIGHTS] {
            assert!(list.iter().all(|r| r.count_ones() == 1));
            assert_eq!(union(list).count_ones() as usize, list.len(), "distinct");
        }
        assert_eq!(DOCUMENTED_PROCESS_MASK, 0x0BEB);
        assert_eq!(DOCUMENTED_THREAD_MASK, 0x07B3);
    }

    #[test]
    fn undocumented_removal_keeps_only_the_bits_outside_the_list() {
        use ObjectKind::{Process, Thread};
        assert_eq!(undocumented_removal(Process, PROCESS_TERMINATE), 0);
        assert_eq!(
            undocumented_removal(Process, PROCESS_TERMINATE | PROCESS_VM_READ | SYNCHRONIZE),
            PROCESS_VM_READ | SYNCHRONIZE
        );
        // The same bit means different rights per kind: 0x10 is VM_READ for
        // a process and SET_CONTEXT for a thread.
        assert_eq!(undocumented_removal(Thread, THREAD_SET_CONTEXT), 0);
        assert_eq!(
            undocumented_removal(Thread, THREAD_GET_CONTEXT),
            THREAD_GET_CONTEXT
        );
        assert_eq!(undocumented_removal(Process, WRITE_DAC), WRITE_DAC);
        // Every right not in a list is undocumented for its kind.
        for right in ALL_RIGHTS {
            for (kind, list) in [
                (RightKind::Process, DOCUMENTED_PROCESS_RIGHTS),
                (RightKind::Thread, DOCUMENTED_THREAD_RIGHTS),
            ] {
                let object = if kind == RightKind::Process {
                    Process
                } else {
                    Thread
                };
                if right.kind == kind || right.kind == RightKind::Standard {
                    assert_eq!(
                        undocumented_removal(object, right.mask) == 0,
                        list.contains(&right.mask),
                        "{}",
                        right.name
                    );
                }
            }
        }
    }
}
