//! Reads a rendered `pkg.yaml` into a `Pkg`, reporting every problem:
//! unknown keys (with a "did you mean"), wrong types, missing or malformed
//! fields, each at `file:line:col` with its field path.
//!
//! Rules and defaults are bldr's (`name` and `variant` required, `finalize`
//! required when there are steps, dependency `from`/`to` `/`, checksums 64
//! and 128 characters). An absent `shell` stays `None`: its default depends
//! on the variant and the host, and is chosen where the steps run. Stricter than bldr on purpose:
//! unknown keys are errors (bldr ignores them), checksums must be hex, and
//! every problem is reported, not the first.

use std::path::Path;

use super::sbom::read_sbom;
use super::schema::{
    Dependency, DependencyKind, Finalize, Network, Pkg, Source, Spanned, Step, Variant,
};
use super::yaml::{Node, Reader, join};
use crate::diag::{Diagnostic, suggest};

const PKG_KEYS: &[&str] = &[
    "name",
    "variant",
    "shell",
    "buildPlatform",
    "install",
    "dependencies",
    "steps",
    "finalize",
];
const DEP_KEYS: &[&str] = &["stage", "image", "from", "to", "platform", "runtime"];
const STEP_KEYS: &[&str] = &[
    "sources",
    "env",
    "cachePaths",
    "network",
    "prepare",
    "build",
    "install",
    "test",
    "sbom",
];
const SOURCE_KEYS: &[&str] = &["url", "destination", "sha256", "sha512"];
const FINALIZE_KEYS: &[&str] = &["from", "to"];

/// Reads the root node of a `pkg.yaml` in `dir`. `None` when the document is
/// too broken to name a stage (problems are in the reader's report).
pub fn read_pkg(r: &mut Reader<'_>, root: &Node<'_>, dir: &Path) -> Option<Pkg> {
    let mut name = None;
    let mut pkg = Pkg {
        name: Spanned {
            value: String::new(),
            span: r.span(root),
        },
        variant: Variant::Scratch,
        shell: None,
        build_platform: None,
        install: Vec::new(),
        dependencies: Vec::new(),
        steps: Vec::new(),
        finalize: Vec::new(),
        dir: dir.to_path_buf(),
    };
    if !matches!(root.data, saphyr::YamlData::Mapping(_)) {
        r.error(
            root,
            "",
            format!("expected a mapping, got {}", super::yaml::kind(root)),
        );
        return None;
    }
    let entries = r.mapping(root, "", PKG_KEYS);
    // First: what the steps may write depends on it.
    let variant = entries.iter().find(|(k, _)| k.as_ref() == "variant");
    if let Some((_, value)) = variant
        && let Some(v) = r.string(value, "variant")
    {
        match Variant::parse(&v.value) {
            Some(variant) => pkg.variant = variant,
            None => report_choice(r, &v, "variant", &Variant::NAMES),
        }
    }
    for (key, value) in &entries {
        match key.as_ref() {
            "name" => name = r.string(value, "name"),
            "variant" => {}
            "shell" => {
                if let Some(s) = r.string(value, "shell") {
                    pkg.shell = Some(s.value);
                }
            }
            "buildPlatform" => {
                pkg.build_platform = r.string(value, "buildPlatform").map(|s| s.value)
            }
            "install" => pkg.install = values(r.strings(value, "install")),
            "dependencies" => {
                for (i, item) in r.sequence(value, "dependencies").into_iter().enumerate() {
                    if let Some(d) = read_dependency(r, item, &format!("dependencies[{i}]")) {
                        pkg.dependencies.push(d);
                    }
                }
            }
            "steps" => {
                for (i, item) in r.sequence(value, "steps").into_iter().enumerate() {
                    let step = read_step(r, item, &format!("steps[{i}]"), pkg.variant);
                    pkg.steps.push(step);
                }
            }
            "finalize" => {
                for (i, item) in r.sequence(value, "finalize").into_iter().enumerate() {
                    let field = format!("finalize[{i}]");
                    let mut f = Finalize {
                        from: "/".to_string(),
                        to: "/".to_string(),
                    };
                    for (k, v) in r.mapping(item, &field, FINALIZE_KEYS) {
                        let s = r.string(v, &join(&field, &k)).map(|s| s.value);
                        match k.as_ref() {
                            "from" => f.from = s.unwrap_or_else(|| "/".into()),
                            _ => f.to = s.unwrap_or_else(|| "/".into()),
                        }
                    }
                    pkg.finalize.push(f);
                }
            }
            // `mapping` filtered the keys against PKG_KEYS: none is left.
            _ => {}
        }
    }
    if variant.is_none() {
        let span = r.span(root);
        r.report.push(
            Diagnostic::error(span, "variant", "missing required field `variant`")
                .with_hint("set `variant: scratch`, `alpine` or `host`"),
        );
    }
    if !pkg.steps.is_empty() && pkg.finalize.is_empty() {
        r.error(
            root,
            "finalize",
            "the stage has steps but no `finalize`: its output would be empty",
        );
    }
    match name {
        Some(n) if is_valid_name(&n.value) => pkg.name = n,
        Some(n) => {
            r.report.push(
                Diagnostic::error(
                    n.span.clone(),
                    "name",
                    format!("invalid stage name `{}`", n.value),
                )
                .with_hint("use letters, digits, `-`, `_` and `.`"),
            );
            pkg.name = n;
        }
        None => {
            r.error(root, "name", "missing required field `name`");
            return None;
        }
    }
    Some(pkg)
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn values(v: Vec<Spanned<String>>) -> Vec<String> {
    v.into_iter().map(|s| s.value).collect()
}

fn report_choice(r: &mut Reader<'_>, v: &Spanned<String>, field: &str, choices: &[&str]) {
    let mut d = Diagnostic::error(
        v.span.clone(),
        field,
        format!("unknown value `{}`", v.value),
    );
    d = match suggest(&v.value, choices.iter().copied()) {
        Some(s) => d.with_hint(format!("did you mean `{s}`?")),
        None => d.with_hint(format!("expected one of: {}", choices.join(", "))),
    };
    r.report.push(d);
}

fn read_dependency(r: &mut Reader<'_>, node: &Node<'_>, field: &str) -> Option<Dependency> {
    let mut stage = None;
    let mut image = None;
    let mut dep = Dependency {
        kind: DependencyKind::Stage(String::new()),
        from: "/".to_string(),
        to: "/".to_string(),
        platform: None,
        runtime: false,
        span: r.span(node),
    };
    for (k, v) in r.mapping(node, field, DEP_KEYS) {
        let path = join(field, &k);
        match k.as_ref() {
            "stage" => stage = r.string(v, &path),
            "image" => image = r.string(v, &path),
            "from" => dep.from = r.string(v, &path).map_or("/".into(), |s| s.value),
            "to" => dep.to = r.string(v, &path).map_or("/".into(), |s| s.value),
            "platform" => dep.platform = r.string(v, &path).map(|s| s.value),
            _ => dep.runtime = r.boolean(v, &path).unwrap_or(false),
        }
    }
    match (stage, image) {
        (Some(s), None) if !s.value.is_empty() => {
            dep.span = s.span;
            dep.kind = DependencyKind::Stage(s.value);
        }
        (None, Some(i)) if !i.value.is_empty() => {
            dep.span = i.span;
            dep.kind = DependencyKind::Image(i.value);
        }
        (Some(_), Some(_)) => {
            r.error(node, field, "set either `stage` or `image`, not both");
            return None;
        }
        _ => {
            r.error(node, field, "a dependency needs `stage` or `image`");
            return None;
        }
    }
    Some(dep)
}

fn read_step(r: &mut Reader<'_>, node: &Node<'_>, field: &str, variant: Variant) -> Step {
    let mut step = Step::default();
    for (k, v) in r.mapping(node, field, STEP_KEYS) {
        let path = join(field, &k);
        match k.as_ref() {
            "sources" => {
                for (i, item) in r.sequence(v, &path).into_iter().enumerate() {
                    if let Some(s) = read_source(r, item, &format!("{path}[{i}]")) {
                        step.sources.push(s);
                    }
                }
            }
            "env" => {
                step.env = r
                    .string_map(v, &path)
                    .into_iter()
                    .map(|(k, v)| (k, v.value))
                    .collect()
            }
            "cachePaths" => step.cache_paths = values(r.strings(v, &path)),
            "network" => {
                if let Some(n) = r.string(v, &path) {
                    match n.value.as_str() {
                        "none" => step.network = Some(Network::None),
                        "default" => step.network = Some(Network::Default),
                        "host" => step.network = Some(Network::Host),
                        _ => report_choice(r, &n, &path, &["none", "default", "host"]),
                    }
                }
            }
            "prepare" => step.prepare = values(r.strings(v, &path)),
            "build" => step.build = values(r.strings(v, &path)),
            "install" => step.install = values(r.strings(v, &path)),
            "test" => step.test = values(r.strings(v, &path)),
            _ => step.sbom = Some(read_sbom(r, v, &path, variant)),
        }
    }
    step
}

fn read_source(r: &mut Reader<'_>, node: &Node<'_>, field: &str) -> Option<Source> {
    let mut src = Source {
        url: String::new(),
        destination: String::new(),
        sha256: String::new(),
        sha512: String::new(),
        span: r.span(node),
    };
    let mut seen = Vec::new();
    for (k, v) in r.mapping(node, field, SOURCE_KEYS) {
        let path = join(field, &k);
        let Some(s) = r.string(v, &path) else {
            continue;
        };
        seen.push(k.to_string());
        match k.as_ref() {
            "url" => src.url = s.value,
            "destination" => src.destination = s.value,
            "sha256" => {
                check_digest(r, &s, &path, 64);
                src.sha256 = s.value;
            }
            _ => {
                check_digest(r, &s, &path, 128);
                src.sha512 = s.value;
            }
        }
    }
    for required in ["url", "destination", "sha256", "sha512"] {
        if !seen.iter().any(|s| s == required) {
            r.error(
                node,
                &join(field, required),
                format!("missing required field `{required}`"),
            );
        }
    }
    Some(src)
}

fn check_digest(r: &mut Reader<'_>, s: &Spanned<String>, field: &str, len: usize) {
    let v = &s.value;
    let hex = v.chars().all(|c| c.is_ascii_hexdigit());
    if v.len() != len || !hex {
        let mut problem = format!("expected {len} hex characters, got {}", v.chars().count());
        if let Some(bad) = v.chars().find(|c| !c.is_ascii_hexdigit()) {
            problem.push_str(&format!(" (including non-hex `{}`)", bad.escape_default()));
        }
        r.report
            .push(Diagnostic::error(s.span.clone(), field, problem));
    }
}
