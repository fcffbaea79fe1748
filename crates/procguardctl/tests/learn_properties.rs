//! Property test of `procguardctl learn`: random policies (audit and enforce
//! rules whose requester is "any", "any except" or "only", over a small set
//! of image paths on two volumes) and random recorded event sets. After
//! learning, judged with the reference evaluator of `procguard_policy`:
//! - every learned request is no longer restricted by its rule;
//! - every other requester is restricted exactly as before (only the images
//!   a learned pattern names change), and requests from images no pattern
//!   names are decided exactly as before;
//! - the proposal is minimal: dropping any one added exemption restricts some
//!   learned request again.

use proptest::prelude::*;

use procguard_policy::reference::{evaluate, requester_restricted};
use procguard_policy::toml::parse_policy;
use procguard_policy::{HandleRequest, ObjectKind, Operation, Policy, ProcessIdentity, Requester};
use procguardctl::learn::learn;
use procguardctl::learn::proposal::exemption_pattern;

const TARGET: &str = r"\Device\HarddiskVolume1\T\t.exe";

/// Twelve images: two volumes, two directories, three names.
fn images() -> Vec<String> {
    let mut all = Vec::new();
    for volume in [1, 2] {
        for dir in ["A", "B"] {
            for name in ["x", "y", "z"] {
                all.push(format!(r"\Device\HarddiskVolume{volume}\{dir}\{name}.exe"));
            }
        }
    }
    all
}

#[derive(Debug, Clone)]
enum Form {
    Any,
    /// Image indexes, each written as its exact path or its pattern.
    Except(Vec<(usize, bool)>),
    Only(Vec<(usize, bool)>),
}

#[derive(Debug, Clone)]
struct RuleSpec {
    form: Form,
    enforce: bool,
}

fn entries() -> impl Strategy<Value = Vec<(usize, bool)>> {
    prop::collection::vec((0..12usize, any::<bool>()), 1..4)
}

fn rule_spec() -> impl Strategy<Value = RuleSpec> {
    (
        prop_oneof![
            Just(Form::Any),
            entries().prop_map(Form::Except),
            entries().prop_map(Form::Only),
        ],
        any::<bool>(),
    )
        .prop_map(|(form, enforce)| RuleSpec { form, enforce })
}

fn selector(entries: &[(usize, bool)], images: &[String]) -> String {
    let paths: Vec<String> = entries
        .iter()
        .map(|(index, general)| {
            let image = &images[*index];
            format!(
                "'{}'",
                if *general {
                    exemption_pattern(image)
                } else {
                    image.clone()
                }
            )
        })
        .collect();
    format!("{{ path = [{}] }}", paths.join(", "))
}

fn policy_text(rules: &[RuleSpec], images: &[String]) -> String {
    let mut text = String::from("# generated\n");
    for (index, rule) in rules.iter().enumerate() {
        text.push_str(&format!(
            "\n[[rule]]\nname = \"r{index}\"\ntarget = {{ name = \"t.exe\" }}\n"
        ));
        match &rule.form {
            Form::Any => text.push_str("requester = \"any\"\n"),
            Form::Except(entries) => text.push_str(&format!(
                "requester = {{ except = {} }}\n",
                selector(entries, images)
            )),
            Form::Only(entries) => {
                text.push_str(&format!("requester = {}\n", selector(entries, images)));
            }
        }
        text.push_str(&format!(
            "objects = \"process\"\nstrip = [\"PROCESS_TERMINATE\"]\nmode = \"{}\"\n",
            if rule.enforce { "enforce" } else { "audit" }
        ));
    }
    text
}

fn event_line(rule: usize, image: &str, pid: u32, enforce: bool) -> String {
    format!(
        "{{\"UtcTime\":\"2026-12-01 10:00:00.000\",\"SourceProcessId\":{pid},\"SourceThreadId\":1,\
         \"TargetProcessId\":9000,\"ThreadId\":0,\"Object\":\"process\",\"GrantedAccess\":\"{}\",\
         \"OriginalDesiredAccess\":\"0x1\",\"Rule\":\"r{rule}\",\"RuleId\":{rule},\"Mode\":\"{}\",\
         \"AskOutcome\":null,\"AskWaitMicroseconds\":0,\"ResultCode\":0,\"Duplication\":false,\
         \"DuplicateSourceProcessId\":0,\"DuplicateTargetProcessId\":0,\"Sequence\":1,\
         \"SourceImage\":{},\"TargetImage\":{}}}",
        if enforce { "0x0" } else { "0x1" },
        if enforce { "enforce" } else { "audit" },
        serde_json::to_string(image).unwrap(),
        serde_json::to_string(TARGET).unwrap(),
    )
}

fn pid_of(index: usize) -> u32 {
    1000 + u32::try_from(index).unwrap()
}

fn restricted(policy: &Policy, rule: usize, image: &str, pid: u32) -> bool {
    requester_restricted(
        &policy.rules[rule].requester,
        &ProcessIdentity {
            pid,
            image_path: image,
        },
    )
}

fn same_pattern(a: &str, b: &str) -> bool {
    exemption_pattern(a).eq_ignore_ascii_case(&exemption_pattern(b))
}

fn except_paths(policy: &Policy, rule: usize) -> Vec<String> {
    match &policy.rules[rule].requester {
        Requester::AnyExcept(selector) => selector.paths.iter().map(|p| p.to_string()).collect(),
        _ => Vec::new(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn learned_requests_pass_others_are_stripped_as_before_and_nothing_is_superfluous(
        rules in prop::collection::vec(rule_spec(), 1..5),
        events in prop::collection::vec((0..5usize, 0..12usize), 0..24),
    ) {
        let images = images();
        let text = policy_text(&rules, &images);
        let old = parse_policy(&text).expect("generated policy is valid");
        let events: Vec<(usize, usize)> =
            events.into_iter().filter(|(rule, _)| *rule < rules.len()).collect();
        let lines: Vec<String> = events
            .iter()
            .map(|(rule, image)| event_line(*rule, &images[*image], pid_of(*image), rules[*rule].enforce))
            .collect();
        let learned = learn(&text, &lines.join("\n")).expect("learn succeeds");
        let new = parse_policy(&learned.text).expect("the proposal passes check");
        prop_assert_eq!(&new, &learned.policy);

        // Per rule, the images learned: recorded, and restricted before.
        let mut taught: Vec<Vec<usize>> = vec![Vec::new(); rules.len()];
        for (rule, image) in &events {
            if restricted(&old, *rule, &images[*image], pid_of(*image))
                && !taught[*rule].contains(image)
            {
                taught[*rule].push(*image);
            }
        }
        for (rule, spec) in rules.iter().enumerate() {
            let only = matches!(spec.form, Form::Only(_));
            for (index, image) in images.iter().enumerate() {
                let pid = pid_of(index);
                let named = !only
                    && taught[rule].iter().any(|learned| same_pattern(&images[*learned], image));
                let expected = restricted(&old, rule, image, pid) && !named;
                prop_assert_eq!(
                    restricted(&new, rule, image, pid),
                    expected,
                    "rule r{} image {}\n{}", rule, image, learned.text
                );
            }
            // Minimal: each added exemption is needed by a learned request.
            let before = except_paths(&old, rule);
            for added in except_paths(&new, rule).into_iter().filter(|p| !before.contains(p)) {
                let mut reduced = new.clone();
                if let Requester::AnyExcept(selector) = &mut reduced.rules[rule].requester {
                    selector.paths.retain(|p| **p != *added);
                    if selector.is_empty() {
                        reduced.rules[rule].requester = Requester::Any;
                    }
                }
                prop_assert!(
                    taught[rule]
                        .iter()
                        .any(|i| restricted(&reduced, rule, &images[*i], pid_of(*i))),
                    "exemption {} of rule r{} lets no learned request through", added, rule
                );
            }
        }
        // Requests from images no learned pattern names: decided as before.
        let all_taught: Vec<usize> = taught.iter().flatten().copied().collect();
        let target = ProcessIdentity { pid: 9000, image_path: TARGET };
        let request = HandleRequest {
            object: ObjectKind::Process,
            operation: Operation::Create,
            desired_access: 0x1,
            kernel_handle: false,
            same_process: false,
        };
        for (index, image) in images.iter().enumerate() {
            if all_taught.iter().any(|learned| same_pattern(&images[*learned], image)) {
                continue;
            }
            let requester = ProcessIdentity { pid: pid_of(index), image_path: image };
            prop_assert_eq!(
                evaluate(&new, &target, &requester, &request).decision,
                evaluate(&old, &target, &requester, &request).decision
            );
        }
        // Learning again from the same events proposes nothing.
        let again = learn(&learned.text, &lines.join("\n")).expect("learn again");
        prop_assert!(!again.changes_policy());
    }
}
