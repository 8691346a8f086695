//! `sbom:` input the definitions already show to be wrong is reported at
//! its `file:line:col` by `composer validate` (all problems in one run,
//! exit 1), and a build of the stage fails before any step runs: bad
//! values, an `outputPath` the stage cannot keep (the sandbox's own
//! directories; in variant host, the host's read-only ones), two license
//! names that would share one SPDX id.

mod common;

use std::path::Path;

use tempfile::TempDir;

const PKGFILE: &str = "format: v1alpha2\n";

/// A stage `bad` of `variant` whose one step (`mkdir -p /rootfs`) has the
/// `sbom:` mapping `sbom` (its first line is line 8).
fn stage(variant: &str, sbom: &str) -> TempDir {
    let pkg = format!(
        "name: bad\nvariant: {variant}\nshell: /bin/bash\nsteps:\n  - install:\n      - mkdir -p /rootfs\n    sbom:\n{sbom}finalize:\n  - from: /rootfs\n    to: /\n"
    );
    common::project(PKGFILE, &[("bad/pkg.yaml", pkg)])
}

fn bad_sbom(sbom: &str) -> TempDir {
    stage("host", sbom)
}

fn failed(dir: &Path, args: &[&str]) -> String {
    let out = common::composer(dir, args);
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "expected exit 1: {e}");
    e
}

#[test]
fn bad_sbom_input_is_reported_at_its_position_all_in_one_run() {
    let p = bad_sbom(concat!(
        "      outputPath: rootfs/x.spdx.json\n",
        "      cpes:\n",
        "        - cpe:/a:acme:drv:1.0\n",
        "      purl: github/acme/drv\n",
        "      licenses:\n",
        "        - MIT ORR Apache-2.0\n",
        "        - LicenseRef-Mine\n",
        "      customLicenses:\n",
        "        - id: Acme\n",
        "          text: some text\n",
    ));
    let e = failed(p.path(), &["--root", "p", "validate"]);
    let f = "p/bad/pkg.yaml";
    for (pos, what) in [
        (
            "8:19",
            "steps[0].sbom.outputPath: `rootfs/x.spdx.json` must be an absolute path",
        ),
        (
            "10:11",
            "steps[0].sbom.cpes[0]: `cpe:/a:acme:drv:1.0` is not a CPE 2.3 formatted string",
        ),
        (
            "11:13",
            "steps[0].sbom.purl: `github/acme/drv` is not a package URL",
        ),
        (
            "13:11",
            "steps[0].sbom.licenses[0]: `MIT ORR Apache-2.0` is not an SPDX license expression",
        ),
        (
            "14:11",
            "steps[0].sbom.licenses[1]: `LicenseRef-Mine` has no text",
        ),
        (
            "16:15",
            "steps[0].sbom.customLicenses[0].id: `Acme` is not a custom license id",
        ),
    ] {
        assert!(
            e.contains(&format!("{f}:{pos}: error: {what}")),
            "{pos} {what}:\n{e}"
        );
    }
    assert!(e.contains("at `ORR` (character 5)"), "{e}");
}

#[test]
fn an_sbom_without_output_path_fails_validate_and_build_before_anything_is_written() {
    let p = bad_sbom("      version: 1.0.0\n");
    let e = failed(p.path(), &["--root", "p", "validate"]);
    assert!(
        e.contains("p/bad/pkg.yaml:8:7: error: steps[0].sbom.outputPath: missing required field `outputPath`"),
        "{e}"
    );
    failed(
        p.path(),
        &["--root", "p", "build", "--cache-dir", "cache", "bad"],
    );
    assert!(!p.path().join("_out").exists());
    assert!(!p.path().join("cache").exists());
}

#[test]
fn an_output_path_the_stage_cannot_keep_is_reported_at_its_position_by_validate() {
    for (variant, path, problem) in [
        (
            "host",
            "/usr/share/x.spdx.json",
            "is under /usr, which in variant host is the host's and read-only",
        ),
        (
            "host",
            "/tmp/x.spdx.json",
            "is under /tmp, which the sandbox provides to the step and does not keep",
        ),
        (
            "scratch",
            "/pkg/x.spdx.json",
            "is under /pkg, the package directory, which is read-only",
        ),
        (
            "scratch",
            "/tmp/build",
            "names the build directory /tmp/build, not a file",
        ),
    ] {
        let p = stage(variant, &format!("      outputPath: {path}\n"));
        let e = failed(p.path(), &["--root", "p", "validate"]);
        assert!(
            e.contains(&format!(
                "p/bad/pkg.yaml:8:19: error: steps[0].sbom.outputPath: `{path}` {problem}"
            )),
            "{variant} {path}:\n{e}"
        );
    }
    // Outside variant host, /usr is the stage's own; /tmp/build is kept.
    for path in ["/usr/share/x.spdx.json", "/tmp/build/x.spdx.json"] {
        let p = stage("scratch", &format!("      outputPath: {path}\n"));
        let out = common::composer(p.path(), &["--root", "p", "validate", "--strict"]);
        assert!(
            out.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_variant_counts_wherever_the_pkg_yaml_sets_it() {
    let pkg = "name: bad\nshell: /bin/bash\nsteps:\n  - install:\n      - mkdir -p /rootfs\n    sbom:\n      outputPath: /etc/x.spdx.json\nfinalize:\n  - from: /rootfs\n    to: /\nvariant: host\n";
    let p = common::project(PKGFILE, &[("bad/pkg.yaml", pkg)]);
    let e = failed(p.path(), &["--root", "p", "validate"]);
    assert!(
        e.contains(
            "p/bad/pkg.yaml:7:19: error: steps[0].sbom.outputPath: `/etc/x.spdx.json` is under /etc"
        ),
        "{e}"
    );
}

#[test]
fn a_build_of_a_stage_whose_output_path_it_cannot_keep_fails_before_any_step_runs() {
    for path in ["/usr/share/x.spdx.json", "/tmp/x.spdx.json"] {
        let p = stage("host", &format!("      outputPath: {path}\n"));
        let e = failed(
            p.path(),
            &["--root", "p", "build", "--cache-dir", "cache", "bad"],
        );
        assert!(
            e.contains(&format!(
                "p/bad/pkg.yaml:8:19: error: steps[0].sbom.outputPath: `{path}` is under"
            )),
            "{path}: {e}"
        );
        assert!(!e.contains("step 1"), "a step ran: {e}");
        assert!(
            !p.path().join("cache").exists(),
            "{path}: the build started"
        );
        assert!(!p.path().join("_out").exists(), "{path}");
    }
}

#[test]
fn two_license_names_that_become_one_spdx_id_are_an_error() {
    let p = bad_sbom(concat!(
        "      outputPath: /rootfs/x.spdx.json\n",
        "      licenses:\n",
        "        - Foo_Bar\n",
        "        - Foo-Bar\n",
        "        - Foo_Bar\n",
    ));
    let e = failed(p.path(), &["--root", "p", "validate"]);
    assert!(
        e.contains("p/bad/pkg.yaml:11:11: error: steps[0].sbom.licenses[1]: `Foo-Bar` would be written as `LicenseRef-Foo-Bar`, as `Foo_Bar` (at p/bad/pkg.yaml:10:11) is"),
        "{e}"
    );
    // The same name twice has one text: no error for it.
    assert!(!e.contains("licenses[2]: `Foo_Bar` would"), "{e}");
    failed(p.path(), &["--root", "p", "sbom", "bad"]);
}
