//! YAML reading with positions: parses text into saphyr's marked tree and
//! offers typed accessors that report every problem (wrong type, unknown
//! key, missing field) into a `Report` instead of stopping.
//!
//! Invariants:
//! - Scalars are read from their source representation (saphyr's
//!   `early_parse` is off): bldr decodes every field and variable into Go
//!   strings, and yaml.v3 then keeps the scalar's text, so `4.20` stays
//!   `4.20` and `0755` stays `0755`.
//! - A string field accepts any scalar, as yaml.v3 does; `null`/`~`/empty is
//!   treated as absent.
//! - Positions are mapped back through a `LineMap` to the file the user
//!   wrote, when the text was produced by a template.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use saphyr::{MarkedYaml, Scalar, ScalarStyle, YamlData, YamlLoader};
use saphyr_parser::Parser;

use crate::diag::{Diagnostic, Report, Span, Spanned, suggest};

/// Maps lines of a rendered text back to lines of its source template.
/// `exact[i]` is true when rendered line `i+1` equals a source line verbatim
/// (its columns are then exact too).
#[derive(Clone, Debug, Default)]
pub struct LineMap {
    lines: Vec<(usize, bool)>,
}

impl LineMap {
    /// The identity map, for text that was not rendered.
    pub fn identity() -> Self {
        LineMap { lines: Vec::new() }
    }

    pub fn from_pairs(lines: Vec<(usize, bool)>) -> Self {
        LineMap { lines }
    }

    /// Source (line, column) for a rendered (line, column), both 1-based.
    pub fn map(&self, line: usize, col: usize) -> (usize, usize) {
        match self.lines.get(line.wrapping_sub(1)) {
            None => (line, col),
            Some(&(src, true)) => (src, col),
            // The line was produced by template actions: the column in the
            // rendered text says little about the source, point at the line.
            Some(&(src, false)) => (src, 1),
        }
    }
}

/// A parse result: the document's root node (None for an empty document).
pub type Node<'a> = MarkedYaml<'a>;

/// Parses `text` as one YAML document. Syntax errors are reported with the
/// file position and give `None`; an empty document gives `Some(None)`.
pub fn parse<'a>(
    file: &Arc<Path>,
    text: &'a str,
    lines: &LineMap,
    report: &mut Report,
) -> Option<Option<Node<'a>>> {
    let mut parser = Parser::new_from_str(text);
    let mut loader: YamlLoader<'a, Node<'a>> = YamlLoader::default();
    loader.early_parse(false);
    let result = parser.load(&mut loader, true);
    let error = result.err().or_else(|| loader.error().cloned());
    if let Some(e) = error {
        let (line, col) = lines.map(e.marker().line(), e.marker().col() + 1);
        report.push(Diagnostic::error(
            Span::new(file, line, col),
            "",
            format!("invalid YAML: {}", e.info()),
        ));
        return None;
    }
    let mut docs = loader.into_documents();
    if docs.len() > 1 {
        report.push(Diagnostic::error(
            Span::file_start(file),
            "",
            format!("expected one YAML document, found {}", docs.len()),
        ));
        return None;
    }
    Some(docs.pop().filter(|d| !is_null(d)))
}

/// yaml.v3's null: a plain `~`, `null`, `Null`, `NULL` or nothing at all,
/// or an explicit `!!null` tag.
pub fn is_null(node: &Node<'_>) -> bool {
    match &node.data {
        YamlData::Representation(text, style, tag) => {
            tag.as_ref().is_some_and(|t| t.suffix == "null")
                || (*style == ScalarStyle::Plain
                    && matches!(text.as_ref(), "" | "~" | "null" | "Null" | "NULL"))
        }
        YamlData::Value(Scalar::Null) => true,
        _ => false,
    }
}

/// Typed access to a document, collecting problems into `report`.
pub struct Reader<'r> {
    pub file: Arc<Path>,
    pub lines: &'r LineMap,
    pub report: &'r mut Report,
}

impl<'r> Reader<'r> {
    pub fn span(&self, node: &Node<'_>) -> Span {
        let m = node.span.start;
        let (line, col) = self.lines.map(m.line(), m.col() + 1);
        Span::new(&self.file, line, col)
    }

    pub fn error(&mut self, node: &Node<'_>, field: &str, message: impl Into<String>) {
        let span = self.span(node);
        self.report.push(Diagnostic::error(span, field, message));
    }

    /// The entries of a mapping. Keys not in `known` are reported with a
    /// "did you mean" hint and skipped; a non-mapping is reported and gives
    /// nothing; `null` gives nothing silently.
    pub fn mapping<'n, 'a>(
        &mut self,
        node: &'n Node<'a>,
        field: &str,
        known: &[&str],
    ) -> Vec<(Cow<'n, str>, &'n Node<'a>)> {
        let mut out = Vec::new();
        match &node.data {
            YamlData::Mapping(map) => {
                for (k, v) in map.iter() {
                    let Some(key) = self.key(k, field) else {
                        continue;
                    };
                    if !known.is_empty() && !known.contains(&key.as_ref()) {
                        let path = join(field, &key);
                        let mut d = Diagnostic::error(self.span(k), path, "unknown key");
                        if let Some(s) = suggest(&key, known.iter().copied()) {
                            d = d.with_hint(format!("did you mean `{s}`?"));
                        } else {
                            d = d.with_hint(format!("expected one of: {}", known.join(", ")));
                        }
                        self.report.push(d);
                        continue;
                    }
                    out.push((key, v));
                }
            }
            _ if is_null(node) => {}
            _ => self.error(
                node,
                field,
                format!("expected a mapping, got {}", kind(node)),
            ),
        }
        out
    }

    fn key<'n>(&mut self, k: &'n Node<'_>, field: &str) -> Option<Cow<'n, str>> {
        match &k.data {
            YamlData::Representation(text, _, _) => Some(Cow::Borrowed(text.as_ref())),
            _ => {
                self.error(k, field, format!("expected a string key, got {}", kind(k)));
                None
            }
        }
    }

    /// The items of a sequence; `null` is an empty sequence.
    pub fn sequence<'n, 'a>(&mut self, node: &'n Node<'a>, field: &str) -> Vec<&'n Node<'a>> {
        match &node.data {
            YamlData::Sequence(items) => items.iter().collect(),
            _ if is_null(node) => Vec::new(),
            _ => {
                self.error(node, field, format!("expected a list, got {}", kind(node)));
                Vec::new()
            }
        }
    }

    /// A scalar as text (any scalar is accepted, as yaml.v3 does for string
    /// fields); `null` is `None`.
    pub fn string(&mut self, node: &Node<'_>, field: &str) -> Option<Spanned<String>> {
        match &node.data {
            _ if is_null(node) => None,
            YamlData::Representation(text, _, _) => Some(Spanned {
                value: text.to_string(),
                span: self.span(node),
            }),
            _ => {
                self.error(
                    node,
                    field,
                    format!("expected a string, got {}", kind(node)),
                );
                None
            }
        }
    }

    /// A boolean; yaml.v3 also accepts the YAML 1.1 words for bool fields.
    pub fn boolean(&mut self, node: &Node<'_>, field: &str) -> Option<bool> {
        if let YamlData::Representation(text, ScalarStyle::Plain, _) = &node.data {
            match text.as_ref() {
                "true" | "True" | "TRUE" | "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On"
                | "ON" => return Some(true),
                "false" | "False" | "FALSE" | "n" | "N" | "no" | "No" | "NO" | "off" | "Off"
                | "OFF" => return Some(false),
                _ => {}
            }
        }
        if is_null(node) {
            return None;
        }
        self.error(
            node,
            field,
            format!("expected true or false, got {}", kind(node)),
        );
        None
    }

    /// A list of strings (a lone string is an error, as in bldr).
    pub fn strings(&mut self, node: &Node<'_>, field: &str) -> Vec<Spanned<String>> {
        let items = self.sequence(node, field);
        let mut out = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            if let Some(s) = self.string(item, &format!("{field}[{i}]")) {
                out.push(s);
            }
        }
        out
    }

    /// A mapping of string to string (environment, labels).
    pub fn string_map(&mut self, node: &Node<'_>, field: &str) -> Vec<(String, Spanned<String>)> {
        let mut out = Vec::new();
        for (k, v) in self.mapping(node, field, &[]) {
            let path = join(field, &k);
            let value = self.string(v, &path).unwrap_or_else(|| Spanned {
                value: String::new(),
                span: self.span(v),
            });
            out.push((k.into_owned(), value));
        }
        out
    }
}

/// `a.b`, or just `b` at the top level.
pub fn join(field: &str, key: &str) -> String {
    if field.is_empty() {
        key.to_string()
    } else {
        format!("{field}.{key}")
    }
}

/// A node's kind, for messages.
pub fn kind(node: &Node<'_>) -> &'static str {
    match &node.data {
        YamlData::Mapping(_) => "a mapping",
        YamlData::Sequence(_) => "a list",
        YamlData::Representation(..) | YamlData::Value(_) => "a scalar",
        YamlData::Alias(_) => "an alias",
        YamlData::Tagged(..) => "a tagged node",
        _ => "an invalid node",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_reports_unknown_key_with_position_and_hint() {
        let file: Arc<Path> = Arc::from(Path::new("x.yaml"));
        let mut report = Report::new();
        let lines = LineMap::identity();
        let text = "name: a\nstpes: []\n";
        let root = parse(&file, text, &lines, &mut report).unwrap().unwrap();
        let mut r = Reader {
            file: file.clone(),
            lines: &lines,
            report: &mut report,
        };
        let entries = r.mapping(&root, "", &["name", "steps"]);
        assert_eq!(entries.len(), 1);
        let d = report.iter().next().unwrap();
        assert_eq!((d.span.line, d.span.col), (2, 1));
        assert_eq!(d.field, "stpes");
        assert_eq!(d.hint.as_deref(), Some("did you mean `steps`?"));
    }

    #[test]
    fn parse_reports_syntax_error_position() {
        let file: Arc<Path> = Arc::from(Path::new("x.yaml"));
        let mut report = Report::new();
        assert!(parse(&file, "a: [1, 2\nb: c\n", &LineMap::identity(), &mut report).is_none());
        assert_eq!(report.errors(), 1);
    }
}
