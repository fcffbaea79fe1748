//! The rights the smoke test asks for, one at a time: those its policy strips
//! (killing, suspending, injecting) and a few it keeps, to show the driver
//! removes only what the policy names.

use procguard_policy::rights::{
    self, PROCESS_CREATE_THREAD, PROCESS_DUP_HANDLE, PROCESS_QUERY_LIMITED_INFORMATION,
    PROCESS_SET_INFORMATION, PROCESS_SUSPEND_RESUME, PROCESS_TERMINATE, PROCESS_VM_OPERATION,
    PROCESS_VM_READ, PROCESS_VM_WRITE, SYNCHRONIZE, THREAD_GET_CONTEXT,
    THREAD_QUERY_LIMITED_INFORMATION, THREAD_SET_CONTEXT, THREAD_SET_INFORMATION,
    THREAD_SET_LIMITED_INFORMATION, THREAD_SUSPEND_RESUME, THREAD_TERMINATE,
};
use procguard_policy::ObjectKind;

/// `PROCESS_ALL_ACCESS` (Vista and later): `STANDARD_RIGHTS_REQUIRED |
/// SYNCHRONIZE | 0xFFFF`, what the `TerminateProcess` check asks for.
pub const PROCESS_ALL_ACCESS: u32 = 0x000F_0000 | rights::SYNCHRONIZE | 0xFFFF;

/// One right the smoke test opens the target with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RightOfInterest {
    /// The right's name, as the policy engine spells it (`winnt.h`).
    pub name: &'static str,
    /// Its bit.
    pub mask: u32,
    /// The handle it is asked on: the target process or its main thread.
    pub object: ObjectKind,
    /// Whether the smoke policy strips it from restricted requesters.
    pub stripped: bool,
}

const fn right(
    name: &'static str,
    mask: u32,
    object: ObjectKind,
    stripped: bool,
) -> RightOfInterest {
    RightOfInterest {
        name,
        mask,
        object,
        stripped,
    }
}

/// Every right the smoke test asks for, in the order of the report. The
/// stripped ones are the `no-kill` and `no-inject` sets, so the policy has
/// complete kill and injection protection (no lint warning).
pub const RIGHTS: &[RightOfInterest] = &[
    right(
        "PROCESS_TERMINATE",
        PROCESS_TERMINATE,
        ObjectKind::Process,
        true,
    ),
    right(
        "PROCESS_SUSPEND_RESUME",
        PROCESS_SUSPEND_RESUME,
        ObjectKind::Process,
        true,
    ),
    right(
        "PROCESS_CREATE_THREAD",
        PROCESS_CREATE_THREAD,
        ObjectKind::Process,
        true,
    ),
    right(
        "PROCESS_VM_OPERATION",
        PROCESS_VM_OPERATION,
        ObjectKind::Process,
        true,
    ),
    right(
        "PROCESS_VM_WRITE",
        PROCESS_VM_WRITE,
        ObjectKind::Process,
        true,
    ),
    right(
        "PROCESS_DUP_HANDLE",
        PROCESS_DUP_HANDLE,
        ObjectKind::Process,
        true,
    ),
    right(
        "PROCESS_SET_INFORMATION",
        PROCESS_SET_INFORMATION,
        ObjectKind::Process,
        true,
    ),
    right(
        "PROCESS_QUERY_LIMITED_INFORMATION",
        PROCESS_QUERY_LIMITED_INFORMATION,
        ObjectKind::Process,
        false,
    ),
    right(
        "PROCESS_VM_READ",
        PROCESS_VM_READ,
        ObjectKind::Process,
        false,
    ),
    right("SYNCHRONIZE", SYNCHRONIZE, ObjectKind::Process, false),
    right(
        "THREAD_TERMINATE",
        THREAD_TERMINATE,
        ObjectKind::Thread,
        true,
    ),
    right(
        "THREAD_SUSPEND_RESUME",
        THREAD_SUSPEND_RESUME,
        ObjectKind::Thread,
        true,
    ),
    right(
        "THREAD_SET_CONTEXT",
        THREAD_SET_CONTEXT,
        ObjectKind::Thread,
        true,
    ),
    right(
        "THREAD_SET_INFORMATION",
        THREAD_SET_INFORMATION,
        ObjectKind::Thread,
        true,
    ),
    right(
        "THREAD_SET_LIMITED_INFORMATION",
        THREAD_SET_LIMITED_INFORMATION,
        ObjectKind::Thread,
        true,
    ),
    right(
        "THREAD_QUERY_LIMITED_INFORMATION",
        THREAD_QUERY_LIMITED_INFORMATION,
        ObjectKind::Thread,
        false,
    ),
    right(
        "THREAD_GET_CONTEXT",
        THREAD_GET_CONTEXT,
        ObjectKind::Thread,
        false,
    ),
];

/// The bits the smoke policy strips from handles of `object`.
#[must_use]
pub fn strip_mask(object: ObjectKind) -> u32 {
    RIGHTS
        .iter()
        .filter(|r| r.stripped && r.object == object)
        .fold(0, |mask, r| mask | r.mask)
}

/// Rights Windows grants along with another one ("a handle with
/// `THREAD_SET_INFORMATION` is automatically granted
/// `THREAD_SET_LIMITED_INFORMATION`"): an audit record may show them in the
/// original request without the caller having asked.
#[must_use]
pub const fn implied_rights(object: ObjectKind) -> u32 {
    match object {
        ObjectKind::Process => {
            rights::PROCESS_QUERY_LIMITED_INFORMATION | rights::PROCESS_SET_LIMITED_INFORMATION
        }
        ObjectKind::Thread => {
            rights::THREAD_QUERY_LIMITED_INFORMATION | rights::THREAD_SET_LIMITED_INFORMATION
        }
    }
}

/// `"process"` / `"thread"`, as procguardctl's audit records spell it.
#[must_use]
pub const fn object_word(object: ObjectKind) -> &'static str {
    match object {
        ObjectKind::Process => "process",
        ObjectKind::Thread => "thread",
    }
}

/// The right of `object` called `name` in [`RIGHTS`].
#[must_use]
pub fn find(object: ObjectKind, name: &str) -> Option<&'static RightOfInterest> {
    RIGHTS.iter().find(|r| r.object == object && r.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use procguard_policy::rights::{right_by_name, set_by_name, RightKind};

    #[test]
    fn every_right_has_the_engines_name_value_and_kind() {
        for r in RIGHTS {
            let engine = right_by_name(r.name).unwrap_or_else(|| panic!("{} unknown", r.name));
            assert_eq!(engine.mask, r.mask, "{}", r.name);
            let kind_ok = match engine.kind {
                RightKind::Process => r.object == ObjectKind::Process,
                RightKind::Thread => r.object == ObjectKind::Thread,
                RightKind::Standard => true,
            };
            assert!(kind_ok, "{} asked on a {:?} handle", r.name, r.object);
            assert_eq!(r.mask.count_ones(), 1, "{} is one bit", r.name);
        }
    }

    #[test]
    fn each_right_is_listed_once_per_object() {
        for (i, a) in RIGHTS.iter().enumerate() {
            for b in &RIGHTS[i + 1..] {
                assert!(
                    a.object != b.object || a.mask != b.mask,
                    "{} and {}",
                    a.name,
                    b.name
                );
            }
        }
    }

    #[test]
    fn the_stripped_rights_are_exactly_no_kill_and_no_inject() {
        let kill = set_by_name("no-kill").unwrap();
        let inject = set_by_name("no-inject").unwrap();
        assert_eq!(
            strip_mask(ObjectKind::Process),
            kill.process | inject.process
        );
        assert_eq!(strip_mask(ObjectKind::Thread), kill.thread | inject.thread);
    }

    #[test]
    fn the_kept_rights_include_both_object_kinds() {
        for object in [ObjectKind::Process, ObjectKind::Thread] {
            assert!(RIGHTS.iter().any(|r| r.object == object && !r.stripped));
            assert!(RIGHTS.iter().any(|r| r.object == object && r.stripped));
        }
    }

    #[test]
    fn process_all_access_is_the_vista_value() {
        assert_eq!(PROCESS_ALL_ACCESS, 0x001F_FFFF);
    }
}
