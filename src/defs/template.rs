//! Go `text/template` rendering of `pkg.yaml`, `vars.yaml` and `*.tmpl`
//! files, with the sprig subset of `sprig.rs`.
//!
//! Invariants:
//! - Output is what Go's text/template produces for the same source and
//!   variables: the engine is the `gotmpl` port, missing keys print
//!   `<no value>` (Go's default `missingkey=invalid`).
//! - Every `.NAME` that the variables do not define is reported as a
//!   warning (bldr renders it silently), except a bare existence test such
//!   as `{{ if .BUILD_ARG_X }}`, which is how trees ask whether a build
//!   argument was given.
//! - What Go's parser refuses is refused, also where the `gotmpl` parser
//!   is lenient: an unclosed block, a stray `{{ end }}` or `{{ else }}`
//!   (`blocks.rs`), reported at the action concerned.
//! - Each rendered line is mapped back to its source line, so YAML errors
//!   found after rendering still point into the file the user wrote.

use std::path::Path;
use std::sync::{Arc, LazyLock};

use gotmpl::parse::{BranchNode, Expr, ListNode, Node, PipeNode};
use gotmpl::{FuncMap, Template, TemplateError};

use super::blocks;
use super::vars::Vars;
use super::yaml::LineMap;
use crate::diag::{Diagnostic, Report, Span, suggest};

static FUNCTIONS: LazyLock<FuncMap> = LazyLock::new(super::sprig::functions);

/// A rendered text and the way back to its source lines.
#[derive(Clone, Debug)]
pub struct Rendered {
    pub text: String,
    pub lines: LineMap,
}

/// Renders `src` (the contents of `file`) with `vars`. Problems go to
/// `report`; `None` when the template cannot be parsed or executed.
pub fn render(file: &Arc<Path>, src: &str, vars: &Vars, report: &mut Report) -> Option<Rendered> {
    if !src.contains("{{") {
        return Some(Rendered {
            text: src.to_string(),
            lines: LineMap::identity(),
        });
    }
    let name = file.display().to_string();
    let template = match parse(Template::new(&name).funcs(FUNCTIONS.clone()), src, &name) {
        Ok(t) => t,
        Err(e) => {
            report.push(template_error(file, src, &e));
            return None;
        }
    };
    if let Some(tree) = template.lookup(&name) {
        let mut refs = Vec::new();
        collect_list(tree, &mut Vec::new(), &mut refs);
        for (offset, var) in refs {
            if vars.contains(&var) {
                continue;
            }
            let (line, col) = line_col(src, offset);
            let mut d = Diagnostic::warning(
                Span::new(file, line, col),
                "",
                format!("undefined variable `.{var}` renders as `<no value>`"),
            );
            if let Some(arg) = var.strip_prefix("BUILD_ARG_") {
                d = d.with_hint(format!("pass it with `--build-arg {arg}=VALUE`"));
            } else if let Some(s) = suggest(&var, vars.names()) {
                d = d.with_hint(format!("did you mean `.{s}`?"));
            }
            report.push(d);
        }
    }
    match template.execute_to_string(&vars.to_value()) {
        Ok(text) => {
            let lines = line_map(src, &text);
            Some(Rendered { text, lines })
        }
        Err(e) => {
            report.push(template_error(file, src, &e));
            None
        }
    }
}

/// Renders a one-off template given on the command line (`composer eval`).
pub fn render_inline(src: &str, vars: &Vars) -> Result<String, TemplateError> {
    parse(Template::new("eval").funcs(FUNCTIONS.clone()), src, "eval")?
        .execute_to_string(&vars.to_value())
}

/// Renders a scaffolding template (the repository's `templates/`, written
/// by `composer new`): its actions are `[[ ... ]]`, so the `{{ ... }}` of
/// the definitions it produces pass through as text; a variable the
/// template uses and `vars` lacks is an error, never `<no value>`.
pub fn render_scaffold(name: &str, src: &str, vars: &Vars) -> Result<String, TemplateError> {
    let template = Template::new(name)
        .delims("[[", "]]")
        .missing_key(gotmpl::MissingKey::Error)
        .funcs(FUNCTIONS.clone())
        .parse(src)?;
    check_blocks(src, name, "[[", "]]")?;
    template.execute_to_string(&vars.to_value())
}

/// Parses `src` (`{{ }}` actions) and checks its block structure.
fn parse(template: Template, src: &str, name: &str) -> Result<Template, TemplateError> {
    let parsed = template.parse(src)?;
    check_blocks(src, name, "{{", "}}")?;
    Ok(parsed)
}

/// The block-structure errors of `blocks.rs` as parse errors with a
/// position, which is how Go reports them.
fn check_blocks(src: &str, name: &str, left: &str, right: &str) -> Result<(), TemplateError> {
    blocks::check(src, left, right).map_err(|m| {
        let (line, col) = line_col(src, m.offset);
        TemplateError::Parse {
            name: Some(name.to_string()),
            line,
            col,
            message: m.message,
        }
    })
}

fn template_error(file: &Arc<Path>, src: &str, e: &TemplateError) -> Diagnostic {
    match e {
        TemplateError::Parse {
            line, col, message, ..
        }
        | TemplateError::Lex {
            line, col, message, ..
        } => Diagnostic::error(
            Span::new(file, *line, *col),
            "",
            format!("template syntax: {message}"),
        ),
        other => {
            // Execution errors carry no position; point at the first action.
            let offset = src.find("{{").unwrap_or(0);
            let (line, col) = line_col(src, offset);
            Diagnostic::error(
                Span::new(file, line, col),
                "",
                format!("template execution: {other}"),
            )
        }
    }
}

/// 1-based line and character column of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(src.len());
    while !src.is_char_boundary(end) {
        end -= 1;
    }
    let before = &src[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Maps each rendered line to a source line with a line diff: unchanged
/// lines map exactly, lines produced by actions map to the source lines
/// they replaced.
fn line_map(src: &str, rendered: &str) -> LineMap {
    use similar::{DiffOp, TextDiff};
    let diff = TextDiff::from_lines(src, rendered);
    let mut lines = Vec::new();
    for op in diff.ops() {
        match *op {
            DiffOp::Equal {
                old_index,
                new_index: _,
                len,
            } => lines.extend((0..len).map(|i| (old_index + i + 1, true))),
            DiffOp::Delete { .. } => {}
            DiffOp::Insert {
                old_index, new_len, ..
            } => lines.extend((0..new_len).map(|_| (old_index.max(1), false))),
            DiffOp::Replace {
                old_index,
                old_len,
                new_len,
                ..
            } => lines.extend(
                (0..new_len).map(|i| (old_index + i.min(old_len.saturating_sub(1)) + 1, false)),
            ),
        }
    }
    LineMap::from_pairs(lines)
}

/// Collects `(offset, NAME)` for every `.NAME` read from the top-level
/// context. Bodies of `with` and `range` change dot and are not followed.
/// `guarded` holds the names tested by an enclosing `{{ if .NAME }}`: inside
/// that body they are known to be defined.
fn collect_list(list: &ListNode, guarded: &mut Vec<String>, out: &mut Vec<(usize, String)>) {
    for node in &list.nodes {
        match node {
            Node::List(l) => collect_list(l, guarded, out),
            Node::Action(a) => collect_pipe(&a.pipe, guarded, out),
            Node::If(b) => collect_if(b, guarded, out),
            Node::With(b) | Node::Range(b) => {
                collect_pipe(&b.pipe, guarded, out);
                if let Some(e) = &b.else_body {
                    collect_list(e, guarded, out);
                }
            }
            Node::Template(t) => {
                if let Some(p) = &t.pipe {
                    collect_pipe(p, guarded, out);
                }
            }
            _ => {}
        }
    }
}

fn collect_if(b: &BranchNode, guarded: &mut Vec<String>, out: &mut Vec<(usize, String)>) {
    let tested = match b.pipe.commands.as_slice() {
        [cmd] => match cmd.args.as_slice() {
            [Expr::Field(_, chain)] if chain.len() == 1 => Some(chain[0].to_string()),
            _ => None,
        },
        _ => None,
    };
    match &tested {
        // A bare existence test is how trees ask whether a variable is set.
        Some(name) => guarded.push(name.clone()),
        None => collect_pipe(&b.pipe, guarded, out),
    }
    collect_list(&b.body, guarded, out);
    if tested.is_some() {
        guarded.pop();
    }
    if let Some(e) = &b.else_body {
        collect_list(e, guarded, out);
    }
}

fn collect_pipe(p: &PipeNode, guarded: &[String], out: &mut Vec<(usize, String)>) {
    for cmd in &p.commands {
        for arg in &cmd.args {
            collect_expr(arg, guarded, out);
        }
    }
}

fn collect_expr(e: &Expr, guarded: &[String], out: &mut Vec<(usize, String)>) {
    match e {
        Expr::Field(pos, chain) => {
            if let Some(first) = chain.first()
                && !guarded.iter().any(|g| g == first.as_str())
            {
                out.push((pos.offset, first.to_string()));
            }
        }
        Expr::Pipe(_, p) => collect_pipe(p, guarded, out),
        Expr::Chain(_, inner, _) => collect_expr(inner, guarded, out),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gotmpl::Value;

    fn vars() -> Vars {
        let mut v = Vars::default();
        v.set("ARCH", Value::String("x86_64".into()));
        v.set("linux_version", Value::String("6.18.45".into()));
        v
    }

    fn file() -> Arc<Path> {
        Arc::from(Path::new("pkg.yaml"))
    }

    #[test]
    fn render_matches_go_for_if_else_chain_and_regex() {
        let mut report = Report::new();
        let src = "ARCH: {{ if eq .ARCH \"aarch64\"}}arm64{{ else if eq .ARCH \"x86_64\" }}x86_64{{ else }}unsupported{{ end }}\nv{{ regexReplaceAll \"(\\\\d+)(.\\\\d+)(\\\\.\\\\d+)?$\" .linux_version \"${1}\" }}.x\n";
        let r = render(&file(), src, &vars(), &mut report).unwrap();
        assert_eq!(r.text, "ARCH: x86_64\nv6.x\n");
        assert!(report.is_empty());
    }

    #[test]
    fn undefined_variable_is_a_warning_with_position_and_renders_no_value() {
        let mut report = Report::new();
        let r = render(&file(), "a: b\nc: {{ .ARHC }}\n", &vars(), &mut report).unwrap();
        assert_eq!(r.text, "a: b\nc: <no value>\n");
        let d = report.iter().next().unwrap();
        assert_eq!((d.span.line, d.span.col), (2, 7));
        assert_eq!(d.hint.as_deref(), Some("did you mean `.ARCH`?"));
    }

    #[test]
    fn bare_existence_test_of_build_arg_is_not_reported() {
        let mut report = Report::new();
        let r = render(
            &file(),
            "{{ if .BUILD_ARG_KERNEL_TARGET }}a{{ else }}b{{ end }}",
            &vars(),
            &mut report,
        )
        .unwrap();
        assert_eq!(r.text, "b");
        assert!(report.is_empty());
    }

    #[test]
    fn use_inside_its_own_existence_test_is_not_reported() {
        let mut report = Report::new();
        render(
            &file(),
            "{{ if .BUILD_ARG_T }}make {{ .BUILD_ARG_T }}{{ else }}{{ .BUILD_ARG_U }}{{ end }}",
            &vars(),
            &mut report,
        )
        .unwrap();
        let msgs: Vec<String> = report.iter().map(|d| d.message.clone()).collect();
        assert_eq!(
            msgs,
            ["undefined variable `.BUILD_ARG_U` renders as `<no value>`"]
        );
    }

    #[test]
    fn scaffold_template_keeps_go_actions_and_refuses_missing_keys() {
        let mut v = Vars::default();
        v.set("ident", Value::String("foo".into()));
        let out = render_scaffold(
            "t",
            "[[- /* a note */ -]]\nsha: \"{{ .[[ .ident ]]_sha256 }}\"\n",
            &v,
        )
        .unwrap();
        assert_eq!(out, "sha: \"{{ .foo_sha256 }}\"\n");
        assert!(render_scaffold("t", "[[ .missing ]]", &v).is_err());
    }

    #[test]
    fn syntax_error_points_at_line_and_column() {
        let mut report = Report::new();
        assert!(render(&file(), "a: 1\nb: {{ if .ARCH }\n", &vars(), &mut report).is_none());
        let d = report.iter().next().unwrap();
        assert_eq!(d.span.line, 2);
        assert!(d.message.contains("template syntax"), "{}", d.message);
    }

    #[test]
    fn unclosed_block_is_a_syntax_error_at_its_opening_action() {
        let mut report = Report::new();
        let src = "a: 1\nshell: {{ if eq .ARCH \"1\" }}/bin/sh\n";
        assert!(render(&file(), src, &vars(), &mut report).is_none());
        let d = report.iter().next().unwrap();
        assert_eq!((d.span.line, d.span.col), (2, 8));
        assert_eq!(
            d.message,
            "template syntax: unexpected EOF: `{{ if }}` has no matching `{{ end }}`"
        );
    }

    #[test]
    fn stray_end_is_refused_by_every_entry_point() {
        let e = render_inline("{{ .ARCH }}{{ end }}", &vars()).unwrap_err();
        assert!(e.to_string().contains("unexpected `{{ end }}`"), "{e}");
        let mut v = Vars::default();
        v.set("ident", Value::String("foo".into()));
        let e = render_scaffold("t", "[[ if .ident ]]x", &v).unwrap_err();
        assert!(e.to_string().contains("unexpected EOF"), "{e}");
    }

    #[test]
    fn rendered_lines_map_back_to_source_lines() {
        let src = "a: 1\n{{ if .ARCH }}\nb: 2\n{{ end }}\nc: {{ .ARCH }}\nd: 4\n";
        let mut report = Report::new();
        let r = render(&file(), src, &vars(), &mut report).unwrap();
        assert_eq!(r.text, "a: 1\n\nb: 2\n\nc: x86_64\nd: 4\n");
        assert_eq!(r.lines.map(3, 4), (3, 4));
        assert_eq!(r.lines.map(5, 4), (5, 1));
        assert_eq!(r.lines.map(6, 2), (6, 2));
    }
}
