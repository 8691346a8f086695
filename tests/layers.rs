//! How a stage's inputs reach its root: whole dependency outputs are
//! overlay layers (never copied, never changed by the dependant), other
//! inputs are copied on top in merge order, and when an overlay cannot be
//! made the build copies everything and says so. Real sandboxes, real
//! overlayfs, the real cache; these tests run as root.

mod common;

use std::fs;
use std::path::Path;
use std::process::Output;

use tempfile::TempDir;

const PKGFILE: &str = "format: v1alpha2\n";

/// `base`: a whole tree with a file to append to and a directory to prune.
const BASE: &str = r#"name: base
variant: host
shell: /bin/bash
steps:
  - install:
      - |
        install -d /out/d /out/o
        echo base > /out/f
        echo x > /out/d/x
        echo y > /out/d/y
        echo base > /out/o/who
finalize:
  - from: /out
    to: /
"#;

/// `user`: changes its input in place, removes a file from it, and
/// reports the filesystem its root is.
const USER: &str = r#"name: user
variant: host
shell: /bin/bash
dependencies:
  - stage: base
steps:
  - install:
      - |
        echo more >> /f
        rm /d/x
        install -d /rootfs
        stat -f -c %T / > /rootfs/fstype
        cp /f /rootfs/f
        ls /d > /rootfs/d-listing
finalize:
  - from: /rootfs
    to: /
"#;

fn project(pkgs: &[(&str, &str)]) -> TempDir {
    common::project(PKGFILE, pkgs)
}

fn build(dir: &Path, cache: &str, targets: &[&str]) -> Output {
    let mut all = vec!["--root", "p", "build", "--cache-dir", cache];
    all.extend_from_slice(targets);
    common::composer(dir, &all)
}

fn ok(o: &Output) -> String {
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "build failed: {e}");
    e
}

fn read(dir: &Path, rel: &str) -> String {
    fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn mounts() -> String {
    fs::read_to_string("/proc/self/mountinfo").unwrap()
}

#[test]
fn a_whole_tree_input_is_an_overlay_the_dependant_cannot_change() {
    let d = project(&[("base/pkg.yaml", BASE), ("user/pkg.yaml", USER)]);
    let e = ok(&build(d.path(), "cache", &["user"]));
    assert!(!e.contains("inputs copied"), "{e}");
    assert_eq!(read(d.path(), "_out/user/fstype"), "overlayfs\n");
    // The dependant saw its writes and its removal.
    assert_eq!(read(d.path(), "_out/user/f"), "base\nmore\n");
    assert_eq!(read(d.path(), "_out/user/d-listing"), "y\n");

    // The cached output of base is untouched: it verifies, and exporting
    // it again gives the original files.
    let v = common::composer(d.path(), &["cache", "verify", "--cache-dir", "cache"]);
    assert!(
        v.status.success(),
        "cache verify: {}",
        String::from_utf8_lossy(&v.stderr)
    );
    let again = ok(&build(d.path(), "cache", &["base"]));
    assert!(again.contains("cached"), "{again}");
    assert_eq!(read(d.path(), "_out/base/f"), "base\n");
    assert_eq!(read(d.path(), "_out/base/d/x"), "x\n");

    // No mount outlives the build, and the work directory is gone.
    let cache = fs::canonicalize(d.path().join("cache")).unwrap();
    let here = cache.to_str().unwrap();
    assert!(
        !mounts().contains(here),
        "a mount under {here} is left:\n{}",
        mounts()
    );
    let work: Vec<_> = fs::read_dir(cache.join("work"))
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(work.is_empty(), "work directories left: {work:?}");
}

/// `other`: a tree merged from a subdirectory, so it is copied.
const OTHER: &str = r#"name: other
variant: host
shell: /bin/bash
steps:
  - install:
      - install -d /out/o && echo other > /out/o/who
finalize:
  - from: /out
    to: /
"#;

/// `top`: a whole tree again, after the copied input.
const TOP: &str = r#"name: top
variant: host
shell: /bin/bash
steps:
  - install:
      - install -d /out/o && echo top > /out/o/who && echo top > /out/only-top
finalize:
  - from: /out
    to: /
"#;

const MIXED: &str = r#"name: mixed
variant: host
shell: /bin/bash
dependencies:
  - stage: base
  - stage: other
    from: /o
    to: /o
  - stage: top
steps:
  - install:
      - install -d /rootfs && cat /o/who /only-top /f > /rootfs/seen
finalize:
  - from: /rootfs
    to: /
"#;

#[test]
fn later_inputs_win_whether_layered_or_copied() {
    let d = project(&[
        ("base/pkg.yaml", BASE),
        ("other/pkg.yaml", OTHER),
        ("top/pkg.yaml", TOP),
        ("mixed/pkg.yaml", MIXED),
    ]);
    ok(&build(d.path(), "cache", &["mixed"]));
    // base is a layer; other (a subdirectory) and top (after it) are
    // copied on top in merge order, so top's /o/who wins.
    assert_eq!(read(d.path(), "_out/mixed/seen"), "top\ntop\nbase\n");
}

#[test]
fn a_cache_path_overlayfs_cannot_spell_falls_back_to_copying_and_says_so() {
    let d = project(&[("base/pkg.yaml", BASE), ("user/pkg.yaml", USER)]);
    let e = ok(&build(d.path(), "ca:che", &["user"]));
    assert!(
        e.contains("user: inputs copied, not layered:") && e.contains("cannot carry"),
        "{e}"
    );
    assert_ne!(read(d.path(), "_out/user/fstype"), "overlayfs\n");
    // The same result as through the overlay.
    assert_eq!(read(d.path(), "_out/user/f"), "base\nmore\n");
    assert_eq!(read(d.path(), "_out/user/d-listing"), "y\n");
    ok(&build(d.path(), "ca:che", &["base"]));
    assert_eq!(read(d.path(), "_out/base/f"), "base\n");
}
