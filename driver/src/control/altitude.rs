//! The altitude of the object-callback registration, and what happens when
//! another driver already holds it.
//!
//! Altitudes are decimal strings (`"385201"`, `"385201.5"`); two registrations
//! at the same altitude fail with `STATUS_FLT_INSTANCE_ALTITUDE_COLLISION`,
//! including two of our own. The altitude comes from the `Altitude` registry
//! value; on a collision the driver tries a bounded number of fractional
//! altitudes just above it (`AltitudeRetries`, 0 = fail at once with the
//! collision status) and records the one it got.
#![forbid(unsafe_code)]

/// The altitude used when the registry has none (or a malformed one).
pub const DEFAULT_ALTITUDE: &str = "385201";
/// Retries after a collision when the registry does not say.
pub const DEFAULT_RETRIES: u32 = 8;
/// Upper bound on retries, whatever the registry says.
pub const MAX_RETRIES: u32 = 32;
/// Longest altitude accepted, in characters (candidates add up to 3 more).
pub const MAX_LEN: usize = 32;
const CAPACITY: usize = MAX_LEN + 4;

/// A validated altitude: ASCII digits with at most one `.` that is neither
/// first nor last. Stored as UTF-16 because that is what the kernel takes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Altitude {
    units: [u16; CAPACITY],
    len: usize,
}

/// Why a configured altitude was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AltitudeError {
    /// Empty, or only NULs.
    Empty,
    /// Longer than [`MAX_LEN`] characters.
    TooLong,
    /// A character other than a digit or a single inner `.`.
    NotDecimal,
}

impl core::fmt::Display for AltitudeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Empty => "altitude is empty",
            Self::TooLong => "altitude is longer than 32 characters",
            Self::NotDecimal => "altitude is not a decimal number like 385201 or 385201.5",
        })
    }
}

impl Altitude {
    /// Parses a UTF-16 altitude (a `REG_SZ` value: trailing NULs are dropped).
    ///
    /// # Errors
    /// [`AltitudeError`] when the text is not an acceptable altitude.
    pub fn from_utf16(units: &[u16]) -> Result<Self, AltitudeError> {
        let end = units
            .iter()
            .rposition(|&unit| unit != 0)
            .map_or(0, |last| last + 1);
        let units = units.get(..end).unwrap_or_default();
        if units.is_empty() {
            return Err(AltitudeError::Empty);
        }
        if units.len() > MAX_LEN {
            return Err(AltitudeError::TooLong);
        }
        let dots = units
            .iter()
            .filter(|&&unit| unit == u16::from(b'.'))
            .count();
        let all_valid = units.iter().all(|&unit| {
            unit == u16::from(b'.') || (u16::from(b'0')..=u16::from(b'9')).contains(&unit)
        });
        let dot_inside =
            units.first() != Some(&u16::from(b'.')) && units.last() != Some(&u16::from(b'.'));
        if !all_valid || dots > 1 || !dot_inside {
            return Err(AltitudeError::NotDecimal);
        }
        let mut altitude = Self {
            units: [0; CAPACITY],
            len: units.len(),
        };
        altitude.units[..units.len()].copy_from_slice(units);
        Ok(altitude)
    }

    /// Parses an ASCII altitude.
    ///
    /// # Errors
    /// As [`Altitude::from_utf16`].
    pub fn from_ascii(text: &str) -> Result<Self, AltitudeError> {
        let mut units = [0u16; MAX_LEN + 1];
        let bytes = text.as_bytes();
        if bytes.len() > MAX_LEN {
            return Err(AltitudeError::TooLong);
        }
        for (unit, &byte) in units.iter_mut().zip(bytes) {
            *unit = u16::from(byte);
        }
        Self::from_utf16(&units[..bytes.len()])
    }

    /// The default altitude.
    #[must_use]
    pub fn default_altitude() -> Self {
        // DEFAULT_ALTITUDE is a valid literal; the fallback is unreachable but
        // keeps this free of panics.
        Self::from_ascii(DEFAULT_ALTITUDE).unwrap_or(Self {
            units: [0x33; CAPACITY],
            len: 6,
        })
    }

    /// The UTF-16 code units (no terminating NUL).
    #[must_use]
    pub fn units(&self) -> &[u16] {
        // `len` never exceeds the capacity; `get` keeps this free of a panic path.
        self.units.get(..self.len).unwrap_or_default()
    }

    /// The `attempt`-th candidate: 0 is the altitude itself; `k` ≥ 1 appends
    /// `k` written in bijective base 9 (digits 1–9, never 0) as a further
    /// fraction: `385201` → `385201.1` … `385201.9`, `385201.11`, `385201.12`;
    /// `385201.5` → `385201.51`. Every candidate sits just above the
    /// configured altitude and below the next integer, and no two candidates
    /// are the same number (digit strings without trailing zeros, so
    /// `.10` = `.1` cannot happen).
    #[must_use]
    pub fn candidate(&self, attempt: u32) -> Self {
        let mut candidate = *self;
        if attempt == 0 {
            return candidate;
        }
        if !self.units().contains(&u16::from(b'.')) {
            candidate.push(u16::from(b'.'));
        }
        let mut digits = [0u16; 3];
        let mut count = 0;
        let mut rest = attempt.min(MAX_RETRIES);
        while rest > 0 && count < digits.len() {
            let digit = (rest - 1) % 9 + 1;
            digits[count] = u16::from(b'0') + digit as u16;
            rest = (rest - digit) / 9;
            count += 1;
        }
        for &digit in digits.iter().take(count).rev() {
            candidate.push(digit);
        }
        candidate
    }

    fn push(&mut self, unit: u16) {
        if let Some(slot) = self.units.get_mut(self.len) {
            *slot = unit;
            self.len += 1;
        }
    }
}

impl core::fmt::Display for Altitude {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for &unit in self.units() {
            // Validated ASCII only.
            core::fmt::Write::write_char(f, char::from(u8::try_from(unit).unwrap_or(b'?')))?;
        }
        Ok(())
    }
}

impl core::fmt::Debug for Altitude {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Altitude({self})")
    }
}

/// Outcome of registering with retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryOutcome<T> {
    /// The registration's result: `Ok` with what `register` produced, or the
    /// last failure status.
    pub result: Result<T, i32>,
    /// The altitude of the last attempt (the one in use on success).
    pub altitude: Altitude,
    /// How many attempts were made (at least 1).
    pub attempts: u32,
}

/// Calls `register` at `base`, then, while it reports
/// `collision_status`, at up to `retries` nearby candidates. Any other
/// failure ends the loop at once.
pub fn register_with_retries<T>(
    base: &Altitude,
    retries: u32,
    collision_status: i32,
    mut register: impl FnMut(&Altitude) -> Result<T, i32>,
) -> RetryOutcome<T> {
    let retries = retries.min(MAX_RETRIES);
    let mut attempt = 0;
    loop {
        let altitude = base.candidate(attempt);
        let result = register(&altitude);
        let attempts = attempt + 1;
        match result {
            Err(status) if status == collision_status && attempt < retries => attempt += 1,
            result => {
                return RetryOutcome {
                    result,
                    altitude,
                    attempts,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    const COLLISION: i32 = 0xC01C_0011_u32 as i32;

    fn utf16(text: &str) -> Vec<u16> {
        text.encode_utf16().collect()
    }

    #[test]
    fn registry_strings_with_trailing_nuls_parse() {
        let mut units = utf16("385201.5");
        units.extend([0, 0]);
        assert_eq!(
            Altitude::from_utf16(&units).unwrap().to_string(),
            "385201.5"
        );
    }

    #[test]
    fn malformed_altitudes_are_rejected_with_a_reason() {
        assert_eq!(Altitude::from_ascii(""), Err(AltitudeError::Empty));
        assert_eq!(Altitude::from_utf16(&[0, 0]), Err(AltitudeError::Empty));
        assert_eq!(
            Altitude::from_ascii(&"1".repeat(33)),
            Err(AltitudeError::TooLong)
        );
        for bad in ["38a201", "1.2.3", ".5", "5.", "-1", " 1"] {
            assert_eq!(
                Altitude::from_ascii(bad),
                Err(AltitudeError::NotDecimal),
                "{bad}"
            );
        }
        assert!(Altitude::from_ascii(&"1".repeat(32)).is_ok());
    }

    #[test]
    fn candidates_are_fractions_just_above_the_base() {
        let base = Altitude::from_ascii("385201").unwrap();
        let names: Vec<String> = (0..4).map(|k| base.candidate(k).to_string()).collect();
        assert_eq!(names, ["385201", "385201.1", "385201.2", "385201.3"]);
        assert_eq!(base.candidate(9).to_string(), "385201.9");
        assert_eq!(base.candidate(10).to_string(), "385201.11");
        assert_eq!(base.candidate(12).to_string(), "385201.13");
        assert_eq!(base.candidate(18).to_string(), "385201.19");
        assert_eq!(base.candidate(19).to_string(), "385201.21");
        let fractional = Altitude::from_ascii("385201.5").unwrap();
        assert_eq!(fractional.candidate(3).to_string(), "385201.53");
        // Every candidate of a maximal altitude still fits, whole, with one dot.
        let longest = Altitude::from_ascii(&"9".repeat(32)).unwrap();
        for k in 1..=MAX_RETRIES {
            let text = longest.candidate(k).to_string();
            assert!(text.starts_with(&format!("{}.", "9".repeat(32))), "{text}");
            assert_eq!(text.len(), 32 + 1 + if k < 10 { 1 } else { 2 });
        }
    }

    /// The candidates, read as decimal numbers, are all different and all
    /// above the base (the kernel compares altitudes as numbers).
    #[test]
    fn candidates_are_numerically_distinct() {
        fn value(altitude: &Altitude) -> (u64, String) {
            let text = altitude.to_string();
            let (integer, fraction) = text.split_once('.').unwrap_or((&text, ""));
            (
                integer.parse().unwrap(),
                fraction.trim_end_matches('0').to_string(),
            )
        }
        for base in ["385201", "385201.5", "1000.25"] {
            let base = Altitude::from_ascii(base).unwrap();
            let values: Vec<(u64, String)> = (0..=MAX_RETRIES)
                .map(|k| value(&base.candidate(k)))
                .collect();
            let mut unique = values.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), values.len(), "{values:?}");
            assert!(
                values.iter().all(|(integer, _)| *integer == values[0].0),
                "stays below the next integer"
            );
        }
    }

    #[test]
    fn a_collision_on_the_first_try_moves_to_the_next_candidate() {
        let base = Altitude::from_ascii("1000").unwrap();
        let mut tried = Vec::new();
        let outcome = register_with_retries(&base, 8, COLLISION, |altitude| {
            tried.push(altitude.to_string());
            if tried.len() == 1 {
                Err(COLLISION)
            } else {
                Ok(7)
            }
        });
        assert_eq!(outcome.result, Ok(7));
        assert_eq!(outcome.attempts, 2);
        assert_eq!(outcome.altitude.to_string(), "1000.1");
        assert_eq!(tried, ["1000", "1000.1"]);
    }

    #[test]
    fn retries_are_bounded_and_other_errors_stop_at_once() {
        let base = Altitude::from_ascii("1000").unwrap();
        let mut calls = 0;
        let outcome = register_with_retries(&base, 3, COLLISION, |_| -> Result<(), i32> {
            calls += 1;
            Err(COLLISION)
        });
        assert_eq!(
            (outcome.result, outcome.attempts, calls),
            (Err(COLLISION), 4, 4)
        );
        assert_eq!(outcome.altitude.to_string(), "1000.3");

        let mut calls = 0;
        let outcome = register_with_retries(&base, 3, COLLISION, |_| -> Result<(), i32> {
            calls += 1;
            Err(-5)
        });
        assert_eq!((outcome.result, calls), (Err(-5), 1));

        let outcome = register_with_retries(&base, 0, COLLISION, |_| -> Result<(), i32> {
            Err(COLLISION)
        });
        assert_eq!(outcome.attempts, 1);

        let mut calls = 0;
        let _ = register_with_retries(&base, u32::MAX, COLLISION, |_| -> Result<(), i32> {
            calls += 1;
            Err(COLLISION)
        });
        assert_eq!(calls, MAX_RETRIES + 1);
    }
}
