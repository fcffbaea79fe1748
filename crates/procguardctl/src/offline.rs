//! The commands that need no driver: `check`, `compile`, `explain`.

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

use procguard_policy::rights::MaskNames;
use procguard_policy::toml::{parse_policy, TomlErrors};
use procguard_policy::{
    encode, explain as explain_request, lint, policy_id, Decision, Exemption, Explanation,
    HandleRequest, LintWarning, Mode, ObjectKind, OnTimeout, Operation, Policy, ProcessIdentity,
};

use crate::access::parse_access;
use crate::events::json_string;
use crate::{ExplainArgs, Failure, ObjectArg, OperationArg, Output, EXIT_OK, EXIT_WARNINGS};

/// A policy file, parsed, linted and compiled.
#[derive(Debug, Clone)]
pub struct CompiledFile {
    /// The policy.
    pub policy: Policy,
    /// Its blob.
    pub blob: Vec<u8>,
    /// Its id (the blob's CRC-32).
    pub policy_id: u32,
    /// Lint warnings.
    pub warnings: Vec<LintWarning>,
}

fn read(path: &Path) -> Result<String, Failure> {
    let bytes = std::fs::read(path)
        .map_err(|error| Failure::error(format!("cannot read {}: {error}", path.display())))?;
    decode_text(&bytes).map_err(|problem| Failure::error(format!("{}: {problem}", path.display())))
}

/// A policy file's text: UTF-8 (with or without a byte order mark), or
/// UTF-16 with its byte order mark, which is what Windows PowerShell 5.1
/// writes with `>`, `Out-File` and `Set-Content -Encoding Unicode`.
///
/// # Errors
/// What is wrong with the encoding, where, and what to do about it.
pub fn decode_text(bytes: &[u8]) -> Result<String, String> {
    let utf16 = |big_endian: bool, body: &[u8]| {
        if !body.len().is_multiple_of(2) {
            return Err("UTF-16 text with an odd number of bytes: save it as UTF-8".to_owned());
        }
        let units = body.chunks_exact(2).map(|pair| {
            let pair = [pair[0], pair[1]];
            if big_endian {
                u16::from_be_bytes(pair)
            } else {
                u16::from_le_bytes(pair)
            }
        });
        char::decode_utf16(units)
            .collect::<Result<String, _>>()
            .map_err(|_| "invalid UTF-16 text (an unpaired surrogate): save it as UTF-8".to_owned())
    };
    match bytes {
        [0xFF, 0xFE, body @ ..] => utf16(false, body),
        [0xFE, 0xFF, body @ ..] => utf16(true, body),
        _ => String::from_utf8(bytes.to_vec()).map_err(|error| {
            let valid = error.utf8_error().valid_up_to();
            let line = 1 + bytes[..valid].iter().filter(|&&byte| byte == b'\n').count();
            format!(
                "line {line}: not UTF-8 text (byte {valid} is {:#04x}; an ANSI code page?): save \
                 it as UTF-8",
                bytes[valid]
            )
        }),
    }
}

fn print_errors(path: &Path, errors: &TomlErrors, output: &mut Output<'_>) -> std::io::Result<()> {
    // In file order, as compilers report.
    let mut sorted: Vec<_> = errors.0.iter().collect();
    sorted.sort_by_key(|error| (error.line, error.column));
    for error in sorted {
        write!(
            output.err,
            "{}:{}:{}: error: ",
            path.display(),
            error.line,
            error.column
        )?;
        if let Some(key) = &error.key {
            write!(output.err, "{key}: ")?;
        }
        write!(output.err, "{}", error.message)?;
        if !error.valid.is_empty() {
            write!(output.err, " (valid choices: {})", error.valid.join(", "))?;
        }
        writeln!(output.err)?;
    }
    Ok(())
}

/// The line of each `[[rule]]` header, when the file spells every rule that
/// way (so lint warnings can point at their rule).
fn rule_lines(text: &str, rules: usize) -> Option<Vec<usize>> {
    let lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| line.trim_start().starts_with("[[rule]]"))
        .map(|(index, _)| index + 1)
        .collect();
    (lines.len() == rules).then_some(lines)
}

fn print_warnings(
    path: &Path,
    text: &str,
    policy: &Policy,
    warnings: &[LintWarning],
    output: &mut Output<'_>,
) -> std::io::Result<()> {
    let lines = rule_lines(text, policy.rules.len());
    for warning in warnings {
        let line = warning
            .rule
            .and_then(|rule| lines.as_ref().and_then(|lines| lines.get(rule)));
        match line {
            Some(line) => write!(output.err, "{}:{line}: warning: ", path.display())?,
            None => write!(output.err, "{}: warning: ", path.display())?,
        }
        match (&warning.rule, &warning.rule_name) {
            (Some(index), Some(name)) => {
                writeln!(output.err, "rule {index} {name:?}: {}", warning.message)?;
            }
            _ => writeln!(output.err, "{}", warning.message)?,
        }
    }
    Ok(())
}

fn plural(count: usize, word: &str) -> String {
    if count == 1 {
        format!("1 {word}")
    } else {
        format!("{count} {word}s")
    }
}

/// Reads, parses, lints and compiles a policy file, printing errors (then
/// failing) and warnings.
///
/// # Errors
/// [`Failure`] when the file cannot be read or the policy has errors.
pub fn load(path: &Path, output: &mut Output<'_>) -> Result<CompiledFile, Failure> {
    let text = read(path)?;
    let policy = match parse_policy(&text) {
        Ok(policy) => policy,
        Err(errors) => {
            print_errors(path, &errors, output)?;
            return Err(Failure::error(format!(
                "{}: {}",
                path.display(),
                plural(errors.0.len(), "error")
            )));
        }
    };
    let warnings = lint(&policy);
    print_warnings(path, &text, &policy, &warnings, output)?;
    let blob = encode(&policy);
    let policy_id = policy_id(&blob).unwrap_or(0);
    Ok(CompiledFile {
        policy,
        blob,
        policy_id,
        warnings,
    })
}

/// `check`.
pub fn check(path: &Path, deny_warnings: bool, output: &mut Output<'_>) -> Result<u8, Failure> {
    let file = load(path, output)?;
    let mut summary = format!(
        "{}, {} bytes compiled, policy id {:#010x}",
        plural(file.policy.rules.len(), "rule"),
        file.blob.len(),
        file.policy_id
    );
    let ask_rules = file.policy.rules.iter().filter(|r| r.mode.is_ask()).count();
    if ask_rules != 0 {
        let _ = write!(
            summary,
            "; {} ask a handler (timeout {} ms)",
            plural(ask_rules, "rule"),
            file.policy.settings.ask_timeout_ms
        );
    }
    let warnings = file.warnings.len();
    if warnings == 0 {
        writeln!(output.out, "{}: ok: {summary}", path.display())?;
        return Ok(EXIT_OK);
    }
    if deny_warnings {
        writeln!(
            output.out,
            "{}: {} (denied by --deny-warnings): {summary}",
            path.display(),
            plural(warnings, "warning")
        )?;
        return Ok(EXIT_WARNINGS);
    }
    writeln!(
        output.out,
        "{}: ok with {}: {summary}",
        path.display(),
        plural(warnings, "warning")
    )?;
    Ok(EXIT_OK)
}

/// One line per rule: what it protects against, in words.
pub fn describe_rules(policy: &Policy, out: &mut dyn Write) -> std::io::Result<()> {
    for (index, rule) in policy.rules.iter().enumerate() {
        let mode = match rule.mode {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit only",
            Mode::Ask {
                on_timeout: OnTimeout::Strip,
            } => "ask, on timeout strip",
            Mode::Ask {
                on_timeout: OnTimeout::Allow,
            } => "ask, on timeout allow",
        };
        // An ask rule's rights are what the handler decides about.
        let verb = if rule.mode.is_ask() {
            "handles: the handler decides about"
        } else {
            "handles lose"
        };
        let operations = match (rule.operations.create, rule.operations.duplicate) {
            (true, true) => "create and duplicate",
            (true, false) => "create",
            _ => "duplicate",
        };
        write!(out, "rule {index} {:?} ({mode}, {operations}):", rule.name)?;
        let mut first = true;
        for (covered, kind, mask, word) in [
            (
                rule.objects.process,
                ObjectKind::Process,
                rule.strip_process,
                "process",
            ),
            (
                rule.objects.thread,
                ObjectKind::Thread,
                rule.strip_thread,
                "thread",
            ),
        ] {
            if covered {
                let separator = if first { "" } else { ";" };
                write!(out, "{separator} {word} {verb} {}", MaskNames(kind, mask))?;
                first = false;
            }
        }
        writeln!(out)?;
    }
    Ok(())
}

/// `compile`.
pub fn compile(path: &Path, destination: &Path, output: &mut Output<'_>) -> Result<(), Failure> {
    let file = load(path, output).map_err(|failure| Failure {
        message: format!("{}; nothing written", failure.message),
        ..failure
    })?;
    std::fs::write(destination, &file.blob).map_err(|error| {
        Failure::error(format!("cannot write {}: {error}", destination.display()))
    })?;
    describe_rules(&file.policy, output.out)?;
    writeln!(
        output.out,
        "wrote {}: {}, {} bytes, policy id {:#010x}",
        destination.display(),
        plural(file.policy.rules.len(), "rule"),
        file.blob.len(),
        file.policy_id
    )?;
    Ok(())
}

/// `explain`.
pub fn explain(args: &ExplainArgs, output: &mut Output<'_>) -> Result<(), Failure> {
    let file = load(&args.policy, output)?;
    let object = match args.object {
        ObjectArg::Process => ObjectKind::Process,
        ObjectArg::Thread => ObjectKind::Thread,
    };
    let operation = match args.op {
        OperationArg::Create => Operation::Create,
        OperationArg::Duplicate => Operation::Duplicate,
    };
    let desired_access =
        parse_access(&args.access, object).map_err(|e| Failure::error(format!("--access: {e}")))?;
    for (what, image) in [("requester", &args.requester), ("target", &args.target)] {
        if !image.contains('\\') {
            writeln!(
                output.err,
                "note: --{what} is a file name, not an NT image path: path patterns cannot match it"
            )?;
        }
    }
    let target = ProcessIdentity {
        pid: args.target_pid,
        image_path: &args.target,
    };
    let requester = ProcessIdentity {
        pid: args.requester_pid,
        image_path: &args.requester,
    };
    let request = HandleRequest {
        object,
        operation,
        desired_access,
        kernel_handle: args.kernel_handle,
        same_process: args.target_pid == args.requester_pid,
    };
    let explanation = explain_request(&file.policy, &target, &requester, &request);
    if args.json {
        writeln!(
            output.out,
            "{}",
            explanation_json(&file.policy, &request, &explanation)
        )?;
    } else {
        write!(output.out, "{explanation}")?;
    }
    Ok(())
}

/// `explain --json`: the decision as one JSON object. Masks are numbers;
/// `rule` is the responsible rule's index (null when none).
fn explanation_json(policy: &Policy, request: &HandleRequest, explanation: &Explanation) -> String {
    let decision = &explanation.evaluation.decision;
    let mut out = String::from("{");
    let _ = write!(
        out,
        "\"object\":\"{}\",\"operation\":\"{}\",\"kernel_handle\":{},\"same_process\":{},",
        match request.object {
            ObjectKind::Process => "process",
            ObjectKind::Thread => "thread",
        },
        match request.operation {
            Operation::Create => "create",
            Operation::Duplicate => "duplicate",
        },
        request.kernel_handle,
        request.same_process,
    );
    let _ = write!(
        out,
        "\"desired_access\":{},\"access\":{},\"removed\":{},\"would_strip\":{},\"audit\":{},",
        request.desired_access,
        decision.access,
        decision.removed(request.desired_access),
        decision.would_strip,
        decision.audit,
    );
    out.push_str("\"rule\":");
    match decision.rule {
        Some(rule) => {
            let _ = write!(out, "{rule},\"rule_name\":");
            let name = policy.rules.get(usize::from(rule)).map_or("", |r| &*r.name);
            json_string(&mut out, name);
        }
        None => out.push_str("null,\"rule_name\":null"),
    }
    out.push_str(",\"exemption\":");
    out.push_str(match decision.exemption {
        None => "null",
        Some(Exemption::KernelHandle) => "\"kernel_handle\"",
        Some(Exemption::SelfAccess) => "\"self\"",
        Some(Exemption::CriticalRequester) => "\"critical_requester\"",
    });
    let _ = write!(
        out,
        ",\"requester_critical\":{},\"undocumented_removed\":{},\"ask\":",
        explanation.evaluation.requester_critical, explanation.undocumented_removed
    );
    ask_json(&mut out, policy, decision);
    out.push('}');
    out
}

/// The `"ask"` member of `explain --json`: null when no ask rule applies, else
/// the rights the handler is asked about, what is removed without an answer, the
/// resulting fallback access, the ask rule and whether the request can be asked
/// at all (`access` is then the most the request can get).
fn ask_json(out: &mut String, policy: &Policy, decision: &Decision) {
    let ask = &decision.ask;
    let Some(rule) = ask.rule.filter(|_| ask.is_needed()) else {
        out.push_str("null");
        return;
    };
    let _ = write!(
        out,
        "{{\"rights\":{},\"fallback_strip\":{},\"fallback_access\":{},\"askable\":{},\
         \"timeout_ms\":{},\"rule\":{rule},\"rule_name\":",
        ask.rights,
        ask.fallback_strip,
        ask.fallback_access(decision.access),
        ask.askable,
        policy.settings.ask_timeout_ms,
    );
    let name = policy.rules.get(usize::from(rule)).map_or("", |r| &*r.name);
    json_string(out, name);
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::decode_text;

    fn utf16(text: &str, big_endian: bool) -> Vec<u8> {
        let mut bytes = if big_endian {
            vec![0xFE, 0xFF]
        } else {
            vec![0xFF, 0xFE]
        };
        for unit in text.encode_utf16() {
            bytes.extend(if big_endian {
                unit.to_be_bytes()
            } else {
                unit.to_le_bytes()
            });
        }
        bytes
    }

    #[test]
    fn utf8_and_utf16_with_a_byte_order_mark_are_read() {
        let text = "[[rule]]\r\nname = \"Agënt\"\r\n";
        assert_eq!(decode_text(text.as_bytes()).as_deref(), Ok(text));
        assert_eq!(decode_text(&utf16(text, false)).as_deref(), Ok(text));
        assert_eq!(decode_text(&utf16(text, true)).as_deref(), Ok(text));
        // The UTF-8 mark stays: the TOML parser skips it.
        let marked = [&[0xEF, 0xBB, 0xBF][..], text.as_bytes()].concat();
        assert_eq!(decode_text(&marked), Ok(format!("\u{feff}{text}")));
    }

    #[test]
    fn other_encodings_are_refused_with_their_line() {
        // Windows-1252 "ë" on line 2.
        let ansi = b"[[rule]]\nname = \"Ag\xebnt\"\n";
        let message = decode_text(ansi).unwrap_err();
        assert!(
            message.starts_with("line 2: not UTF-8 text (byte 19 is 0xeb;"),
            "{message}"
        );
        assert!(
            decode_text(&[0xFF, 0xFE, b'a']).is_err(),
            "odd UTF-16 length"
        );
        assert!(
            decode_text(&[0xFF, 0xFE, 0x00, 0xD8]).is_err(),
            "unpaired surrogate"
        );
    }
}
