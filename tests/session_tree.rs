//! A kernel tree compiled with no key and certified per session: a stage
//! `ktree` stands for kernel-build (no mention of the session), `kcert` for
//! the kernel stage (it writes the session's certificate in and names the
//! tree with `SESSION_KERNEL_TREE`), `mods` for a module stage built on the
//! tree. Each stage stamps its output with the time it ran, so a test sees
//! what ran and what was reused.
//!
//! - the modules built on the tree join the session: signed with its key,
//!   and building them alone brings the certifying stage into the plan;
//! - a new session (`--new-session`: the key rotates) compiles nothing: the
//!   tree is cached, the certifying stage runs, the modules' cached build is
//!   signed again;
//! - a changed module rebuilds with a new session; the tree stays cached.

mod common;

use std::fs;
use std::path::Path;

use common::composer;

const KTREE: &str = "name: ktree
variant: host
shell: /bin/bash
steps:
  - install:
      - |
        mkdir -p /out/src
        echo 6.1.0-test > /out/src/release
        date +%s%N > /out/src/compiled
finalize:
  - from: /out
    to: /
";

const KCERT: &str = "name: kcert
variant: host
shell: /bin/bash
dependencies:
  - stage: ktree
steps:
  - env:
      SESSION_KERNEL_TREE: ktree
    install:
      - |
        mkdir -p /rootfs/boot
        cp /signing/certs/signing_key.x509 /rootfs/boot/session.pem
        cp /src/compiled /rootfs/boot/tree-compiled
        date +%s%N > /rootfs/boot/certified
finalize:
  - from: /rootfs
    to: /
";

/// The module stage; `greeting` changes its definition.
fn mods(greeting: &str) -> String {
    format!(
        "name: mods
variant: host
shell: /bin/bash
dependencies:
  - stage: ktree
steps:
  - install:
      - |
        dir=/out/usr/lib/modules/$(cat /src/release)/extra
        mkdir -p \"$dir\"
        cat > /tmp/build/m.c <<'EOF'
        int init_module(void) {{ return 0; }}
        static const char m0[] __attribute__((section(\".modinfo\"), used, aligned(1))) = \"license=GPL\";
        static const char m1[] __attribute__((section(\".modinfo\"), used, aligned(1))) = \"name=mods\";
        static const char m2[] __attribute__((section(\".modinfo\"), used, aligned(1))) = \"description={greeting}\";
        EOF
        cc -c -O0 /tmp/build/m.c -o \"$dir/mods.ko\"
        date +%s%N > /out/compiled
finalize:
  - from: /out
    to: /
"
    )
}

fn project(greeting: &str) -> tempfile::TempDir {
    common::tree(&[
        ("pkgs/ktree/pkg.yaml", KTREE.to_string()),
        ("pkgs/kcert/pkg.yaml", KCERT.to_string()),
        ("pkgs/mods/pkg.yaml", mods(greeting)),
    ])
}

/// `composer build --cache-dir <p>/cache ARGS...`; its stderr.
fn build(p: &Path, args: &[&str]) -> String {
    let cache = p.join("cache");
    let mut all = vec!["build", "--cache-dir", cache.to_str().unwrap()];
    all.extend_from_slice(args);
    let o = composer(p, &all);
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{args:?}:\n{e}");
    e
}

/// Whether `_out/mods`' modules verify against `cert`.
fn verifies(p: &Path, cert: &Path) -> bool {
    composer(
        p,
        &[
            "verify",
            "_out/mods",
            "--cert",
            cert.to_str().unwrap(),
            "-q",
        ],
    )
    .status
    .success()
}

fn read(p: &Path, file: &str) -> String {
    fs::read_to_string(p.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn modules_on_a_certified_tree_join_the_session_and_a_new_key_compiles_nothing() {
    let d = project("hello");
    let p = d.path();
    let e = build(p, &["kcert", "mods"]);
    assert!(e.contains("signing session "), "{e}");
    assert!(e.contains("built 3 stage(s), 0 cached"), "{e}");
    let first_cert = p.join("first.pem");
    fs::copy(p.join("_out/kcert/boot/session.pem"), &first_cert).unwrap();
    assert!(verifies(p, &first_cert), "signed in the session");
    let compiled = read(p, "_out/mods/compiled");
    let tree = read(p, "_out/kcert/boot/tree-compiled");

    // The modules alone: the certifying stage is part of the plan, so the
    // modules are the session's (no --signing-key or --unsigned needed).
    let e = build(p, &["-v", "mods"]);
    assert!(e.contains("kcert: cached"), "{e}");
    assert!(e.contains("built 0 stage(s), 3 cached"), "{e}");
    assert!(verifies(p, &first_cert));

    // Key rotation: the tree and the modules compile nothing.
    let e = build(p, &["-v", "--new-session", "kcert", "mods"]);
    assert!(
        e.contains("a new signing session was asked for (--new-session)"),
        "{e}"
    );
    assert!(e.contains("ktree: cached"), "{e}");
    assert!(
        e.contains("its cached build is signed again for the new signing session"),
        "{e}"
    );
    assert!(
        e.contains("built 1 stage(s), 1 signed again, 1 cached"),
        "{e}"
    );
    assert_eq!(read(p, "_out/mods/compiled"), compiled, "mods did not run");
    assert_eq!(
        read(p, "_out/kcert/boot/tree-compiled"),
        tree,
        "ktree did not run"
    );
    let second = p.join("_out/kcert/boot/session.pem");
    assert_ne!(fs::read(&second).unwrap(), fs::read(&first_cert).unwrap());
    assert!(verifies(p, &second), "signed again with the new key");
    assert!(!verifies(p, &first_cert), "no longer with the old one");

    // The signed-again build is the session's entry: nothing runs next.
    let e = build(p, &["kcert", "mods"]);
    assert!(e.contains("built 0 stage(s), 3 cached"), "{e}");
    assert!(verifies(p, &second));
}

#[test]
fn a_changed_module_rebuilds_with_a_new_session_and_the_tree_stays_cached() {
    let d = project("hello");
    let p = d.path();
    build(p, &["kcert", "mods"]);
    let tree = read(p, "_out/kcert/boot/tree-compiled");
    fs::write(p.join("pkgs/mods/pkg.yaml"), mods("changed")).unwrap();
    let e = build(p, &["-v", "kcert", "mods"]);
    assert!(e.contains("ktree: cached"), "{e}");
    assert!(e.contains("built 2 stage(s), 1 cached"), "{e}");
    assert_eq!(read(p, "_out/kcert/boot/tree-compiled"), tree);
    assert!(verifies(p, &p.join("_out/kcert/boot/session.pem")));
}

#[test]
fn a_session_kernel_tree_that_is_not_a_dependency_is_an_error_at_the_stage() {
    let d = project("hello");
    let p = d.path();
    fs::write(
        p.join("pkgs/kcert/pkg.yaml"),
        KCERT.replace("SESSION_KERNEL_TREE: ktree", "SESSION_KERNEL_TREE: ktre"),
    )
    .unwrap();
    let o = composer(p, &["build", "--cache-dir", "cache", "mods"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("pkgs/kcert/pkg.yaml:1:7"), "{e}");
    assert!(
        e.contains("SESSION_KERNEL_TREE names `ktre`, which is not a stage dependency of `kcert`"),
        "{e}"
    );
    assert!(!p.join("_out").exists() && !p.join("cache").exists());
    // In a stage that does not use the session, it certifies nothing.
    fs::write(
        p.join("pkgs/kcert/pkg.yaml"),
        KCERT.replace("/signing/certs/signing_key.x509", "/etc/hostname"),
    )
    .unwrap();
    let o = composer(p, &["validate"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("does not use the signing session"), "{e}");
}
