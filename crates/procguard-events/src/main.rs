//! `procguard-events`: see the library's documentation.
//!
//! Stopping: the drain loop runs on a worker thread, blocked in a
//! synchronous `DeviceIoControl(IOCTL_WAIT_EVENTS)` most of the time. The
//! service's stop control (or Ctrl-C in console mode) requests the stop and
//! then, while the worker is in its wait (never during a sink's write),
//! cancels the worker's pended request with `CancelSynchronousIo`, every
//! 50 ms until the worker has ended (a cancel that comes just before the
//! request starts finds nothing; the next one does), for at most 5 s. The wait fails with `STATUS_CANCELLED`, the loop sees the
//! stop, writes "service stopped" and ends.

use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use procguard_events::drain::Stop;
use procguard_events::{serve, Cli, Command, Options};

/// Runs the work on a worker thread until `stop` (which the worker also
/// requests when it ends by itself), cancelling its pended wait.
fn supervise(options: Options, stop: &Stop) -> Result<(), String> {
    let worker_stop = stop.clone();
    let worker = thread::spawn(move || {
        let result = serve(&options, &worker_stop);
        worker_stop.request();
        result
    });
    stop.wait();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !worker.is_finished() && Instant::now() < deadline {
        // Only the wait is cancelled, never a sink's write.
        #[cfg(windows)]
        if stop.waiting() {
            platform::cancel_io(&worker);
        }
        thread::sleep(Duration::from_millis(50));
    }
    if !worker.is_finished() {
        return Err("the drain loop did not stop within 5 s".to_owned());
    }
    worker
        .join()
        .map_err(|_| "the drain loop panicked".to_owned())?
}

fn console(options: Options) -> ExitCode {
    let stop = Stop::new();
    #[cfg(windows)]
    platform::stop_on_ctrl_c(&stop);
    match supervise(options, &stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let Command::Run(options) = cli.command;
    if options.console {
        return console(options);
    }
    #[cfg(windows)]
    {
        platform::run_service(options)
    }
    #[cfg(not(windows))]
    {
        eprintln!("error: the service runs on Windows only; use `run --console` here");
        ExitCode::from(3)
    }
}

#[cfg(windows)]
mod platform {
    use std::ffi::OsString;
    use std::os::windows::io::AsRawHandle;
    use std::process::ExitCode;
    use std::sync::OnceLock;
    use std::thread::JoinHandle;
    use std::time::Duration;

    use procguard_events::drain::Stop;
    use procguard_events::{Options, SERVICE_NAME};
    use windows_service::service::{
        ServiceControl, ServiceControlAccept, ServiceExitCode, ServiceState, ServiceStatus,
        ServiceType,
    };
    use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
    use windows_service::{define_windows_service, service_dispatcher};
    use windows_sys::Win32::Foundation::{FALSE, TRUE};
    use windows_sys::Win32::System::Console::{
        SetConsoleCtrlHandler, CTRL_BREAK_EVENT, CTRL_CLOSE_EVENT, CTRL_C_EVENT,
    };
    use windows_sys::Win32::System::IO::CancelSynchronousIo;

    /// The options of the service's command line and its stop request.
    static SERVICE: OnceLock<(Options, Stop)> = OnceLock::new();
    /// The console's stop request.
    static CONSOLE_STOP: OnceLock<Stop> = OnceLock::new();

    /// Cancels the synchronous I/O the worker thread has in flight.
    pub fn cancel_io<T>(worker: &JoinHandle<T>) {
        // SAFETY: the thread handle is valid while `worker` is not joined;
        // the call only cancels I/O (failing with ERROR_NOT_FOUND when none
        // is in flight).
        unsafe { CancelSynchronousIo(worker.as_raw_handle()) };
    }

    unsafe extern "system" fn on_console_event(event: u32) -> windows_sys::core::BOOL {
        if !matches!(event, CTRL_C_EVENT | CTRL_BREAK_EVENT | CTRL_CLOSE_EVENT) {
            return FALSE;
        }
        if let Some(stop) = CONSOLE_STOP.get() {
            stop.request();
        }
        TRUE
    }

    /// Ctrl-C (Ctrl-Break, closing the console) requests `stop`.
    pub fn stop_on_ctrl_c(stop: &Stop) {
        let _ = CONSOLE_STOP.set(stop.clone());
        // SAFETY: registers a function that lives as long as the process;
        // it touches only a OnceLock and the stop request.
        unsafe { SetConsoleCtrlHandler(Some(on_console_event), TRUE) };
    }

    define_windows_service!(ffi_service_main, service_main);

    fn status(state: ServiceState, exit: u32) -> ServiceStatus {
        ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted: if state == ServiceState::Running {
                ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
            } else {
                ServiceControlAccept::empty()
            },
            exit_code: if exit == 0 {
                ServiceExitCode::Win32(0)
            } else {
                ServiceExitCode::ServiceSpecific(exit)
            },
            checkpoint: 0,
            wait_hint: if state == ServiceState::StopPending {
                Duration::from_secs(6)
            } else {
                Duration::ZERO
            },
            process_id: None,
        }
    }

    fn service_main(_arguments: Vec<OsString>) {
        let Some((options, stop)) = SERVICE.get() else {
            return;
        };
        let handler_stop = stop.clone();
        let handler = move |control| match control {
            ServiceControl::Stop | ServiceControl::Shutdown => {
                handler_stop.request();
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            _ => ServiceControlHandlerResult::NotImplemented,
        };
        let Ok(handle) = service_control_handler::register(SERVICE_NAME, handler) else {
            return;
        };
        let _ = handle.set_service_status(status(ServiceState::Running, 0));
        let result = super::supervise(options.clone(), stop);
        let _ = handle.set_service_status(status(ServiceState::StopPending, 0));
        let exit = u32::from(result.is_err());
        let _ = handle.set_service_status(status(ServiceState::Stopped, exit));
    }

    /// Hands the process to the service control manager.
    pub fn run_service(options: Options) -> ExitCode {
        let _ = SERVICE.set((options, Stop::new()));
        match service_dispatcher::start(SERVICE_NAME, ffi_service_main) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!(
                    "error: not started by the service control manager ({error}); \
                     run `procguard-events run --console` to run in this console"
                );
                ExitCode::FAILURE
            }
        }
    }
}
