#Requires -Version 5.1
#Requires -RunAsAdministrator
<#
.SYNOPSIS
    Collects what is needed to tell why procguard did not install, load or
    pass its smoke test, into one folder.

.DESCRIPTION
    Writes these files into -OutputDir (created if needed), each collector on
    its own, so one that fails does not stop the others (its file then says
    why):
      summary.txt              Windows build, PowerShell, test signing (this
                               boot and next boot), Secure Boot, memory
                               integrity (HVCI), the package's file hashes
      service.txt              sc.exe query procguard, sc.exe qc procguard, the
                               service's registry key and Parameters
      procguardctl.txt         procguardctl.exe status, procguardctl.exe policy show
      driver-packages.txt      the procguard blocks of pnputil /enum-drivers
      certificates.txt         procguard test certificates in LocalMachine Root
                               and TrustedPublisher
      setupapi.dev.log.txt     the last sections of
                               %SystemRoot%\INF\setupapi.dev.log that mention
                               procguard (what pnputil and InstallHinfSection did)
      events-scm.txt           System event log entries of the Service Control
                               Manager about procguard (7000, 7026, 7045, ...)
      events-codeintegrity.txt Microsoft-Windows-CodeIntegrity/Operational
                               entries about procguard (signature refusals)

    It changes nothing on the machine and reads no audit records (procguardctl
    events would consume them).

.PARAMETER OutputDir
    Where to write. Default: %TEMP%\procguard-diagnostics-<date>-<time>.

.PARAMETER PackageDir
    The package folder (for procguardctl.exe and the file hashes). Default: the
    folder of this script.

.PARAMETER SetupApiSections
    How many of the last setupapi.dev.log sections mentioning procguard to keep.

.PARAMETER MaxEvents
    How many of the newest events of each log to search for procguard.

.EXAMPLE
    .\Get-ProcGuardDiagnostics.ps1
    Writes the files to a new folder in %TEMP% and prints its path.

.EXAMPLE
    .\Get-ProcGuardDiagnostics.ps1 -OutputDir C:\procguard-diag
    Writes them to C:\procguard-diag.

.NOTES
    Exit codes: 0 collected (some collectors may have failed: see the files),
    1 the output folder could not be written.
#>
[CmdletBinding()]
param(
    [string]$OutputDir = '',
    [string]$PackageDir = $PSScriptRoot,
    [int]$SetupApiSections = 5,
    [int]$MaxEvents = 2000
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

. (Join-Path $PSScriptRoot 'ProcGuard.Common.ps1')

function Save-Diagnostic {
    # Runs one collector and writes what it returns (text lines) to a file in
    # the output folder; a collector that fails leaves its error there instead.
    param(
        [Parameter(Mandatory = $true)][string]$Name,
        [Parameter(Mandatory = $true)][scriptblock]$Collector
    )
    $path = Join-Path $OutputDir $Name
    try {
        $lines = @(& $Collector | ForEach-Object { "$_" })
        Write-ProcGuardOk $Name
    }
    catch {
        $lines = @("could not collect ${Name}: $($_.Exception.Message)")
        Write-ProcGuardNote "${Name}: $($_.Exception.Message)"
    }
    Set-Content -LiteralPath $path -Value $lines -Encoding UTF8
}

function Format-Native {
    # A native command and what it printed, for a diagnostics file.
    param(
        [Parameter(Mandatory = $true)][string]$FilePath,
        [string[]]$ArgumentList = @()
    )
    $result = Invoke-ProcGuardNative -FilePath $FilePath -ArgumentList $ArgumentList
    "> $(Split-Path -Leaf $FilePath) $($ArgumentList -join ' ')   (exit code $($result.ExitCode))"
    $result.Output
    ''
}

function Find-ProcGuardEvent {
    # The newest events of a log (optionally of one provider) whose message
    # names procguard, oldest first.
    param(
        [Parameter(Mandatory = $true)][string]$LogName,
        [string]$ProviderName = ''
    )
    $filter = @{ LogName = $LogName }
    if ($ProviderName -ne '') {
        $filter['ProviderName'] = $ProviderName
    }
    try {
        $events = @(Get-WinEvent -FilterHashtable $filter -MaxEvents $MaxEvents)
    }
    catch {
        if ($_.FullyQualifiedErrorId -like 'NoMatchingEventsFound*') {
            return "no events in $LogName"
        }
        throw
    }
    $matching = @($events | Where-Object { $_.Message -match $ProcGuard.ServiceName })
    if ($matching.Count -eq 0) {
        return "no event about $($ProcGuard.ServiceName) among the newest $($events.Count) of $LogName"
    }
    [array]::Reverse($matching)
    foreach ($record in $matching) {
        '{0:yyyy-MM-dd HH:mm:ss}  id {1}  {2}  {3}' -f $record.TimeCreated, $record.Id, $record.LevelDisplayName, $record.ProviderName
        '    ' + ($record.Message -replace "`r?`n", "`n    ")
    }
}

if ($OutputDir -eq '') {
    $OutputDir = New-ProcGuardDiagnosticsPath
}
try {
    New-Item -ItemType Directory -Path $OutputDir -Force | Out-Null
    $OutputDir = (Resolve-Path -LiteralPath $OutputDir).ProviderPath
}
catch {
    Write-ProcGuardFailure $_
    exit 1
}

Write-ProcGuardStep "Collecting procguard diagnostics into $OutputDir"

Save-Diagnostic -Name 'summary.txt' -Collector {
    # GetValue gives $null for a value this Windows does not have (no
    # DisplayVersion before 20H2), where a property would fail in strict mode.
    $version = Get-Item -LiteralPath 'HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion'
    $release = $version.GetValue('DisplayVersion')
    if ($null -eq $release) {
        $release = $version.GetValue('ReleaseId')
    }
    "collected         $(Get-Date -Format 'yyyy-MM-dd HH:mm:ss zzz') on $env:COMPUTERNAME"
    "windows           $($version.GetValue('ProductName')) $release, build $($version.GetValue('CurrentBuild')).$($version.GetValue('UBR'))"
    "powershell        $($PSVersionTable.PSVersion), 64-bit process: $([Environment]::Is64BitProcess)"
    try {
        $signing = Get-ProcGuardTestSigning
        "test signing      in force now: $($signing.ActiveNow); set for next boot: $($signing.ConfiguredForNextBoot)"
        "start options     $($signing.StartOptions)"
    }
    catch {
        "test signing      unknown: $($_.Exception.Message)"
    }
    "secure boot       $(Get-ProcGuardSecureBoot)"
    try {
        $guard = Get-CimInstance -Namespace 'root\Microsoft\Windows\DeviceGuard' -ClassName 'Win32_DeviceGuard'
        # 2 in SecurityServicesRunning: hypervisor-protected code integrity.
        "memory integrity  HVCI running: $(@($guard.SecurityServicesRunning) -contains 2)"
    }
    catch {
        "memory integrity  unknown: $($_.Exception.Message)"
    }
    $service = Get-ProcGuardService
    if ($null -eq $service) {
        "service           $($ProcGuard.ServiceName): not installed"
    }
    else {
        "service           $($ProcGuard.ServiceName): $($service.State), start mode $($service.StartMode), image $(Get-ProcGuardImagePath)"
    }
    "package           $PackageDir"
    foreach ($name in @($ProcGuard.DriverName, $ProcGuard.InfName, $ProcGuard.CatalogName, $ProcGuard.CertificateName, $ProcGuard.ControlToolName, $ProcGuard.SmokeTestName)) {
        $file = Join-Path $PackageDir $name
        if (Test-Path -LiteralPath $file -PathType Leaf) {
            "  {0,-22}{1}" -f $name, (Get-FileHash -LiteralPath $file -Algorithm SHA256).Hash
        }
        else {
            "  {0,-22}missing" -f $name
        }
    }
}

Save-Diagnostic -Name 'service.txt' -Collector {
    $sc = Get-ProcGuardSystemTool 'sc.exe'
    Format-Native -FilePath $sc -ArgumentList @('query', $ProcGuard.ServiceName)
    Format-Native -FilePath $sc -ArgumentList @('qc', $ProcGuard.ServiceName)
    foreach ($key in @($ProcGuard.ServiceKey, (Join-Path $ProcGuard.ServiceKey 'Parameters'))) {
        "[$key]"
        $item = Get-Item -LiteralPath $key -ErrorAction SilentlyContinue
        if ($null -eq $item) {
            '  (absent)'
            continue
        }
        foreach ($valueName in $item.GetValueNames()) {
            $value = $item.GetValue($valueName, $null, 'DoNotExpandEnvironmentNames')
            if ($value -is [byte[]]) {
                $value = "REG_BINARY, $($value.Length) bytes"
            }
            "  {0} = {1}" -f $valueName, ($value -join ' ')
        }
    }
}

Save-Diagnostic -Name 'procguardctl.txt' -Collector {
    $ctl = Get-ProcGuardPackageFile -PackageDir $PackageDir -Name $ProcGuard.ControlToolName
    Format-Native -FilePath $ctl -ArgumentList @('status')
    Format-Native -FilePath $ctl -ArgumentList @('policy', 'show')
}

Save-Diagnostic -Name 'driver-packages.txt' -Collector {
    $packages = @(Get-ProcGuardDriverPackageInfo)
    if ($packages.Count -eq 0) {
        "no $($ProcGuard.InfName) package in the driver store (pnputil /enum-drivers)"
    }
    foreach ($package in $packages) {
        $package.Lines
        ''
    }
    Get-ChildItem -LiteralPath $ProcGuard.DriverStore -Directory -Filter $ProcGuard.DriverStoreFolderFilter -ErrorAction SilentlyContinue |
        ForEach-Object { "driver store folder: $($_.FullName)" }
}

Save-Diagnostic -Name 'certificates.txt' -Collector {
    $trusted = @(Get-ProcGuardTrustedCertificate)
    if ($trusted.Count -eq 0) {
        "no certificate with subject '$($ProcGuard.CertificateSubject)' in LocalMachine Root or TrustedPublisher"
    }
    foreach ($entry in $trusted) {
        '{0,-18}{1}  {2}  valid until {3:yyyy-MM-dd}' -f "LocalMachine\$($entry.Store)", $entry.Thumbprint, $entry.Subject, $entry.NotAfter
    }
    $cer = Join-Path $PackageDir $ProcGuard.CertificateName
    if (Test-Path -LiteralPath $cer -PathType Leaf) {
        $certificate = New-Object System.Security.Cryptography.X509Certificates.X509Certificate2 -ArgumentList $cer
        "package $($ProcGuard.CertificateName): $($certificate.Thumbprint)  $($certificate.Subject)"
    }
}

Save-Diagnostic -Name 'setupapi.dev.log.txt' -Collector {
    # The log is a list of sections, each opening with a line ">>>  [title]".
    $log = $ProcGuard.SetupApiLog
    if (-not (Test-Path -LiteralPath $log -PathType Leaf)) {
        return "$log does not exist"
    }
    $sections = New-Object System.Collections.Generic.List[object]
    $current = New-Object System.Collections.Generic.List[string]
    foreach ($line in (Get-Content -LiteralPath $log -ReadCount 0)) {
        if ($line -match '^>>>\s+\[' -and $current.Count -gt 0) {
            $sections.Add($current.ToArray())
            $current.Clear()
        }
        $current.Add($line)
    }
    if ($current.Count -gt 0) {
        $sections.Add($current.ToArray())
    }
    $matching = @($sections | Where-Object { ($_ -join "`n") -match $ProcGuard.ServiceName })
    if ($matching.Count -eq 0) {
        return "no section of $log mentions $($ProcGuard.ServiceName)"
    }
    "the last $([Math]::Min($SetupApiSections, $matching.Count)) of $($matching.Count) sections of $log that mention $($ProcGuard.ServiceName):"
    ''
    foreach ($section in ($matching | Select-Object -Last $SetupApiSections)) {
        $section
        ''
    }
}

Save-Diagnostic -Name 'events-scm.txt' -Collector {
    Find-ProcGuardEvent -LogName 'System' -ProviderName 'Service Control Manager'
}

Save-Diagnostic -Name 'events-codeintegrity.txt' -Collector {
    Find-ProcGuardEvent -LogName 'Microsoft-Windows-CodeIntegrity/Operational'
}

Write-Host ''
Write-Host "Diagnostics: $OutputDir" -ForegroundColor Yellow
exit 0
