//! `composer build --push` against tags a registry already holds, with a
//! real `docker-registry` on 127.0.0.1: `--skip-existing` builds only the
//! targets whose image is missing (KMM's rule) and runs nothing when all
//! are there; a push never replaces a tag naming another image unless
//! `--overwrite-existing`. The kmod images hold small relocatable objects
//! with a `.modinfo` section compiled by the host's cc in a `variant:
//! host` stage (no kernel is built); they leave unsigned (`--unsigned`).

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::kmod::kmod_pkg;
use common::registry::{Registry, free_port};
use tempfile::TempDir;

const RELEASE: &str = "6.1.0-57-cloud-amd64";

/// A project with the given stages under `p/`.
fn project(pkgs: &[(&str, String)]) -> TempDir {
    let files: Vec<(String, &String)> = pkgs
        .iter()
        .map(|(name, text)| (format!("{name}/pkg.yaml"), text))
        .collect();
    let refs: Vec<(&str, &String)> = files.iter().map(|(a, b)| (a.as_str(), *b)).collect();
    common::project("format: v1alpha2\n", &refs)
}

/// Rewrites stage `name` of the project in `dir`.
fn rewrite(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(format!("p/{name}/pkg.yaml")), text).unwrap();
}

/// `composer --root p build --cache-dir CACHE -o OUT ARGS...`.
fn build(dir: &Path, cache: &str, out: &str, args: &[&str]) -> Output {
    let mut all = vec!["--root", "p", "build", "--cache-dir", cache, "-o", out];
    all.extend_from_slice(args);
    common::composer(dir, &all)
}

/// `build --format kmm --kernel-release RELEASE --unsigned --push PREFIX
/// --insecure ARGS...`.
fn kmm(dir: &Path, cache: &str, out: &str, prefix: &str, args: &[&str]) -> Output {
    let mut all = vec![
        "--format",
        "kmm",
        "--kernel-release",
        RELEASE,
        "--unsigned",
        "--push",
        prefix,
        "--insecure",
    ];
    all.extend_from_slice(args);
    build(dir, cache, out, &all)
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The digest the registry serves for `reference`, read with skopeo.
fn registry_digest(reference: &str) -> String {
    let out = common::run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["Digest"].as_str().unwrap().to_string()
}

/// The digest on the `TARGET\tpushed\tREF\tDIGEST` line of stdout.
fn pushed_digest(stdout: &str, target: &str) -> String {
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("{target}\tpushed\t")))
        .and_then(|l| l.split('\t').nth(3))
        .unwrap_or_else(|| panic!("no {target} pushed in: {stdout}"))
        .to_string()
}

#[test]
fn skip_existing_runs_no_stage_when_every_image_is_in_the_registry() {
    let registry = Registry::start();
    let prefix = format!("{}/kmods", registry.addr());
    let p = project(&[(
        "hello-kmod",
        kmod_pkg("hello-kmod", "{{ .KERNEL_FULL_VERSION }}", "hello"),
    )]);
    let o = kmm(p.path(), "cache", "_out", &prefix, &["hello-kmod"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    let digest = pushed_digest(&stdout, "hello-kmod");
    let reference = format!("{prefix}/hello-kmod:{RELEASE}");
    assert_eq!(registry_digest(&reference), digest);

    // A fresh cache and output directory: building would have to run the
    // stage, write its log and export the target.
    let o = kmm(
        p.path(),
        "cache2",
        "_out2",
        &prefix,
        &["--skip-existing", "hello-kmod"],
    );
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "skipped hello-kmod: {reference} exists ({digest})"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("built 0 stage(s)"), "{stderr}");
    assert!(!stderr.contains("hello-kmod: started"), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(!p.path().join("cache2").exists(), "the cache was opened");
    assert!(!p.path().join("_out2").exists(), "something was written");
    assert_eq!(registry_digest(&reference), digest);
}

#[test]
fn skip_existing_builds_only_the_targets_missing_from_the_registry() {
    let registry = Registry::start();
    let prefix = format!("{}/kmods", registry.addr());
    let release = "{{ .KERNEL_FULL_VERSION }}";
    let p = project(&[
        ("hello-kmod", kmod_pkg("hello-kmod", release, "hello")),
        ("other-kmod", kmod_pkg("other-kmod", release, "other")),
    ]);
    let o = kmm(p.path(), "cache", "_out", &prefix, &["hello-kmod"]);
    assert!(o.status.success(), "{}", text(&o).1);
    let hello = pushed_digest(&text(&o).0, "hello-kmod");

    let o = kmm(
        p.path(),
        "cache2",
        "_out2",
        &prefix,
        &["--skip-existing", "hello-kmod", "other-kmod"],
    );
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "skipped hello-kmod: {prefix}/hello-kmod:{RELEASE} exists ({hello})"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("skipped other-kmod"), "{stderr}");
    assert!(stderr.contains("built 1 stage(s)"), "{stderr}");
    let other = pushed_digest(&stdout, "other-kmod");
    assert_eq!(
        registry_digest(&format!("{prefix}/other-kmod:{RELEASE}")),
        other
    );
    assert!(!stdout.contains("hello-kmod"), "{stdout}");
    assert!(!p.path().join("_out2/hello-kmod").exists());
    assert!(!p.path().join("_out2/logs/hello-kmod").exists());
    assert!(p.path().join("_out2/other-kmod").is_dir());
}

#[test]
fn a_push_never_replaces_a_tag_naming_another_image_unless_asked() {
    let registry = Registry::start();
    let prefix = format!("{}/kmods", registry.addr());
    let reference = format!("{prefix}/hello-kmod:{RELEASE}");
    let release = "{{ .KERNEL_FULL_VERSION }}";
    let p = project(&[("hello-kmod", kmod_pkg("hello-kmod", release, "hello"))]);
    let o = kmm(p.path(), "cache", "_out", &prefix, &["hello-kmod"]);
    assert!(o.status.success(), "{}", text(&o).1);
    let first = pushed_digest(&text(&o).0, "hello-kmod");

    // The same image again: nothing is pushed.
    let o = kmm(p.path(), "cache", "_out", &prefix, &["hello-kmod"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!("hello-kmod\tpresent\t{reference}\t{first}")),
        "{stdout}"
    );
    assert!(stderr.contains("already there"), "{stderr}");
    assert!(!stdout.contains("\tpushed\t"), "{stdout}");

    // Other content for the same tag: refused, nothing exported.
    rewrite(
        p.path(),
        "hello-kmod",
        &kmod_pkg("hello-kmod", release, "changed"),
    );
    let o = kmm(p.path(), "cache", "_out3", &prefix, &["hello-kmod"]);
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    let local = common::layout_digest(&p.path().join("_out/images/hello-kmod"), RELEASE);
    assert_eq!(local, first, "the first build's image");
    assert!(
        stderr.contains(&format!(
            "{reference} exists with {first}; this build made sha256:"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("not overwritten (--overwrite-existing replaces it)"),
        "{stderr}"
    );
    assert!(!stdout.contains("\tpushed\t"), "{stdout}");
    assert!(!p.path().join("_out3/hello-kmod").exists());
    assert!(!p.path().join("_out3/images").exists());
    assert_eq!(registry_digest(&reference), first, "the tag was replaced");

    // Asked to: replaced.
    let o = kmm(
        p.path(),
        "cache",
        "_out4",
        &prefix,
        &["--overwrite-existing", "hello-kmod"],
    );
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    let second = pushed_digest(&stdout, "hello-kmod");
    assert_ne!(second, first);
    assert!(
        stderr.contains(&format!("holds {first}; replacing it")),
        "{stderr}"
    );
    assert_eq!(registry_digest(&reference), second);
    assert_eq!(
        common::layout_digest(&p.path().join("_out4/images/hello-kmod"), RELEASE),
        second
    );
}

#[test]
fn skip_existing_knows_an_extensions_tag_from_its_manifest_template() {
    let registry = Registry::start();
    let prefix = format!("{}/ext", registry.addr());
    let files = "name: files\nvariant: host\nshell: /bin/bash\nsteps:\n  - install:\n      - install -d /rootfs/usr/local/share/x && printf x > /rootfs/usr/local/share/x/x\nfinalize:\n  - from: /rootfs\n    to: /\n";
    let ext = "name: ext\nvariant: scratch\ndependencies:\n  - stage: files\n    to: /rootfs\nfinalize:\n  - from: /rootfs\n    to: /rootfs\n  - from: /pkg/manifest.yaml\n    to: /\n";
    let manifest = "version: v1alpha1\nmetadata:\n  name: ext\n  version: \"{{ .VERSION }}\"\n  author: tests\n  description: an extension\n  compatibility:\n    talos:\n      version: \">= v1.9.0\"\n";
    let p = common::project(
        "format: v1alpha2\nvars:\n  VERSION: 2.0.1\n",
        &[
            ("files/pkg.yaml", files),
            ("ext/pkg.yaml", ext),
            ("ext/manifest.yaml.tmpl", manifest),
        ],
    );
    let push = |extra: &[&str]| -> Vec<String> {
        let mut v = vec!["--push".to_string(), prefix.clone(), "--insecure".into()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |cache: &str, out: &str, extra: &[&str]| {
        let args = push(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        build(p.path(), cache, out, &refs)
    };
    let o = run("cache", "_out", &["ext"]);
    assert!(o.status.success(), "{}", text(&o).1);
    let digest = pushed_digest(&text(&o).0, "ext");

    let o = run("cache2", "_out2", &["--skip-existing", "ext"]);
    let (_, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "skipped ext: {prefix}/ext:2.0.1 exists ({digest})"
        )),
        "{stderr}"
    );
    assert!(!p.path().join("cache2").exists());

    // A stage whose image, if any, is known only from its output.
    let o = run("cache2", "_out2", &["--skip-existing", "files"]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--skip-existing: the tag of 1 target(s) cannot be known before building"),
        "{stderr}"
    );
    assert!(stderr.contains("files: what image it becomes"), "{stderr}");
    assert!(!p.path().join("cache2").exists());
}

#[test]
fn a_kmod_image_for_another_release_than_skip_existing_looked_for_is_refused() {
    let registry = Registry::start();
    let prefix = format!("{}/kmods", registry.addr());
    let p = project(&[(
        "hello-kmod",
        kmod_pkg("hello-kmod", "6.1.0-58-cloud-amd64", "hello"),
    )]);
    let o = kmm(
        p.path(),
        "cache",
        "_out",
        &prefix,
        &["--skip-existing", "hello-kmod"],
    );
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "hello-kmod: its image is tagged 6.1.0-58-cloud-amd64, not {RELEASE} as --skip-existing looked for"
        )),
        "{stderr}"
    );
    assert!(!stdout.contains("\tpushed\t"), "{stdout}");
    assert!(!p.path().join("_out/hello-kmod").exists());
    assert!(registry.catalog().is_empty(), "{:?}", registry.catalog());
}

#[test]
fn flags_that_cannot_work_are_clear_errors() {
    let p = project(&[(
        "hello-kmod",
        kmod_pkg("hello-kmod", "{{ .KERNEL_FULL_VERSION }}", "hello"),
    )]);
    let prefix = format!("127.0.0.1:{}/kmods", free_port());
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--skip-existing",
                "--format",
                "kmm",
                "--kernel-release",
                RELEASE,
            ],
            "--skip-existing needs --push REGISTRY/PATH",
        ),
        (
            &["--overwrite-existing"],
            "--overwrite-existing needs --push REGISTRY/PATH",
        ),
        (
            &["--skip-existing", "--format", "kmm", "--push", &prefix],
            "--skip-existing with --format kmm needs --kernel-release RELEASE",
        ),
        (
            &["--skip-existing", "--format", "rootfs", "--push", &prefix],
            "--format rootfs makes no images",
        ),
    ];
    for (args, message) in cases {
        let o = build(
            p.path(),
            "cache",
            "_out",
            &[args, &["hello-kmod"][..]].concat(),
        );
        let (stdout, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert!(
            !p.path().join("cache").exists(),
            "{args:?}: a build started"
        );
        assert!(!p.path().join("_out").exists(), "{args:?}: output written");
    }
}

#[test]
fn an_unreachable_registry_under_skip_existing_is_an_error_naming_it() {
    let p = project(&[(
        "hello-kmod",
        kmod_pkg("hello-kmod", "{{ .KERNEL_FULL_VERSION }}", "hello"),
    )]);
    let registry = format!("127.0.0.1:{}", free_port());
    let prefix = format!("{registry}/kmods");
    let o = kmm(
        p.path(),
        "cache",
        "_out",
        &prefix,
        &["--skip-existing", "hello-kmod"],
    );
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot ask the registry {registry} whether")),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "{stdout}");
    assert!(!p.path().join("cache").exists(), "a build started");
    assert!(!p.path().join("_out").exists(), "output written");
}
