//! Diagnostics: invalid user input as data, naming the object and the field.

use std::fmt;

use serde::Serialize;

/// How bad a problem is. Errors mean the object (or part of it) was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Accepted, but probably not what the user meant.
    Warning,
    /// Rejected: the object or the field was not used.
    Error,
}

/// One problem found in user input.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Where the object came from (a file path and document index), when known.
    pub source: Option<String>,
    /// `Kind namespace/name` of the object, or `Kind` alone when the name is unknown.
    pub object: String,
    /// Dotted field path inside the object (`spec.ports[0].number`), empty for the whole object.
    pub field: String,
    /// Lowercase message saying what is wrong.
    pub message: String,
}

impl Diagnostic {
    /// An error on `object` at `field`.
    pub fn error(object: impl Into<String>, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            source: None,
            object: object.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// A warning on `object` at `field`.
    pub fn warning(object: impl Into<String>, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { severity: Severity::Warning, ..Self::error(object, field, message) }
    }

    /// The same diagnostic, attributed to `source` (for example `dir/app.yaml#2`).
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(source) = &self.source {
            write!(f, "{source}: ")?;
        }
        let sev = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{sev}: {}", self.object)?;
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}
