//! `procguardctl learn`: "monitor, then enforce" made concrete.
//!
//! Run the rules in audit mode (or enforce them for a while), collect the
//! events (`procguardctl events --json` or the events service's JSON lines,
//! written on Windows so each record has `SourceImage`), then
//! `procguardctl learn --policy P --events E` proposes the smallest set of
//! requester exemptions that would have let the recorded requests through,
//! grouped by rule with counts and examples, as a unified diff of the TOML.
//! Nothing is applied: `--write NEW.toml` writes the proposed policy to a new
//! file (never over the input, never over an existing file). The proposal is
//! checked exactly as `procguardctl check` checks a file before anything is
//! printed or written; a proposal that fails is an error, not output.
//!
//! # Choices
//!
//! - **Which records teach.** `audit` records (what an audit rule would have
//!   removed) and `enforce` records (what an enforce rule removed) of rules
//!   the policy has, matched by name — ids change when rules move, names are
//!   unique. A record whose rule is gone is reported, not learned. **`ask`
//!   records are not learned**: the handler answered them (or the fallback
//!   did), case by case; an exemption would take the requester away from the
//!   handler for good, a decision for whoever runs the handler, so they are
//!   only counted.
//! - **Which records cannot teach.** A record without `SourceImage` (absent,
//!   or null because the process had exited) cannot be attributed: it is
//!   counted and reported, never guessed from a process id (ids are reused).
//!   For a duplicate the policy judges the process that *receives* the
//!   handle, while `SourceImage` is the caller's: such a record teaches only
//!   when the caller is the receiver.
//! - **Exemption form.** The rule's requester selector: `"any"` (or no
//!   `requester`) becomes `{ except = { path = [...] } }`; an existing
//!   `except` gets its `path` list extended; an "only" requester
//!   (`{ path = [...] }`) cannot exempt anybody by adding an entry, so the
//!   report names the entries that select the requester, to remove or
//!   narrow by hand (removing one may stop restricting other processes too).
//! - **Paths.** The NT image path with a hard-disk volume number generalised
//!   (`\Device\HarddiskVolume3\` → `\Device\HarddiskVolume*\`, the form of the
//!   example policies): volume numbers differ between machines of a fleet
//!   and change with disks, the install directory does not. `*` stays inside
//!   one path component, so it admits the same file on another volume and
//!   nothing else. Other paths (network, `\Device\Mup\...`) are kept whole.
//! - **Smallest.** One entry per distinct pattern per rule; none for a
//!   requester the rule already does not restrict (already excepted, or a
//!   critical system process while `exempt_critical_requesters` is on); none
//!   for a request the rule as written would not strip (its target, when
//!   `TargetImage` is known, objects, operations and rights are checked).
//!   Each remaining entry lets through a request no other entry does.
//! - **Limits.** A record names one rule, the first responsible one; when
//!   another rule strips the same request too, it shows up once the first
//!   is exempted: collect again in audit mode and learn again.
//!
//! Modules: [`records`] reads the events, [`proposal`] computes the
//! exemptions, [`edit`] writes them into the TOML and makes the diff,
//! [`report`] puts the proposal in words.

pub mod edit;
pub mod proposal;
pub mod records;
pub mod report;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;
use procguard_policy::reference::requester_restricted;
use procguard_policy::toml::{parse_policy, TomlErrors};
use procguard_policy::{encode, lint, policy_id, Policy, ProcessIdentity};

use crate::{Failure, Output, EXIT_OK};
use proposal::{Proposal, RequesterForm};
use records::RecordError;

/// `learn`'s arguments.
#[derive(Debug, Args)]
pub struct LearnArgs {
    /// The policy the events were recorded under (TOML).
    #[arg(long)]
    pub policy: PathBuf,
    /// The recorded events: JSON lines as `procguardctl events --json` and
    /// the events service write them, with `SourceImage`.
    #[arg(long)]
    pub events: PathBuf,
    /// Write the proposed policy to this new file (never over the input nor
    /// an existing file).
    #[arg(long, value_name = "NEW.toml")]
    pub write: Option<PathBuf>,
}

/// Why `learn` produced no proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LearnError {
    /// The policy does not pass `check`.
    Policy(TomlErrors),
    /// A line of the events file cannot be read.
    Events(RecordError),
    /// The policy's TOML cannot be edited.
    Edit(String),
    /// The proposed policy does not pass `check`, or does not do what it
    /// should (a bug: nothing is printed or written).
    Check(String),
}

/// A proposal, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Learned {
    /// What was learned and what not.
    pub proposal: Proposal,
    /// The proposed policy's text (the input's when nothing changes).
    pub text: String,
    /// The proposed policy, parsed.
    pub policy: Policy,
    /// Lint warnings of the proposed policy the input did not have.
    pub new_warnings: Vec<String>,
}

impl Learned {
    /// Whether the policy text changes.
    #[must_use]
    pub fn changes_policy(&self) -> bool {
        self.proposal.changes_policy()
    }
}

/// Learns from `events_text` for the policy `policy_text` and checks the
/// proposal: it parses and validates as `check` does, and every learned
/// requester is no longer restricted by its rule.
///
/// # Errors
/// [`LearnError`].
pub fn learn(policy_text: &str, events_text: &str) -> Result<Learned, LearnError> {
    let mark = policy_text.starts_with('\u{feff}');
    let body = policy_text.strip_prefix('\u{feff}').unwrap_or(policy_text);
    let policy = parse_policy(body).map_err(LearnError::Policy)?;
    let recorded = records::read_records(events_text).map_err(LearnError::Events)?;
    let proposal = proposal::propose(&policy, &recorded);
    let text = if proposal.changes_policy() {
        edit::apply(body, &proposal).map_err(LearnError::Edit)?
    } else {
        body.to_owned()
    };
    let proposed = parse_policy(&text).map_err(|errors| {
        LearnError::Check(format!("the proposed policy fails check: {errors}"))
    })?;
    verify(&proposal, &proposed)?;
    let old_warnings: Vec<String> = lint(&policy).into_iter().map(|w| w.to_string()).collect();
    let new_warnings = lint(&proposed)
        .into_iter()
        .map(|w| w.to_string())
        .filter(|w| !old_warnings.contains(w))
        .collect();
    Ok(Learned {
        proposal,
        text: if mark {
            format!("\u{feff}{text}")
        } else {
            text
        },
        policy: proposed,
        new_warnings,
    })
}

/// Every learned image is let through by its rule in the proposed policy.
fn verify(proposal: &Proposal, proposed: &Policy) -> Result<(), LearnError> {
    for rule in &proposal.rules {
        if rule.form == RequesterForm::Only {
            continue;
        }
        let Some(written) = proposed.rules.get(rule.index) else {
            return Err(LearnError::Check(format!(
                "the proposed policy lost rule {:?}",
                rule.name
            )));
        };
        for exemption in &rule.exemptions {
            for example in &exemption.examples {
                if let records::RecordedImage::Path(image) = &example.source_image {
                    let id = ProcessIdentity {
                        pid: example.requester_pid(),
                        image_path: image,
                    };
                    if requester_restricted(&written.requester, &id) {
                        return Err(LearnError::Check(format!(
                            "the proposed rule {:?} still restricts {image:?} (a bug in learn)",
                            rule.name
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

fn read_text(path: &Path) -> Result<String, Failure> {
    let bytes = std::fs::read(path)
        .map_err(|error| Failure::error(format!("cannot read {}: {error}", path.display())))?;
    crate::offline::decode_text(&bytes)
        .map_err(|problem| Failure::error(format!("{}: {problem}", path.display())))
}

/// Whether `new` names the file `input` (which exists).
fn same_file(input: &Path, new: &Path) -> bool {
    match (std::fs::canonicalize(input), std::fs::canonicalize(new)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// `learn`.
///
/// # Errors
/// [`Failure`]: unreadable files, a policy that fails `check`, an unreadable
/// events line, a proposal that fails `check`, or `--write` to an existing file.
pub fn run(args: &LearnArgs, output: &mut Output<'_>) -> Result<u8, Failure> {
    if let Some(new) = &args.write {
        if same_file(&args.policy, new) {
            return Err(Failure::error(format!(
                "--write {}: that is the input policy; learn writes the proposal to a new file",
                new.display()
            )));
        }
        if new.exists() {
            return Err(Failure::error(format!(
                "--write {}: the file exists; learn writes only new files (choose another name \
                 or remove it)",
                new.display()
            )));
        }
    }
    // The input policy is checked (and its errors and warnings printed) as
    // `check` does.
    crate::offline::load(&args.policy, output)?;
    let policy_text = read_text(&args.policy)?;
    let events_text = read_text(&args.events)?;
    let policy_name = args.policy.display().to_string();
    let events_name = args.events.display().to_string();
    let learned = learn(&policy_text, &events_text).map_err(|error| match error {
        LearnError::Policy(errors) => Failure::error(format!("{policy_name}: {errors}")),
        LearnError::Events(error) => Failure::error(format!(
            "{events_name}:{}: {}; nothing learned",
            error.line, error.message
        )),
        LearnError::Edit(message) => Failure::error(format!("{policy_name}: {message}")),
        LearnError::Check(message) => Failure::error(format!("{message}; nothing proposed")),
    })?;
    output
        .out
        .write_all(report::render(&learned.proposal, &events_name, &policy_name).as_bytes())?;
    if !learned.changes_policy() {
        writeln!(output.out, "\nno change to propose for {policy_name}")?;
        if let Some(new) = &args.write {
            writeln!(output.out, "nothing written to {}", new.display())?;
        }
        return Ok(EXIT_OK);
    }
    let diff = edit::unified_diff(
        &policy_text,
        &learned.text,
        &policy_name,
        &format!("{policy_name} (proposed)"),
    );
    writeln!(
        output.out,
        "\nproposed change (review it; nothing is applied):"
    )?;
    output.out.write_all(diff.as_bytes())?;
    let blob = encode(&learned.policy);
    writeln!(
        output.out,
        "\nthe proposed policy passes check: {} rules, policy id {:#010x}",
        learned.policy.rules.len(),
        policy_id(&blob).unwrap_or(0)
    )?;
    for warning in &learned.new_warnings {
        writeln!(output.out, "  new warning: {warning}")?;
    }
    match &args.write {
        Some(new) => {
            write_new(new, &learned.text)?;
            writeln!(
                output.out,
                "wrote {}; enforce it with `procguardctl apply {}` after review",
                new.display(),
                new.display()
            )?;
        }
        None => writeln!(
            output.out,
            "write it with --write NEW.toml, then check and apply that file"
        )?,
    }
    Ok(EXIT_OK)
}

/// Writes a file that must not exist yet.
fn write_new(path: &Path, text: &str) -> Result<(), Failure> {
    let cannot =
        |error: std::io::Error| Failure::error(format!("cannot write {}: {error}", path.display()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(cannot)?;
    file.write_all(text.as_bytes()).map_err(cannot)?;
    file.sync_all().map_err(cannot)
}
