//! Computing the proposal: which requester images, exempted from which
//! rules, would have kept the recorded requests working — and nothing more.
//!
//! A record teaches when all of these hold (otherwise it is counted under
//! the reason in [`NotLearned`]):
//! - it is an `audit` or `enforce` record (an `ask` record was decided by the
//!   handler, see the module documentation of [`crate::learn`]);
//! - its rule, matched by name, is in the policy;
//! - its requester's image is known: `SourceImage` is a path, and for a
//!   duplicate the caller is the receiving process (the record's image is the
//!   caller's; the policy judges the receiver);
//! - the image is an NT path a pattern can name;
//! - the rule as written still restricts that requester (not already
//!   exempt, nor a critical system process under `exempt_critical_requesters`);
//! - the rule as written still removes a right the request asked for (its
//!   objects, operations and rights, and its target when `TargetImage` is
//!   known): an exemption that changes no recorded decision is not proposed.
//!
//! Learned images are grouped per rule by [`exemption_pattern`]: one entry
//! per distinct pattern (case-insensitively), which is the smallest set — each
//! entry covers requests no other entry covers, and dropping any of them
//! strips some recorded request again.

use std::collections::BTreeMap;

use procguard_policy::glob;
use procguard_policy::reference::{requester_restricted, selector_matches};
use procguard_policy::{
    is_critical_system_process, Operation, Policy, ProcessIdentity, Requester, Selector,
};

use super::records::{HandleRecord, RecordMode, Recorded, RecordedImage};

/// Examples kept per exemption.
pub const EXAMPLES: usize = 3;

/// How a rule's requester is written, which decides how an exemption is
/// expressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequesterForm {
    /// `"any"` (or no `requester` key): becomes `{ except = { path = [...] } }`.
    Any,
    /// `{ except = ... }`: its `path` list is extended.
    AnyExcept,
    /// `{ path/name/pid = ... }` ("only these"): adding cannot exempt anybody;
    /// the entries that select the requester are reported for removal.
    Only,
}

/// One proposed exemption: a path pattern added to a rule's requester
/// exceptions, and the recorded requests it lets through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exemption {
    /// The pattern (the image path with its volume generalised).
    pub pattern: String,
    /// The distinct image paths recorded (case-insensitively).
    pub images: Vec<String>,
    /// Recorded requests it covers.
    pub requests: usize,
    /// Of those, audit records (the others are enforce records).
    pub audit: usize,
    /// The first few records.
    pub examples: Vec<HandleRecord>,
}

/// A selector entry of an "only" requester that selects a learned image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnlyEntry {
    /// `name = "..."`.
    Name(String),
    /// `path = '...'`.
    Path(String),
    /// `pid = ...`.
    Pid(u32),
}

impl std::fmt::Display for OnlyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Name(name) => write!(f, "name = {}", super::edit::toml_string(name)),
            Self::Path(path) => write!(f, "path = {}", super::edit::toml_string(path)),
            Self::Pid(pid) => write!(f, "pid = {pid}"),
        }
    }
}

/// What one rule learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleProposal {
    /// The rule's index in the policy.
    pub index: usize,
    /// Its name.
    pub name: String,
    /// Its mode in the policy (`enforce`, `audit`, `ask`).
    pub mode: &'static str,
    /// How its requester is written.
    pub form: RequesterForm,
    /// Exemptions, sorted by pattern. For an [`RequesterForm::Only`] rule
    /// these are what *would* be needed; the TOML is not changed.
    pub exemptions: Vec<Exemption>,
    /// [`RequesterForm::Only`]: per exemption (same order), the selector
    /// entries that select its images and would have to go.
    pub only_entries: Vec<Vec<OnlyEntry>>,
}

/// Records that taught nothing, by reason. Maps are keyed by rule name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotLearned {
    /// Records naming no rule.
    pub no_rule: usize,
    /// Records of rules the policy does not have.
    pub unknown_rule: BTreeMap<String, usize>,
    /// Ask records.
    pub ask: BTreeMap<String, usize>,
    /// Records without `SourceImage` (key absent or null).
    pub no_image: BTreeMap<String, usize>,
    /// Duplicates whose caller is not the receiving process.
    pub duplicate_receiver: BTreeMap<String, usize>,
    /// Images that are not NT paths a pattern can name, with their count.
    pub not_nt_path: BTreeMap<String, usize>,
    /// Requesters the rule no longer restricts (already exempt).
    pub already_exempt: BTreeMap<String, usize>,
    /// Requests the rule as written no longer strips.
    pub not_stripped: BTreeMap<String, usize>,
}

impl NotLearned {
    /// Total records.
    #[must_use]
    pub fn total(&self) -> usize {
        let sum = |map: &BTreeMap<String, usize>| map.values().sum::<usize>();
        self.no_rule
            + sum(&self.unknown_rule)
            + sum(&self.ask)
            + sum(&self.no_image)
            + sum(&self.duplicate_receiver)
            + sum(&self.not_nt_path)
            + sum(&self.already_exempt)
            + sum(&self.not_stripped)
    }
}

/// The whole proposal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proposal {
    /// Handle records read.
    pub records: usize,
    /// Policy records skipped.
    pub policy_records: usize,
    /// Rules that learned something, in policy order.
    pub rules: Vec<RuleProposal>,
    /// What was not learned, and why.
    pub not_learned: NotLearned,
}

impl Proposal {
    /// Whether the TOML changes (some rule not written as "only" learned).
    #[must_use]
    pub fn changes_policy(&self) -> bool {
        self.rules
            .iter()
            .any(|rule| rule.form != RequesterForm::Only && !rule.exemptions.is_empty())
    }
}

/// The pattern an image is exempted by: the NT path with a hard-disk volume
/// number generalised (`\Device\HarddiskVolume3\` becomes
/// `\Device\HarddiskVolume*\`), because volume numbers differ between
/// machines of a fleet and after disk changes, while the directory layout of
/// an installed program does not. Every other path is kept as it is. The
/// pattern is a glob: `*` stays inside one path component, so it matches the
/// same file on any volume, nothing else.
#[must_use]
pub fn exemption_pattern(image: &str) -> String {
    const PREFIX: &str = r"\Device\HarddiskVolume";
    if let Some(prefix) = image.get(..PREFIX.len()) {
        if prefix.eq_ignore_ascii_case(PREFIX) {
            let rest = &image[PREFIX.len()..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0 && rest[digits..].starts_with('\\') {
                return format!(r"{prefix}*{}", &rest[digits..]);
            }
        }
    }
    image.to_owned()
}

fn count(map: &mut BTreeMap<String, usize>, key: &str) {
    *map.entry(key.to_owned()).or_default() += 1;
}

/// The entries of `selector` that select `id`.
fn selecting_entries(selector: &Selector, id: &ProcessIdentity<'_>) -> Vec<OnlyEntry> {
    let one = |names: Vec<_>, paths: Vec<_>, pids: Vec<_>| {
        selector_matches(&Selector { names, paths, pids }, id)
    };
    let mut entries = Vec::new();
    for name in &selector.names {
        if one(vec![name.clone()], Vec::new(), Vec::new()) {
            entries.push(OnlyEntry::Name(name.to_string()));
        }
    }
    for path in &selector.paths {
        if one(Vec::new(), vec![path.clone()], Vec::new()) {
            entries.push(OnlyEntry::Path(path.to_string()));
        }
    }
    if selector.pids.contains(&id.pid) {
        entries.push(OnlyEntry::Pid(id.pid));
    }
    entries
}

/// Works out the proposal for `policy` from the recorded events.
#[must_use]
pub fn propose(policy: &Policy, recorded: &Recorded) -> Proposal {
    let mut not = NotLearned::default();
    // Per rule index: folded pattern -> exemption.
    let mut learned: BTreeMap<usize, BTreeMap<Vec<char>, Exemption>> = BTreeMap::new();
    for record in &recorded.handles {
        let Some(rule_name) = record.rule.as_deref() else {
            not.no_rule += 1;
            continue;
        };
        let Some(index) = policy.rules.iter().position(|r| &*r.name == rule_name) else {
            count(&mut not.unknown_rule, rule_name);
            continue;
        };
        let rule = &policy.rules[index];
        if record.mode == RecordMode::Ask {
            count(&mut not.ask, rule_name);
            continue;
        }
        let RecordedImage::Path(image) = &record.source_image else {
            count(&mut not.no_image, rule_name);
            continue;
        };
        if record.duplication && record.source_pid != record.receiver_pid {
            count(&mut not.duplicate_receiver, rule_name);
            continue;
        }
        let pattern = exemption_pattern(image);
        if glob::validate(&pattern).is_err() {
            count(&mut not.not_nt_path, image);
            continue;
        }
        let requester = ProcessIdentity {
            pid: record.requester_pid(),
            image_path: image,
        };
        let critical_exempt =
            policy.settings.exempt_critical_requesters && is_critical_system_process(&requester);
        if critical_exempt || !requester_restricted(&rule.requester, &requester) {
            count(&mut not.already_exempt, rule_name);
            continue;
        }
        let operation = if record.duplication {
            Operation::Duplicate
        } else {
            Operation::Create
        };
        let strips = rule.strip_for(record.object, operation) & record.original_access != 0;
        let target_selected = record.target_image.as_deref().is_none_or(|target| {
            selector_matches(
                &rule.target,
                &ProcessIdentity {
                    pid: record.target_pid,
                    image_path: target,
                },
            )
        });
        if !strips || !target_selected {
            count(&mut not.not_stripped, rule_name);
            continue;
        }
        let exemption = learned
            .entry(index)
            .or_default()
            .entry(glob::fold(&pattern))
            .or_insert_with(|| Exemption {
                pattern,
                images: Vec::new(),
                requests: 0,
                audit: 0,
                examples: Vec::new(),
            });
        if !exemption
            .images
            .iter()
            .any(|known| known.eq_ignore_ascii_case(image))
        {
            exemption.images.push(image.clone());
        }
        exemption.requests += 1;
        if record.mode == RecordMode::Audit {
            exemption.audit += 1;
        }
        if exemption.examples.len() < EXAMPLES {
            exemption.examples.push(record.clone());
        }
    }
    let rules = learned
        .into_iter()
        .map(|(index, exemptions)| {
            let rule = &policy.rules[index];
            let exemptions: Vec<Exemption> = exemptions.into_values().collect();
            let (form, only_entries) = match &rule.requester {
                Requester::Any => (RequesterForm::Any, Vec::new()),
                Requester::AnyExcept(_) => (RequesterForm::AnyExcept, Vec::new()),
                Requester::Only(selector) => {
                    let entries = exemptions
                        .iter()
                        .map(|exemption| only_entries(selector, exemption))
                        .collect();
                    (RequesterForm::Only, entries)
                }
            };
            RuleProposal {
                index,
                name: rule.name.to_string(),
                mode: rule.mode.name(),
                form,
                exemptions,
                only_entries,
            }
        })
        .collect();
    Proposal {
        records: recorded.handles.len(),
        policy_records: recorded.policy_records,
        rules,
        not_learned: not,
    }
}

/// The entries of an "only" selector that select an exemption's images (by
/// name or path) or the process ids of its examples.
fn only_entries(selector: &Selector, exemption: &Exemption) -> Vec<OnlyEntry> {
    let by_image = exemption.images.iter().map(|image| ProcessIdentity {
        // Not a process id Windows hands out: matches by name and path only.
        pid: u32::MAX,
        image_path: image,
    });
    let by_pid = exemption
        .examples
        .iter()
        .filter_map(|example| match &example.source_image {
            RecordedImage::Path(image) => Some(ProcessIdentity {
                pid: example.requester_pid(),
                image_path: image,
            }),
            _ => None,
        });
    let mut entries = Vec::new();
    for id in by_image.chain(by_pid) {
        for entry in selecting_entries(selector, &id) {
            if !entries.contains(&entry) {
                entries.push(entry);
            }
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::exemption_pattern;

    #[test]
    fn only_the_hard_disk_volume_number_is_generalised() {
        assert_eq!(
            exemption_pattern(r"\Device\HarddiskVolume3\Tools\a.exe"),
            r"\Device\HarddiskVolume*\Tools\a.exe"
        );
        assert_eq!(
            exemption_pattern(r"\device\harddiskvolume12\x.exe"),
            r"\device\harddiskvolume*\x.exe"
        );
        for kept in [
            r"\Device\HarddiskVolume\x.exe",
            r"\Device\HarddiskVolumeX3\x.exe",
            r"\Device\HarddiskVolume3",
            r"\Device\Mup\server\share\x.exe",
            r"C:\Tools\x.exe",
            "",
        ] {
            assert_eq!(exemption_pattern(kept), kept);
        }
    }
}
