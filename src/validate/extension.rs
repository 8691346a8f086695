//! `extension-layout` and `extension-manifest`: the shape of a Talos
//! system extension image, as Talos' loader (`extensions.Load`) and Sidero
//! Labs' extensions-validator check it.
//!
//! Layout: the image root holds exactly `manifest.yaml` (a regular file)
//! and `rootfs/` (a directory). Talos' messages are kept: `unexpected file
//! "a"`, `extension manifest is missing`, `extension rootfs is missing`.
//! Composer is stricter in one place: Talos accepts any `rootfs` entry,
//! composer requires a directory (not a symlink to one).
//!
//! Manifest: `version: v1alpha1` (Talos: `unsupported manifest version:
//! ""`); `metadata.name`, `.version`, `.author`, `.description` present and
//! non-empty (Talos only needs the manifest to be non-zero; composer needs
//! what an installer and a user will show); `metadata.name` equal to the
//! package's name when one is known (extensions-validator's `--pkg-name`);
//! `compatibility.talos.version`, when present, a range Talos can parse,
//! and admitting the Talos version given in the context (Talos'
//! `validateConstraints`).
//!
//! `metadata.version` in none of extensions-validator's formats is a
//! WARNING, not an error: Talos' own loader does not check the format at
//! all, and its known-good test extension uses `20220117.0-v1.0.0`, which
//! none of those formats match — such an extension installs and boots.
//! Unknown keys are warnings too: Talos' YAML decoding ignores them, but
//! they are usually typos (`compatability`). YAML errors carry line:col.

use std::path::Path;
use std::sync::Arc;

use saphyr::YamlData;

use super::version::{parse_range, parse_talos_version, trim, version_format, version_formats};
use super::{Context, Kind, Rule, Severity, Sink, Tree};
use crate::defs::yaml::{self, LineMap, Node, Reader};
use crate::diag::{Diagnostic, Report as DiagReport, suggest};

/// A manifest larger than this is not read (real ones are < 1 KiB).
const MAX_MANIFEST: u64 = 1 << 20;

pub struct Layout;

impl Rule for Layout {
    fn name(&self) -> &'static str {
        "extension-layout"
    }

    fn description(&self) -> &'static str {
        "the image root holds exactly manifest.yaml (a file) and rootfs/ (a directory)"
    }

    fn severity(&self) -> Severity {
        Severity::Error
    }

    fn applies_to(&self) -> &'static [Kind] {
        &[Kind::Extension]
    }

    fn check(&self, tree: &Tree<'_>, _ctx: &Context, out: &mut Sink) {
        let entries = match std::fs::read_dir(tree.root) {
            Ok(rd) => rd,
            Err(e) => {
                out.push("/", format!("cannot read: {e}"));
                return;
            }
        };
        let mut names: Vec<(String, Option<std::fs::FileType>)> = entries
            .filter_map(Result::ok)
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.file_type().ok(),
                )
            })
            .collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        let (mut manifest, mut rootfs) = (false, false);
        for (name, ft) in &names {
            match name.as_str() {
                "manifest.yaml" => {
                    manifest = true;
                    if !ft.is_some_and(|t| t.is_file()) {
                        out.push("/manifest.yaml", "extension manifest is not a regular file");
                    }
                }
                "rootfs" => {
                    rootfs = true;
                    if !ft.is_some_and(|t| t.is_dir()) {
                        out.push(
                            "/rootfs",
                            "extension rootfs is not a directory (a symlink is not followed)",
                        );
                    }
                }
                other => out.push(format!("/{other}"), format!("unexpected file {other:?}")),
            }
        }
        if !manifest {
            out.push("/manifest.yaml", "extension manifest is missing");
        }
        if !rootfs {
            out.push("/rootfs", "extension rootfs is missing");
        }
    }
}

pub struct Manifest;

impl Rule for Manifest {
    fn name(&self) -> &'static str {
        "extension-manifest"
    }

    fn description(&self) -> &'static str {
        "manifest.yaml: version v1alpha1, metadata name/version/author/description, name = package, a Talos version range Talos can parse"
    }

    fn severity(&self) -> Severity {
        Severity::Error
    }

    fn applies_to(&self) -> &'static [Kind] {
        &[Kind::Extension]
    }

    fn check(&self, tree: &Tree<'_>, ctx: &Context, out: &mut Sink) {
        let path = tree.root.join("manifest.yaml");
        // A missing or odd manifest is extension-layout's finding.
        let Ok(meta) = path.symlink_metadata() else {
            return;
        };
        if !meta.is_file() {
            return;
        }
        if meta.len() > MAX_MANIFEST {
            out.push(
                "/manifest.yaml",
                format!("{} bytes: a manifest is a few lines; not read", meta.len()),
            );
            return;
        }
        let text = match std::fs::read(&path) {
            Ok(b) => match String::from_utf8(b) {
                Ok(t) => t,
                Err(_) => {
                    out.push("/manifest.yaml", "not UTF-8 text");
                    return;
                }
            },
            Err(e) => {
                out.push("/manifest.yaml", format!("cannot read: {e}"));
                return;
            }
        };
        check_manifest(&text, ctx, out);
    }
}

/// The manifest's fields, as read.
#[derive(Default)]
struct Fields {
    version: Option<(String, Pos)>,
    name: Option<(String, Pos)>,
    meta_version: Option<(String, Pos)>,
    author: Option<(String, Pos)>,
    description: Option<(String, Pos)>,
    talos: Option<(String, Pos)>,
    metadata_pos: Option<Pos>,
}

type Pos = (usize, usize);

/// Checks the text of a manifest; findings are at `/manifest.yaml`, each
/// message starting with `line:col:` where there is a position.
fn check_manifest(text: &str, ctx: &Context, out: &mut Sink) {
    const AT: &str = "/manifest.yaml";
    let file: Arc<Path> = Arc::from(Path::new("manifest.yaml"));
    let lines = LineMap::identity();
    let mut diags = DiagReport::new();
    let fields = match yaml::parse(&file, text, &lines, &mut diags) {
        None => None,
        Some(root) => {
            let mut r = Reader {
                file: file.clone(),
                lines: &lines,
                report: &mut diags,
            };
            Some(read_fields(root.as_ref(), &mut r))
        }
    };
    for d in diags.iter() {
        out.push_with(d.severity, AT, describe(d));
    }
    let Some(f) = fields else {
        return;
    };
    let at = |p: Option<Pos>| p.map(|(l, c)| format!("{l}:{c}: ")).unwrap_or_default();
    match &f.version {
        Some((v, _)) if v == "v1alpha1" => {}
        other => {
            let (v, p) = other
                .clone()
                .map_or((String::new(), None), |(v, p)| (v, Some(p)));
            out.push(AT, format!("{}unsupported manifest version: {v:?}", at(p)));
        }
    }
    let meta_at = at(f.metadata_pos);
    for (field, value) in [
        ("name", &f.name),
        ("version", &f.meta_version),
        ("author", &f.author),
        ("description", &f.description),
    ] {
        match value {
            None => out.push(AT, format!("{meta_at}metadata.{field} is missing")),
            Some((v, p)) if v.trim().is_empty() => {
                out.push(AT, format!("{}metadata.{field} is empty", at(Some(*p))))
            }
            Some(_) => {}
        }
    }
    if let (Some(pkg), Some((name, p))) = (&ctx.package, &f.name)
        && pkg != name
    {
        out.push(
            AT,
            format!(
                "{}pkg name does not match extension name: {pkg} != {name}",
                at(Some(*p))
            ),
        );
    }
    if let Some((v, p)) = &f.meta_version
        && !v.trim().is_empty()
        && version_format(v).is_none()
    {
        out.warn(
            AT,
            format!(
                "{}metadata.version {v:?} matches none of the formats Talos' extensions-validator accepts ({}); Talos itself loads it",
                at(Some(*p)),
                version_formats().join(", ")
            ),
        );
    }
    if let Some((c, p)) = &f.talos
        && !c.is_empty()
    {
        match parse_range(&trim(c)) {
            Err(e) => out.push(
                AT,
                format!(
                    "{}metadata.compatibility.talos.version {c:?}: error parsing Talos version constraint: {e}",
                    at(Some(*p))
                ),
            ),
            Ok(range) => {
                if let Some(talos) = ctx.talos_version.as_deref()
                    && let Ok(tv) = parse_talos_version(talos)
                    && !range.matches(&tv)
                {
                    out.push(
                        AT,
                        format!(
                            "{}version constraint {c} can't be satisfied with Talos version {talos}",
                            at(Some(*p))
                        ),
                    );
                }
            }
        }
    }
}

/// `line:col: field: message (hint)`.
fn describe(d: &Diagnostic) -> String {
    let mut s = format!("{}:{}: ", d.span.line, d.span.col);
    if !d.field.is_empty() {
        s.push_str(&d.field);
        s.push_str(": ");
    }
    s.push_str(&d.message);
    if let Some(h) = &d.hint {
        s.push_str(&format!(" ({h})"));
    }
    s
}

/// The entries of a mapping; unknown keys become warnings (Talos ignores
/// them) with a "did you mean" hint.
fn entries<'n, 'a>(
    r: &mut Reader<'_>,
    node: &'n Node<'a>,
    field: &str,
    known: &[&str],
) -> Vec<(String, &'n Node<'a>)> {
    let YamlData::Mapping(map) = &node.data else {
        // Reports anything but a mapping or null.
        r.mapping(node, field, &[]);
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in map.iter() {
        let YamlData::Representation(key, _, _) = &k.data else {
            r.error(
                k,
                field,
                format!("expected a string key, got {}", yaml::kind(k)),
            );
            continue;
        };
        if known.contains(&key.as_ref()) {
            out.push((key.to_string(), v));
            continue;
        }
        let path = yaml::join(field, key);
        let mut d = Diagnostic::warning(r.span(k), path, "unknown key, ignored by Talos");
        if let Some(s) = suggest(key, known.iter().copied()) {
            d = d.with_hint(format!("did you mean `{s}`?"));
        }
        r.report.push(d);
    }
    out
}

fn read_fields(root: Option<&Node<'_>>, r: &mut Reader<'_>) -> Fields {
    let mut f = Fields::default();
    let Some(root) = root else {
        return f;
    };
    let pos = |r: &Reader<'_>, n: &Node<'_>| {
        let s = r.span(n);
        (s.line, s.col)
    };
    let string = |r: &mut Reader<'_>, n: &Node<'_>, field: &str| {
        let p = pos(r, n);
        r.string(n, field).map(|s| (s.value, p))
    };
    for (k, v) in entries(r, root, "", &["version", "metadata"]) {
        match k.as_str() {
            "version" => f.version = string(r, v, "version"),
            _ => {
                f.metadata_pos = Some(pos(r, v));
                let known = [
                    "name",
                    "version",
                    "author",
                    "description",
                    "compatibility",
                    "extraInfo",
                ];
                for (mk, mv) in entries(r, v, "metadata", &known) {
                    let field = format!("metadata.{mk}");
                    match mk.as_str() {
                        "name" => f.name = string(r, mv, &field),
                        "version" => f.meta_version = string(r, mv, &field),
                        "author" => f.author = string(r, mv, &field),
                        "description" => f.description = string(r, mv, &field),
                        "extraInfo" => {
                            string(r, mv, &field);
                        }
                        _ => {
                            for (_, talos) in entries(r, mv, &field, &["talos"]) {
                                let field = format!("{field}.talos");
                                for (_, c) in entries(r, talos, &field, &["version"]) {
                                    f.talos = string(r, c, &format!("{field}.version"));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::Finding;

    fn run(text: &str, ctx: &Context) -> Vec<Finding> {
        let mut sink = Sink {
            rule: "extension-manifest",
            severity: Severity::Error,
            findings: Vec::new(),
        };
        check_manifest(text, ctx, &mut sink);
        sink.findings
    }

    const GOOD: &str = "version: v1alpha1\nmetadata:\n  name: hello\n  version: 1.0.0\n  author: me\n  description: d\n  compatibility:\n    talos:\n      version: \">= v1.9.0\"\n";

    #[test]
    fn manifest_good_has_no_findings() {
        assert_eq!(run(GOOD, &Context::new(Kind::Extension)), vec![]);
    }

    #[test]
    fn manifest_empty_document_is_unsupported_version_as_talos_says() {
        let f = run("---\n", &Context::new(Kind::Extension));
        assert!(f[0].message.contains("unsupported manifest version: \"\""));
        assert!(
            f.iter()
                .any(|f| f.message.contains("metadata.name is missing"))
        );
    }

    #[test]
    fn manifest_yaml_error_has_line_and_column() {
        let f = run(
            "version: v1alpha1\nmetadata: [a\n",
            &Context::new(Kind::Extension),
        );
        assert!(f[0].message.starts_with("3:1: invalid YAML"), "{f:?}");
    }

    #[test]
    fn manifest_name_must_match_package_and_talos_version_must_satisfy() {
        let ctx = Context {
            package: Some("other".into()),
            talos_version: Some("v1.8.2".into()),
            ..Context::new(Kind::Extension)
        };
        let f = run(GOOD, &ctx);
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(
            f[0].message,
            "3:9: pkg name does not match extension name: other != hello"
        );
        assert_eq!(
            f[1].message,
            "9:16: version constraint >= v1.9.0 can't be satisfied with Talos version v1.8.2"
        );
    }

    #[test]
    fn manifest_unknown_key_is_a_warning_with_hint() {
        let text = GOOD.replace("compatibility", "compatability");
        let f = run(&text, &Context::new(Kind::Extension));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Warning);
        assert!(
            f[0].message.contains("did you mean `compatibility`?"),
            "{f:?}"
        );
    }

    #[test]
    fn manifest_bad_constraint_is_an_error() {
        let text = GOOD.replace(">= v1.9.0", "~1.9");
        let f = run(&text, &Context::new(Kind::Extension));
        assert!(
            f[0].message
                .contains("error parsing Talos version constraint")
        );
    }
}
