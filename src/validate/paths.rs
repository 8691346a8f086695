//! `extension-paths`: what an extension's `rootfs/` may contain, after
//! Talos' `validateContents` — but with its three holes closed.
//!
//! - Every non-directory lies under one of Talos' `AllowedPaths` (message
//!   kept: `path "/boot/vmlinuz" is not allowed in extensions`). Talos
//!   matches with a plain string prefix, so `/usr/localfoo` passes there;
//!   composer matches on path-component boundaries.
//! - Directories are checked too (Talos never checks them): a directory
//!   must lie under an allowed path or lead to one (`/usr`, `/usr/lib`).
//!   Only the topmost disallowed directory is reported, and only when
//!   nothing inside it was: a stray `/boot/vmlinuz` gives one finding, an
//!   empty `/boot/grub/` one (`/boot`).
//! - No special files: device nodes, fifos, sockets.
//! - Nothing world-writable. Talos tests `DirEntry.Type().Perm()`, which
//!   is always 0 (dead code); composer tests the real mode. A symlink's own
//!   mode means nothing on Linux and is not a finding.
//! - A symlink must resolve inside the extension, under an allowed path.
//!   Its target is resolved as it will be on a node, where the rootfs is
//!   overlaid on `/`: an absolute target from the rootfs root, a relative
//!   one from the link's directory, symlinks met on the way followed
//!   inside the rootfs (40 at most). A `..` above the root is a finding
//!   (escape); a target outside the allowed paths (`/etc/shadow`) is one
//!   too, since on a node it names the host's file. A dangling target
//!   inside the allowed paths is fine (`a.so.1 -> a.so` before `a.so`
//!   exists).

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Component, Path};

use super::{Context, Kind, Rule, Severity, Sink, Tree, components, walk};

/// Talos' `AllowedPaths` (pkg/machinery/extensions).
pub const ALLOWED: &[&str] = &[
    "/etc/cri/conf.d",
    "/usr/lib/firmware",
    "/usr/lib/modules",
    "/usr/lib/ld-linux-x86-64.so.2",
    "/usr/lib/ld-linux-aarch64.so.1",
    "/usr/bin/ldconfig",
    "/etc/ld.so.conf",
    "/etc/ld.so.cache",
    "/usr/bin/nvidia-modprobe",
    "/usr/bin/nvidia-pcc",
    "/usr/bin/nvidia-smi",
    "/usr/bin/nvidia-ctk",
    "/usr/bin/nvidia-cdi-hook",
    "/usr/bin/nvme",
    "/usr/lib/udev/rules.d",
    "/usr/local",
    "/usr/share/glvnd",
    "/usr/share/egl",
    "/etc/vulkan",
];

/// Symlinks followed while resolving one target (the kernel's limit).
const MAX_HOPS: usize = 40;

/// `path` equals `prefix` or lies below it, on a component boundary.
pub fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Whether a file at `path` (`/usr/...`) may ship in an extension.
pub fn allowed(path: &str) -> bool {
    ALLOWED.iter().any(|a| under(path, a))
}

/// Whether a directory at `path` may exist: allowed, or on the way to an
/// allowed path.
pub fn allowed_dir(path: &str) -> bool {
    allowed(path) || path == "/" || ALLOWED.iter().any(|a| under(a, path))
}

/// Where a symlink points, resolved inside the rootfs.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// Components of the resolved path below the rootfs root.
    Inside(Vec<String>),
    /// A `..` climbed above the root.
    Escapes,
    /// More than [`MAX_HOPS`] symlinks.
    Loop,
}

/// Resolves `target`, a symlink at `link` (components below `root`).
pub fn resolve(root: &Path, link: &[String], target: &Path) -> Target {
    let mut hops = 0;
    let parent = &link[..link.len().saturating_sub(1)];
    resolve_from(root, parent.to_vec(), target, false, &mut hops)
}

/// `follow_last`: whether a symlink in the last position is followed too
/// (it is when this target is itself a step of a longer path).
fn resolve_from(
    root: &Path,
    mut at: Vec<String>,
    target: &Path,
    follow_last: bool,
    hops: &mut usize,
) -> Target {
    let parts: Vec<Component<'_>> = target.components().collect();
    for (i, c) in parts.iter().enumerate() {
        match c {
            Component::RootDir | Component::Prefix(_) => at.clear(),
            Component::CurDir => {}
            Component::ParentDir => {
                if at.pop().is_none() {
                    return Target::Escapes;
                }
            }
            Component::Normal(name) => {
                at.push(name.to_string_lossy().into_owned());
                let here = at.iter().fold(root.to_path_buf(), |p, c| p.join(c));
                let is_link = here
                    .symlink_metadata()
                    .is_ok_and(|m| m.file_type().is_symlink());
                // The last component of the link being checked is not
                // followed: where that link points is checked when the
                // walk reaches it.
                if is_link && (follow_last || i + 1 < parts.len()) {
                    *hops += 1;
                    if *hops > MAX_HOPS {
                        return Target::Loop;
                    }
                    let Ok(next) = std::fs::read_link(&here) else {
                        continue;
                    };
                    at.pop();
                    match resolve_from(root, at, &next, true, hops) {
                        Target::Inside(p) => at = p,
                        other => return other,
                    }
                }
            }
        }
    }
    Target::Inside(at)
}

pub struct ExtensionPaths;

impl Rule for ExtensionPaths {
    fn name(&self) -> &'static str {
        "extension-paths"
    }

    fn description(&self) -> &'static str {
        "rootfs/ holds only Talos' allowed paths (component boundaries), no special or world-writable files, no symlink leaving them"
    }

    fn severity(&self) -> Severity {
        Severity::Error
    }

    fn applies_to(&self) -> &'static [Kind] {
        &[Kind::Extension]
    }

    fn check(&self, tree: &Tree<'_>, _ctx: &Context, out: &mut Sink) {
        if !tree.has_fs() {
            return;
        }
        // Disallowed directories, reported at the end unless something
        // inside them was reported already.
        let mut bad_dirs: Vec<String> = Vec::new();
        let mut reported: Vec<String> = Vec::new();
        for entry in walk(&tree.fs_root).min_depth(1) {
            let entry = match entry {
                Ok(e) => e,
                Err(err) => {
                    out.unreadable(tree, &err);
                    continue;
                }
            };
            let shown = tree.display(entry.path());
            let ft = entry.file_type();
            let mut report = |out: &mut Sink, message: String| {
                out.push(shown.clone(), message);
                reported.push(shown.clone());
            };
            if ft.is_dir() {
                if !allowed_dir(&shown) {
                    bad_dirs.push(shown.clone());
                }
            } else if !allowed(&shown) {
                report(out, format!("path {shown:?} is not allowed in extensions"));
            }
            if ft.is_block_device() || ft.is_char_device() || ft.is_fifo() || ft.is_socket() {
                let what = if ft.is_block_device() {
                    "block device"
                } else if ft.is_char_device() {
                    "character device"
                } else if ft.is_fifo() {
                    "fifo"
                } else {
                    "socket"
                };
                report(
                    out,
                    format!("special files are not allowed: {shown:?} is a {what}"),
                );
            }
            if !ft.is_symlink() {
                match entry.metadata() {
                    Ok(m) if m.permissions().mode() & 0o002 != 0 => report(
                        out,
                        format!(
                            "world-writeable files are not allowed: {shown:?} has mode {:04o}",
                            m.permissions().mode() & 0o7777
                        ),
                    ),
                    Ok(_) => {}
                    Err(e) => report(out, format!("cannot read: {e}")),
                }
            } else {
                let link = components(&tree.fs_root, entry.path());
                let target = match std::fs::read_link(entry.path()) {
                    Ok(t) => t,
                    Err(e) => {
                        report(out, format!("cannot read the symlink: {e}"));
                        continue;
                    }
                };
                let t = target.display();
                match resolve(&tree.fs_root, &link, &target) {
                    Target::Escapes => report(
                        out,
                        format!("symlink target {t:?} escapes the extension's rootfs"),
                    ),
                    Target::Loop => report(
                        out,
                        format!("symlink target {t:?}: more than {MAX_HOPS} symlinks"),
                    ),
                    Target::Inside(p) => {
                        let resolved =
                            super::display_rel(&p.iter().collect::<std::path::PathBuf>());
                        if !allowed(&resolved) {
                            report(
                                out,
                                format!(
                                    "symlink target {t:?} resolves to {resolved}, outside the paths an extension may provide (on a node it would name the host's file)"
                                ),
                            );
                        }
                    }
                }
            }
        }
        for dir in &bad_dirs {
            let has_bad_parent = bad_dirs.iter().any(|d| d != dir && under(dir, d));
            if !has_bad_parent && !reported.iter().any(|r| under(r, dir)) {
                out.push(
                    dir.clone(),
                    format!("directory {dir:?} is not allowed in extensions"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_matches_on_component_boundaries() {
        assert!(allowed("/usr/local"));
        assert!(allowed("/usr/local/bin/x"));
        assert!(!allowed("/usr/localfoo/x"));
        assert!(!allowed("/usr/lib/ld-linux-x86-64.so.2.bak"));
        assert!(allowed("/usr/lib/modules/6.1.0/extra/a.ko"));
        assert!(!allowed("/usr/lib64/a.so"));
        assert!(!allowed("/boot/vmlinuz"));
    }

    #[test]
    fn directories_leading_to_allowed_paths_are_fine() {
        assert!(allowed_dir("/"));
        assert!(allowed_dir("/usr"));
        assert!(allowed_dir("/usr/lib"));
        assert!(allowed_dir("/etc/cri"));
        assert!(allowed_dir("/usr/local/share/x"));
        assert!(!allowed_dir("/boot"));
        assert!(!allowed_dir("/usr/lib64"));
        assert!(!allowed_dir("/usr/loc"));
    }

    #[test]
    fn resolve_handles_absolute_relative_and_escapes() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let link = |s: &str| s.split('/').map(str::to_string).collect::<Vec<_>>();
        assert_eq!(
            resolve(root, &link("usr/local/lib/a.so.1"), Path::new("a.so")),
            Target::Inside(link("usr/local/lib/a.so"))
        );
        assert_eq!(
            resolve(root, &link("usr/local/x"), Path::new("/etc/shadow")),
            Target::Inside(link("etc/shadow"))
        );
        assert_eq!(
            resolve(root, &link("usr/local/x"), Path::new("../../../etc/passwd")),
            Target::Escapes
        );
        assert_eq!(
            resolve(root, &link("usr/local/x"), Path::new("../../etc/passwd")),
            Target::Inside(link("etc/passwd"))
        );
    }

    #[test]
    fn resolve_follows_intermediate_links_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("usr/local/lib")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("usr/local/lib/e")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("usr/local/loop")).unwrap();
        let link = |s: &str| s.split('/').map(str::to_string).collect::<Vec<_>>();
        assert_eq!(
            resolve(root, &link("usr/local/x"), Path::new("lib/e/shadow")),
            Target::Inside(link("etc/shadow"))
        );
        assert_eq!(
            resolve(root, &link("usr/local/x"), Path::new("loop/a")),
            Target::Loop
        );
    }
}
