//! The supported-Windows matrix, checked on the image.
//!
//! `driver/windows-support.toml` lists the floor (oldest supported Windows),
//! the KMDF version each release ships, and every import the driver may have
//! with the first Windows that exports it. The package step fails when the
//! built image imports anything the table does not list or that is newer than
//! the floor, or binds a KMDF version the floor does not ship (the bind info
//! is read out of the image itself, so neither the driver nor this check can
//! drift from the table unnoticed).

use std::fmt;
use std::path::Path;

use toml::{Table, Value};

/// A Windows version as `major.minor[.build]` (build numbers order releases).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct WindowsVersion(pub u32, pub u32, pub u32);

impl WindowsVersion {
    /// Parses `"10.0.18362"` or `"6.2"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('.').collect();
        let number = |index: usize| -> Result<u32, String> {
            parts.get(index).map_or(Ok(0), |part| {
                part.parse()
                    .map_err(|_| format!("{text:?} is not a Windows version"))
            })
        };
        if parts.is_empty() || parts.len() > 3 {
            return Err(format!("{text:?} is not a Windows version"));
        }
        Ok(Self(number(0)?, number(1)?, number(2)?))
    }
}

impl fmt::Display for WindowsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// A KMDF version `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KmdfVersion(pub u32, pub u32);

impl KmdfVersion {
    /// Parses `"1.29"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        text.split_once('.')
            .and_then(|(major, minor)| Some(Self(major.parse().ok()?, minor.parse().ok()?)))
            .ok_or_else(|| format!("{text:?} is not a KMDF version"))
    }
}

impl fmt::Display for KmdfVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// One `[[import]]` row.
#[derive(Debug, Clone)]
pub struct ImportRow {
    /// Exporting module, as the image names it.
    pub module: String,
    /// Exported name.
    pub name: String,
    /// First Windows that exports it.
    pub min_windows: WindowsVersion,
}

/// One `[[wdf_function]]` row.
#[derive(Debug, Clone)]
pub struct WdfFunctionRow {
    /// Function name.
    pub name: String,
    /// `WDFFUNCENUM` index.
    pub index: u32,
    /// KMDF version that added it.
    pub since: KmdfVersion,
}

/// `driver/windows-support.toml`, the parts the package check reads.
#[derive(Debug, Clone)]
pub struct SupportTable {
    /// The oldest supported Windows.
    pub floor: WindowsVersion,
    /// Its name, for messages.
    pub floor_name: String,
    /// The KMDF version the driver binds (`[bind] kmdf`).
    pub bind: KmdfVersion,
    /// (Windows release, KMDF version it ships).
    pub kmdf_by_release: Vec<(WindowsVersion, KmdfVersion)>,
    /// `WdfFunctionTableNumEntries` per KMDF version.
    pub function_counts: Vec<(KmdfVersion, u32)>,
    /// Every import the driver may have.
    pub imports: Vec<ImportRow>,
    /// The KMDF functions the driver calls.
    pub wdf_functions: Vec<WdfFunctionRow>,
}

fn string<'a>(table: &'a Table, key: &str, context: &str) -> Result<&'a str, String> {
    table
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("windows-support.toml: {context} has no string `{key}`"))
}

fn rows<'a>(table: &'a Table, key: &str) -> Result<Vec<&'a Table>, String> {
    match table.get(key) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_table()
                    .ok_or_else(|| format!("windows-support.toml: [[{key}]] is not a table"))
            })
            .collect(),
        Some(_) => Err(format!(
            "windows-support.toml: `{key}` is not an array of tables"
        )),
    }
}

impl SupportTable {
    /// Parses the table's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let root: Table = text
            .parse()
            .map_err(|error| format!("windows-support.toml: {error}"))?;
        let section = |name: &str| {
            root.get(name)
                .and_then(Value::as_table)
                .ok_or_else(|| format!("windows-support.toml: no [{name}]"))
        };
        let floor_table = section("floor")?;
        let floor = WindowsVersion::parse(string(floor_table, "windows", "[floor]")?)?;
        let floor_name = string(floor_table, "name", "[floor]")?.to_string();
        let bind = KmdfVersion::parse(string(section("bind")?, "kmdf", "[bind]")?)?;
        let mut function_counts = Vec::new();
        for (version, count) in section("kmdf_function_count")? {
            let count = count
                .as_integer()
                .and_then(|count| u32::try_from(count).ok())
                .ok_or_else(|| format!("windows-support.toml: function count of {version}"))?;
            function_counts.push((KmdfVersion::parse(version)?, count));
        }
        let mut kmdf_by_release = Vec::new();
        for row in rows(&root, "kmdf")? {
            kmdf_by_release.push((
                WindowsVersion::parse(string(row, "windows", "[[kmdf]]")?)?,
                KmdfVersion::parse(string(row, "version", "[[kmdf]]")?)?,
            ));
        }
        let mut imports = Vec::new();
        for row in rows(&root, "import")? {
            imports.push(ImportRow {
                module: string(row, "module", "[[import]]")?.to_string(),
                name: string(row, "name", "[[import]]")?.to_string(),
                min_windows: WindowsVersion::parse(string(row, "min_windows", "[[import]]")?)?,
            });
        }
        let mut wdf_functions = Vec::new();
        for row in rows(&root, "wdf_function")? {
            let name = string(row, "name", "[[wdf_function]]")?.to_string();
            let index = row
                .get("index")
                .and_then(Value::as_integer)
                .and_then(|index| u32::try_from(index).ok())
                .ok_or_else(|| format!("windows-support.toml: {name} has no index"))?;
            let since = KmdfVersion::parse(string(row, "since", "[[wdf_function]]")?)?;
            wdf_functions.push(WdfFunctionRow { name, index, since });
        }
        Ok(Self {
            floor,
            floor_name,
            bind,
            kmdf_by_release,
            function_counts,
            imports,
            wdf_functions,
        })
    }

    /// Reads `driver/windows-support.toml` under the workspace root.
    pub fn load(root: &Path) -> Result<Self, String> {
        let path = root.join("driver").join("windows-support.toml");
        let text = std::fs::read_to_string(&path)
            .map_err(|error| format!("{}: {error}", path.display()))?;
        Self::parse(&text)
    }

    /// The KMDF version the floor ships: that of the newest listed release
    /// not newer than the floor.
    pub fn floor_kmdf(&self) -> Option<KmdfVersion> {
        self.kmdf_by_release
            .iter()
            .filter(|(windows, _)| *windows <= self.floor)
            .max_by_key(|(windows, _)| *windows)
            .map(|&(_, version)| version)
    }

    /// `WdfFunctionTableNumEntries` of `version`, if listed.
    pub fn function_count(&self, version: KmdfVersion) -> Option<u32> {
        self.function_counts
            .iter()
            .find(|(listed, _)| *listed == version)
            .map(|&(_, count)| count)
    }
}

/// The `WDF_BIND_INFO` an image hands `WdfVersionBind`, read from the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindInfo {
    /// `Size` (48 for the plain form).
    pub size: u32,
    /// `Version.Major`, `Version.Minor`, `Version.Build`.
    pub version: (u32, u32, u32),
    /// `FuncCount`.
    pub func_count: u32,
}

/// `L"KmdfLibrary\0"`, the bind info's `Component`.
fn component_name() -> Vec<u8> {
    "KmdfLibrary\0"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect()
}

/// Finds the bind info in a linked image: the static `WDF_BIND_INFO` whose
/// `Component` (at +8) points at `L"KmdfLibrary"`. `image_base` and the
/// sections' (file offset, virtual address, size) map pointers to file bytes.
pub fn find_bind_info(
    data: &[u8],
    image_base: u64,
    sections: &[(usize, u32, usize)],
) -> Vec<BindInfo> {
    let rva_of = |offset: usize| {
        sections.iter().find_map(|&(file_offset, rva, size)| {
            (offset >= file_offset && offset < file_offset + size)
                .then(|| u64::from(rva) + (offset - file_offset) as u64)
        })
    };
    let name = component_name();
    let mut found = Vec::new();
    let name_addresses: Vec<u64> = data
        .windows(name.len())
        .enumerate()
        .filter(|(_, window)| *window == name.as_slice())
        .filter_map(|(offset, _)| rva_of(offset).map(|rva| image_base + rva))
        .collect();
    for address in name_addresses {
        let needle = address.to_le_bytes();
        let mut offset = 0;
        while let Some(position) = data
            .get(offset..)
            .and_then(|rest| rest.windows(8).position(|window| window == needle))
        {
            let at = offset + position;
            offset = at + 1;
            // The pointer is `Component`, at +8; the struct is 8-aligned.
            let Some(start) = at.checked_sub(8).filter(|start| start % 8 == 0) else {
                continue;
            };
            let Some(raw) = data.get(start..start + 32) else {
                continue;
            };
            let word =
                |at: usize| u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
            found.push(BindInfo {
                size: word(0),
                version: (word(16), word(20), word(24)),
                func_count: word(28),
            });
        }
    }
    found
}

/// Reads the bind info(s) of a PE image with the `object` crate.
pub fn bind_info_of_image(data: &[u8]) -> Result<Vec<BindInfo>, String> {
    use object::read::pe::{ImageNtHeaders, ImageOptionalHeader, PeFile64};
    use object::LittleEndian as LE;
    let pe = PeFile64::parse(data).map_err(|error| format!("not a PE32+ image: {error}"))?;
    let image_base = pe.nt_headers().optional_header().image_base();
    let sections: Vec<(usize, u32, usize)> = pe
        .section_table()
        .iter()
        .map(|section| {
            (
                section.pointer_to_raw_data.get(LE) as usize,
                section.virtual_address.get(LE),
                section.size_of_raw_data.get(LE) as usize,
            )
        })
        .collect();
    Ok(find_bind_info(data, image_base, &sections))
}

/// The matrix rules. `imports`: (module, names) of the image; `binds`: the
/// bind infos found in it. Returns every violation (empty = supported).
pub fn check(
    table: &SupportTable,
    imports: &[(String, Vec<String>)],
    binds: &[BindInfo],
) -> Vec<String> {
    let mut problems = Vec::new();
    let floor = table.floor;
    let floor_name = &table.floor_name;

    for (module, names) in imports {
        for name in names {
            let row = table
                .imports
                .iter()
                .find(|row| row.module.eq_ignore_ascii_case(module) && row.name == *name);
            match row {
                None => problems.push(format!(
                    "imports {module}!{name}, which driver/windows-support.toml does not list \
                     (add its row with the first Windows that exports it)"
                )),
                Some(row) if row.min_windows > floor => problems.push(format!(
                    "imports {module}!{name}, first exported by Windows {}: newer than the \
                     floor, {floor_name} ({floor}); resolve it at run time instead",
                    row.min_windows
                )),
                Some(_) => {}
            }
        }
    }

    let floor_kmdf = table.floor_kmdf();
    match floor_kmdf {
        None => problems.push(format!("no [[kmdf]] row for the floor ({floor})")),
        Some(shipped) if table.bind > shipped => problems.push(format!(
            "[bind] kmdf = {}: newer than KMDF {shipped}, which the floor ({floor_name}) ships",
            table.bind
        )),
        Some(_) => {}
    }
    let bind_count = table.function_count(table.bind);
    if bind_count.is_none() {
        problems.push(format!(
            "[kmdf_function_count] has no count for the bound KMDF {}",
            table.bind
        ));
    }

    let wants_kmdf = imports.iter().any(|(module, names)| {
        module.eq_ignore_ascii_case("WDFLDR.SYS")
            && names.iter().any(|name| name == "WdfVersionBind")
    });
    if wants_kmdf && binds.is_empty() {
        problems.push(
            "imports WdfVersionBind but no WDF_BIND_INFO (L\"KmdfLibrary\") was found in the image"
                .into(),
        );
    }
    for bind in binds {
        let (major, minor, build) = bind.version;
        let bound = KmdfVersion(major, minor);
        if bind.size != 48 {
            problems.push(format!(
                "the image's WDF_BIND_INFO has Size {} (the plain form is 48 bytes)",
                bind.size
            ));
        }
        if let Some(shipped) = floor_kmdf {
            if bound > shipped {
                problems.push(format!(
                    "the image binds KMDF {major}.{minor}.{build}, which {floor_name} does not \
                     ship (it has KMDF {shipped})"
                ));
            }
        }
        if bound != table.bind {
            problems.push(format!(
                "the image binds KMDF {major}.{minor}, windows-support.toml [bind] says {}",
                table.bind
            ));
        }
        match table.function_count(bound) {
            Some(count) if count == bind.func_count => {}
            Some(count) => problems.push(format!(
                "the image binds KMDF {major}.{minor} with FuncCount {}, that version has {count} functions",
                bind.func_count
            )),
            None => problems.push(format!(
                "the image binds KMDF {major}.{minor}, whose function count the table does not list"
            )),
        }
    }

    if let Some(count) = bind_count {
        for function in &table.wdf_functions {
            if function.index >= count {
                problems.push(format!(
                    "{} (index {}) is not in the {count}-function table of KMDF {}",
                    function.name, function.index, table.bind
                ));
            }
            if function.since > table.bind {
                problems.push(format!(
                    "{} is new in KMDF {}, the driver binds {}",
                    function.name, function.since, table.bind
                ));
            }
        }
    }
    problems
}

/// The package step's check of a built image against the table under `root`.
pub fn check_image_file(root: &Path, image: &Path) -> Result<(), String> {
    let table = SupportTable::load(root)?;
    let data = std::fs::read(image).map_err(|error| format!("{}: {error}", image.display()))?;
    let report = crate::pe_check::check(&data, false);
    let binds = bind_info_of_image(&data)?;
    let problems = check(&table, &report.imports, &binds);
    if problems.is_empty() {
        println!(
            "xtask: supported-Windows matrix: OK ({} imports, KMDF {} bound, floor {} {})",
            report
                .imports
                .iter()
                .map(|(_, names)| names.len())
                .sum::<usize>(),
            table.bind,
            table.floor_name,
            table.floor
        );
        Ok(())
    } else {
        Err(format!(
            "{} is not supported on the declared floor (driver/windows-support.toml):\n  {}",
            image.display(),
            problems.join("\n  ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = r#"
[floor]
windows = "10.0.18362"
name = "Windows 10 version 1903"

[bind]
kmdf = "1.29"

[kmdf_function_count]
"1.29" = 454
"1.31" = 458
"1.33" = 458

[[kmdf]]
windows = "10.0.18362"
version = "1.29"
[[kmdf]]
windows = "10.0.19041"
version = "1.31"
[[kmdf]]
windows = "10.0.22000"
version = "1.33"

[[import]]
name = "ExAllocatePoolWithTag"
module = "ntoskrnl.exe"
min_windows = "5.0"
[[import]]
name = "ExAllocatePool2"
module = "ntoskrnl.exe"
min_windows = "10.0.19041"
[[import]]
name = "WdfVersionBind"
module = "WDFLDR.SYS"
min_windows = "6.0"

[[wdf_function]]
name = "WdfRequestRetrieveOutputBuffer"
index = 270
since = "1.0"
"#;

    fn table() -> SupportTable {
        SupportTable::parse(TABLE).unwrap()
    }

    fn imports(names: &[(&str, &str)]) -> Vec<(String, Vec<String>)> {
        names
            .iter()
            .map(|(module, name)| (module.to_string(), vec![name.to_string()]))
            .collect()
    }

    const BIND_1_29: BindInfo = BindInfo {
        size: 48,
        version: (1, 29, 0),
        func_count: 454,
    };

    #[test]
    fn versions_parse_and_order() {
        assert!(
            WindowsVersion::parse("10.0.19041").unwrap()
                > WindowsVersion::parse("10.0.18362").unwrap()
        );
        assert!(WindowsVersion::parse("6.2").unwrap() < WindowsVersion::parse("10.0").unwrap());
        assert!(WindowsVersion::parse("ten").is_err());
        assert!(KmdfVersion::parse("1.33").unwrap() > KmdfVersion::parse("1.29").unwrap());
        assert!(KmdfVersion::parse("1.9").unwrap() < KmdfVersion::parse("1.29").unwrap());
    }

    #[test]
    fn a_floor_image_passes() {
        let table = table();
        assert_eq!(table.floor_kmdf(), Some(KmdfVersion(1, 29)));
        let imports = imports(&[
            ("ntoskrnl.exe", "ExAllocatePoolWithTag"),
            ("WDFLDR.SYS", "WdfVersionBind"),
        ]);
        assert_eq!(check(&table, &imports, &[BIND_1_29]), Vec::<String>::new());
    }

    #[test]
    fn an_import_newer_than_the_floor_fails() {
        let problems = check(
            &table(),
            &imports(&[("ntoskrnl.exe", "ExAllocatePool2")]),
            &[],
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("ExAllocatePool2, first exported by Windows 10.0.19041"));
    }

    #[test]
    fn an_unlisted_import_fails_module_compared_without_case() {
        let problems = check(
            &table(),
            &imports(&[
                ("NTOSKRNL.EXE", "ExAllocatePoolWithTag"),
                ("ntoskrnl.exe", "KeBugCheckEx"),
            ]),
            &[],
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("KeBugCheckEx, which driver/windows-support.toml does not list")
        );
    }

    #[test]
    fn binding_kmdf_1_33_with_458_functions_fails() {
        let bind = BindInfo {
            size: 48,
            version: (1, 33, 0),
            func_count: 458,
        };
        let problems = check(
            &table(),
            &imports(&[("WDFLDR.SYS", "WdfVersionBind")]),
            &[bind],
        );
        assert!(
            problems
                .iter()
                .any(|p| p
                    .contains("binds KMDF 1.33.0, which Windows 10 version 1903 does not ship")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("[bind] says 1.29")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_wrong_function_count_or_a_missing_bind_fails() {
        let short = BindInfo {
            func_count: 453,
            ..BIND_1_29
        };
        let problems = check(
            &table(),
            &imports(&[("WDFLDR.SYS", "WdfVersionBind")]),
            &[short],
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("FuncCount 453, that version has 454"));
        let problems = check(&table(), &imports(&[("WDFLDR.SYS", "WdfVersionBind")]), &[]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("no WDF_BIND_INFO"));
    }

    #[test]
    fn a_table_binding_past_its_floor_or_calling_past_the_count_fails() {
        let mut table = table();
        table.bind = KmdfVersion(1, 31);
        let problems = check(&table, &[], &[]);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("[bind] kmdf = 1.31: newer than KMDF 1.29")),
            "{problems:?}"
        );

        let mut table = self::table();
        table.wdf_functions.push(WdfFunctionRow {
            name: "WdfDeviceSetDeviceInterfaceStateEx".into(),
            index: 457,
            since: KmdfVersion(1, 31),
        });
        let problems = check(&table, &[], &[]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("WdfDeviceSetDeviceInterfaceStateEx (index 457) is not in the 454-function table of KMDF 1.29"));
        assert!(problems[1].contains("is new in KMDF 1.31"));
    }

    #[test]
    fn the_bind_info_is_found_through_its_component_pointer() {
        // A fake image: one section at file offset 0x200, RVA 0x1000, base 0x1_4000_0000.
        let base = 0x1_4000_0000_u64;
        let mut data = vec![0u8; 0x400];
        let name = component_name();
        data[0x300..0x300 + name.len()].copy_from_slice(&name);
        let bind = 0x240;
        data[bind..bind + 4].copy_from_slice(&48u32.to_le_bytes());
        data[bind + 8..bind + 16].copy_from_slice(&(base + 0x1000 + 0x100).to_le_bytes());
        for (at, value) in [(16, 1u32), (20, 29), (24, 0), (28, 454)] {
            data[bind + at..bind + at + 4].copy_from_slice(&value.to_le_bytes());
        }
        let found = find_bind_info(&data, base, &[(0x200, 0x1000, 0x200)]);
        assert_eq!(found, vec![BIND_1_29]);
        // Without the pointer there is no bind info.
        data[bind + 8..bind + 16].fill(0);
        assert!(find_bind_info(&data, base, &[(0x200, 0x1000, 0x200)]).is_empty());
    }

    #[test]
    fn the_repository_table_is_self_consistent() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let table = SupportTable::load(&root).unwrap();
        assert_eq!(check(&table, &[], &[]), Vec::<String>::new());
        assert_eq!(table.floor_kmdf(), Some(table.bind));
        // The WDK build's minimum (KMDF_MINIMUM_VERSION_REQUIRED) is the bound version.
        let cargo: Table = std::fs::read_to_string(root.join("driver/Cargo.toml"))
            .unwrap()
            .parse()
            .unwrap();
        let model = &cargo["package"]["metadata"]["wdk"]["driver-model"];
        assert_eq!(
            model["kmdf-version-major"].as_integer(),
            Some(i64::from(table.bind.0))
        );
        assert_eq!(
            model["minimum-kmdf-version-minor"].as_integer(),
            Some(i64::from(table.bind.1))
        );
        assert!(model["target-kmdf-version-minor"].as_integer() >= Some(i64::from(table.bind.1)));
    }
}
