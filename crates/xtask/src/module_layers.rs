//! The driver's module groups import one way.
//!
//! `driver/src/` is grouped by concern, and the groups form layers:
//! `callbacks` → `control` → `state` → `tracking` → `platform` (a group may
//! use the groups after it, never one before it). The top-level modules
//! (`driver_state`, `driver_entry`, `fx_entry`, `ffi`) sit outside the
//! layers: every callback receives the driver's state as its context. A
//! reference `crate::<group>` in a group's file that points up a layer is a
//! module cycle, and fails `cargo test`.

use std::path::Path;

/// The layers, highest first.
pub const LAYERS: &[&str] = &[
    "callbacks",
    "control",
    "ask",
    "state",
    "tracking",
    "platform",
];

/// Every `crate::<group>` reference in `text` (a file of group `from`) that
/// points to a group above `from`, as "file: from -> to".
fn upward_references(file: &str, from: &str, text: &str) -> Vec<String> {
    let Some(from_rank) = LAYERS.iter().position(|group| *group == from) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for (rank, group) in LAYERS.iter().enumerate().take(from_rank) {
        let needle = format!("crate::{group}");
        let mentioned = text.match_indices(&needle).any(|(at, _)| {
            // `crate::state` must not match `crate::state_machine`.
            text[at + needle.len()..]
                .chars()
                .next()
                .is_none_or(|next| !(next.is_ascii_alphanumeric() || next == '_'))
        });
        if mentioned {
            found.push(format!(
                "{file}: {from} -> {group} (layer {rank} above {from_rank})"
            ));
        }
    }
    found
}

/// Checks every `.rs` file under `driver_src/<group>/`.
///
/// # Errors
/// The upward references found, or a file that could not be read.
pub fn check(driver_src: &Path) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    for group in LAYERS {
        let folder = driver_src.join(group);
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(error) => {
                problems.push(format!("{}: {error}", folder.display()));
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|ext| ext.to_str()) != Some("rs") {
                continue;
            }
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    problems.extend(upward_references(&path.display().to_string(), group, &text));
                }
                Err(error) => problems.push(format!("{}: {error}", path.display())),
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_driver_module_groups_import_one_way() {
        let driver_src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../driver/src");
        assert_eq!(check(&driver_src), Ok(()));
    }

    #[test]
    fn an_upward_reference_is_a_cycle_and_is_reported() {
        let text = "use crate::callbacks::handle_decision::decide;\nuse crate::platform::trace;\n";
        let found = upward_references("state/x.rs", "state", text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("state -> callbacks"), "{found:?}");
        // Downward and top-level references are fine; a longer name is not the group.
        assert!(upward_references(
            "callbacks/x.rs",
            "callbacks",
            "use crate::state::audit_ring; use crate::driver_state::DriverState;"
        )
        .is_empty());
        assert!(upward_references("tracking/x.rs", "tracking", "crate::state_machine").is_empty());
    }

    #[test]
    fn a_missing_group_folder_is_reported() {
        let empty = std::env::temp_dir().join("procguard-module-layers-none");
        let _ = std::fs::create_dir_all(&empty);
        let problems = check(&empty).unwrap_err();
        assert_eq!(problems.len(), LAYERS.len(), "{problems:?}");
    }
}
