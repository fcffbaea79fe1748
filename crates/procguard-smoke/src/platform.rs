//! What a smoke run needs from the machine, as a trait: the Windows
//! implementation (`windows.rs`) opens real handles and runs the real
//! procguardctl.exe; the tests run the same steps against procguardctl's
//! fake driver.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};

use procguard_policy::ObjectKind;

use crate::probe::Outcome;

/// The running target copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Its PID.
    pub pid: u32,
    /// Its main thread (the one that printed the ready line).
    pub tid: u32,
}

/// What a procguardctl run gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtlOutput {
    /// Its exit code (`None`: killed, no code).
    pub code: Option<i32>,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

impl CtlOutput {
    /// Exit code 0.
    #[must_use]
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// `exit N: first line of stderr`, for a failure.
    #[must_use]
    pub fn summary(&self) -> String {
        let code = self
            .code
            .map_or_else(|| "no exit code".to_owned(), |c| format!("exit {c}"));
        match self.stderr.lines().map(str::trim).find(|l| !l.is_empty()) {
            Some(line) => format!("{code}: {line}"),
            None => code,
        }
    }
}

/// The `TerminateProcess` attempt on a `PROCESS_ALL_ACCESS` handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminateAttempt {
    /// The open: the access granted, or why there is no handle.
    pub open: Outcome,
    /// `TerminateProcess`'s result (`Err`: its Win32 error); `None` when
    /// there was no handle to try it on.
    pub terminate: Option<Result<(), u32>>,
}

/// The machine a smoke run drives.
pub trait Platform {
    /// Whether this process runs elevated (as Administrator).
    ///
    /// # Errors
    /// The token could not be read.
    fn is_elevated(&mut self) -> Result<bool, String>;

    /// The running executable (copied to make the target and the exempt
    /// requester).
    ///
    /// # Errors
    /// Its path is unknown.
    fn current_exe(&mut self) -> Result<PathBuf, String>;

    /// This process's PID.
    fn current_pid(&self) -> u32;

    /// The calling thread's id.
    fn current_thread_id(&self) -> u32;

    /// This process's stdin (what the serve mode waits on).
    fn stdin(&mut self) -> Box<dyn Read + Send>;

    /// Runs `ctl` with `args` and waits for it.
    ///
    /// # Errors
    /// It could not be started.
    fn procguardctl(&mut self, ctl: &Path, args: &[OsString]) -> Result<CtlOutput, String>;

    /// Starts `exe --serve` and reads its ready line.
    ///
    /// # Errors
    /// It did not start or did not say it was ready.
    fn start_target(&mut self, exe: &Path) -> Result<Target, String>;

    /// Opens `target` (its process, or its main thread) with `access` as this
    /// process and reads back the access granted.
    fn open(&mut self, object: ObjectKind, target: &Target, access: u32) -> Outcome;

    /// Opens `target` with `PROCESS_ALL_ACCESS` and calls `TerminateProcess`
    /// on that handle.
    fn try_terminate(&mut self, target: &Target) -> TerminateAttempt;

    /// Whether the target is still running (waits briefly for a dying one).
    fn target_alive(&mut self, target: &Target) -> bool;

    /// Runs `exe --probe PID TID` and returns its stdout.
    ///
    /// # Errors
    /// It could not be run, or failed (its exit code and stderr).
    fn run_probe(&mut self, exe: &Path, target: &Target) -> Result<String, String>;

    /// Stops the target: closes its stdin, waits, kills it if it lingers.
    ///
    /// # Errors
    /// It could not be stopped.
    fn stop_target(&mut self, target: &Target) -> Result<(), String>;
}
