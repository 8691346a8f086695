//! The session's private key never reaches the cache, the outputs, the
//! logs or the shared cache (`--cache-to`): a build that signs modules runs
//! in-process, then every file it wrote (the shared cache's layers
//! decompressed) is scanned for the key's PKCS#8 DER, its raw scalar and
//! PEM private-key markers.

mod common;

use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use composer::defs::{LoadOptions, Platform, load};
use composer::exec::{self, SessionCert};
use composer::graph::Graph;
use composer::sign::Session;
use composer::sign::hooks::Hooks;
use composer::sign::verify::{Trusted, verify};

const PKG: &str = r#"name: mods
variant: host
shell: /bin/bash
steps:
  - install:
      - |
        install -d /rootfs/usr/lib/modules/6.1.0/extra
        { printf '\177ELF'; head -c 20000 /dev/urandom; } > /rootfs/usr/lib/modules/6.1.0/extra/a.ko
        { printf '\177ELF'; head -c 30000 /dev/urandom; } > /rootfs/usr/lib/modules/6.1.0/extra/b.ko
        cp /signing/certs/signing_key.x509 /rootfs/session-cert.pem
        env > /rootfs/env.txt
        if [ -e /signing/keys/signing_key.pem ]; then
          echo "$(grep -c 'BEGIN PRIV''ATE KEY' /signing/keys/signing_key.pem) $(awk '$5 == "/signing/keys" { for (i = 7; i <= NF; i++) if ($i == "-") { print $(i + 1); exit } }' /proc/self/mountinfo)" > /rootfs/keys
        else
          echo none > /rootfs/keys
        fi
    test:
      - test -s /rootfs/usr/lib/modules/6.1.0/extra/a.ko
finalize:
  - from: /rootfs
    to: /
"#;

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect()
}

/// Builds `pkg` (stage `mods`) in-process with a signing session; returns
/// the project directory and the session.
fn signing_build(pkg: &str, in_tree: bool) -> (tempfile::TempDir, Session) {
    let d = common::tree(&[
        ("p/Pkgfile", "format: v1alpha2\n"),
        ("p/mods/pkg.yaml", pkg),
    ]);
    let (defs, report) = load(&LoadOptions {
        roots: vec![d.path().join("p")],
        platform: Platform::LinuxAmd64,
        build_args: vec![],
        kernel_release: None,
    });
    assert!(!report.has_errors());
    let mut r = composer::diag::Report::default();
    let plan = Graph::new(&defs, &mut r)
        .resolve(&["mods".to_string()])
        .unwrap();
    let session: OnceLock<Session> = OnceLock::new();
    let hooks = Hooks {
        session: &session,
        in_tree,
    };
    let mut start = || -> Result<SessionCert, String> {
        let s = Session::start().map_err(|e| e.to_string())?;
        let cert = SessionCert {
            id: s.id(),
            cert_pem: s.cert_pem().as_bytes().to_vec(),
            description: "test".into(),
            private_pem: in_tree.then(|| std::sync::Arc::new(s.combined_pem().unwrap())),
        };
        let _ = session.set(s);
        Ok(cert)
    };
    let opts = exec::Options {
        cache_dir: d.path().join("cache"),
        output: d.path().join("_out"),
        jobs: 1,
        offline: true,
        mirrors: vec![],
        epoch: None,
        insecure: false,
        new_session: false,
        // The shared cache gets every entry: audited like the rest.
        remote: exec::remote::Remote {
            to: Some(exec::remote::Store::Layout(d.path().join("shared"))),
            ..Default::default()
        },
    };
    let summary = exec::build(&defs, &plan, &opts, &mut start, Some(&hooks), &mut |_| {}).unwrap();
    assert_eq!(summary.built, ["mods"]);
    let s = session.into_inner().expect("a session was started");
    (d, s)
}

/// Asserts that no file under `dir` holds the session's key material;
/// the layers of the shared cache (zstd) are scanned decompressed too.
fn assert_no_key_material(dir: &Path, s: &Session) {
    let patterns = s.secret_patterns_for_audit();
    assert_eq!(patterns.len(), 2, "PKCS#8 and the raw scalar");
    let all = files(dir);
    assert!(all.len() > 10, "the scan sees the cache, outputs and logs");
    let layers = all
        .iter()
        .filter(|f| f.starts_with(dir.join("shared/blobs")))
        .filter(|f| fs::read(f).unwrap().starts_with(&[0x28, 0xb5, 0x2f, 0xfd]))
        .count();
    assert_eq!(layers, 1, "the shared cache holds the stage's layer");
    for f in all {
        let mut bytes = fs::read(&f).unwrap();
        if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            bytes = zstd::decode_all(&bytes[..]).unwrap();
        }
        for p in &patterns {
            assert!(
                !bytes.windows(p.len()).any(|w| w == &p[..]),
                "key material in {}",
                f.display()
            );
        }
        assert!(
            !bytes.windows(11).any(|w| w == b"PRIVATE KEY"),
            "a PEM private key in {}",
            f.display()
        );
    }
}

#[test]
fn the_session_key_is_nowhere_on_disk_after_a_signing_build() {
    let (d, s) = signing_build(PKG, false);
    // The modules are signed by the session key.
    let trusted = [Trusted::new(s.certificate().clone())];
    for m in ["a.ko", "b.ko"] {
        let bytes = fs::read(
            d.path()
                .join("_out/mods/usr/lib/modules/6.1.0/extra")
                .join(m),
        )
        .unwrap();
        verify(&bytes, &trusted).unwrap();
    }
    assert_eq!(
        fs::read_to_string(d.path().join("_out/mods/session-cert.pem")).unwrap(),
        s.cert_pem()
    );
    assert_eq!(
        fs::read_to_string(d.path().join("_out/mods/keys")).unwrap(),
        "none\n"
    );
    assert_no_key_material(d.path(), &s);
}

#[test]
fn sign_in_tree_gives_the_key_on_a_tmpfs_and_it_never_reaches_the_disk() {
    let (d, s) = signing_build(PKG, true);
    // The stage saw the key, on a tmpfs of its own.
    assert_eq!(
        fs::read_to_string(d.path().join("_out/mods/keys")).unwrap(),
        "1 tmpfs\n"
    );
    assert_no_key_material(d.path(), &s);
}
