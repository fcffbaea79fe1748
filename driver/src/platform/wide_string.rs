//! UTF-16 constants and `UNICODE_STRING` views of them, for the names the
//! driver hands the kernel (registry values, device names, SDDL).
#![forbid(unsafe_code)]

use crate::ffi::UNICODE_STRING;

/// An ASCII string as UTF-16 at compile time (`N` = its length).
pub const fn utf16<const N: usize>(text: &str) -> [u16; N] {
    let bytes = text.as_bytes();
    let mut units = [0u16; N];
    let mut index = 0;
    while index < N && index < bytes.len() {
        units[index] = bytes[index] as u16;
        index += 1;
    }
    units
}

/// A `UNICODE_STRING` over `units` (which the kernel only reads). Strings
/// longer than `UNICODE_STRING` can describe are cut to 32,767 units.
pub fn unicode_string(units: &[u16]) -> UNICODE_STRING {
    let bytes = u16::try_from(units.len().min(0x7FFF) * 2).unwrap_or(0);
    UNICODE_STRING {
        Length: bytes,
        MaximumLength: bytes,
        Buffer: units.as_ptr().cast_mut(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_and_views_carry_the_text() {
        const NAME: [u16; 6] = utf16("Policy");
        assert_eq!(String::from_utf16(&NAME).unwrap(), "Policy");
        let view = unicode_string(&NAME);
        assert_eq!((view.Length, view.MaximumLength), (12, 12));
        assert_eq!(view.Buffer.cast_const(), NAME.as_ptr());
    }
}
