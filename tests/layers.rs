//! The module layers of `docs/tech.md`, enforced: every `crate::` (and, in the binary,
//! `comfystore::`) path in `src/` must point along an arrow of the layer table, and no two
//! source files may import each other, directly or round a loop.
//!
//! The table between `<!-- layers:begin -->` and `<!-- layers:end -->` in docs/tech.md is the
//! only copy: its first column names a top-level module, its last column the modules it may
//! use. A path is read from the code as written (imports and inline paths, comments and
//! `#[cfg(test)]` code left out), so a new arrow needs a new table entry, in review.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// A module path inside a crate, e.g. `["pipeline", "fetch"]`. The binary's modules are
/// prefixed with `cli` (its `crate::` is the command line).
type ModPath = Vec<String>;

/// One source file: its module path, its text without comments and tests, and whether it is a
/// folder's `mod.rs` (or `lib.rs`/`main.rs`).
struct Source {
    file: String,
    module: ModPath,
    facade: bool,
    code: String,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The module path of a file under `src/`.
fn module_of(rel: &Path) -> (ModPath, bool) {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs").to_string();
    match stem.as_str() {
        "mod" => (parts, true),
        "lib" if parts.is_empty() => (vec![], true),
        "main" if parts.is_empty() => (vec!["cli".into()], true),
        _ => {
            parts.push(stem);
            (parts, false)
        }
    }
}

/// The code of a file without comments, string contents that span lines aside, and without
/// anything after the first `#[cfg(test)]` (unit tests are not part of the layering).
fn strip(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let code = match line.find("//") {
            // A `//` inside a string literal (URLs) is not a comment: count the quotes before it.
            Some(i) if line[..i].matches('"').count() % 2 == 0 => &line[..i],
            _ => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

fn sources() -> Vec<Source> {
    let root = src_dir();
    let mut v = Vec::new();
    for e in walkdir::WalkDir::new(&root).sort_by_file_name() {
        let e = e.expect("walk src");
        if !e.file_type().is_file() || e.path().extension().is_none_or(|x| x != "rs") {
            continue;
        }
        let rel = e.path().strip_prefix(&root).expect("under src");
        let (module, facade) = module_of(rel);
        let text = fs::read_to_string(e.path()).expect("read source");
        v.push(Source {
            file: format!("src/{}", rel.display()),
            module,
            facade,
            code: strip(&text),
        });
    }
    v
}

/// Whether `p` is a path segment character.
fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path in `code` that starts at `root::` (`crate`, `super`, `comfystore`), as the
/// segments after the root, expanding `root::{a, b::c}` groups into one path each.
fn paths_after(code: &str, root: &str) -> Vec<Vec<String>> {
    let pat = format!("{root}::");
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find(&pat) {
        let start = from + i;
        from = start + pat.len();
        let before = &code[..start];
        if before.chars().next_back().is_some_and(ident_char) || before.ends_with("::") {
            continue;
        }
        expand(&code[from..], Vec::new(), &mut out);
    }
    out
}

/// Read one path (or a `{…}` group of paths) at the start of `rest`, below `prefix`.
fn expand(rest: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let rest = rest.trim_start();
    if let Some(group) = rest.strip_prefix('{') {
        let mut depth = 0;
        let mut item = String::new();
        for c in group.chars() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&item, prefix.clone(), out);
                    item.clear();
                    continue;
                }
                _ => {}
            }
            item.push(c);
        }
        if !item.trim().is_empty() {
            expand(&item, prefix, out);
        }
        return;
    }
    let name: String = rest.chars().take_while(|c| ident_char(*c)).collect();
    if name.is_empty() {
        if !prefix.is_empty() {
            out.push(prefix);
        }
        return;
    }
    let mut path = prefix;
    path.push(name.clone());
    let after = &rest[name.len()..];
    match after.strip_prefix("::") {
        Some(more) if !more.trim_start().starts_with('<') => expand(more, path, out),
        _ => out.push(path),
    }
}

/// The module paths `src` refers to, resolved to absolute paths within the library (the
/// binary's own modules under `cli`).
fn references(src: &Source) -> Vec<ModPath> {
    let in_bin = src.module.first().is_some_and(|m| m == "cli");
    let mut v = Vec::new();
    for p in paths_after(&src.code, "crate") {
        if in_bin {
            let mut q = vec!["cli".to_string()];
            q.extend(p);
            v.push(q);
        } else {
            v.push(p);
        }
    }
    for p in paths_after(&src.code, "comfystore") {
        v.push(p);
    }
    // `super::` is relative to the file's module (a facade's module is its folder).
    let base: ModPath = if src.facade {
        src.module.clone()
    } else {
        src.module[..src.module.len().saturating_sub(1)].to_vec()
    };
    for p in paths_after(&src.code, "super") {
        let mut up = base.clone();
        let mut rest = p.as_slice();
        // `super::` at the start was consumed: one level already; further `super`s climb.
        if src.facade {
            up.pop();
        }
        while rest.first().is_some_and(|s| s == "super") {
            up.pop();
            rest = &rest[1..];
        }
        up.extend(rest.iter().cloned());
        v.push(up);
    }
    v
}

/// The file a module path lands in: its longest prefix that is a source file's module.
fn file_of<'a>(path: &ModPath, by_module: &'a BTreeMap<ModPath, String>) -> Option<&'a String> {
    (1..=path.len())
        .rev()
        .find_map(|n| by_module.get(&path[..n].to_vec()))
}

/// The layer table: module → the modules it may use.
fn table() -> BTreeMap<String, BTreeSet<String>> {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/tech.md");
    let text = fs::read_to_string(&doc).expect("docs/tech.md");
    let start = text
        .find("<!-- layers:begin -->")
        .expect("docs/tech.md has <!-- layers:begin -->");
    let end = text
        .find("<!-- layers:end -->")
        .expect("docs/tech.md has <!-- layers:end -->");
    let mut t = BTreeMap::new();
    for line in text[start..end].lines() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
        if cells.len() < 2 || !cells[0].contains('`') {
            continue;
        }
        let name = ticked(cells[0]).into_iter().next().expect("a module name");
        let uses = ticked(cells[cells.len() - 1]).into_iter().collect();
        t.insert(name, uses);
    }
    assert!(t.len() > 5, "the layer table in docs/tech.md looks empty");
    t
}

/// The `backticked` words of a table cell.
fn ticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(|s| s.trim().to_string())
        .collect()
}

/// A cycle in a directed graph, if there is one (as the list of its nodes).
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let at = stack.iter().position(|s| s == n).unwrap_or(0);
                let mut c = stack[at..].to_vec();
                c.push(n.to_string());
                return Some(c);
            }
            _ => {}
        }
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if let Some(c) = visit(n, edges, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

/// Every file-to-file import, leaving out a facade's (`mod.rs`) edges into its own folder:
/// re-exporting a child is how a folder module shows its face, not a dependency.
fn file_edges(srcs: &[Source]) -> BTreeMap<String, BTreeSet<String>> {
    let by_module: BTreeMap<ModPath, String> = srcs
        .iter()
        .map(|s| (s.module.clone(), s.file.clone()))
        .collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in srcs {
        for r in references(s) {
            let Some(target) = file_of(&r, &by_module) else {
                continue;
            };
            let inside = s.facade && r.len() > s.module.len() && r.starts_with(&s.module);
            if *target != s.file && !inside {
                edges
                    .entry(s.file.clone())
                    .or_default()
                    .insert(target.clone());
            }
        }
    }
    edges
}

#[test]
fn no_file_imports_itself_round_a_loop() {
    let edges = file_edges(&sources());
    assert!(
        edges.len() > 20,
        "too few imports found: the reader is broken"
    );
    if let Some(cycle) = find_cycle(&edges) {
        panic!("import loop between source files: {}", cycle.join(" -> "));
    }
}

#[test]
fn every_arrow_between_modules_is_in_the_layer_table() {
    let table = table();
    if let Some(cycle) = find_cycle(&table) {
        panic!(
            "the layer table in docs/tech.md has a loop: {}",
            cycle.join(" -> ")
        );
    }
    let mut bad = BTreeSet::new();
    let mut unlisted = BTreeSet::new();
    for s in sources() {
        let Some(from) = s.module.first() else {
            continue;
        };
        let Some(allowed) = table.get(from) else {
            unlisted.insert(format!("{from} ({})", s.file));
            continue;
        };
        for r in references(&s) {
            let Some(to) = r.first() else { continue };
            // `Result`, `Error`, `Store`… re-exported at the crate root count as their module.
            let to = match to.as_str() {
                "Error" | "Result" => "pipeline",
                "Store" | "ObjectId" | "Sha256" => "store",
                t => t,
            };
            // Anything else that is not a module (an item of an inline module) is not an arrow.
            if !table.contains_key(to) {
                continue;
            }
            if to != from && !allowed.contains(to) {
                bad.insert(format!("{} uses {} ({})", from, r.join("::"), s.file));
            }
        }
    }
    assert!(
        unlisted.is_empty(),
        "modules missing from the layer table in docs/tech.md: {unlisted:?}"
    );
    assert!(
        bad.is_empty(),
        "arrows the layer table in docs/tech.md does not allow:\n{}",
        bad.into_iter().collect::<Vec<_>>().join("\n")
    );
}

/// The terminal and argument crates stay at the edge: the library reports through
/// `report::Reporter` and derives clap's traits only behind the `clap` feature.
#[test]
fn the_library_knows_no_terminal_or_argument_parser() {
    let mut bad = Vec::new();
    for s in sources() {
        if s.module.first().is_some_and(|m| m == "cli") {
            continue;
        }
        for (n, line) in s.code.lines().enumerate() {
            let gated = line.contains("cfg_attr(feature = \"clap\"");
            let hit = ["anyhow", "indicatif", "tracing_subscriber", "clap::"]
                .iter()
                .any(|w| line.contains(w));
            if hit && !gated {
                bad.push(format!("{}:{}: {}", s.file, n + 1, line.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "edge crates in the library:\n{}",
        bad.join("\n")
    );
}

/// The reader itself: a group import, `super` and a loop are seen.
#[test]
fn the_import_reader_sees_groups_super_and_loops() {
    let code = "use crate::{a::X, b::{c::Y, Z}};\nfn f() { super::d::g(); }\n";
    let got = paths_after(code, "crate");
    assert_eq!(
        got,
        vec![
            vec!["a".to_string(), "X".into()],
            vec!["b".into(), "c".into(), "Y".into()],
            vec!["b".into(), "Z".into()],
        ]
    );
    let src = Source {
        file: "src/p/q.rs".into(),
        module: vec!["p".into(), "q".into()],
        facade: false,
        code: strip("// crate::ignored::X\nuse super::r::T;\n"),
    };
    assert_eq!(
        references(&src),
        vec![vec!["p".to_string(), "r".into(), "T".into()]]
    );
    let mut loop_edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    loop_edges.entry("a".into()).or_default().insert("b".into());
    loop_edges.entry("b".into()).or_default().insert("a".into());
    assert!(find_cycle(&loop_edges).is_some());
}
