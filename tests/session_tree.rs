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

use common::composer;
use common::ktree::{KCERT, build, mods, project, read, verifies};

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
