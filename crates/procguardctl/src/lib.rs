//! `procguardctl`, procguard's control tool.
//!
//! Offline, on any OS: `check`, `compile` and `explain` a TOML policy, and
//! `export` it as a `.reg` file or a PowerShell script for fleet tools.
//! `learn` requester exemptions from recorded events ([`learn`]).
//! Against the driver (Windows): `apply`, `status`, `policy show`, `events`,
//! `counters`. The binary is a thin `main` over [`run`], which takes the
//! output streams and the way to open the device, so every command is tested
//! in-process against [`fake_device::FakeDevice`].
//!
//! Exit codes: 0 success; 1 error (invalid policy, unreadable file, the
//! driver refused or is unreachable); 2 `check --deny-warnings` found only
//! warnings; 3 a command that talks to the driver was run on another OS than
//! Windows; 64 a bad command line (one clap cannot parse, or `export --reg`
//! without `-o`).

pub mod access;
pub mod device;
pub mod events;
pub mod export;
pub mod fake_device;
pub mod learn;
pub mod metrics;
mod offline;
mod online;
#[cfg(windows)]
pub mod process_images;
pub mod service;
#[cfg(windows)]
pub mod windows_device;

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use device::{Device, DeviceError, RequestError};

/// Success.
pub const EXIT_OK: u8 = 0;
/// An error.
pub const EXIT_ERROR: u8 = 1;
/// `check --deny-warnings`: no error, but warnings.
pub const EXIT_WARNINGS: u8 = 2;
/// A driver command on another OS than Windows.
pub const EXIT_UNSUPPORTED: u8 = 3;
/// The command line does not parse.
pub const EXIT_USAGE: u8 = 64;

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "procguardctl",
    version,
    about = "Control procguard: check, compile and explain policies; apply them and watch the driver",
    after_help = "Exit codes: 0 ok, 1 error, 2 warnings only (check --deny-warnings), \
                  3 driver command on another OS than Windows, 64 bad command line."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a TOML policy: errors with line and column, lint warnings (any OS).
    Check {
        /// The policy file.
        policy: PathBuf,
        /// Exit with code 2 when there are warnings (and no error).
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Compile a TOML policy into the driver's blob (any OS). Writes nothing
    /// unless the policy is valid.
    Compile {
        /// The policy file.
        policy: PathBuf,
        /// Where to write the blob.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Explain how a policy decides one handle request (any OS).
    Explain(ExplainArgs),
    /// Write a policy as a .reg file or a PowerShell script that sets the
    /// driver's Parameters\Policy value, for GPO, Intune, Configuration
    /// Manager or Ansible to push (any OS). Writes nothing unless the
    /// policy is valid.
    Export(ExportArgs),
    /// Propose the requester exemptions that would have let recorded
    /// requests through, as a reviewed diff of the policy (any OS).
    Learn(learn::LearnArgs),
    /// Compile a policy and make it the driver's policy (Windows).
    Apply {
        /// The policy file.
        policy: PathBuf,
        /// Also store it under the service's Parameters key, in force from boot.
        #[arg(long)]
        persist: bool,
    },
    /// Show the driver's status (Windows).
    Status {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The driver's policy (Windows).
    Policy {
        /// What to do with it.
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Read the audit records the driver queued: every stripped (or, for
    /// audit rules, would-be stripped) request (Windows).
    Events {
        /// Keep waiting for new records (the driver wakes procguardctl when
        /// they arrive) until Ctrl-C.
        #[arg(long)]
        follow: bool,
        /// One JSON object per line, with Sysmon ProcessAccess field names.
        #[arg(long)]
        json: bool,
        /// Stop after this many records (records beyond it stay queued).
        #[arg(long)]
        max: Option<u64>,
        /// Milliseconds between polls with --follow, only against a driver
        /// too old to wake readers (no IOCTL_WAIT_EVENTS).
        #[arg(long, default_value_t = 500, hide = true)]
        interval_ms: u64,
    },
    /// Show the request counters and the hits and strips of every rule (Windows).
    Counters {
        /// Then set every counter to zero.
        #[arg(long)]
        reset: bool,
    },
    /// Print the driver's counters as Prometheus text, the format of
    /// windows_exporter's textfile collector (Windows).
    Metrics,
    /// Install or remove the procguard-events service, which writes the
    /// audit records to the Event Log, a JSON-lines file and a Prometheus
    /// textfile (Windows).
    Service {
        /// What to do.
        #[command(subcommand)]
        command: service::ServiceCommand,
    },
}

/// `policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Read the policy in force and print it as TOML.
    Show,
}

/// Handle kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ObjectArg {
    /// A process handle.
    Process,
    /// A thread handle (judged by the rules of its process).
    Thread,
}

/// Handle operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OperationArg {
    /// `OpenProcess`, `OpenThread`.
    Create,
    /// `DuplicateHandle` (the requester receives the handle).
    Duplicate,
}

/// `explain`'s arguments.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The policy file.
    #[arg(long)]
    pub policy: PathBuf,
    /// The requesting process: its NT image path
    /// (`\Device\HarddiskVolume3\...\tool.exe`) or just its file name.
    #[arg(long)]
    pub requester: String,
    /// The requester's process id.
    #[arg(long, default_value_t = 1000)]
    pub requester_pid: u32,
    /// The process the handle is for: NT image path or file name.
    #[arg(long)]
    pub target: String,
    /// The target's process id (equal to --requester-pid: a process opening itself).
    #[arg(long, default_value_t = 2000)]
    pub target_pid: u32,
    /// Process or thread handle.
    #[arg(long, value_enum, default_value_t = ObjectArg::Process)]
    pub object: ObjectArg,
    /// Create or duplicate.
    #[arg(long, value_enum, default_value_t = OperationArg::Create)]
    pub op: OperationArg,
    /// Rights asked for: names (PROCESS_ALL_ACCESS, PROCESS_TERMINATE, ...),
    /// sets (no-kill, ...) or numbers (0x1), separated by `,` or `|`.
    #[arg(long)]
    pub access: String,
    /// A kernel handle (OBJ_KERNEL_HANDLE).
    #[arg(long)]
    pub kernel_handle: bool,
    /// One JSON object (the decision's fields, masks as numbers) instead of
    /// text: for scripts and the emulator's differential test.
    #[arg(long)]
    pub json: bool,
}

/// `export`'s arguments.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("format").required(true).args(["reg", "powershell"])))]
pub struct ExportArgs {
    /// The policy file.
    pub policy: PathBuf,
    /// A .reg file as regedit writes it (UTF-16LE, CRLF), for `regedit /s`,
    /// `reg import` and tools that deploy .reg files. Needs -o.
    #[arg(long)]
    pub reg: bool,
    /// A Windows PowerShell 5.1 script that writes the value (Set-ItemProperty
    /// -Type Binary) and reads it back, or with -Detect only checks it (exit 0
    /// when the value holds the policy, 1 otherwise).
    #[arg(long)]
    pub powershell: bool,
    /// With --powershell: checking (-Detect) is the script's default, for
    /// Intune and Configuration Manager, which run scripts without arguments.
    #[arg(long, conflicts_with = "reg")]
    pub detect: bool,
    /// Where to write (`-`: standard output). --powershell writes to standard
    /// output without it; --reg needs it (UTF-16 text on a terminal, or
    /// re-encoded by Windows PowerShell's `>`, is no .reg file).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

/// A command's failure: what to print and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Exit code.
    pub code: u8,
    /// Message (without the `error: ` prefix); empty when already printed.
    pub message: String,
}

impl Failure {
    fn error(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_ERROR,
            message: message.into(),
        }
    }
}

impl From<RequestError> for Failure {
    fn from(error: RequestError) -> Self {
        let code = if error.device_error() == Some(&DeviceError::Unsupported) {
            EXIT_UNSUPPORTED
        } else {
            EXIT_ERROR
        };
        Self {
            code,
            message: error.to_string(),
        }
    }
}

impl From<DeviceError> for Failure {
    fn from(error: DeviceError) -> Self {
        Self {
            code: if error == DeviceError::Unsupported {
                EXIT_UNSUPPORTED
            } else {
                EXIT_ERROR
            },
            message: error.to_string(),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        Self::error(format!("writing output: {error}"))
    }
}

/// The streams a command writes to.
pub struct Output<'a> {
    /// Results.
    pub out: &'a mut dyn Write,
    /// Diagnostics.
    pub err: &'a mut dyn Write,
}

/// How to reach the driver: the real device on Windows, a fake in tests.
pub type OpenDevice<'a> = dyn FnMut() -> Result<Box<dyn Device>, DeviceError> + 'a;

/// Opens `\\.\ProcGuard` (Windows); elsewhere [`DeviceError::Unsupported`].
///
/// # Errors
/// Why the device cannot be opened.
pub fn open_driver() -> Result<Box<dyn Device>, DeviceError> {
    #[cfg(windows)]
    {
        Ok(Box::new(windows_device::WindowsDevice::open()?))
    }
    #[cfg(not(windows))]
    {
        Err(DeviceError::Unsupported)
    }
}

/// Runs one command line; returns the exit code.
pub fn run<I, T>(args: I, out: &mut dyn Write, err: &mut dyn Write, open: &mut OpenDevice<'_>) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let code = if error.use_stderr() {
                EXIT_USAGE
            } else {
                EXIT_OK
            };
            let text = error.render().to_string();
            let _ = if error.use_stderr() {
                err.write_all(text.as_bytes())
            } else {
                out.write_all(text.as_bytes())
            };
            return code;
        }
    };
    let mut output = Output { out, err };
    match execute(&cli.command, &mut output, open) {
        Ok(code) => code,
        Err(failure) => {
            if !failure.message.is_empty() {
                let _ = writeln!(output.err, "error: {}", failure.message);
            }
            failure.code
        }
    }
}

/// Runs a parsed command; returns the exit code of a success (0, or 2 for
/// warnings denied).
///
/// # Errors
/// [`Failure`]: what to print, and the exit code.
pub fn execute(
    command: &Command,
    output: &mut Output<'_>,
    open: &mut OpenDevice<'_>,
) -> Result<u8, Failure> {
    match command {
        Command::Check {
            policy,
            deny_warnings,
        } => offline::check(policy, *deny_warnings, output),
        Command::Compile {
            policy,
            output: blob,
        } => offline::compile(policy, blob, output).map(|()| EXIT_OK),
        Command::Explain(args) => offline::explain(args, output).map(|()| EXIT_OK),
        Command::Export(args) => {
            let format = if args.reg {
                export::ExportFormat::Reg
            } else {
                export::ExportFormat::PowerShell {
                    detect: args.detect,
                }
            };
            export::export(&args.policy, format, args.output.as_ref(), output).map(|()| EXIT_OK)
        }
        Command::Learn(args) => learn::run(args, output),
        Command::Apply { policy, persist } => {
            let compiled = offline::load(policy, output)?;
            let mut device = open()?;
            online::apply(device.as_mut(), &compiled, *persist, output).map(|()| EXIT_OK)
        }
        Command::Status { json } => {
            let mut device = open()?;
            online::status(device.as_mut(), *json, output).map(|()| EXIT_OK)
        }
        Command::Policy {
            command: PolicyCommand::Show,
        } => {
            let mut device = open()?;
            online::policy_show(device.as_mut(), output).map(|()| EXIT_OK)
        }
        Command::Events {
            follow,
            json,
            max,
            interval_ms,
        } => {
            let mut device = open()?;
            let options = online::EventOptions {
                follow: *follow,
                json: *json,
                max: *max,
                interval: std::time::Duration::from_millis(*interval_ms),
            };
            online::events(device.as_mut(), &options, output).map(|()| EXIT_OK)
        }
        Command::Counters { reset } => {
            let mut device = open()?;
            online::counters(device.as_mut(), *reset, output).map(|()| EXIT_OK)
        }
        Command::Metrics => {
            let mut device = open()?;
            let snapshot = metrics::snapshot(device.as_mut())?;
            output
                .out
                .write_all(metrics::render(&snapshot).as_bytes())?;
            Ok(EXIT_OK)
        }
        Command::Service { command } => service::run(command, output).map(|()| EXIT_OK),
    }
}

pub use offline::CompiledFile;
pub use online::{apply, counters, events, policy_show, status, EventOptions};
