//! The proposal in words: per rule the exemptions with their counts and a
//! few example requests, then what was not learned and why.

use std::fmt::Write as _;

use procguard_policy::ObjectKind;

use super::edit::toml_string;
use super::proposal::{NotLearned, Proposal, RequesterForm, RuleProposal};
use super::records::HandleRecord;

fn plural(count: usize, word: &str) -> String {
    if count == 1 {
        format!("1 {word}")
    } else {
        format!("{count} {word}s")
    }
}

/// One example request, as a reviewer reads it.
fn example(record: &HandleRecord) -> String {
    let mut text = format!("line {}", record.line);
    if let Some(time) = &record.utc_time {
        let _ = write!(text, " ({time})");
    }
    let object = match record.object {
        ObjectKind::Process => "process",
        ObjectKind::Thread => "thread",
    };
    let verb = if record.duplication {
        "received a duplicated"
    } else {
        "opened a"
    };
    let _ = write!(
        text,
        ": pid {} {verb} {object} handle to pid {}",
        record.requester_pid(),
        record.target_pid
    );
    if let Some(target) = &record.target_image {
        let _ = write!(text, " {}", toml_string(target));
    }
    let _ = write!(
        text,
        ", asking {:#x}, {} {:#x}",
        record.original_access,
        record.mode.name(),
        record.granted_access
    );
    text
}

fn rule_heading(rule: &RuleProposal) -> String {
    let requests: usize = rule.exemptions.iter().map(|e| e.requests).sum();
    let how = match rule.form {
        RequesterForm::Any => "requester \"any\" becomes \"any except\"",
        RequesterForm::AnyExcept => "its requester exceptions grow",
        RequesterForm::Only => "it restricts only the requesters it lists: NOT changed",
    };
    format!(
        "rule {:?} ({}; {how}): {}, {}",
        rule.name,
        rule.mode,
        plural(rule.exemptions.len(), "requester"),
        plural(requests, "request"),
    )
}

/// The report (ends with a newline).
#[must_use]
pub fn render(proposal: &Proposal, events_name: &str, policy_name: &str) -> String {
    let mut out = String::new();
    let learned: usize = proposal
        .rules
        .iter()
        .flat_map(|rule| &rule.exemptions)
        .map(|exemption| exemption.requests)
        .sum();
    let _ = write!(
        out,
        "{} in {events_name}",
        plural(proposal.records, "handle record")
    );
    if proposal.policy_records != 0 {
        let _ = write!(
            out,
            " ({} skipped)",
            plural(proposal.policy_records, "policy record")
        );
    }
    let _ = writeln!(
        out,
        ": {learned} teach, {} do not",
        proposal.not_learned.total()
    );
    for rule in &proposal.rules {
        let _ = writeln!(out, "\n{}", rule_heading(rule));
        for (index, exemption) in rule.exemptions.iter().enumerate() {
            let mark = if rule.form == RequesterForm::Only {
                '!'
            } else {
                '+'
            };
            let _ = writeln!(
                out,
                "  {mark} {}: {} ({} audit, {} enforce)",
                toml_string(&exemption.pattern),
                plural(exemption.requests, "request"),
                exemption.audit,
                exemption.requests - exemption.audit,
            );
            if exemption.images.len() > 1
                || exemption
                    .images
                    .first()
                    .is_some_and(|image| image != &exemption.pattern)
            {
                let images: Vec<String> = exemption.images.iter().map(|i| toml_string(i)).collect();
                let _ = writeln!(out, "      recorded as {}", images.join(", "));
            }
            if rule.form == RequesterForm::Only {
                let entries = rule.only_entries.get(index).map_or(&[][..], Vec::as_slice);
                let entries: Vec<String> = entries.iter().map(ToString::to_string).collect();
                let _ = writeln!(
                    out,
                    "      to let it through, remove (or narrow) `{}` in the rule's requester; \
                     that also stops restricting every other process it selects, so learn \
                     leaves it to you",
                    entries.join("`, `")
                );
            }
            for record in &exemption.examples {
                let _ = writeln!(out, "      {}", example(record));
            }
        }
    }
    not_learned(&mut out, &proposal.not_learned, policy_name);
    out
}

fn not_learned(out: &mut String, not: &NotLearned, policy_name: &str) {
    if not.total() == 0 {
        return;
    }
    let _ = writeln!(out, "\nnot learned ({}):", plural(not.total(), "record"));
    if not.no_rule != 0 {
        let _ = writeln!(out, "  {} naming no rule", plural(not.no_rule, "record"));
    }
    let sections: [(&std::collections::BTreeMap<String, usize>, &str); 7] = [
        (
            &not.unknown_rule,
            "of rule {rule}, which POLICY does not have (renamed or removed)",
        ),
        (
            &not.ask,
            "of rule {rule} in ask mode: the handler decided them, and an exemption would stop \
             asking it",
        ),
        (
            &not.no_image,
            "of rule {rule} without a SourceImage: the requester's image was not recorded \
             (events written off Windows, or the process had exited); learn never guesses it \
             from a process id",
        ),
        (
            &not.duplicate_receiver,
            "of rule {rule}: duplicates received by another process than the caller, whose \
             image the record does not carry",
        ),
        (
            &not.not_nt_path,
            "with SourceImage {rule}: not an NT image path a pattern can name",
        ),
        (
            &not.already_exempt,
            "of rule {rule} from requesters it no longer restricts (already exempt)",
        ),
        (
            &not.not_stripped,
            "of rule {rule} that it no longer strips as written (its target, objects, \
             operations or rights changed)",
        ),
    ];
    for (counts, text) in sections {
        for (rule, count) in counts {
            let text = text
                .replace("{rule}", &format!("{rule:?}"))
                .replace("POLICY", policy_name);
            let _ = writeln!(out, "  {} {text}", plural(*count, "record"));
        }
    }
}
