//! Build script of the driver.
//!
//! With the `wdk` feature on a Windows host (the WDK installed),
//! windows-drivers-rs configures the KMDF link exactly as for every
//! windows-drivers-rs driver. A build script is compiled for the host, so
//! `cfg(windows)` here is the host, the same condition under which Cargo.toml
//! makes `wdk-build` a build-dependency. Otherwise (the Linux cross build,
//! host tests, the Linux type-check of the WDK build) there is nothing to do
//! here: `cargo xtask package` passes the linker flags itself.

#[cfg(all(windows, feature = "wdk"))]
fn main() -> Result<(), wdk_build::ConfigError> {
    wdk_build::configure_wdk_binary_build()
}

#[cfg(not(all(windows, feature = "wdk")))]
fn main() {
    println!("cargo::rerun-if-changed=build.rs");
}
