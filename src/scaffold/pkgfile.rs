//! Adds variables to a Pkgfile as text, at the end of its top-level
//! `vars:` mapping, so every comment, blank line and the formatting of the
//! rest of the file stay byte for byte.
//!
//! Invariants:
//! - The result is the input with lines inserted after the mapping's last
//!   indented line, at the indentation of its first entry (after a blank
//!   line when they open with a comment), or, when the file has no
//!   `vars:`, with a `vars:` block appended. Nothing else changes; the
//!   file's line ending is kept.
//! - `add_vars` reads the result back with the definitions' own Pkgfile
//!   reader and fails unless it holds exactly the old variables plus the
//!   new ones, so an unusual layout is refused rather than damaged.

use std::path::Path;
use std::sync::Arc;

use crate::defs::Vars;
use crate::defs::pkgfile::read_pkgfile;
use crate::defs::yaml::{self, LineMap, Reader};
use crate::diag::Report;

/// The variables of a Pkgfile's text, or its problems as lines of text.
pub fn read_vars(path: &Path, text: &str) -> Result<Vars, Vec<String>> {
    let file: Arc<Path> = Arc::from(path);
    let lines = LineMap::identity();
    let mut report = Report::new();
    let vars = match yaml::parse(&file, text, &lines, &mut report) {
        Some(doc) => {
            let mut r = Reader {
                file: file.clone(),
                lines: &lines,
                report: &mut report,
            };
            read_pkgfile(&mut r, doc.as_ref()).1
        }
        None => Vars::default(),
    };
    if report.has_errors() {
        return Err(report.sorted().iter().map(|d| d.to_string()).collect());
    }
    Ok(vars)
}

/// `text` with `entries` (`NAME: value` lines, and comment lines, without
/// indentation) added at the end of its `vars:` mapping. Fails with a
/// reason when `vars:` is written inline (`vars: {a: b}`).
pub fn insert_vars(text: &str, entries: &[String]) -> Result<String, String> {
    let eol = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let Some(start) = lines.iter().position(|l| is_vars_key(l)) else {
        let mut out = text.to_string();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push_str(eol);
        }
        if !out.is_empty() {
            out.push_str(eol);
        }
        out.push_str("vars:");
        out.push_str(eol);
        for e in entries {
            out.push_str(&format!("  {e}{eol}"));
        }
        return Ok(out);
    };
    let rest = lines[start].trim_end().strip_prefix("vars:").unwrap_or("");
    if !rest.trim().is_empty() && !rest.trim_start().starts_with('#') {
        return Err(format!(
            "its `vars:` is written inline (`vars:{rest}`); write it as a block mapping, one `NAME: value` per line"
        ));
    }
    // The mapping runs until the next line that starts a top-level key.
    let end = lines[start + 1..]
        .iter()
        .position(|l| {
            let first = l.chars().next().unwrap_or(' ');
            !(first.is_whitespace() || first == '#')
        })
        .map_or(lines.len(), |i| start + 1 + i);
    let indented = |l: &&str| l.starts_with([' ', '\t']) && !l.trim().is_empty();
    let last = lines[start + 1..end]
        .iter()
        .rposition(&indented)
        .map(|i| start + 1 + i);
    let indent = lines[start + 1..end]
        .iter()
        .find(|l| indented(l) && !l.trim_start().starts_with('#'))
        .map_or(2, |l| l.len() - l.trim_start().len());
    let pad = " ".repeat(indent);
    // A group that opens with a comment is set apart by a blank line.
    let group = entries.first().is_some_and(|e| e.starts_with('#'));
    let (after, blank) = match last {
        Some(i) => (i, group),
        None => (start, false),
    };
    let mut out = String::with_capacity(text.len() + 256);
    for l in &lines[..=after] {
        out.push_str(l);
    }
    if !out.ends_with('\n') {
        out.push_str(eol);
    }
    if blank {
        out.push_str(eol);
    }
    for e in entries {
        out.push_str(&format!("{pad}{e}{eol}"));
    }
    for l in &lines[after + 1..] {
        out.push_str(l);
    }
    Ok(out)
}

fn is_vars_key(line: &str) -> bool {
    line.strip_prefix("vars")
        .map(str::trim_start)
        .is_some_and(|r| r.starts_with(':'))
}

/// `text` with `entries` added (see `insert_vars`), checked by reading it
/// back: the old variables, unchanged, plus `added` (name, value).
pub fn add_vars(
    path: &Path,
    text: &str,
    entries: &[String],
    added: &[(String, String)],
) -> Result<String, String> {
    let before = read_vars(path, text).map_err(|p| p.join("; "))?;
    let after_text = insert_vars(text, entries)?;
    let after = read_vars(path, &after_text).map_err(|p| {
        format!(
            "adding the variables would break it ({}); add them to its `vars:` by hand",
            p.join("; ")
        )
    })?;
    let kept = before
        .iter()
        .all(|(k, v)| after.get(k).is_some_and(|a| a == v));
    let new = added
        .iter()
        .all(|(k, v)| after.get(k).is_some_and(|a| a.to_string() == *v));
    if !kept || !new || after.iter().count() != before.iter().count() + added.len() {
        return Err(
            "its layout is unusual: the variables could not be added safely; add them to its `vars:` by hand"
                .to_string(),
        );
    }
    Ok(after_text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<String> {
        vec!["# renovate: x".into(), "foo_version: 1.0.0".into()]
    }

    fn added() -> Vec<(String, String)> {
        vec![("foo_version".into(), "1.0.0".into())]
    }

    #[test]
    fn vars_are_added_after_the_last_entry_keeping_comments() {
        let text = "# head\nformat: v1alpha2\n\nvars:\n  # about a\n    \n  a: 1 # trailing\n  b: |\n    two\n\n# about labels\nlabels:\n  x: y\n";
        let out = add_vars(Path::new("Pkgfile"), text, &entries(), &added()).unwrap();
        assert_eq!(
            out,
            "# head\nformat: v1alpha2\n\nvars:\n  # about a\n    \n  a: 1 # trailing\n  b: |\n    two\n\n  # renovate: x\n  foo_version: 1.0.0\n\n# about labels\nlabels:\n  x: y\n"
        );
    }

    #[test]
    fn indentation_of_the_entries_is_kept() {
        let text = "format: v1alpha2\nvars:\n    a: 1\n";
        let out = add_vars(Path::new("Pkgfile"), text, &entries(), &added()).unwrap();
        assert_eq!(
            out,
            "format: v1alpha2\nvars:\n    a: 1\n\n    # renovate: x\n    foo_version: 1.0.0\n"
        );
    }

    #[test]
    fn missing_vars_block_is_appended_and_no_final_newline_is_fine() {
        let text = "format: v1alpha2\nlabels:\n  x: y";
        let out = add_vars(Path::new("Pkgfile"), text, &entries(), &added()).unwrap();
        assert_eq!(
            out,
            "format: v1alpha2\nlabels:\n  x: y\n\nvars:\n  # renovate: x\n  foo_version: 1.0.0\n"
        );
    }

    #[test]
    fn empty_vars_gets_the_entries_right_below() {
        let text = "format: v1alpha2\nvars:\nlabels: {}\n";
        let out = insert_vars(text, &entries()).unwrap();
        assert_eq!(
            out,
            "format: v1alpha2\nvars:\n  # renovate: x\n  foo_version: 1.0.0\nlabels: {}\n"
        );
    }

    #[test]
    fn a_single_var_joins_the_list_without_a_blank_line() {
        let text = "format: v1alpha2\nvars:\n  A: 1 # note\n\nlabels: {}\n";
        let out = add_vars(
            Path::new("Pkgfile"),
            text,
            &["B: 2".to_string()],
            &[("B".into(), "2".into())],
        )
        .unwrap();
        assert_eq!(
            out,
            "format: v1alpha2\nvars:\n  A: 1 # note\n  B: 2\n\nlabels: {}\n"
        );
    }

    #[test]
    fn crlf_files_stay_crlf() {
        let text = "format: v1alpha2\r\nvars:\r\n  a: 1\r\n";
        let out = add_vars(Path::new("Pkgfile"), text, &entries(), &added()).unwrap();
        assert_eq!(
            out,
            "format: v1alpha2\r\nvars:\r\n  a: 1\r\n\r\n  # renovate: x\r\n  foo_version: 1.0.0\r\n"
        );
    }

    #[test]
    fn inline_vars_are_refused() {
        let err = insert_vars("format: v1alpha2\nvars: {a: 1}\n", &entries()).unwrap_err();
        assert!(err.contains("inline"), "{err}");
    }

    #[test]
    fn a_broken_pkgfile_is_refused() {
        let err = add_vars(
            Path::new("Pkgfile"),
            "format: v1alpha2\nvars: [\n",
            &entries(),
            &added(),
        )
        .unwrap_err();
        assert!(err.contains("invalid YAML"), "{err}");
    }
}
