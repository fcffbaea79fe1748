//! `procguardctl service install|uninstall`: the `procguard-events` service
//! (crates/procguard-events) and its Event Log source.
//!
//! Install creates (or reconfigures) the auto-start service
//! `procguard-events`, running as LocalSystem `"EXE" run [options]`,
//! restarted by the service control manager after a failure (5 s, 3 times,
//! the count reset after a day), and registers the event source:
//! `HKLM\SYSTEM\CurrentControlSet\Services\EventLog\Application\procguard`
//! with `EventMessageFile` = the exe (its message table) and
//! `TypesSupported` = 7. It does not start the service. Uninstall stops
//! and deletes the service and removes the source's key. Both are
//! idempotent. Windows only (the service manager and the registry); the
//! command line is the same everywhere.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::{Failure, Output};

/// The service's name.
pub const SERVICE_NAME: &str = "procguard-events";
/// The service's display name.
pub const DISPLAY_NAME: &str = "procguard events";
/// The event source's key under HKLM.
pub const EVENT_SOURCE_KEY: &str =
    "SYSTEM\\CurrentControlSet\\Services\\EventLog\\Application\\procguard";
/// The program, looked for next to procguardctl.exe unless `--exe` says.
pub const EXE_NAME: &str = "procguard-events.exe";

/// `service` subcommands.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Install (or reconfigure) the procguard-events service, auto start,
    /// and register the `procguard` event source (Windows).
    Install(InstallArgs),
    /// Stop and delete the procguard-events service and remove the event
    /// source (Windows).
    Uninstall,
}

/// `service install`'s options: what the service writes.
#[derive(Debug, Clone, Args)]
pub struct InstallArgs {
    /// Also write each record as one JSON line to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Rotate the JSON file when the next line would make it larger.
    #[arg(long, value_name = "BYTES")]
    pub json_max_bytes: Option<u64>,
    /// Rotated JSON files kept.
    #[arg(long, value_name = "N")]
    pub json_keep: Option<u32>,
    /// Keep a Prometheus text-format file here (windows_exporter's
    /// textfile collector folder, a `.prom` name).
    #[arg(long, value_name = "PATH")]
    pub textfile: Option<PathBuf>,
    /// Rewrite the textfile at least this often (seconds).
    #[arg(long, value_name = "SECONDS")]
    pub textfile_interval: Option<u64>,
    /// The service's program (default: procguard-events.exe next to
    /// procguardctl.exe).
    #[arg(long, value_name = "PATH")]
    pub exe: Option<PathBuf>,
    /// Diagnostics: the service reads this file of raw 64-byte audit
    /// records instead of the driver.
    #[arg(long, value_name = "FILE", hide = true)]
    pub replay: Option<PathBuf>,
}

/// An absolute path (relative ones against the current folder), as the
/// service, started elsewhere, needs.
fn absolute(path: &std::path::Path) -> Result<PathBuf, Failure> {
    std::path::absolute(path).map_err(|e| Failure::error(format!("{}: {e}", path.display())))
}

impl InstallArgs {
    /// The service's arguments after its program: `run` and the options.
    ///
    /// # Errors
    /// A path cannot be made absolute.
    pub fn service_arguments(&self) -> Result<Vec<String>, Failure> {
        let mut args = vec!["run".to_owned()];
        let mut path = |name: &str, value: &Option<PathBuf>| -> Result<(), Failure> {
            if let Some(value) = value {
                args.push(name.to_owned());
                args.push(absolute(value)?.display().to_string());
            }
            Ok(())
        };
        path("--json", &self.json)?;
        path("--textfile", &self.textfile)?;
        path("--replay", &self.replay)?;
        for (name, value) in [
            ("--json-max-bytes", self.json_max_bytes),
            ("--json-keep", self.json_keep.map(u64::from)),
            ("--textfile-interval", self.textfile_interval),
        ] {
            if let Some(value) = value {
                args.push(name.to_owned());
                args.push(value.to_string());
            }
        }
        Ok(args)
    }

    /// The program: `--exe`, or procguard-events.exe next to this one.
    ///
    /// # Errors
    /// It does not exist.
    pub fn program(&self) -> Result<PathBuf, Failure> {
        let exe = match &self.exe {
            Some(exe) => absolute(exe)?,
            None => std::env::current_exe()
                .map_err(|e| Failure::error(format!("locating procguardctl.exe: {e}")))?
                .with_file_name(EXE_NAME),
        };
        if !exe.is_file() {
            return Err(Failure::error(format!(
                "{} does not exist (it ships next to procguardctl.exe in the package; or say --exe PATH)",
                exe.display()
            )));
        }
        Ok(exe)
    }
}

/// Runs a `service` subcommand.
///
/// # Errors
/// [`Failure`]; on other systems than Windows, exit code 3.
pub fn run(command: &ServiceCommand, output: &mut Output<'_>) -> Result<(), Failure> {
    #[cfg(windows)]
    {
        match command {
            ServiceCommand::Install(args) => windows::install(args, output),
            ServiceCommand::Uninstall => windows::uninstall(output),
        }
    }
    #[cfg(not(windows))]
    {
        let _ = (command, output);
        Err(Failure {
            code: crate::EXIT_UNSUPPORTED,
            message:
                "installing the events service needs Windows' service control manager: Windows only"
                    .to_owned(),
        })
    }
}

#[cfg(windows)]
mod windows {
    use std::ffi::OsString;
    use std::path::Path;
    use std::ptr;
    use std::time::{Duration, Instant};

    use windows_service::service::{
        ServiceAccess, ServiceAction, ServiceActionType, ServiceErrorControl,
        ServiceFailureActions, ServiceFailureResetPeriod, ServiceInfo, ServiceStartType,
        ServiceState, ServiceType,
    };
    use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
    use windows_sys::Win32::Foundation::{ERROR_FILE_NOT_FOUND, ERROR_SUCCESS};
    use windows_sys::Win32::System::Registry::{
        RegCloseKey, RegCreateKeyExW, RegDeleteTreeW, RegSetValueExW, HKEY, HKEY_LOCAL_MACHINE,
        KEY_SET_VALUE, REG_DWORD, REG_EXPAND_SZ, REG_OPTION_NON_VOLATILE,
    };

    use super::{InstallArgs, DISPLAY_NAME, EVENT_SOURCE_KEY, SERVICE_NAME};
    use crate::{Failure, Output};

    /// `ERROR_SERVICE_DOES_NOT_EXIST`.
    const SERVICE_DOES_NOT_EXIST: i32 = 1060;

    fn wide(text: &str) -> Vec<u16> {
        text.encode_utf16().chain(Some(0)).collect()
    }

    fn failed(what: &str, error: impl std::fmt::Display) -> Failure {
        Failure::error(format!("{what}: {error}"))
    }

    fn manager(access: ServiceManagerAccess) -> Result<ServiceManager, Failure> {
        ServiceManager::local_computer(None::<&str>, access).map_err(|e| {
            failed(
                "opening the service control manager (run as Administrator)",
                e,
            )
        })
    }

    fn not_found(error: &windows_service::Error) -> bool {
        matches!(error, windows_service::Error::Winapi(e) if e.raw_os_error() == Some(SERVICE_DOES_NOT_EXIST))
    }

    pub(super) fn install(args: &InstallArgs, output: &mut Output<'_>) -> Result<(), Failure> {
        let exe = args.program()?;
        let arguments = args.service_arguments()?;
        let info = ServiceInfo {
            name: OsString::from(SERVICE_NAME),
            display_name: OsString::from(DISPLAY_NAME),
            service_type: ServiceType::OWN_PROCESS,
            start_type: ServiceStartType::AutoStart,
            error_control: ServiceErrorControl::Normal,
            executable_path: exe.clone(),
            launch_arguments: arguments.iter().map(OsString::from).collect(),
            dependencies: Vec::new(),
            account_name: None,
            account_password: None,
        };
        let manager =
            manager(ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE)?;
        let access =
            ServiceAccess::QUERY_STATUS | ServiceAccess::CHANGE_CONFIG | ServiceAccess::START;
        let service = match manager.open_service(SERVICE_NAME, access) {
            Ok(service) => {
                service
                    .change_config(&info)
                    .map_err(|e| failed("reconfiguring the procguard-events service", e))?;
                writeln!(output.out, "reconfigured service {SERVICE_NAME}")?;
                service
            }
            Err(error) if not_found(&error) => {
                let service = manager
                    .create_service(&info, access)
                    .map_err(|e| failed("creating the procguard-events service", e))?;
                writeln!(output.out, "installed service {SERVICE_NAME} (auto start)")?;
                service
            }
            Err(error) => return Err(failed("opening the procguard-events service", error)),
        };
        let _ = service.set_description(
            "procguard's audit records into the Event Log (source procguard), a JSON-lines file and a Prometheus textfile",
        );
        let restart = ServiceAction {
            action_type: ServiceActionType::Restart,
            delay: Duration::from_secs(5),
        };
        let recovery = ServiceFailureActions {
            reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(86_400)),
            reboot_msg: None,
            command: None,
            actions: Some(vec![restart.clone(), restart.clone(), restart]),
        };
        if let Err(error) = service.update_failure_actions(recovery) {
            writeln!(
                output.err,
                "warning: the service's recovery (restart on failure) could not be set: {error}"
            )?;
        }
        register_source(&exe)?;
        writeln!(
            output.out,
            "registered event source procguard (Application log, messages from {})",
            exe.display()
        )?;
        writeln!(output.out, "start it with `sc start {SERVICE_NAME}`")?;
        Ok(())
    }

    /// Writes the event source's key.
    fn register_source(exe: &Path) -> Result<(), Failure> {
        let key_name = wide(EVENT_SOURCE_KEY);
        let mut key: HKEY = ptr::null_mut();
        // SAFETY: `key_name` is NUL-terminated; no class, no security
        // attributes; `key` receives the handle, closed below; no
        // disposition asked.
        let status = unsafe {
            RegCreateKeyExW(
                HKEY_LOCAL_MACHINE,
                key_name.as_ptr(),
                0,
                ptr::null(),
                REG_OPTION_NON_VOLATILE,
                KEY_SET_VALUE,
                ptr::null(),
                &raw mut key,
                ptr::null_mut(),
            )
        };
        if status != ERROR_SUCCESS {
            return Err(failed(
                &format!("creating HKLM\\{EVENT_SOURCE_KEY}"),
                std::io::Error::from_raw_os_error(status.cast_signed()),
            ));
        }
        let path: Vec<u8> = wide(&exe.display().to_string())
            .iter()
            .flat_map(|unit| unit.to_le_bytes())
            .collect();
        let types = 7u32.to_le_bytes();
        let mut result = Ok(());
        for (name, kind, data) in [
            ("EventMessageFile", REG_EXPAND_SZ, path.as_slice()),
            ("TypesSupported", REG_DWORD, types.as_slice()),
        ] {
            let value = wide(name);
            let length = u32::try_from(data.len()).unwrap_or(u32::MAX);
            // SAFETY: `key` is open with KEY_SET_VALUE; `value` is
            // NUL-terminated; `data` holds `length` bytes.
            let status =
                unsafe { RegSetValueExW(key, value.as_ptr(), 0, kind, data.as_ptr(), length) };
            if status != ERROR_SUCCESS {
                result = Err(failed(
                    &format!("writing {name} under HKLM\\{EVENT_SOURCE_KEY}"),
                    std::io::Error::from_raw_os_error(status.cast_signed()),
                ));
                break;
            }
        }
        // SAFETY: opened above, closed once.
        unsafe { RegCloseKey(key) };
        result
    }

    pub(super) fn uninstall(output: &mut Output<'_>) -> Result<(), Failure> {
        let manager = manager(ServiceManagerAccess::CONNECT)?;
        let access = ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE;
        match manager.open_service(SERVICE_NAME, access) {
            Ok(service) => {
                let status = service
                    .query_status()
                    .map_err(|e| failed("querying the procguard-events service", e))?;
                if status.current_state != ServiceState::Stopped {
                    let _ = service.stop();
                    let deadline = Instant::now() + Duration::from_secs(15);
                    while Instant::now() < deadline {
                        match service.query_status() {
                            Ok(status) if status.current_state != ServiceState::Stopped => {
                                std::thread::sleep(Duration::from_millis(200));
                            }
                            _ => break,
                        }
                    }
                    writeln!(output.out, "stopped service {SERVICE_NAME}")?;
                }
                service
                    .delete()
                    .map_err(|e| failed("deleting the procguard-events service", e))?;
                writeln!(output.out, "removed service {SERVICE_NAME}")?;
            }
            Err(error) if not_found(&error) => {
                writeln!(output.out, "service {SERVICE_NAME} is not installed")?;
            }
            Err(error) => return Err(failed("opening the procguard-events service", error)),
        }
        let key_name = wide(EVENT_SOURCE_KEY);
        // SAFETY: `key_name` is NUL-terminated; deletes the key and its values.
        let status = unsafe { RegDeleteTreeW(HKEY_LOCAL_MACHINE, key_name.as_ptr()) };
        match status {
            ERROR_SUCCESS => writeln!(output.out, "removed event source procguard")?,
            ERROR_FILE_NOT_FOUND => {
                writeln!(output.out, "event source procguard is not registered")?
            }
            other => {
                return Err(failed(
                    &format!("removing HKLM\\{EVENT_SOURCE_KEY}"),
                    std::io::Error::from_raw_os_error(other.cast_signed()),
                ))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn install(args: &[&str]) -> InstallArgs {
        let mut line = vec!["procguardctl", "service", "install"];
        line.extend_from_slice(args);
        match crate::Cli::try_parse_from(line).expect("parses").command {
            crate::Command::Service {
                command: ServiceCommand::Install(args),
            } => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_service_command_line_is_run_with_absolute_paths() {
        let args = install(&[
            "--json",
            "events.jsonl",
            "--json-keep",
            "3",
            "--textfile",
            "/var/procguard.prom",
        ]);
        let line = args.service_arguments().unwrap();
        let here = std::env::current_dir().unwrap();
        assert_eq!(
            line,
            [
                "run".to_owned(),
                "--json".to_owned(),
                here.join("events.jsonl").display().to_string(),
                "--textfile".to_owned(),
                "/var/procguard.prom".to_owned(),
                "--json-keep".to_owned(),
                "3".to_owned(),
            ]
        );
        assert_eq!(install(&[]).service_arguments().unwrap(), ["run"]);
        // The hidden replay source is passed on too.
        let replay = install(&["--replay", "/r.bin"])
            .service_arguments()
            .unwrap();
        assert_eq!(replay, ["run", "--replay", "/r.bin"]);
    }

    #[test]
    fn a_missing_program_is_named() {
        let args = install(&["--exe", "/no/such/procguard-events.exe"]);
        let failure = args.program().unwrap_err();
        assert_eq!(failure.code, crate::EXIT_ERROR);
        assert!(
            failure
                .message
                .starts_with("/no/such/procguard-events.exe does not exist"),
            "{}",
            failure.message
        );
    }

    #[cfg(not(windows))]
    #[test]
    fn elsewhere_than_windows_it_says_so_with_exit_code_3() {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let code = crate::run(
            ["procguardctl", "service", "uninstall"],
            &mut out,
            &mut err,
            &mut || panic!("the service commands do not open the driver"),
        );
        assert_eq!(code, crate::EXIT_UNSUPPORTED);
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "error: installing the events service needs Windows' service control manager: Windows only\n"
        );
        assert!(out.is_empty());
    }
}
