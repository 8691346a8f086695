//! Kernel Module Management (KMM) kmod images: the `.ko` files of a
//! stage under `/opt/lib/modules/<kernel release>/` (their paths below
//! the release directory kept), the module index made by kmod's own
//! `depmod -b /opt <release>`, firmware under `/firmware` (KMM's
//! `firmwarePath` convention), and optionally the symlink
//! `/opt/lib/modules/<release>/host -> /lib/modules/<release>` through
//! which modprobe finds in-tree dependencies on the node.
//!
//! Invariants:
//! - Exactly one kernel release directory in the stage; none or several is
//!   an error naming them.
//! - `depmod` runs before the `host` link exists, so the index lists only
//!   the image's modules, never the build host's.
//! - The tree is assembled in a work directory the caller owns and
//!   removes; the stage output is not modified.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::OutputError;

/// Where a stage keeps its modules: `usr/lib/modules` (merged /usr) or
/// `lib/modules`.
const MODULE_DIRS: [&str; 2] = ["usr/lib/modules", "lib/modules"];

/// The single kernel release directory of a stage output.
pub fn release_dir(tree: &Path) -> Result<(String, PathBuf), OutputError> {
    let mut found = Vec::new();
    for d in MODULE_DIRS {
        let dir = tree.join(d);
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            if e.path().is_dir() {
                found.push((e.file_name().to_string_lossy().into_owned(), e.path()));
            }
        }
    }
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(OutputError::Input {
            path: tree.to_path_buf(),
            message: "holds no kernel modules (no usr/lib/modules/<release>/): a kmod image packs modules".into(),
        }),
        _ => Err(OutputError::Input {
            path: tree.to_path_buf(),
            message: format!(
                "holds modules for several kernel releases ({}); a kmod image is for one",
                found.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>().join(", ")
            ),
        }),
    }
}

/// Assembles the kmod image tree in `work` (created, must not exist) from
/// the stage output `tree`; returns the kernel release.
pub fn assemble(tree: &Path, work: &Path, host_link: bool) -> Result<String, OutputError> {
    let (release, src) = release_dir(tree)?;
    let dest = work.join("opt/lib/modules").join(&release);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| OutputError::Io { path, source }
    };
    fs::create_dir_all(&dest).map_err(io(&dest))?;
    let mut count = 0usize;
    for e in walkdir::WalkDir::new(&src).sort_by_file_name() {
        let e = e.map_err(|e| OutputError::Input {
            path: src.clone(),
            message: e.to_string(),
        })?;
        let name = e.file_name().to_string_lossy();
        if !e.file_type().is_file() || !(name.ends_with(".ko") || name.contains(".ko.")) {
            continue;
        }
        let rel = e
            .path()
            .strip_prefix(&src)
            .expect("walkdir stays under its root");
        let to = dest.join(rel);
        if let Some(p) = to.parent() {
            fs::create_dir_all(p).map_err(io(p))?;
        }
        fs::copy(e.path(), &to).map_err(io(&to))?;
        count += 1;
    }
    if count == 0 {
        return Err(OutputError::Input {
            path: src,
            message: "holds no .ko files".into(),
        });
    }
    for fw in ["usr/lib/firmware", "lib/firmware"] {
        let from = tree.join(fw);
        if from.is_dir() {
            copy_tree(&from, &work.join("firmware"))?;
        }
    }
    let out = Command::new("depmod")
        .arg("-b")
        .arg(work.join("opt"))
        .arg(&release)
        .output()
        .map_err(|e| OutputError::Tool {
            tool: "depmod".into(),
            message: format!("{e} (install kmod: apt-get install kmod)"),
        })?;
    if !out.status.success() {
        return Err(OutputError::Tool {
            tool: "depmod".into(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    if host_link {
        let link = dest.join("host");
        std::os::unix::fs::symlink(format!("/lib/modules/{release}"), &link).map_err(io(&link))?;
    }
    Ok(release)
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), OutputError> {
    for e in walkdir::WalkDir::new(from).sort_by_file_name() {
        let e = e.map_err(|e| OutputError::Input {
            path: from.to_path_buf(),
            message: e.to_string(),
        })?;
        let rel = e
            .path()
            .strip_prefix(from)
            .expect("walkdir stays under its root");
        let dst = to.join(rel);
        let err = |source| OutputError::Io {
            path: dst.clone(),
            source,
        };
        if e.file_type().is_dir() {
            fs::create_dir_all(&dst).map_err(err)?;
        } else if e.file_type().is_symlink() {
            let target = fs::read_link(e.path()).map_err(err)?;
            std::os::unix::fs::symlink(target, &dst).map_err(err)?;
        } else {
            fs::copy(e.path(), &dst).map_err(err)?;
        }
    }
    Ok(())
}
