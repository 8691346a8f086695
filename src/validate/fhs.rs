//! `fhs`: the filesystem layout Talos' fhs-validator enforces on a
//! package's root filesystem (for an extension: on its `rootfs/`).
//!
//! - Top level: only `usr etc dev proc sys opt run var root tmp home`,
//!   each a directory.
//! - Under `usr`: only `bin lib share libexec include etc local src var`.
//! - No documentation trees: `usr/share/{man,info,doc,locale}`, the same
//!   under `usr/local/share`, and `usr/local/man`.
//!
//! Invariants, and where composer is stricter than Talos' validator:
//! paths are compared by whole components, never as regular expressions or
//! string prefixes (so `usr/share/manual` passes and `usr/share/man` does
//! not); entries whose names start with a dot are checked like any other
//! (`.hidden/` at the top level is not an FHS directory). One finding is
//! made per offending directory, not one per file inside it. KMM kmod
//! images are not checked: KMM defines their layout (`/firmware` at the
//! top).

use super::{Context, Kind, Rule, Severity, Sink, Tree, components, walk};

pub const TOP_LEVEL: &[&str] = &[
    "usr", "etc", "dev", "proc", "sys", "opt", "run", "var", "root", "tmp", "home",
];
pub const UNDER_USR: &[&str] = &[
    "bin", "lib", "share", "libexec", "include", "etc", "local", "src", "var",
];
/// Documentation trees, as component sequences.
pub const FORBIDDEN: &[&[&str]] = &[
    &["usr", "share", "man"],
    &["usr", "share", "info"],
    &["usr", "share", "doc"],
    &["usr", "share", "locale"],
    &["usr", "local", "share", "man"],
    &["usr", "local", "share", "info"],
    &["usr", "local", "share", "doc"],
    &["usr", "local", "share", "locale"],
    &["usr", "local", "man"],
];

pub struct Fhs;

/// Why an entry (given as its components below the root) breaks the
/// layout, if it does; `is_dir` is its own type (not followed).
pub fn check_entry(parts: &[String], is_dir: bool) -> Option<String> {
    let names: Vec<&str> = parts.iter().map(String::as_str).collect();
    match names.as_slice() {
        [] => None,
        [top] if !TOP_LEVEL.contains(top) => Some(format!(
            "`{top}` is not an FHS top-level directory (allowed: {})",
            TOP_LEVEL.join(" ")
        )),
        [_] if !is_dir => Some("must be a directory".to_string()),
        ["usr", sub] if !UNDER_USR.contains(sub) => Some(format!(
            "`usr/{sub}` is not allowed under /usr (allowed: {})",
            UNDER_USR.join(" ")
        )),
        _ => FORBIDDEN
            .iter()
            .find(|f| f.len() == names.len() && **f == names.as_slice())
            .map(|f| {
                format!(
                    "documentation trees are not shipped: `{}` is forbidden",
                    f.join("/")
                )
            }),
    }
}

/// Whether some forbidden tree lies strictly below `parts`.
fn leads_to_forbidden(parts: &[String]) -> bool {
    FORBIDDEN
        .iter()
        .any(|f| f.len() > parts.len() && f.iter().zip(parts).all(|(a, b)| a == b))
}

impl Rule for Fhs {
    fn name(&self) -> &'static str {
        "fhs"
    }

    fn description(&self) -> &'static str {
        "FHS layout: allowed top-level and /usr directories, no man/info/doc/locale trees (whole path components, dotfiles included)"
    }

    fn severity(&self) -> Severity {
        Severity::Error
    }

    fn applies_to(&self) -> &'static [Kind] {
        // Not KMM kmod images: their layout is KMM's (`/opt/lib/modules`,
        // `/firmware`), not a Talos root filesystem.
        &[Kind::Extension, Kind::Rootfs]
    }

    fn check(&self, tree: &Tree<'_>, _ctx: &Context, out: &mut Sink) {
        if !tree.has_fs() {
            return;
        }
        let mut it = walk(&tree.fs_root).min_depth(1).into_iter();
        while let Some(entry) = it.next() {
            let entry = match entry {
                Ok(e) => e,
                Err(err) => {
                    out.unreadable(tree, &err);
                    continue;
                }
            };
            let parts = components(&tree.fs_root, entry.path());
            let is_dir = entry.file_type().is_dir();
            if let Some(message) = check_entry(&parts, is_dir) {
                out.push(tree.display(entry.path()), message);
                if is_dir {
                    // One finding for the directory, not one per file.
                    it.skip_current_dir();
                }
                continue;
            }
            // Below a directory that leads to no forbidden tree nothing
            // can break a rule: do not walk it.
            if is_dir && !leads_to_forbidden(&parts) {
                it.skip_current_dir();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(path: &str, is_dir: bool) -> Option<String> {
        let parts: Vec<String> = path.split('/').map(str::to_string).collect();
        check_entry(&parts, is_dir)
    }

    #[test]
    fn fhs_matches_whole_components() {
        assert!(check("usr/share/man", true).is_some());
        assert!(check("usr/share/manual", true).is_none());
        assert!(check("usr/share/man1", true).is_none());
        assert!(check("usr/local/share/locale", true).is_some());
        assert!(check("usr/local/share/locales", true).is_none());
        assert!(check("usr/share/doc", false).is_some());
    }

    #[test]
    fn fhs_checks_dotfiles_and_top_level() {
        assert!(check(".hidden", true).is_some());
        assert!(check(".profile", false).is_some());
        assert!(check("usr/.cache", true).is_some());
        assert!(check("boot", true).is_some());
        assert!(check("usr", false).is_some());
        assert!(check("usr/lib64", true).is_some());
        assert!(check("usr/lib/x/.keep", false).is_none());
        assert!(check("etc/.keep", false).is_none());
    }
}
