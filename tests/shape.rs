//! The code's shape held by a test: no import circle between the modules of
//! `src/`, and no function there longer than [`MAX_FN_LINES`] lines, each
//! long one cut into its named phases. Unit tests (`#[cfg(test)] mod`) and
//! comments do not count.
//!
//! The reading is deliberately plain: a module is a file, an edge is a
//! `crate::` or `super::` path naming another module (or an item in it), and
//! a function runs from its `fn` line to the brace that closes its body.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// "No function in src/ over about 60 lines" (the code's own rule).
const MAX_FN_LINES: usize = 60;

type Module = Vec<String>;

struct Source {
    path: PathBuf,
    module: Module,
    /// The file without unit-test modules and with comment lines blanked.
    code: String,
}

fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push(Source { module: module_of(&root, &path), code: code_only(&text), path });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn module_of(root: &Path, path: &Path) -> Module {
    let rel = path.strip_prefix(root).unwrap().with_extension("");
    let mut parts: Module = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

/// The index just past the brace that closes the one opened before `from`.
fn block_end(text: &str, from: usize) -> usize {
    let mut depth = 1usize;
    for (i, c) in text[from..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return from + i + 1;
                }
            }
            _ => {}
        }
    }
    text.len()
}

fn code_only(text: &str) -> String {
    let blanked: String =
        text.lines().map(|l| if l.trim_start().starts_with("//") { "" } else { l }).collect::<Vec<_>>().join("\n");
    let mut out = String::new();
    let mut rest = blanked.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        let after = &rest[at + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        let is_mod = trimmed.starts_with("mod ")
            && match (trimmed.find('{'), trimmed.find(';')) {
                (Some(open), Some(semi)) => open < semi,
                (Some(_), None) => true,
                _ => false,
            };
        if !is_mod {
            out.push_str(&rest[..at + "#[cfg(test)]".len()]);
            rest = after;
            continue;
        }
        out.push_str(&rest[..at]);
        let open = after.find('{').unwrap() + 1;
        let end = block_end(after, open);
        // Keep the line count: a test module's lines become empty lines.
        out.push_str(&"\n".repeat(after[..end].matches('\n').count()));
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Every function in `code`: (its name, its first line, its length in lines).
fn functions(code: &str) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, line) in code.split('\n').enumerate() {
        let tail = &code[start..];
        start += line.len() + 1;
        let Some(name) = fn_name(line) else { continue };
        // The body opens at the first `{` after the signature; a `;` first
        // means a declaration without a body (a trait's).
        let (Some(open), semi) = (tail.find('{'), tail.find(';')) else { continue };
        if semi.is_some_and(|s| s < open) {
            continue;
        }
        let end = block_end(tail, open + 1);
        let len = tail[..end].matches('\n').count() + 1;
        out.push((name, i + 1, len));
    }
    out
}

fn fn_name(line: &str) -> Option<String> {
    let mut words = line.split_whitespace().peekable();
    while let Some(w) = words.next() {
        let w = w.trim_start_matches("pub(crate)").trim_start_matches("pub(super)");
        match w {
            "" | "pub" | "async" | "const" | "unsafe" | "extern" | "\"C\"" => continue,
            _ if w.starts_with("pub(") => continue,
            "fn" => {
                let name: String = words.next()?.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                return (!name.is_empty()).then_some(name);
            }
            _ => return None,
        }
    }
    None
}

/// The modules each module names through `crate::` or `super::` paths
/// (an ancestor is not an edge: a parent declares its children).
fn imports(sources: &[Source]) -> BTreeMap<Module, BTreeSet<Module>> {
    let known: BTreeSet<&Module> = sources.iter().map(|s| &s.module).collect();
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for s in sources {
        // `super::` is the parent module, in a mod.rs as elsewhere (its
        // module is the directory's).
        let parent = s.module[..s.module.len().saturating_sub(1)].to_vec();
        for (prefix, base) in [("crate::", Vec::new()), ("super::", parent)] {
            for (at, _) in s.code.match_indices(prefix) {
                let before = s.code[..at].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                let path: String = s.code[at + prefix.len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let mut parts = base.clone();
                parts.extend(path.split("::").filter(|p| !p.is_empty()).map(str::to_owned));
                let target = (1..=parts.len()).rev().map(|k| parts[..k].to_vec()).find(|m| known.contains(m));
                if let Some(t) = target {
                    if t != s.module && !s.module.starts_with(&t) {
                        edges.entry(s.module.clone()).or_default().insert(t);
                    }
                }
            }
        }
    }
    edges
}

/// A shortest circle through `start`, if there is one.
fn circle_through(edges: &BTreeMap<Module, BTreeSet<Module>>, start: &Module) -> Option<Vec<Module>> {
    let mut prev: BTreeMap<Module, Module> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start.clone()]);
    while let Some(v) = queue.pop_front() {
        for w in edges.get(&v).into_iter().flatten() {
            if w == start {
                let mut path = vec![v.clone()];
                while let Some(p) = prev.get(path.last().unwrap()) {
                    path.push(p.clone());
                }
                path.reverse();
                path.push(start.clone());
                return Some(path);
            }
            if !prev.contains_key(w) && w != start {
                prev.insert(w.clone(), v.clone());
                queue.push_back(w.clone());
            }
        }
    }
    None
}

fn show(m: &Module) -> String {
    if m.is_empty() {
        "crate".to_owned()
    } else {
        m.join("::")
    }
}

#[test]
fn no_module_imports_itself_back() {
    let sources = sources();
    let edges = imports(&sources);
    // The reader must see the edges that exist, or it proves nothing.
    let cli = vec!["cli".to_owned()];
    assert!(
        edges.get(&vec!["run".to_owned()]).is_some_and(|e| e.contains(&cli)),
        "run uses cli, and the reader did not see it"
    );
    let circles: BTreeSet<String> = sources
        .iter()
        .filter_map(|s| circle_through(&edges, &s.module))
        .map(|c| c.iter().map(show).collect::<Vec<_>>().join(" -> "))
        .collect();
    assert!(circles.is_empty(), "import circles in src/:\n  {}", circles.into_iter().collect::<Vec<_>>().join("\n  "));
}

#[test]
fn no_function_is_longer_than_its_phases() {
    let mut long = Vec::new();
    let mut longest = 0;
    for s in sources() {
        for (name, line, len) in functions(&s.code) {
            longest = longest.max(len);
            if len > MAX_FN_LINES {
                long.push(format!("{}:{line} {name}: {len} lines", s.path.display()));
            }
        }
    }
    assert!(longest > 20, "the reader found no function of any length ({longest}): it is broken");
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines: cut each into its named phases\n  {}",
        long.join("\n  ")
    );
}

#[test]
fn the_reader_sees_a_circle_and_a_long_function() {
    let a =
        Source { path: "a.rs".into(), module: vec!["a".into()], code: code_only("use crate::b::X;\n// crate::c\n") };
    let b = Source { path: "b.rs".into(), module: vec!["b".into()], code: code_only("fn f() { crate::a::g() }\n") };
    let c = Source { path: "c.rs".into(), module: vec!["c".into()], code: code_only("use super::a;\n") };
    let edges = imports(&[a, b, c]);
    let circle = circle_through(&edges, &vec!["a".to_owned()]).expect("a -> b -> a is a circle");
    assert_eq!(circle.iter().map(show).collect::<Vec<_>>(), ["a", "b", "a"]);
    assert!(circle_through(&edges, &vec!["c".to_owned()]).is_none(), "c -> a is no circle");

    let body = format!("pub fn long(x: u8) {{\n{}}}\nfn short() {{}}\ntrait T {{ fn decl(); }}\n#[cfg(test)]\nmod tests {{\n fn hidden() {{\n{}}}\n}}\n", "  x;\n".repeat(70), "\n".repeat(99));
    let fns = functions(&code_only(&body));
    let names: Vec<_> = fns.iter().map(|(n, _, l)| (n.as_str(), *l)).collect();
    assert_eq!(names, [("long", 72), ("short", 1)]);
}
