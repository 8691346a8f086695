//! `composer new kmod` looking into the module's source archive: found
//! in a mirror, given as a file or a file:// URL, checked against both
//! checksums, read in every supported compression; the one module
//! directory is used, several or none are refused with nothing written;
//! the generated step unpacks the archive (GNU tar, as the build runs it)
//! so that `M=` is the directory that holds the module, also for archives
//! whose entries start with `./`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::scaffold::{assert_builds_in, demo_copy, module_pkg, ok, refused, with_linux};
use common::{composer, sh};
use tempfile::TempDir;

/// The real hailort-drivers 4.23.0 archive's directory, a source mirror
/// (see shared/sources/README.md).
fn hailort_dir() -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/sources");
    assert!(dir.is_dir(), "sources missing at {}", dir.display());
    dir.display().to_string()
}

fn hailort_file() -> String {
    format!("{}/hailort-drivers-4.23.0.tar.gz", hailort_dir())
}
const HAILORT_URL: &str =
    "https://github.com/hailo-ai/hailort-drivers/archive/refs/tags/v4.23.0.tar.gz";
const HAILORT_SHA256: &str = "245c7157746c2fd48b2fab4a990c8fb3b786921dd72c9e5348f5b5619ee05ec3";
const HAILORT_SHA512: &str = "b5abdf3ca5cb4cbb9d3189ed6bae52d66e52dbce99ed1698ece8ff1f5f32db7560990e66bab740f2f0102e13175eb3fc0ae41162b75ee743684fb64ff845db07";

fn hailort_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "new",
        "kmod",
        "hailo",
        "--source",
        HAILORT_URL,
        "--sha256",
        HAILORT_SHA256,
        "--sha512",
        HAILORT_SHA512,
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn hailort_archive_lists_both_module_directories_and_module_dir_picks_one() {
    let t = demo_copy();
    let (mirror, file) = (hailort_dir(), hailort_file());
    let (mirror, file) = (mirror.as_str(), file.as_str());
    let err_of = |out: Output| String::from_utf8_lossy(&out.stderr).into_owned();
    for how in [["--source-mirror", mirror], ["--source-file", file]] {
        refused(
            t.path(),
            &hailort_args(&how),
            "has several module directories; choose one with --module-dir DIR:\n      linux/integrated_nnc (linux/integrated_nnc/Kbuild)\n      linux/pcie (linux/pcie/Kbuild)",
        );
    }
    refused(
        t.path(),
        &hailort_args(&["--source-file", file, "--module-dir", "linux/pci"]),
        "--module-dir linux/pci: no such directory in the archive",
    );
    let out = ok(composer(
        t.path(),
        &hailort_args(&["--source-mirror", mirror, "--module-dir", "linux/pcie/"]),
    ));
    assert!(
        out.contains("The module is built in linux/pcie (--module-dir, M=$(pwd)/linux/pcie): linux/pcie/Kbuild in the archive"),
        "{out}"
    );
    let pkg = module_pkg(t.path(), "hailo");
    assert_builds_in(&pkg, "$(pwd)/linux/pcie");
    assert!(pkg.contains("--strip-components=1"), "{pkg}");
    assert!(!pkg.contains("M=$(pwd) "), "{pkg}");
    ok(with_linux(t.path(), &["validate", "--strict"]));
    // Run again: the files exist now, which is the only problem reported.
    let again = err_of(composer(
        t.path(),
        &hailort_args(&["--source-file", file, "--module-dir", "linux/pcie"]),
    ));
    assert!(again.contains("file pkgs/hailo-pkg/pkg.yaml"), "{again}");
}

#[test]
fn a_source_file_that_does_not_match_the_checksums_is_refused() {
    let t = demo_copy();
    let file = hailort_file();
    let file = file.as_str();
    let other512 = format!("0{}", &HAILORT_SHA512[1..]);
    let mut args = hailort_args(&["--source-file", file]);
    args[8] = &other512;
    refused(
        t.path(),
        &args,
        &format!(
            "(--source-file) does not match --sha512: its sha512 is {HAILORT_SHA512}, --sha512 says {other512}"
        ),
    );
    refused(
        t.path(),
        &hailort_args(&["--source-file", "/nonexistent/x.tar.gz"]),
        "the archive /nonexistent/x.tar.gz (--source-file): ",
    );
    refused(
        t.path(),
        &hailort_args(&["--source-mirror", "fixtures"]),
        &format!(
            "--source-mirror fixtures: the archive is neither fixtures/{HAILORT_SHA256} nor fixtures/v4.23.0.tar.gz"
        ),
    );
}

/// A synthetic source archive `drv-1.0.<ext>` in a new temp dir, made by
/// GNU tar from `files` (paths under `drv-1.0/`); returns the dir, the
/// archive's path, its sha256 and sha512.
fn archive(files: &[(&str, &str)], ext: &str) -> (TempDir, PathBuf, String, String) {
    let d = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let p = d.path().join("drv-1.0").join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let compress = match ext {
        "tar.gz" => "gzip -n",
        "tar.xz" => "xz",
        "tar.zst" => "zstd -q",
        "tar.bz2" => "bzip2",
        _ => "cat",
    };
    sh(
        d.path(),
        &format!(
            "tar -c drv-1.0 | {compress} > drv-1.0.{ext} && sha256sum drv-1.0.{ext} | cut -c1-64 > s256 && sha512sum drv-1.0.{ext} | cut -c1-128 > s512"
        ),
    );
    let read = |f: &str| {
        std::fs::read_to_string(d.path().join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    let (s256, s512) = (read("s256"), read("s512"));
    let path = d.path().join(format!("drv-1.0.{ext}"));
    (d, path, s256, s512)
}

fn drv_args<'a>(s256: &'a str, s512: &'a str, ext: &str, extra: &[&'a str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "new",
        "kmod",
        "drv",
        "--source",
        &format!("https://example.com/drv/drv-1.0.{ext}"),
        "--sha256",
        s256,
        "--sha512",
        s512,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn module_directory_is_found_in_every_supported_compression() {
    for ext in ["tar.gz", "tar.xz", "tar.zst", "tar.bz2", "tar"] {
        let t = demo_copy();
        let (_d, path, s256, s512) = archive(
            &[
                ("README.md", "a driver\n"),
                ("src/Kbuild", "obj-m += drv.o\ndrv-objs := main.o\n"),
                ("src/main.c", "int x;\n"),
                ("tools/Makefile", "all:\n\tcc -o t t.c\n"),
            ],
            ext,
        );
        let file = path.to_str().unwrap();
        let out = ok(composer(
            t.path(),
            &strs(&drv_args(&s256, &s512, ext, &["--source-file", file])),
        ));
        assert!(
            out.contains("The module is built in src (M=$(pwd)/src): src/Kbuild in the archive"),
            "{ext}: {out}"
        );
        let pkg = module_pkg(t.path(), "drv");
        assert_builds_in(&pkg, "$(pwd)/src");
        assert!(
            pkg.contains("# M= is src: src/Kbuild declares the module"),
            "{pkg}"
        );
    }
}

#[test]
fn an_archive_found_in_a_mirror_by_file_name_is_looked_into() {
    let t = demo_copy();
    let (d, _path, s256, s512) = archive(&[("Makefile", "obj-m := drv.o\n")], "tar.gz");
    let mirror = d.path().to_str().unwrap();
    ok(composer(
        t.path(),
        &strs(&drv_args(
            &s256,
            &s512,
            "tar.gz",
            &["--source-mirror", mirror],
        )),
    ));
    let pkg = module_pkg(t.path(), "drv");
    assert_builds_in(&pkg, "$(pwd)");
    assert!(
        pkg.contains("# M= is the top of the source: Makefile declares the module"),
        "{pkg}"
    );
}

#[test]
fn several_or_no_module_directories_are_refused_and_nothing_is_written() {
    let t = demo_copy();
    let (_a, two, a256, a512) = archive(
        &[
            ("driver/Kbuild", "obj-m := a.o\n"),
            ("extra/Makefile", "obj-m += b.o\n"),
        ],
        "tar.xz",
    );
    refused(
        t.path(),
        &strs(&drv_args(
            &a256,
            &a512,
            "tar.xz",
            &["--source-file", two.to_str().unwrap()],
        )),
        "has several module directories; choose one with --module-dir DIR:\n      driver (driver/Kbuild)\n      extra (extra/Makefile)",
    );
    let (_b, none, b256, b512) = archive(
        &[
            ("Makefile", "all:\n\t$(MAKE) -C driver\n"),
            ("driver/Kbuild", "obj-$(CONFIG_DRV) += drv.o\n"),
        ],
        "tar.gz",
    );
    let none = none.to_str().unwrap();
    refused(
        t.path(),
        &strs(&drv_args(&b256, &b512, "tar.gz", &["--source-file", none])),
        "assigns obj-m: give the module's directory with --module-dir DIR",
    );
    // Named explicitly, a directory of the archive is used as given.
    let out = ok(composer(
        t.path(),
        &strs(&drv_args(
            &b256,
            &b512,
            "tar.gz",
            &["--source-file", none, "--module-dir", "driver"],
        )),
    ));
    assert!(
        out.contains("where no Kbuild or Makefile assigns obj-m"),
        "{out}"
    );
    assert_builds_in(&module_pkg(t.path(), "drv"), "$(pwd)/driver");
}

#[test]
fn a_file_that_is_no_tar_archive_is_refused() {
    let t = demo_copy();
    let d = tempfile::tempdir().unwrap();
    let zip = d.path().join("drv-1.0.zip");
    std::fs::write(
        &zip,
        b"PK\x03\x04 not a tar archive at all, just some bytes",
    )
    .unwrap();
    sh(
        d.path(),
        "sha256sum drv-1.0.zip | cut -c1-64 > s256 && sha512sum drv-1.0.zip | cut -c1-128 > s512",
    );
    let read = |f: &str| {
        std::fs::read_to_string(d.path().join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    let (s256, s512) = (read("s256"), read("s512"));
    refused(
        t.path(),
        &strs(&drv_args(
            &s256,
            &s512,
            "zip",
            &["--source-file", zip.to_str().unwrap(), "--version", "1.0.0"],
        )),
        "cannot read it as a tar archive",
    );
}

#[test]
fn a_file_url_source_that_exists_is_looked_into() {
    let t = demo_copy();
    let (_d, path, s256, s512) = archive(&[("kmod/Kbuild", "obj-m += drv.o\n")], "tar.zst");
    let url = format!("file://{}", path.display());
    let out = ok(composer(
        t.path(),
        &[
            "new",
            "kmod",
            "drv",
            "--source",
            &url,
            "--sha256",
            &s256,
            "--sha512",
            &s512,
            "--version",
            "1.0.0",
        ],
    ));
    assert!(out.contains("kmod/Kbuild in the source"), "{out}");
    assert_builds_in(&module_pkg(t.path(), "drv"), "$(pwd)/kmod");
}

/// A source archive made by `tar -C src -czf drv-1.0.tar.gz <what>` from
/// `files` (paths under `src/`); returns the dir, the archive and its
/// sha256 and sha512.
fn archive_of(files: &[(&str, &str)], what: &str) -> (TempDir, PathBuf, String, String) {
    use sha2::{Digest, Sha256, Sha512};
    let d = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let p = d.path().join("src").join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    sh(d.path(), &format!("tar -C src -czf drv-1.0.tar.gz {what}"));
    let path = d.path().join("drv-1.0.tar.gz");
    let bytes = std::fs::read(&path).unwrap();
    let (s256, s512) = (
        hex::encode(Sha256::digest(&bytes)),
        hex::encode(Sha512::digest(&bytes)),
    );
    (d, path, s256, s512)
}

/// Runs the generated stage's unpacking as the build does: its source
/// saved as `destination` in a directory standing for /tmp/build, each
/// `prepare` item there under `set -eou pipefail`. Returns that directory
/// and the directory the build item's `M=` names in it.
fn unpack_as_the_step_does(t: &Path, archive: &Path) -> (TempDir, PathBuf) {
    let rendered = ok(with_linux(t, &["render", "drv-pkg", "--json"]));
    let pkg: serde_json::Value = serde_json::from_str(&rendered).unwrap();
    let step = &pkg["steps"][0];
    let build = tempfile::tempdir().unwrap();
    let destination = step["sources"][0]["destination"].as_str().unwrap();
    std::fs::copy(archive, build.path().join(destination)).unwrap();
    for item in step["prepare"].as_array().unwrap() {
        sh(
            build.path(),
            &format!("set -eou pipefail\n{}", item.as_str().unwrap()),
        );
    }
    let build_item = step["build"][0].as_str().unwrap();
    let make = build_item
        .lines()
        .find(|l| l.starts_with("make "))
        .unwrap_or_else(|| panic!("no make in {build_item}"));
    let m = make
        .split_whitespace()
        .find_map(|w| w.strip_prefix("M="))
        .unwrap_or_else(|| panic!("no M= in {make}"));
    let dir = PathBuf::from(m.replace("$(pwd)", build.path().to_str().unwrap()));
    (build, dir)
}

#[test]
fn the_generated_step_unpacks_the_module_directory_where_m_points() {
    let module = [
        ("top/README", "a driver\n"),
        ("top/sub/Kbuild", "obj-m += drv.o\n"),
        ("top/sub/drv.c", "int x;\n"),
    ];
    // (how tar is given the tree, --strip-components, M=)
    for (what, strip, m) in [
        ("top", "--strip-components=1", "M=$(pwd)/sub "),
        ("./top", "--strip-components=2", "M=$(pwd)/sub "),
        (".", "--strip-components=2", "M=$(pwd)/sub "),
        ("-C top .", "--no-same-owner", "M=$(pwd)/sub "),
    ] {
        let t = demo_copy();
        let (_d, path, s256, s512) = archive_of(&module, what);
        let out = ok(composer(
            t.path(),
            &strs(&drv_args(
                &s256,
                &s512,
                "tar.gz",
                &["--source-file", path.to_str().unwrap()],
            )),
        ));
        assert!(
            out.contains("The module is built in sub (M=$(pwd)/sub): sub/Kbuild in the archive"),
            "{what}: {out}"
        );
        let pkg = module_pkg(t.path(), "drv");
        assert!(
            pkg.contains(&format!("tar -xf drv.tar.gz {strip}")),
            "{what}: {pkg}"
        );
        assert!(pkg.contains(m), "{what}: {pkg}");
        let (build, dir) = unpack_as_the_step_does(t.path(), &path);
        assert_eq!(dir, build.path().join("sub"), "{what}");
        assert!(dir.join("Kbuild").is_file(), "{what}: no {}", dir.display());
        assert!(dir.join("drv.c").is_file(), "{what}");
        ok(with_linux(t.path(), &["validate", "--strict"]));
    }
}
