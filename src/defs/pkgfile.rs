//! Reads a root's `Pkgfile`: `format` (must be `v1alpha2`), `vars` and
//! `labels`. The Pkgfile is plain YAML, never a template, as in bldr.

use super::schema::Pkgfile;
use super::vars::Vars;
use super::yaml::{Node, Reader};
use crate::diag::Diagnostic;

pub const FORMAT: &str = "v1alpha2";

/// Reads the Pkgfile document (`None` for an empty file).
pub fn read_pkgfile(r: &mut Reader<'_>, root: Option<&Node<'_>>) -> (Pkgfile, Vars) {
    let mut pkgfile = Pkgfile::default();
    let mut vars = Vars::default();
    let Some(root) = root else {
        r.report.push(Diagnostic::error(
            crate::diag::Span::file_start(&r.file),
            "format",
            format!("empty Pkgfile: expected at least `format: {FORMAT}`"),
        ));
        return (pkgfile, vars);
    };
    let mut format_seen = false;
    for (key, value) in r.mapping(root, "", &["format", "vars", "labels"]) {
        match key.as_ref() {
            "format" => {
                format_seen = true;
                if let Some(f) = r.string(value, "format") {
                    if f.value != FORMAT {
                        r.report.push(
                            Diagnostic::error(
                                f.span.clone(),
                                "format",
                                format!("unsupported format `{}`", f.value),
                            )
                            .with_hint(format!("supported formats: {FORMAT}")),
                        );
                    }
                    pkgfile.format = f.value;
                }
            }
            "vars" => vars = Vars::from_node(r, value, "vars"),
            _ => {
                pkgfile.labels = r
                    .string_map(value, "labels")
                    .into_iter()
                    .map(|(k, v)| (k, v.value))
                    .collect()
            }
        }
    }
    if !format_seen {
        r.error(
            root,
            "format",
            format!("missing required field `format` (use `{FORMAT}`)"),
        );
    }
    (pkgfile, vars)
}
