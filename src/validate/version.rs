//! Version strings of Talos extension manifests: the Talos version
//! constraint (`compatibility.talos.version`) and the extension's own
//! version (`metadata.version`).
//!
//! The constraint is what Talos parses: its `trim` drops every `v` that
//! stands directly before a digit, then blang/semver v4's `ParseRange`
//! reads the rest. That syntax is not the `semver` crate's `VersionReq`
//! (`>1.0.0 <2.0.0` is an AND of two comparators, `||` an OR, operators
//! `= == != ! > >= < <=` with optional spaces after them, and `x`
//! wildcards), so it is parsed here; the versions inside are
//! `semver::Version`s (strict SemVer 2.0, as blang's `Parse`), compared by
//! precedence (build metadata ignored, as blang's `Compare`).
//!
//! Invariant: `parse_range` accepts exactly the strings blang's
//! `ParseRange` accepts after Talos' `trim`, including blang's wildcard
//! expansion (whose `!=1.x` is unsatisfiable: it expands to
//! `<1.0.0 >=2.0.0` ANDed; kept as blang has it, since that is what a
//! node would evaluate).

use std::cmp::Ordering;
use std::sync::LazyLock;

use regex::Regex;
use semver::Version;

/// Talos' `trim`: removes each `v` directly followed by a digit.
pub fn trim(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    for (i, c) in s.char_indices() {
        if c == 'v' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
            continue;
        }
        out.push(c);
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "" | "=" | "==" => Op::Eq,
            "!" | "!=" => Op::Ne,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "<" => Op::Lt,
            "<=" => Op::Le,
            _ => return None,
        })
    }

    fn admits(self, ord: Ordering) -> bool {
        match self {
            Op::Eq => ord == Ordering::Equal,
            Op::Ne => ord != Ordering::Equal,
            Op::Gt => ord == Ordering::Greater,
            Op::Ge => ord != Ordering::Less,
            Op::Lt => ord == Ordering::Less,
            Op::Le => ord != Ordering::Greater,
        }
    }
}

/// A parsed blang range: an OR of ANDs of comparators.
#[derive(Clone, Debug)]
pub struct Range {
    any_of: Vec<Vec<(Op, Version)>>,
}

impl Range {
    /// Whether `v` satisfies the range.
    pub fn matches(&self, v: &Version) -> bool {
        self.any_of
            .iter()
            .any(|all| all.iter().all(|(op, c)| op.admits(v.cmp_precedence(c))))
    }
}

/// blang's `splitAndTrim`: splits on spaces, except a space right after an
/// operator character, then removes the spaces inside each part.
fn split_and_trim(s: &str) -> Vec<String> {
    let b = s.as_bytes();
    let mut parts = Vec::new();
    let mut last = 0usize;
    let mut last_char = 0u8;
    for (i, &c) in b.iter().enumerate() {
        if c == b' ' && !matches!(last_char, b'>' | b'<' | b'=') {
            if last + 1 < i {
                parts.push(&s[last..i]);
            }
            last = i + 1;
        } else if c != b' ' {
            last_char = c;
        }
    }
    if last + 1 < s.len() {
        parts.push(&s[last..]);
    }
    parts.into_iter().map(|p| p.replace(' ', "")).collect()
}

/// blang's `splitComparatorVersion`: the operator is everything before the
/// first digit.
fn split_comparator(s: &str) -> Result<(&str, &str), String> {
    let i = s
        .find(|c: char| c.is_ascii_digit())
        .ok_or_else(|| format!("could not get version from `{s}`"))?;
    Ok((s[..i].trim(), &s[i..]))
}

/// blang's `expandWildcardVersion` for one comparator: `1.2.x`, `1.x`.
fn expand_wildcard(part: &str, out: &mut Vec<String>) -> Result<(), String> {
    if !part.contains('x') {
        out.push(part.to_string());
        return Ok(());
    }
    let (op, v) = split_comparator(part)?;
    let pieces: Vec<&str> = v.split('.').collect();
    let wildcard = match (pieces.len(), pieces.last()) {
        (2, Some(&"x")) => Some(1), // minor wildcard: bump the major
        (3, Some(&"x")) => Some(2), // patch wildcard: bump the minor
        _ => None,
    };
    let mut flat = v.replacen(".x.x", ".x", 1).replacen(".x", ".0", 1);
    if flat.split('.').count() == 2 {
        flat.push_str(".0");
    }
    let bump = |which: usize| -> Option<String> {
        let mut p: Vec<String> = flat.split('.').map(str::to_string).collect();
        let n: u64 = p.get(which - 1)?.parse().ok()?;
        p[which - 1] = (n + 1).to_string();
        Some(p.join("."))
    };
    let (result_op, increment) = match op {
        ">" => (">=", true),
        ">=" => (">=", false),
        "<" => ("<", false),
        "<=" => ("<", true),
        "" | "=" | "==" => {
            out.push(format!(">={flat}"));
            ("<", true)
        }
        "!=" | "!" => {
            out.push(format!("<{flat}"));
            (">=", true)
        }
        other => return Err(format!("could not parse comparator `{other}` in `{part}`")),
    };
    let version = if increment {
        wildcard.and_then(bump).unwrap_or_default()
    } else {
        flat
    };
    out.push(format!("{result_op}{version}"));
    Ok(())
}

/// blang/semver v4 `ParseRange` (call it on `trim(constraint)`).
pub fn parse_range(s: &str) -> Result<Range, String> {
    let parts = split_and_trim(s);
    let mut groups: Vec<Vec<String>> = vec![Vec::new()];
    for (i, p) in parts.iter().enumerate() {
        if p == "||" {
            if i == 0 {
                return Err("first element in range is `||`".into());
            }
            groups.push(Vec::new());
        } else if let Some(g) = groups.last_mut() {
            g.push(p.clone());
        }
    }
    if groups.last().is_some_and(Vec::is_empty) {
        return Err(if parts.is_empty() {
            "empty range".into()
        } else {
            "last element in range is `||`".into()
        });
    }
    let mut any_of = Vec::new();
    for group in groups {
        let mut expanded = Vec::new();
        for part in &group {
            expand_wildcard(part, &mut expanded)?;
        }
        let mut all = Vec::new();
        for part in &expanded {
            let (op_str, v) = split_comparator(part)?;
            let op = Op::parse(op_str)
                .ok_or_else(|| format!("could not parse comparator `{op_str}` in `{part}`"))?;
            let version = Version::parse(v)
                .map_err(|e| format!("could not parse version `{v}` in `{part}`: {e}"))?;
            all.push((op, version));
        }
        any_of.push(all);
    }
    Ok(Range { any_of })
}

/// The Talos version a constraint is checked against: blang's
/// `ParseTolerant` as Talos uses it (a leading `v` allowed, a missing
/// patch or minor read as 0), reduced to major.minor.patch as Talos'
/// `coreVersion` does.
pub fn parse_talos_version(s: &str) -> Result<Version, String> {
    let t = s.trim();
    let t = t.strip_prefix('v').unwrap_or(t);
    let (core, rest) = match t.find(['-', '+']) {
        Some(i) => t.split_at(i),
        None => (t, ""),
    };
    let mut nums: Vec<&str> = core.split('.').collect();
    if nums.len() > 3 {
        return Err("expected MAJOR.MINOR.PATCH".into());
    }
    if nums.len() < 3 && !rest.is_empty() {
        return Err("a short version cannot carry a pre-release or build".into());
    }
    while nums.len() < 3 {
        nums.push("0");
    }
    let full = format!("{}{rest}", nums.join("."));
    let v = Version::parse(&full).map_err(|e| e.to_string())?;
    Ok(Version::new(v.major, v.minor, v.patch))
}

const SEMVER_PRE: &str = r"[0-9]+\.[0-9]+\.[0-9]+(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?";

/// The formats Talos' extensions-validator accepts for `metadata.version`.
static VERSION_FORMATS: LazyLock<Vec<(&'static str, Regex)>> = LazyLock::new(|| {
    let formats = [
        ("semver", format!(r"^v?{SEMVER_PRE}$")),
        ("yyyymmdd[.N]", r"^[0-9]{8}(?:\.[0-9])?$".to_string()),
        (
            "<x.y.z>-v<talos>-<n>-g<sha>",
            format!(r"^[0-9]+\.[0-9]+\.[0-9]+-v{SEMVER_PRE}-[0-9]+-g[0-9a-f]+(?:-dirty)?$"),
        ),
        (
            "<sha>-v<talos>-<n>-g<sha>",
            format!(r"^[0-9a-f]+-v{SEMVER_PRE}-[0-9]+-g[0-9a-f]+(?:-dirty)?$"),
        ),
        ("vX.Y", r"^v?[0-9]+\.[0-9]+$".to_string()),
    ];
    formats
        .into_iter()
        .map(|(name, re)| {
            (
                name,
                Regex::new(&re).expect("the patterns are constant and valid"),
            )
        })
        .collect()
});

/// The name of the first format `v` matches, if any.
pub fn version_format(v: &str) -> Option<&'static str> {
    VERSION_FORMATS
        .iter()
        .find(|(_, re)| re.is_match(v))
        .map(|(name, _)| *name)
}

/// The accepted formats, for messages.
pub fn version_formats() -> Vec<&'static str> {
    VERSION_FORMATS.iter().map(|(name, _)| *name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admits(range: &str, v: &str) -> bool {
        parse_range(&trim(range))
            .unwrap()
            .matches(&Version::parse(v).unwrap())
    }

    #[test]
    fn trim_removes_v_before_digits_only() {
        assert_eq!(trim(">= v1.9.0"), ">= 1.9.0");
        assert_eq!(trim(">=v1.0.0 <v2.0.0"), ">=1.0.0 <2.0.0");
        assert_eq!(trim("1.0.0-dev"), "1.0.0-dev");
    }

    #[test]
    fn range_with_space_after_operator_parses() {
        assert!(admits(">= v1.9.0", "1.9.0"));
        assert!(admits(">= v1.9.0", "1.10.2"));
        assert!(!admits(">= v1.9.0", "1.8.3"));
    }

    #[test]
    fn range_and_or_forms() {
        assert!(admits(">=1.0.0 <2.0.0", "1.5.0"));
        assert!(!admits(">=1.0.0 <2.0.0", "2.0.0"));
        assert!(admits(">1.0.0 || <0.5.0", "0.4.0"));
        assert!(admits(">1.0.0 || <0.5.0", "1.0.1"));
        assert!(!admits(">1.0.0 || <0.5.0", "0.7.0"));
        assert!(admits("1.2.3", "1.2.3"));
        assert!(admits("!=1.2.3", "1.2.4"));
        assert!(admits("<= 1.2.3", "1.2.3"));
    }

    #[test]
    fn range_wildcards_expand_as_blang_does() {
        assert!(admits("1.2.x", "1.2.9"));
        assert!(!admits("1.2.x", "1.3.0"));
        assert!(admits(">1.x", "2.0.0"));
        assert!(!admits(">1.x", "1.9.0"));
        assert!(admits("<=1.2.x", "1.2.7"));
    }

    #[test]
    fn range_prerelease_orders_below_release_and_build_is_ignored() {
        assert!(!admits(">=1.9.0", "1.9.0-alpha.1"));
        assert!(admits("=1.9.0", "1.9.0+build5"));
    }

    #[test]
    fn bad_ranges_are_errors() {
        for bad in [
            "",
            "|| >1.0.0",
            ">1.0.0 ||",
            "~1.0.0",
            ">=1.0",
            ">=01.0.0",
            "latest",
            "=>1.0.0",
        ] {
            assert!(parse_range(&trim(bad)).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn talos_version_is_tolerant_and_reduced_to_core() {
        assert_eq!(
            parse_talos_version("v1.9.0-alpha.1").unwrap(),
            Version::new(1, 9, 0)
        );
        assert_eq!(parse_talos_version("1.9").unwrap(), Version::new(1, 9, 0));
        assert!(parse_talos_version("one").is_err());
    }

    #[test]
    fn version_formats_of_the_extensions_validator() {
        for (v, fmt) in [
            ("1.2.3", "semver"),
            ("v1.2.3-rc.1", "semver"),
            ("20210914", "yyyymmdd[.N]"),
            ("20210914.1", "yyyymmdd[.N]"),
            // The semver pattern already admits the build-arg form; the
            // validator tries it first, and so does composer.
            ("535.129.03-v1.8.0-alpha.0-10-g336fa0f-dirty", "semver"),
            (
                "5815ee3-v1.8.0-alpha.0-10-g336fa0f",
                "<sha>-v<talos>-<n>-g<sha>",
            ),
            ("v4.3", "vX.Y"),
        ] {
            assert_eq!(version_format(v), Some(fmt), "{v}");
        }
        // Talos' own loader accepts this one (its good test extension).
        assert_eq!(version_format("20220117.0-v1.0.0"), None);
        assert_eq!(version_format("1.2.3+build"), None);
        assert_eq!(version_format("١.٢.٣"), None);
    }
}
