//! The Windows [`Platform`]: real handles (`OpenProcess` / `OpenThread`,
//! their granted access read back with `NtQueryObject`), the token's
//! elevation, and child processes through `std::process`. The only unsafe
//! code of the crate.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::ptr;
use std::time::Duration;

use procguard_policy::ObjectKind;
use windows_sys::Wdk::Foundation::{NtQueryObject, ObjectBasicInformation};
use windows_sys::Win32::Foundation::{CloseHandle, GetLastError, HANDLE};
use windows_sys::Win32::Security::{
    GetTokenInformation, TokenElevation, TOKEN_ELEVATION, TOKEN_QUERY,
};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, GetCurrentThreadId, OpenProcess, OpenProcessToken, OpenThread,
    TerminateProcess,
};
use windows_sys::Win32::System::WindowsProgramming::PUBLIC_OBJECT_BASIC_INFORMATION;

use crate::platform::{CtlOutput, Platform, Target, TerminateAttempt};
use crate::probe::Outcome;
use crate::rights::PROCESS_ALL_ACCESS;
use crate::serve::parse_ready;

/// The exit code the `TerminateProcess` check would give the target.
const KILLED_BY_SMOKE: u32 = 0x5AFE;

const BASIC_INFORMATION_SIZE: u32 = {
    let size = size_of::<PUBLIC_OBJECT_BASIC_INFORMATION>();
    assert!(size == 56);
    size as u32
};

const ELEVATION_SIZE: u32 = {
    let size = size_of::<TOKEN_ELEVATION>();
    assert!(size == 4);
    size as u32
};

/// A handle this process owns, closed on drop.
struct Handle(HANDLE);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle was returned non-null by an Open* call and is
        // closed only here.
        unsafe { CloseHandle(self.0) };
    }
}

fn last_error() -> u32 {
    // SAFETY: reads the calling thread's last error; no preconditions.
    unsafe { GetLastError() }
}

fn checked(handle: HANDLE) -> Result<Handle, u32> {
    if handle.is_null() {
        Err(last_error())
    } else {
        Ok(Handle(handle))
    }
}

fn open_process(access: u32, pid: u32) -> Result<Handle, u32> {
    // SAFETY: no pointer arguments; a null result is turned into the error.
    checked(unsafe { OpenProcess(access, 0, pid) })
}

fn open_thread(access: u32, tid: u32) -> Result<Handle, u32> {
    // SAFETY: no pointer arguments; a null result is turned into the error.
    checked(unsafe { OpenThread(access, 0, tid) })
}

/// The access the handle was granted (`ObjectBasicInformation`), or the
/// NTSTATUS of the failed query.
fn granted_access(handle: &Handle) -> Result<u32, u32> {
    let mut info = PUBLIC_OBJECT_BASIC_INFORMATION::default();
    let mut returned = 0u32;
    // SAFETY: the handle is open; `info` is writable for
    // BASIC_INFORMATION_SIZE bytes, the length passed (checked at compile
    // time); `returned` is writable.
    let status = unsafe {
        NtQueryObject(
            handle.0,
            ObjectBasicInformation,
            (&raw mut info).cast(),
            BASIC_INFORMATION_SIZE,
            &raw mut returned,
        )
    };
    if status < 0 {
        Err(status.cast_unsigned())
    } else {
        Ok(info.GrantedAccess)
    }
}

fn outcome(handle: Result<Handle, u32>) -> Outcome {
    match handle {
        Err(code) => Outcome::OpenFailed(code),
        Ok(handle) => match granted_access(&handle) {
            Ok(granted) => Outcome::Granted(granted),
            Err(status) => Outcome::QueryFailed(status),
        },
    }
}

/// The target copy, started by [`WindowsPlatform::start_target`].
struct RunningTarget {
    child: Child,
    /// Closing it tells the target to exit.
    stdin: Option<ChildStdin>,
}

/// The real machine.
#[derive(Default)]
pub struct WindowsPlatform {
    target: Option<RunningTarget>,
}

impl Drop for WindowsPlatform {
    fn drop(&mut self) {
        // Nothing left running, whatever happened.
        if let Some(mut target) = self.target.take() {
            drop(target.stdin.take());
            let _ = target.child.kill();
            let _ = target.child.wait();
        }
    }
}

fn first_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_owned()
}

impl Platform for WindowsPlatform {
    fn is_elevated(&mut self) -> Result<bool, String> {
        // SAFETY: returns the current process's pseudo-handle; no preconditions.
        let process = unsafe { GetCurrentProcess() };
        let mut token: HANDLE = ptr::null_mut();
        // SAFETY: `process` is the pseudo-handle of this process; `token` is
        // writable.
        let ok = unsafe { OpenProcessToken(process, TOKEN_QUERY, &raw mut token) };
        if ok == 0 {
            return Err(format!("OpenProcessToken: error {}", last_error()));
        }
        let token = Handle(token);
        let mut elevation = TOKEN_ELEVATION { TokenIsElevated: 0 };
        let mut returned = 0u32;
        // SAFETY: the token is open with TOKEN_QUERY; `elevation` is writable
        // for ELEVATION_SIZE bytes, the length passed; `returned` is writable.
        let ok = unsafe {
            GetTokenInformation(
                token.0,
                TokenElevation,
                (&raw mut elevation).cast(),
                ELEVATION_SIZE,
                &raw mut returned,
            )
        };
        if ok == 0 {
            return Err(format!("GetTokenInformation: error {}", last_error()));
        }
        Ok(elevation.TokenIsElevated != 0)
    }

    fn current_exe(&mut self) -> Result<PathBuf, String> {
        std::env::current_exe().map_err(|e| format!("the running executable: {e}"))
    }

    fn current_pid(&self) -> u32 {
        std::process::id()
    }

    fn current_thread_id(&self) -> u32 {
        // SAFETY: no preconditions.
        unsafe { GetCurrentThreadId() }
    }

    fn stdin(&mut self) -> Box<dyn Read + Send> {
        Box::new(std::io::stdin())
    }

    fn procguardctl(&mut self, ctl: &Path, args: &[OsString]) -> Result<CtlOutput, String> {
        let output = Command::new(ctl)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        Ok(CtlOutput {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    fn start_target(&mut self, exe: &Path) -> Result<Target, String> {
        let mut child = Command::new(exe)
            .arg("--serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdin = child.stdin.take();
        let ready = child
            .stdout
            .take()
            .ok_or_else(|| "no stdout pipe".to_owned())
            .and_then(|stdout| {
                let mut line = String::new();
                BufReader::new(stdout)
                    .read_line(&mut line)
                    .map_err(|e| format!("reading its ready line: {e}"))?;
                parse_ready(line.trim())
            })
            .and_then(|(pid, tid)| {
                if pid == child.id() {
                    Ok(Target { pid, tid })
                } else {
                    Err(format!("it says it is pid {pid}, but it is {}", child.id()))
                }
            });
        match ready {
            Ok(target) => {
                self.target = Some(RunningTarget { child, stdin });
                Ok(target)
            }
            Err(e) => {
                drop(stdin);
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    fn open(&mut self, object: ObjectKind, target: &Target, access: u32) -> Outcome {
        outcome(match object {
            ObjectKind::Process => open_process(access, target.pid),
            ObjectKind::Thread => open_thread(access, target.tid),
        })
    }

    fn try_terminate(&mut self, target: &Target) -> TerminateAttempt {
        let handle = match open_process(PROCESS_ALL_ACCESS, target.pid) {
            Ok(handle) => handle,
            Err(code) => {
                return TerminateAttempt {
                    open: Outcome::OpenFailed(code),
                    terminate: None,
                }
            }
        };
        let open = match granted_access(&handle) {
            Ok(granted) => Outcome::Granted(granted),
            Err(status) => Outcome::QueryFailed(status),
        };
        // SAFETY: the handle is open; TerminateProcess takes no pointers.
        let ok = unsafe { TerminateProcess(handle.0, KILLED_BY_SMOKE) };
        let terminate = if ok == 0 { Err(last_error()) } else { Ok(()) };
        TerminateAttempt {
            open,
            terminate: Some(terminate),
        }
    }

    fn target_alive(&mut self, _target: &Target) -> bool {
        let Some(running) = &mut self.target else {
            return false;
        };
        // A terminated process may take a moment to be signalled.
        for _ in 0..10 {
            match running.child.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                Ok(Some(_)) | Err(_) => return false,
            }
        }
        true
    }

    fn run_probe(&mut self, exe: &Path, target: &Target) -> Result<String, String> {
        let output = Command::new(exe)
            .arg("--probe")
            .arg(target.pid.to_string())
            .arg(target.tid.to_string())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
        if !output.status.success() {
            return Err(format!(
                "{} --probe: exit {:?}: {}",
                exe.display(),
                output.status.code(),
                first_line(&output.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn stop_target(&mut self, _target: &Target) -> Result<(), String> {
        let Some(mut running) = self.target.take() else {
            return Ok(());
        };
        drop(running.stdin.take());
        for _ in 0..50 {
            match running.child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => return Err(e.to_string()),
            }
        }
        running
            .child
            .kill()
            .map_err(|e| format!("still running 5 s after its stdin closed; kill: {e}"))?;
        running.child.wait().map(drop).map_err(|e| e.to_string())
    }
}
