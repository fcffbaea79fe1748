"""The rules the VM scripts (tests/vm/*.ps1) follow, checked on Linux.

No PowerShell runs here (Debian 12 packages none; the .NET tool needs NuGet,
which is out of reach), so the scripts are parsed with a real PowerShell
grammar: tree-sitter-powershell, through the tree-sitter bindings (both
pinned in tests/emulator/requirements.txt). A parse error or a missing token
is reported with its line and column. The rules then read the syntax tree,
not the text, so a rule is not satisfied by a comment or a string that
happens to contain the right words:

- every script: ASCII only (Windows PowerShell 5.1 reads a file without a
  byte-order mark in the ANSI code page, so UTF-8 text would be garbled);
  comment-based help before the first statement, with
  .SYNOPSIS, .DESCRIPTION and .EXAMPLE; no `&&` / `||` (PowerShell 7 only:
  the scripts target Windows PowerShell 5.1; `??`, `?.` and the ternary
  operator do not parse at all);
- every script that is run (all but the dot-sourced ProcGuard.Common.ps1):
  `#Requires -Version 5.1` and `#Requires -RunAsAdministrator`, a top-level
  `Set-StrictMode -Version Latest` and `$ErrorActionPreference = 'Stop'`,
  the shared file dot-sourced from `$PSScriptRoot`, and a top-level
  try/catch whose catch exits with a non-zero code.
"""

import re

import tree_sitter
import tree_sitter_powershell

COMMON = "ProcGuard.Common.ps1"

_PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))

# Nodes that would make a statement not top-level.
_NESTING = {"function_statement", "script_block_expression", "script_block", "class_statement"}


def parse(text):
    return _PARSER.parse(text.encode("utf-8"))


def _walk(node):
    yield node
    for child in node.children:
        yield from _walk(child)


def _position(node):
    row, column = node.start_point
    return f"line {row + 1}, column {column + 1}"


def syntax_errors(text):
    """Every ERROR and MISSING node, as 'line L, column C: ...' (1-based)."""
    errors = []

    def visit(node):
        if node.is_missing:
            errors.append(f"{_position(node)}: missing {node.type!r}")
            return
        if node.is_error:
            snippet = node.text.decode("utf-8", "replace").split("\n", 1)[0][:60]
            errors.append(f"{_position(node)}: cannot parse {snippet!r}")
            return
        for child in node.children:
            visit(child)

    visit(parse(text).root_node)
    return errors


def string_literals(text):
    """(content, line) of every string literal: the text between the quotes
    ('' unescaped in verbatim strings; expandable strings as written)."""
    found = []
    for node in _walk(parse(text).root_node):
        if node.type == "verbatim_string_characters":
            raw = node.text.decode("utf-8")
            found.append((raw[1:-1].replace("''", "'"), node.start_point[0] + 1))
        elif node.type == "expandable_string_literal":
            raw = node.text.decode("utf-8")
            found.append((raw[1:-1], node.start_point[0] + 1))
    return found


def _top_level(tree, node_type):
    """Nodes of a type that run at script level: outside functions and
    script blocks (the bodies of top-level try, catch and if included)."""
    found = []

    def visit(node):
        if node.type in _NESTING:
            return
        if node.type == node_type:
            found.append(node)
        for child in node.children:
            visit(child)

    visit(tree.root_node)
    return found


def _program_statements(tree):
    return [child for child in tree.root_node.named_children if child.type != "comment"]


def top_level_commands(tree):
    """(command name, [arguments as written], node) of script-level
    commands; the name of a dot-sourced or invoked command is '.' or '&'."""
    commands = []
    for node in _top_level(tree, "command"):
        names = [c for c in node.children if c.type in ("command_name", "command_invokation_operator")]
        if not names:
            continue
        elements = [c for c in node.children if c.type == "command_elements"]
        arguments = []
        if elements:
            arguments = [
                c.text.decode("utf-8")
                for c in elements[0].children
                if c.type != "command_argument_sep"
            ]
        commands.append((names[0].text.decode("utf-8"), arguments, node))
    return commands


def top_level_assignments(tree):
    """(variable, value as written) of script-level assignments."""
    found = []
    for node in _top_level(tree, "assignment_expression"):
        left = node.children[0].text.decode("utf-8")
        value = node.children[-1].text.decode("utf-8")
        found.append((left, value))
    return found


def requires(text):
    """The #Requires comments of the script, as (option, value) pairs."""
    found = set()
    for node in _walk(parse(text).root_node):
        if node.type != "comment":
            continue
        match = re.match(r"#requires\s+(-\w+)(?:\s+(\S+))?\s*$", node.text.decode("utf-8"), re.IGNORECASE)
        if match and node.start_point[1] == 0:
            found.add((match.group(1).lower(), (match.group(2) or "").lower()))
    return found


def help_block(tree):
    """The comment-based help: a <# #> comment before the first statement
    that has .SYNOPSIS (None if there is none)."""
    statements = _program_statements(tree)
    first = statements[0].start_byte if statements else None
    for node in tree.root_node.children:
        if node.type != "comment":
            continue
        if first is not None and node.start_byte > first:
            break
        text = node.text.decode("utf-8")
        if text.startswith("<#") and re.search(r"^\s*\.SYNOPSIS\b", text, re.MULTILINE | re.IGNORECASE):
            return text
    return None


def check_script(text, runnable=True):
    """Every rule the script breaks, as messages (empty: it follows them all)."""
    errors = syntax_errors(text)
    if errors:
        return [f"does not parse: {error}" for error in errors]
    tree = parse(text)
    problems = []

    for number, line in enumerate(text.split("\n"), 1):
        column = next((i for i, character in enumerate(line) if ord(character) > 0x7F), None)
        if column is not None:
            problems.append(f"line {number}, column {column + 1}: not ASCII ({line[column]!r})")

    help_text = help_block(tree)
    if help_text is None:
        problems.append("no comment-based help (<# .SYNOPSIS ... #>) before the first statement")
    else:
        for keyword in (".SYNOPSIS", ".DESCRIPTION", ".EXAMPLE"):
            if not re.search(rf"^\s*{re.escape(keyword)}\b", help_text, re.MULTILINE | re.IGNORECASE):
                problems.append(f"the comment-based help has no {keyword}")

    for node in _walk(tree.root_node):
        if node.type == "pipeline_chain_tail":
            problems.append(f"{_position(node)}: '&&' / '||' need PowerShell 7, not Windows PowerShell 5.1")

    if not runnable:
        return problems

    directives = requires(text)
    if ("-runasadministrator", "") not in directives:
        problems.append("no '#Requires -RunAsAdministrator'")
    if ("-version", "5.1") not in directives:
        problems.append("no '#Requires -Version 5.1'")

    commands = top_level_commands(tree)
    strict = [args for name, args, _ in commands if name.lower() == "set-strictmode"]
    if not any([a.lower() for a in args] == ["-version", "latest"] for args in strict):
        problems.append("no top-level 'Set-StrictMode -Version Latest'")

    assignments = top_level_assignments(tree)
    if not any(left.lower() == "$erroractionpreference" and value.strip("'\"").lower() == "stop" for left, value in assignments):
        problems.append("no top-level \"$ErrorActionPreference = 'Stop'\"")

    dot_sourced = [
        node for name, _, node in commands
        if name == "." and COMMON in node.text.decode("utf-8") and "$PSScriptRoot" in node.text.decode("utf-8")
    ]
    if not dot_sourced:
        problems.append(f"does not dot-source {COMMON} from $PSScriptRoot")

    exits_on_failure = False
    for try_node in _top_level(tree, "try_statement"):
        for clause in (n for n in _walk(try_node) if n.type == "catch_clause"):
            for flow in (n for n in _walk(clause) if n.type == "flow_control_statement"):
                words = flow.text.decode("utf-8").split()
                if words and words[0].lower() == "exit" and len(words) > 1 and words[1] != "0":
                    exits_on_failure = True
    if not exits_on_failure:
        problems.append("no top-level try/catch that exits with a non-zero code")
    return problems


def shared_names(text):
    """The single-string entries of the table assigned to $ProcGuard in
    ProcGuard.Common.ps1 (entries computed by a command are left out)."""
    names = {}
    tables = [
        node for node in _top_level(parse(text), "assignment_expression")
        if node.children[0].text.decode("utf-8") == "$ProcGuard"
    ]
    entries = [node for table in tables for node in _walk(table) if node.type == "hash_entry"]
    for node in entries:
        key = node.children[0].text.decode("utf-8")
        value = node.children[-1]
        literals = [n for n in _walk(value) if n.type == "verbatim_string_characters"]
        if len(literals) == 1 and value.text.decode("utf-8") == literals[0].text.decode("utf-8"):
            names[key] = literals[0].text.decode("utf-8")[1:-1].replace("''", "'")
    return names
