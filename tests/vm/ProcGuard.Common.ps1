<#
.SYNOPSIS
    Names and helpers shared by the procguard VM scripts. Dot-source it; do
    not run it.

.DESCRIPTION
    Every name the VM scripts depend on is defined once, here, in $ProcGuard:
    the service name (the INF's AddService), the control device (the
    USER_MODE_PATH of crates/procguard-protocol), the package's file names,
    the subject of the test certificate (crates/xtask/src/signing.rs) and the
    INF install section. tests/package/test_vm_scripts.py checks each of them
    against its source on every CI run, so a rename there fails CI here.

    The helpers run native programs without tripping over Windows PowerShell
    5.1's handling of their standard error, read the service and the driver
    store, and print uniform progress messages.

.EXAMPLE
    . (Join-Path $PSScriptRoot 'ProcGuard.Common.ps1')
    $ProcGuard.ServiceName
#>

# The names, in one place.
$ProcGuard = [pscustomobject]@{
    # The service the INF's [DefaultInstall.NTamd64.Services] AddService creates.
    ServiceName        = 'procguard'
    # What user mode opens (the driver's symbolic link \DosDevices\ProcGuard).
    DevicePath         = '\\.\ProcGuard'
    # The package (cargo xtask package -> package/), next to these scripts.
    InfName            = 'procguard.inf'
    DriverName         = 'procguard.sys'
    CatalogName        = 'procguard.cat'
    CertificateName    = 'procguard.cer'
    ControlToolName    = 'procguardctl.exe'
    SmokeTestName      = 'procguard-smoke.exe'
    # The events service (crates/procguard-events): its program in the
    # package, its service name, and where Install-ProcGuard.ps1 copies it.
    EventsExeName      = 'procguard-events.exe'
    EventsServiceName  = 'procguard-events'
    EventsInstallDir   = Join-Path $env:ProgramFiles 'procguard'
    ExamplePolicyName  = 'protect-agent.toml'
    # The scripts that call one another.
    InstallScript      = 'Install-ProcGuard.ps1'
    DiagnosticsScript  = 'Get-ProcGuardDiagnostics.ps1'
    # Subject of the self-signed test certificate that signs the package.
    CertificateSubject = 'CN=procguard Test Signing'
    # LocalMachine stores that must trust it: Root (the chain) and
    # TrustedPublisher (no "do you trust this publisher" prompt at install).
    CertificateStores  = @('Root', 'TrustedPublisher')
    # The INF's architecture-decorated install section (a primitive driver
    # has no [Manufacturer]; InstallHinfSection runs this section).
    InstallSection     = 'DefaultInstall.NTamd64'
    # Where pnputil stages the package: <this>\procguard.inf_amd64_<hash>\.
    DriverStore        = Join-Path $env:SystemRoot 'System32\DriverStore\FileRepository'
    SetupApiLog        = Join-Path $env:SystemRoot 'INF\setupapi.dev.log'
    # Default folder of Get-ProcGuardDiagnostics.ps1: <TEMP>\<prefix><date>-<time>.
    DiagnosticsPrefix  = 'procguard-diagnostics-'
}
# Derived names (a table entry cannot refer to another).
$ProcGuard | Add-Member -MemberType NoteProperty -Name 'ServiceKey' -Value ('HKLM:\SYSTEM\CurrentControlSet\Services\' + $ProcGuard.ServiceName)
$ProcGuard | Add-Member -MemberType NoteProperty -Name 'DriverStoreFolderFilter' -Value ($ProcGuard.InfName + '_amd64_*')

function New-ProcGuardDiagnosticsPath {
    <#
    .SYNOPSIS
        A new, time-stamped folder path in %TEMP% for diagnostics.
    #>
    return (Join-Path $env:TEMP ($ProcGuard.DiagnosticsPrefix + (Get-Date -Format 'yyyyMMdd-HHmmss')))
}

function Write-ProcGuardStep {
    <#
    .SYNOPSIS
        Prints the start of a step.
    #>
    param([Parameter(Mandatory = $true)][string]$Message)
    Write-Host "==> $Message" -ForegroundColor Cyan
}

function Write-ProcGuardOk {
    <#
    .SYNOPSIS
        Prints what a step did.
    #>
    param([Parameter(Mandatory = $true)][string]$Message)
    Write-Host "    ok: $Message" -ForegroundColor Green
}

function Write-ProcGuardSkip {
    <#
    .SYNOPSIS
        Prints why a step had nothing to do (the scripts are idempotent).
    #>
    param([Parameter(Mandatory = $true)][string]$Message)
    Write-Host "    skipped: $Message" -ForegroundColor DarkGray
}

function Write-ProcGuardNote {
    <#
    .SYNOPSIS
        Prints something the operator should read (not an error).
    #>
    param([Parameter(Mandatory = $true)][string]$Message)
    Write-Host "    note: $Message" -ForegroundColor Yellow
}

function Write-ProcGuardFailure {
    <#
    .SYNOPSIS
        Prints a failure on the error stream of the host, without raising one
        (the scripts exit with a code instead).
    #>
    param([Parameter(Mandatory = $true)]$ErrorRecord)
    $Host.UI.WriteErrorLine("FAILED: $ErrorRecord")
    if ($ErrorRecord -is [System.Management.Automation.ErrorRecord] -and $ErrorRecord.InvocationInfo) {
        $Host.UI.WriteErrorLine("  at $($ErrorRecord.InvocationInfo.PositionMessage)")
    }
}

function Assert-ProcGuardHost {
    <#
    .SYNOPSIS
        Fails unless this is 64-bit PowerShell on 64-bit Windows.
    .DESCRIPTION
        A 32-bit PowerShell on 64-bit Windows sees System32 redirected to
        SysWOW64, which has no pnputil.exe and no bcdedit.exe; the driver is
        amd64 only.
    #>
    if (-not [Environment]::Is64BitOperatingSystem) {
        throw 'procguard is an amd64 driver: this Windows is 32-bit.'
    }
    if (-not [Environment]::Is64BitProcess) {
        throw 'Run these scripts in 64-bit Windows PowerShell (%SystemRoot%\System32\WindowsPowerShell\v1.0\powershell.exe), not the x86 one.'
    }
}

function Get-ProcGuardPackageFile {
    <#
    .SYNOPSIS
        The full path of a package file, or a clear error when it is missing.
    #>
    param(
        [Parameter(Mandatory = $true)][string]$PackageDir,
        [Parameter(Mandatory = $true)][string]$Name
    )
    $path = Join-Path $PackageDir $Name
    if (-not (Test-Path -LiteralPath $path -PathType Leaf)) {
        throw "$Name is not in $PackageDir. Copy the whole package/ folder that 'cargo xtask package' made, or pass -PackageDir."
    }
    return (Resolve-Path -LiteralPath $path).ProviderPath
}

function Invoke-ProcGuardNative {
    <#
    .SYNOPSIS
        Runs a native program; returns its exit code and its output lines
        (standard output and standard error, in order).
    .DESCRIPTION
        Windows PowerShell 5.1 turns each standard-error line of a native
        program into an error record when it is redirected, and with
        $ErrorActionPreference = 'Stop' the first one ends the script. So the
        preference is relaxed to 'Continue' for the call only, and error
        records are turned back into text. -Echo also prints each line as it
        arrives (used to relay procguard-smoke.exe's table live).
    #>
    param(
        [Parameter(Mandatory = $true)][string]$FilePath,
        [string[]]$ArgumentList = @(),
        [switch]$Echo
    )
    if ($null -eq (Get-Command -Name $FilePath -ErrorAction SilentlyContinue)) {
        throw "$FilePath not found."
    }
    $lines = New-Object System.Collections.Generic.List[string]
    $saved = $ErrorActionPreference
    $ErrorActionPreference = 'Continue'
    try {
        & $FilePath @ArgumentList 2>&1 | ForEach-Object {
            $line = if ($_ -is [System.Management.Automation.ErrorRecord]) { $_.Exception.Message } else { "$_" }
            $lines.Add($line)
            if ($Echo) {
                Write-Host $line
            }
        }
        $code = $LASTEXITCODE
    }
    finally {
        $ErrorActionPreference = $saved
    }
    return [pscustomobject]@{
        ExitCode = $code
        Output   = $lines.ToArray()
        Text     = ($lines.ToArray() -join [Environment]::NewLine)
    }
}

function Get-ProcGuardSystemTool {
    <#
    .SYNOPSIS
        The full path of a program in System32 (never one found first on PATH).
    #>
    param([Parameter(Mandatory = $true)][string]$Name)
    return (Join-Path $env:SystemRoot "System32\$Name")
}

function Get-ProcGuardService {
    <#
    .SYNOPSIS
        The procguard kernel-driver service (Win32_SystemDriver), or $null.
    .DESCRIPTION
        Get-Service in Windows PowerShell 5.1 is made for Win32 services;
        Win32_SystemDriver lists kernel drivers, with State ('Running',
        'Stopped', ...), StartMode and PathName, in the same words on every
        display language.
    #>
    $filter = "Name='{0}'" -f $ProcGuard.ServiceName
    return (Get-CimInstance -ClassName Win32_SystemDriver -Filter $filter)
}

function Wait-ProcGuardServiceState {
    <#
    .SYNOPSIS
        Waits until the service is in a state (or gone, for 'Absent'); returns
        whether it got there in time.
    #>
    param(
        [Parameter(Mandatory = $true)][ValidateSet('Running', 'Stopped', 'Absent')][string]$State,
        [int]$TimeoutSeconds = 20
    )
    $deadline = (Get-Date).AddSeconds($TimeoutSeconds)
    while ($true) {
        $service = Get-ProcGuardService
        if ($State -eq 'Absent' -and $null -eq $service) {
            return $true
        }
        if ($null -ne $service -and $service.State -eq $State) {
            return $true
        }
        if ((Get-Date) -gt $deadline) {
            return $false
        }
        Start-Sleep -Milliseconds 500
    }
}

function Get-ProcGuardImagePath {
    <#
    .SYNOPSIS
        The file the service loads (its ImagePath as a Win32 path), or $null.
    .DESCRIPTION
        The INF sets ServiceBinary = %13%\procguard.sys, so after a pnputil
        install this is a folder of the driver store. Kernel image paths may be
        written \SystemRoot\..., System32\... or \??\C:\...; all are mapped to
        C:\... here.
    #>
    $key = Get-Item -LiteralPath $ProcGuard.ServiceKey -ErrorAction SilentlyContinue
    if ($null -eq $key) {
        return $null
    }
    $raw = $key.GetValue('ImagePath')
    if ([string]::IsNullOrEmpty($raw)) {
        return $null
    }
    $path = [string]$raw
    if ($path.StartsWith('\??\')) {
        $path = $path.Substring(4)
    }
    elseif ($path -match '^\\SystemRoot\\') {
        $path = Join-Path $env:SystemRoot $path.Substring('\SystemRoot\'.Length)
    }
    elseif ($path -match '^(System32|SysWOW64)\\') {
        $path = Join-Path $env:SystemRoot $path
    }
    return $path
}

function Get-ProcGuardDriverPackageInfo {
    <#
    .SYNOPSIS
        Every procguard package in the driver store: its published name
        (oemNN.inf) and its lines of pnputil /enum-drivers.
    .DESCRIPTION
        pnputil /enum-drivers prints one block of "Label: value" lines per
        package, blocks separated by blank lines. The labels are translated on
        other display languages, the values are not: a block is procguard's
        when one value is procguard.inf (the original name), and its published
        name is the value of the form oemNN.inf.
    #>
    $pnputil = Get-ProcGuardSystemTool 'pnputil.exe'
    $result = Invoke-ProcGuardNative -FilePath $pnputil -ArgumentList @('/enum-drivers')
    if ($result.ExitCode -ne 0) {
        throw "pnputil /enum-drivers failed (exit code $($result.ExitCode)):`n$($result.Text)"
    }
    $block = @()
    foreach ($line in @($result.Output) + @('')) {
        if ($line.Trim() -ne '') {
            $block += $line
            continue
        }
        $values = @($block | Where-Object { $_.IndexOf(':') -ge 0 } | ForEach-Object { $_.Substring($_.IndexOf(':') + 1).Trim() })
        $isProcGuard = @($values | Where-Object { $_ -ieq $ProcGuard.InfName }).Count -gt 0
        $oem = @($values | Where-Object { $_ -match '^oem\d+\.inf$' })
        if ($isProcGuard -and $oem.Count -gt 0) {
            [pscustomobject]@{
                PublishedName = $oem[0]
                Lines         = $block
            }
        }
        $block = @()
    }
}

function Get-ProcGuardDriverPackage {
    <#
    .SYNOPSIS
        The published names (oemNN.inf) of every procguard package in the
        driver store.
    #>
    Get-ProcGuardDriverPackageInfo | ForEach-Object { $_.PublishedName }
}

function Get-ProcGuardTestSigning {
    <#
    .SYNOPSIS
        Whether test signing is in force now, and whether the boot
        configuration turns it on at the next boot.
    .DESCRIPTION
        In force now: the loader options of this boot (SystemStartOptions)
        contain TESTSIGNING. Next boot: bcdedit /enum {current} shows
        "testsigning Yes". bcdedit prints element names in English on every
        display language, but may translate "Yes"; a value it does not
        recognise counts as off, which only means Enable-TestSigning.ps1 sets
        it again (harmless).
    #>
    $options = (Get-ItemProperty -LiteralPath 'HKLM:\SYSTEM\CurrentControlSet\Control' -Name 'SystemStartOptions').SystemStartOptions
    $activeNow = ([string]$options) -match '\bTESTSIGNING\b'

    $bcdedit = Get-ProcGuardSystemTool 'bcdedit.exe'
    # {current} must be quoted: unquoted braces are a script block in PowerShell.
    $result = Invoke-ProcGuardNative -FilePath $bcdedit -ArgumentList @('/enum', '{current}')
    if ($result.ExitCode -ne 0) {
        throw "bcdedit /enum {current} failed (exit code $($result.ExitCode)):`n$($result.Text)"
    }
    $configured = $false
    foreach ($line in $result.Output) {
        if ($line -match '^\s*testsigning\s+(\S+)') {
            $configured = @('Yes', 'On', 'True', '1') -contains $Matches[1]
        }
    }
    return [pscustomobject]@{
        ActiveNow             = $activeNow
        ConfiguredForNextBoot = $configured
        StartOptions          = [string]$options
    }
}

function Get-ProcGuardSecureBoot {
    <#
    .SYNOPSIS
        'On', 'Off' or 'Unsupported' (a BIOS machine: no Secure Boot).
    .DESCRIPTION
        Secure Boot makes the boot manager ignore (and bcdedit refuse) the
        testsigning option, so a test-signed driver cannot load while it is on.
    #>
    try {
        if (Confirm-SecureBootUEFI) {
            return 'On'
        }
        return 'Off'
    }
    catch [System.PlatformNotSupportedException] {
        return 'Unsupported'
    }
    catch {
        # Confirm-SecureBootUEFI also fails on BIOS firmware with other error
        # types on some builds; the registry says the same thing.
        $state = Get-ItemProperty -LiteralPath 'HKLM:\SYSTEM\CurrentControlSet\Control\SecureBoot\State' -Name 'UEFISecureBootEnabled' -ErrorAction SilentlyContinue
        if ($null -eq $state) {
            return 'Unsupported'
        }
        if ($state.UEFISecureBootEnabled -eq 1) {
            return 'On'
        }
        return 'Off'
    }
}

function Get-ProcGuardTrustedCertificate {
    <#
    .SYNOPSIS
        The procguard test certificates in the LocalMachine stores that must
        trust them: one object per (store, certificate).
    .DESCRIPTION
        Matched by exact subject, and by thumbprint when one is given (the
        certificate of the package at hand). Every build machine makes its own
        key pair, so an older package may have left a certificate with the same
        subject and another thumbprint.
    #>
    param([string[]]$Thumbprint = @())
    $found = @()
    foreach ($storeName in $ProcGuard.CertificateStores) {
        $store = New-Object System.Security.Cryptography.X509Certificates.X509Store -ArgumentList $storeName, 'LocalMachine'
        $store.Open('ReadOnly')
        try {
            foreach ($certificate in $store.Certificates) {
                if ($certificate.Subject -eq $ProcGuard.CertificateSubject -or $Thumbprint -contains $certificate.Thumbprint) {
                    $found += [pscustomobject]@{
                        Store       = $storeName
                        Thumbprint  = $certificate.Thumbprint
                        Subject     = $certificate.Subject
                        NotAfter    = $certificate.NotAfter
                    }
                }
            }
        }
        finally {
            $store.Close()
        }
    }
    return $found
}

function Get-ProcGuardWin32Message {
    <#
    .SYNOPSIS
        The system's text for a Win32 error code, with a hint for the codes a
        driver start typically fails with.
    #>
    param([Parameter(Mandatory = $true)][int]$Code)
    $text = (New-Object System.ComponentModel.Win32Exception -ArgumentList $Code).Message
    # sc.exe start reports a failed DriverEntry as the Win32 code of the
    # NTSTATUS the driver returned (the kernel debug log names the status).
    $hints = @{
        2    = 'the image file is missing: is the package installed (pnputil /enum-drivers)?'
        5    = 'DriverEntry failed with STATUS_ACCESS_DENIED, as ObRegisterCallbacks does for an image without FORCE_INTEGRITY or an accepted signature: read the kernel debug log (README, "Deploy to a test-signed VM")'
        31   = 'DriverEntry failed: read the kernel debug log (README, "Deploy to a test-signed VM")'
        577  = 'the signature is not accepted: test signing off, Secure Boot on, or the certificate not trusted (run Enable-TestSigning.ps1, reboot, run Install-ProcGuard.ps1 again)'
        1058 = 'the service is disabled'
        1060 = 'the service is not installed'
        1072 = 'the service is marked for deletion: reboot, then install again'
        1275 = 'the driver is blocked from loading: Windows Defender Application Control, the vulnerable-driver blocklist or HVCI'
    }
    if ($hints.ContainsKey($Code)) {
        return "$text ($Code; $($hints[$Code]))"
    }
    return "$text ($Code)"
}
