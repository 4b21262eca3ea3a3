//! "The core does no I/O" as a rule the test suite enforces: the sources of
//! `usage_aggregator::CORE_MODULES` (each `src/<m>.rs` and every file under `src/<m>/`) may
//! not name an I/O, clock or randomness API, nor import a module outside the core. Test code
//! (a trailing `#[cfg(test)] mod`, or a file declared under `#[cfg(test)]`) is exempt.

use std::path::{Path, PathBuf};

/// What the core may not name: I/O, threads and processes, the clock, randomness, and the
/// clients of the services.
const FORBIDDEN: &[&str] = &[
    "std::fs",
    "std::net",
    "std::io",
    "std::env",
    "std::process",
    "std::thread",
    "SystemTime",
    "Instant::now",
    "Utc::now",
    "Local::now",
    "rand::",
    "tokio",
    "rdkafka",
    "clickhouse",
    "axum",
    "reqwest",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every module the crate root declares.
fn crate_modules() -> Vec<String> {
    std::fs::read_to_string(src().join("lib.rs"))
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect()
}

/// The lines of non-test code of a source file: comments dropped, and everything from the
/// first `#[cfg(test)]` that opens a module onwards (test modules go last).
fn code_lines(text: &str) -> Vec<(usize, &str)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
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
        out.push((i + 1, *line));
    }
    out
}

/// Violations in one file: `file:line: token` for each forbidden name.
fn violations(file: &str, text: &str, shell: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for (n, line) in code_lines(text) {
        let code = line.split(" //").next().unwrap_or(line);
        for token in FORBIDDEN {
            if code.contains(token) {
                found.push(format!("{file}:{n}: {token}: {}", line.trim()));
            }
        }
        for m in shell {
            let path = format!("crate::{m}");
            let hit = code.match_indices(&path).any(|(i, _)| {
                !code[i + path.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
            });
            if hit {
                found.push(format!(
                    "{file}:{n}: {path} (a shell module): {}",
                    line.trim()
                ));
            }
        }
    }
    found
}

/// The source files of a core module, with whether each is test-only code.
fn files_of(module: &str) -> Vec<(PathBuf, bool)> {
    let root = src().join(format!("{module}.rs"));
    let parent = std::fs::read_to_string(&root).unwrap();
    let mut files = vec![(root, false)];
    let dir = src().join(module);
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let stem = path.file_stem().unwrap().to_string_lossy().to_string();
                let test_only = parent.contains(&format!("#[cfg(test)]\nmod {stem};"));
                files.push((path, test_only));
            }
        }
    }
    files
}

#[test]
fn the_core_names_no_io_clock_randomness_or_shell_module() {
    let modules = crate_modules();
    let core = usage_aggregator::CORE_MODULES;
    for m in core {
        assert!(
            modules.iter().any(|x| x == m),
            "core module {m} is not in lib.rs"
        );
    }
    let shell: Vec<String> = modules
        .into_iter()
        .filter(|m| !core.contains(&m.as_str()))
        .collect();
    assert!(shell.iter().any(|m| m == "pipeline") && shell.iter().any(|m| m == "sink"));
    let mut checked = 0;
    let mut found = Vec::new();
    for m in core {
        for (path, test_only) in files_of(m) {
            if test_only {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.strip_prefix(src()).unwrap().display().to_string();
            found.extend(violations(&name, &text, &shell));
            checked += 1;
        }
    }
    assert!(
        checked >= CORE_FILES_AT_LEAST,
        "only {checked} core files found"
    );
    assert!(
        found.is_empty(),
        "the rating core must stay free of I/O, clocks, randomness and shell modules (pass \
         values in from the pipeline instead):\n{}",
        found.join("\n")
    );
}

/// The credits ledger's pure files (`usage_aggregator::ledger::CORE_FILES`) name no I/O,
/// clock or randomness, and no module of the ledger's shell (stage, processors, clock,
/// client, api, cli, rows) nor any other shell module.
#[test]
fn the_ledger_core_names_no_io_clock_randomness_or_shell_module() {
    let core = usage_aggregator::CORE_MODULES;
    let mut shell: Vec<String> = crate_modules()
        .into_iter()
        .filter(|m| !core.contains(&m.as_str()) && m != "ledger")
        .collect();
    for m in [
        "stage",
        "processors",
        "clock",
        "client",
        "api",
        "cli",
        "rows",
    ] {
        shell.push(format!("ledger::{m}"));
    }
    let mut found = Vec::new();
    for f in usage_aggregator::ledger::CORE_FILES {
        let path = src().join("ledger").join(f);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("ledger core file {f}: {e}"));
        found.extend(violations(&format!("ledger/{f}"), &text, &shell));
    }
    assert!(
        found.is_empty(),
        "the ledger core must stay free of I/O, clocks, randomness and shell modules:\n{}",
        found.join("\n")
    );
}

/// event.rs, catalog.rs, rating.rs, rollup.rs, money.rs, debit.rs, rejection.rs and their
/// submodules: a lower count means the file walk broke.
const CORE_FILES_AT_LEAST: usize = 10;

#[test]
fn the_check_finds_what_it_forbids() {
    let shell = vec!["sink".to_string(), "metrics".to_string()];
    let src = "//! doc naming std::fs is fine\nuse rdkafka::Message;\nfn f() { let _ = std::fs::read(\"x\"); } // tokio in a comment\nuse crate::sink::Sink;\nuse crate::sinks_other;\nlet t = chrono::Utc::now();\n#[cfg(test)]\nmod tests {\n    use std::fs;\n}\n";
    let v = violations("x.rs", src, &shell);
    assert_eq!(v.len(), 4, "{v:#?}");
    assert!(v[0].starts_with("x.rs:2: rdkafka"));
    assert!(v[1].starts_with("x.rs:3: std::fs"));
    assert!(v[2].starts_with("x.rs:4: crate::sink"));
    assert!(v[3].starts_with("x.rs:6: Utc::now"));
}
