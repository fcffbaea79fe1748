//! What phase 1 knows about a process, and how the critical system processes are
//! recognised.

use crate::glob::fold_char;

/// A process as the driver sees it at creation or enumeration (PASSIVE level).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessIdentity<'a> {
    /// Process id.
    pub pid: u32,
    /// Full image path as the kernel reports it (`SeLocateProcessImageName`), an NT
    /// path such as `\Device\HarddiskVolume3\Windows\System32\csrss.exe`. Empty for
    /// the System process and other minimal processes.
    pub image_path: &'a str,
}

/// PID of the System process (fixed by the kernel).
pub const SYSTEM_PID: u32 = 4;
/// PID of the Idle process.
pub const IDLE_PID: u32 = 0;

/// The critical system processes exempted as requesters, besides System (PID 4):
/// stripping rights from their handles can hang or crash Windows (csrss and wininit
/// are critical processes whose failure bugchecks; lsass, services and smss manage
/// every other process).
pub const CRITICAL_IMAGE_NAMES: &[&str] = &[
    "smss.exe",
    "csrss.exe",
    "wininit.exe",
    "services.exe",
    "lsass.exe",
];

/// Returns the last path component (the image file name).
#[must_use]
pub fn file_name(path: &str) -> &str {
    // A predicate, not the `char` pattern (memrchr keeps a panic path).
    path.rsplit(crate::glob::is_backslash)
        .next()
        .unwrap_or(path)
}

pub(crate) fn eq_fold(a: &str, b: &str) -> bool {
    let mut x = a.chars().map(fold_char);
    let mut y = b.chars().map(fold_char);
    loop {
        match (x.next(), y.next()) {
            (None, None) => return true,
            (Some(p), Some(q)) if p == q => {}
            _ => return false,
        }
    }
}

fn strip_prefix_fold<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if eq_fold(head, prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

/// Whether `dir` (the path without its file name, no trailing `\`) is the system
/// directory in one of the spellings the kernel uses:
/// `\SystemRoot\System32`, `\Device\HarddiskVolume<N>\Windows\System32`,
/// `\??\<X>:\Windows\System32` or `<X>:\Windows\System32`.
fn is_system32(dir: &str) -> bool {
    if eq_fold(dir, "\\SystemRoot\\System32") {
        return true;
    }
    let rest = if let Some(r) = strip_prefix_fold(dir, "\\Device\\HarddiskVolume") {
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        r.get(digits..)
    } else {
        let r = strip_prefix_fold(dir, "\\??\\").unwrap_or(dir);
        let b = r.as_bytes();
        if b.len() >= 2 && b.first().is_some_and(u8::is_ascii_alphabetic) && b.get(1) == Some(&b':')
        {
            r.get(2..)
        } else {
            None
        }
    };
    rest.is_some_and(|r| eq_fold(r, "\\Windows\\System32"))
}

/// Whether a process is one of the critical system processes exempted as requesters.
///
/// Identified robustly, not by file name alone (a user can name any program
/// `csrss.exe`): System is PID 4 (and Idle PID 0), fixed by the kernel; the others
/// must have one of [`CRITICAL_IMAGE_NAMES`] as file name *and* live directly in the
/// system directory, which only TrustedInstaller can write. Accepted spellings of the
/// system directory: `\SystemRoot\System32`, `\Device\HarddiskVolume<N>\Windows\System32`,
/// `\??\<X>:\Windows\System32`, `<X>:\Windows\System32`. A Windows installed outside
/// `\Windows` is not recognised (documented limitation).
#[must_use]
pub fn is_critical_system_process(id: &ProcessIdentity<'_>) -> bool {
    if id.pid == SYSTEM_PID || id.pid == IDLE_PID {
        return true;
    }
    let name = file_name(id.image_path);
    if !CRITICAL_IMAGE_NAMES.iter().any(|c| eq_fold(c, name)) {
        return false;
    }
    let dir_len = id
        .image_path
        .len()
        .saturating_sub(name.len())
        .saturating_sub(1);
    id.image_path.get(..dir_len).is_some_and(is_system32)
}
