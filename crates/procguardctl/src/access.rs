//! `--access` of `explain`: right names, named sets and numbers, separated by
//! `,` or `|`, for one object kind.

use procguard_policy::rights::{self, RightKind, STANDARD_RIGHTS};
use procguard_policy::ObjectKind;

/// `STANDARD_RIGHTS_REQUIRED` (`DELETE | READ_CONTROL | WRITE_DAC | WRITE_OWNER`).
const STANDARD_RIGHTS_REQUIRED: u32 = 0x000F_0000;
/// `PROCESS_ALL_ACCESS` (Vista and later).
pub const PROCESS_ALL_ACCESS: u32 = STANDARD_RIGHTS_REQUIRED | rights::SYNCHRONIZE | 0xFFFF;
/// `THREAD_ALL_ACCESS` (Vista and later).
pub const THREAD_ALL_ACCESS: u32 = STANDARD_RIGHTS_REQUIRED | rights::SYNCHRONIZE | 0xFFFF;

fn kind_word(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Process => "process",
        ObjectKind::Thread => "thread",
    }
}

/// Parses an access list for a handle of `kind`.
///
/// # Errors
/// A message naming the item that is not a right of that kind, a set or a
/// number.
pub fn parse_access(text: &str, kind: ObjectKind) -> Result<u32, String> {
    let mut mask = 0u32;
    let mut any = false;
    for item in text.split([',', '|']).map(str::trim) {
        if item.is_empty() {
            continue;
        }
        any = true;
        mask |= parse_item(item, kind)?;
    }
    if any {
        Ok(mask)
    } else {
        Err("no access right given".to_owned())
    }
}

fn parse_item(item: &str, kind: ObjectKind) -> Result<u32, String> {
    let number = if let Some(hex) = item.strip_prefix("0x").or_else(|| item.strip_prefix("0X")) {
        Some(u32::from_str_radix(hex, 16))
    } else if item.starts_with(|c: char| c.is_ascii_digit()) {
        Some(item.parse::<u32>())
    } else {
        None
    };
    if let Some(number) = number {
        return number.map_err(|_| format!("{item:?} is not a 32-bit number"));
    }
    let all = match kind {
        ObjectKind::Process => ("PROCESS_ALL_ACCESS", PROCESS_ALL_ACCESS),
        ObjectKind::Thread => ("THREAD_ALL_ACCESS", THREAD_ALL_ACCESS),
    };
    if item.eq_ignore_ascii_case(all.0) {
        return Ok(all.1);
    }
    if item.eq_ignore_ascii_case("STANDARD_RIGHTS_ALL") {
        return Ok(STANDARD_RIGHTS);
    }
    if let Some(right) = rights::right_by_name(item) {
        let fits = match right.kind {
            RightKind::Process => kind == ObjectKind::Process,
            RightKind::Thread => kind == ObjectKind::Thread,
            RightKind::Standard => true,
        };
        return if fits {
            Ok(right.mask)
        } else {
            Err(format!(
                "{} is not a {} right (--object {})",
                right.name,
                kind_word(kind),
                kind_word(kind)
            ))
        };
    }
    if let Some(set) = rights::set_by_name(item) {
        return Ok(match kind {
            ObjectKind::Process => set.process,
            ObjectKind::Thread => set.thread,
        });
    }
    let other_all = match kind {
        ObjectKind::Process => "THREAD_ALL_ACCESS",
        ObjectKind::Thread => "PROCESS_ALL_ACCESS",
    };
    if item.eq_ignore_ascii_case(other_all) {
        return Err(format!(
            "{other_all} is not a {} right (--object {})",
            kind_word(kind),
            kind_word(kind)
        ));
    }
    Err(format!(
        "unknown access right {item:?}: give {} right names (such as {}), {}, the sets {}, or numbers such as 0x1",
        kind_word(kind),
        match kind {
            ObjectKind::Process => "PROCESS_TERMINATE",
            ObjectKind::Thread => "THREAD_SUSPEND_RESUME",
        },
        all.0,
        rights::RIGHT_SETS
            .iter()
            .map(|set| set.name)
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sets_and_numbers_combine() {
        assert_eq!(
            parse_access("PROCESS_ALL_ACCESS", ObjectKind::Process),
            Ok(0x1F_FFFF)
        );
        assert_eq!(
            parse_access(
                "process_terminate|PROCESS_VM_READ, 0x100000",
                ObjectKind::Process
            ),
            Ok(0x0010_0011)
        );
        assert_eq!(
            parse_access("no-kill,16", ObjectKind::Thread),
            Ok(rights::THREAD_TERMINATE | rights::THREAD_SUSPEND_RESUME | 16)
        );
        assert_eq!(
            parse_access("SYNCHRONIZE", ObjectKind::Thread),
            Ok(0x0010_0000)
        );
    }

    #[test]
    fn rights_of_the_other_kind_and_unknown_names_are_refused() {
        assert_eq!(
            parse_access("THREAD_TERMINATE", ObjectKind::Process),
            Err("THREAD_TERMINATE is not a process right (--object process)".to_owned())
        );
        assert_eq!(
            parse_access("PROCESS_ALL_ACCESS", ObjectKind::Thread),
            Err("PROCESS_ALL_ACCESS is not a thread right (--object thread)".to_owned())
        );
        assert!(parse_access("PROCESS_KILL", ObjectKind::Process)
            .unwrap_err()
            .starts_with("unknown access right \"PROCESS_KILL\""));
        assert!(parse_access("0x1_0000_0000", ObjectKind::Process).is_err());
        assert!(parse_access(" , ", ObjectKind::Process).is_err());
    }
}
