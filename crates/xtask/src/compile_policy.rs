//! `cargo xtask compile-policy POLICY.toml OUT.bin`: compiles a TOML policy
//! into the blob the driver reads from `Parameters\\Policy` (the control
//! tool will do the same; this serves tests and early users).

use std::path::Path;

/// Parses, lints and encodes; the blob is written only if the policy is valid.
pub fn run(input: &Path, output: &Path) -> Result<(), String> {
    let text =
        std::fs::read_to_string(input).map_err(|error| format!("{}: {error}", input.display()))?;
    let policy = procguard_policy::toml::parse_policy(&text)
        .map_err(|errors| format!("{}:\n{errors}", input.display()))?;
    for warning in procguard_policy::lint(&policy) {
        eprintln!("{warning}");
    }
    let blob = procguard_policy::encode(&policy);
    std::fs::write(output, &blob).map_err(|error| format!("{}: {error}", output.display()))?;
    println!(
        "{}: {} rule(s), {} bytes, policy id {:#010x}",
        output.display(),
        policy.rules.len(),
        blob.len(),
        procguard_policy::policy_id(&blob).unwrap_or(0)
    );
    Ok(())
}
