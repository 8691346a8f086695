//! `composer image-installer` without a kernel build: a small base
//! installer image (a placeholder kernel, a real zstd-compressed cpio
//! initramfs) and extensions without modules, packed with `composer pack`.
//! Checks the layers, their numeric order, firmware placement, the image a
//! real client reads, reproducibility, pushing, and that every bad input
//! ends in exit 1 with nothing written. The boot of a real installer is in
//! tests/kernel/installer.rs.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::registry::Registry;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// A project directory with a base installer image `oci:base:1`.
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let f = Fixture { dir };
        f.base("base", "amd64", true);
        f
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Packs a base installer tree for `arch` as `oci:NAME:1`; `real`
    /// false gives an initramfs that is not one.
    fn base(&self, name: &str, arch: &str, real: bool) {
        let t = self.path().join(format!("{name}-tree"));
        let i = self.path().join(format!("{name}-initramfs"));
        fs::create_dir_all(t.join(format!("usr/install/{arch}"))).unwrap();
        fs::create_dir_all(i.join("bin")).unwrap();
        fs::write(i.join("init"), "#!/bin/sh\n").unwrap();
        fs::write(
            t.join(format!("usr/install/{arch}/vmlinuz")),
            b"not a kernel",
        )
        .unwrap();
        let initrd = t.join(format!("usr/install/{arch}/initramfs.xz"));
        if real {
            common::sh(
                &i,
                &format!(
                    "find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R +0:+0 | zstd -q -19 > {}",
                    initrd.display()
                ),
            );
        } else {
            fs::write(&initrd, b"MZ garbage").unwrap();
        }
        self.pack(&t, &format!("oci:{name}:1"));
    }

    fn pack(&self, tree: &Path, dest: &str) {
        let o = common::composer(self.path(), &["pack", tree.to_str().unwrap(), "-o", dest]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    /// Packs an extension `oci:NAME:1.0.0` with `files` under rootfs/.
    fn extension(&self, name: &str, files: &[(&str, &str)], talos: &str) -> String {
        let t = self.path().join(format!("ext-{name}"));
        fs::create_dir_all(t.join("rootfs")).unwrap();
        fs::write(
            t.join("manifest.yaml"),
            format!(
                "version: v1alpha1\nmetadata:\n  name: {name}\n  version: 1.0.0\n  author: tests\n  description: test extension {name}\n  compatibility:\n    talos:\n      version: \"{talos}\"\n"
            ),
        )
        .unwrap();
        for (p, c) in files {
            let f = t.join("rootfs").join(p);
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(f, c).unwrap();
        }
        let dest = format!("oci:{name}:1.0.0");
        self.pack(&t, &dest);
        dest
    }

    fn installer(&self, extra: &[&str]) -> Output {
        let cache = self.path().join("cache");
        let mut args = vec!["image-installer", "--cache-dir", cache.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = Command::new(env!("CARGO_BIN_EXE_composer"))
            .args(&args)
            .current_dir(self.path())
            .env("NO_COLOR", "1")
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .unwrap();
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
        out
    }

    /// The appended archive's listing, its extensions.yaml and where it
    /// was extracted, from the installer tarball `tar`.
    fn appended(&self, tar: &str) -> (Vec<String>, String, PathBuf) {
        let unpacked = self.path().join(format!("unpacked-{tar}"));
        let lay = self.path().join(format!("layout-{tar}"));
        common::run(
            Command::new("skopeo")
                .args(["copy", "-q"])
                .arg(format!(
                    "docker-archive:{}",
                    self.path().join(tar).display()
                ))
                .arg(format!("oci:{}:x", lay.display())),
        );
        common::umoci_unpack(&format!("{}:x", lay.display()), &unpacked);
        let initrd = fs::read(unpacked.join("rootfs/usr/install/amd64/initramfs.xz")).unwrap();
        let base = fs::read(self.path().join("base-tree/usr/install/amd64/initramfs.xz")).unwrap();
        assert!(
            initrd.starts_with(&base),
            "the base initramfs comes first, unchanged"
        );
        // What follows is one compressed archive of its own.
        let x = self.path().join(format!("x-{tar}"));
        fs::create_dir_all(&x).unwrap();
        let suffix = self.path().join(format!("appended-{tar}"));
        fs::write(&suffix, &initrd[base.len()..]).unwrap();
        common::sh(
            &x,
            &format!("zstd -dc {} | cpio -id --quiet", suffix.display()),
        );
        let listing = common::run(
            Command::new("bash")
                .args(["-c", "find . -mindepth 1 | LC_ALL=C sort"])
                .current_dir(&x),
        );
        let yaml = fs::read_to_string(x.join("extensions.yaml")).unwrap_or_default();
        (
            listing
                .lines()
                .map(|l| l.trim_start_matches("./").to_string())
                .collect(),
            yaml,
            x,
        )
    }

    fn assert_nothing_written(&self, out: &Output, output: &str) -> String {
        let e = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{e}");
        assert!(!self.path().join(output).exists(), "{output} written");
        let left: Vec<_> = fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".composer-staging-") || n.starts_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        e
    }
}

#[test]
fn eleven_extensions_become_numbered_layers_in_numeric_order() {
    let f = Fixture::new();
    let mut args = vec!["--base-installer-image".to_string(), "oci:base:1".into()];
    for n in 0..11 {
        let r = f.extension(
            &format!("ext{n}"),
            &[("usr/local/share/ext/id", "x")],
            ">= v1.9.0",
        );
        args.push("--system-extension-image".into());
        args.push(r);
    }
    args.extend(["-o".into(), "inst.tar".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = f.installer(&refs);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let names: Vec<&str> = stdout
        .lines()
        .skip(1)
        .take(11)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    let expected: Vec<String> = (0..11).map(|n| format!("ext{n}")).collect();
    assert_eq!(names, expected, "{stdout}");
    let (listing, yaml, _) = f.appended("inst.tar");
    for n in 0..11 {
        assert!(listing.contains(&format!("{n}.sqsh")), "{listing:?}");
    }
    assert!(listing.contains(&"extensions.yaml".to_string()));
    let images: Vec<&str> = yaml
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- image: "))
        .collect();
    let numbered: Vec<String> = (0..11).map(|n| format!("{n}.sqsh")).collect();
    assert_eq!(images, numbered, "{yaml}");
    let yaml_names: Vec<&str> = yaml
        .lines()
        .filter_map(|l| l.trim().strip_prefix("name: "))
        .collect();
    assert_eq!(yaml_names, expected, "layer N is the Nth extension: {yaml}");
    assert!(
        !yaml.contains("modules.dep"),
        "no modules, no dependency layer"
    );
}

#[test]
fn firmware_moves_into_the_initramfs_and_the_image_is_reproducible() {
    let f = Fixture::new();
    let ext = f.extension(
        "fw",
        &[
            ("usr/lib/firmware/vendor/fw.bin", "blob"),
            ("usr/local/bin/tool", "#!/bin/sh\n"),
        ],
        ">= v1.9.0",
    );
    let args = |out: &'static str| {
        vec![
            "--base-installer-image",
            "oci:base:1",
            "--system-extension-image",
            &ext,
            "-o",
            out,
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    for out in ["one.tar", "two.tar"] {
        let a = args(out);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        let o = f.installer(&refs);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(
        fs::read(f.path().join("one.tar")).unwrap(),
        fs::read(f.path().join("two.tar")).unwrap(),
        "byte-identical"
    );
    let (listing, _, x) = f.appended("one.tar");
    assert!(
        listing.contains(&"usr/lib/firmware/vendor/fw.bin".to_string()),
        "{listing:?}"
    );
    let sq = common::run(Command::new("unsquashfs").arg("-l").arg(x.join("0.sqsh")));
    assert!(sq.contains("usr/local/bin/tool"), "{sq}");
    assert!(!sq.contains("firmware"), "firmware left the squashfs: {sq}");

    // A real client sees the base's layer plus the artifacts layer, and
    // the time from SOURCE_DATE_EPOCH.
    let inspect = common::run(Command::new("skopeo").arg("inspect").arg(format!(
        "docker-archive:{}",
        f.path().join("one.tar").display()
    )));
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v["Layers"].as_array().unwrap().len(), 2, "{inspect}");
    assert_eq!(v["Created"], "2023-11-14T22:13:20Z", "{inspect}");
    assert_eq!(v["Architecture"], "amd64");
}

#[test]
fn the_installer_is_pushed_to_a_registry() {
    let f = Fixture::new();
    let ext = f.extension("pushed", &[("usr/local/share/p", "x")], ">= v1.9.0");
    let reg = Registry::start();
    let target = format!("{}/installer:v1", reg.addr());
    let o = f.installer(&[
        "--base-installer-image",
        "oci:base:1",
        "--system-extension-image",
        &ext,
        "-o",
        "p.tar",
        "--push",
        &target,
        "--insecure",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let digest = stdout
        .lines()
        .find(|l| l.starts_with("installer\tpushed\t"))
        .and_then(|l| l.split('\t').nth(3))
        .unwrap_or_else(|| panic!("{stdout}"));
    let inspect = common::run(
        Command::new("skopeo")
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://{target}")),
    );
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v["Digest"], digest, "{inspect}");
}

#[test]
fn bad_inputs_fail_clearly_and_write_nothing() {
    let f = Fixture::new();
    let good = f.extension("good", &[("usr/local/share/g", "x")], ">= v1.9.0");
    // A base without installer artifacts.
    let plain = f.path().join("plain");
    fs::create_dir_all(plain.join("usr/share")).unwrap();
    fs::write(plain.join("usr/share/x"), "x").unwrap();
    f.pack(&plain, "oci:plain:1");
    // A base whose initramfs is not one.
    f.base("garbage", "amd64", false);
    // An extension breaking a rule, one with an old Talos range, and a
    // plain image that is no extension at all.
    let world = f.path().join("ext-world");
    let bad = f.extension("world", &[("usr/local/share/w", "x")], ">= v1.9.0");
    fs::write(world.join("rootfs/usr/local/share/w"), "changed").unwrap();
    common::sh(&world, "chmod 0666 rootfs/usr/local/share/w");
    f.pack(&world, &bad);
    let old = f.extension("old", &[("usr/local/share/o", "x")], ">= v1.10.0");

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--base-installer-image",
                "oci:plain:1",
                "--system-extension-image",
                &good,
            ],
            "has no usr/install/amd64/vmlinuz",
        ),
        (
            vec![
                "--base-installer-image",
                "oci:base:1",
                "--arch",
                "arm64",
                "--system-extension-image",
                &good,
            ],
            "it has usr/install/ for: amd64",
        ),
        (
            vec![
                "--base-installer-image",
                "oci:garbage:1",
                "--system-extension-image",
                &good,
            ],
            "not an initramfs",
        ),
        (
            vec![
                "--base-installer-image",
                "oci:missing:1",
                "--system-extension-image",
                &good,
            ],
            "oci:missing:1",
        ),
        (
            vec![
                "--base-installer-image",
                "oci:base:1",
                "--system-extension-image",
                "oci:plain:1",
            ],
            "not a system extension image",
        ),
        (
            vec![
                "--base-installer-image",
                "oci:base:1",
                "--system-extension-image",
                &good,
                "--system-extension-image",
                &bad,
            ],
            "has mode 0666",
        ),
        (
            vec![
                "--base-installer-image",
                "oci:base:1",
                "--system-extension-image",
                &old,
                "--talos-version",
                "v1.9.0",
            ],
            "v1.9.0",
        ),
        (
            vec![
                "--base-installer-image",
                "oci:base:1",
                "--system-extension-image",
                &good,
                "--skip-rule",
                "fsh",
            ],
            "unknown rule `fsh`",
        ),
    ];
    for (args, expected) in cases {
        let mut a = args.clone();
        a.extend(["-o", "out.tar"]);
        let o = f.installer(&a);
        let e = f.assert_nothing_written(&o, "out.tar");
        assert!(
            e.contains(expected),
            "{args:?}: expected `{expected}` in:\n{e}"
        );
        assert!(e.contains("no installer image written"), "{e}");
    }
}

#[test]
fn an_installer_push_never_replaces_another_image_unless_asked() {
    let f = Fixture::new();
    let first = f.extension("first", &[("usr/local/share/a", "a")], ">= v1.9.0");
    let second = f.extension("second", &[("usr/local/share/b", "b")], ">= v1.9.0");
    let reg = Registry::start();
    let target = format!("{}/installer:v1", reg.addr());
    let push = |ext: &str, output: &str, extra: &[&str]| {
        let mut args = vec![
            "--base-installer-image",
            "oci:base:1",
            "--system-extension-image",
            ext,
            "-o",
            output,
            "--push",
            &target,
            "--insecure",
        ];
        args.extend_from_slice(extra);
        let o = f.installer(&args);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        (o.status.code(), out, err)
    };
    let in_registry = || {
        let inspect = common::run(
            Command::new("skopeo")
                .args(["inspect", "--tls-verify=false"])
                .arg(format!("docker://{target}")),
        );
        let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
        v["Digest"].as_str().unwrap().to_string()
    };
    let digest_on = |stdout: &str, what: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("installer\t{what}\t")))
            .and_then(|l| l.split('\t').nth(3))
            .unwrap_or_else(|| panic!("no {what} line: {stdout}"))
            .to_string()
    };

    let (code, stdout, stderr) = push(&first, "a.tar", &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let a = digest_on(&stdout, "pushed");
    assert_eq!(in_registry(), a);

    // The same installer again: nothing pushed.
    let (code, stdout, stderr) = push(&first, "a2.tar", &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(digest_on(&stdout, "present"), a);
    assert!(!stdout.contains("\tpushed\t"), "{stdout}");

    // Another installer for the same tag: refused, nothing written.
    let (code, stdout, stderr) = push(&second, "b.tar", &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{target} exists with {a}; this build made sha256:"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("(--overwrite-existing replaces it)"),
        "{stderr}"
    );
    assert!(!stdout.contains("\tpushed\t"), "{stdout}");
    assert!(
        !f.path().join("b.tar").exists(),
        "the installer was written"
    );
    assert_eq!(in_registry(), a, "the tag was replaced");

    let (code, stdout, stderr) = push(&second, "b.tar", &["--overwrite-existing"]);
    assert_eq!(code, Some(0), "{stderr}");
    let b = digest_on(&stdout, "pushed");
    assert_ne!(a, b);
    assert_eq!(in_registry(), b);
}
