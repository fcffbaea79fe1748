#Requires -Version 5.1
#Requires -RunAsAdministrator
<#
.SYNOPSIS
    Turns on test signing (bcdedit /set testsigning on), so that Windows loads
    the test-signed procguard.sys after the next reboot.

.DESCRIPTION
    procguard.sys is signed with a self-signed test certificate. Windows loads
    such a driver only in test mode, and ObRegisterCallbacks refuses an image
    whose signature it does not accept.

    The script:
      1. reads whether Secure Boot is on: Secure Boot makes bcdedit refuse the
         option and the boot manager ignore it, so it fails with what to do;
      2. sets testsigning in the boot configuration of the current Windows,
         unless it is already set;
      3. says whether a reboot is needed (test signing takes effect at boot);
         with -Restart it reboots.

    Running it again changes nothing. Undo with: bcdedit /set testsigning off.

.PARAMETER Restart
    Reboot at the end when a reboot is needed.

.EXAMPLE
    .\Enable-TestSigning.ps1
    Turns test signing on and says whether to reboot.

.EXAMPLE
    .\Enable-TestSigning.ps1 -Restart
    Turns test signing on and reboots if that is needed.

.NOTES
    Exit codes: 0 on (or on after the reboot), 1 failure (Secure Boot on,
    bcdedit failed).
#>
[CmdletBinding()]
param(
    [switch]$Restart
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

. (Join-Path $PSScriptRoot 'ProcGuard.Common.ps1')

try {
    Assert-ProcGuardHost

    Write-ProcGuardStep 'Secure Boot'
    $secureBoot = Get-ProcGuardSecureBoot
    Write-ProcGuardOk "Secure Boot: $secureBoot"

    Write-ProcGuardStep 'Test signing in the boot configuration'
    $signing = Get-ProcGuardTestSigning
    if ($signing.ConfiguredForNextBoot) {
        Write-ProcGuardSkip 'testsigning is already Yes in bcdedit /enum {current}'
    }
    elseif ($secureBoot -eq 'On') {
        throw ('Secure Boot is on: Windows ignores test signing and bcdedit refuses to set it. ' +
            'Turn Secure Boot off in the VM''s firmware settings (Hyper-V: with the VM off, on the host: ' +
            'Set-VMFirmware -VMName <name> -EnableSecureBoot Off), start the VM, and run this script again.')
    }
    else {
        $bcdedit = Get-ProcGuardSystemTool 'bcdedit.exe'
        $result = Invoke-ProcGuardNative -FilePath $bcdedit -ArgumentList @('/set', 'testsigning', 'on')
        if ($result.ExitCode -ne 0) {
            throw "bcdedit /set testsigning on failed (exit code $($result.ExitCode)):`n$($result.Text)"
        }
        Write-ProcGuardOk 'bcdedit /set testsigning on'
    }

    if ($secureBoot -eq 'On') {
        Write-ProcGuardNote 'testsigning is set, but Secure Boot is on: it is ignored until Secure Boot is turned off.'
    }

    Write-ProcGuardStep 'Test signing in force'
    if ($signing.ActiveNow) {
        Write-ProcGuardOk 'test signing is in force now (this boot): no reboot needed'
        exit 0
    }
    Write-ProcGuardNote 'test signing takes effect at the next boot: REBOOT NEEDED (Restart-Computer), then run Install-ProcGuard.ps1.'
    if ($Restart) {
        Write-ProcGuardStep 'Rebooting'
        Restart-Computer -Force
    }
    exit 0
}
catch {
    Write-ProcGuardFailure $_
    exit 1
}
