//! The stand-in session tree: `ktree` stands for kernel-build (compiled
//! with no key; no mention of the session), `kcert` for the kernel stage
//! (writes the session's certificate in and names the tree with
//! `SESSION_KERNEL_TREE`), `mods` for a module stage built on the tree.
//! Each stage stamps its output with the time it ran, so a test sees what
//! ran and what was reused. Used by tests/session_tree.rs and
//! tests/remote_cache.rs.
#![allow(dead_code)] // not every test binary uses every helper

use std::fs;
use std::path::Path;

use super::composer;

pub const KTREE: &str = "name: ktree
variant: host
shell: /bin/bash
steps:
  - install:
      - |
        mkdir -p /out/src
        echo 6.1.0-test > /out/src/release
        ln -s ../.././src/release /out/src/release-link
        date +%s%N > /out/src/compiled
finalize:
  - from: /out
    to: /
";

pub const KCERT: &str = "name: kcert
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
pub fn mods(greeting: &str) -> String {
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

pub fn project(greeting: &str) -> tempfile::TempDir {
    super::tree(&[
        ("pkgs/ktree/pkg.yaml", KTREE.to_string()),
        ("pkgs/kcert/pkg.yaml", KCERT.to_string()),
        ("pkgs/mods/pkg.yaml", mods(greeting)),
    ])
}

/// Whether `_out/mods`' modules verify against `cert`.
pub fn verifies(p: &Path, cert: &Path) -> bool {
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

pub fn read(p: &Path, file: &str) -> String {
    fs::read_to_string(p.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// `composer build --cache-dir <p>/cache ARGS...`; its stderr.
pub fn build(p: &Path, args: &[&str]) -> String {
    let cache = p.join("cache");
    let mut all = vec!["build", "--cache-dir", cache.to_str().unwrap()];
    all.extend_from_slice(args);
    let o = composer(p, &all);
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{args:?}:\n{e}");
    e
}
