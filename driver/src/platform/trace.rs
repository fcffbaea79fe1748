//! Debug-output tracing of every failure, with its status, so a field report
//! (`DbgView`, a kernel debugger, or a crash dump's debug log) can be read.
//!
//! Messages are formatted into a fixed buffer on the stack (no allocation, no
//! paged memory) and printed with `DbgPrintEx("%s", ...)`: the format string
//! is never built from data.

use core::fmt::{self, Write};

use crate::ffi::{_DPFLTR_TYPE, DPFLTR_ERROR_LEVEL, DPFLTR_INFO_LEVEL};

const PREFIX: &str = "procguard: ";
const CAPACITY: usize = 200;

/// A bounded, NUL-terminated message buffer; text beyond the capacity is cut.
struct Message {
    bytes: [u8; CAPACITY + 1],
    len: usize,
}

impl Write for Message {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for &byte in text.as_bytes() {
            if self.len >= CAPACITY {
                break;
            }
            // A NUL would end the C string early; `%` is harmless (the format is "%s").
            if let Some(slot) = self.bytes.get_mut(self.len) {
                *slot = if byte == 0 { b'?' } else { byte };
                self.len += 1;
            }
        }
        Ok(())
    }
}

fn print(level: u32, arguments: fmt::Arguments<'_>) {
    let mut message = Message {
        bytes: [0; CAPACITY + 1],
        len: 0,
    };
    // `Message::write_str` never fails; a failing Display impl just cuts the text.
    let _ = message.write_str(PREFIX);
    let _ = message.write_fmt(arguments);
    let _ = message.write_str("\n");
    // bytes[len] is 0: the buffer has one byte more than CAPACITY.
    // SAFETY: both strings are NUL-terminated and live across the call; the
    // format is the constant "%s" with exactly one string argument.
    unsafe {
        crate::ffi::ntddk::DbgPrintEx(
            _DPFLTR_TYPE::DPFLTR_IHVDRIVER_ID as u32,
            level,
            c"%s".as_ptr(),
            message.bytes.as_ptr().cast::<crate::ffi::CHAR>(),
        );
    }
}

/// Prints an error line.
pub fn error(arguments: fmt::Arguments<'_>) {
    print(DPFLTR_ERROR_LEVEL, arguments);
}

/// Prints an informational line.
pub fn info(arguments: fmt::Arguments<'_>) {
    print(DPFLTR_INFO_LEVEL, arguments);
}

/// An NTSTATUS printed the way Windows documents it (`0xC0000022`).
pub struct Status(pub i32);

impl fmt::Display for Status {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{:#010X}", self.0.cast_unsigned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::ntddk::{reset_host, with_host};

    #[test]
    fn long_messages_are_cut_and_stay_nul_terminated() {
        reset_host();
        let long = "x".repeat(1000);
        error(format_args!("{long}"));
        let trace = with_host(|host| host.trace.clone());
        assert_eq!(trace.len(), 1);
        // "[0] " + CAPACITY characters.
        assert_eq!(trace[0].len(), 4 + CAPACITY);
        assert!(trace[0].starts_with("[0] procguard: xxx"));
    }

    #[test]
    fn embedded_nul_does_not_truncate_and_status_prints_as_hex() {
        reset_host();
        info(format_args!(
            "a\0b {}",
            Status(0xC000_0022_u32.cast_signed())
        ));
        let trace = with_host(|host| host.trace.clone());
        assert_eq!(trace, ["[3] procguard: a?b 0xC0000022\n"]);
    }
}
