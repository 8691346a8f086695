//! The demo chain past one machine, through a docker-registry on
//! 127.0.0.1: machine A is the test cache that built the demo chain,
//! machine B a copy of the project with an empty cache.
//!
//! - A stores its build (`--cache-to`); B builds the same targets with
//!   `--cache-from` and no stage runs; B's outputs and image digests are
//!   A's, and B's installer boots with the session's modules loaded under
//!   `module.sig_enforce=1` (the kernel and its modules travelled as one
//!   session);
//! - B changes the fixture module: a new session is built on B (the
//!   keyless kernel tree is reused) and stored; A, changed the same way,
//!   gets the whole session from the registry and builds nothing;
//! - machine C, empty, with a blob of kernel-prepare's entry damaged in the
//!   registry's storage: C reports it and builds that stage itself.

use std::fs;
use std::path::Path;

use super::common::{self, demo, registry::Registry};
use super::installer::{boot_check, image_installer};

const TARGETS: [&str; 4] = ["kernel", "hello-module", "hello", "installer-base"];

/// `composer build` with `cache` and the demo's source digests; stdout
/// and stderr.
fn build_with(project: &Path, cache: &Path, extra: &[&str]) -> (String, String) {
    let mut args: Vec<String> = vec![
        "build".into(),
        "--cache-dir".into(),
        cache.to_string_lossy().into_owned(),
        "--insecure".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(TARGETS.iter().map(|s| s.to_string()));
    args.extend(demo::digest_args());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = common::composer(project, &refs);
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "build failed:\n{e}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), e)
}

/// The image lines of a build's stdout (`target\timage\tref\tdigest`).
fn images(stdout: &str) -> Vec<&str> {
    stdout.lines().filter(|l| l.contains("\timage\t")).collect()
}

/// A change to the fixture module's source never seen before.
fn touch_module(project: &Path, mark: &str) {
    let c = project.join("fixtures/hello-module/linux/pcie/hello_pcie.c");
    let mut text = fs::read_to_string(&c).unwrap();
    text.push_str(&format!("\n/* shared {mark} */\n"));
    fs::write(&c, text).unwrap();
}

fn same_tree(a: &Path, b: &Path) {
    let digest = |p: &Path| composer::exec::fsops::tree_digest(p).unwrap();
    assert_eq!(digest(a), digest(b), "{} and {}", a.display(), b.display());
}

pub fn two_machines(a: &Path, rel: &str) {
    let registry = Registry::start();
    let cache = format!("{}/demo/composer-cache", registry.addr());
    let a_cache = super::cache_dir();

    // A stores what it built (every stage is cached locally).
    let (a_out, e) = build_with(a, &a_cache, &["--cache-to", &cache]);
    assert!(e.contains("built 0 stage(s), 6 cached"), "{e}");
    assert_eq!(e.matches(": stored in ").count(), 6, "{e}");

    // B, empty, builds nothing.
    let b = demo::copy_project();
    let b_cache = b.path().join("cache");
    let (b_out, e) = build_with(b.path(), &b_cache, &["--cache-from", &cache]);
    assert!(
        e.contains("built 0 stage(s), 6 cached (6 from the shared cache)"),
        "{e}"
    );
    assert!(!e.contains(": started"), "no stage ran on B: {e}");
    for t in TARGETS {
        same_tree(&a.join("_out").join(t), &b.path().join("_out").join(t));
    }
    assert!(!images(&a_out).is_empty());
    assert_eq!(images(&a_out), images(&b_out), "the same image digests");

    // B's installer boots with the session's modules loaded.
    let o = image_installer(
        b.path(),
        &["oci:_out/images/hello:1.0.0"],
        "_out/installer.tar",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = boot_check(
        b.path(),
        "_out/installer.tar",
        &["hello_pcie", "hello_user"],
    );
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(said.contains("boot check passed"), "{said}");

    // B changes the module: a new session on B, stored.
    let mark = format!("{:?}", std::time::SystemTime::now());
    touch_module(b.path(), &mark);
    let (_, e) = build_with(
        b.path(),
        &b_cache,
        &["-v", "--cache-from", &cache, "--cache-to", &cache],
    );
    assert!(e.contains("kernel-build: cached"), "{e}");
    assert!(e.contains("signing session "), "{e}");
    assert!(e.contains("built 4 stage(s), 2 cached"), "{e}");
    for stage in ["kernel", "hello-module", "hello", "installer-base"] {
        assert!(e.contains(&format!("{stage}: stored in ")), "{stage}: {e}");
    }

    // A, changed the same way, gets B's session whole.
    touch_module(a, &mark);
    let (_, e) = build_with(a, &a_cache, &["-v", "--cache-from", &cache]);
    assert!(
        e.contains("built 0 stage(s), 6 cached (4 from the shared cache)"),
        "{e}"
    );
    for t in TARGETS {
        same_tree(&a.join("_out").join(t), &b.path().join("_out").join(t));
    }
    let v = common::composer(
        a,
        &[
            "verify",
            "_out/hello-module",
            "--kernel",
            "_out/kernel/boot/vmlinuz",
        ],
    );
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    assert_eq!(demo::release(&a.join("_out")), rel);

    damaged_entry_is_built_here(&registry, &cache, a, &mark);
}

/// Machine C, empty, with the layer of kernel-prepare's entry damaged in
/// the registry's storage: C reports it, builds kernel-prepare itself,
/// and takes everything else from the registry; its outputs are A's.
fn damaged_entry_is_built_here(registry: &Registry, cache: &str, a: &Path, mark: &str) {
    let repo = "demo/composer-cache";
    let prepare = registry
        .tags(repo)
        .into_iter()
        .map(|t| registry.manifest(repo, &t))
        .find(|m| m["annotations"]["dev.composer.stage.name"] == "kernel-prepare")
        .expect("kernel-prepare's entry in the registry");
    let layer = prepare["layers"][0]["digest"].as_str().unwrap().to_string();
    let blob = registry.blob_file(&layer);
    let mut bytes = fs::read(&blob).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x55;
    fs::write(&blob, bytes).unwrap();

    let c = demo::copy_project();
    touch_module(c.path(), mark);
    let (_, e) = build_with(c.path(), &c.path().join("cache"), &["--cache-from", cache]);
    assert!(e.contains("warning: kernel-prepare from"), "{e}");
    assert!(e.contains("is damaged"), "{e}");
    assert!(e.contains("kernel-prepare: built in"), "built here: {e}");
    assert!(
        e.contains("built 1 stage(s), 5 cached (5 from the shared cache)"),
        "{e}"
    );
    for t in TARGETS {
        same_tree(&a.join("_out").join(t), &c.path().join("_out").join(t));
    }
}
