//! `procguardctl export`: the `.reg` file (regedit's exact format) and the
//! PowerShell script hold the bytes `procguardctl compile` writes, and an
//! invalid policy writes nothing. Wine's regedit and reg.exe read the `.reg`
//! file in `tests/wine/test_export_reg.py`.

use std::path::{Path, PathBuf};
use std::process::Command;

use procguard_policy::blob::blob_checksum;
use procguardctl::export::{reg_binary_value, reg_file, reg_text, PARAMETERS_KEY};

const EXE: &str = env!("CARGO_BIN_EXE_procguardctl");
const EXAMPLE: &str = "examples/protect-agent.toml";

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the binary in the crate directory: exit code, stdout bytes, stderr.
fn procguardctl(args: &[&str]) -> (i32, Vec<u8>, String) {
    let output = Command::new(EXE)
        .args(args)
        .current_dir(crate_dir())
        .output()
        .expect("run procguardctl");
    (
        output.status.code().expect("exit code"),
        output.stdout,
        String::from_utf8(output.stderr).expect("UTF-8 stderr"),
    )
}

/// A fresh scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("export-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

fn compiled(policy: &str, dir: &Path) -> Vec<u8> {
    let blob = dir.join("compiled.bin");
    let (code, _, err) = procguardctl(&["compile", policy, "-o", blob.to_str().expect("path")]);
    assert_eq!(code, 0, "{err}");
    std::fs::read(blob).expect("compiled blob")
}

fn utf16le(bytes: &[u8]) -> String {
    assert_eq!(bytes.len() % 2, 0, "odd UTF-16 length");
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .collect();
    String::from_utf16(&units).expect("UTF-16")
}

/// Reads a `.reg` file as regedit does: the hex bytes of `"Policy"` in the
/// procguard Parameters key (continuation lines joined).
fn parse_reg(bytes: &[u8]) -> Vec<u8> {
    assert_eq!(&bytes[..2], &[0xFF, 0xFE], "no UTF-16LE byte order mark");
    let text = utf16le(&bytes[2..]);
    let lines: Vec<&str> = text
        .strip_suffix("\r\n")
        .expect("ends with CRLF")
        .split("\r\n")
        .collect();
    assert!(
        lines.iter().all(|line| !line.contains('\n')),
        "a line end that is not CRLF"
    );
    assert_eq!(lines[0], "Windows Registry Editor Version 5.00");
    assert_eq!(lines[1], "");
    assert_eq!(lines[2], format!("[{PARAMETERS_KEY}]"));
    let mut value = String::new();
    let mut index = 3;
    loop {
        let line = lines[index];
        index += 1;
        match line.strip_suffix('\\') {
            Some(head) => value.push_str(head),
            None => {
                value.push_str(line);
                break;
            }
        }
    }
    assert_eq!(&lines[index..], &[""], "a blank line ends the key");
    let hex = value
        .strip_prefix("\"Policy\"=hex:")
        .expect("a REG_BINARY value named Policy");
    hex.split(',')
        .map(|byte| u8::from_str_radix(byte.trim_start(), 16).expect("hex byte"))
        .collect()
}

/// The bytes of the script's `[byte[]]$Policy = @( ... )` literal.
fn script_bytes(script: &str) -> Vec<u8> {
    let start = script
        .find("[byte[]]$Policy = @(")
        .expect("the bytes literal");
    let body = &script[start + "[byte[]]$Policy = @(".len()..];
    let body = &body[..body.find(')').expect("end of the literal")];
    body.split(',')
        .map(|item| {
            let item = item.trim();
            u8::from_str_radix(item.strip_prefix("0x").expect("0x.."), 16).expect("hex byte")
        })
        .collect()
}

#[test]
fn a_small_value_is_wrapped_as_regedit_wraps_it() {
    // 22 bytes on the first line (13 + 66 = 79 characters, then the
    // backslash), 25 on each continuation line (2 + 75), the rest on the last.
    let bytes: Vec<u8> = (0..=60).collect();
    let expected = "\"Policy\"=hex:00,01,02,03,04,05,06,07,08,09,0a,0b,0c,0d,0e,0f,10,11,12,13,14,15,\\\r\n  \
                    16,17,18,19,1a,1b,1c,1d,1e,1f,20,21,22,23,24,25,26,27,28,29,2a,2b,2c,2d,2e,\\\r\n  \
                    2f,30,31,32,33,34,35,36,37,38,39,3a,3b,3c\r\n";
    assert_eq!(reg_binary_value("Policy", &bytes), expected);
    // A longer name leaves fewer bytes on the first line (regedit's own
    // export of a DigitalProductId: 18 bytes after `"DigitalProductId"=hex:`).
    let long = reg_binary_value("DigitalProductId", &[0xAB; 19]);
    let first = long.split("\r\n").next().expect("a line");
    assert_eq!(first.len(), 23 + 18 * 3 + 1, "{first}");
    assert_eq!(reg_binary_value("Policy", &[]), "\"Policy\"=hex:\r\n");
    assert_eq!(reg_binary_value("Policy", &[1]), "\"Policy\"=hex:01\r\n");
}

#[test]
fn the_reg_file_is_exactly_regedit_s_format() {
    let blob = [0x50, 0x47, 0x50, 0x42, 0x02];
    let text = "Windows Registry Editor Version 5.00\r\n\r\n\
                [HKEY_LOCAL_MACHINE\\SYSTEM\\CurrentControlSet\\Services\\procguard\\Parameters]\r\n\
                \"Policy\"=hex:50,47,50,42,02\r\n\r\n";
    assert_eq!(reg_text(&blob), text);
    let mut bytes = vec![0xFF, 0xFE];
    for unit in text.encode_utf16() {
        bytes.extend_from_slice(&unit.to_le_bytes());
    }
    assert_eq!(reg_file(&blob), bytes);
}

#[test]
fn export_reg_holds_the_compiled_blob() {
    let dir = scratch("reg");
    let blob = compiled(EXAMPLE, &dir);
    let reg = dir.join("policy.reg");
    let (code, out, err) = procguardctl(&[
        "export",
        "--reg",
        EXAMPLE,
        "-o",
        reg.to_str().expect("path"),
    ]);
    assert_eq!(code, 0, "{err}");
    let out = String::from_utf8(out).expect("UTF-8");
    let id = blob_checksum(&blob);
    assert!(
        out.contains(&format!("policy id {id:#010x}"))
            && out.contains(&format!("{} bytes", blob.len())),
        "{out}"
    );
    let bytes = std::fs::read(&reg).expect("the .reg file");
    assert_eq!(parse_reg(&bytes), blob);
    assert_eq!(bytes, reg_file(&blob));
    // Every line as regedit writes it: at most 80 characters, continuation
    // lines indented by two spaces with 25 bytes each but the last.
    let text = utf16le(&bytes[2..]);
    let value_lines: Vec<&str> = text
        .split("\r\n")
        .skip(3)
        .take_while(|l| !l.is_empty())
        .collect();
    assert!(value_lines.len() > 3, "a blob this size wraps");
    for (index, line) in value_lines.iter().enumerate() {
        assert!(
            line.len() <= 80,
            "line {index} is {} long: {line}",
            line.len()
        );
        if index > 0 {
            assert!(line.starts_with("  ") && !line.starts_with("   "), "{line}");
        }
        if index > 0 && index + 1 < value_lines.len() {
            assert_eq!(line.len(), 78, "{line}");
            assert_eq!(line.matches(',').count(), 25, "{line}");
        }
        assert_eq!(
            line.ends_with('\\'),
            index + 1 < value_lines.len(),
            "{line}"
        );
    }
}

#[test]
fn export_reg_to_standard_output_needs_a_dash() {
    let dir = scratch("stdout");
    let blob = compiled(EXAMPLE, &dir);
    let (code, out, err) = procguardctl(&["export", "--reg", EXAMPLE]);
    assert_eq!(code, 64, "{err}");
    assert!(out.is_empty());
    assert!(err.contains("give -o FILE.reg"), "{err}");
    let (code, out, err) = procguardctl(&["export", "--reg", EXAMPLE, "-o", "-"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, reg_file(&blob));
    assert!(err.contains("REG_BINARY"), "{err}");
}

#[test]
fn the_powershell_script_holds_the_compiled_blob_and_its_id() {
    let dir = scratch("powershell");
    let blob = compiled(EXAMPLE, &dir);
    let id = blob_checksum(&blob);
    let (code, out, err) = procguardctl(&["export", "--powershell", EXAMPLE]);
    assert_eq!(code, 0, "{err}");
    let script = String::from_utf8(out).expect("UTF-8");
    assert!(
        script.is_ascii(),
        "Windows PowerShell 5.1 reads BOM-less files as ANSI"
    );
    assert!(
        !script.replace("\r\n", "").contains('\n'),
        "CRLF line ends only"
    );
    assert_eq!(script_bytes(&script), blob);
    assert!(script.contains(&format!("[int64]$PolicyId = {id}\r\n")));
    assert!(script.contains(&format!("policy 0x{id:08x}")));
    assert!(script.contains("[switch]$Detect = $false\r\n"));
    assert!(script.contains(
        "$KeyPath = 'HKLM:\\SYSTEM\\CurrentControlSet\\Services\\procguard\\Parameters'\r\n"
    ));
    assert!(script
        .contains("Set-ItemProperty -Path $KeyPath -Name $ValueName -Value $Policy -Type Binary"));
    // The detection variant differs in its default only.
    let (code, out, err) = procguardctl(&["export", "--powershell", "--detect", EXAMPLE]);
    assert_eq!(code, 0, "{err}");
    let detect = String::from_utf8(out).expect("UTF-8");
    assert_eq!(script_bytes(&detect), blob);
    assert!(detect.contains("[switch]$Detect = $true\r\n"));
    // --detect only goes with --powershell.
    assert_eq!(
        procguardctl(&["export", "--reg", "--detect", EXAMPLE, "-o", "-"]).0,
        64
    );
    // A file name outside ASCII does not make the script non-ASCII.
    let named = dir.join("Agënt <policy>.toml");
    std::fs::copy(crate_dir().join(EXAMPLE), &named).expect("copy");
    let (code, out, err) = procguardctl(&["export", "--powershell", named.to_str().expect("path")]);
    assert_eq!(code, 0, "{err}");
    let script = String::from_utf8(out).expect("UTF-8");
    assert!(
        script.is_ascii() && script.contains("Ag?nt ?policy?.toml: "),
        "{script}"
    );
}

#[test]
fn an_invalid_policy_writes_nothing() {
    let dir = scratch("invalid");
    for (format, file) in [("--reg", "out.reg"), ("--powershell", "out.ps1")] {
        let target = dir.join(file);
        let (code, out, err) = procguardctl(&[
            "export",
            format,
            "tests/policies/bad-values.toml",
            "-o",
            target.to_str().expect("path"),
        ]);
        assert_eq!(code, 1, "{err}");
        assert!(out.is_empty());
        assert!(err.ends_with("errors; nothing written\n"), "{err}");
        assert!(!target.exists(), "{format} wrote {}", target.display());
    }
    // An existing file stays as it was.
    let target = dir.join("kept.reg");
    std::fs::write(&target, b"old").expect("write");
    let (code, _, _) = procguardctl(&[
        "export",
        "--reg",
        "tests/policies/syntax-error.toml",
        "-o",
        target.to_str().expect("path"),
    ]);
    assert_eq!(code, 1);
    assert_eq!(std::fs::read(&target).expect("read"), b"old");
    // Standard output stays empty too.
    let (code, out, _) =
        procguardctl(&["export", "--powershell", "tests/policies/bad-values.toml"]);
    assert_eq!((code, out.len()), (1, 0));
}

#[test]
fn warnings_are_printed_and_the_file_is_written() {
    let dir = scratch("warnings");
    let policy = "tests/policies/warnings.toml";
    let blob = compiled(policy, &dir);
    let target = dir.join("warnings.reg");
    let (code, _, err) = procguardctl(&[
        "export",
        "--reg",
        policy,
        "-o",
        target.to_str().expect("path"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(": warning: "), "{err}");
    assert_eq!(parse_reg(&std::fs::read(&target).expect("read")), blob);
}
