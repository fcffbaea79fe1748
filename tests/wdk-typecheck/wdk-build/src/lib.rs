//! Stand-in for wdk-build 0.6.0: the one entry point a driver's build script
//! calls, with the published signature; it configures nothing.

/// wdk-build's error type (its variants do not matter here).
#[derive(Debug)]
pub struct ConfigError;

impl core::fmt::Display for ConfigError {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        formatter.write_str("wdk-build stand-in")
    }
}

impl std::error::Error for ConfigError {}

/// `wdk_build::configure_wdk_binary_build`: nothing to configure here.
///
/// # Errors
/// Never.
pub fn configure_wdk_binary_build() -> Result<(), ConfigError> {
    Ok(())
}
