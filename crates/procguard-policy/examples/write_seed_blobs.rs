//! Writes canonical blobs of the example policies into a directory (the fuzzing
//! seed corpus): `cargo run --features toml --example write_seed_blobs -- DIR`.

use procguard_policy::toml::parse_policy;
use procguard_policy::{encode, Mode, OnTimeout, Policy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: write_seed_blobs DIR")?;
    std::fs::create_dir_all(&dir)?;
    let example = parse_policy(include_str!("policy.toml"))?;
    let mut smaller = example.clone();
    smaller.rules.truncate(1);
    // Ask rules of both on_timeouts (mode bytes 2 and 3) and a non-default timeout.
    let mut ask = example.clone();
    ask.settings.ask_timeout_ms = 40;
    for (rule, on_timeout) in ask
        .rules
        .iter_mut()
        .zip([OnTimeout::Strip, OnTimeout::Allow])
    {
        rule.mode = Mode::Ask { on_timeout };
    }
    for (name, p) in [
        ("example", example),
        ("one-rule", smaller),
        ("ask", ask),
        ("empty", Policy::default()),
    ] {
        std::fs::write(format!("{dir}/{name}.blob"), encode(&p))?;
    }
    Ok(())
}
