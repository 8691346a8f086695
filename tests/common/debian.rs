//! Debian's own kernels for tests that build or check modules against a
//! kernel composer did not build: the archive's two newest releases (as
//! `scripts/debian-kernel.sh releases` names them: [`new`] and [`old`]),
//! their packages fetched by `scripts/debian-kernel.sh` into
//! `target/debian-debs` with the build args that name them (files already
//! there are kept; once per test process), unpacked into
//! `target/debian-headers/<release>` (once: a finished unpack is renamed
//! into place, so concurrent test processes never see half of one), the
//! fixture modules built against them (once per fixture content, the same
//! way), and one-file modules built in a test's own temporary directory.
//! Nothing is skipped: when a package cannot be had, the test fails and
//! says why.
#![allow(dead_code)] // not every test binary uses every helper

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tempfile::TempDir;

fn target() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target")
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/debian-kernel.sh")
}

/// Runs the script (one at a time across test processes: one download
/// each); its stdout.
fn script_run(args: &[&str]) -> String {
    let dir = target().join("debian-debs");
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new("flock")
        .arg(dir.join(".lock"))
        .arg("bash")
        .arg(script())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", script().display()));
    assert!(
        out.status.success(),
        "scripts/debian-kernel.sh {} failed (these tests need `apt-get download` to work, with Debian 12 sources configured):\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The archive's two newest cloud-amd64 releases (newest first), fetched
/// into `target/debian-debs/<release>/` (`headers.deb`, `common.deb`,
/// `kbuild.deb`, `image.deb`, `build-args`).
pub fn two_releases() -> &'static [String] {
    static RELEASES: OnceLock<Vec<String>> = OnceLock::new();
    RELEASES.get_or_init(|| {
        let releases: Vec<String> = script_run(&["releases", "2"])
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(releases.len(), 2, "two releases: {releases:?}");
        let dir = target().join("debian-debs");
        let mut args = vec!["fetch", dir.to_str().unwrap()];
        args.extend(releases.iter().map(String::as_str));
        script_run(&args);
        releases
    })
}

/// The archive's newest release.
pub fn new() -> &'static str {
    &two_releases()[0]
}

/// The release before it.
pub fn old() -> &'static str {
    &two_releases()[1]
}

/// `target/debian-debs/<release>/` (one of [`two_releases`]).
pub fn debs(release: &str) -> PathBuf {
    assert!(
        two_releases().iter().any(|r| r == release),
        "{release} is not one of {:?}",
        two_releases()
    );
    target().join("debian-debs").join(release)
}

/// The `--build-arg=...` options for `release` (written by the fetch).
pub fn build_args(release: &str) -> Vec<String> {
    let file = debs(release).join("build-args");
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .lines()
        .map(str::to_string)
        .collect()
}

/// `target/debian-debs/<release>/image.deb`: the kernel itself.
pub fn image_deb(release: &str) -> PathBuf {
    debs(release).join("image.deb")
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (is it installed?)"));
    assert!(
        out.status.success(),
        "{cmd:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Unpacks `packages` of `release` into `dest` (which must not exist), by way
/// of a sibling directory renamed into place; `patch` runs on the
/// unpacked tree first, given the final path.
fn unpack_once(release: &str, packages: &[&str], dest: &Path, patch: impl Fn(&Path, &Path)) {
    if dest.is_dir() {
        return;
    }
    let parent = dest.parent().unwrap();
    std::fs::create_dir_all(parent).unwrap();
    let tmp = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(parent)
        .unwrap();
    for deb in packages {
        run(Command::new("dpkg-deb")
            .arg("-x")
            .arg(debs(release).join(deb))
            .arg(tmp.path()));
    }
    patch(tmp.path(), dest);
    // Another process may have finished first; its tree is as good.
    if std::fs::rename(tmp.path(), dest).is_err() {
        assert!(dest.is_dir(), "{}: could not be created", dest.display());
    }
}

/// The root the three header packages of `release` are unpacked into:
/// `<prefix>/usr/src/linux-headers-<release>` is the build tree, its
/// `Makefile` pointing at this prefix's common headers.
pub fn header_prefix(release: &str) -> PathBuf {
    let dest = target().join("debian-headers").join(release);
    unpack_once(
        release,
        &["headers.deb", "common.deb", "kbuild.deb"],
        &dest,
        |tmp, dest| {
            let makefile = tmp.join(format!("usr/src/linux-headers-{release}/Makefile"));
            let text = std::fs::read_to_string(&makefile)
                .unwrap_or_else(|e| panic!("{}: {e}", makefile.display()));
            let patched = text.replace(
                "include /usr/src/",
                &format!("include {}/usr/src/", dest.display()),
            );
            assert_ne!(
                text,
                patched,
                "{}: no `include /usr/src/`",
                makefile.display()
            );
            std::fs::write(&makefile, patched).unwrap();
        },
    );
    dest
}

/// The kernel build tree of `release`: Debian's headers.
pub fn build_tree(release: &str) -> PathBuf {
    header_prefix(release).join(format!("usr/src/linux-headers-{release}"))
}

/// `release`'s kernel package unpacked as a root filesystem:
/// `<dir>/usr/lib/modules/<release>/` holds every module Debian ships for
/// it (the package's `/lib`, moved where a merged-/usr system has it).
pub fn image(release: &str) -> PathBuf {
    let dest = target().join("debian-image").join(release);
    unpack_once(release, &["image.deb"], &dest, |tmp, _| {
        std::fs::create_dir_all(tmp.join("usr")).unwrap();
        std::fs::rename(tmp.join("lib"), tmp.join("usr/lib")).unwrap();
    });
    dest
}

/// `release`'s kernel image (`vmlinuz-<release>`), to boot.
pub fn vmlinuz(release: &str) -> PathBuf {
    image(release)
        .join("boot")
        .join(format!("vmlinuz-{release}"))
}

/// The fixture's two modules built against a release; copy them before
/// changing them (other tests use the same files).
pub struct Fixture {
    /// `hello_pcie.ko`: exports `hello_pcie_greeting` (GPL-only).
    pub pcie: PathBuf,
    /// `hello_user.ko`: uses `hello_pcie_greeting`.
    pub user: PathBuf,
}

/// The first 16 hex digits of the sha256 over the fixture's files (names
/// and contents), so a changed fixture is built afresh.
fn fixture_digest(src: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for e in walkdir::WalkDir::new(src).sort_by_file_name() {
        let e = e.unwrap();
        if e.file_type().is_file() {
            h.update(
                e.path()
                    .strip_prefix(src)
                    .unwrap()
                    .to_string_lossy()
                    .as_bytes(),
            );
            h.update([0]);
            h.update(std::fs::read(e.path()).unwrap());
        }
    }
    hex::encode(h.finalize())[..16].to_string()
}

/// `fixtures/hello-module` built against `release`'s headers, once: in
/// `target/debian-fixture/<release>-<digest of the fixture>`.
pub fn build_fixture(release: &str) -> Fixture {
    let tree = build_tree(release);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hello-module");
    let dest = target()
        .join("debian-fixture")
        .join(format!("{release}-{}", fixture_digest(&src)));
    if !dest.is_dir() {
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let tmp = tempfile::Builder::new()
            .prefix(".build-")
            .tempdir_in(dest.parent().unwrap())
            .unwrap();
        run(Command::new("cp").arg("-a").arg(&src).arg(tmp.path()));
        run(Command::new("make")
            .arg("-C")
            .arg(tmp.path().join("hello-module/linux/user"))
            .arg(format!("KERNEL_DIR={}", tree.display()))
            .arg("all"));
        if std::fs::rename(tmp.path(), &dest).is_err() {
            assert!(dest.is_dir(), "{}: could not be created", dest.display());
        }
    }
    Fixture {
        pcie: dest.join("hello-module/linux/pcie/hello_pcie.ko"),
        user: dest.join("hello-module/linux/user/hello_user.ko"),
    }
}

/// Builds the one-file module `<name>.c` with `source` against
/// `release`'s headers in a fresh temporary directory, letting modpost
/// pass symbols it cannot resolve (`KBUILD_MODPOST_WARN=1`); returns the
/// directory and the `.ko`.
pub fn build_module(release: &str, name: &str, source: &str) -> (TempDir, PathBuf) {
    let tree = build_tree(release);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(format!("{name}.c")), source).unwrap();
    std::fs::write(dir.path().join("Makefile"), format!("obj-m := {name}.o\n")).unwrap();
    run(Command::new("make")
        .arg("-C")
        .arg(&tree)
        .arg(format!("M={}", dir.path().display()))
        .arg("KBUILD_MODPOST_WARN=1")
        .arg("modules"));
    let ko = dir.path().join(format!("{name}.ko"));
    assert!(ko.is_file(), "{}: not built", ko.display());
    (dir, ko)
}
