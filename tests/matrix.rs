//! `composer matrix`: targets that share a kernel build (its signing
//! session) land in one cell per platform, the rest in a kernel-less cell;
//! the JSON is what GitHub Actions' `fromJSON` takes for `strategy.matrix`.

mod common;

use std::path::{Path, PathBuf};

use common::{composer, tree};
use serde_json::Value;
use tempfile::TempDir;

fn project_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `composer matrix ARGS` in `cwd`, expects success, parses the JSON.
fn matrix(cwd: &Path, args: &[&str]) -> Value {
    let mut full = vec!["matrix"];
    full.extend_from_slice(args);
    let out = composer(cwd, &full);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.lines().count(),
        1,
        "one line for $GITHUB_OUTPUT: {text}"
    );
    serde_json::from_str(&text).unwrap()
}

fn cells(m: &Value) -> &Vec<Value> {
    m["include"].as_array().expect("an `include` list")
}

/// (platform, kernel, targets) of each cell, in output order.
fn summary(m: &Value) -> Vec<(String, Option<String>, String)> {
    cells(m)
        .iter()
        .map(|c| {
            (
                c["platform"].as_str().unwrap().to_string(),
                c["kernel"].as_str().map(str::to_string),
                c["targets"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn demo(args: &[&str]) -> Value {
    let mut full = vec!["--root", "pkgs", "--root", "extensions"];
    full.extend_from_slice(args);
    matrix(&project_dir(), &full)
}

/// Two kernel flavours (each a prepare + build pair that takes the session
/// certificate), a module and an extension on each, a stage that needs
/// both, and a tool that needs no kernel.
fn flavours() -> TempDir {
    let signing = "steps:\n  - env:\n      SIGNING_CERT: /signing/certs/signing_key.x509\nfinalize:\n  - from: /\n    to: /\n";
    let stage = |name: &str, deps: &[&str], extra: &str| {
        let mut s = format!("name: {name}\nvariant: scratch\n");
        if !deps.is_empty() {
            s.push_str("dependencies:\n");
            for d in deps {
                s.push_str(&format!("  - stage: {d}\n"));
            }
        }
        s + extra
    };
    tree(&[
        ("pkgs/Pkgfile", "format: v1alpha2\n".to_string()),
        (
            "pkgs/kernel-a/prepare/pkg.yaml",
            stage("kernel-a-prepare", &[], signing),
        ),
        (
            "pkgs/kernel-a/build/pkg.yaml",
            stage("kernel-a-build", &["kernel-a-prepare"], signing),
        ),
        (
            "pkgs/kernel-b/pkg.yaml",
            stage("kernel-b-build", &["toolchain"], signing),
        ),
        ("pkgs/toolchain/pkg.yaml", stage("toolchain", &[], "")),
        (
            "pkgs/mod-a/pkg.yaml",
            stage("mod-a", &["kernel-a-build", "toolchain"], ""),
        ),
        (
            "pkgs/mod-b/pkg.yaml",
            stage("mod-b", &["kernel-b-build"], ""),
        ),
        ("pkgs/ext-a/pkg.yaml", stage("ext-a", &["mod-a"], "")),
        ("pkgs/both/pkg.yaml", stage("both", &["mod-a", "mod-b"], "")),
        ("pkgs/tool/pkg.yaml", stage("tool", &["toolchain"], "")),
    ])
}

#[test]
fn demo_tree_gives_one_cell_with_all_targets() {
    let m = demo(&["kernel", "hello-module", "hello"]);
    let c = cells(&m);
    assert_eq!(c.len(), 1, "{m}");
    assert_eq!(c[0]["platform"], "linux/amd64");
    assert_eq!(c[0]["arch"], "amd64");
    assert_eq!(c[0]["kernel"], "kernel");
    assert_eq!(c[0]["targets"], "hello hello-module kernel");
    assert_eq!(c[0]["name"], "amd64-kernel");
}

#[test]
fn two_platforms_give_two_cells_sorted_by_platform() {
    let comma = demo(&[
        "--platform",
        "linux/arm64,linux/amd64",
        "kernel",
        "hello-module",
        "hello",
    ]);
    assert_eq!(
        summary(&comma),
        [
            (
                "linux/amd64".to_string(),
                Some("kernel".to_string()),
                "hello hello-module kernel".to_string()
            ),
            (
                "linux/arm64".to_string(),
                Some("kernel".to_string()),
                "hello hello-module kernel".to_string()
            ),
        ]
    );
    assert_eq!(cells(&comma)[1]["arch"], "arm64");
    let repeated = demo(&[
        "--platform",
        "amd64",
        "--platform",
        "linux/arm64",
        "hello",
        "kernel",
        "hello-module",
        "hello",
    ]);
    assert_eq!(
        comma, repeated,
        "order and repeats of arguments do not matter"
    );
}

#[test]
fn kernel_less_target_goes_into_its_own_cell() {
    let t = flavours();
    let m = matrix(t.path(), &["tool", "mod-a", "toolchain"]);
    assert_eq!(
        summary(&m),
        [
            (
                "linux/amd64".to_string(),
                Some("kernel-a-build".to_string()),
                "mod-a".to_string()
            ),
            (
                "linux/amd64".to_string(),
                None,
                "tool toolchain".to_string()
            ),
        ]
    );
    assert_eq!(cells(&m)[1]["name"], "amd64-no-kernel");
    assert!(cells(&m)[1]["kernel"].is_null());
}

#[test]
fn two_kernel_flavours_give_separate_cells() {
    let t = flavours();
    let m = matrix(
        t.path(),
        &[
            "ext-a",
            "mod-b",
            "kernel-b-build",
            "mod-a",
            "--platform",
            "amd64,arm64",
        ],
    );
    let want = |p: &str| {
        [
            (
                p.to_string(),
                Some("kernel-a-build".to_string()),
                "ext-a mod-a".to_string(),
            ),
            (
                p.to_string(),
                Some("kernel-b-build".to_string()),
                "kernel-b-build mod-b".to_string(),
            ),
        ]
    };
    let got = summary(&m);
    assert_eq!(got[..2], want("linux/amd64"));
    assert_eq!(got[2..], want("linux/arm64"));
    let names: Vec<&str> = cells(&m)
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "amd64-kernel-a-build",
            "amd64-kernel-b-build",
            "arm64-kernel-a-build",
            "arm64-kernel-b-build"
        ]
    );
}

#[test]
fn target_needing_both_kernels_joins_their_cells() {
    let t = flavours();
    let m = matrix(t.path(), &["mod-a", "mod-b", "both"]);
    assert_eq!(
        summary(&m),
        [(
            "linux/amd64".to_string(),
            Some("kernel-a-build kernel-b-build".to_string()),
            "both mod-a mod-b".to_string()
        )]
    );
}

#[test]
fn unknown_target_fails_with_exit_1_and_a_suggestion() {
    let out = composer(
        &project_dir(),
        &[
            "--root",
            "pkgs",
            "--root",
            "extensions",
            "matrix",
            "kernel",
            "helo",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "no JSON on failure");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown target `helo` (did you mean `hello`?)"),
        "{err}"
    );
}

#[test]
fn broken_definitions_fail_with_exit_1() {
    let t = tree(&[
        ("pkgs/Pkgfile", "format: v1alpha2\n"),
        (
            "pkgs/a/pkg.yaml",
            "name: a\nvariant: scratch\ndependencies:\n  - stage: nope\n",
        ),
    ]);
    let out = composer(t.path(), &["matrix", "a"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown stage `nope`"), "{err}");
}

#[test]
fn pretty_output_is_the_same_matrix() {
    let one = demo(&["kernel", "hello"]);
    let out = composer(
        &project_dir(),
        &[
            "--root",
            "pkgs",
            "--root",
            "extensions",
            "matrix",
            "--pretty",
            "kernel",
            "hello",
        ],
    );
    assert!(out.status.success());
    let pretty: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(one, pretty);
    assert!(String::from_utf8_lossy(&out.stdout).lines().count() > 3);
}

#[test]
fn real_corpus_gives_a_matrix() {
    let corpus = project_dir().join("../shared/corpus");
    assert!(corpus.is_dir(), "corpus missing at {}", corpus.display());
    let m = matrix(
        &corpus,
        &[
            "--root",
            "siderolabs-pkgs",
            "--build-arg",
            "TEST_STAGE=",
            "--platform",
            "linux/amd64,linux/arm64",
            "kernel",
            "hailort-pkg",
            "zfs-pkg",
            "base",
        ],
    );
    // siderolabs' kernel signs with a key of its own build: no stage takes
    // composer's session certificate, so nothing has to be built together.
    let platforms: Vec<&str> = cells(&m)
        .iter()
        .map(|c| c["platform"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"], "{m}");
    for c in cells(&m) {
        assert_eq!(c["targets"], "base hailort-pkg kernel zfs-pkg");
    }
}

#[test]
fn kernel_releases_give_one_cell_per_platform_and_release() {
    let m = demo(&[
        "--kernel-release",
        "6.1.0-57-cloud-amd64,6.1.0-56-cloud-amd64",
        "--kernel-release",
        "6.1.0-57-cloud-amd64",
        "hello-kmod",
        "hailort-kmod",
    ]);
    let c = cells(&m);
    assert_eq!(c.len(), 2, "one cell per release, repeats dropped: {m}");
    for (cell, release) in c
        .iter()
        .zip(["6.1.0-56-cloud-amd64", "6.1.0-57-cloud-amd64"])
    {
        assert_eq!(cell["kernel_release"], release, "{m}");
        assert_eq!(cell["name"], format!("amd64-no-kernel-{release}"), "{m}");
        assert_eq!(
            cell["kernel"],
            Value::Null,
            "composer builds no kernel here"
        );
        assert_eq!(cell["targets"], "hailort-kmod hello-kmod");
    }
    let without = demo(&["hello-kmod"]);
    assert_eq!(cells(&without)[0]["kernel_release"], Value::Null);
}

#[test]
fn a_kernel_release_that_is_no_path_component_is_refused() {
    for bad in ["../etc", "6.1/x", "latest", ""] {
        let out = composer(
            &project_dir(),
            &["matrix", "--kernel-release", bad, "hello-kmod"],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {stderr}");
        assert!(stderr.contains("kernel release"), "{bad:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{bad:?}: no matrix printed");
    }
}
