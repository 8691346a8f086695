//! What `composer kmod install` checks before anything is written, on a
//! node that a temporary directory stands for (`common::node`): module
//! signatures against the trust anchors (given, or the certificates built
//! into the release's kernel image) and what the kernel enforces, vermagic,
//! symbols and dependencies against the kernel's exports (`/proc/kallsyms`
//! or a kernel build tree on the node).
//!
//! Every refusal is checked to leave the whole node tree as it was.

mod common;

use std::fs;

use common::node::{Keys, Node, R, hello_image, ko, refused, said, tamper, vermagic};

#[test]
fn a_module_changed_after_signing_is_refused_when_the_kernel_enforces_signatures() {
    let node = Node::new("Y");
    let keys = Keys::new("kmod test");
    let plain = ko(&node.work(), "hello", &vermagic(R), &[], &[], &[]);
    let m = keys.sign(&plain);
    node.image(
        "bad.tar",
        &[(format!("opt/lib/modules/{R}/extra/hello.ko"), tamper(&m))],
    );
    let cert = keys.cert();
    refused(
        &node,
        &[
            "install",
            "oci-archive:bad.tar",
            "--cert",
            cert.to_str().unwrap(),
        ],
        "extra/hello.ko: signature does not verify: the module was changed after signing",
    );
    let o = node.kmod(&[
        "install",
        "oci-archive:bad.tar",
        "--cert",
        cert.to_str().unwrap(),
    ]);
    assert!(
        said(&o).contains("the kernel enforces module signatures (sig_enforce=Y) and refuses it"),
        "{}",
        said(&o)
    );
    // Signed by a key the kernel does not trust: refused too.
    let stranger = Keys::new("stranger");
    node.image(
        "strange.tar",
        &[(
            format!("opt/lib/modules/{R}/extra/hello.ko"),
            stranger.sign(&plain),
        )],
    );
    refused(
        &node,
        &[
            "install",
            "oci-archive:strange.tar",
            "--cert",
            cert.to_str().unwrap(),
        ],
        "extra/hello.ko: signed by a key that is not trusted",
    );
}

#[test]
fn a_module_changed_after_signing_installs_with_a_taint_warning_when_not_enforced() {
    let node = Node::new("N");
    let keys = Keys::new("kmod test");
    let m = keys.sign(&ko(&node.work(), "hello", &vermagic(R), &[], &[], &[]));
    node.image(
        "bad.tar",
        &[(format!("opt/lib/modules/{R}/extra/hello.ko"), tamper(&m))],
    );
    let cert = keys.cert();
    let out = node.ok(&[
        "install",
        "oci-archive:bad.tar",
        "--cert",
        cert.to_str().unwrap(),
    ]);
    assert!(
        out.contains("warning: bad: extra/hello.ko: signature does not verify")
            && out.contains("loading it taints the kernel (E)"),
        "{out}"
    );
    assert_eq!(
        node.state()["images"][0]["modules"][0]["signer"],
        serde_json::Value::Null
    );
}

#[test]
fn modules_the_kernel_would_refuse_are_refused_by_name_with_nothing_written() {
    let node = Node::new("Y");
    let keys = Keys::new("kmod test");
    let cert = keys.cert();
    let cert = cert.to_str().unwrap();
    let work = node.work();
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "symbol",
            ko(&work, "hello", &vermagic(R), &[], &["nowhere_fn"], &[]),
            format!(
                "uses symbol `nowhere_fn`, which neither kernel {R} (/proc/kallsyms, modules.symbols) nor any module in the image (KMM kmod image) exports"
            ),
        ),
        (
            "vermagic",
            ko(
                &work,
                "hello",
                &format!("{R} SMP preempt mod_unload"),
                &[],
                &[],
                &[],
            ),
            format!(
                "vermagic \"{R} SMP preempt mod_unload\" is not kernel {R}'s \"{R} SMP mod_unload\""
            ),
        ),
        (
            "depends",
            ko(&work, "hello", &vermagic(R), &[], &[], &["missing_mod"]),
            format!("depends on `missing_mod`, which neither the image nor kernel {R} provides"),
        ),
    ];
    for (file, module, message) in cases {
        node.image(
            &format!("{file}.tar"),
            &[(
                format!("opt/lib/modules/{R}/extra/hello.ko"),
                keys.sign(&module),
            )],
        );
        refused(
            &node,
            &[
                "install",
                &format!("oci-archive:{file}.tar"),
                "--cert",
                cert,
            ],
            &message,
        );
    }
    node.image(
        "notko.tar",
        &[(
            format!("opt/lib/modules/{R}/extra/hello.ko"),
            b"not an ELF".to_vec(),
        )],
    );
    refused(
        &node,
        &["install", "oci-archive:notko.tar", "--cert", cert],
        "extra/hello.ko: not an ELF object",
    );
    node.image("none.tar", &[("usr/share/doc/x".into(), b"x".to_vec())]);
    refused(
        &node,
        &["install", "oci-archive:none.tar", "--cert", cert],
        "the image holds no kernel modules",
    );
    // No certificate to check with, under enforcement.
    hello_image(&node, &keys, "fine.tar", R, "fine");
    refused(
        &node,
        &["install", "oci-archive:fine.tar"],
        "signatures cannot be checked (no kernel image at /boot/vmlinuz-",
    );
}

#[test]
fn the_certificates_built_into_the_kernel_image_are_the_default_trust_anchors() {
    let node = Node::new("Y");
    let keys = Keys::new("built-in key");
    hello_image(&node, &keys, "hello.tar", R, "hello");
    // An uncompressed kernel image (as arm64's Image) holding the
    // certificate among its code, where the kernel keeps its keys.
    let der_path = node.work().join("cert.der");
    common::run(
        std::process::Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(keys.cert())
            .arg("-out")
            .arg(&der_path),
    );
    let mut image = vec![0x90u8; 4096];
    image.extend(fs::read(&der_path).unwrap());
    image.extend(vec![0x90u8; 4096]);
    node.put(&format!("boot/vmlinuz-{R}"), &image);
    let out = node.ok(&["install", "oci-archive:hello.tar"]);
    assert!(
        out.contains(&format!(
            "signed by CN=built-in key (trusted: /boot/vmlinuz-{R})"
        )),
        "{out}"
    );

    // --kernel names another image, whose key did not sign the module.
    let other = Keys::new("other key");
    let other_der = node.work().join("other.der");
    common::run(
        std::process::Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(other.cert())
            .arg("-out")
            .arg(&other_der),
    );
    let vmlinuz = node.work().join("vmlinuz-other");
    fs::write(
        &vmlinuz,
        [vec![0u8; 64], fs::read(&other_der).unwrap(), vec![0u8; 64]].concat(),
    )
    .unwrap();
    node.ok(&["remove", "hello"]);
    refused(
        &node,
        &[
            "install",
            "oci-archive:hello.tar",
            "--kernel",
            vmlinuz.to_str().unwrap(),
        ],
        "extra/hello.ko: signed by a key that is not trusted",
    );
}

#[test]
fn a_kernel_build_tree_on_the_node_is_what_symbols_are_checked_against() {
    let node = Node::new("Y");
    let headers = format!("usr/src/linux-headers-{R}");
    node.put(
        &format!("{headers}/include/generated/utsrelease.h"),
        format!("#define UTS_RELEASE \"{R}\"\n").as_bytes(),
    );
    node.put(
        &format!("{headers}/include/generated/autoconf.h"),
        b"#define CONFIG_SMP 1\n#define CONFIG_MODULE_UNLOAD 1\n#define CONFIG_X86_64 1\n",
    );
    node.put(
        &format!("{headers}/Module.symvers"),
        b"0x00000000\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n0x00000000\tintree_fn\tdrivers/misc/intree\tEXPORT_SYMBOL_GPL\t\n",
    );
    // Debian's link, absolute: followed inside the root.
    std::os::unix::fs::symlink(
        format!("/{headers}"),
        node.root().join(format!("lib/modules/{R}/build")),
    )
    .unwrap();
    // kallsyms exports more than the build tree: the tree is used.
    node.put(
        "proc/kallsyms",
        b"0 r __ksymtab_printk\n0 r __ksymtab_kallsyms_only\n",
    );
    let keys = Keys::new("kmod test");
    let cert = keys.cert();
    let cert = cert.to_str().unwrap();
    let good = ko(
        &node.work(),
        "hello",
        &vermagic(R),
        &[],
        &["printk", "intree_fn"],
        &["intree"],
    );
    node.image(
        "good.tar",
        &[(
            format!("opt/lib/modules/{R}/extra/hello.ko"),
            keys.sign(&good),
        )],
    );
    let out = node.ok(&["install", "oci-archive:good.tar", "--cert", cert]);
    assert!(
        out.contains(&format!(
            "vermagic as {}",
            node.root().join(&headers).display()
        )),
        "{out}"
    );
    assert!(
        !out.contains("GPL-only exports and symbol namespaces are not checked"),
        "{out}"
    );
    let bad = ko(
        &node.work(),
        "other",
        &vermagic(R),
        &[],
        &["kallsyms_only"],
        &[],
    );
    node.image(
        "bad.tar",
        &[(
            format!("opt/lib/modules/{R}/extra/other.ko"),
            keys.sign(&bad),
        )],
    );
    refused(
        &node,
        &["install", "oci-archive:bad.tar", "--cert", cert],
        &format!(
            "uses symbol `kallsyms_only`, which neither kernel {R} ({}) nor any module in the image",
            node.root().join(&headers).join("Module.symvers").display()
        ),
    );
}
