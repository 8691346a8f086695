//! `composer new kmod` on a copy of the demo tree: running it, checking a
//! refusal left the tree byte for byte as it was, and reading what it
//! wrote.
#![allow(dead_code)] // not every test binary uses every helper

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use walkdir::WalkDir;

use super::composer;

/// The demo tree (pkgs/, extensions/, fixtures/) copied into a temp dir.
pub fn demo_copy() -> tempfile::TempDir {
    super::demo::copy_project()
}

pub const URL: &str = "https://github.com/example/my-drv/archive/refs/tags/v1.2.3.tar.gz";

pub fn sha256() -> String {
    "ab".repeat(32)
}

pub fn sha512() -> String {
    "cd".repeat(64)
}

/// Every file and directory under `dir`, with file contents.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .map(|e| e.unwrap())
        .map(|e| {
            let content = e
                .file_type()
                .is_file()
                .then(|| std::fs::read(e.path()).unwrap());
            (e.path().strip_prefix(dir).unwrap().to_path_buf(), content)
        })
        .collect()
}

pub fn new_kmod(dir: &Path, name: &str, extra: &[&str]) -> Output {
    let (s256, s512) = (sha256(), sha512());
    let mut args = vec![
        "new", "kmod", name, "--source", URL, "--sha256", &s256, "--sha512", &s512,
    ];
    args.extend_from_slice(extra);
    composer(dir, &args)
}

pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `composer ARGS` with the kernel's build args (dummy checksums).
pub fn with_linux(dir: &Path, args: &[&str]) -> Output {
    let a256 = format!("LINUX_SOURCE_SHA256={}", "1".repeat(64));
    let a512 = format!("LINUX_SOURCE_SHA512={}", "2".repeat(128));
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["--build-arg", &a256, "--build-arg", &a512]);
    composer(dir, &full)
}

/// Runs a refused `composer new kmod` and checks the exit code, the
/// message and that nothing changed.
pub fn refused(dir: &Path, args: &[&str], message: &str) {
    let before = snapshot(dir);
    let out = composer(dir, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(
        err.contains(message),
        "{args:?}: wanted `{message}` in: {err}"
    );
    assert!(err.contains("nothing was written"), "{err}");
    assert!(snapshot(dir) == before, "{args:?} changed the tree");
}

pub fn module_pkg(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("pkgs/{name}-pkg/pkg.yaml"))).unwrap()
}

/// Both make calls of the module stage build in `m` (`M=` value).
pub fn assert_builds_in(pkg: &str, m: &str) {
    assert!(
        pkg.contains(&format!("make -C /src M={m} -j$(nproc) modules\n")),
        "{pkg}"
    );
    assert!(
        pkg.contains(&format!("make -C /src M={m} modules_install ")),
        "{pkg}"
    );
}
