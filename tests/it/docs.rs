//! The docs stay true to the repository: every file they cite exists, and
//! every metric the code registers is in the README's table and in the
//! module's own (and nothing else is).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `*.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The paths a Markdown text cites: link targets, and code spans that look
/// like a path in the repository (a folder and a file name with a known
/// ending).
fn cited_paths(text: &str) -> Vec<String> {
    const ENDINGS: [&str; 9] = [
        ".md", ".rs", ".json", ".yaml", ".mjs", ".sql", ".toml", ".svg", ".png",
    ];
    let mut out = Vec::new();
    for (open, close) in [("](", ")"), ("`", "`")] {
        let mut rest = text;
        while let Some(i) = rest.find(open) {
            rest = &rest[i + open.len()..];
            let Some(j) = rest.find(close) else { break };
            let candidate = &rest[..j];
            rest = &rest[j + close.len()..];
            let candidate = candidate.split('#').next().unwrap_or("");
            let looks_like_path = !candidate.contains(char::is_whitespace)
                && !candidate.contains("://")
                // `/api/v1/openapi.json` is a route, not a file.
                && !candidate.starts_with('/')
                && !candidate.contains(['*', '<', '{', '$'])
                && ENDINGS.iter().any(|e| candidate.ends_with(e))
                && (candidate.contains('/') || candidate.ends_with(".md"));
            if looks_like_path {
                out.push(candidate.to_owned());
            }
        }
    }
    out
}

#[test]
fn the_docs_cite_only_files_that_exist() {
    let root = root();
    let mut docs = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push(path);
        }
    }
    let mut missing = Vec::new();
    for doc in &docs {
        let dir = doc.parent().unwrap();
        for cited in cited_paths(&read(doc)) {
            // Module paths are written from `src/` (`forwarding/fanout.rs`).
            let found = [
                root.join(&cited),
                dir.join(&cited),
                root.join("src").join(&cited),
            ]
            .iter()
            .any(|p| p.exists());
            if !found {
                missing.push(format!("{}: {cited}", doc.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "cited but absent:\n{}",
        missing.join("\n")
    );
}

/// The metric names a Rust text registers: the first string argument of
/// `counter!`, `gauge!` and `histogram!`.
fn registered_metrics(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for mac in ["counter!(", "gauge!(", "histogram!("] {
        let mut rest = text;
        while let Some(i) = rest.find(mac) {
            rest = &rest[i + mac.len()..];
            let arg = rest.trim_start();
            if let Some(name) = arg.strip_prefix('"').and_then(|a| a.split('"').next()) {
                if name.starts_with("zen_") {
                    out.insert(name.to_owned());
                }
            }
        }
    }
    out
}

/// The metric names a table lists: every `zen_…` in its first column.
fn tabled_metrics(table: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let rows = table
        .lines()
        .map(|l| l.trim_start_matches("//!").trim_start())
        .filter(|l| l.starts_with("| `zen_"));
    for line in rows {
        let first = line.split('|').nth(1).unwrap_or("");
        for part in first.split('`') {
            if part.starts_with("zen_") {
                out.insert(part.to_owned());
            }
        }
    }
    out
}

#[test]
fn every_registered_metric_is_documented_and_nothing_else() {
    let root = root();
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut registered = BTreeSet::new();
    for f in files.iter().filter(|f| !f.ends_with("bin/zen-loadgen.rs")) {
        registered.extend(registered_metrics(&read(f)));
    }
    assert!(registered.len() > 10, "{registered:?}");
    let readme = read(&root.join("README.md"));
    let section = &readme[readme.find("## Metrics").expect("a Metrics section")..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let module = read(&root.join("src/metrics.rs"));
    for (name, table) in [("README.md", section), ("src/metrics.rs", module.as_str())] {
        let listed = tabled_metrics(table);
        let undocumented: Vec<_> = registered.difference(&listed).collect();
        let stale: Vec<_> = listed.difference(&registered).collect();
        assert!(
            undocumented.is_empty() && stale.is_empty(),
            "{name}: registered but not listed {undocumented:?}; listed but never registered {stale:?}"
        );
    }
}
