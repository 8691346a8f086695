//! Debian's own kernels for the tests that build modules against a kernel
//! composer does not build: `scripts/debian-kernel.sh` picks the archive's
//! newest releases and fetches their packages (headers, kbuild, image)
//! into `target/debian-debs/<release>/`, once per machine (files already
//! there are kept), with the build args that name them.
#![allow(dead_code)] // not every test binary uses every helper

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/debian-kernel.sh")
}

/// Where the packages land: `target/debian-debs`.
pub fn debs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debian-debs")
}

fn run(args: &[&str]) -> String {
    let o = Command::new(script()).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "scripts/debian-kernel.sh {}: {}\n(the tests need Debian's kernel packages from the configured apt sources)",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The archive's two newest cloud-amd64 releases (newest first), fetched.
pub fn two_releases() -> &'static [String] {
    static RELEASES: OnceLock<Vec<String>> = OnceLock::new();
    RELEASES.get_or_init(|| {
        let releases: Vec<String> = run(&["releases", "2"])
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(releases.len(), 2, "two releases: {releases:?}");
        let dir = debs_dir();
        let mut args = vec!["fetch", dir.to_str().unwrap()];
        args.extend(releases.iter().map(String::as_str));
        run(&args);
        releases
    })
}

/// The `--build-arg=...` options for `release` (written by the fetch).
pub fn build_args(release: &str) -> Vec<String> {
    let file = debs_dir().join(release).join("build-args");
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .lines()
        .map(str::to_string)
        .collect()
}

/// `target/debian-debs/<release>/image.deb`: the kernel itself.
pub fn image_deb(release: &str) -> PathBuf {
    debs_dir().join(release).join("image.deb")
}
