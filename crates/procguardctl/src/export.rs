//! `export`: a compiled policy as a file that fleet tools push to
//! `HKLM\SYSTEM\CurrentControlSet\Services\procguard\Parameters\Policy`
//! (REG_BINARY), where the driver reads it at start and, when it changes,
//! puts it in force live.
//!
//! - `--reg`: a `.reg` file exactly as regedit writes one ("Windows Registry
//!   Editor Version 5.00", UTF-16LE with a byte order mark, CRLF line ends,
//!   `"Policy"=hex:` with regedit's line wrapping), for `regedit /s`,
//!   `reg import` and anything that deploys `.reg` files.
//! - `--powershell`: a Windows PowerShell 5.1 script (ASCII, CRLF) that
//!   writes the value with `Set-ItemProperty -Type Binary`, or with `-Detect`
//!   only tells whether the value already holds the policy (exit code 0) or
//!   not (1): Intune remediation's detection and remediation scripts,
//!   Configuration Manager's discovery and remediation scripts, Ansible's
//!   `win_shell`. It checks the policy id (the blob's CRC-32) of its own bytes
//!   before it writes anything.
//!
//! Only a valid policy is exported: errors print and nothing is written;
//! warnings print and the file is written.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::offline::{load, CompiledFile};
use crate::{Failure, Output, EXIT_USAGE};

/// The driver's Parameters key, as regedit names it.
pub const PARAMETERS_KEY: &str =
    r"HKEY_LOCAL_MACHINE\SYSTEM\CurrentControlSet\Services\procguard\Parameters";
/// The key as a PowerShell registry-provider path.
pub const PARAMETERS_PS_PATH: &str =
    r"HKLM:\SYSTEM\CurrentControlSet\Services\procguard\Parameters";
/// The REG_BINARY value that holds the compiled policy.
pub const POLICY_VALUE: &str = "Policy";

/// The first line of a `.reg` file regedit 5 and later write and read.
pub const REG_HEADER: &str = "Windows Registry Editor Version 5.00";
/// regedit breaks a hex line (with `,\`) as soon as it is this many
/// characters long or longer, never inside a byte: a continuation line holds
/// 25 bytes (78 characters with the backslash), the first line up to 80.
pub const REG_WRAP: usize = 77;
/// The indent of regedit's continuation lines.
pub const REG_INDENT: &str = "  ";

/// What `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// A `.reg` file (UTF-16LE).
    Reg,
    /// A PowerShell script that writes the value (or, with `-Detect`, checks it).
    PowerShell {
        /// `-Detect` is the default (the file is a detection script).
        detect: bool,
    },
}

/// A `.reg` value line: `"Name"=hex:xx,xx,...` wrapped as regedit wraps it,
/// every line ended by CRLF.
#[must_use]
pub fn reg_binary_value(name: &str, bytes: &[u8]) -> String {
    let mut text = String::with_capacity(16 + bytes.len() * 4);
    text.push('"');
    for c in name.chars() {
        if matches!(c, '"' | '\\') {
            text.push('\\');
        }
        text.push(c);
    }
    text.push_str("\"=hex:");
    // regedit counts the line from the value's name on; a byte and its comma
    // are never split.
    let mut line = text.len();
    for (index, byte) in bytes.iter().enumerate() {
        let _ = write!(text, "{byte:02x}");
        if index + 1 == bytes.len() {
            break;
        }
        text.push(',');
        line += 3;
        if line >= REG_WRAP {
            text.push_str("\\\r\n");
            text.push_str(REG_INDENT);
            line = REG_INDENT.len();
        }
    }
    text.push_str("\r\n");
    text
}

/// The text of the `.reg` file that sets `Parameters\Policy` to `blob`: the
/// header, a blank line, the key, the value, a blank line (CRLF throughout),
/// as `regedit /e` writes the key.
#[must_use]
pub fn reg_text(blob: &[u8]) -> String {
    format!(
        "{REG_HEADER}\r\n\r\n[{PARAMETERS_KEY}]\r\n{}\r\n",
        reg_binary_value(POLICY_VALUE, blob)
    )
}

/// The `.reg` file's bytes: [`reg_text`] in UTF-16LE after a byte order mark.
#[must_use]
pub fn reg_file(blob: &[u8]) -> Vec<u8> {
    let text = reg_text(blob);
    let mut bytes = Vec::with_capacity(2 + text.len() * 2);
    bytes.extend_from_slice(&[0xFF, 0xFE]);
    for unit in text.encode_utf16() {
        bytes.extend_from_slice(&unit.to_le_bytes());
    }
    bytes
}

/// Bytes per line of the script's byte array.
const PS_BYTES_PER_LINE: usize = 16;

/// Text that is safe inside the script's `<# #>` help: printable ASCII, no
/// `<`/`>` (which could end the comment), anything else as `?`.
fn ascii_comment(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '<' && c != '>' || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// The PowerShell script (ASCII, CRLF line ends) that puts the compiled
/// policy in `Parameters\Policy`; with `detect`, checking is its default.
/// `source` names the policy file in the script's help.
#[must_use]
pub fn powershell_script(file: &CompiledFile, source: &str, detect: bool) -> String {
    let id = file.policy_id;
    let rules = file.policy.rules.len();
    let size = file.blob.len();
    let version = env!("CARGO_PKG_VERSION");
    let source = ascii_comment(source);
    let mut bytes = String::with_capacity(size * 6);
    for (index, chunk) in file.blob.chunks(PS_BYTES_PER_LINE).enumerate() {
        if index != 0 {
            bytes.push_str(",\n");
        }
        bytes.push_str("    ");
        let line: Vec<String> = chunk.iter().map(|byte| format!("0x{byte:02X}")).collect();
        bytes.push_str(&line.join(","));
    }
    let mode_text = if detect {
        "detection script: it only checks, unless -Detect:$false is given"
    } else {
        "remediation script: it writes the value, unless -Detect is given"
    };
    let detect_default = if detect { "$true" } else { "$false" };
    let text = format!(
        r#"<#
.SYNOPSIS
Puts procguard policy 0x{id:08x} in force on this machine, or with -Detect
tells whether it is.

.DESCRIPTION
Written by procguardctl {version} (procguardctl export --powershell) from
{source}: {rules} rule(s), {size} bytes, policy id 0x{id:08x}.
This file is a {mode_text}.

Without -Detect it writes the compiled policy to the REG_BINARY value
{POLICY_VALUE} of {PARAMETERS_PS_PATH}
(creating the key if it is missing) and reads it back: exit code 0 when the
value then holds this policy, 1 when anything failed (the reason on the
error stream). A running procguard driver puts the changed value in force
within a second, or refuses it and keeps its policy (procguardctl status);
otherwise the driver reads it when it starts.

With -Detect it changes nothing: exit code 0 when the value already holds
exactly this policy, 1 when it does not (missing, another type, other bytes).
Intune remediations and Configuration Manager configuration items run their
scripts without arguments: upload the output of
procguardctl export --powershell --detect as the detection script and that of
procguardctl export --powershell as the remediation script.

Before anything else the script checks its own bytes: their CRC-32 (with the
checksum field, bytes 12 to 15, taken as zero) must be the policy id stored in
that field and written above. Writing HKLM needs an administrator or SYSTEM
(Intune and Configuration Manager run scripts as SYSTEM); detection does not.

.PARAMETER Detect
Only check whether the value holds this policy: exit code 0 when it does, 1
when it does not.

.EXAMPLE
powershell.exe -NoProfile -ExecutionPolicy Bypass -File .\procguard-policy.ps1

.EXAMPLE
powershell.exe -NoProfile -ExecutionPolicy Bypass -File .\procguard-policy.ps1 -Detect
#>
#Requires -Version 5.1
[CmdletBinding()]
param(
    [switch]$Detect = {detect_default}
)
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$KeyPath = '{PARAMETERS_PS_PATH}'
$ValueName = '{POLICY_VALUE}'
[int64]$PolicyId = {id}
$PolicyName = '0x{{0:x8}}' -f $PolicyId
[byte[]]$Policy = @(
{bytes}
)

function Get-PolicyChecksum {{
    # CRC-32 (IEEE 802.3, reflected, as zlib's crc32) of the blob with bytes
    # 12 to 15 (the checksum field) taken as zero: the policy id. Computed in
    # int64, where every value stays below 2^32 and -shr shifts in zeros.
    param([byte[]]$Blob)
    $table = New-Object 'int64[]' 256
    for ($n = 0; $n -lt 256; $n++) {{
        [int64]$c = $n
        for ($k = 0; $k -lt 8; $k++) {{
            if (($c -band 1) -eq 1) {{
                $c = 3988292384 -bxor ($c -shr 1)
            }} else {{
                $c = $c -shr 1
            }}
        }}
        $table[$n] = $c
    }}
    [int64]$crc = 4294967295
    for ($i = 0; $i -lt $Blob.Length; $i++) {{
        [int64]$byte = 0
        if ($i -lt 12 -or $i -ge 16) {{
            $byte = $Blob[$i]
        }}
        $crc = $table[[int](($crc -bxor $byte) -band 255)] -bxor ($crc -shr 8)
    }}
    return ($crc -bxor 4294967295)
}}

function Test-PolicyInForce {{
    # True when the value exists, is REG_BINARY and holds exactly $Policy.
    $key = Get-Item -Path $KeyPath -ErrorAction SilentlyContinue
    if ($null -eq $key) {{
        return $false
    }}
    if ($key.GetValueNames() -notcontains $ValueName) {{
        return $false
    }}
    if ($key.GetValueKind($ValueName) -ne [Microsoft.Win32.RegistryValueKind]::Binary) {{
        return $false
    }}
    [byte[]]$current = $key.GetValue($ValueName)
    return ([BitConverter]::ToString($current) -ceq [BitConverter]::ToString($Policy))
}}

try {{
    $checksum = Get-PolicyChecksum -Blob $Policy
    $stored = [BitConverter]::ToUInt32($Policy, 12)
    if ($checksum -ne $PolicyId -or $stored -ne $PolicyId) {{
        throw ('the policy bytes in this script are damaged (CRC-32 0x{{0:x8}}, stored id 0x{{1:x8}}): export it again' -f $checksum, $stored)
    }}
    if ($Detect) {{
        if (Test-PolicyInForce) {{
            Write-Output "procguard policy $PolicyName is in $KeyPath\$ValueName"
            exit 0
        }}
        Write-Output "procguard policy $PolicyName is not in $KeyPath\$ValueName"
        exit 1
    }}
    if (-not (Test-Path -Path $KeyPath)) {{
        $null = New-Item -Path $KeyPath -Force
    }}
    Set-ItemProperty -Path $KeyPath -Name $ValueName -Value $Policy -Type Binary
    if (-not (Test-PolicyInForce)) {{
        throw "$KeyPath\$ValueName does not hold the policy after writing it"
    }}
    Write-Output "procguard policy $PolicyName ({rules} rule(s), {size} bytes) written to $KeyPath\$ValueName"
    exit 0
}} catch {{
    [Console]::Error.WriteLine("procguard policy ${{PolicyName}}: $($_.Exception.Message)")
    exit 1
}}
"#
    );
    text.replace('\n', "\r\n")
}

/// `export`: loads the policy (errors: nothing written), renders it and
/// writes it to `destination` (`-` or none: standard output; a `.reg` file
/// needs a destination, see [`ExportFormat::Reg`]).
///
/// # Errors
/// [`Failure`] when the policy has errors, `--reg` has no `-o`, or the file
/// cannot be written.
pub fn export(
    path: &Path,
    format: ExportFormat,
    destination: Option<&PathBuf>,
    output: &mut Output<'_>,
) -> Result<(), Failure> {
    let to_stdout = destination.is_none_or(|file| file.as_os_str() == "-");
    if format == ExportFormat::Reg && destination.is_none() {
        // UTF-16 on a terminal is unreadable, and Windows PowerShell 5.1's
        // `>` would decode and re-encode it into a file regedit misreads.
        return Err(Failure {
            code: EXIT_USAGE,
            message: "export --reg writes a UTF-16 file: give -o FILE.reg (or -o - for standard \
                      output, as cmd's > or a pipe take it); nothing written"
                .to_owned(),
        });
    }
    let file = load(path, output).map_err(|failure| Failure {
        message: format!("{}; nothing written", failure.message),
        ..failure
    })?;
    let (bytes, what) = match format {
        ExportFormat::Reg => (reg_file(&file.blob), "a .reg file"),
        ExportFormat::PowerShell { detect } => {
            let source = path.file_name().map_or_else(
                || path.display().to_string(),
                |name| name.to_string_lossy().into_owned(),
            );
            let what = if detect {
                "a PowerShell detection script"
            } else {
                "a PowerShell script"
            };
            (powershell_script(&file, &source, detect).into_bytes(), what)
        }
    };
    let summary = format!(
        "{what} that sets {PARAMETERS_KEY}\\{POLICY_VALUE} (REG_BINARY) to policy id {:#010x}: \
         {} rule(s), {} bytes",
        file.policy_id,
        file.policy.rules.len(),
        file.blob.len()
    );
    match destination.filter(|_| !to_stdout) {
        Some(destination) => {
            std::fs::write(destination, &bytes).map_err(|error| {
                Failure::error(format!("cannot write {}: {error}", destination.display()))
            })?;
            writeln!(output.out, "wrote {}: {summary}", destination.display())?;
        }
        None => {
            output.out.write_all(&bytes)?;
            output.out.flush()?;
            writeln!(output.err, "wrote {summary}")?;
        }
    }
    Ok(())
}
