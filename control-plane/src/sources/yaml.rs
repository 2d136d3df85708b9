//! Reading multi-document YAML (or JSON) text into typed objects and diagnostics.

use sailplane_translator::Diagnostic;
use sailplane_translator::api::{Object, parse_object};
use serde::Deserialize;

/// Parses every document of `text`. `source` names the text in diagnostics (a file path); each
/// diagnostic's source is `<source>#<document index>` (0-based), or `<source>:<line>` for syntax
/// errors. Documents that fail are skipped; the others are returned.
pub fn parse_documents(source: &str, text: &str) -> (Vec<Object>, Vec<Diagnostic>) {
    let mut objects = Vec::new();
    let mut diagnostics = Vec::new();
    for (index, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = match serde_json::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                let at = e
                    .location()
                    .map(|l| format!("{source}:{}:{}", l.line(), l.column()))
                    .unwrap_or_else(|| format!("{source}#{index}"));
                diagnostics.push(Diagnostic::error("<document>", "", format!("invalid yaml: {e}")).with_source(at));
                // After a syntax error the rest of the stream cannot be trusted.
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        if !value.is_object() {
            diagnostics.push(
                Diagnostic::error("<document>", "", "a document must be a mapping with apiVersion, kind and metadata")
                    .with_source(format!("{source}#{index}")),
            );
            continue;
        }
        if value.get("kind").and_then(|k| k.as_str()) == Some("List") {
            let items = value.get("items").and_then(|i| i.as_array()).cloned().unwrap_or_default();
            for (i, item) in items.into_iter().enumerate() {
                match parse_object(item) {
                    Ok(o) => objects.push(o),
                    Err(d) => diagnostics.push(d.with_source(format!("{source}#{index}.items[{i}]"))),
                }
            }
            continue;
        }
        match parse_object(value) {
            Ok(o) => objects.push(o),
            Err(d) => diagnostics.push(d.with_source(format!("{source}#{index}"))),
        }
    }
    (objects, diagnostics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_documents_survive_bad_neighbours() {
        let text = r#"
apiVersion: v1
kind: Namespace
metadata: {name: a}
---
apiVersion: v1
kind: Widget
metadata: {name: w}
---
apiVersion: v1
kind: Service
metadata: {name: s, namespace: a}
spec:
  ports: [{port: "x"}]
---
---
apiVersion: v1
kind: Namespace
metadata: {name: b}
"#;
        let (objects, diags) = parse_documents("dir/a.yaml", text);
        assert_eq!(objects.len(), 2);
        assert_eq!(diags.len(), 2, "{diags:?}");
        assert_eq!(diags[0].source.as_deref(), Some("dir/a.yaml#1"));
        assert_eq!(diags[0].field, "kind");
        assert_eq!(diags[1].source.as_deref(), Some("dir/a.yaml#2"));
        assert_eq!(diags[1].object, "Service a/s");
        assert_eq!(diags[1].field, "spec.ports[0].port");
    }

    #[test]
    fn syntax_errors_carry_a_line() {
        let (objects, diags) = parse_documents("bad.yaml", "kind: [unclosed\n");
        assert!(objects.is_empty());
        assert_eq!(diags.len(), 1);
        let src = diags[0].source.clone().unwrap_or_default();
        assert!(src.starts_with("bad.yaml:"), "{src}");
        assert!(diags[0].message.starts_with("invalid yaml"), "{}", diags[0].message);
    }
}
