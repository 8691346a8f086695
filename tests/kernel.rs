//! The bundled demo tree builds a real kernel and the fixture module with
//! `composer build`: Debian's linux-source-6.1, the host's toolchain, in
//! sandboxes. Needs what `make setup` installs (linux-source-6.1,
//! build-essential, flex, bison, bc, libelf-dev, libssl-dev, kmod,
//! bubblewrap). The cache lives in target/ so later runs are warm; the
//! first run compiles the kernel (minutes).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const LINUX_SOURCE: &str = "/usr/src/linux-source-6.1.tar.xz";

fn digest_args() -> Vec<String> {
    use sha2::{Digest, Sha256, Sha512};
    let bytes =
        fs::read(LINUX_SOURCE).unwrap_or_else(|e| panic!("{LINUX_SOURCE}: {e} (run `make setup`)"));
    vec![
        "--build-arg".into(),
        format!(
            "LINUX_SOURCE_SHA256={}",
            hex::encode(Sha256::digest(&bytes))
        ),
        "--build-arg".into(),
        format!(
            "LINUX_SOURCE_SHA512={}",
            hex::encode(Sha512::digest(&bytes))
        ),
    ]
}

fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/composer-test-cache")
}

fn build(project: &Path, extra: &[&str]) -> (Output, String) {
    let mut args: Vec<String> = vec![
        "build".into(),
        "--cache-dir".into(),
        cache_dir().to_string_lossy().into_owned(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(digest_args());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = common::composer(project, &refs);
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "build failed:\n{e}");
    (out, e)
}

/// A copy of the project's definitions and fixtures, to change freely.
fn copy_project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for d in ["pkgs", "extensions", "fixtures"] {
        let st = Command::new("cp")
            .arg("-a")
            .arg(root.join(d))
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success());
    }
    dir
}

fn release(out: &Path) -> String {
    let modules = out.join("kernel/usr/lib/modules");
    let mut rels: Vec<String> = fs::read_dir(&modules)
        .unwrap_or_else(|e| panic!("{}: {e}", modules.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(rels.len(), 1, "one kernel release: {rels:?}");
    rels.remove(0)
}

fn modinfo(ko: &Path, field: &str) -> String {
    let o = Command::new("modinfo")
        .args(["-F", field])
        .arg(ko)
        .output()
        .unwrap();
    assert!(o.status.success(), "modinfo {}", ko.display());
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn demo_tree_builds_kernel_and_module_then_caches_and_rebuilds_only_the_session() {
    let p = copy_project();
    let (out, _) = build(p.path(), &["kernel", "hello-module"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "kernel\t_out/kernel\nhello-module\t_out/hello-module\n"
    );
    let o = p.path().join("_out");
    let rel = release(&o);
    assert!(rel.starts_with("6.1."), "{rel}");
    let vmlinuz = fs::metadata(o.join("kernel/boot/vmlinuz")).unwrap();
    assert!(vmlinuz.len() > 500_000, "a real bzImage");
    let kmods = o.join(format!("kernel/usr/lib/modules/{rel}"));
    assert!(kmods.join("modules.dep").is_file());
    let ko = o.join(format!(
        "hello-module/usr/lib/modules/{rel}/extra/hello_pcie.ko"
    ));
    assert!(
        modinfo(&ko, "vermagic").starts_with(&format!("{rel} ")),
        "module built against the kernel"
    );
    assert_eq!(modinfo(&ko, "name"), "hello_pcie");
    assert_eq!(
        fs::metadata(o.join("hello-module/usr/lib/firmware/hello/hello_fw.bin"))
            .unwrap()
            .len(),
        64
    );

    // Nothing changed: everything is cached.
    let (_, e) = build(p.path(), &["-v", "kernel", "hello-module"]);
    assert!(e.contains("built 0 stage(s), 4 cached"), "{e}");

    // The module's source changes: it rebuilds, and with it its signing
    // session (the kernel relinks with a new certificate); the unpacked
    // source is reused.
    let c = p
        .path()
        .join("fixtures/hello-module/linux/pcie/hello_pcie.c");
    let mut text = fs::read_to_string(&c).unwrap();
    text.push_str("\n/* touched */\n");
    fs::write(&c, text).unwrap();
    let (_, e) = build(p.path(), &["-v", "kernel", "hello-module"]);
    assert!(e.contains("kernel-prepare: cached"), "{e}");
    assert!(
        e.contains("file /pkg/src/linux/pcie/hello_pcie.c changed"),
        "the miss is explained: {e}"
    );
    assert!(e.contains("built 3 stage(s), 1 cached"), "{e}");
    assert_eq!(release(&o), rel);
}
