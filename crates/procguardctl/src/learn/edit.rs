//! Writing the proposal into the policy's TOML, keeping its comments and
//! layout (`toml_edit`), and the unified diff a reviewer reads (`similar`).
//!
//! Only the `requester` of rules that learned something changes:
//! - `"any"` (or no `requester` key) becomes
//!   `{ except = { path = [...] } }` — in place of the old value, keeping
//!   its comment, or inserted right after the rule's `target`;
//! - `{ except = ... }` gets its `path` list extended (created when the
//!   exceptions name only names or pids; a single string becomes a list),
//!   following the list's own layout (one line, or one entry per line);
//! - an "only" requester is left alone (see [`super::proposal::RequesterForm`]).

use procguard_policy::toml::basic_string;
use toml_edit::{Array, DocumentMut, Item, Key, Table, Value};

use super::proposal::{Proposal, RequesterForm};

/// A TOML string for `text`: a literal string (`'...'`, backslashes as they
/// are, the form the example policies use for paths) when it can be one,
/// else a basic string with escapes.
#[must_use]
pub fn toml_string(text: &str) -> String {
    if text.contains('\'') || text.chars().any(char::is_control) {
        basic_string(text)
    } else {
        format!("'{text}'")
    }
}

fn string_value(text: &str) -> Result<Value, String> {
    toml_string(text)
        .parse::<Value>()
        .map_err(|e| format!("cannot write {text:?} as a TOML string: {e}"))
}

/// The policy text with the proposal's exemptions added.
///
/// # Errors
/// When the text is not a policy `learn` can edit (not TOML, or its rules not
/// written as `[[rule]]` tables in the order the policy has them).
pub fn apply(text: &str, proposal: &Proposal) -> Result<String, String> {
    let mut document: DocumentMut = text
        .parse()
        .map_err(|e| format!("the policy is not TOML that can be edited: {e}"))?;
    for rule in &proposal.rules {
        if rule.form == RequesterForm::Only || rule.exemptions.is_empty() {
            continue;
        }
        let table = document
            .get_mut("rule")
            .and_then(Item::as_array_of_tables_mut)
            .and_then(|rules| rules.get_mut(rule.index))
            .ok_or_else(|| {
                format!(
                    "rule {} {:?} is not written as a [[rule]] table: learn edits only that form",
                    rule.index, rule.name
                )
            })?;
        let name = table.get("name").and_then(Item::as_str);
        if name != Some(rule.name.as_str()) {
            return Err(format!(
                "the [[rule]] table number {} is not rule {:?}: learn edits only policies whose \
                 rules are all [[rule]] tables",
                rule.index, rule.name
            ));
        }
        let patterns: Vec<&str> = rule
            .exemptions
            .iter()
            .map(|exemption| exemption.pattern.as_str())
            .collect();
        match rule.form {
            RequesterForm::Any => except_any(table, &patterns)?,
            RequesterForm::AnyExcept => extend_except(table, &rule.name, &patterns)?,
            RequesterForm::Only => {}
        }
    }
    Ok(document.to_string())
}

/// `requester = "any"` (or none) becomes `{ except = { path = [...] } }`.
fn except_any(table: &mut Table, patterns: &[&str]) -> Result<(), String> {
    let list: Vec<String> = patterns.iter().map(|p| toml_string(p)).collect();
    let mut value: Value = format!("{{ except = {{ path = [{}] }} }}", list.join(", "))
        .parse()
        .map_err(|e| format!("cannot build the requester exceptions: {e}"))?;
    if let Some(Item::Value(old)) = table.get_mut("requester") {
        // Keep the spacing and any comment after the old value.
        *value.decor_mut() = old.decor().clone();
        *old = value;
        return Ok(());
    }
    // No requester key: insert it after `target`, where people read it.
    let keys: Vec<String> = table.iter().map(|(key, _)| key.to_owned()).collect();
    let after = keys
        .iter()
        .position(|key| key == "target")
        .map_or(keys.len(), |position| position + 1);
    let moved: Vec<(Key, Item)> = keys[after..]
        .iter()
        .filter_map(|key| table.remove_entry(key))
        .collect();
    table.insert("requester", Item::Value(value));
    for (key, item) in moved {
        table.insert_formatted(&key, item);
    }
    Ok(())
}

/// Extends `requester = { except = { ... } }` with `path` entries.
fn extend_except(table: &mut Table, rule: &str, patterns: &[&str]) -> Result<(), String> {
    let unexpected =
        || format!("rule {rule:?}: its requester exceptions are not a table learn can edit");
    let except = table
        .get_mut("requester")
        .and_then(Item::as_table_like_mut)
        .and_then(|requester| requester.get_mut("except"))
        .and_then(Item::as_table_like_mut)
        .ok_or_else(unexpected)?;
    let mut values = Vec::new();
    for pattern in patterns {
        values.push(string_value(pattern)?);
    }
    match except.get_mut("path") {
        None => {
            let mut array = Array::new();
            for value in values {
                array.push_formatted(value);
            }
            array.fmt();
            except.insert("path", Item::Value(Value::Array(array)));
        }
        Some(Item::Value(Value::Array(array))) => push_in_layout(array, values),
        Some(Item::Value(single @ Value::String(_))) => {
            let decor = single.decor().clone();
            let mut first = single.clone();
            first.decor_mut().clear();
            let mut array = Array::new();
            array.push_formatted(first);
            push_in_layout(&mut array, values);
            let mut list = Value::Array(array);
            *list.decor_mut() = decor;
            *single = list;
        }
        Some(_) => return Err(unexpected()),
    }
    Ok(())
}

/// Appends to an array in its own layout: one entry per line when its last
/// entry starts on a new line, else `a, b` on one line.
fn push_in_layout(array: &mut Array, values: Vec<Value>) {
    let prefix = array
        .iter()
        .last()
        .and_then(|last| last.decor().prefix())
        .and_then(|prefix| prefix.as_str())
        .map(str::to_owned);
    let prefix = match prefix {
        Some(prefix) if prefix.contains('\n') => prefix,
        _ if array.is_empty() => String::new(),
        _ => " ".to_owned(),
    };
    // A comment after the last entry's comma is in the array's trailing
    // text: it stays with that entry, the new ones go below it.
    let trailing = array.trailing().as_str().unwrap_or_default().to_owned();
    let mut first_prefix = None;
    if prefix.contains('\n') && trailing.contains('#') {
        if let Some(end) = trailing.find('\n') {
            let indent = prefix.rsplit('\n').next().unwrap_or_default();
            first_prefix = Some(format!("{}{indent}", &trailing[..=end]));
            array.set_trailing(format!("\n{}", &trailing[end + 1..]));
        }
    }
    for mut value in values {
        let prefix = first_prefix.take().unwrap_or_else(|| prefix.clone());
        value.decor_mut().set_prefix(prefix);
        value.decor_mut().set_suffix("");
        array.push_formatted(value);
    }
}

/// A unified diff of two texts (three lines of context), `old_name` and
/// `new_name` in its header; empty when they are equal.
#[must_use]
pub fn unified_diff(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    if old == new {
        return String::new();
    }
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(old_name, new_name)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::proposal::{Exemption, RuleProposal};

    fn proposal(index: usize, name: &str, form: RequesterForm, patterns: &[&str]) -> Proposal {
        Proposal {
            rules: vec![RuleProposal {
                index,
                name: name.to_owned(),
                mode: "audit",
                form,
                exemptions: patterns
                    .iter()
                    .map(|pattern| Exemption {
                        pattern: (*pattern).to_owned(),
                        images: Vec::new(),
                        requests: 1,
                        audit: 1,
                        examples: Vec::new(),
                    })
                    .collect(),
                only_entries: Vec::new(),
            }],
            ..Proposal::default()
        }
    }

    const A: &str = r"\Device\HarddiskVolume*\A\a.exe";
    const B: &str = r"\Device\HarddiskVolume*\B\it's.exe";

    #[test]
    fn any_becomes_an_except_list_keeping_the_comment() {
        let text = "# head\n[[rule]]\nname = \"r\"\ntarget = { name = \"t.exe\" }\nrequester = \"any\"   # everyone\nstrip = [\"no-kill\"]\n";
        let new = apply(text, &proposal(0, "r", RequesterForm::Any, &[A, B])).unwrap();
        assert_eq!(
            new,
            "# head\n[[rule]]\nname = \"r\"\ntarget = { name = \"t.exe\" }\nrequester = { except = { path = ['\\Device\\HarddiskVolume*\\A\\a.exe', \"\\\\Device\\\\HarddiskVolume*\\\\B\\\\it's.exe\"] } }   # everyone\nstrip = [\"no-kill\"]\n"
        );
    }

    #[test]
    fn a_missing_requester_is_inserted_after_the_target() {
        let text = "[[rule]]\nname = \"r\"\ntarget = { name = \"t.exe\" }\n# what goes\nstrip = [\"no-kill\"]\nmode = \"audit\"\n";
        let new = apply(text, &proposal(0, "r", RequesterForm::Any, &[A])).unwrap();
        assert_eq!(
            new,
            "[[rule]]\nname = \"r\"\ntarget = { name = \"t.exe\" }\nrequester = { except = { path = ['\\Device\\HarddiskVolume*\\A\\a.exe'] } }\n# what goes\nstrip = [\"no-kill\"]\nmode = \"audit\"\n"
        );
    }

    #[test]
    fn except_lists_grow_in_their_own_layout() {
        let inline = "[[rule]]\nname = \"r\"\nrequester = { except = { path = ['\\X\\x.exe'] } }\n";
        assert_eq!(
            apply(inline, &proposal(0, "r", RequesterForm::AnyExcept, &[A])).unwrap(),
            "[[rule]]\nname = \"r\"\nrequester = { except = { path = ['\\X\\x.exe', '\\Device\\HarddiskVolume*\\A\\a.exe'] } }\n"
        );
        let lines = "[[rule]]\nname = \"r\"\nrequester = { except = { path = [\n    '\\X\\x.exe',  # old\n] } }\n";
        assert_eq!(
            apply(lines, &proposal(0, "r", RequesterForm::AnyExcept, &[A])).unwrap(),
            "[[rule]]\nname = \"r\"\nrequester = { except = { path = [\n    '\\X\\x.exe',  # old\n    '\\Device\\HarddiskVolume*\\A\\a.exe',\n] } }\n"
        );
        let single = "[[rule]]\nname = \"r\"\nrequester = { except = { path = '\\X\\x.exe' } }\n";
        assert_eq!(
            apply(single, &proposal(0, "r", RequesterForm::AnyExcept, &[A])).unwrap(),
            "[[rule]]\nname = \"r\"\nrequester = { except = { path = ['\\X\\x.exe', '\\Device\\HarddiskVolume*\\A\\a.exe'] } }\n"
        );
        let names = "[[rule]]\nname = \"r\"\n\n[rule.requester.except]\nname = [\"x.exe\"]\n";
        assert_eq!(
            apply(names, &proposal(0, "r", RequesterForm::AnyExcept, &[A])).unwrap(),
            "[[rule]]\nname = \"r\"\n\n[rule.requester.except]\nname = [\"x.exe\"]\npath = ['\\Device\\HarddiskVolume*\\A\\a.exe']\n"
        );
    }

    #[test]
    fn a_rule_that_is_not_where_the_policy_says_is_an_error() {
        let text = "[[rule]]\nname = \"other\"\n";
        let error = apply(text, &proposal(0, "r", RequesterForm::Any, &[A])).unwrap_err();
        assert!(error.contains("is not rule \"r\""), "{error}");
        let error = apply(text, &proposal(3, "r", RequesterForm::Any, &[A])).unwrap_err();
        assert!(error.contains("not written as a [[rule]] table"), "{error}");
    }

    #[test]
    fn the_diff_is_unified_with_headers() {
        let diff = unified_diff("a\nb\nc\n", "a\nB\nc\n", "p.toml", "p.toml (proposed)");
        assert_eq!(
            diff,
            "--- p.toml\n+++ p.toml (proposed)\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n"
        );
        assert_eq!(unified_diff("x\n", "x\n", "a", "b"), "");
    }
}
