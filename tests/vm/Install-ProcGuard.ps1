#Requires -Version 5.1
#Requires -RunAsAdministrator
<#
.SYNOPSIS
    Installs and starts the procguard driver from the package beside this
    script, and checks that procguardctl.exe reaches it.

.DESCRIPTION
    Steps, each skipped when already done (running the script twice is safe):
      1. checks the package files and that test signing is in force
         (Enable-TestSigning.ps1, then a reboot);
      2. trusts the test certificate procguard.cer in the LocalMachine Root and
         TrustedPublisher stores (skipped where its thumbprint is present);
      3. pnputil /add-driver procguard.inf /install: stages the driver package
         in the driver store and, on Windows 10 1903 and later, runs its
         [DefaultInstall.NTamd64] section (a primitive driver), which creates
         the procguard service. Skipped when the service already loads this
         very procguard.sys; when it loads another build, the service is
         stopped first so the new one is loaded;
      4. where pnputil only staged the package (no procguard service
         afterwards), runs the section itself:
         RUNDLL32.EXE SETUPAPI.DLL,InstallHinfSection DefaultInstall.NTamd64 132 <inf>
         on the staged copy of the INF in the driver store, so that
         ServiceBinary = %13%\procguard.sys names the driver store folder;
      5. starts the service (sc.exe start procguard) and waits until it runs;
      6. runs procguardctl.exe status, which must answer;
      7. with -ApplyExamplePolicy: procguardctl.exe apply protect-agent.toml
         (with -Persist also --persist);
      8. the events service (skipped with -NoEventsService): copies
         procguard-events.exe to $env:ProgramFiles\procguard (stopping the
         service first when it runs), then procguardctl.exe service install
         --exe <the copy> [--json <EventsJson>] [--textfile <EventsTextfile>]
         (the auto-start service procguard-events and the Event Log source
         procguard), then sc.exe start procguard-events.

.PARAMETER PackageDir
    The folder with procguard.inf, procguard.sys, procguard.cat, procguard.cer
    and procguardctl.exe. Default: the folder of this script.

.PARAMETER ApplyExamplePolicy
    Apply the example policy protect-agent.toml once the driver runs.

.PARAMETER Persist
    With -ApplyExamplePolicy: also store the policy in the registry
    (Parameters\Policy), so it is in force from the next boot on.

.PARAMETER NoEventsService
    Do not install the procguard-events service.

.PARAMETER EventsJson
    The events service also writes each audit record as a JSON line to this
    file (rotated by size).

.PARAMETER EventsTextfile
    The events service keeps a Prometheus textfile here (a .prom name in
    windows_exporter's textfile collector folder).

.EXAMPLE
    .\Install-ProcGuard.ps1
    Installs and starts the driver from the package beside the script.

.EXAMPLE
    .\Install-ProcGuard.ps1 -ApplyExamplePolicy
    The same, then applies protect-agent.toml.

.EXAMPLE
    .\Install-ProcGuard.ps1 -PackageDir D:\procguard\package
    Installs from another folder.

.EXAMPLE
    .\Install-ProcGuard.ps1 -EventsTextfile 'C:\Program Files\windows_exporter\textfile_inputs\procguard.prom'
    The same, the events service also keeping metrics for windows_exporter.

.NOTES
    Exit codes: 0 installed and running, 1 failure (the message says which
    step; Get-ProcGuardDiagnostics.ps1 collects the details).
#>
[CmdletBinding()]
param(
    [string]$PackageDir = $PSScriptRoot,
    [switch]$ApplyExamplePolicy,
    [switch]$Persist,
    [switch]$NoEventsService,
    [string]$EventsJson = '',
    [string]$EventsTextfile = ''
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

. (Join-Path $PSScriptRoot 'ProcGuard.Common.ps1')

function Add-TrustedCertificate {
    # Adds the certificate to each LocalMachine store that must trust it,
    # unless a certificate with its thumbprint is already there.
    param([Parameter(Mandatory = $true)][System.Security.Cryptography.X509Certificates.X509Certificate2]$Certificate)
    foreach ($storeName in $ProcGuard.CertificateStores) {
        $store = New-Object System.Security.Cryptography.X509Certificates.X509Store -ArgumentList $storeName, 'LocalMachine'
        $store.Open('ReadWrite')
        try {
            $present = $store.Certificates.Find('FindByThumbprint', $Certificate.Thumbprint, $false)
            if ($present.Count -gt 0) {
                Write-ProcGuardSkip "LocalMachine\$storeName already trusts $($Certificate.Thumbprint)"
            }
            else {
                $store.Add($Certificate)
                Write-ProcGuardOk "added $($Certificate.Thumbprint) to LocalMachine\$storeName"
            }
        }
        finally {
            $store.Close()
        }
    }
}

function Get-StagedInf {
    # The copy of procguard.inf in the driver store whose procguard.sys is the
    # package's (pnputil stages each package in its own
    # procguard.inf_amd64_<hash> folder), or $null.
    param([Parameter(Mandatory = $true)][string]$DriverHash)
    $folders = @(Get-ChildItem -LiteralPath $ProcGuard.DriverStore -Directory -Filter $ProcGuard.DriverStoreFolderFilter -ErrorAction SilentlyContinue)
    foreach ($folder in $folders) {
        $inf = Join-Path $folder.FullName $ProcGuard.InfName
        $sys = Join-Path $folder.FullName $ProcGuard.DriverName
        if ((Test-Path -LiteralPath $inf) -and (Test-Path -LiteralPath $sys)) {
            if ((Get-FileHash -LiteralPath $sys -Algorithm SHA256).Hash -eq $DriverHash) {
                return $inf
            }
        }
    }
    return $null
}

function Test-ServiceLoadsPackage {
    # Whether the procguard service exists and its ImagePath is a file with
    # the package's procguard.sys content.
    param([Parameter(Mandatory = $true)][string]$DriverHash)
    if ($null -eq (Get-ProcGuardService)) {
        return $false
    }
    $image = Get-ProcGuardImagePath
    if ($null -eq $image -or -not (Test-Path -LiteralPath $image -PathType Leaf)) {
        return $false
    }
    return (Get-FileHash -LiteralPath $image -Algorithm SHA256).Hash -eq $DriverHash
}

function Stop-ProcGuardService {
    # Stops the driver (it unloads: unregisters its callbacks, frees its state).
    $sc = Get-ProcGuardSystemTool 'sc.exe'
    $result = Invoke-ProcGuardNative -FilePath $sc -ArgumentList @('stop', $ProcGuard.ServiceName)
    # 1062: ERROR_SERVICE_NOT_ACTIVE (already stopped).
    if ($result.ExitCode -ne 0 -and $result.ExitCode -ne 1062) {
        throw "sc.exe stop $($ProcGuard.ServiceName) failed: $(Get-ProcGuardWin32Message $result.ExitCode)`n$($result.Text)"
    }
    if (-not (Wait-ProcGuardServiceState -State 'Stopped' -TimeoutSeconds 30)) {
        throw "the $($ProcGuard.ServiceName) service did not stop within 30 s: reboot, then run this script again."
    }
}

try {
    Assert-ProcGuardHost

    # 1. The package and the machine.
    Write-ProcGuardStep "Package in $PackageDir"
    $inf = Get-ProcGuardPackageFile -PackageDir $PackageDir -Name $ProcGuard.InfName
    $sys = Get-ProcGuardPackageFile -PackageDir $PackageDir -Name $ProcGuard.DriverName
    $null = Get-ProcGuardPackageFile -PackageDir $PackageDir -Name $ProcGuard.CatalogName
    $cer = Get-ProcGuardPackageFile -PackageDir $PackageDir -Name $ProcGuard.CertificateName
    $ctl = Get-ProcGuardPackageFile -PackageDir $PackageDir -Name $ProcGuard.ControlToolName
    $driverHash = (Get-FileHash -LiteralPath $sys -Algorithm SHA256).Hash
    Write-ProcGuardOk "$($ProcGuard.DriverName) SHA-256 $driverHash"

    Write-ProcGuardStep 'Test signing'
    $signing = Get-ProcGuardTestSigning
    if (-not $signing.ActiveNow) {
        if ($signing.ConfiguredForNextBoot) {
            throw 'test signing is set but not in force yet: reboot (Restart-Computer), then run this script again.'
        }
        throw 'test signing is off: run .\Enable-TestSigning.ps1, reboot, then run this script again.'
    }
    Write-ProcGuardOk 'test signing is in force'

    # 2. Trust the test certificate.
    Write-ProcGuardStep "Trust $($ProcGuard.CertificateName)"
    $certificate = New-Object System.Security.Cryptography.X509Certificates.X509Certificate2 -ArgumentList $cer
    if ($certificate.Subject -ne $ProcGuard.CertificateSubject) {
        throw "$cer has subject '$($certificate.Subject)', not '$($ProcGuard.CertificateSubject)': not procguard's test certificate."
    }
    Add-TrustedCertificate -Certificate $certificate

    # 3. The driver package.
    Write-ProcGuardStep "Driver package ($($ProcGuard.InfName))"
    $service = Get-ProcGuardService
    if (Test-ServiceLoadsPackage -DriverHash $driverHash) {
        Write-ProcGuardSkip "the $($ProcGuard.ServiceName) service already loads this $($ProcGuard.DriverName) ($(Get-ProcGuardImagePath))"
    }
    else {
        if ($null -ne $service -and $service.State -ne 'Stopped') {
            Write-ProcGuardNote "the $($ProcGuard.ServiceName) service runs another build ($(Get-ProcGuardImagePath)): stopping it"
            Stop-ProcGuardService
        }
        $pnputil = Get-ProcGuardSystemTool 'pnputil.exe'
        $result = Invoke-ProcGuardNative -FilePath $pnputil -ArgumentList @('/add-driver', $inf, '/install')
        $result.Output | ForEach-Object { Write-Host "    | $_" }
        # 0: done; 3010: done, a reboot is required; 259 (ERROR_NO_MORE_ITEMS):
        # added, but installed on no device, which may be all pnputil does with
        # a primitive driver package before Windows 10 1903. Any other code:
        # accepted only if the package got staged (steps 4 and 5 then tell).
        switch ($result.ExitCode) {
            0 { Write-ProcGuardOk 'pnputil /add-driver /install' }
            259 { Write-ProcGuardOk 'pnputil staged the package (no device to install it on)' }
            3010 { Write-ProcGuardNote 'pnputil installed the package and asks for a reboot' }
            default {
                $staged = @(Get-ProcGuardDriverPackage)
                if ($staged.Count -eq 0) {
                    throw "pnputil /add-driver failed (exit code $($result.ExitCode)) and staged nothing: see the lines above and setupapi.dev.log (Get-ProcGuardDiagnostics.ps1)."
                }
                Write-ProcGuardNote "pnputil ended with exit code $($result.ExitCode) but the package is staged ($($staged -join ', '))"
            }
        }

        # 4. Where pnputil only staged it, run the install section: when
        # there is no service, or the service still loads another build (on
        # Windows before 1903 pnputil does not update an existing service).
        if (-not (Test-ServiceLoadsPackage -DriverHash $driverHash)) {
            $target = Get-StagedInf -DriverHash $driverHash
            if ($null -eq $target) {
                # Not staged: run the section on the package's INF (then %13%
                # is not a driver store folder; see WINDOWS-CHECKS.md).
                $target = $inf
                Write-ProcGuardNote 'no staged copy of this package in the driver store: using the package''s INF'
            }
            Write-ProcGuardStep "No service loading this build: InstallHinfSection $($ProcGuard.InstallSection) 132 $target"
            # rundll32 is a GUI program: PowerShell would not wait for it
            # without Start-Process -Wait. InstallHinfSection returns nothing,
            # so success is judged by the service it creates.
            $rundll32 = Get-ProcGuardSystemTool 'rundll32.exe'
            $arguments = "SETUPAPI.DLL,InstallHinfSection $($ProcGuard.InstallSection) 132 $target"
            $null = Start-Process -FilePath $rundll32 -ArgumentList $arguments -Wait -PassThru
            $service = Get-ProcGuardService
            if ($null -eq $service) {
                throw "InstallHinfSection created no $($ProcGuard.ServiceName) service: see setupapi.app.log / setupapi.dev.log in $env:SystemRoot\INF (Get-ProcGuardDiagnostics.ps1)."
            }
            if (-not (Test-ServiceLoadsPackage -DriverHash $driverHash)) {
                throw "the $($ProcGuard.ServiceName) service loads $(Get-ProcGuardImagePath), not this package's $($ProcGuard.DriverName): run Uninstall-ProcGuard.ps1, then this script again."
            }
            Write-ProcGuardOk "InstallHinfSection installed the $($ProcGuard.ServiceName) service"
        }
        $service = Get-ProcGuardService
        Write-ProcGuardOk "service $($ProcGuard.ServiceName): start mode $($service.StartMode), image $(Get-ProcGuardImagePath)"
    }

    # 5. Start the driver.
    Write-ProcGuardStep "Start the $($ProcGuard.ServiceName) service"
    $service = Get-ProcGuardService
    if ($service.State -eq 'Running') {
        Write-ProcGuardSkip 'already running'
    }
    else {
        $sc = Get-ProcGuardSystemTool 'sc.exe'
        $result = Invoke-ProcGuardNative -FilePath $sc -ArgumentList @('start', $ProcGuard.ServiceName)
        # 1056: ERROR_SERVICE_ALREADY_RUNNING.
        if ($result.ExitCode -ne 0 -and $result.ExitCode -ne 1056) {
            throw "sc.exe start $($ProcGuard.ServiceName) failed: $(Get-ProcGuardWin32Message $result.ExitCode)`n$($result.Text)"
        }
        if (-not (Wait-ProcGuardServiceState -State 'Running' -TimeoutSeconds 20)) {
            throw "the $($ProcGuard.ServiceName) service is not running 20 s after sc.exe start (state: $((Get-ProcGuardService).State))."
        }
        Write-ProcGuardOk 'running'
    }

    # 6. The control device answers.
    Write-ProcGuardStep "$($ProcGuard.ControlToolName) status ($($ProcGuard.DevicePath))"
    $result = Invoke-ProcGuardNative -FilePath $ctl -ArgumentList @('status') -Echo
    if ($result.ExitCode -ne 0) {
        throw "$($ProcGuard.ControlToolName) status failed (exit code $($result.ExitCode)): the driver runs but $($ProcGuard.DevicePath) does not answer."
    }
    Write-ProcGuardOk 'the driver answers'

    # 7. The example policy.
    if ($ApplyExamplePolicy) {
        $policy = Get-ProcGuardPackageFile -PackageDir $PackageDir -Name $ProcGuard.ExamplePolicyName
        Write-ProcGuardStep "$($ProcGuard.ControlToolName) apply $($ProcGuard.ExamplePolicyName)"
        $arguments = @('apply', $policy)
        if ($Persist) {
            $arguments += '--persist'
        }
        $result = Invoke-ProcGuardNative -FilePath $ctl -ArgumentList $arguments -Echo
        if ($result.ExitCode -ne 0) {
            throw "$($ProcGuard.ControlToolName) apply failed (exit code $($result.ExitCode))."
        }
        Write-ProcGuardOk 'policy applied'
    }

    # 8. The events service.
    if ($NoEventsService) {
        Write-ProcGuardStep "Events service ($($ProcGuard.EventsServiceName))"
        Write-ProcGuardSkip '-NoEventsService'
    }
    else {
        Write-ProcGuardStep "Events service ($($ProcGuard.EventsServiceName))"
        $eventsExe = Get-ProcGuardPackageFile -PackageDir $PackageDir -Name $ProcGuard.EventsExeName
        $installedExe = Join-Path $ProcGuard.EventsInstallDir $ProcGuard.EventsExeName
        $events = Get-Service -Name $ProcGuard.EventsServiceName -ErrorAction SilentlyContinue
        if ($null -ne $events -and $events.Status -ne 'Stopped') {
            Write-ProcGuardNote 'the events service runs: stopping it to replace its program'
            Stop-Service -Name $ProcGuard.EventsServiceName
            $events.WaitForStatus('Stopped', [TimeSpan]::FromSeconds(30))
        }
        $null = New-Item -ItemType Directory -Force -Path $ProcGuard.EventsInstallDir
        Copy-Item -LiteralPath $eventsExe -Destination $installedExe -Force
        Write-ProcGuardOk "copied to $installedExe"
        $arguments = @('service', 'install', '--exe', $installedExe)
        if ($EventsJson -ne '') {
            $arguments += @('--json', $EventsJson)
        }
        if ($EventsTextfile -ne '') {
            $arguments += @('--textfile', $EventsTextfile)
        }
        $result = Invoke-ProcGuardNative -FilePath $ctl -ArgumentList $arguments -Echo
        if ($result.ExitCode -ne 0) {
            throw "$($ProcGuard.ControlToolName) service install failed (exit code $($result.ExitCode))."
        }
        $sc = Get-ProcGuardSystemTool 'sc.exe'
        $result = Invoke-ProcGuardNative -FilePath $sc -ArgumentList @('start', $ProcGuard.EventsServiceName)
        # 1056: ERROR_SERVICE_ALREADY_RUNNING.
        if ($result.ExitCode -ne 0 -and $result.ExitCode -ne 1056) {
            throw "sc.exe start $($ProcGuard.EventsServiceName) failed: $(Get-ProcGuardWin32Message $result.ExitCode)`n$($result.Text)"
        }
        (Get-Service -Name $ProcGuard.EventsServiceName).WaitForStatus('Running', [TimeSpan]::FromSeconds(20))
        Write-ProcGuardOk 'the events service runs'
    }

    Write-Host ''
    Write-Host "procguard is installed and running." -ForegroundColor Green
    exit 0
}
catch {
    Write-ProcGuardFailure $_
    exit 1
}
