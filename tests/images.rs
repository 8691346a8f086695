//! `composer build` ending in images: extension and kmod images validated
//! before anything is written, read back by real clients (umoci, skopeo),
//! pushed to a real registry on 127.0.0.1 — on small stages that need no
//! kernel (the demo kernel's images are covered by tests/kernel.rs).

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::registry::Registry;
use tempfile::TempDir;

const PKGFILE: &str =
    "format: v1alpha2\nlabels:\n  org.opencontainers.image.source: https://example.org/ext\n";

const MANIFEST: &str = "version: v1alpha1
metadata:
  name: NAME
  version: 1.2.3
  author: composer tests
  description: a test extension
  compatibility:
    talos:
      version: \">= v1.9.0\"
";

/// A stage `name` whose output is `/manifest.yaml` (`manifest`, with NAME
/// replaced) and `/rootfs` as `script` leaves it (run in /out/rootfs).
fn ext_pkg(name: &str, manifest: &str, script: &str) -> String {
    let manifest = manifest.replace("NAME", name);
    let indent = |s: &str| {
        s.lines()
            .map(|l| format!("        {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        "name: {name}\nvariant: host\nshell: /bin/bash\nsteps:\n  - install:\n      - |\n        mkdir -p /out/rootfs\n        cat > /out/manifest.yaml <<'MANIFEST'\n{}\n        MANIFEST\n        cd /out/rootfs\n{}\nfinalize:\n  - from: /out\n    to: /\n",
        indent(&manifest),
        indent(script)
    )
}

const GOOD: &str = "install -d usr/lib/firmware/acme usr/lib/udev/rules.d usr/local/bin
printf 'firmware' > usr/lib/firmware/acme/fw.bin
echo 'ACTION==\"add\"' > usr/lib/udev/rules.d/51-acme.rules
printf '#!/bin/sh\\necho hi\\n' > usr/local/bin/acme && chmod 755 usr/local/bin/acme";

fn project(pkgs: &[(&str, String)]) -> TempDir {
    let files: Vec<(String, &String)> = pkgs
        .iter()
        .map(|(name, text)| (format!("{name}/pkg.yaml"), text))
        .collect();
    let refs: Vec<(&str, &String)> = files.iter().map(|(a, b)| (a.as_str(), *b)).collect();
    common::project(PKGFILE, &refs)
}

fn build(dir: &Path, args: &[&str]) -> Output {
    let mut all = vec!["--root", "p", "build", "--cache-dir", "cache"];
    all.extend_from_slice(args);
    common::composer(dir, &all)
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `skopeo inspect` as JSON.
fn inspect(reference: &str) -> serde_json::Value {
    let out =
        common::run(Command::new("skopeo").args(["inspect", "--tls-verify=false", reference]));
    serde_json::from_str(&out).unwrap()
}

#[test]
fn an_extension_stage_becomes_an_image_talos_can_read() {
    let p = project(&[("acme", ext_pkg("acme", MANIFEST, GOOD))]);
    let o = build(p.path(), &["acme"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains("acme\timage\toci:"), "{stdout}");
    let layout = p.path().join("_out/images/acme");
    let digest = common::layout_digest(&layout, "1.2.3");

    let info = inspect(&format!("oci:{}:1.2.3", layout.display()));
    assert_eq!(info["Digest"], digest.as_str());
    let labels = &info["Labels"];
    assert_eq!(labels["org.opencontainers.image.title"], "acme");
    assert_eq!(labels["org.opencontainers.image.version"], "1.2.3");
    assert_eq!(
        labels["org.opencontainers.image.source"],
        "https://example.org/ext"
    );
    assert_eq!(info["Layers"].as_array().unwrap().len(), 1);

    // umoci unpacks exactly manifest.yaml + rootfs/.
    let bundle = p.path().join("bundle");
    let top = common::umoci_unpack(&format!("{}:1.2.3", layout.display()), &bundle);
    assert_eq!(top, ["manifest.yaml", "rootfs"]);
    assert_eq!(
        fs::read(bundle.join("rootfs/rootfs/usr/lib/firmware/acme/fw.bin")).unwrap(),
        b"firmware"
    );
}

#[test]
fn extension_image_is_reproducible() {
    let pkgs = [("acme", ext_pkg("acme", MANIFEST, GOOD))];
    let a = project(&pkgs);
    let b = project(&pkgs);
    for p in [&a, &b] {
        let o = Command::new(env!("CARGO_BIN_EXE_composer"))
            .args([
                "--root",
                "p",
                "build",
                "--cache-dir",
                "cache",
                "acme",
                "--compression",
                "zstd",
            ])
            .current_dir(p.path())
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o).1);
    }
    let da = common::layout_digest(&a.path().join("_out/images/acme"), "1.2.3");
    let db = common::layout_digest(&b.path().join("_out/images/acme"), "1.2.3");
    assert_eq!(da, db, "two builds in two checkouts give one digest");
}

#[test]
fn archives_are_written_on_request() {
    let p = project(&[("acme", ext_pkg("acme", MANIFEST, GOOD))]);
    for (format, file, transport) in [
        ("oci-archive", "acme.oci.tar", "oci-archive"),
        ("docker-archive", "acme.docker.tar", "docker-archive"),
    ] {
        let o = build(p.path(), &["acme", "--image-format", format]);
        assert!(o.status.success(), "{}", text(&o).1);
        let path = p.path().join("_out/images").join(file);
        let info = inspect(&format!("{transport}:{}", path.display()));
        assert_eq!(info["Labels"]["org.opencontainers.image.version"], "1.2.3");
    }
}

#[test]
fn push_puts_the_image_in_a_registry_with_the_local_digest() {
    let registry = Registry::start();
    let p = project(&[("acme", ext_pkg("acme", MANIFEST, GOOD))]);
    let prefix = format!("{}/composer", registry.addr());
    let o = build(p.path(), &["acme", "--push", &prefix, "--insecure"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains("acme\tpushed\t"), "{stdout}");
    let local = common::layout_digest(&p.path().join("_out/images/acme"), "1.2.3");
    let remote = inspect(&format!("docker://{prefix}/acme:1.2.3"));
    assert_eq!(remote["Digest"], local.as_str());
    // Pushing again uploads nothing new and gives the same digest.
    let o = build(p.path(), &["acme", "--push", &prefix, "--insecure"]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(
        inspect(&format!("docker://{prefix}/acme:1.2.3"))["Digest"],
        local.as_str()
    );
}

/// One broken extension per case: (what, script, manifest, rule, path).
fn broken_cases() -> Vec<(&'static str, String, String, &'static str, &'static str)> {
    let good = |extra: &str| format!("{GOOD}\n{extra}");
    vec![
        (
            "boot",
            good("install -d boot && printf k > boot/vmlinuz"),
            MANIFEST.to_string(),
            "extension-paths",
            "/boot/vmlinuz",
        ),
        (
            "writable",
            good("printf x > usr/local/bin/open && chmod 0666 usr/local/bin/open"),
            MANIFEST.to_string(),
            "extension-paths",
            "/usr/local/bin/open",
        ),
        (
            "shadow",
            good("ln -s /etc/shadow usr/local/bin/shadow"),
            MANIFEST.to_string(),
            "extension-paths",
            "/usr/local/bin/shadow",
        ),
        (
            "noversion",
            GOOD.to_string(),
            MANIFEST.replace("  version: 1.2.3\n", ""),
            "extension-manifest",
            "manifest.yaml",
        ),
        (
            "tworeleases",
            good(
                "install -d usr/lib/modules/6.1.0/extra usr/lib/modules/6.1.1/extra
printf x > usr/lib/modules/6.1.0/extra/a.ko; printf x > usr/lib/modules/6.1.1/extra/a.ko",
            ),
            MANIFEST.to_string(),
            "error[modules-vermagic]: /usr/lib/modules: 2 kernel release directories (6.1.0, 6.1.1)",
            "/usr/lib/modules",
        ),
        (
            "unsigned",
            good(
                "install -d usr/lib/modules/6.1.0/extra
printf 'int x;' > /tmp/m.c && cc -c -o usr/lib/modules/6.1.0/extra/m.ko /tmp/m.c",
            ),
            MANIFEST.to_string(),
            "error[modules-signed]: 1 module(s) for a kernel this build did not make, which no signing session signed",
            "/rootfs/usr/lib/modules/6.1.0/extra/m.ko",
        ),
    ]
}

#[test]
fn a_broken_extension_fails_its_rule_and_nothing_is_written_or_pushed() {
    let registry = Registry::start();
    let prefix = format!("{}/composer", registry.addr());
    for (name, script, manifest, rule, path) in broken_cases() {
        let p = project(&[(name, ext_pkg(name, &manifest, &script))]);
        // Modules outside a session: `unsigned` makes no choice and is
        // refused for it; the others leave unsigned to reach their rule.
        let mut args = vec![name, "--push", &prefix, "--insecure"];
        if name != "unsigned" {
            args.push("--unsigned");
        }
        let o = build(p.path(), &args);
        let (_, stderr) = text(&o);
        assert_eq!(
            o.status.code(),
            Some(1),
            "{name}: expected exit 1: {stderr}"
        );
        assert!(
            stderr.contains(rule),
            "{name}: rule {rule} not named: {stderr}"
        );
        assert!(
            stderr.contains(path),
            "{name}: path {path} not named: {stderr}"
        );
        assert!(
            !p.path().join("_out").join(name).exists(),
            "{name}: rootfs exported"
        );
        let leftovers: Vec<String> = fs::read_dir(p.path().join("_out"))
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "logs" && n != ".composer")
                    .collect()
            })
            .unwrap_or_default();
        assert!(leftovers.is_empty(), "{name}: left {leftovers:?} in _out");
        assert!(
            registry.catalog().is_empty(),
            "{name}: pushed {:?}",
            registry.catalog()
        );
    }
}

#[test]
fn skip_rule_lets_a_known_finding_through() {
    let script = format!("{GOOD}\ninstall -d boot && printf k > boot/vmlinuz");
    let p = project(&[("boot", ext_pkg("boot", MANIFEST, &script))]);
    let o = build(
        p.path(),
        &[
            "boot",
            "--skip-rule",
            "extension-paths",
            "--skip-rule",
            "fhs",
        ],
    );
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(p.path().join("_out/images/boot/index.json").is_file());
    let o = build(p.path(), &["boot", "--skip-rule", "extension-pathz"]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("extension-paths"),
        "suggestion expected: {stderr}"
    );
}

#[test]
fn an_extension_ships_its_rendered_manifest_from_pkg() {
    // Laid out like extensions/drivers/hello: a files stage, and an
    // extension stage without steps whose manifest comes from /pkg.
    let files = "name: files\nvariant: host\nshell: /bin/bash\nsteps:\n  - install:\n      - install -d /rootfs/usr/lib/firmware/x && printf fw > /rootfs/usr/lib/firmware/x/fw.bin\nfinalize:\n  - from: /rootfs\n    to: /\n";
    let ext = "name: ext\nvariant: scratch\ndependencies:\n  - stage: files\n    to: /rootfs\nfinalize:\n  - from: /rootfs\n    to: /rootfs\n  - from: /pkg/manifest.yaml\n    to: /\n";
    let p = project(&[("files", files.to_string()), ("ext", ext.to_string())]);
    fs::write(
        p.path().join("p/ext/manifest.yaml.tmpl"),
        MANIFEST
            .replace("NAME", "ext")
            .replace("1.2.3", "{{ .VERSION }}"),
    )
    .unwrap();
    fs::write(p.path().join("p/ext/vars.yaml"), "VERSION: 2.0.1\n").unwrap();
    let o = build(p.path(), &["ext"]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(
        fs::read_to_string(p.path().join("_out/ext/manifest.yaml"))
            .unwrap()
            .contains("version: 2.0.1")
    );
    common::layout_digest(&p.path().join("_out/images/ext"), "2.0.1");
}
