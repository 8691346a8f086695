//! Reads a step's `sbom:` mapping into an [`Sbom`] and checks what the SPDX
//! document written from it will say, so a bad value is reported at its
//! `file:line:col` when the definitions load, not as a broken document.
//!
//! bldr's fields and meanings (v0.6): `outputPath` (where the document is
//! written in the stage's filesystem, after the step's scripts), `name`
//! (default: the stage's name), `version`, `cpes` (and a lone `cpe`),
//! `purl`, `licenses` (SPDX expressions, combined with AND) and
//! `customLicenses` (`id: LicenseRef-…` with its `text`, added to the
//! licenses). Checks, stricter than bldr where bldr would write a document
//! an SPDX reader rejects:
//! - `outputPath` is required, absolute, without `..`, and names a file
//!   the stage keeps: not under `/pkg` (the package directory, read-only),
//!   `/proc`, `/dev`, `/sys` or `/tmp` (the sandbox's own, gone after the
//!   step; `/tmp/build` is kept), nor, in `variant: host`, under the host's
//!   read-only directories ([`HOST_DIRS`]). Whether the path goes through
//!   a symlink depends on what the steps did: the write checks that.
//! - each license is an SPDX expression (deprecated identifiers such as
//!   `GPL-2.0` allowed, as SPDX 2.3 allows them) that references no
//!   `LicenseRef-` without text; a lone word that is no SPDX identifier
//!   (`CUSTOM`) is kept as bldr keeps it, as `LicenseRef-<word>` with the
//!   word as its text, and warned about;
//!   two different names that become one id (`Foo_Bar` and `Foo-Bar`)
//!   are an error, as the document could keep only one text;
//! - custom license ids are `LicenseRef-` + letters, digits, `.` or `-`,
//!   unique, with non-blank text;
//! - CPEs are CPE 2.3 formatted strings, the purl parses as a package URL.
//!
//! Values holding `<no value>` (an undefined template variable, already
//! warned about) are not checked again.

use std::sync::LazyLock;

use regex::Regex;

use super::schema::{HOST_DIRS, License, Sbom, Spanned, Variant};
use super::yaml::{Node, Reader, join};
use crate::diag::Diagnostic;

const SBOM_KEYS: &[&str] = &[
    "outputPath",
    "name",
    "version",
    "cpes",
    "cpe",
    "purl",
    "licenses",
    "customLicenses",
];

/// License expressions as SPDX 2.3 documents may carry them.
const MODE: spdx::ParseMode = spdx::ParseMode {
    allow_deprecated: true,
    ..spdx::ParseMode::STRICT
};

/// The CPE 2.3 formatted-string pattern of the CPE naming specification
/// (NISTIR 7695, 6.2.5), which SPDX 2.3 requires of `cpe23Type` locators.
static CPE23: LazyLock<Regex> = LazyLock::new(|| {
    let value = r##"(((\?*|\*?)([a-zA-Z0-9\-\._]|(\\[\\\*\?!"#$%&'\(\)\+,/:;<=>@\[\]\^`\{\|\}~]))+(\?*|\*?))|[\*\-])"##;
    let lang = r"(([a-zA-Z]{2,3}(-([a-zA-Z]{2}|[0-9]{3}))?)|[\*\-])";
    Regex::new(&format!(
        r"^cpe:2\.3:[aho\*\-](:{value}){{5}}(:{lang})(:{value}){{4}}$"
    ))
    .expect("the CPE 2.3 pattern is valid")
});

static CUSTOM_ID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^LicenseRef-[A-Za-z0-9.\-]+$").expect("the LicenseRef pattern is valid")
});

/// Top-level directories the sandbox gives every step afresh and does not
/// keep (except `/tmp/build`, the stage's working directory).
pub const SANDBOX_DIRS: [&str; 4] = ["proc", "dev", "sys", "tmp"];

/// Reads `steps[N].sbom` (`field`) of a stage of `variant`, reporting every
/// problem.
pub fn read_sbom(r: &mut Reader<'_>, node: &Node<'_>, field: &str, variant: Variant) -> Sbom {
    let mut sbom = Sbom::default();
    let mut licenses = Vec::new();
    let mut custom = Vec::new();
    let mut cpes = Vec::new();
    let mut output_path = None;
    for (k, v) in r.mapping(node, field, SBOM_KEYS) {
        let path = join(field, &k);
        let text = |r: &mut Reader<'_>| r.string(v, &path).map_or_else(String::new, |s| s.value);
        match k.as_ref() {
            "outputPath" => output_path = r.string(v, &path),
            "name" => sbom.name = text(r),
            "version" => sbom.version = text(r),
            "purl" => {
                if let Some(s) = r.string(v, &path) {
                    check_purl(r, &s, &path);
                    sbom.purl = s.value;
                }
            }
            "cpe" => cpes.extend(r.string(v, &path)),
            "cpes" => cpes.extend(r.strings(v, &path)),
            "licenses" => licenses = r.strings(v, &path),
            _ => custom = read_custom(r, v, &path),
        }
    }
    match output_path {
        Some(p) => {
            if let Some(problem) = output_path_problem(&p.value, variant) {
                r.report.push(
                    Diagnostic::error(p.span.clone(), join(field, "outputPath"), format!("`{}` {problem}", p.value))
                        .with_hint("e.g. /rootfs/usr/local/share/spdx/NAME.spdx.json (finalize then carries it into the output)"),
                );
            }
            sbom.output_path = p.value;
        }
        None => r.report.push(
            Diagnostic::error(r.span(node), join(field, "outputPath"), "missing required field `outputPath`")
                .with_hint("where the step writes its SPDX document, e.g. /rootfs/usr/local/share/spdx/NAME.spdx.json"),
        ),
    }
    for (i, cpe) in cpes.iter().enumerate() {
        if !cpe.value.contains("<no value>") && !CPE23.is_match(&cpe.value) {
            r.report.push(
                Diagnostic::error(
                    cpe.span.clone(),
                    format!("{field}.cpes[{i}]"),
                    format!("`{}` is not a CPE 2.3 formatted string", cpe.value),
                )
                .with_hint("cpe:2.3:PART:VENDOR:PRODUCT:VERSION:UPDATE:EDITION:LANGUAGE:SW_EDITION:TARGET_SW:TARGET_HW:OTHER, e.g. cpe:2.3:a:vendor:product:1.0:*:*:*:*:*:*:*"),
            );
        }
    }
    sbom.cpes = cpes.into_iter().map(|c| c.value).collect();
    sbom.licenses = read_licenses(r, &licenses, &custom, &join(field, "licenses"));
    sbom.custom_licenses = custom
        .into_iter()
        .map(|(id, text)| (id.value, text))
        .collect();
    sbom
}

/// Why `path` cannot be the `outputPath` of a step of a `variant` stage,
/// phrased to follow the path; `None` when it can.
pub fn output_path_problem(path: &str, variant: Variant) -> Option<String> {
    if !path.starts_with('/') {
        return Some("must be an absolute path in the stage's filesystem".into());
    }
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    if parts.contains(&"..") {
        return Some("must not contain `..`".into());
    }
    if path.ends_with('/') || parts.last().is_none_or(|c| *c == ".") {
        return Some("must name a file, not a directory".into());
    }
    let parts: Vec<&str> = parts.into_iter().filter(|c| *c != ".").collect();
    Some(match parts.as_slice() {
        ["tmp", "build"] => "names the build directory /tmp/build, not a file".into(),
        ["tmp", "build", ..] => return None,
        ["pkg", ..] => "is under /pkg, the package directory, which is read-only".into(),
        [first, ..] if SANDBOX_DIRS.contains(first) => format!(
            "is under /{first}, which the sandbox provides to the step and does not keep (only /tmp/build is kept): write under /rootfs or another directory finalize takes"
        ),
        [first, ..] if variant == Variant::Host && HOST_DIRS.contains(first) => {
            format!("is under /{first}, which in variant host is the host's and read-only")
        }
        _ => return None,
    })
}

fn check_purl(r: &mut Reader<'_>, s: &Spanned<String>, field: &str) {
    if s.value.contains("<no value>") {
        return;
    }
    if let Err(e) = s.value.parse::<packageurl::PackageUrl<'static>>() {
        r.report.push(
            Diagnostic::error(
                s.span.clone(),
                field,
                format!("`{}` is not a package URL: {e}", s.value),
            )
            .with_hint("pkg:TYPE/NAMESPACE/NAME@VERSION, e.g. pkg:github/owner/repo@v1.0.0"),
        );
    }
}

/// `customLicenses`: `(id, text)` pairs, each checked.
fn read_custom(r: &mut Reader<'_>, node: &Node<'_>, field: &str) -> Vec<(Spanned<String>, String)> {
    let mut out: Vec<(Spanned<String>, String)> = Vec::new();
    for (i, item) in r.sequence(node, field).into_iter().enumerate() {
        let field = format!("{field}[{i}]");
        let (mut id, mut text) = (None, None);
        for (k, v) in r.mapping(item, &field, &["id", "text"]) {
            let value = r.string(v, &join(&field, &k));
            if k == "id" {
                id = value;
            } else {
                text = value;
            }
        }
        let Some(id) = id else {
            r.error(item, &join(&field, "id"), "missing required field `id`");
            continue;
        };
        if !CUSTOM_ID.is_match(&id.value) {
            r.report.push(Diagnostic::error(
                id.span.clone(),
                join(&field, "id"),
                format!("`{}` is not a custom license id: expected `LicenseRef-` followed by letters, digits, `.` or `-`", id.value),
            ));
        }
        if let Some(first) = out.iter().find(|(o, _)| o.value == id.value) {
            r.report.push(Diagnostic::error(
                id.span.clone(),
                join(&field, "id"),
                format!(
                    "duplicate custom license id `{}` (first at {})",
                    id.value, first.0.span
                ),
            ));
        }
        match text {
            Some(t) if !t.value.trim().is_empty() => out.push((id, t.value)),
            Some(t) => r.report.push(Diagnostic::error(
                t.span,
                join(&field, "text"),
                format!("custom license `{}` needs its text", id.value),
            )),
            None => r.error(item, &join(&field, "text"), "missing required field `text`"),
        }
    }
    out
}

fn read_licenses(
    r: &mut Reader<'_>,
    licenses: &[Spanned<String>],
    custom: &[(Spanned<String>, String)],
    field: &str,
) -> Vec<License> {
    let mut out = Vec::new();
    // Plain names so far: each one's id is its text's key in the document.
    let mut names: Vec<&Spanned<String>> = Vec::new();
    for (i, s) in licenses.iter().enumerate() {
        let field = format!("{field}[{i}]");
        if s.value.contains("<no value>") {
            out.push(License::Expression(s.value.clone()));
            continue;
        }
        match classify(&s.value) {
            Ok(License::Name(name)) => {
                let id = license_ref(&name);
                let problem = if custom.iter().any(|(c, _)| c.value == id) {
                    Some("which customLicenses declares too".to_string())
                } else {
                    names
                        .iter()
                        .find(|n| n.value != name && license_ref(&n.value) == id)
                        .map(|n| {
                            format!(
                                "as `{}` (at {}) is: one id cannot carry both texts",
                                n.value, n.span
                            )
                        })
                };
                if let Some(problem) = problem {
                    r.report.push(
                        Diagnostic::error(
                            s.span.clone(),
                            field,
                            format!("`{name}` would be written as `{id}`, {problem}"),
                        )
                        .with_hint("declare the license under customLicenses with an id of its own and its text"),
                    );
                    continue;
                }
                names.push(s);
                let mut d = Diagnostic::warning(
                    s.span.clone(),
                    field,
                    format!(
                        "`{name}` is not an SPDX license identifier: written as `{id}` with `{name}` as its text"
                    ),
                );
                d = d.with_hint(match spdx::imprecise_license_id(&name) {
                    Some((id, _)) => format!("did you mean `{}`?", id.name),
                    None => "use an SPDX identifier (https://spdx.org/licenses), or a LicenseRef- id with its text under customLicenses".to_string(),
                });
                r.report.push(d);
                out.push(License::Name(name));
            }
            Ok(expr) => {
                if let Some(problem) = unsupported_reference(&s.value, custom) {
                    r.report
                        .push(Diagnostic::error(s.span.clone(), field, problem));
                    continue;
                }
                out.push(expr);
            }
            Err(problem) => {
                r.report
                    .push(Diagnostic::error(s.span.clone(), field, problem).with_hint(
                        "an SPDX license expression, e.g. `GPL-2.0-only` or `MIT OR Apache-2.0`",
                    ))
            }
        }
    }
    out
}

/// What a `licenses` entry is, or why it is neither an expression nor a
/// plain license name.
pub fn classify(value: &str) -> Result<License, String> {
    match spdx::Expression::parse_mode(value, MODE) {
        Ok(_) => Ok(License::Expression(value.trim().to_string())),
        Err(e) => {
            let word = !value.is_empty()
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'));
            let unknown = matches!(
                e.reason,
                spdx::error::Reason::UnknownTerm | spdx::error::Reason::UnknownLicense
            );
            if word && unknown {
                return Ok(License::Name(value.to_string()));
            }
            let at = value.get(e.span.clone()).unwrap_or("");
            Err(format!(
                "`{value}` is not an SPDX license expression: {}{}",
                e.reason,
                if at.is_empty() {
                    String::new()
                } else {
                    format!(" at `{at}` (character {})", e.span.start + 1)
                }
            ))
        }
    }
}

/// A `LicenseRef-`/`DocumentRef-`/`AdditionRef-` in an expression: the
/// document would hold a reference without the text it stands for.
fn unsupported_reference(value: &str, custom: &[(Spanned<String>, String)]) -> Option<String> {
    let expr = spdx::Expression::parse_mode(value, MODE).ok()?;
    for req in expr.requirements() {
        if let spdx::LicenseItem::Other(r) = &req.req.license {
            let id = format!("LicenseRef-{}", r.lic_ref);
            return Some(
                match (&r.doc_ref, custom.iter().any(|(c, _)| c.value == id)) {
                    (Some(doc), _) => format!(
                        "`DocumentRef-{doc}:{id}` refers to another document, which the SBOM cannot name"
                    ),
                    (None, true) => format!(
                        "`{id}` is declared under customLicenses, which adds it to the licenses already: remove it here"
                    ),
                    (None, false) => format!(
                        "`{id}` has no text: declare it under customLicenses (with its text) instead, which adds it to the licenses"
                    ),
                },
            );
        }
        if let Some(spdx::AdditionItem::Other(a)) = &req.req.addition {
            return Some(format!(
                "`AdditionRef-{}` is not part of SPDX 2.3",
                a.add_ref
            ));
        }
    }
    None
}

/// The SPDX id a plain license name is written as (bldr's form).
pub fn license_ref(name: &str) -> String {
    format!("LicenseRef-{}", idstring(name))
}

/// `name` with every character SPDX ids do not allow (anything but letters,
/// digits, `.` and `-`) replaced by `-`.
pub fn idstring(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_accepts_expressions_and_deprecated_ids() {
        for ok in [
            "MIT",
            "GPL-2.0",
            "MIT OR Apache-2.0",
            "GPL-2.0-only WITH Linux-syscall-note",
        ] {
            assert!(matches!(classify(ok), Ok(License::Expression(_))), "{ok}");
        }
    }

    #[test]
    fn classify_keeps_a_lone_unknown_word_as_a_name() {
        assert_eq!(classify("CUSTOM"), Ok(License::Name("CUSTOM".into())));
        assert_eq!(license_ref("Hailo_FW+"), "LicenseRef-Hailo-FW-");
    }

    #[test]
    fn classify_rejects_broken_expressions_with_the_place() {
        let e = classify("MIT ORR Apache-2.0").unwrap_err();
        assert!(e.contains("at `ORR` (character 5)"), "{e}");
        assert!(classify("MIT AND (Apache-2.0").is_err());
        assert!(classify("").is_err());
    }

    #[test]
    fn output_path_rules_know_the_sandbox_and_the_host_directories() {
        for ok in [
            "/rootfs/x.json",
            "/tmp/build/a/x.json",
            "/usr/x.json",
            "/./opt/x",
        ] {
            assert_eq!(output_path_problem(ok, Variant::Scratch), None, "{ok}");
        }
        for (bad, problem) in [
            ("rootfs/x.json", "absolute"),
            ("/rootfs/../x.json", "`..`"),
            ("/rootfs/", "name a file"),
            ("/rootfs/.", "name a file"),
            ("/tmp/build", "the build directory"),
            ("/pkg/x.json", "/pkg"),
            ("/tmp/x.json", "/tmp, which the sandbox"),
            ("//proc/x", "/proc"),
            ("/sys/x", "/sys"),
        ] {
            for variant in [Variant::Scratch, Variant::Host] {
                let p = output_path_problem(bad, variant).unwrap_or_default();
                assert!(p.contains(problem), "{bad}: {p}");
            }
        }
        for dir in HOST_DIRS {
            let path = format!("/{dir}/share/x.spdx.json");
            let p = output_path_problem(&path, Variant::Host).unwrap_or_default();
            assert!(p.contains("the host's and read-only"), "{path}: {p}");
            assert_eq!(output_path_problem(&path, Variant::Scratch), None);
        }
    }

    #[test]
    fn cpe_pattern_follows_the_specification() {
        assert!(CPE23.is_match("cpe:2.3:a:qemu:qemu:9.2.0:*:*:*:*:*:*:*"));
        assert!(
            CPE23.is_match("cpe:2.3:a:nvidia:gpu_display_driver:535.1:*:*:*:*:linux_kernel:*:*")
        );
        assert!(!CPE23.is_match("cpe:2.3:a:qemu:qemu:9.2.0"));
        assert!(!CPE23.is_match("cpe:/a:qemu:qemu:9.2.0"));
        assert!(!CPE23.is_match("cpe:2.3:x:qemu:qemu:9.2.0:*:*:*:*:*:*:*"));
    }
}
