//! Opening the target once per right, and the probe's output: how the exempt
//! copy (`--probe PID TID`) reports what it was granted.
//!
//! The format, one item per line:
//!
//! ```text
//! procguard-smoke-probe 1 pid 6000
//! process PROCESS_TERMINATE 0x1 granted 0x1
//! thread THREAD_SET_CONTEXT 0x10 error 5
//! thread THREAD_GET_CONTEXT 0x8 ntstatus 0xc0000008
//! end 17
//! ```
//!
//! The first line names the format version and the probe's own PID; each
//! following line is an object, a right's name, the access asked for and the
//! outcome: the access the handle was granted (`NtQueryObject`), the Win32
//! error of the open, or the NTSTATUS of the query. `end N` closes a complete
//! report of N opens, so a probe that died halfway is told apart.

use std::fmt;

use procguard_policy::ObjectKind;

use crate::rights::{self, RightOfInterest, RIGHTS};

/// The first word of a probe report.
pub const PROBE_HEADER: &str = "procguard-smoke-probe";
/// The report format's version.
pub const PROBE_VERSION: u32 = 1;

/// What one open gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The handle was opened; its granted access, read back from it.
    Granted(u32),
    /// `OpenProcess`/`OpenThread` failed with this Win32 error.
    OpenFailed(u32),
    /// The handle was opened but `NtQueryObject` failed with this NTSTATUS.
    QueryFailed(u32),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Granted(mask) => write!(f, "granted {mask:#x}"),
            Self::OpenFailed(code) => write!(f, "open failed: error {code}"),
            Self::QueryFailed(status) => write!(f, "NtQueryObject failed: {status:#010x}"),
        }
    }
}

/// One right asked for and what came of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// The right (its mask is the access asked for).
    pub right: &'static RightOfInterest,
    /// What the open gave.
    pub outcome: Outcome,
}

/// Opens the target once per right of [`RIGHTS`] with `open(object, access)`.
pub fn observe(mut open: impl FnMut(ObjectKind, u32) -> Outcome) -> Vec<Observation> {
    RIGHTS
        .iter()
        .map(|right| Observation {
            right,
            outcome: open(right.object, right.mask),
        })
        .collect()
}

/// The probe report of `observations`, made by process `pid`.
#[must_use]
pub fn render_probe(pid: u32, observations: &[Observation]) -> String {
    use std::fmt::Write as _;
    let mut out = format!("{PROBE_HEADER} {PROBE_VERSION} pid {pid}\n");
    for observation in observations {
        let right = observation.right;
        let _ = write!(
            out,
            "{} {} {:#x} ",
            rights::object_word(right.object),
            right.name,
            right.mask
        );
        let _ = match observation.outcome {
            Outcome::Granted(mask) => writeln!(out, "granted {mask:#x}"),
            Outcome::OpenFailed(code) => writeln!(out, "error {code}"),
            Outcome::QueryFailed(status) => writeln!(out, "ntstatus {status:#x}"),
        };
    }
    let _ = writeln!(out, "end {}", observations.len());
    out
}

/// A parsed probe report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    /// The probe's PID.
    pub pid: u32,
    /// Its opens, in report order.
    pub observations: Vec<Observation>,
}

/// `0x1f` or `31`.
pub(crate) fn parse_number(text: &str) -> Option<u32> {
    text.strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .map_or_else(
            || text.parse().ok(),
            |hex| u32::from_str_radix(hex, 16).ok(),
        )
}

fn parse_object(word: &str) -> Option<ObjectKind> {
    match word {
        "process" => Some(ObjectKind::Process),
        "thread" => Some(ObjectKind::Thread),
        _ => None,
    }
}

fn parse_line(line: &str) -> Result<Observation, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let [object, name, requested, kind, value] = words[..] else {
        return Err(format!("expected 5 words: {line:?}"));
    };
    let object = parse_object(object).ok_or_else(|| format!("unknown object {object:?}"))?;
    let right = rights::find(object, name)
        .ok_or_else(|| format!("unknown {} right {name:?}", rights::object_word(object)))?;
    if parse_number(requested) != Some(right.mask) {
        return Err(format!(
            "{name} asked as {requested}, not {:#x}",
            right.mask
        ));
    }
    let value = parse_number(value).ok_or_else(|| format!("bad number {value:?}"))?;
    let outcome = match kind {
        "granted" => Outcome::Granted(value),
        "error" => Outcome::OpenFailed(value),
        "ntstatus" => Outcome::QueryFailed(value),
        other => return Err(format!("unknown outcome {other:?}")),
    };
    Ok(Observation { right, outcome })
}

/// Parses a probe report.
///
/// # Errors
/// What is wrong, with the line number: a missing or other-version header,
/// an unknown object or right, a right reported twice, a missing or wrong
/// `end` line, text after it.
pub fn parse_probe(text: &str) -> Result<ProbeReport, String> {
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
    let (_, header) = lines.next().ok_or("empty probe output")?;
    let pid = match header.split_whitespace().collect::<Vec<_>>()[..] {
        [PROBE_HEADER, version, "pid", pid] if version == PROBE_VERSION.to_string() => pid
            .parse::<u32>()
            .map_err(|_| format!("line 1: bad pid {pid:?}"))?,
        _ => {
            return Err(format!(
                "line 1: not a version {PROBE_VERSION} probe report: {header:?}"
            ))
        }
    };
    let mut observations: Vec<Observation> = Vec::new();
    let mut ended = false;
    for (number, line) in lines {
        if line.is_empty() {
            continue;
        }
        if ended {
            return Err(format!("line {number}: text after the end line: {line:?}"));
        }
        if let Some(count) = line.strip_prefix("end ") {
            if count.trim().parse::<usize>().ok() != Some(observations.len()) {
                return Err(format!(
                    "line {number}: {line:?}, but {} opens were reported",
                    observations.len()
                ));
            }
            ended = true;
            continue;
        }
        let observation = parse_line(line).map_err(|e| format!("line {number}: {e}"))?;
        if observations.iter().any(|o| o.right == observation.right) {
            return Err(format!(
                "line {number}: {} reported twice",
                observation.right.name
            ));
        }
        observations.push(observation);
    }
    if !ended {
        return Err("no end line: the probe stopped early".to_owned());
    }
    Ok(ProbeReport { pid, observations })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Observation> {
        let mut n = 0;
        observe(|object, access| {
            n += 1;
            match (object, n % 3) {
                (_, 0) => Outcome::OpenFailed(5),
                (ObjectKind::Thread, 1) => Outcome::QueryFailed(0xC000_0008),
                _ => Outcome::Granted(access | 0x1000),
            }
        })
    }

    #[test]
    fn observe_opens_every_right_once_with_its_own_mask_and_object() {
        let mut asked = Vec::new();
        let observations = observe(|object, access| {
            asked.push((object, access));
            Outcome::Granted(access)
        });
        assert_eq!(observations.len(), RIGHTS.len());
        let expected: Vec<_> = RIGHTS.iter().map(|r| (r.object, r.mask)).collect();
        assert_eq!(asked, expected);
    }

    #[test]
    fn a_rendered_report_parses_back_to_the_same_observations() {
        let observations = sample();
        let text = render_probe(6000, &observations);
        assert!(
            text.starts_with("procguard-smoke-probe 1 pid 6000\nprocess PROCESS_TERMINATE 0x1 ")
        );
        assert!(text.ends_with(&format!("end {}\n", RIGHTS.len())));
        let report = parse_probe(&text).unwrap();
        assert_eq!(report.pid, 6000);
        assert_eq!(report.observations, observations);
    }

    #[test]
    fn windows_line_endings_are_accepted() {
        let text = render_probe(7, &sample()).replace('\n', "\r\n");
        assert_eq!(parse_probe(&text).unwrap().observations, sample());
    }

    #[test]
    fn a_report_cut_short_is_rejected() {
        let text = render_probe(6000, &sample());
        let cut: String = text.lines().take(4).map(|l| format!("{l}\n")).collect();
        assert_eq!(
            parse_probe(&cut).unwrap_err(),
            "no end line: the probe stopped early"
        );
        assert_eq!(parse_probe("").unwrap_err(), "empty probe output");
    }

    #[test]
    fn malformed_reports_are_rejected_with_the_line() {
        let good = render_probe(6000, &sample());
        let count = format!("but {} opens were reported", RIGHTS.len());
        let cases = [
            (
                good.replace("probe 1 pid", "probe 2 pid"),
                "line 1: not a version 1",
            ),
            (good.replace("pid 6000", "pid x"), "line 1: bad pid"),
            (
                good.replace("PROCESS_TERMINATE 0x1 ", "PROCESS_TERMINATE 0x3 "),
                "line 2: PROCESS_TERMINATE asked as 0x3",
            ),
            (
                good.replace("process PROCESS_TERMINATE", "thread PROCESS_TERMINATE"),
                "line 2: unknown thread right",
            ),
            (
                good.replace("process PROCESS_TERMINATE", "handle PROCESS_TERMINATE"),
                "line 2: unknown object",
            ),
            (
                good.replacen("granted", "gave", 1),
                "line 2: unknown outcome",
            ),
            (
                good.replacen("granted 0x1001", "granted zz", 1),
                "line 2: bad number",
            ),
            (
                good.replace(&format!("end {}", RIGHTS.len()), "end 3"),
                count.as_str(),
            ),
            (
                format!("{good}process PROCESS_TERMINATE 0x1 granted 0x1\n"),
                "text after the end line",
            ),
            (
                good.replacen(
                    "process PROCESS_SUSPEND_RESUME 0x800",
                    "process PROCESS_TERMINATE 0x1",
                    1,
                ),
                "line 3: PROCESS_TERMINATE reported twice",
            ),
        ];
        for (text, expected) in cases {
            let error = parse_probe(&text).unwrap_err();
            assert!(error.contains(expected), "{error:?} lacks {expected:?}");
        }
    }

    #[test]
    fn numbers_are_hex_with_0x_or_decimal() {
        assert_eq!(parse_number("0x1fffff"), Some(0x1F_FFFF));
        assert_eq!(parse_number("0X10"), Some(16));
        assert_eq!(parse_number("5"), Some(5));
        assert_eq!(parse_number("0x"), None);
        assert_eq!(parse_number("-1"), None);
    }
}
