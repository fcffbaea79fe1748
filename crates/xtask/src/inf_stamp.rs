//! Stamping `inf/procguard.inx` into `procguard.inf`, as stampinf does in the
//! WDK build: architecture, `DriverVer` (date and version) and the KMDF
//! library version.

/// Stamps the template. `date` is `MM/DD/YYYY`; `version` is `a.b.c` or
/// `a.b.c.d`; `kmdf_version` is the version the driver binds
/// (`windows-support.toml` `[bind] kmdf`, the source fx_entry.rs is built from).
pub fn stamp(
    template: &str,
    date: &str,
    version: &str,
    kmdf_version: &str,
) -> Result<String, String> {
    let mut parts: Vec<&str> = version.split('.').collect();
    if parts.len() == 3 {
        parts.push("0");
    }
    if parts.len() != 4 || parts.iter().any(|part| part.parse::<u16>().is_err()) {
        return Err(format!(
            "version {version} is not a.b.c[.d] with 16-bit parts"
        ));
    }
    let mut driver_ver_lines = 0;
    let mut stamped = String::with_capacity(template.len());
    for line in template.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        if key.eq_ignore_ascii_case("DriverVer") && !line.trim_start().starts_with(';') {
            stamped.push_str(&format!("DriverVer   = {date},{}", parts.join(".")));
            driver_ver_lines += 1;
        } else {
            stamped.push_str(
                &line
                    .replace("$ARCH$", "amd64")
                    .replace("$KMDFVERSION$", kmdf_version),
            );
        }
        stamped.push_str("\r\n");
    }
    if driver_ver_lines != 1 {
        return Err(format!(
            "the template has {driver_ver_lines} DriverVer lines, expected 1"
        ));
    }
    let unresolved: Vec<&str> = stamped
        .lines()
        .filter(|line| !line.trim_start().starts_with(';'))
        .filter(|line| {
            let without_signature = line.replace("$WINDOWS NT$", "");
            without_signature.contains('$')
        })
        .collect();
    if !unresolved.is_empty() {
        return Err(format!("unresolved placeholders: {unresolved:?}"));
    }
    Ok(stamped)
}

/// Today's date (UTC) as `MM/DD/YYYY`, from the system clock.
pub fn today() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let days = i64::try_from(seconds / 86_400).unwrap_or(0);
    let (year, month, day) = civil_from_days(days);
    format!("{month:02}/{day:02}/{year:04}")
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = u32::try_from(day_of_year - (153 * month_index + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    })
    .unwrap_or(1);
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = "[Version]\nSignature = \"$WINDOWS NT$\"\nDriverVer = 01/01/2000,0.0.0.0\n[DefaultInstall.NT$ARCH$]\n[S]\nKmdfLibraryVersion = $KMDFVERSION$\n";

    #[test]
    fn placeholders_and_driver_ver_are_stamped() {
        let inf = stamp(TEMPLATE, "11/27/2026", "0.1.0", "1.29").unwrap();
        assert!(inf.contains("DriverVer   = 11/27/2026,0.1.0.0\r\n"));
        assert!(inf.contains("[DefaultInstall.NTamd64]"));
        assert!(inf.contains("KmdfLibraryVersion = 1.29"));
        assert!(
            inf.contains("$WINDOWS NT$"),
            "the signature string is not a placeholder"
        );
    }

    #[test]
    fn bad_versions_and_leftover_placeholders_are_errors() {
        assert!(stamp(TEMPLATE, "11/27/2026", "1.2", "1.29").is_err());
        assert!(stamp(TEMPLATE, "11/27/2026", "1.2.70000", "1.29").is_err());
        assert!(stamp(
            &format!("{TEMPLATE}X = $OTHER$\n"),
            "11/27/2026",
            "0.1.0",
            "1.29"
        )
        .is_err());
        assert!(stamp("[Version]\n", "11/27/2026", "0.1.0", "1.29").is_err());
    }

    #[test]
    fn civil_dates_are_right() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_784), (2026, 11, 27));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
