//! `procguardctl`: see the library's documentation for the commands and
//! exit codes.

use std::process::ExitCode;

fn main() -> ExitCode {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let code = procguardctl::run(
        std::env::args_os(),
        &mut stdout.lock(),
        &mut stderr.lock(),
        &mut procguardctl::open_driver,
    );
    ExitCode::from(code)
}
