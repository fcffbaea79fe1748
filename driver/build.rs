//! Build script of the driver.
//!
//! With the `wdk` feature (Windows with the WDK installed), windows-drivers-rs
//! configures the KMDF link exactly as for every windows-drivers-rs driver.
//! Without it (the Linux cross build and host tests) there is nothing to do
//! here: `cargo xtask package` passes the linker flags itself.

#[cfg(feature = "wdk")]
fn main() -> Result<(), wdk_build::ConfigError> {
    wdk_build::configure_wdk_binary_build()
}

#[cfg(not(feature = "wdk"))]
fn main() {
    println!("cargo::rerun-if-changed=build.rs");
}
