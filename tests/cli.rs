//! The command line on small trees: several roots in one graph, variable
//! precedence, runtime closure, the three graph formats, render, eval, and
//! the commands that are not implemented yet.

mod common;

use std::path::Path;

use common::{composer, tree};
use tempfile::TempDir;

fn ok(cwd: &Path, args: &[&str]) -> String {
    let out = composer(cwd, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Two roots, as the project lays them out: `pkgs/` with a kernel and a
/// module, `extensions/` with an extension that depends on the module.
fn project() -> TempDir {
    tree(&[
        (
            "pkgs/Pkgfile",
            "format: v1alpha2\nvars:\n  LEVEL: pkgfile\n  ONLY_PKGS: yes\n",
        ),
        (
            "pkgs/vars.yaml",
            "LEVEL: root-vars\nFROM_ROOT: \"{{ .LEVEL }}\"\n",
        ),
        (
            "pkgs/base/pkg.yaml",
            "name: base\nvariant: scratch\ndependencies:\n  - stage: toolchain\n    runtime: true\n",
        ),
        (
            "pkgs/toolchain/pkg.yaml",
            "name: toolchain\nvariant: scratch\n",
        ),
        (
            "pkgs/kernel/pkg.yaml",
            "name: kernel\nvariant: scratch\ndependencies:\n  - stage: base\n",
        ),
        ("pkgs/kernel/vars.yaml", "LEVEL: kernel-vars\n"),
        (
            "pkgs/module/pkg.yaml",
            "name: module\nvariant: scratch\ndependencies:\n  - stage: kernel\n    from: /rootfs\n    to: /src\n  - stage: base\n",
        ),
        (
            "extensions/Pkgfile",
            "format: v1alpha2\nvars:\n  VERSION: 2.0.0\n",
        ),
        (
            "extensions/drivers/ext/pkg.yaml",
            "name: ext\nvariant: scratch\ndependencies:\n  - stage: module\n    to: /rootfs\nfinalize:\n  - from: /rootfs\n    to: /rootfs\n",
        ),
        (
            "extensions/drivers/ext/vars.yaml",
            "TAG: \"v{{ .VERSION }}\"\n",
        ),
        (
            "extensions/drivers/ext/manifest.yaml.tmpl",
            "version: v1alpha1\nmetadata:\n  name: ext\n  version: \"{{ .TAG }}\"\n  arch: {{ .ARCH }}\n",
        ),
    ])
}

#[test]
fn default_roots_are_pkgs_and_extensions_in_one_graph() {
    let p = project();
    let out = ok(p.path(), &["graph", "ext"]);
    assert_eq!(
        out,
        "ext\n└── module (/ -> /rootfs)\n    ├── kernel (/rootfs -> /src)\n    │   └── base\n    │       └── toolchain [runtime]\n    └── base (*)\n"
    );
}

#[test]
fn each_root_keeps_its_own_pkgfile_scope() {
    let p = project();
    assert_eq!(
        ok(p.path(), &["eval", "-t", "module", "{{ .ONLY_PKGS }}"]),
        "yes"
    );
    assert_eq!(
        ok(p.path(), &["eval", "-t", "ext", "{{ .ONLY_PKGS }}"]),
        "<no value>"
    );
}

#[test]
fn variable_precedence_is_builtin_buildarg_pkgfile_then_deeper_vars() {
    let p = project();
    // vars.yaml deeper wins over the root's vars.yaml over the Pkgfile.
    assert_eq!(
        ok(p.path(), &["eval", "-t", "kernel", "{{ .LEVEL }}"]),
        "kernel-vars"
    );
    assert_eq!(
        ok(p.path(), &["eval", "-t", "module", "{{ .LEVEL }}"]),
        "root-vars"
    );
    // A vars.yaml is rendered with the variables above it (the Pkgfile's).
    assert_eq!(
        ok(p.path(), &["eval", "-t", "kernel", "{{ .FROM_ROOT }}"]),
        "pkgfile"
    );
    // Build args are visible with their prefix and lose to Pkgfile vars.
    assert_eq!(
        ok(
            p.path(),
            &[
                "eval",
                "-t",
                "kernel",
                "--build-arg",
                "X=1",
                "{{ .BUILD_ARG_X }}"
            ]
        ),
        "1"
    );
    let q = tree(&[
        (
            "Pkgfile",
            "format: v1alpha2\nvars:\n  BUILD_ARG_X: pkgfile\n  ARCH: mine\n",
        ),
        ("a/pkg.yaml", "name: a\nvariant: scratch\n"),
    ]);
    assert_eq!(
        ok(
            q.path(),
            &[
                "eval",
                "-t",
                "a",
                "--build-arg",
                "X=arg",
                "{{ .BUILD_ARG_X }} {{ .ARCH }}"
            ]
        ),
        "pkgfile mine"
    );
}

#[test]
fn builtins_follow_the_platform() {
    let p = project();
    assert_eq!(
        ok(
            p.path(),
            &["eval", "-t", "kernel", "{{ .ARCH }} {{ .TARGET }}"]
        ),
        "x86_64 x86_64-talos-linux-musl"
    );
    assert_eq!(
        ok(
            p.path(),
            &[
                "eval",
                "-t",
                "kernel",
                "--platform",
                "linux/arm64",
                "{{ .ARCH }} {{ .CFLAGS }}"
            ]
        ),
        "aarch64 -O2 -g0"
    );
}

#[test]
fn render_template_uses_the_package_context() {
    let p = project();
    let out = ok(p.path(), &["render", "ext", "--template", "manifest.yaml"]);
    assert_eq!(
        out,
        "version: v1alpha1\nmetadata:\n  name: ext\n  version: \"v2.0.0\"\n  arch: x86_64\n"
    );
    let out = ok(p.path(), &["render", "ext"]);
    assert!(out.starts_with("name: ext\n"));
    let missing = composer(p.path(), &["render", "ext", "--template", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("it has: manifest.yaml"));
}

#[test]
fn json_graph_lists_runtime_closure_in_merge_order() {
    let p = project();
    let out = ok(p.path(), &["graph", "module", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["order"],
        serde_json::json!(["toolchain", "base", "kernel", "module"])
    );
    let module = &v["stages"][3];
    let inputs: Vec<&str> = module["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["what"].as_str().unwrap())
        .collect();
    // kernel's runtime closure is empty; base brings toolchain along.
    assert_eq!(inputs, ["stage:kernel", "stage:base", "stage:toolchain"]);
    assert_eq!(module["inputs"][2]["via_runtime"], true);
}

#[test]
fn dot_graph_draws_edges_from_dependency_to_dependant() {
    let p = project();
    let out = ok(p.path(), &["graph", "kernel", "--format", "dot"]);
    assert!(out.starts_with("digraph composer {"));
    assert!(out.contains("\"base\" -> \"kernel\";"));
    assert!(out.contains("\"toolchain\" -> \"base\" [style=bold, color=forestgreen];"));
}

#[test]
fn unknown_target_suggests_a_name() {
    let p = project();
    let out = composer(p.path(), &["graph", "kernal"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("unknown target `kernal` (did you mean `kernel`?)")
    );
}

#[test]
fn image_installer_without_extensions_or_base_fails_clearly() {
    let p = project();
    let out = composer(
        p.path(),
        &["image-installer", "--base-installer-image", "oci:nowhere:1"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("oci:nowhere:1") && e.contains("no installer image written"),
        "{e}"
    );
    assert!(!p.path().join("_out/installer-amd64.tar").exists());
}

#[test]
fn a_wrong_command_line_is_an_input_error_with_exit_1() {
    let p = project();
    for args in [
        &["build", "--no-such-option", "x"][..],
        &["sbom", "x", "--list", "-o", "f"][..],
        &["no-such-command"][..],
    ] {
        let out = composer(p.path(), args);
        let e = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {e}");
        assert!(e.contains("error:") && e.contains("Usage:"), "{e}");
        assert!(out.stdout.is_empty());
    }
    assert!(!p.path().join("f").exists());
    // Asking for help is no error.
    let out = composer(p.path(), &["--help"]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn help_shows_examples() {
    let p = project();
    for cmd in ["validate", "graph", "render", "eval", "image-installer"] {
        let out = ok(p.path(), &[cmd, "--help"]);
        assert!(out.contains("Examples:"), "{cmd}: {out}");
    }
}

#[test]
fn validate_json_reports_diagnostics_as_data() {
    let p = tree(&[
        ("Pkgfile", "format: v1alpha2\n"),
        ("a/pkg.yaml", "name: a\nvariant: scratch\nshel: x\n"),
    ]);
    let out = composer(p.path(), &["validate", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let d = &v["diagnostics"][0];
    assert_eq!((d["line"].as_u64(), d["col"].as_u64()), (Some(3), Some(1)));
    assert_eq!(d["hint"], "did you mean `shell`?");
}

#[test]
fn bundled_demo_tree_validates_strictly_for_both_platforms() {
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sha256 = format!("LINUX_SOURCE_SHA256={}", "0".repeat(64));
    let sha512 = format!("LINUX_SOURCE_SHA512={}", "f".repeat(128));
    let out = composer(
        top,
        &[
            "validate",
            "--strict",
            "--build-arg",
            &sha256,
            "--build-arg",
            &sha512,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("0 errors, 0 warnings"), "{stderr}");
    let graph = ok(
        top,
        &[
            "graph",
            "hailort",
            "hello",
            "--build-arg",
            &sha256,
            "--build-arg",
            &sha512,
        ],
    );
    assert!(
        graph.contains("hello\n└── hello-module (/ -> /rootfs)\n    └── kernel-build (*)"),
        "{graph}"
    );
}

#[test]
fn verbose_says_what_was_loaded_from_each_root() {
    let p = project();
    let out = composer(p.path(), &["validate", "-v", "--platform", "linux/arm64"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("loaded 4 packages from pkgs for linux/arm64"),
        "{stderr}"
    );
    assert!(
        stderr.contains("loaded 1 packages from extensions for linux/arm64"),
        "{stderr}"
    );
}
