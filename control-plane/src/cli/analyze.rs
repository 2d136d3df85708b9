//! `sailplane analyze FILE|DIR...`: checks Istio configuration the way Istio's validating webhook
//! and `istioctl analyze` would, without a cluster.
//!
//! Input: YAML files (multi-document, `List` kinds included) and directories of them (searched
//! recursively for `.yaml`, `.yml` and `.json`). Output: one line per problem on stdout,
//! `file: severity: Kind namespace/name: field.path: message`, and a summary on stderr. The exit code
//! is 1 when any error was found (including files that do not parse), 0 otherwise; warnings alone
//! keep 0, like `istioctl analyze --failure-threshold Error`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sailplane_translator::Diagnostic;
use sailplane_translator::api::Object;
use sailplane_translator::diag::Severity;
use sailplane_translator::validate::{validate_object, validate_set};

use crate::sources::yaml::parse_documents;

/// Arguments of `sailplane analyze`.
#[derive(Debug, Clone, clap::Args)]
pub struct AnalyzeArgs {
    /// YAML files or directories (searched recursively) to check.
    #[arg(required = true, value_name = "FILE|DIR")]
    pub paths: Vec<PathBuf>,
}

/// Runs the analysis, printing problems to stdout and a summary to stderr; returns the exit code.
pub fn run(args: &AnalyzeArgs) -> anyhow::Result<i32> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let report = analyze(&args.paths)?;
    for d in &report.diagnostics {
        writeln!(out, "{}", one_line(d))?;
    }
    out.flush()?;
    eprintln!("{}", report.summary());
    Ok(report.exit_code())
}

/// What one analysis found.
#[derive(Debug, Default)]
pub struct Report {
    /// Every problem, in file order; cross-object findings after the per-object ones.
    pub diagnostics: Vec<Diagnostic>,
    /// Number of objects read.
    pub objects: usize,
    /// Number of files read.
    pub files: usize,
}

impl Report {
    /// Number of errors.
    pub fn errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.severity == Severity::Error).count()
    }

    /// 1 when there is an error, else 0.
    pub fn exit_code(&self) -> i32 {
        i32::from(self.errors() > 0)
    }

    /// A one-line summary.
    pub fn summary(&self) -> String {
        let errors = self.errors();
        let warnings = self.diagnostics.len() - errors;
        if self.diagnostics.is_empty() {
            format!("no validation issues found ({} objects in {} files)", self.objects, self.files)
        } else {
            format!("{errors} errors, {warnings} warnings ({} objects in {} files)", self.objects, self.files)
        }
    }
}

/// Reads and checks every object under `paths`.
pub fn analyze(paths: &[PathBuf]) -> anyhow::Result<Report> {
    let mut files = Vec::new();
    for p in paths {
        collect_files(p, &mut files)?;
    }
    let mut report = Report { files: files.len(), ..Report::default() };
    // Objects with the file they came from, so cross-object findings can name it too.
    let mut objects: Vec<(String, Object)> = Vec::new();
    for f in &files {
        let source = f.display().to_string();
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {source}"))?;
        let (objs, diags) = parse_documents(&source, &text);
        report.diagnostics.extend(diags);
        for o in objs {
            report.diagnostics.extend(validate_object(&o).into_iter().map(|d| d.with_source(source.clone())));
            objects.push((source.clone(), o));
        }
    }
    report.objects = objects.len();
    let source_of: BTreeMap<String, &str> = objects.iter().map(|(s, o)| (o.key().to_string(), s.as_str())).collect();
    let all: Vec<&Object> = objects.iter().map(|(_, o)| o).collect();
    for d in validate_set(&all) {
        let d = match source_of.get(&d.object) {
            Some(s) => d.with_source(*s),
            None => d,
        };
        report.diagnostics.push(d);
    }
    Ok(report)
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("no such file or directory: {}", path.display()))?;
    if meta.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    if !meta.is_dir() {
        bail!("not a file or directory: {}", path.display());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("listing {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for e in entries {
        if e.is_dir() {
            collect_files(&e, out)?;
        } else if e.extension().and_then(|x| x.to_str()).is_some_and(|x| matches!(x, "yaml" | "yml" | "json")) {
            out.push(e);
        }
    }
    Ok(())
}

/// A diagnostic on exactly one line (messages from YAML errors may carry newlines).
fn one_line(d: &Diagnostic) -> String {
    d.to_string().replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    const GOOD: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  ports: [{name: http, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
"#;

    #[test]
    fn valid_config_exits_zero_and_reports_nothing() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "app.yaml", GOOD);
        let report = analyze(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(report.objects, 3);
        assert!(report.diagnostics.is_empty(), "{:?}", report.diagnostics);
        assert_eq!(report.exit_code(), 0);
    }

    #[test]
    fn invalid_object_exits_one_with_one_line_per_problem() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "app.yaml", GOOD);
        let bad = write(
            dir.path(),
            "nested/bad.yml",
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
      weight: -5
"#,
        );
        let report = analyze(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(report.exit_code(), 1);
        let lines: Vec<String> = report.diagnostics.iter().map(one_line).collect();
        let weight = lines
            .iter()
            .find(|l| l.contains("spec.http[0].route[0].weight"))
            .unwrap_or_else(|| panic!("no weight error in {lines:?}"));
        assert!(weight.starts_with(&format!("{}: error: VirtualService default/broken: ", bad.display())), "{weight}");
        // Two VirtualServices for one mesh host: a warning on each, not an error.
        assert_eq!(lines.iter().filter(|l| l.contains("define the same host")).count(), 2, "{lines:?}");
        assert!(lines.iter().all(|l| !l.contains('\n')));
    }

    #[test]
    fn warnings_alone_exit_zero() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "pa.yaml",
            r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: all, namespace: default}
spec:
  selector: {}
  mtls: {mode: STRICT}
"#,
        );
        let report = analyze(&[f]).unwrap();
        assert_eq!(report.diagnostics.len(), 1, "{:?}", report.diagnostics);
        assert_eq!(report.diagnostics[0].severity, Severity::Warning);
        assert_eq!(report.exit_code(), 0);
    }

    #[test]
    fn unparsable_documents_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "typo.yaml",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x}\nspec: {hosts: [a.com], resolutin: DNS}\n",
        );
        let report = analyze(&[f]).unwrap();
        assert_eq!(report.exit_code(), 1);
        assert_eq!(report.diagnostics[0].field, "spec.resolutin");
    }

    #[test]
    fn run_returns_the_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(dir.path(), "good/app.yaml", GOOD);
        let bad = write(
            dir.path(),
            "bad/se.yaml",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x}\nspec: {hosts: ['*']}\n",
        );
        assert_eq!(run(&AnalyzeArgs { paths: vec![good] }).unwrap(), 0);
        assert_eq!(run(&AnalyzeArgs { paths: vec![bad] }).unwrap(), 1);
    }

    #[test]
    fn missing_path_is_an_error() {
        let err = analyze(&[PathBuf::from("/definitely/not/here.yaml")]).unwrap_err();
        assert!(err.to_string().contains("no such file"), "{err}");
    }
}
