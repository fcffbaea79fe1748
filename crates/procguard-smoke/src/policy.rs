//! The policies the smoke test applies with `procguardctl apply`: one rule
//! protecting the target copy from every requester but the exempt copy, and
//! a policy with no rules.

use procguard_policy::toml::basic_string;

use crate::rights::RIGHTS;

/// The file name of the protected copy.
pub const TARGET_NAME: &str = "procguard-smoke-target.exe";
/// The file name of the copy the rule exempts.
pub const EXEMPT_NAME: &str = "procguard-smoke-exempt.exe";
/// The rule's name (what `procguardctl events` reports as `Rule`).
pub const RULE_NAME: &str = "procguard-smoke";

/// The smoke policy: target name [`TARGET_NAME`], every requester except the
/// name [`EXEMPT_NAME`], process and thread handles, created and duplicated,
/// the stripped rights of [`RIGHTS`] by name, enforced. The exemptions keep
/// their defaults.
#[must_use]
pub fn smoke_policy() -> String {
    let strip = RIGHTS
        .iter()
        .filter(|r| r.stripped)
        .map(|r| basic_string(r.name))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "# procguard-smoke: temporary policy; the policy in force before the run is restored at its end.\n\
         [settings]\n\
         exempt_self = true\n\
         exempt_kernel_handles = true\n\
         exempt_critical_requesters = true\n\
         \n\
         [[rule]]\n\
         name = {name}\n\
         target = {{ name = {target} }}\n\
         requester = {{ except = {{ name = {exempt} }} }}\n\
         objects = \"both\"\n\
         operations = \"both\"\n\
         strip = [{strip}]\n\
         mode = \"enforce\"\n",
        name = basic_string(RULE_NAME),
        target = basic_string(TARGET_NAME),
        exempt = basic_string(EXEMPT_NAME),
    )
}

/// A policy with no rules: the driver strips nothing.
#[must_use]
pub fn empty_policy() -> String {
    "# procguard-smoke: no rules (nothing is stripped).\n".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rights::{strip_mask, PROCESS_ALL_ACCESS};
    use procguard_policy::toml::parse_policy;
    use procguard_policy::{
        lint, CompiledPolicy, Decision, HandleRequest, ObjectKind, Operation, ProcessIdentity,
    };

    const DIR: &str =
        r"\Device\HarddiskVolume3\Users\admin\AppData\Local\Temp\procguard-smoke-1234\";
    const SMOKE: &str = r"\Device\HarddiskVolume3\procguard\procguard-smoke.exe";

    fn decide(
        policy: &CompiledPolicy,
        requester: &str,
        object: ObjectKind,
        operation: Operation,
        access: u32,
    ) -> Decision {
        let target = policy.classify(&ProcessIdentity {
            pid: 2000,
            image_path: &format!("{DIR}{TARGET_NAME}"),
        });
        let requester = policy.classify(&ProcessIdentity {
            pid: 1000,
            image_path: requester,
        });
        policy.decide(
            &target,
            &requester,
            &HandleRequest {
                object,
                operation,
                desired_access: access,
                kernel_handle: false,
                same_process: false,
            },
        )
    }

    fn compiled(text: &str) -> CompiledPolicy {
        let policy = parse_policy(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        CompiledPolicy::new(&policy).unwrap()
    }

    #[test]
    fn the_smoke_policy_parses_into_one_enforced_rule_without_lint_warnings() {
        let policy = parse_policy(&smoke_policy()).unwrap();
        assert_eq!(policy.rules.len(), 1);
        let rule = &policy.rules[0];
        assert_eq!(&*rule.name, RULE_NAME);
        assert_eq!(rule.mode, procguard_policy::Mode::Enforce);
        assert_eq!(rule.strip_process, strip_mask(ObjectKind::Process));
        assert_eq!(rule.strip_thread, strip_mask(ObjectKind::Thread));
        assert!(rule.objects.process && rule.objects.thread);
        assert!(rule.operations.create && rule.operations.duplicate);
        assert_eq!(lint(&policy), Vec::new());
    }

    #[test]
    fn the_smoke_policy_strips_exactly_the_stripped_rights_from_the_smoke_requester() {
        let policy = compiled(&smoke_policy());
        for operation in [Operation::Create, Operation::Duplicate] {
            for r in RIGHTS {
                let decision = decide(&policy, SMOKE, r.object, operation, r.mask);
                let expected = if r.stripped { 0 } else { r.mask };
                assert_eq!(decision.access, expected, "{} {operation:?}", r.name);
                assert_eq!(decision.audit, r.stripped, "{}", r.name);
                assert_eq!(decision.rule, r.stripped.then_some(0), "{}", r.name);
            }
            let all = decide(
                &policy,
                SMOKE,
                ObjectKind::Process,
                operation,
                PROCESS_ALL_ACCESS,
            );
            assert_eq!(
                all.access,
                PROCESS_ALL_ACCESS & !strip_mask(ObjectKind::Process)
            );
        }
    }

    #[test]
    fn the_exempt_copy_keeps_every_right() {
        let policy = compiled(&smoke_policy());
        let exempt = format!("{DIR}{EXEMPT_NAME}");
        for r in RIGHTS {
            let decision = decide(&policy, &exempt, r.object, Operation::Create, r.mask);
            assert_eq!(decision.access, r.mask, "{}", r.name);
            assert!(!decision.audit);
        }
        let all = decide(
            &policy,
            &exempt,
            ObjectKind::Process,
            Operation::Create,
            PROCESS_ALL_ACCESS,
        );
        assert_eq!(all.access, PROCESS_ALL_ACCESS);
    }

    #[test]
    fn other_processes_are_not_protected() {
        let policy = compiled(&smoke_policy());
        let requester = policy.classify(&ProcessIdentity {
            pid: 1000,
            image_path: SMOKE,
        });
        let other = policy.classify(&ProcessIdentity {
            pid: 3000,
            image_path: r"\Device\HarddiskVolume3\Windows\System32\notepad.exe",
        });
        let decision = policy.decide(
            &other,
            &requester,
            &HandleRequest {
                object: ObjectKind::Process,
                operation: Operation::Create,
                desired_access: PROCESS_ALL_ACCESS,
                kernel_handle: false,
                same_process: false,
            },
        );
        assert_eq!(decision.access, PROCESS_ALL_ACCESS);
    }

    #[test]
    fn the_empty_policy_has_no_rules_and_strips_nothing() {
        let policy = parse_policy(&empty_policy()).unwrap();
        assert!(policy.rules.is_empty());
        let policy = CompiledPolicy::new(&policy).unwrap();
        for r in RIGHTS {
            assert_eq!(
                decide(&policy, SMOKE, r.object, Operation::Create, r.mask).access,
                r.mask
            );
        }
    }
}
