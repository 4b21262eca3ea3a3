//! The layering of docs/design.md ("Layers") as a rule the test suite enforces: every module
//! the crate root declares has a layer there, no module imports one of a higher layer, and
//! the modules' imports hold no circle. Imports are read from the sources as text: each
//! `crate::<module>` in the non-test code of `src/<module>.rs` and the files under
//! `src/<module>/` (comments and trailing `#[cfg(test)] mod`s left out, as in
//! `tests/core_is_pure.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every module the crate root declares.
fn crate_modules() -> Vec<String> {
    std::fs::read_to_string(root().join("src/lib.rs"))
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect()
}

/// Module -> layer, from the table under "## Layers" in docs/design.md.
fn layers() -> BTreeMap<String, u32> {
    let doc = std::fs::read_to_string(root().join("docs/design.md")).unwrap();
    let section = doc
        .split("\n## Layers")
        .nth(1)
        .expect("docs/design.md has a \"## Layers\" section");
    let section = section.split("\n## ").next().unwrap();
    let mut out = BTreeMap::new();
    for line in section.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(layer) = cells.get(1).and_then(|c| c.parse::<u32>().ok()) else {
            continue;
        };
        let modules = cells.get(2).copied().unwrap_or_default();
        for m in modules.split('`').skip(1).step_by(2) {
            assert!(
                out.insert(m.to_string(), layer).is_none(),
                "{m} is listed twice"
            );
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The files of module `m`, test files (`tests*.rs`, `*_tests.rs`) left out.
fn module_files(m: &str) -> Vec<PathBuf> {
    let src = root().join("src");
    let mut files = Vec::new();
    let file = src.join(format!("{m}.rs"));
    if file.exists() {
        files.push(file);
    }
    let dir = src.join(m);
    if dir.is_dir() {
        rust_files(&dir, &mut files);
    }
    files.retain(|f| {
        let name = f.file_stem().unwrap().to_string_lossy();
        !(name.starts_with("tests") || name.ends_with("_tests"))
    });
    files
}

/// (imported module, "file:line") for every `crate::<module>` in the non-test code of `m`.
fn imports(m: &str, modules: &BTreeSet<String>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for f in module_files(m) {
        let text = std::fs::read_to_string(&f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim();
            if t == "#[cfg(test)]"
                && lines
                    .get(i + 1)
                    .is_some_and(|n| n.trim_start().starts_with("mod "))
            {
                break;
            }
            if t.starts_with("//") {
                continue;
            }
            let code = t.split("//").next().unwrap_or_default();
            for part in code.split("crate::").skip(1) {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name != m && modules.contains(&name) {
                    let at = format!("{}:{}", f.strip_prefix(root()).unwrap().display(), i + 1);
                    out.push((name, at));
                }
            }
        }
    }
    out
}

#[test]
fn every_module_has_a_layer_and_imports_only_its_own_or_lower_ones() {
    let modules: BTreeSet<String> = crate_modules().into_iter().collect();
    let layers = layers();
    let missing: Vec<&String> = modules
        .iter()
        .filter(|m| !layers.contains_key(*m))
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a layer in docs/design.md (## Layers): {missing:?}"
    );
    let stale: Vec<&String> = layers.keys().filter(|m| !modules.contains(*m)).collect();
    assert!(
        stale.is_empty(),
        "docs/design.md lists modules that are gone: {stale:?}"
    );
    let mut up = Vec::new();
    for m in &modules {
        for (to, at) in imports(m, &modules) {
            if layers[&to] > layers[m] {
                up.push(format!(
                    "{at}: {m} (layer {}) imports {to} (layer {})",
                    layers[m], layers[&to]
                ));
            }
        }
    }
    assert!(
        up.is_empty(),
        "imports against the layering:\n{}",
        up.join("\n")
    );
}

#[test]
fn module_imports_hold_no_circle() {
    let modules: BTreeSet<String> = crate_modules().into_iter().collect();
    let graph: BTreeMap<String, BTreeMap<String, String>> = modules
        .iter()
        .map(|m| (m.clone(), imports(m, &modules).into_iter().collect()))
        .collect();
    // Depth-first search; a back edge closes a circle, reported with where each step is.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeMap<String, String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        circles: &mut Vec<String>,
    ) {
        if let Some(i) = path.iter().position(|p| p == m) {
            let cycle: Vec<String> = path[i..]
                .iter()
                .zip(path[i + 1..].iter().chain([&m.to_string()]))
                .map(|(a, b)| format!("{a} -> {b} ({})", graph[a][b]))
                .collect();
            circles.push(cycle.join(", "));
            return;
        }
        if done.contains(m) {
            return;
        }
        path.push(m.to_string());
        for to in graph[m].keys() {
            visit(to, graph, path, done, circles);
        }
        path.pop();
        done.insert(m.to_string());
    }
    let mut circles = Vec::new();
    let mut done = BTreeSet::new();
    for m in &modules {
        visit(m, &graph, &mut Vec::new(), &mut done, &mut circles);
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

/// The reader finds what it must: a circle and an upward import are seen in made-up code.
#[test]
fn the_reader_sees_imports_in_code_and_not_in_comments() {
    let modules: BTreeSet<String> = ["sink", "ledger", "stage", "pipeline"]
        .into_iter()
        .map(String::from)
        .collect();
    let got = imports("pipeline", &modules);
    assert!(
        got.iter()
            .any(|(m, at)| m == "stage" && at.starts_with("src/pipeline")),
        "{got:?}"
    );
    assert!(
        !got.iter().any(|(m, _)| m == "pipeline"),
        "a module's own path is not an import"
    );
}
