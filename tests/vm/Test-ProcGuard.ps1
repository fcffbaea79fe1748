#Requires -Version 5.1
#Requires -RunAsAdministrator
<#
.SYNOPSIS
    End-to-end test of procguard on a test-signed VM: installs the driver if
    needed, runs procguard-smoke.exe, and collects diagnostics when it fails.

.DESCRIPTION
    1. checks that test signing is in force (Enable-TestSigning.ps1, reboot);
    2. runs Install-ProcGuard.ps1, which installs and starts the driver
       unless this package's build already runs (then it only checks that
       procguardctl.exe status answers);
    3. runs procguard-smoke.exe from the package and relays its PASS/FAIL
       table as it prints it;
    4. on any failure, collects diagnostics (Get-ProcGuardDiagnostics.ps1:
       sc.exe query procguard, procguardctl.exe status, the procguard part of
       setupapi.dev.log, the Service Control Manager's System events about
       procguard, Code Integrity events) and the smoke test's output into one
       folder, and prints its path;
    5. exits with the smoke test's exit code.

.PARAMETER PackageDir
    The package folder. Default: the folder of this script.

.PARAMETER DiagnosticsDir
    Where diagnostics go on failure. Default:
    %TEMP%\procguard-diagnostics-<date>-<time>.

.PARAMETER SmokeArguments
    Extra arguments for procguard-smoke.exe.

.EXAMPLE
    .\Test-ProcGuard.ps1
    Installs procguard if needed and runs the smoke test.

.EXAMPLE
    .\Test-ProcGuard.ps1 -DiagnosticsDir C:\procguard-diag
    The same, with diagnostics in a known folder when it fails.

.NOTES
    Exit codes, those of procguard-smoke.exe:
      0  every check passed
      1  a check failed
      2  the test could not run (test signing off, install failed, driver not
         loaded, procguard-smoke.exe or procguardctl.exe missing, or the smoke
         test ended with an exit code it does not define, e.g. a crash)
      3  not Windows (procguard-smoke.exe's own code)
#>
[CmdletBinding()]
param(
    [string]$PackageDir = $PSScriptRoot,
    [string]$DiagnosticsDir = '',
    [string[]]$SmokeArguments = @()
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

. (Join-Path $PSScriptRoot 'ProcGuard.Common.ps1')

if ($DiagnosticsDir -eq '') {
    $DiagnosticsDir = New-ProcGuardDiagnosticsPath
}

# procguard-smoke.exe's exit codes.
$SmokePassed = 0
$SmokeFailed = 1
$SmokeCouldNotRun = 2
$SmokeNotWindows = 3

function Save-Diagnostics {
    # Runs Get-ProcGuardDiagnostics.ps1 into $DiagnosticsDir, and adds the
    # smoke test's output when there is one.
    param([string[]]$SmokeOutput = @())
    Write-Host ''
    Write-ProcGuardStep 'Collecting diagnostics'
    try {
        $collector = Join-Path $PSScriptRoot $ProcGuard.DiagnosticsScript
        & $collector -OutputDir $DiagnosticsDir -PackageDir $PackageDir
        if ($SmokeOutput.Count -gt 0) {
            Set-Content -LiteralPath (Join-Path $DiagnosticsDir 'smoke-output.txt') -Value $SmokeOutput -Encoding UTF8
        }
    }
    catch {
        Write-ProcGuardNote "collecting diagnostics failed: $($_.Exception.Message)"
    }
}

function Exit-Test {
    # Prints the verdict and exits with the code.
    param(
        [Parameter(Mandatory = $true)][int]$Code,
        [Parameter(Mandatory = $true)][string]$Message
    )
    Write-Host ''
    if ($Code -eq $SmokePassed) {
        Write-Host "PASS: $Message" -ForegroundColor Green
    }
    else {
        $Host.UI.WriteErrorLine("FAIL (exit code $Code): $Message")
    }
    exit $Code
}

try {
    Assert-ProcGuardHost

    Write-ProcGuardStep 'Test signing'
    $signing = Get-ProcGuardTestSigning
    if (-not $signing.ActiveNow) {
        Save-Diagnostics
        Exit-Test -Code $SmokeCouldNotRun -Message "test signing is not in force: run .\Enable-TestSigning.ps1, reboot, then run this script again (diagnostics in $DiagnosticsDir)."
    }
    Write-ProcGuardOk 'in force'

    $smoke = Join-Path $PackageDir $ProcGuard.SmokeTestName
    if (-not (Test-Path -LiteralPath $smoke -PathType Leaf)) {
        Exit-Test -Code $SmokeCouldNotRun -Message "$($ProcGuard.SmokeTestName) is not in $PackageDir (copy the whole package, or pass -PackageDir)."
    }

    # Install-ProcGuard.ps1 skips what is done already: when this package's
    # build runs, it only checks that procguardctl.exe status answers; when
    # another build runs, it replaces it, so the smoke test tests this one.
    Write-ProcGuardStep "$($ProcGuard.InstallScript) (installs only what is missing)"
    $install = Join-Path $PSScriptRoot $ProcGuard.InstallScript
    & $install -PackageDir $PackageDir
    if ($LASTEXITCODE -ne 0) {
        $code = $LASTEXITCODE
        Save-Diagnostics
        Exit-Test -Code $SmokeCouldNotRun -Message "$($ProcGuard.InstallScript) failed (exit code $code): see its messages above; diagnostics in $DiagnosticsDir"
    }

    Write-ProcGuardStep "$($ProcGuard.SmokeTestName) $($SmokeArguments -join ' ')"
    Push-Location -LiteralPath $PackageDir
    try {
        $result = Invoke-ProcGuardNative -FilePath $smoke -ArgumentList $SmokeArguments -Echo
    }
    finally {
        Pop-Location
    }

    switch ($result.ExitCode) {
        $SmokePassed {
            Exit-Test -Code $SmokePassed -Message "$($ProcGuard.SmokeTestName): every check passed."
        }
        $SmokeFailed {
            Save-Diagnostics -SmokeOutput $result.Output
            Exit-Test -Code $SmokeFailed -Message "$($ProcGuard.SmokeTestName): a check failed (FAIL lines above); diagnostics in $DiagnosticsDir"
        }
        $SmokeCouldNotRun {
            Save-Diagnostics -SmokeOutput $result.Output
            Exit-Test -Code $SmokeCouldNotRun -Message "$($ProcGuard.SmokeTestName) could not run (see above); diagnostics in $DiagnosticsDir"
        }
        $SmokeNotWindows {
            Exit-Test -Code $SmokeNotWindows -Message "$($ProcGuard.SmokeTestName) says this is not Windows."
        }
        default {
            # A code the smoke test does not define: it crashed (an NTSTATUS
            # such as 0xC0000005 shows as a negative number) or was killed.
            Save-Diagnostics -SmokeOutput $result.Output
            Exit-Test -Code $SmokeCouldNotRun -Message ("{0} ended with exit code {1} (0x{1:X8}), which it does not define; diagnostics in {2}" -f $ProcGuard.SmokeTestName, $result.ExitCode, $DiagnosticsDir)
        }
    }
}
catch {
    Write-ProcGuardFailure $_
    Save-Diagnostics
    exit $SmokeCouldNotRun
}
