//! `composer new kmod`: scaffolds a module stage and its extension into a
//! copy of the demo tree that then validates strictly and resolves; every
//! refusal (bad name, checksum, URL, existing files, stages or variables,
//! a source archive that does not match or whose module directory is not
//! clear) exits 1 and leaves the tree byte for byte as it was. The module
//! directory is found in real and synthetic source archives.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{composer, sh};
use tempfile::TempDir;
use walkdir::WalkDir;

const URL: &str = "https://github.com/example/my-drv/archive/refs/tags/v1.2.3.tar.gz";

fn sha256() -> String {
    "ab".repeat(32)
}

fn sha512() -> String {
    "cd".repeat(64)
}

/// The demo tree (pkgs/, extensions/, fixtures/) copied into a temp dir.
fn demo_copy() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    sh(
        dir.path(),
        &format!(
            "cp -a {0}/pkgs {0}/extensions {0}/fixtures .",
            src.display()
        ),
    );
    dir
}

/// Every file and directory under `dir`, with file contents.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
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

fn new_kmod(dir: &Path, name: &str, extra: &[&str]) -> Output {
    let (s256, s512) = (sha256(), sha512());
    let mut args = vec![
        "new", "kmod", name, "--source", URL, "--sha256", &s256, "--sha512", &s512,
    ];
    args.extend_from_slice(extra);
    composer(dir, &args)
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `composer ARGS` with the kernel's build args (dummy checksums).
fn with_linux(dir: &Path, args: &[&str]) -> Output {
    let a256 = format!("LINUX_SOURCE_SHA256={}", "1".repeat(64));
    let a512 = format!("LINUX_SOURCE_SHA512={}", "2".repeat(128));
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["--build-arg", &a256, "--build-arg", &a512]);
    composer(dir, &full)
}

/// Runs a refused `composer new kmod` and checks the exit code, the
/// message and that nothing changed.
fn refused(dir: &Path, args: &[&str], message: &str) {
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

#[test]
fn scaffolded_module_validates_strictly_and_depends_on_kernel_build() {
    let t = demo_copy();
    let out = ok(new_kmod(t.path(), "my-drv", &[]));
    for f in [
        "pkgs/my-drv-pkg/pkg.yaml",
        "extensions/drivers/my-drv/pkg.yaml",
        "extensions/drivers/my-drv/vars.yaml",
        "extensions/drivers/my-drv/manifest.yaml.tmpl",
    ] {
        assert!(t.path().join(f).is_file(), "{f}");
        assert!(out.contains(&format!("created {f}")), "{out}");
    }
    assert!(
        out.contains("composer build kernel my-drv-pkg my-drv"),
        "{out}"
    );
    ok(with_linux(t.path(), &["validate", "--strict"]));
    let graph = ok(with_linux(t.path(), &["graph", "my-drv"]));
    assert_eq!(
        graph,
        "my-drv\n└── my-drv-pkg (/ -> /rootfs)\n    └── kernel-build\n        └── kernel-prepare\n"
    );
    let rendered = ok(with_linux(t.path(), &["render", "my-drv-pkg"]));
    assert!(rendered.contains(&format!("url: {URL}\n")), "{rendered}");
    assert!(
        rendered.contains(&format!("sha256: \"{}\"", sha256())),
        "{rendered}"
    );
    assert!(
        rendered.contains(&format!("sha512: \"{}\"", sha512())),
        "{rendered}"
    );
    assert!(
        rendered.contains("INSTALL_MOD_DIR=extra INSTALL_MOD_STRIP=1"),
        "{rendered}"
    );
    let manifest = ok(with_linux(
        t.path(),
        &["render", "my-drv", "--template", "manifest.yaml"],
    ));
    assert!(
        manifest.contains("  name: my-drv\n  version: \"1.2.3\"\n"),
        "{manifest}"
    );
    let m = ok(with_linux(t.path(), &["matrix", "kernel", "my-drv"]));
    assert!(
        m.contains(r#""targets":"kernel my-drv""#),
        "one signing session: {m}"
    );
}

#[test]
fn pkgfiles_gain_the_vars_and_keep_every_other_byte() {
    let t = demo_copy();
    let before_pkgs = std::fs::read_to_string(t.path().join("pkgs/Pkgfile")).unwrap();
    let before_ext = std::fs::read_to_string(t.path().join("extensions/Pkgfile")).unwrap();
    ok(new_kmod(t.path(), "my-drv", &[]));
    let pkgs = std::fs::read_to_string(t.path().join("pkgs/Pkgfile")).unwrap();
    let added = format!(
        "\n  # renovate: datasource=github-tags extractVersion=^v(?<version>.*)$ depName=example/my-drv\n  my_drv_version: 1.2.3\n  my_drv_sha256: {}\n  my_drv_sha512: {}\n",
        sha256(),
        sha512()
    );
    assert!(pkgs.contains(&added), "{pkgs}");
    assert_eq!(pkgs.replacen(&added, "", 1), before_pkgs);
    // Inside `vars:`, before the labels.
    assert!(pkgs.find(&added).unwrap() < pkgs.find("\nlabels:").unwrap());
    let ext = std::fs::read_to_string(t.path().join("extensions/Pkgfile")).unwrap();
    let line = "  MY_DRV_VERSION: 1.2.3 # keep in step with my_drv_version in the pkgs Pkgfile\n";
    assert_eq!(ext.replacen(line, "", 1), before_ext, "{ext}");
    let vars =
        std::fs::read_to_string(t.path().join("extensions/drivers/my-drv/vars.yaml")).unwrap();
    assert_eq!(vars, "VERSION: \"{{ .MY_DRV_VERSION }}\"\n");
}

#[test]
fn running_twice_fails_and_changes_nothing() {
    let t = demo_copy();
    ok(new_kmod(t.path(), "my-drv", &[]));
    let (s256, s512) = (sha256(), sha512());
    refused(
        t.path(),
        &[
            "new", "kmod", "my-drv", "--source", URL, "--sha256", &s256, "--sha512", &s512,
        ],
        "file pkgs/my-drv-pkg/pkg.yaml",
    );
    let out = new_kmod(t.path(), "my-drv", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    for what in [
        "file extensions/drivers/my-drv/manifest.yaml.tmpl",
        "variable my_drv_sha512 in pkgs/Pkgfile",
        "variable MY_DRV_VERSION in extensions/Pkgfile",
    ] {
        assert!(err.contains(what), "{what}: {err}");
    }
}

#[test]
fn existing_stage_name_is_refused() {
    let t = demo_copy();
    let (s256, s512) = (sha256(), sha512());
    refused(
        t.path(),
        &[
            "new", "kmod", "hello", "--source", URL, "--sha256", &s256, "--sha512", &s512,
        ],
        "stage `hello` (extensions/drivers/hello/pkg.yaml)",
    );
}

#[test]
fn bad_name_is_refused_and_nothing_is_written() {
    let t = demo_copy();
    let (s256, s512) = (sha256(), sha512());
    for (name, message) in [
        ("My_Drv", "name `My_Drv`: use lowercase letters"),
        ("../evil", "a name, not a path"),
        ("my-drv-pkg", "give it without `-pkg` (`my-drv`)"),
    ] {
        refused(
            t.path(),
            &[
                "new", "kmod", name, "--source", URL, "--sha256", &s256, "--sha512", &s512,
            ],
            message,
        );
    }
}

#[test]
fn bad_checksum_is_refused_and_nothing_is_written() {
    let t = demo_copy();
    let short = "a".repeat(63);
    let s512 = sha512();
    refused(
        t.path(),
        &[
            "new", "kmod", "my-drv", "--source", URL, "--sha256", &short, "--sha512", &s512,
        ],
        "--sha256: expected 64 hex characters, got 63",
    );
    let s256 = sha256();
    let nonhex = "z".repeat(128);
    refused(
        t.path(),
        &[
            "new", "kmod", "my-drv", "--source", URL, "--sha256", &s256, "--sha512", &nonhex,
        ],
        "--sha512: expected 128 hex characters, got 128 (including non-hex `z`)",
    );
}

#[test]
fn bad_url_is_refused_and_nothing_is_written() {
    let t = demo_copy();
    let (s256, s512) = (sha256(), sha512());
    for (url, message) in [
        (
            "ftp://example.com/x-1.0.tar.gz",
            "must start with https://, http:// or file://",
        ),
        ("file://relative/x-1.0.tar.gz", "needs an absolute path"),
        (
            "https://example.com/a b-1.0.tar.gz",
            "is not allowed in a URL",
        ),
        (
            "https://example.com/driver.tar.gz",
            "give it with --version",
        ),
    ] {
        refused(
            t.path(),
            &[
                "new", "kmod", "my-drv", "--source", url, "--sha256", &s256, "--sha512", &s512,
            ],
            message,
        );
    }
}

#[test]
fn local_source_with_version_and_other_roots() {
    let t = tempfile::tempdir().unwrap();
    sh(
        t.path(),
        "mkdir -p defs/p defs/e && printf 'format: v1alpha2\\n' > defs/p/Pkgfile && printf '# ext\\nformat: v1alpha2\\nlabels:\\n  a: b\\n' > defs/e/Pkgfile \
         && mkdir -p defs/p/kernel && printf 'name: kernel-build\\nvariant: scratch\\n' > defs/p/kernel/pkg.yaml",
    );
    let (s256, s512) = (sha256(), sha512());
    let out = ok(composer(
        t.path(),
        &[
            "new",
            "kmod",
            "local",
            "--source",
            "file:///srv/src/local.tar.xz",
            "--sha256",
            &s256,
            "--sha512",
            &s512,
            "--version",
            "20250101",
            "--author",
            "Example: Corp",
            "--root-pkgs",
            "defs/p",
            "--root-extensions",
            "defs/e",
        ],
    ));
    assert!(
        out.contains("composer --root defs/p --root defs/e build kernel local-pkg local"),
        "{out}"
    );
    let pkgfile = std::fs::read_to_string(t.path().join("defs/p/Pkgfile")).unwrap();
    assert!(
        pkgfile.contains(
            "vars:\n  # a local source: no renovate datasource\n  local_version: 20250101\n"
        ),
        "{pkgfile}"
    );
    let ext = std::fs::read_to_string(t.path().join("defs/e/Pkgfile")).unwrap();
    assert_eq!(
        ext,
        "# ext\nformat: v1alpha2\nlabels:\n  a: b\n\nvars:\n  LOCAL_VERSION: 20250101 # keep in step with local_version in the pkgs Pkgfile\n"
    );
    let pkg = std::fs::read_to_string(t.path().join("defs/p/local-pkg/pkg.yaml")).unwrap();
    assert!(pkg.contains("destination: local.tar.xz\n"), "{pkg}");
    ok(composer(
        t.path(),
        &[
            "--root", "defs/p", "--root", "defs/e", "validate", "--strict",
        ],
    ));
    let manifest = ok(composer(
        t.path(),
        &[
            "--root",
            "defs/p",
            "--root",
            "defs/e",
            "render",
            "local",
            "--template",
            "manifest.yaml",
        ],
    ));
    assert!(
        manifest.contains("  author: \"Example: Corp\"\n"),
        "{manifest}"
    );
}

#[test]
fn missing_root_is_refused_with_the_flag_to_fix_it() {
    let t = tempfile::tempdir().unwrap();
    let (s256, s512) = (sha256(), sha512());
    refused(
        t.path(),
        &[
            "new", "kmod", "my-drv", "--source", URL, "--sha256", &s256, "--sha512", &s512,
        ],
        "point --root-pkgs at the definition root that holds the Pkgfile",
    );
}

#[test]
fn a_file_where_a_directory_goes_is_refused() {
    let t = demo_copy();
    std::fs::write(t.path().join("extensions/drivers/my-drv"), "a file").unwrap();
    let (s256, s512) = (sha256(), sha512());
    refused(
        t.path(),
        &[
            "new", "kmod", "my-drv", "--source", URL, "--sha256", &s256, "--sha512", &s512,
        ],
        "extensions/drivers/my-drv (not a directory)",
    );
}

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

fn module_pkg(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("pkgs/{name}-pkg/pkg.yaml"))).unwrap()
}

/// Both make calls of the module stage build in `m` (`M=` value).
fn assert_builds_in(pkg: &str, m: &str) {
    assert!(
        pkg.contains(&format!("make -C /src M={m} -j$(nproc) modules\n")),
        "{pkg}"
    );
    assert!(
        pkg.contains(&format!("make -C /src M={m} modules_install ")),
        "{pkg}"
    );
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
fn without_an_archive_module_dir_is_used_but_said_to_be_unchecked() {
    let t = demo_copy();
    let out = ok(new_kmod(t.path(), "my-drv", &["--module-dir", "./driver/"]));
    assert!(
        out.contains("The module is built in driver (M=$(pwd)/driver), NOT checked: no source archive was given"),
        "{out}"
    );
    let pkg = module_pkg(t.path(), "my-drv");
    assert_builds_in(&pkg, "$(pwd)/driver");
    assert!(
        pkg.contains("# M= is driver, NOT checked against the source"),
        "{pkg}"
    );
    let t = demo_copy();
    refused(
        t.path(),
        &[
            "new",
            "kmod",
            "my-drv",
            "--source",
            URL,
            "--sha256",
            &sha256(),
            "--sha512",
            &sha512(),
            "--module-dir",
            "../up",
        ],
        "--module-dir ../up: a relative path inside the source",
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
