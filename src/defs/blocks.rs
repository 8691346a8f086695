//! The block structure of a Go template: which actions open a block, which
//! close it, and where `{{ else }}`, `{{ break }}` and `{{ define }}` may
//! stand. Checked on the source text, before the template is used.
//!
//! Why it exists: the `gotmpl` parser takes the end of the input as the
//! `{{ end }}` of every block still open, and stops at a `{{ end }}` or
//! `{{ else }}` that closes nothing, dropping the rest of the file. Go's
//! text/template (and so bldr) refuses all of them, so composer does too.
//!
//! Invariants (Go's `text/template/parse` rules):
//! - every `{{ if }}`, `{{ range }}`, `{{ with }}`, `{{ define }}` and
//!   `{{ block }}` has its `{{ end }}`; a `{{ end }}` closes one of them;
//! - `{{ else }}` stands only in `if`, `with` or `range`, at most once per
//!   block and after any `{{ else if }}`; `{{ else if }}` only in `if`,
//!   `{{ else with }}` only in `with`;
//! - `{{ define }}` only at the top level; `{{ break }}` and
//!   `{{ continue }}` only inside a `range` of the same template.
//!
//! Comments (`{{/* … */}}`) and string, raw-string and character literals
//! inside actions are skipped, so a delimiter or keyword inside them never
//! counts. The check reports the first problem in source order, with the
//! byte offset of the action it concerns.

/// A block-structure error: the byte offset of the action's left delimiter
/// and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misplaced {
    pub offset: usize,
    pub message: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    If,
    With,
    Range,
    Define,
    Block,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::If => "if",
            Kind::With => "with",
            Kind::Range => "range",
            Kind::Define => "define",
            Kind::Block => "block",
        }
    }

    /// Whether the block starts a template of its own (its body does not
    /// see an enclosing `range` for `{{ break }}`).
    fn is_template(self) -> bool {
        matches!(self, Kind::Define | Kind::Block)
    }
}

struct Open {
    kind: Kind,
    offset: usize,
    /// A plain `{{ else }}` was seen: only `{{ end }}` may follow.
    in_else: bool,
}

/// Checks the block structure of `src`, whose actions are delimited by
/// `left` and `right` (`{{`/`}}` in definitions).
pub fn check(src: &str, left: &str, right: &str) -> Result<(), Misplaced> {
    let mut stack: Vec<Open> = Vec::new();
    let mut from = 0;
    while let Some(found) = src[from..].find(left) {
        let offset = from + found;
        let action = read_action(src, offset, left, right)?;
        from = action.next;
        let words = Words::of(action.body);
        step(&mut stack, offset, words, src)?;
    }
    match stack.last() {
        None => Ok(()),
        Some(open) => Err(Misplaced {
            offset: open.offset,
            message: format!(
                "unexpected EOF: `{{{{ {} }}}}` has no matching `{{{{ end }}}}`",
                open.kind.name()
            ),
        }),
    }
}

/// The first two words of an action (keywords are identifiers).
struct Words<'a> {
    first: &'a str,
    second: &'a str,
}

impl<'a> Words<'a> {
    fn of(body: &'a str) -> Self {
        let (first, rest) = word(body);
        let (second, _) = word(rest);
        Words { first, second }
    }
}

fn word(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches(is_go_space);
    let end = s
        .char_indices()
        .find(|&(_, c)| !(c.is_alphanumeric() || c == '_'))
        .map_or(s.len(), |(i, _)| i);
    (&s[..end], &s[end..])
}

fn is_go_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Applies one action to the stack of open blocks.
fn step(stack: &mut Vec<Open>, offset: usize, w: Words, src: &str) -> Result<(), Misplaced> {
    let err = |message: String| Err(Misplaced { offset, message });
    let kind = match w.first {
        "if" => Kind::If,
        "with" => Kind::With,
        "range" => Kind::Range,
        "block" => Kind::Block,
        "define" => {
            if let Some(outer) = stack.last() {
                return err(format!(
                    "`{{{{ define }}}}` inside `{{{{ {} }}}}` ({}): templates are defined only at the top level",
                    outer.kind.name(),
                    opened_at(src, outer.offset)
                ));
            }
            Kind::Define
        }
        "end" => {
            return match stack.pop() {
                Some(_) => Ok(()),
                None => err(
                    "unexpected `{{ end }}`: no `{{ if }}`, `{{ range }}`, `{{ with }}`, \
                     `{{ define }}` or `{{ block }}` is open"
                        .into(),
                ),
            };
        }
        "else" => return step_else(stack.last_mut(), w.second, src).or_else(err),
        "break" | "continue" => {
            let in_range = stack
                .iter()
                .rev()
                .take_while(|o| !o.kind.is_template())
                .any(|o| o.kind == Kind::Range);
            return if in_range {
                Ok(())
            } else {
                err(format!("`{{{{ {} }}}}` outside `{{{{ range }}}}`", w.first))
            };
        }
        _ => return Ok(()),
    };
    stack.push(Open {
        kind,
        offset,
        in_else: false,
    });
    Ok(())
}

/// Checks an `{{ else }}`, `{{ else if }}` or `{{ else with }}` against the
/// innermost open block; the error is the message only.
fn step_else(open: Option<&mut Open>, next: &str, src: &str) -> Result<(), String> {
    let shown = match next {
        "if" | "with" => format!("`{{{{ else {next} }}}}`"),
        _ => "`{{ else }}`".to_string(),
    };
    let Some(open) = open else {
        return Err(format!(
            "unexpected {shown} outside `{{{{ if }}}}`, `{{{{ with }}}}` or `{{{{ range }}}}`"
        ));
    };
    let block = format!(
        "`{{{{ {} }}}}` ({})",
        open.kind.name(),
        opened_at(src, open.offset)
    );
    if open.kind.is_template() {
        return Err(format!("unexpected {shown} in {block}"));
    }
    if open.in_else {
        return Err(format!(
            "{shown} after `{{{{ else }}}}` in {block}: expected `{{{{ end }}}}`"
        ));
    }
    match (next, open.kind) {
        ("if", Kind::If) | ("with", Kind::With) => Ok(()),
        ("if" | "with", _) => Err(format!(
            "{shown} in {block}: only `{{{{ {next} }}}}` takes it"
        )),
        _ => {
            open.in_else = true;
            Ok(())
        }
    }
}

fn opened_at(src: &str, offset: usize) -> String {
    let (line, col) = super::template::line_col(src, offset);
    format!("opened at {line}:{col}")
}

/// One action: its body (between the delimiters and trim markers) and the
/// offset just past its right delimiter.
struct Action<'a> {
    body: &'a str,
    next: usize,
}

/// Reads the action whose left delimiter is at `offset`.
fn read_action<'a>(
    src: &'a str,
    offset: usize,
    left: &str,
    right: &str,
) -> Result<Action<'a>, Misplaced> {
    let unclosed = |what: &str| Misplaced {
        offset,
        message: format!("unclosed {what}"),
    };
    let mut start = offset + left.len();
    let rest = &src[start..];
    if rest.starts_with('-') && rest[1..].starts_with(is_go_space) {
        start += 2;
    }
    let body_start =
        start + src[start..].len() - src[start..].trim_start_matches(is_go_space).len();
    if src[body_start..].starts_with("/*") {
        let end = src[body_start + 2..]
            .find("*/")
            .ok_or_else(|| unclosed("comment"))?;
        let after = body_start + 2 + end + 2;
        let close = src[after..].find(right).ok_or_else(|| unclosed("action"))?;
        return Ok(Action {
            body: "",
            next: after + close + right.len(),
        });
    }
    let bytes = src.as_bytes();
    let mut i = start;
    while i < src.len() {
        match bytes[i] {
            q @ (b'"' | b'\'') => i = skip_quoted(bytes, i, q).ok_or_else(|| unclosed("quote"))?,
            b'`' => {
                i += 1
                    + src[i + 1..]
                        .find('`')
                        .ok_or_else(|| unclosed("raw quote"))?
                    + 1
            }
            _ if bytes[i..].starts_with(right.as_bytes()) => {
                return Ok(Action {
                    body: &src[start..i],
                    next: i + right.len(),
                });
            }
            _ => i += 1,
        }
    }
    Err(unclosed("action"))
}

/// The offset just past the closing `quote` of the literal opened at `i`,
/// backslash escapes honoured.
fn skip_quoted(bytes: &[u8], i: usize, quote: u8) -> Option<usize> {
    let mut j = i + 1;
    while j < bytes.len() {
        match bytes[j] {
            b'\\' => j += 2,
            b'\n' => return None,
            c if c == quote => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_go(src: &str) -> Result<(), Misplaced> {
        check(src, "{{", "}}")
    }

    fn fails_at(src: &str, offset: usize, words: &str) {
        let e = check_go(src).expect_err(src);
        assert_eq!(e.offset, offset, "{src}: {}", e.message);
        assert!(e.message.contains(words), "{src}: {}", e.message);
    }

    #[test]
    fn closed_blocks_and_else_chains_pass() {
        for src in [
            "",
            "plain text }} here",
            "{{ if .A }}a{{ else if .B }}b{{ else if .C }}c{{ else }}d{{ end }}",
            "{{- with .A -}}{{ . }}{{- else with .B }}b{{ else }}c{{ end -}}",
            "{{ range .L }}{{ if . }}{{ break }}{{ end }}{{ continue }}{{ else }}none{{ end }}",
            "{{ define \"x\" }}{{ if .A }}a{{ end }}{{ end }}{{ template \"x\" . }}",
            "{{ block \"b\" . }}body{{ end }}",
            "{{/* {{ if }} {{ end }} */}}{{- /* {{ else }} */ -}}",
            "{{ \"{{ if .A }}\" }}{{ `}} {{ end` }}{{ '}' }}{{ \"\\\"}}\" }}",
            "{{ iffy .A }}{{ .end }}{{ $else := 1 }}{{ ending }}",
            "{{-3}}{{ - }}",
        ] {
            assert_eq!(check_go(src), Ok(()), "{src}");
        }
    }

    #[test]
    fn unclosed_if_points_at_its_opening_action() {
        fails_at(
            "shell: {{ if eq .X \"1\" }}/bin/sh\n",
            7,
            "unexpected EOF: `{{ if }}` has no matching `{{ end }}`",
        );
    }

    #[test]
    fn innermost_unclosed_block_is_reported() {
        fails_at("{{ range .L }}{{ with . }}x{{ end }}", 0, "`{{ range }}`");
        fails_at("{{ if .A }}{{ with . }}x", 11, "`{{ with }}`");
        fails_at("{{ define \"d\" }}x", 0, "`{{ define }}`");
        fails_at("{{- block \"b\" . -}}x", 0, "`{{ block }}`");
        fails_at("{{ if .A }}a{{ else if .B }}b", 0, "`{{ if }}`");
    }

    #[test]
    fn end_without_opener_is_an_error() {
        fails_at("a{{ end }}b{{ .X }}", 1, "unexpected `{{ end }}`");
        fails_at(
            "{{ if .A }}{{ end }}{{- end -}}",
            20,
            "unexpected `{{ end }}`",
        );
    }

    #[test]
    fn else_outside_if_with_range_is_an_error() {
        fails_at("a{{ else }}b", 1, "unexpected `{{ else }}` outside");
        fails_at("{{ else if .A }}b{{ end }}", 0, "`{{ else if }}` outside");
        fails_at(
            "{{ define \"d\" }}a{{ else }}b{{ end }}",
            17,
            "unexpected `{{ else }}` in `{{ define }}` (opened at 1:1)",
        );
    }

    #[test]
    fn else_after_else_and_mismatched_else_forms_are_errors() {
        fails_at(
            "{{ if .A }}a{{ else }}b{{ else }}c{{ end }}",
            23,
            "after `{{ else }}` in `{{ if }}` (opened at 1:1): expected `{{ end }}`",
        );
        fails_at(
            "{{ if .A }}a{{ else }}b{{ else if .B }}c{{ end }}",
            23,
            "`{{ else if }}` after `{{ else }}`",
        );
        fails_at(
            "{{ range .L }}a{{ else if .B }}c{{ end }}",
            15,
            "`{{ else if }}` in `{{ range }}`",
        );
        fails_at(
            "{{ if .A }}a{{ else with .B }}c{{ end }}",
            12,
            "only `{{ with }}` takes it",
        );
    }

    #[test]
    fn define_only_at_the_top_level() {
        fails_at(
            "{{ if .A }}\n  {{ define \"d\" }}x{{ end }}{{ end }}",
            14,
            "`{{ define }}` inside `{{ if }}` (opened at 1:1)",
        );
    }

    #[test]
    fn break_and_continue_only_inside_range() {
        fails_at(
            "{{ if .A }}{{ break }}{{ end }}",
            11,
            "`{{ break }}` outside",
        );
        fails_at(
            "{{ range .L }}{{ block \"b\" . }}{{ continue }}{{ end }}{{ end }}",
            31,
            "`{{ continue }}` outside",
        );
    }

    #[test]
    fn unterminated_actions_are_errors_not_panics() {
        fails_at("a {{ if .A ", 2, "unclosed action");
        fails_at("{{ \"abc }}", 0, "unclosed quote");
        fails_at("{{ `abc }}", 0, "unclosed raw quote");
        fails_at("{{/* abc }}", 0, "unclosed comment");
        fails_at("{{ \"é\\", 0, "unclosed quote");
    }

    #[test]
    fn other_delimiters_are_honoured() {
        assert_eq!(check("[[ if .A ]]{{ end }}[[ end ]]", "[[", "]]"), Ok(()));
        assert!(check("[[ if .A ]]{{ end }}", "[[", "]]").is_err());
    }
}
