//! Diagnostics: where a problem is (`Span`), what it is (`Diagnostic`), and
//! the collection a whole load produces (`Report`).
//!
//! Invariants: a `Span` always names a file; line and column are 1-based and
//! count characters, as editors do. A `Report` keeps diagnostics in the order
//! they were found, and a load never stops at the first error: every phase
//! pushes what it finds and carries on, so one run shows every problem.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A value with the place it was written.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Spanned<T> {
    pub value: T,
    #[serde(skip)]
    pub span: Span,
}

/// A position in a source file.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Span {
    pub file: Arc<Path>,
    pub line: usize,
    pub col: usize,
}

impl Span {
    pub fn new(file: &Arc<Path>, line: usize, col: usize) -> Self {
        Span {
            file: Arc::clone(file),
            line: line.max(1),
            col: col.max(1),
        }
    }

    /// The start of a file, for problems that concern the file as a whole.
    pub fn file_start(file: &Arc<Path>) -> Self {
        Span::new(file, 1, 1)
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            display_path(&self.file).display(),
            self.line,
            self.col
        )
    }
}

/// Paths are shown relative to the working directory when they lie below it,
/// so messages stay short and clickable.
pub fn display_path(path: &Path) -> PathBuf {
    match std::env::current_dir() {
        Ok(cwd) => match path.strip_prefix(&cwd) {
            Ok(rel) if !rel.as_os_str().is_empty() => rel.to_path_buf(),
            _ => path.to_path_buf(),
        },
        Err(_) => path.to_path_buf(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// One problem: where, which field, what, and (optionally) how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub span: Span,
    /// The field path inside the document, e.g. `steps[0].sources[1].sha256`;
    /// empty when the problem is not about one field.
    pub field: String,
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn error(span: Span, field: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            span,
            field: field.into(),
            message: message.into(),
            hint: None,
        }
    }

    pub fn warning(span: Span, field: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(span, field, message)
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: ", self.span, self.severity)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

/// Every diagnostic one operation produced.
#[derive(Clone, Debug, Default)]
pub struct Report {
    diagnostics: Vec<Diagnostic>,
}

impl Report {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, d: Diagnostic) {
        self.diagnostics.push(d);
    }

    pub fn extend(&mut self, other: Report) {
        self.diagnostics.extend(other.diagnostics);
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter()
    }

    pub fn errors(&self) -> usize {
        self.count(Severity::Error)
    }

    pub fn warnings(&self) -> usize {
        self.count(Severity::Warning)
    }

    pub fn has_errors(&self) -> bool {
        self.errors() > 0
    }

    pub fn is_empty(&self) -> bool {
        self.diagnostics.is_empty()
    }

    fn count(&self, severity: Severity) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == severity)
            .count()
    }

    /// Turns every warning into an error (`--strict`).
    pub fn escalate_warnings(&mut self) {
        for d in &mut self.diagnostics {
            d.severity = Severity::Error;
        }
    }

    /// Sorted by file and position, duplicates removed: the order a reader
    /// walks a tree in.
    pub fn sorted(mut self) -> Self {
        self.diagnostics
            .sort_by(|a, b| (&a.span, &a.field, &a.message).cmp(&(&b.span, &b.field, &b.message)));
        self.diagnostics.dedup();
        self
    }

    /// The one-line tally printed after a list of problems.
    pub fn summary(&self) -> String {
        format!(
            "{}, {}",
            plural(self.errors(), "error"),
            plural(self.warnings(), "warning")
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.diagnostics {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

/// `1 error`, `2 errors`: a count with its noun (plural by `s`).
pub fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// The closest of `candidates` to `word`, if close enough to be a plausible
/// typo; used for every "did you mean" hint.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(f64, &'a str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(&word.to_lowercase(), &c.to_lowercase());
        if score >= 0.8 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggest_finds_close_typo_and_ignores_far_words() {
        assert_eq!(
            suggest("dependancies", ["dependencies", "steps", "name"]),
            Some("dependencies")
        );
        assert_eq!(suggest("zzz", ["dependencies", "steps"]), None);
    }

    #[test]
    fn diagnostic_prints_file_line_col_field_and_hint() {
        let file: Arc<Path> = Arc::from(Path::new("/nonexistent/pkg.yaml"));
        let d = Diagnostic::error(Span::new(&file, 14, 9), "steps[0].sha256", "bad")
            .with_hint("did you mean `x`?");
        assert_eq!(
            d.to_string(),
            "/nonexistent/pkg.yaml:14:9: error: steps[0].sha256: bad (did you mean `x`?)"
        );
    }
}
