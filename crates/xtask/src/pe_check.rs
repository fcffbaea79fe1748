//! Structural checks of the driver image: what Windows requires of a kernel
//! driver that registers object callbacks, verified on the file itself.
//!
//! The package step fails unless the image is PE32+ AMD64, subsystem NATIVE,
//! has FORCE_INTEGRITY (without it `ObRegisterCallbacks` returns
//! STATUS_ACCESS_DENIED), NX_COMPAT and DYNAMIC_BASE, imports only from
//! kernel modules, has no panic path (no `KeBugCheckEx` import: only the
//! panic handler calls it), keeps every section that code can touch non-pageable (the
//! callbacks run at APC level), and — once signed — carries a signature and a
//! valid PE checksum.

use std::fmt;
use std::path::Path;

use object::pe::{
    IMAGE_DIRECTORY_ENTRY_SECURITY, IMAGE_DLLCHARACTERISTICS_DYNAMIC_BASE,
    IMAGE_DLLCHARACTERISTICS_FORCE_INTEGRITY, IMAGE_DLLCHARACTERISTICS_NX_COMPAT,
    IMAGE_FILE_MACHINE_AMD64, IMAGE_NT_OPTIONAL_HDR64_MAGIC, IMAGE_SCN_MEM_DISCARDABLE,
    IMAGE_SCN_MEM_EXECUTE, IMAGE_SCN_MEM_NOT_PAGED, IMAGE_SUBSYSTEM_NATIVE,
};
use object::read::pe::{ImageNtHeaders, ImageOptionalHeader, PeFile64};
use object::LittleEndian as LE;

/// Modules a kernel driver may import from.
pub const KERNEL_MODULES: &[&str] = &["ntoskrnl.exe", "hal.dll", "wdfldr.sys"];

/// What the checks found.
#[derive(Debug, Default)]
pub struct PeReport {
    /// File size in bytes.
    pub size: usize,
    /// (module, functions) in import order.
    pub imports: Vec<(String, Vec<String>)>,
    /// Sections: (name, characteristics).
    pub sections: Vec<(String, u32)>,
    /// Whether an Authenticode signature is attached.
    pub signed: bool,
    /// Rule violations; empty when the image passes.
    pub problems: Vec<String>,
}

impl PeReport {
    /// True when `KeBugCheckEx` is imported: only the panic handler calls it,
    /// so some panic path survived optimisation.
    pub fn has_panic_path(&self) -> bool {
        self.imports
            .iter()
            .any(|(_, functions)| functions.iter().any(|name| name == "KeBugCheckEx"))
    }
}

impl fmt::Display for PeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "size: {} bytes, signed: {}", self.size, self.signed)?;
        for (name, characteristics) in &self.sections {
            writeln!(f, "section {name:<8} {characteristics:#010x}")?;
        }
        for (module, functions) in &self.imports {
            writeln!(f, "imports {module}: {}", functions.join(", "))?;
        }
        writeln!(f, "panic path present: {}", self.has_panic_path())?;
        if self.problems.is_empty() {
            write!(f, "structure: OK")
        } else {
            write!(
                f,
                "structure: {} problem(s):\n  {}",
                self.problems.len(),
                self.problems.join("\n  ")
            )
        }
    }
}

/// A kernel driver must not panic: the panic handler is the only caller of
/// `KeBugCheckEx`, so importing it means a panic path survived optimisation.
pub fn panic_path_problem(imports: &[(String, Vec<String>)]) -> Option<String> {
    imports
        .iter()
        .any(|(_, functions)| functions.iter().any(|name| name == "KeBugCheckEx"))
        .then(|| {
            "imports KeBugCheckEx: a panic path survived optimisation (find its callers \
             with the link map or llvm-objdump and make that code fallible)"
                .to_string()
        })
}

/// The PE checksum as the loader computes it (checksum field taken as 0).
pub fn pe_checksum(data: &[u8], checksum_offset: usize) -> u32 {
    let mut sum: u64 = 0;
    let mut offset = 0;
    while offset < data.len() {
        let word = if offset == checksum_offset || Some(offset) == checksum_offset.checked_add(2) {
            0
        } else {
            let low = u64::from(data[offset]);
            let high = data.get(offset + 1).map_or(0, |&byte| u64::from(byte));
            low | (high << 8)
        };
        sum += word;
        sum = (sum & 0xFFFF) + (sum >> 16);
        offset += 2;
    }
    sum = (sum & 0xFFFF) + (sum >> 16);
    (sum as u32).wrapping_add(data.len() as u32)
}

/// Checks an image in memory. `require_signature`: the packaged, signed file.
pub fn check(data: &[u8], require_signature: bool) -> PeReport {
    let mut report = PeReport {
        size: data.len(),
        ..PeReport::default()
    };
    let pe = match PeFile64::parse(data) {
        Ok(pe) => pe,
        Err(error) => {
            report.problems.push(format!("not a PE32+ image: {error}"));
            return report;
        }
    };
    let headers = pe.nt_headers();
    let machine = headers.file_header().machine.get(LE);
    if machine != IMAGE_FILE_MACHINE_AMD64 {
        report
            .problems
            .push(format!("machine {machine:#x} is not AMD64"));
    }
    let optional = headers.optional_header();
    if optional.magic() != IMAGE_NT_OPTIONAL_HDR64_MAGIC {
        report.problems.push("not PE32+".to_string());
    }
    if optional.subsystem() != IMAGE_SUBSYSTEM_NATIVE {
        report.problems.push(format!(
            "subsystem {} is not NATIVE (1)",
            optional.subsystem()
        ));
    }
    let dll_characteristics = optional.dll_characteristics();
    for (flag, name) in [
        (
            IMAGE_DLLCHARACTERISTICS_FORCE_INTEGRITY,
            "FORCE_INTEGRITY (/INTEGRITYCHECK)",
        ),
        (IMAGE_DLLCHARACTERISTICS_NX_COMPAT, "NX_COMPAT"),
        (IMAGE_DLLCHARACTERISTICS_DYNAMIC_BASE, "DYNAMIC_BASE"),
    ] {
        if dll_characteristics & flag == 0 {
            report
                .problems
                .push(format!("DllCharacteristics lacks {name}"));
        }
    }

    let entry = optional.address_of_entry_point();
    let mut entry_in_code = false;
    for section in pe.section_table().iter() {
        let name = String::from_utf8_lossy(section.raw_name())
            .trim_end_matches('\0')
            .to_string();
        let characteristics = section.characteristics.get(LE);
        let start = section.virtual_address.get(LE);
        let end = start.saturating_add(section.virtual_size.get(LE));
        if (start..end).contains(&entry) && characteristics & IMAGE_SCN_MEM_EXECUTE != 0 {
            entry_in_code = true;
        }
        let discardable = characteristics & IMAGE_SCN_MEM_DISCARDABLE != 0;
        if name.to_ascii_uppercase().starts_with("PAGE") {
            report
                .problems
                .push(format!("section {name} is pageable by name"));
        } else if !discardable && characteristics & IMAGE_SCN_MEM_NOT_PAGED == 0 {
            report.problems.push(format!(
                "section {name} is pageable (no IMAGE_SCN_MEM_NOT_PAGED)"
            ));
        }
        if discardable && characteristics & IMAGE_SCN_MEM_EXECUTE != 0 {
            report
                .problems
                .push(format!("section {name} is discardable code"));
        }
        report.sections.push((name, characteristics));
    }
    if !entry_in_code {
        report.problems.push(format!(
            "entry point {entry:#x} is not in an executable section"
        ));
    }

    match pe.import_table() {
        Ok(Some(table)) => match collect_imports(&table) {
            Ok(imports) => report.imports = imports,
            Err(error) => report
                .problems
                .push(format!("unreadable import table: {error}")),
        },
        Ok(None) => {}
        Err(error) => report
            .problems
            .push(format!("unreadable import table: {error}")),
    }
    if let Some(problem) = panic_path_problem(&report.imports) {
        report.problems.push(problem);
    }
    for (module, _) in &report.imports {
        if !KERNEL_MODULES.contains(&module.to_ascii_lowercase().as_str()) {
            report
                .problems
                .push(format!("imports from {module}, not a kernel module"));
        }
    }

    let security = pe.data_directories().get(IMAGE_DIRECTORY_ENTRY_SECURITY);
    report.signed =
        security.is_some_and(|dir| dir.virtual_address.get(LE) != 0 && dir.size.get(LE) != 0);
    if require_signature {
        if !report.signed {
            report
                .problems
                .push("no Authenticode signature".to_string());
        }
        let checksum_offset = pe_checksum_offset(data);
        let stored = optional.check_sum();
        let computed = pe_checksum(data, checksum_offset);
        if stored != computed {
            report
                .problems
                .push(format!("PE checksum {stored:#x} != computed {computed:#x}"));
        }
    }
    report
}

fn pe_checksum_offset(data: &[u8]) -> usize {
    let e_lfanew = data
        .get(0x3C..0x40)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    // "PE\0\0", IMAGE_FILE_HEADER (20), then CheckSum at +64 in the optional header.
    e_lfanew + 4 + 20 + 64
}

fn collect_imports(
    table: &object::read::pe::ImportTable<'_>,
) -> object::Result<Vec<(String, Vec<String>)>> {
    let mut imports = Vec::new();
    let mut descriptors = table.descriptors()?;
    while let Some(descriptor) = descriptors.next()? {
        let module = String::from_utf8_lossy(table.name(descriptor.name.get(LE))?).to_string();
        let mut functions = Vec::new();
        let first = match descriptor.original_first_thunk.get(LE) {
            0 => descriptor.first_thunk.get(LE),
            address => address,
        };
        let mut thunks = table.thunks(first)?;
        while let Some(thunk) = thunks.next::<object::pe::ImageNtHeaders64>()? {
            match table.import::<object::pe::ImageNtHeaders64>(thunk)? {
                object::read::pe::Import::Name(_, name) => {
                    functions.push(String::from_utf8_lossy(name).to_string())
                }
                object::read::pe::Import::Ordinal(ordinal) => functions.push(format!("#{ordinal}")),
            }
        }
        imports.push((module, functions));
    }
    Ok(imports)
}

/// Reads and checks a file; `Err` with the report when a rule is violated.
pub fn check_file(path: &Path, require_signature: bool) -> Result<PeReport, String> {
    let data = std::fs::read(path).map_err(|error| format!("{}: {error}", path.display()))?;
    let report = check(&data, require_signature);
    if report.problems.is_empty() {
        Ok(report)
    } else {
        Err(format!(
            "{} fails the driver image checks:\n{report}",
            path.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_known_words_folds_carries_and_adds_the_length() {
        // Words 0xFFFF + 0x0002 = 0x10001 -> folded to 0x0002; plus length 4.
        assert_eq!(
            pe_checksum(&[0xFF, 0xFF, 0x02, 0x00], usize::MAX),
            0x0002 + 4
        );
        // The checksum field itself counts as zero.
        assert_eq!(pe_checksum(&[0x34, 0x12, 0xFF, 0xFF], 2), 0x1234 + 4);
        // An odd trailing byte is a low byte.
        assert_eq!(pe_checksum(&[0x01, 0x00, 0x05], usize::MAX), 1 + 5 + 3);
    }

    #[test]
    fn importing_ke_bug_check_ex_is_a_problem() {
        let imports = |names: &[&str]| {
            vec![(
                "ntoskrnl.exe".to_string(),
                names
                    .iter()
                    .map(|name| name.to_string())
                    .collect::<Vec<_>>(),
            )]
        };
        assert!(panic_path_problem(&imports(&["ExFreePoolWithTag"])).is_none());
        let problem = panic_path_problem(&imports(&["ExFreePoolWithTag", "KeBugCheckEx"]));
        assert!(problem.unwrap().starts_with("imports KeBugCheckEx"));
    }

    #[test]
    fn garbage_is_reported_not_panicked_on() {
        let report = check(b"MZ not really", false);
        assert_eq!(report.problems.len(), 1);
        assert!(report.problems[0].starts_with("not a PE32+ image"));
    }
}
