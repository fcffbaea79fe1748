//! `procguard-smoke`: proves on a test-signed Windows VM, with the driver
//! installed, that procguard strips what a policy says, keeps the rest,
//! exempts who the policy exempts and audits every strip.
//!
//! Run as Administrator, it saves the policy in force (`procguardctl policy
//! show`), starts a copy of itself named [`policy::TARGET_NAME`], applies a
//! policy protecting that name from every requester except
//! [`policy::EXEMPT_NAME`] ([`policy::smoke_policy`]), opens the target once
//! per right of [`rights::RIGHTS`] and reads the access each handle was
//! granted, tries `TerminateProcess`, has the exempt copy do the same opens
//! (`--probe`, [`probe`]), checks the audit records (`procguardctl events
//! --json`, [`events`]), applies a policy with no rules and opens again, then
//! restores the saved policy, stops the target and deletes its temporary
//! directory. It prints a PASS/FAIL table ([`report`]).
//!
//! Every step is a function of a [`Platform`]: Windows in the binary, a fake
//! driver in the tests, so the whole run is tested on any OS.
//!
//! Exit codes: 0 every check passed; 1 a check failed; 2 the run could not
//! start (not elevated, procguardctl.exe missing, driver unreachable: nothing
//! was changed) or the command line is wrong; 3 not Windows.

pub mod events;
pub mod platform;
pub mod policy;
pub mod probe;
pub mod report;
pub mod rights;
pub mod serve;
pub mod smoke;
#[cfg(windows)]
pub mod windows;

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

pub use platform::{CtlOutput, Platform, Target, TerminateAttempt};
pub use report::{EXIT_CANNOT_START, EXIT_FAIL, EXIT_NOT_WINDOWS, EXIT_PASS};
pub use smoke::{run_smoke, RunOptions};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "procguard-smoke",
    version,
    about = "Smoke-test procguard on a Windows VM: protect a copy of this program, open it, \
             check what was stripped and audited, restore the policy",
    after_help = "Run as Administrator, with procguard.sys loaded. Exit codes: 0 every check \
                  passed, 1 a check failed, 2 the run could not start (nothing changed) or bad \
                  command line, 3 not Windows."
)]
pub struct Cli {
    /// procguardctl.exe to use [default: procguardctl.exe beside procguard-smoke.exe]
    #[arg(long, value_name = "PATH")]
    pub ctl: Option<PathBuf>,
    /// Keep the temporary directory (copies, policies) after the run.
    #[arg(long)]
    pub keep_temp: bool,
    /// Internal: be the target (print `ready PID TID`, wait for stdin to close).
    #[arg(long, hide = true, conflicts_with_all = ["ctl", "keep_temp", "probe"])]
    pub serve: bool,
    /// Internal: seconds the target waits at most.
    #[arg(long, hide = true, default_value_t = serve::DEFAULT_SERVE_SECONDS)]
    pub serve_timeout: u64,
    /// Internal: be the exempt requester (open PID and its thread TID, print a report).
    #[arg(
        long,
        hide = true,
        num_args = 2,
        value_names = ["PID", "TID"],
        conflicts_with_all = ["ctl", "keep_temp"]
    )]
    pub probe: Option<Vec<u32>>,
}

/// Runs one command line; returns the exit code. `platform` is `None` off
/// Windows: then every run ends with [`EXIT_NOT_WINDOWS`] (after `--help`
/// and argument checks).
pub fn run<I, T>(
    args: I,
    out: &mut dyn Write,
    err: &mut dyn Write,
    platform: Option<&mut dyn Platform>,
) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let text = error.render().to_string();
            return if error.use_stderr() {
                let _ = err.write_all(text.as_bytes());
                EXIT_CANNOT_START
            } else {
                let _ = out.write_all(text.as_bytes());
                EXIT_PASS
            };
        }
    };
    let Some(platform) = platform else {
        let _ = writeln!(
            err,
            "procguard-smoke: runs only on Windows: it drives the procguard driver and opens real \
             process handles (build it with crates/procguardctl/build-windows.sh)"
        );
        return EXIT_NOT_WINDOWS;
    };
    if cli.serve {
        let stdin = platform.stdin();
        let (pid, tid) = (platform.current_pid(), platform.current_thread_id());
        let timeout = Duration::from_secs(cli.serve_timeout);
        return match serve::serve(stdin, out, pid, tid, timeout) {
            Ok(_) => EXIT_PASS,
            Err(e) => {
                let _ = writeln!(err, "procguard-smoke --serve: {e}");
                EXIT_FAIL
            }
        };
    }
    if let Some(ids) = &cli.probe {
        let target = Target {
            pid: ids.first().copied().unwrap_or_default(),
            tid: ids.get(1).copied().unwrap_or_default(),
        };
        let observations = probe::observe(|object, access| platform.open(object, &target, access));
        let report = probe::render_probe(platform.current_pid(), &observations);
        return match out.write_all(report.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => EXIT_PASS,
            Err(e) => {
                let _ = writeln!(err, "procguard-smoke --probe: {e}");
                EXIT_FAIL
            }
        };
    }
    let options = RunOptions {
        ctl: cli.ctl,
        keep_temp: cli.keep_temp,
        temp_root: std::env::temp_dir(),
    };
    run_smoke(platform, &options, out, err)
}
