//! Checks, the PASS/FAIL table and the exit code.

use std::fmt::Write as _;

use crate::probe::{Observation, Outcome};
use crate::rights::{self, RIGHTS};

/// Every check passed.
pub const EXIT_PASS: u8 = 0;
/// At least one check failed (or none ran).
pub const EXIT_FAIL: u8 = 1;
/// The run could not start: not elevated, procguardctl.exe missing, the
/// driver unreachable, the policy in force unreadable, the target not
/// started. Nothing was changed.
pub const EXIT_CANNOT_START: u8 = 2;
/// Not Windows.
pub const EXIT_NOT_WINDOWS: u8 = 3;

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// What was checked.
    pub check: String,
    /// What a protecting driver gives.
    pub expected: String,
    /// What happened.
    pub observed: String,
    /// Whether `observed` is what was expected.
    pub pass: bool,
}

impl Row {
    /// A row.
    pub fn new(
        check: impl Into<String>,
        expected: impl Into<String>,
        observed: impl Into<String>,
        pass: bool,
    ) -> Self {
        Self {
            check: check.into(),
            expected: expected.into(),
            observed: observed.into(),
            pass,
        }
    }
}

/// What a right should have become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Removed from the handle.
    Stripped,
    /// Still on the handle.
    Kept,
}

/// One row per right of [`RIGHTS`]: `expect(right)` against what
/// `observations` say. A right with no observation fails, and so does a
/// failed open (procguard removes rights, it never fails an open).
pub fn evaluate_opens(
    requester: &str,
    observations: &[Observation],
    expect: impl Fn(&rights::RightOfInterest) -> Expect,
) -> Vec<Row> {
    RIGHTS
        .iter()
        .map(|right| {
            let check = format!(
                "{requester}: {} {}",
                rights::object_word(right.object),
                right.name
            );
            let expected = expect(right);
            let expected_text = match expected {
                Expect::Stripped => "stripped",
                Expect::Kept => "kept",
            };
            let outcome = observations
                .iter()
                .find(|o| o.right == right)
                .map(|o| o.outcome);
            let (observed, pass) = match outcome {
                None => ("not observed".to_owned(), false),
                Some(Outcome::Granted(granted)) => {
                    let kept = granted & right.mask == right.mask;
                    let word = if kept { "kept" } else { "stripped" };
                    let pass = match expected {
                        Expect::Stripped => granted & right.mask == 0,
                        Expect::Kept => kept,
                    };
                    (format!("{word} (granted {granted:#x})"), pass)
                }
                Some(other) => (other.to_string(), false),
            };
            Row::new(check, expected_text, observed, pass)
        })
        .collect()
}

/// The table: a heading, one line per row, columns padded to their widest
/// cell, then the verdict line.
#[must_use]
pub fn render_table(rows: &[Row]) -> String {
    const HEADINGS: [&str; 4] = ["CHECK", "EXPECTED", "OBSERVED", "RESULT"];
    let width = |cell: fn(&Row) -> &str, heading: &str| {
        rows.iter()
            .map(|r| cell(r).chars().count())
            .chain(Some(heading.len()))
            .max()
            .unwrap_or(0)
    };
    let check = width(|r| &r.check, HEADINGS[0]);
    let expected = width(|r| &r.expected, HEADINGS[1]);
    let observed = width(|r| &r.observed, HEADINGS[2]);
    let mut out = String::new();
    let mut line = |a: &str, b: &str, c: &str, d: &str| {
        let _ = writeln!(out, "{a:<check$}  {b:<expected$}  {c:<observed$}  {d}");
    };
    line(HEADINGS[0], HEADINGS[1], HEADINGS[2], HEADINGS[3]);
    for row in rows {
        line(
            &row.check,
            &row.expected,
            &row.observed,
            if row.pass { "PASS" } else { "FAIL" },
        );
    }
    let failed = rows.iter().filter(|r| !r.pass).count();
    let verdict = if exit_code(rows) == EXIT_PASS {
        "PASS"
    } else {
        "FAIL"
    };
    let _ = writeln!(
        out,
        "procguard-smoke: {} checks, {failed} failed: {verdict}",
        rows.len()
    );
    out
}

/// [`EXIT_PASS`] when there are rows and all pass; else [`EXIT_FAIL`] (a run
/// that checked nothing proves nothing).
#[must_use]
pub fn exit_code(rows: &[Row]) -> u8 {
    if !rows.is_empty() && rows.iter().all(|r| r.pass) {
        EXIT_PASS
    } else {
        EXIT_FAIL
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::observe;

    fn by_policy(right: &rights::RightOfInterest) -> Expect {
        if right.stripped {
            Expect::Stripped
        } else {
            Expect::Kept
        }
    }

    #[test]
    fn a_driver_that_strips_what_the_policy_says_passes_every_row() {
        let observations =
            observe(|object, access| Outcome::Granted(access & !rights::strip_mask(object)));
        let rows = evaluate_opens("requester", &observations, by_policy);
        assert_eq!(rows.len(), RIGHTS.len());
        assert!(rows.iter().all(|r| r.pass), "{rows:#?}");
        assert_eq!(
            rows[0],
            Row::new(
                "requester: process PROCESS_TERMINATE",
                "stripped",
                "stripped (granted 0x0)",
                true
            )
        );
        let kept = rows
            .iter()
            .find(|r| r.check.ends_with("THREAD_GET_CONTEXT"))
            .unwrap();
        assert_eq!(kept.observed, "kept (granted 0x8)");
        assert_eq!(exit_code(&rows), EXIT_PASS);
    }

    #[test]
    fn a_kept_right_that_should_be_stripped_fails() {
        let observations = observe(|_, access| Outcome::Granted(access));
        let rows = evaluate_opens("requester", &observations, by_policy);
        let terminate = &rows[0];
        assert_eq!(terminate.observed, "kept (granted 0x1)");
        assert!(!terminate.pass);
        assert_eq!(
            rows.iter().filter(|r| !r.pass).count(),
            RIGHTS.iter().filter(|r| r.stripped).count()
        );
        assert_eq!(exit_code(&rows), EXIT_FAIL);
    }

    #[test]
    fn a_stripped_right_that_should_be_kept_fails() {
        let observations = observe(|_, _| Outcome::Granted(0));
        let rows = evaluate_opens("exempt", &observations, |_| Expect::Kept);
        assert!(rows
            .iter()
            .all(|r| !r.pass && r.observed == "stripped (granted 0x0)"));
    }

    #[test]
    fn extra_granted_bits_do_not_matter_only_the_right_asked_for() {
        let observations = observe(|_, access| Outcome::Granted(access | 0x1000));
        let rows = evaluate_opens("exempt", &observations, |_| Expect::Kept);
        assert!(rows.iter().all(|r| r.pass));
    }

    #[test]
    fn failed_opens_and_missing_observations_fail() {
        let mut observations = observe(|_, _| Outcome::OpenFailed(5));
        observations[1].outcome = Outcome::QueryFailed(0xC000_0008);
        observations.pop();
        let rows = evaluate_opens("requester", &observations, by_policy);
        assert!(rows.iter().all(|r| !r.pass));
        assert_eq!(rows[0].observed, "open failed: error 5");
        assert_eq!(rows[1].observed, "NtQueryObject failed: 0xc0000008");
        assert_eq!(rows.last().unwrap().observed, "not observed");
    }

    #[test]
    fn the_table_aligns_columns_and_ends_with_the_verdict() {
        let rows = [
            Row::new("a check", "x", "x", true),
            Row::new("a longer check", "expected value", "y", false),
        ];
        let table = render_table(&rows);
        assert_eq!(
            table,
            "CHECK           EXPECTED        OBSERVED  RESULT\n\
             a check         x               x         PASS\n\
             a longer check  expected value  y         FAIL\n\
             procguard-smoke: 2 checks, 1 failed: FAIL\n"
        );
        assert!(render_table(&rows[..1]).ends_with("1 checks, 0 failed: PASS\n"));
    }

    #[test]
    fn the_exit_code_is_1_on_any_failure_and_on_no_check() {
        let pass = Row::new("a", "b", "b", true);
        let fail = Row::new("a", "b", "c", false);
        assert_eq!(exit_code(&[pass.clone(), pass.clone()]), EXIT_PASS);
        assert_eq!(exit_code(&[pass.clone(), fail.clone(), pass]), EXIT_FAIL);
        assert_eq!(exit_code(&[fail]), EXIT_FAIL);
        assert_eq!(exit_code(&[]), EXIT_FAIL);
        assert!(render_table(&[]).ends_with("0 checks, 0 failed: FAIL\n"));
    }
}
