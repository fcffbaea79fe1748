//! Applying `Parameters\Policy` when it changes while the driver runs.
//!
//! A registry callback (`CmRegisterCallbackEx`, registered after the policy
//! is loaded) sees every registry operation in the writer's thread at
//! PASSIVE_LEVEL. It always returns `STATUS_SUCCESS` and does almost
//! nothing: after a successful set or delete of a value named `Policy`
//! (case-insensitive) on a key whose name ends with
//! `\Services\<service>\Parameters` (case-insensitive; the callback sees
//! `ControlSet00N` where `DriverEntry`'s path says `CurrentControlSet`, so
//! only the tail is compared), it enqueues a WDF work item. The work item
//! (PASSIVE_LEVEL) reads the value again and applies it
//! (`policy_apply::apply_from_registry`). A work item already queued is not
//! queued again: a storm of changes gives at most one queued and one
//! running, and the last value wins. The filter may be loose (a false
//! match costs a re-read, and an identical blob changes nothing) but must
//! never miss a change.
//!
//! This file holds the filter (pure, host-tested); the kernel binding is in
//! `registry_callback.rs`.

/// `REG_NOTIFY_CLASS::RegNtPostDeleteValueKey`.
pub const REG_NT_POST_DELETE_VALUE_KEY: i32 = 17;
/// `REG_NOTIFY_CLASS::RegNtPostSetValueKey`.
pub const REG_NT_POST_SET_VALUE_KEY: i32 = 16;

const POLICY: &[u16] = &crate::platform::wide_string::utf16::<6>("Policy");
const PARAMETERS: &[u16] = &crate::platform::wide_string::utf16::<10>("Parameters");
const SERVICES: &[u16] = &crate::platform::wide_string::utf16::<8>("Services");

/// ASCII case folding: registry names compare case-insensitively. Other
/// characters compare exactly (service names are ASCII; a non-ASCII case
/// difference would be a miss, see `WINDOWS-CHECKS.md`).
const fn fold(unit: u16) -> u16 {
    if unit >= b'a' as u16 && unit <= b'z' as u16 {
        unit - 32
    } else {
        unit
    }
}

fn equal_ignoring_case(left: &[u16], right: &[u16]) -> bool {
    left.len() == right.len() && left.iter().zip(right).all(|(l, r)| fold(*l) == fold(*r))
}

/// Whether a value name is `Policy` (case-insensitive).
#[must_use]
pub fn is_policy_value(name: &[u16]) -> bool {
    equal_ignoring_case(name, POLICY)
}

/// The service name: the last component of `DriverEntry`'s registry path
/// (`\REGISTRY\MACHINE\SYSTEM\CurrentControlSet\Services\<name>`).
#[must_use]
pub fn service_name(service_key_path: &[u16]) -> &[u16] {
    let backslash = u16::from(b'\\');
    let mut trimmed = service_key_path;
    while let [head @ .., last] = trimmed {
        if *last != backslash {
            break;
        }
        trimmed = head;
    }
    // No indexing (no panic path in the driver image): walk back to the
    // last separator.
    let mut name = trimmed;
    let mut rest = trimmed;
    let mut length = 0;
    while let [head @ .., last] = rest {
        if *last == backslash {
            break;
        }
        rest = head;
        length += 1;
    }
    if let Some(start) = trimmed.len().checked_sub(length) {
        name = name.get(start..).unwrap_or_default();
    }
    name
}

/// Whether a key's full name ends with `\Services\<service>\Parameters`
/// (case-insensitive; trailing backslashes ignored). An empty service name
/// matches no key.
#[must_use]
pub fn is_parameters_key(key_name: &[u16], service: &[u16]) -> bool {
    if service.is_empty() {
        return false;
    }
    let backslash = u16::from(b'\\');
    let mut rest = key_name;
    while let [head @ .., last] = rest {
        if *last != backslash {
            break;
        }
        rest = head;
    }
    // Components from the end: Parameters, <service>, Services, and a
    // separator before Services.
    for expected in [PARAMETERS, service, SERVICES] {
        let Some((before, tail)) = rest
            .len()
            .checked_sub(expected.len())
            .and_then(|split| rest.split_at_checked(split))
        else {
            return false;
        };
        if !equal_ignoring_case(tail, expected) {
            return false;
        }
        let Some((&separator, before)) = before.split_last() else {
            return false;
        };
        if separator != backslash {
            return false;
        }
        rest = before;
    }
    true
}

/// Whether a registry notification says `Parameters\Policy` may have
/// changed: a post-set or post-delete of a value, successful (`status`
/// ≥ 0), named `Policy`, on the service's `Parameters` key.
#[must_use]
pub fn is_policy_change(
    class: i32,
    status: i32,
    value_name: &[u16],
    key_name: &[u16],
    service: &[u16],
) -> bool {
    (class == REG_NT_POST_SET_VALUE_KEY || class == REG_NT_POST_DELETE_VALUE_KEY)
        && status >= 0
        && is_policy_value(value_name)
        && is_parameters_key(key_name, service)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn w(text: &str) -> Vec<u16> {
        text.encode_utf16().collect()
    }

    const SERVICE_PATH: &str =
        "\\REGISTRY\\MACHINE\\SYSTEM\\CurrentControlSet\\Services\\procguard";

    #[test]
    fn the_service_name_is_the_last_component() {
        assert_eq!(service_name(&w(SERVICE_PATH)), w("procguard"));
        assert_eq!(service_name(&w("\\a\\b\\ProcGuard\\")), w("ProcGuard"));
        assert_eq!(service_name(&w("procguard")), w("procguard"));
        assert!(service_name(&w("")).is_empty());
        assert!(service_name(&w("\\\\")).is_empty());
    }

    #[test]
    fn the_value_name_compares_case_insensitively() {
        assert!(is_policy_value(&w("Policy")));
        assert!(is_policy_value(&w("POLICY")));
        assert!(is_policy_value(&w("policy")));
        assert!(!is_policy_value(&w("Policy2")));
        assert!(!is_policy_value(&w("Polic")));
        assert!(!is_policy_value(&w("Altitude")));
        assert!(!is_policy_value(&w("")));
    }

    #[test]
    fn the_key_tail_matches_any_control_set_and_case() {
        let service = w("procguard");
        for key in [
            "\\REGISTRY\\MACHINE\\SYSTEM\\ControlSet001\\Services\\procguard\\Parameters",
            "\\REGISTRY\\MACHINE\\SYSTEM\\ControlSet002\\Services\\ProcGuard\\parameters",
            "\\REGISTRY\\MACHINE\\SYSTEM\\CurrentControlSet\\SERVICES\\PROCGUARD\\PARAMETERS",
            "\\REGISTRY\\MACHINE\\SYSTEM\\ControlSet001\\Services\\procguard\\Parameters\\",
        ] {
            assert!(is_parameters_key(&w(key), &service), "{key}");
        }
    }

    #[test]
    fn other_keys_do_not_match() {
        let service = w("procguard");
        for key in [
            // Another service, a service whose name ends like ours.
            "\\REGISTRY\\MACHINE\\SYSTEM\\ControlSet001\\Services\\other\\Parameters",
            "\\REGISTRY\\MACHINE\\SYSTEM\\ControlSet001\\Services\\xprocguard\\Parameters",
            // The service key itself, a subkey of Parameters.
            "\\REGISTRY\\MACHINE\\SYSTEM\\ControlSet001\\Services\\procguard",
            "\\REGISTRY\\MACHINE\\SYSTEM\\ControlSet001\\Services\\procguard\\Parameters\\x",
            // Not under Services, and too short to hold the tail.
            "\\REGISTRY\\MACHINE\\SOFTWARE\\Servicesx\\procguard\\Parameters",
            "\\REGISTRY\\MACHINE\\SOFTWARE\\XServices\\procguard\\Parameters",
            "Services\\procguard\\Parameters",
            "procguard\\Parameters",
            "Parameters",
            "",
        ] {
            assert!(!is_parameters_key(&w(key), &service), "{key}");
        }
        assert!(!is_parameters_key(
            &w("\\REGISTRY\\MACHINE\\SYSTEM\\ControlSet001\\Services\\\\Parameters"),
            &[]
        ));
    }

    #[test]
    fn only_successful_post_set_or_delete_of_policy_counts() {
        let key = w("\\REGISTRY\\MACHINE\\SYSTEM\\ControlSet001\\Services\\procguard\\Parameters");
        let service = service_name(&w(SERVICE_PATH)).to_vec();
        let policy = w("Policy");
        assert!(is_policy_change(
            REG_NT_POST_SET_VALUE_KEY,
            0,
            &policy,
            &key,
            &service
        ));
        assert!(is_policy_change(
            REG_NT_POST_DELETE_VALUE_KEY,
            0,
            &policy,
            &key,
            &service
        ));
        // A failed operation changed nothing.
        assert!(!is_policy_change(
            REG_NT_POST_SET_VALUE_KEY,
            0xC000_0022_u32 as i32,
            &policy,
            &key,
            &service
        ));
        // Pre-notifications and other classes (RegNtPreSetValueKey = 1).
        assert!(!is_policy_change(1, 0, &policy, &key, &service));
        assert!(!is_policy_change(0, 0, &policy, &key, &service));
        assert!(!is_policy_change(
            REG_NT_POST_SET_VALUE_KEY,
            0,
            &w("Altitude"),
            &key,
            &service
        ));
    }
}
