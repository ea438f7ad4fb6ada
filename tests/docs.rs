//! The README held to the code: its tables of commands (with each command's
//! options), global options, settings keys, VM keys and exit codes against
//! the clap definitions, `HOST_SETTING_KEYS`, `VM_KEYS` and `Kind::ALL`; and
//! the man page made from the definitions names every command.

use std::collections::BTreeSet;
use std::process::Command as Process;

use clap::{Command, CommandFactory};
use project_vm::cli::Cli;
use project_vm::error::Kind;

const BIN: &str = env!("CARGO_BIN_EXE_project-vm");

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

/// The rows (cells, trimmed) of the Markdown table whose header line is
/// `header`. A `\|` inside a cell is a `|` of the cell's text.
fn table(text: &str, header: &str) -> Vec<Vec<String>> {
    let mut lines = text.lines().skip_while(|l| l.trim() != header);
    assert!(lines.next().is_some(), "README has no table headed {header:?}");
    lines
        .skip(1) // |---|---|
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let l = l.trim().trim_start_matches('|').trim_end_matches('|').replace("\\|", "\u{0}");
            l.split('|').map(|c| c.replace('\u{0}', "|").trim().to_owned()).collect()
        })
        .collect()
}

/// The first `code span` of a cell, without the backticks.
fn code(cell: &str) -> &str {
    cell.split('`').nth(1).unwrap_or(cell)
}

/// Every `--long` flag written in `text`.
fn long_flags(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("--") {
        let after = &rest[at + 2..];
        let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).unwrap_or(after.len());
        let name = after[..end].trim_end_matches('-');
        // `--` alone (before a command) is not a flag.
        if !name.is_empty() && name.starts_with(|c: char| c.is_ascii_lowercase()) {
            out.insert(name.to_owned());
        }
        rest = &after[end..];
    }
    out
}

fn root() -> Command {
    let mut c = Cli::command();
    c.build();
    c
}

/// Every command a user runs, as its words (`["image", "pull"]`): the
/// leaves of the tree, hidden ones left out.
fn leaves(cmd: &Command, above: &[String], out: &mut Vec<Vec<String>>) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        let mut path = above.to_vec();
        path.push(sub.get_name().to_owned());
        if sub.has_subcommands() {
            leaves(sub, &path, out);
        } else {
            out.push(path);
        }
    }
}

fn all_leaves() -> Vec<Vec<String>> {
    let mut out = Vec::new();
    leaves(&root(), &[], &mut out);
    out
}

fn find<'a>(root: &'a Command, path: &[String]) -> &'a Command {
    path.iter().fold(root, |c, w| c.find_subcommand(w).unwrap())
}

/// The long flags a command takes itself (not the global ones), hidden and
/// clap's own left out.
fn own_flags(cmd: &Command) -> BTreeSet<String> {
    cmd.get_arguments()
        .filter(|a| !a.is_hide_set() && !a.is_global_set())
        .filter_map(|a| a.get_long())
        .filter(|l| !matches!(*l, "help" | "version"))
        .map(String::from)
        .collect()
}

fn global_flags(root: &Command) -> BTreeSet<String> {
    root.get_arguments()
        .filter(|a| a.is_global_set() && !a.is_hide_set())
        .filter_map(|a| a.get_long())
        .map(String::from)
        .collect()
}

/// The command table's rows, each with the command it documents (the
/// leading words of its first cell that name subcommands).
fn command_rows(root: &Command) -> Vec<(Vec<String>, String)> {
    let rows = table(&readme(), "| command | options | what it does |");
    rows.iter()
        .map(|row| {
            let mut path = Vec::new();
            let mut at = root;
            for word in code(&row[0]).split_whitespace() {
                match at.find_subcommand(word) {
                    Some(sub) => {
                        path.push(word.to_owned());
                        at = sub;
                    }
                    None => break,
                }
            }
            (path, row.join(" | "))
        })
        .collect()
}

#[test]
fn the_command_table_documents_every_command_and_no_other() {
    let root = root();
    let rows = command_rows(&root);
    let documented: Vec<Vec<String>> = rows.iter().map(|(p, _)| p.clone()).collect();
    for (path, row) in &rows {
        assert!(!path.is_empty(), "a README command row names no command: {row}");
        assert!(
            !find(&root, path).has_subcommands(),
            "the README row {row} names `{}`, which is a group: document each of its commands",
            path.join(" ")
        );
    }
    let mut seen = BTreeSet::new();
    for path in &documented {
        assert!(seen.insert(path.clone()), "`{}` has two rows in the README", path.join(" "));
    }
    for leaf in all_leaves() {
        assert!(documented.contains(&leaf), "`project-vm {}` is not in the README's command table", leaf.join(" "));
    }
}

#[test]
fn each_command_row_names_exactly_that_commands_options() {
    let root = root();
    let globals = global_flags(&root);
    for (path, row) in command_rows(&root) {
        let cmd = find(&root, &path);
        let own = own_flags(cmd);
        let written = long_flags(&row);
        let name = path.join(" ");
        for flag in &written {
            assert!(
                own.contains(flag) || globals.contains(flag),
                "the README documents --{flag} for `{name}`, which has no such option (it has: {own:?})"
            );
        }
        for flag in &own {
            assert!(written.contains(flag), "`{name} --{flag}` is not documented in its README row");
        }
    }
}

#[test]
fn the_global_options_table_is_the_global_options() {
    let root = root();
    let rows = table(&readme(), "| option | environment | meaning |");
    let written: BTreeSet<String> = rows.iter().flat_map(|r| long_flags(&r[0])).collect();
    assert_eq!(written, global_flags(&root), "the README's global options");
    for arg in root.get_arguments().filter(|a| a.is_global_set() && !a.is_hide_set()) {
        let long = arg.get_long().unwrap();
        let row = rows.iter().find(|r| long_flags(&r[0]).contains(long)).unwrap();
        if let Some(short) = arg.get_short() {
            assert!(row[0].contains(&format!("`-{short}`")), "--{long}'s row does not give -{short}: {row:?}");
        }
        if let Some(env) = arg.get_env() {
            let env = env.to_str().unwrap();
            assert!(row[1].contains(env), "--{long}'s row does not name {env}: {row:?}");
        }
    }
}

#[test]
fn every_environment_variable_of_an_option_is_documented() {
    let text = readme();
    let mut all = Vec::new();
    fn walk(cmd: &Command, all: &mut Vec<(String, String)>) {
        for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(env) = a.get_env() {
                all.push((cmd.get_name().to_owned(), env.to_str().unwrap().to_owned()));
            }
        }
        for s in cmd.get_subcommands() {
            walk(s, all);
        }
    }
    walk(&root(), &mut all);
    for (cmd, env) in all {
        assert!(text.contains(&format!("`{env}`")), "{cmd}'s {env} is not in the README");
    }
}

#[test]
fn the_settings_table_is_the_host_settings_keys() {
    let rows = table(&readme(), "| key | default | meaning |");
    let written: BTreeSet<&str> = rows.iter().map(|r| code(&r[0])).collect();
    let known: BTreeSet<&str> = project_vm::settings::HOST_SETTING_KEYS.iter().copied().collect();
    assert_eq!(written, known, "the README's settings table vs HOST_SETTING_KEYS");
}

#[test]
fn the_vm_keys_table_is_the_vm_keys() {
    let rows = table(&readme(), "| VM key | meaning |");
    let written: BTreeSet<&str> = rows.iter().map(|r| code(&r[0])).collect();
    let known: BTreeSet<&str> = project_vm::config::VM_KEYS.iter().copied().collect();
    assert_eq!(written, known, "the README's VM keys table vs config::VM_KEYS");
}

#[test]
fn the_exit_code_table_is_kind_all() {
    let rows = table(&readme(), "| code | kind | meaning |");
    let rows: Vec<&Vec<String>> = rows.iter().filter(|r| r[0] != "0").collect();
    let codes: Vec<u8> = rows.iter().map(|r| r[0].parse().unwrap()).collect();
    let kinds: Vec<u8> = Kind::ALL.iter().map(|k| k.exit_code()).collect();
    assert_eq!(codes, kinds, "the README's exit codes vs Kind::ALL");
    for (row, kind) in rows.iter().zip(Kind::ALL) {
        assert_eq!(row[1], format!("{kind:?}"), "exit {}'s kind", kind.exit_code());
        assert!(
            row[2].starts_with(kind.meaning()),
            "exit {}'s meaning in the README ({:?}) does not start with Kind::meaning ({:?})",
            kind.exit_code(),
            row[2],
            kind.meaning()
        );
    }
}

#[test]
fn the_man_page_names_every_command() {
    let out = Process::new(BIN).arg("man").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH project-vm 1"), "not a man page: {}", &page[..page.len().min(300)]);
    let sections: BTreeSet<&str> =
        page.lines().filter_map(|l| l.strip_prefix(".SS \"")).map(|l| l.trim_end_matches('"')).collect();
    let root = root();
    for leaf in all_leaves() {
        let name = format!("project-vm {}", leaf.join(" "));
        assert!(sections.contains(name.as_str()), "the man page has no section for {name}: {sections:?}");
        let cmd = find(&root, &leaf);
        for flag in own_flags(cmd) {
            assert!(page.contains(&format!("\\-\\-{}", flag.replace('-', "\\-"))), "the man page lacks --{flag}");
        }
    }
    // Exit codes are in it too (up to what roff escapes: `-`, `'`).
    for kind in Kind::ALL {
        let words = kind.meaning().split(['-', '\'', '(']).next().unwrap();
        assert!(page.contains(words), "the man page lacks exit {}: {words:?}", kind.exit_code());
    }
}

/// The test's own parser, checked: a table row with an escaped `|`.
#[test]
fn the_table_reader_reads_escaped_bars_and_flags() {
    let rows =
        table("x\n| a | b |\n|---|---|\n| `x\\|y` | `--one`, `--two-words` and -- cmd |\n\nafter\n", "| a | b |");
    assert_eq!(rows, vec![vec!["`x|y`".to_owned(), "`--one`, `--two-words` and -- cmd".to_owned()]]);
    assert_eq!(long_flags(&rows[0][1]), BTreeSet::from(["one".to_owned(), "two-words".to_owned()]));
}
