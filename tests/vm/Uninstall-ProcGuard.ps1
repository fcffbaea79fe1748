#Requires -Version 5.1
#Requires -RunAsAdministrator
<#
.SYNOPSIS
    Stops and removes the procguard driver, its driver packages and the trust
    in its test certificate.

.DESCRIPTION
    Steps, each skipped when already done (running the script twice is safe):
      0. removes the events service: procguardctl.exe service uninstall
         (stops and deletes procguard-events, removes the Event Log source
         procguard), or, without procguardctl.exe beside the script, the same
         with sc.exe and the registry; then deletes the folder
         $env:ProgramFiles\procguard Install-ProcGuard.ps1 copied it to;
      1. stops the procguard service (the driver unregisters its callbacks and
         unloads);
      2. removes every procguard driver package from the driver store:
         pnputil /delete-driver oemNN.inf /uninstall /force, the oemNN.inf
         names found in pnputil /enum-drivers by their original name
         procguard.inf (on Windows 10 1903 and later this also removes the
         service the package installed);
      3. deletes the service if it is still there (sc.exe delete procguard);
         its registry key goes with it, Parameters and a persisted policy
         included;
      4. deletes procguard.sys where the service loaded it from, if a copy is
         left outside the driver store;
      5. removes the test certificate from LocalMachine Root and
         TrustedPublisher, by thumbprint: the package's procguard.cer and any
         other certificate with the subject CN=procguard Test Signing (an
         older build's). Skipped with -KeepCertificate.

    Test signing stays on (bcdedit /set testsigning off, then a reboot, turns
    it off).

.PARAMETER PackageDir
    The folder with procguard.cer. Default: the folder of this script. The
    script also works without it (certificates are then found by subject).

.PARAMETER KeepCertificate
    Leave the test certificate trusted (to install another build signed with
    the same key).

.EXAMPLE
    .\Uninstall-ProcGuard.ps1
    Removes everything Install-ProcGuard.ps1 installed.

.EXAMPLE
    .\Uninstall-ProcGuard.ps1 -KeepCertificate
    Removes the driver but keeps the certificate trusted.

.NOTES
    Exit codes: 0 removed (or nothing to remove), 1 failure, 3010 removed but a
    reboot is needed to finish (the service was marked for deletion, or the
    driver could not be stopped).
#>
[CmdletBinding()]
param(
    [string]$PackageDir = $PSScriptRoot,
    [switch]$KeepCertificate
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

. (Join-Path $PSScriptRoot 'ProcGuard.Common.ps1')

try {
    Assert-ProcGuardHost
    $rebootNeeded = $false
    $sc = Get-ProcGuardSystemTool 'sc.exe'

    # What the service loads, read before the service goes.
    $image = Get-ProcGuardImagePath

    # 0. The events service (it holds the driver's device open).
    Write-ProcGuardStep "Remove the $($ProcGuard.EventsServiceName) service"
    $ctl = Join-Path $PackageDir $ProcGuard.ControlToolName
    if (Test-Path -LiteralPath $ctl -PathType Leaf) {
        $result = Invoke-ProcGuardNative -FilePath $ctl -ArgumentList @('service', 'uninstall') -Echo
        if ($result.ExitCode -ne 0) {
            throw "$($ProcGuard.ControlToolName) service uninstall failed (exit code $($result.ExitCode))."
        }
    }
    else {
        $events = Get-Service -Name $ProcGuard.EventsServiceName -ErrorAction SilentlyContinue
        if ($null -eq $events) {
            Write-ProcGuardSkip 'no such service'
        }
        else {
            if ($events.Status -ne 'Stopped') {
                Stop-Service -Name $ProcGuard.EventsServiceName
                $events.WaitForStatus('Stopped', [TimeSpan]::FromSeconds(30))
            }
            $result = Invoke-ProcGuardNative -FilePath $sc -ArgumentList @('delete', $ProcGuard.EventsServiceName)
            if ($result.ExitCode -ne 0 -and $result.ExitCode -ne 1060) {
                throw "sc.exe delete $($ProcGuard.EventsServiceName) failed: $(Get-ProcGuardWin32Message $result.ExitCode)"
            }
            Write-ProcGuardOk 'deleted'
        }
        $source = Join-Path 'HKLM:\SYSTEM\CurrentControlSet\Services\EventLog\Application' $ProcGuard.ServiceName
        if (Test-Path -LiteralPath $source) {
            Remove-Item -LiteralPath $source -Recurse -Force
            Write-ProcGuardOk 'removed the event source'
        }
    }
    if (Test-Path -LiteralPath $ProcGuard.EventsInstallDir) {
        Remove-Item -LiteralPath $ProcGuard.EventsInstallDir -Recurse -Force
        Write-ProcGuardOk "deleted $($ProcGuard.EventsInstallDir)"
    }

    # 1. Stop the driver.
    Write-ProcGuardStep "Stop the $($ProcGuard.ServiceName) service"
    $service = Get-ProcGuardService
    if ($null -eq $service) {
        Write-ProcGuardSkip 'no such service'
    }
    elseif ($service.State -eq 'Stopped') {
        Write-ProcGuardSkip 'already stopped'
    }
    else {
        $result = Invoke-ProcGuardNative -FilePath $sc -ArgumentList @('stop', $ProcGuard.ServiceName)
        # 1062: ERROR_SERVICE_NOT_ACTIVE (stopped meanwhile).
        if ($result.ExitCode -ne 0 -and $result.ExitCode -ne 1062) {
            Write-ProcGuardNote "sc.exe stop failed: $(Get-ProcGuardWin32Message $result.ExitCode); the driver stays loaded until a reboot"
            $rebootNeeded = $true
        }
        elseif (Wait-ProcGuardServiceState -State 'Stopped' -TimeoutSeconds 30) {
            Write-ProcGuardOk 'stopped'
        }
        else {
            Write-ProcGuardNote 'the service did not stop within 30 s; the driver stays loaded until a reboot'
            $rebootNeeded = $true
        }
    }

    # 2. The driver packages.
    Write-ProcGuardStep "Remove the driver packages ($($ProcGuard.InfName))"
    $packages = @(Get-ProcGuardDriverPackage)
    if ($packages.Count -eq 0) {
        Write-ProcGuardSkip 'none in the driver store'
    }
    $pnputil = Get-ProcGuardSystemTool 'pnputil.exe'
    foreach ($published in $packages) {
        $result = Invoke-ProcGuardNative -FilePath $pnputil -ArgumentList @('/delete-driver', $published, '/uninstall', '/force')
        $result.Output | ForEach-Object { Write-Host "    | $_" }
        if ($result.ExitCode -eq 3010) {
            Write-ProcGuardNote "removed $published; pnputil asks for a reboot"
            $rebootNeeded = $true
        }
        elseif ($result.ExitCode -ne 0) {
            throw "pnputil /delete-driver $published failed (exit code $($result.ExitCode))."
        }
        else {
            Write-ProcGuardOk "removed $published"
        }
    }

    # 3. The service, if the package removal left it.
    Write-ProcGuardStep "Delete the $($ProcGuard.ServiceName) service"
    if ($null -eq (Get-ProcGuardService)) {
        Write-ProcGuardSkip 'no such service'
    }
    else {
        $result = Invoke-ProcGuardNative -FilePath $sc -ArgumentList @('delete', $ProcGuard.ServiceName)
        switch ($result.ExitCode) {
            0 { Write-ProcGuardOk 'deleted' }
            # ERROR_SERVICE_DOES_NOT_EXIST: gone meanwhile.
            1060 { Write-ProcGuardSkip 'no such service' }
            # ERROR_SERVICE_MARKED_FOR_DELETE: a handle is still open on it.
            1072 {
                Write-ProcGuardNote 'already marked for deletion: it goes at the next reboot'
                $rebootNeeded = $true
            }
            default { throw "sc.exe delete $($ProcGuard.ServiceName) failed: $(Get-ProcGuardWin32Message $result.ExitCode)`n$($result.Text)" }
        }
        if (-not (Wait-ProcGuardServiceState -State 'Absent' -TimeoutSeconds 10)) {
            Write-ProcGuardNote 'the service is still listed (marked for deletion): it goes at the next reboot'
            $rebootNeeded = $true
        }
    }

    # 4. A left-over image. The driver store is pnputil's to clean, never ours.
    Write-ProcGuardStep "Left-over $($ProcGuard.DriverName)"
    $candidates = @(Join-Path $env:SystemRoot "System32\drivers\$($ProcGuard.DriverName)")
    if ($null -ne $image) {
        $candidates = @($image) + $candidates
    }
    $leftovers = @($candidates | Select-Object -Unique | Where-Object { Test-Path -LiteralPath $_ -PathType Leaf })
    if ($leftovers.Count -eq 0) {
        Write-ProcGuardSkip 'none'
    }
    foreach ($file in $leftovers) {
        if ($file.StartsWith($ProcGuard.DriverStore, [StringComparison]::OrdinalIgnoreCase)) {
            Write-ProcGuardNote "$file is still in the driver store: a package pnputil did not remove (pnputil /enum-drivers)"
            continue
        }
        try {
            Remove-Item -LiteralPath $file -Force
            Write-ProcGuardOk "deleted $file"
        }
        catch {
            # Still mapped: the driver did not unload.
            Write-ProcGuardNote "could not delete $file ($($_.Exception.Message)): delete it after a reboot"
            $rebootNeeded = $true
        }
    }

    # 5. The test certificate.
    Write-ProcGuardStep "Untrust the test certificate ($($ProcGuard.CertificateSubject))"
    if ($KeepCertificate) {
        Write-ProcGuardSkip '-KeepCertificate'
    }
    else {
        $thumbprints = @()
        $cer = Join-Path $PackageDir $ProcGuard.CertificateName
        if (Test-Path -LiteralPath $cer -PathType Leaf) {
            $thumbprints += (New-Object System.Security.Cryptography.X509Certificates.X509Certificate2 -ArgumentList $cer).Thumbprint
        }
        $trusted = @(Get-ProcGuardTrustedCertificate -Thumbprint $thumbprints)
        if ($trusted.Count -eq 0) {
            Write-ProcGuardSkip 'not in LocalMachine Root or TrustedPublisher'
        }
        foreach ($entry in $trusted) {
            $store = New-Object System.Security.Cryptography.X509Certificates.X509Store -ArgumentList $entry.Store, 'LocalMachine'
            $store.Open('ReadWrite')
            try {
                foreach ($certificate in @($store.Certificates.Find('FindByThumbprint', $entry.Thumbprint, $false))) {
                    $store.Remove($certificate)
                }
            }
            finally {
                $store.Close()
            }
            Write-ProcGuardOk "removed $($entry.Thumbprint) ($($entry.Subject)) from LocalMachine\$($entry.Store)"
        }
    }

    Write-Host ''
    if ($rebootNeeded) {
        Write-Host 'procguard is removed; REBOOT to finish (see the notes above).' -ForegroundColor Yellow
        exit 3010
    }
    Write-Host 'procguard is removed.' -ForegroundColor Green
    exit 0
}
catch {
    Write-ProcGuardFailure $_
    exit 1
}
