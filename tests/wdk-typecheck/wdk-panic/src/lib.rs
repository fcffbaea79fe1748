//! Stand-in for wdk-panic 0.5.0: a panic handler, as the published crate has.
#![no_std]

#[panic_handler]
const fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
