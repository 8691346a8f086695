//! `composer new kmod`: scaffolds a module stage and its extension into a
//! copy of the demo tree that then validates strictly and resolves; every
//! refusal (bad name, checksum, URL, existing files, stages or variables)
//! exits 1 and leaves the tree byte for byte as it was. Looking into the
//! source archive is tested in new_archive.rs.

mod common;

use common::scaffold::{
    URL, assert_builds_in, demo_copy, module_pkg, new_kmod, ok, refused, sha256, sha512, with_linux,
};
use common::{composer, sh};

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
