//! The module dependency extension, as Talos' imager makes it: the base
//! root filesystem's `/usr/lib/modules/<release>` merged with every
//! extension's modules, indexed by kmod's `depmod`, and only the index
//! files (`modules.*`) shipped as one more extension layer, on top of all
//! others, so `modprobe` on the booted system sees every module.
//!
//! Invariants:
//! - Every extension's modules are for the base kernel's release; the
//!   check is made here, before anything is merged, naming the extension
//!   and both releases.
//! - An extension never overrides the base's `modules.*` files: its own
//!   index files are ignored (depmod rewrites them all).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::InstallerError;

/// The kernel releases an extension tree carries modules for
/// (`rootfs/usr/lib/modules/<release>` holding at least one `.ko*`).
pub fn releases(ext_root: &Path) -> Vec<String> {
    let dir = ext_root.join("rootfs/usr/lib/modules");
    let mut out: Vec<String> = fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir() && has_modules(&e.path()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

fn has_modules(dir: &Path) -> bool {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .any(|e| e.file_type().is_file() && is_module(e.path()))
}

fn is_module(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".ko") || n.contains(".ko."))
}

/// Refuses extensions whose modules are for another kernel release.
pub fn check_release(name: &str, ext_root: &Path, release: &str) -> Result<(), InstallerError> {
    let found = releases(ext_root);
    if let Some(other) = found.iter().find(|r| r.as_str() != release) {
        return Err(InstallerError::Release {
            extension: name.to_string(),
            found: other.clone(),
            base: release.to_string(),
        });
    }
    Ok(())
}

/// Merges the base's modules (`base_modules`: a tree holding
/// `usr/lib/modules/<release>`, extracted from `rootfs.sqsh`) with the
/// extensions' modules, runs depmod, and writes the dependency extension's
/// `rootfs/` into `dest`. Returns `dest`.
pub fn dependency_extension(
    base_modules: &Path,
    extensions: &[PathBuf],
    release: &str,
    dest: &Path,
) -> Result<PathBuf, InstallerError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source: std::io::Error| InstallerError::Io {
            path: path.clone(),
            source,
        }
    };
    let merged = base_modules.join("usr/lib/modules").join(release);
    fs::create_dir_all(&merged).map_err(io(&merged))?;
    for ext in extensions {
        let src = ext.join("rootfs/usr/lib/modules").join(release);
        if !src.is_dir() {
            continue;
        }
        for entry in walkdir::WalkDir::new(&src).min_depth(1) {
            let entry = entry.map_err(|e| InstallerError::Io {
                path: src.clone(),
                source: e.into(),
            })?;
            let rel = entry.path().strip_prefix(&src).unwrap_or(entry.path());
            let name = entry.file_name().to_string_lossy();
            if rel.components().count() == 1 && name.starts_with("modules.") {
                continue;
            }
            let to = merged.join(rel);
            if entry.file_type().is_dir() {
                fs::create_dir_all(&to).map_err(io(&to))?;
            } else if entry.file_type().is_file() {
                fs::copy(entry.path(), &to).map_err(io(&to))?;
            }
        }
    }
    let out = Command::new("depmod")
        .arg("--all")
        .arg("--basedir")
        .arg(base_modules.join("usr"))
        .arg(release)
        .output()
        .map_err(|e| InstallerError::Tool {
            tool: "depmod",
            message: if e.kind() == std::io::ErrorKind::NotFound {
                format!("not found ({e}); apt-get install kmod")
            } else {
                e.to_string()
            },
        })?;
    if !out.status.success() {
        return Err(InstallerError::Tool {
            tool: "depmod",
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let index = dest.join("rootfs/usr/lib/modules").join(release);
    fs::create_dir_all(&index).map_err(io(&index))?;
    for entry in fs::read_dir(&merged).map_err(io(&merged))? {
        let entry = entry.map_err(io(&merged))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("modules.") && entry.path().is_file() {
            fs::copy(entry.path(), index.join(&name)).map_err(io(&entry.path()))?;
        }
    }
    Ok(dest.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_are_the_directories_holding_modules() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("rootfs/usr/lib/modules");
        fs::create_dir_all(m.join("6.1.0/extra")).unwrap();
        fs::write(m.join("6.1.0/extra/a.ko"), b"").unwrap();
        fs::create_dir_all(m.join("6.2.0")).unwrap();
        assert_eq!(releases(d.path()), vec!["6.1.0".to_string()]);
        assert!(check_release("x", d.path(), "6.1.0").is_ok());
        let e = check_release("x", d.path(), "6.1.1")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("6.1.0") && e.contains("6.1.1") && e.contains("x"),
            "{e}"
        );
    }
}
