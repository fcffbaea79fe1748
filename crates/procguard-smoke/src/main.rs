//! `procguard-smoke`: see the library's documentation for what it checks and
//! its exit codes.

use std::process::ExitCode;

fn main() -> ExitCode {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    #[cfg(windows)]
    let mut windows = procguard_smoke::windows::WindowsPlatform::default();
    #[cfg(windows)]
    let platform: Option<&mut dyn procguard_smoke::Platform> = Some(&mut windows);
    #[cfg(not(windows))]
    let platform = None;
    let code = procguard_smoke::run(
        std::env::args_os(),
        &mut stdout.lock(),
        &mut stderr.lock(),
        platform,
    );
    ExitCode::from(code)
}
