//! Comparison with Istio's own validation corpus, a directory of YAML files outside this
//! repository: every document of a `*-valid.yaml` file must produce no error; every document of a
//! `*-invalid.yaml` file must fail, and when it names the expected failure (`_err`, a field path
//! and/or Istio's message) one of our errors must contain that text (compared case-insensitively
//! as `field: message`).
//!
//! Not part of the default test run: the rules the corpus teaches are table rows of the crate's own
//! tests (`src/validate/tests.rs`). Run it with the corpus directory in `ISTIO_CORPUS_DIR`:
//!
//! ```text
//! ISTIO_CORPUS_DIR=/path/to/istio-validation cargo test -p sailplane-translator --test corpus -- --ignored
//! ```

use std::path::PathBuf;

use sailplane_translator::api::parse_object;
use sailplane_translator::diag::{Diagnostic, Severity};
use sailplane_translator::validate::validate_object;
use serde::Deserialize;

/// The corpus directory, from `ISTIO_CORPUS_DIR` (required: this test only runs when asked for).
fn corpus_dir() -> PathBuf {
    let Some(dir) = std::env::var_os("ISTIO_CORPUS_DIR").filter(|d| !d.is_empty()) else {
        panic!(
            "ISTIO_CORPUS_DIR is not set: point it at the directory of Istio's validation corpus (*-valid.yaml, *-invalid.yaml)"
        );
    };
    let dir = PathBuf::from(dir);
    assert!(dir.is_dir(), "ISTIO_CORPUS_DIR={} is not a directory", dir.display());
    dir
}

/// Parses and validates one document; returns its errors and warnings.
fn diagnose(doc: serde_json::Value) -> Vec<Diagnostic> {
    match parse_object(doc) {
        Err(d) => vec![d],
        Ok(obj) => validate_object(&obj),
    }
}

/// Documents the YAML library cannot read as Istio's Go YAML reads them. Each entry is a file, the
/// exact text that breaks the parser, its equivalent, and why. The test checks the original still
/// fails (so a fixed parser makes the entry go away) and validates the equivalent text instead.
const YAML_FIXUPS: &[(&str, &str, &str, &str)] = &[(
    "serviceentry-valid.yaml",
    "[1.2.3.4, 001:db8::]",
    "[1.2.3.4, \"001:db8::\"]",
    "libyaml (under serde_yaml_ng) refuses a plain scalar ending in ':' before ']' in a flow sequence",
)];

fn read_corpus_text(path: &std::path::Path, name: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut fixed = text.clone();
    for (file, from, to, why) in YAML_FIXUPS.iter().filter(|f| f.0 == name) {
        assert!(fixed.contains(from), "{file}: fixup text {from:?} no longer present; remove the fixup");
        let fails = serde_yaml_ng::Deserializer::from_str(&text).any(|d| serde_json::Value::deserialize(d).is_err());
        assert!(fails, "{file}: the YAML parser now reads {from:?}; remove the fixup ({why})");
        println!("note {file}: reading {from:?} as {to:?}: {why}");
        fixed = fixed.replace(from, to);
    }
    fixed
}

struct Outcome {
    label: String,
    ok: bool,
    detail: String,
}

fn run_file(path: &std::path::Path) -> Vec<Outcome> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    let expect_valid = name.ends_with("-valid.yaml");
    let text = read_corpus_text(path, &name);
    let mut outcomes = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let mut value = serde_json::Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}#{i}: bad yaml: {e}"));
        let Some(map) = value.as_object_mut() else { continue };
        let expected = map.remove("_err").and_then(|v| v.as_str().map(str::to_string));
        let doc_name =
            map.get("metadata").and_then(|m| m.get("name")).and_then(|n| n.as_str()).unwrap_or("?").to_string();
        let label = format!("{name}#{i} ({doc_name})");
        let diags = diagnose(value);
        let errors: Vec<String> = diags
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| format!("{}: {}", d.field, d.message))
            .collect();
        let (ok, detail) = if expect_valid {
            (errors.is_empty(), format!("expected no errors, got {errors:?}"))
        } else {
            match expected.as_deref().filter(|e| *e != "TODO") {
                None => (!errors.is_empty(), format!("expected an error, got {errors:?}")),
                Some(want) => {
                    let want_lc = want.to_lowercase();
                    let hit = errors.iter().any(|e| e.to_lowercase().contains(&want_lc));
                    (hit, format!("expected an error containing {want:?}, got {errors:?}"))
                }
            }
        };
        outcomes.push(Outcome { label, ok, detail });
    }
    outcomes
}

#[test]
#[ignore = "compares with Istio's corpus beside the checkout: cargo test -p sailplane-translator --test corpus -- --ignored"]
fn istio_validation_corpus() {
    let dir = corpus_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus files in {}", dir.display());

    let mut passed = 0;
    let mut failures = Vec::new();
    for f in &files {
        for o in run_file(f) {
            println!("{} {}: {}", if o.ok { "ok  " } else { "FAIL" }, o.label, o.detail);
            if o.ok {
                passed += 1;
            } else {
                failures.push(format!("{}: {}", o.label, o.detail));
            }
        }
    }
    println!("corpus: {passed} documents passed, {} failed", failures.len());
    assert!(passed > 0, "no documents were checked");
    assert!(failures.is_empty(), "corpus failures:\n{}", failures.join("\n"));
}
