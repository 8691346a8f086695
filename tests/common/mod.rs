//! Shared by the integration tests: a tree of files in a fresh temporary
//! directory, and running the real `composer` binary on it; `demo` for the
//! bundled demo tree, `debian` for Debian's kernels, `registry` for a real
//! registry, `scaffold` for `composer new`, `kmod` for module stages without
//! a kernel, `node` for `composer kmod`, `guest` for `composer kmod` on a
//! kernel booted under QEMU, `ktree` for the stand-in session tree.

pub mod debian;
pub mod demo;
pub mod guest;
pub mod kmod;
pub mod ktree;
pub mod node;
pub mod registry;
pub mod scaffold;

use std::path::Path;
use std::process::{Command, Output};

use tempfile::TempDir;

/// Writes `(relative path, contents)` pairs into a fresh directory.
#[allow(dead_code)] // not every test binary uses it
pub fn tree<C: AsRef<[u8]>>(files: &[(&str, C)]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    dir
}

/// A definitions tree under `p/`: `p/Pkgfile` with `pkgfile`, and each
/// `(path under p/, contents)` pair.
#[allow(dead_code)] // not every test binary uses it
pub fn project<C: AsRef<str>>(pkgfile: &str, pkgs: &[(&str, C)]) -> TempDir {
    let mut files: Vec<(String, String)> = vec![("p/Pkgfile".into(), pkgfile.into())];
    for (path, text) in pkgs {
        files.push((format!("p/{path}"), text.as_ref().to_string()));
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    tree(&refs)
}

/// Runs composer in `cwd` without colour; a panic is always a failure.
#[allow(dead_code)] // not every test binary uses it
pub fn composer(cwd: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_composer"))
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    out
}

/// Runs a bash command in `dir`; a failure fails the test with its stderr.
#[allow(dead_code)] // not every test binary uses it
pub fn sh(dir: &Path, cmd: &str) {
    let o = Command::new("bash")
        .args(["-c", cmd])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs a command; a failure fails the test with its stderr. Returns stdout.
#[allow(dead_code)] // not every test binary uses it
pub fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The digest of the manifest tagged `tag` in an OCI layout's index.json.
#[allow(dead_code)] // not every test binary uses it
pub fn layout_digest(layout: &Path, tag: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no tag {tag}: {index}"))["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Unpacks `image` (`LAYOUT:TAG`) with umoci into `bundle`; returns the
/// sorted names at the root of the unpacked filesystem.
#[allow(dead_code)] // not every test binary uses it
pub fn umoci_unpack(image: &str, bundle: &Path) -> Vec<String> {
    run(Command::new("umoci")
        .args(["unpack", "--image", image])
        .arg(bundle));
    let mut top: Vec<String> = std::fs::read_dir(bundle.join("rootfs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    top
}
