//! `composer kmod install|remove|status` on a node that a temporary
//! directory stands for (`common::node`: fake `/proc` and `/sys`, a real
//! `/lib/modules/<release>` indexed by depmod): which image is picked, the
//! transaction, the cache, the layouts, status and bad input. The images
//! are made by composer (`composer pack`, and `composer build --format kmm`
//! for a KMM image) from relocatable objects compiled by cc with a
//! `.modinfo` and real export tables, signed with an openssl key. What is
//! checked before anything is written is in `kmod_verify.rs`.
//!
//! Every refusal is checked to leave the whole node tree as it was.

mod common;

use std::collections::BTreeMap;
use std::fs;

use common::node::{Keys, Node, OTHER, R, hello_image, ko, refused, said, vermagic};

#[test]
fn kernel_full_version_picks_the_archive_of_the_running_release() {
    let node = Node::new("Y");
    let keys = Keys::new("kmod test");
    let ours = hello_image(&node, &keys, &format!("kmod-{R}.tar"), R, "ours");
    let other = hello_image(&node, &keys, &format!("kmod-{OTHER}.tar"), OTHER, "other");
    assert_ne!(ours, other);
    let cert = keys.cert();
    let out = node.ok(&[
        "install",
        "oci-archive:kmod-${KERNEL_FULL_VERSION}.tar",
        "--cert",
        cert.to_str().unwrap(),
    ]);
    let dir = format!("/lib/modules/{R}/updates/composer/kmod");
    assert!(
        out.contains(&format!("kmod\tinstalled\t{ours}\t{dir}")),
        "{out}"
    );
    assert!(out.contains("signed by CN=kmod test"), "{out}");
    let state = node.state();
    assert_eq!(state["images"][0]["digest"], ours);
    assert_eq!(
        state["images"][0]["resolved"],
        format!("oci-archive:{}/kmod-{R}.tar", node.work().display())
    );
    assert_eq!(state["images"][0]["modprobe_dir"], "/");
    let installed = fs::read(node.root().join(format!("{}/extra/hello.ko", &dir[1..]))).unwrap();
    assert!(
        installed.windows(4).any(|w| w == b"ours"),
        "the release's module"
    );
    let dep = node.read(&format!("lib/modules/{R}/modules.dep"));
    assert!(
        dep.contains("updates/composer/kmod/extra/hello.ko:"),
        "{dep}"
    );
}

#[test]
fn an_image_for_another_release_is_refused_naming_its_releases() {
    let node = Node::new("Y");
    let keys = Keys::new("kmod test");
    hello_image(&node, &keys, "other.tar", OTHER, "other");
    let cert = keys.cert();
    refused(
        &node,
        &[
            "install",
            "oci-archive:other.tar",
            "--cert",
            cert.to_str().unwrap(),
        ],
        &format!("the image has no modules for kernel {R}; it has modules for: {OTHER}"),
    );
    let o = node.kmod(&[
        "install",
        "oci-archive:other.tar",
        "--cert",
        cert.to_str().unwrap(),
    ]);
    assert!(
        said(&o).contains("refused, nothing was written"),
        "{}",
        said(&o)
    );
}

#[test]
fn a_failing_depmod_leaves_the_previous_install() {
    let node = Node::new("Y");
    let keys = Keys::new("kmod test");
    let cert = keys.cert();
    let cert = cert.to_str().unwrap();
    let fw = |v: &str| ("firmware/vendor/fw.bin".to_string(), v.as_bytes().to_vec());
    let m = |g: &str| keys.sign(&ko(&node.work(), "hello", &vermagic(R), &[g], &[], &[]));
    node.image(
        "v1.tar",
        &[
            (format!("opt/lib/modules/{R}/extra/hello.ko"), m("one")),
            fw("1"),
        ],
    );
    node.ok(&[
        "install",
        "oci-archive:v1.tar",
        "--name",
        "hello",
        "--cert",
        cert,
    ]);
    let before = node.snapshot();

    let bin = node.dir.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let depmod = bin.join("depmod");
    fs::write(
        &depmod,
        "#!/bin/sh\necho 'depmod: cannot write the index' >&2\nexit 1\n",
    )
    .unwrap();
    fs::set_permissions(&depmod, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    node.image(
        "v2.tar",
        &[
            (format!("opt/lib/modules/{R}/extra/hello.ko"), m("two")),
            (
                format!("opt/lib/modules/{R}/extra/more.ko"),
                keys.sign(&ko(&node.work(), "more", &vermagic(R), &[], &[], &[])),
            ),
            fw("2"),
        ],
    );
    let o = node.kmod_with(
        Some(&bin),
        &[
            "install",
            "oci-archive:v2.tar",
            "--name",
            "hello",
            "--cert",
            cert,
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", said(&o));
    assert!(
        said(&o).contains("depmod: cannot write the index"),
        "{}",
        said(&o)
    );
    let after = node.snapshot();
    // The image cache may hold v2 now; the node is v1's.
    let node_only = |s: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        s.iter()
            .filter(|(k, _)| !k.starts_with("var/cache"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    assert_eq!(node_only(&after), node_only(&before));
}

#[test]
fn a_second_install_uses_the_cache_when_the_archive_is_gone_and_remove_restores() {
    let node = Node::new("Y");
    let keys = Keys::new("kmod test");
    let cert = keys.cert();
    let cert = cert.to_str().unwrap();
    let m = keys.sign(&ko(&node.work(), "hello", &vermagic(R), &[], &[], &[]));
    let digest = node.image(
        &format!("hello-{R}.tar"),
        &[
            (format!("opt/lib/modules/{R}/extra/hello.ko"), m),
            ("firmware/vendor/fw.bin".into(), b"fw".to_vec()),
        ],
    );
    let pristine = node.snapshot();
    let reference = "oci-archive:hello-${KERNEL_FULL_VERSION}.tar";
    node.ok(&["install", reference, "--cert", cert]);
    assert_eq!(
        node.read(&format!("lib/firmware/updates/{R}/vendor/fw.bin")),
        "fw"
    );
    node.ok(&["remove", "hello"]);
    let without_var = |s: BTreeMap<String, String>| -> BTreeMap<String, String> {
        s.into_iter()
            .filter(|(k, v)| !k.starts_with("var") && v != "dir")
            .collect()
    };
    assert_eq!(
        without_var(node.snapshot()),
        without_var(pristine.clone()),
        "remove restores every file"
    );

    fs::remove_file(node.work().join(format!("hello-{R}.tar"))).unwrap();
    let out = node.ok(&["install", reference, "--cert", cert]);
    assert!(
        out.contains(&format!("using the cached copy {digest}")),
        "{out}"
    );
    assert!(out.contains("No such file or directory"), "{out}");
    assert_eq!(node.state()["images"][0]["digest"], digest);
    assert!(
        node.root()
            .join(format!(
                "lib/modules/{R}/updates/composer/hello/extra/hello.ko"
            ))
            .is_file()
    );

    // --offline reads the cache without trying the reference.
    let out = node.ok(&["install", reference, "--cert", cert, "--offline"]);
    assert!(
        out.contains("--offline forbids reading it; using the cached copy"),
        "{out}"
    );
    assert!(out.contains("is installed already"), "{out}");
    // Removing by reference works as by name.
    node.ok(&["remove", reference]);
    assert_eq!(node.state()["images"], serde_json::json!([]));
}

#[test]
fn dependent_modules_of_a_kmm_image_built_by_composer_install_in_load_order() {
    let node = Node::new("Y");
    let keys = Keys::new("kmod test");
    let work = node.work();
    // The stage compiles the sources `ko` writes.
    let compile = |name: &str| {
        format!(
            "        cat > /tmp/build/{name}.c <<'EOF'\n{}        EOF\n        cc -c -O0 /tmp/build/{name}.c -o \"$dir/{name}.ko\"\n",
            fs::read_to_string(work.join(format!("{name}.c")))
                .unwrap()
                .lines()
                .map(|l| format!("        {l}\n"))
                .collect::<String>()
        )
    };
    ko(
        &work,
        "hello_base",
        &vermagic("{{ .KERNEL_FULL_VERSION }}"),
        &["hello_base_fn"],
        &["printk"],
        &[],
    );
    ko(
        &work,
        "hello_user",
        &vermagic("{{ .KERNEL_FULL_VERSION }}"),
        &[],
        &["hello_base_fn", "intree_fn"],
        &["hello_base", "intree"],
    );
    let pkg = format!(
        "name: hello-kmod\nvariant: host\nshell: /bin/bash\nsteps:\n  - install:\n      - |\n        dir=/out/usr/lib/modules/{{{{ .KERNEL_FULL_VERSION }}}}/extra\n        mkdir -p \"$dir\"\n{}{}finalize:\n  - from: /out\n    to: /\n",
        compile("hello_user"),
        compile("hello_base")
    );
    let p = common::project("format: v1alpha2\n", &[("hello-kmod/pkg.yaml", pkg)]);
    let both = keys.both();
    let o = common::composer(
        p.path(),
        &[
            "--root",
            "p",
            "build",
            "--cache-dir",
            "cache",
            "-o",
            "_out",
            "--format",
            "kmm",
            "--kernel-release",
            R,
            "--kmm-host-link",
            "--signing-key",
            both.to_str().unwrap(),
            "hello-kmod",
        ],
    );
    assert!(o.status.success(), "{}", said(&o));
    let layout = p.path().join("_out/images/hello-kmod");
    let reference = format!("oci:{}:${{KERNEL_FULL_VERSION}}", layout.display());
    let cert = keys.cert();
    let out = node.ok(&["install", &reference, "--cert", cert.to_str().unwrap()]);
    assert!(
        out.contains("2 module(s) of a KMM kmod image verified"),
        "{out}"
    );
    assert!(
        out.contains(
            "load with: composer kmod load hello_base hello_user (or: modprobe -a hello_base hello_user)"
        ),
        "{out}"
    );
    let state = node.state();
    let names: Vec<&str> = state["images"][0]["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hello_base", "hello_user"]);
    assert_eq!(state["images"][0]["layout"], "KMM kmod image");
    // depmod found the dependencies from the symbols: on the image's
    // other module and on the kernel's own.
    let dep = node.read(&format!("lib/modules/{R}/modules.dep"));
    let user = dep
        .lines()
        .find(|l| l.starts_with("updates/composer/hello-kmod/extra/hello_user.ko:"))
        .unwrap_or_else(|| panic!("{dep}"));
    assert!(
        user.contains(" updates/composer/hello-kmod/extra/hello_base.ko")
            && user.contains(" kernel/drivers/misc/intree.ko"),
        "{dep}"
    );
    assert!(
        !node
            .root()
            .join(format!("lib/modules/{R}/updates/composer/hello-kmod/host"))
            .exists(),
        "the image's host link is not copied"
    );
}

#[test]
fn a_talos_extension_goes_to_composers_own_directory_with_firmware_class_path() {
    let node = Node::new("Y");
    fs::remove_dir(node.root().join("lib/firmware")).unwrap();
    let keys = Keys::new("kmod test");
    let m = keys.sign(&ko(
        &node.work(),
        "hello",
        &vermagic(R),
        &[],
        &["intree_fn"],
        &["intree"],
    ));
    node.image(
        "ext.tar",
        &[
            (
                "manifest.yaml".into(),
                b"version: v1alpha1\nmetadata:\n  name: hello\n".to_vec(),
            ),
            (format!("rootfs/usr/lib/modules/{R}/extra/hello.ko"), m),
            (
                "rootfs/usr/lib/firmware/vendor/fw.bin".into(),
                b"fw".to_vec(),
            ),
        ],
    );
    let cert = keys.cert();
    let out = node.ok(&[
        "install",
        "oci-archive:ext.tar",
        "--own-modules-dir",
        "--cert",
        cert.to_str().unwrap(),
    ]);
    assert!(
        out.contains("load with: composer kmod load hello (or: modprobe -d /var/lib/composer/modules -a hello)"),
        "{out}"
    );
    let own = format!("var/lib/composer/modules/lib/modules/{R}");
    let dep = node.read(&format!("{own}/modules.dep"));
    assert!(
        dep.contains("updates/composer/ext/extra/hello.ko: host/kernel/drivers/misc/intree.ko"),
        "{dep}"
    );
    assert_eq!(
        node.read(&format!("lib/modules/{R}/modules.dep")),
        "kernel/drivers/misc/intree.ko:\n",
        "the system's index is untouched"
    );
    assert_eq!(
        node.read(&format!("var/lib/composer/firmware/{R}/vendor/fw.bin")),
        "fw"
    );
    assert_eq!(
        node.read("sys/module/firmware_class/parameters/path"),
        format!("/var/lib/composer/firmware/{R}")
    );
    let state = node.state();
    assert_eq!(state["images"][0]["layout"], "Talos system extension");
    assert_eq!(
        state["images"][0]["modprobe_dir"],
        "/var/lib/composer/modules"
    );

    // Another path set by someone else is not replaced.
    node.ok(&["remove", "ext"]);
    node.put(
        "sys/module/firmware_class/parameters/path",
        b"/opt/firmware\n",
    );
    refused(
        &node,
        &[
            "install",
            "oci-archive:ext.tar",
            "--own-modules-dir",
            "--cert",
            cert.to_str().unwrap(),
        ],
        "that is /opt/firmware already (the kernel takes one such path): not replaced",
    );
}

#[test]
fn status_json_shows_each_modules_state_and_the_decoded_taint() {
    let node = Node::new("N");
    let keys = Keys::new("kmod test");
    let a = keys.sign(&ko(
        &node.work(),
        "hello_a",
        &vermagic(R),
        &["hello_a_fn"],
        &[],
        &[],
    ));
    let b = keys.sign(&ko(
        &node.work(),
        "hello_b",
        &vermagic(R),
        &[],
        &["hello_a_fn"],
        &["hello_a"],
    ));
    node.image(
        "two.tar",
        &[
            (format!("lib/modules/{R}/extra/hello_a.ko"), a),
            (format!("lib/modules/{R}/extra/hello_b.ko"), b),
        ],
    );
    let cert = keys.cert();
    node.ok(&[
        "install",
        "oci-archive:two.tar",
        "--cert",
        cert.to_str().unwrap(),
    ]);
    node.put(
        "proc/modules",
        b"hello_a 16384 1 hello_b, Live 0xffffffffc0000000 (OE)\n",
    );
    node.put("sys/module/hello_a/taint", b"OE\n");
    node.put("proc/sys/kernel/tainted", b"12288\n");
    let o = node.kmod(&["status", "--json"]);
    assert!(o.status.success(), "{}", said(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["running_release"], R);
    assert_eq!(s["sig_enforce"], false);
    assert_eq!(s["tainted"], 12288);
    let letters: Vec<&str> = s["taint_flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["letter"].as_str().unwrap())
        .collect();
    assert_eq!(letters, ["O", "E"]);
    let modules = &s["images"][0]["modules"];
    assert_eq!(modules[0]["name"], "hello_a");
    assert_eq!(modules[0]["state"], "loaded");
    assert_eq!(modules[0]["taint"], "OE");
    assert_eq!(modules[0]["used_by"], serde_json::json!(["hello_b"]));
    assert_eq!(modules[1]["state"], "not loaded");
    assert_eq!(s["images"][0]["digest"].as_str().unwrap().len(), 71);
    let text = said(&node.kmod(&["status"]));
    assert!(text.contains("tainted 12288: O (externally-built (out-of-tree) module was loaded), E (unsigned module was loaded)"), "{text}");
    assert!(
        text.contains("hello_a                  loaded (taint OE), used by hello_b"),
        "{text}"
    );
    let out = node.ok(&["remove", "two"]);
    assert!(
        out.contains("warning: two: hello_a stay(s) loaded: the files are gone, not the modules in the kernel (composer kmod unload hello_a)"),
        "{out}"
    );
}

#[test]
fn bad_input_is_a_clear_error_with_nothing_written() {
    let node = Node::new("Y");
    let keys = Keys::new("kmod test");
    hello_image(&node, &keys, "a.tar", R, "a");
    let cert = keys.cert();
    let cert = cert.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["install", "oci-archive:${KERNEL_VERSION}.tar"],
            "unknown variable ${KERNEL_VERSION}: only ${KERNEL_FULL_VERSION} is replaced",
        ),
        (
            vec!["install", "oci-archive:gone.tar", "--cert", cert],
            "and the cache (",
        ),
        (
            vec!["install", "oci-archive:a.tar", "--cert", "nowhere.pem"],
            "--cert ",
        ),
        (
            vec!["install", "oci-archive:a.tar", "--cert", "a.tar"],
            "not an X.509 certificate",
        ),
        (
            vec!["install", "oci-archive:a.tar", "oci-archive:a.tar"],
            "would both be installed as `a`",
        ),
        (
            vec!["install", "oci-archive:a.tar", "--name", "../x"],
            "not a usable image name",
        ),
        (
            vec![
                "install",
                "oci-archive:a.tar",
                "--kernel-release",
                "../../etc",
            ],
            "must start with a digit",
        ),
        (
            vec!["install", "--offline", "oci-archive:a.tar", "--cert", cert],
            "--offline forbids reading it; and the cache",
        ),
        (
            vec![
                "install",
                "127.0.0.1:9/kmods/hello:${KERNEL_FULL_VERSION}",
                "--cert",
                cert,
            ],
            "127.0.0.1:9",
        ),
        (vec!["remove", "nothing-here"], "not installed for kernel"),
        (vec!["install"], "required"),
    ];
    for (args, message) in cases {
        refused(&node, &args, message);
    }
    let o = common::composer(&node.work(), &["--root", "missing-dir", "kmod", "status"]);
    assert_eq!(o.status.code(), Some(1), "{}", said(&o));
    assert!(
        said(&o).contains("--root missing-dir: not a directory"),
        "{}",
        said(&o)
    );
}

#[test]
fn kmod_help_shows_examples_and_what_root_means() {
    let node = Node::new("Y");
    for args in [
        &["kmod", "--help"][..],
        &["kmod", "install", "--help"],
        &["kmod", "remove", "--help"],
        &["kmod", "status", "--help"],
        &["kmod", "load", "--help"],
        &["kmod", "unload", "--help"],
        &["kmod", "unit", "--help"],
    ] {
        let o = common::composer(&node.work(), args);
        assert!(o.status.success(), "{args:?}: {}", said(&o));
        let out = said(&o);
        assert!(
            out.contains("Examples:\n  composer kmod"),
            "{args:?}: {out}"
        );
        assert!(
            out.contains("For `composer kmod`: where the node's / is"),
            "{args:?}: {out}"
        );
    }
}

#[test]
fn a_registry_image_installs_again_from_the_cache_once_the_registry_is_gone() {
    let node = Node::new("Y");
    let keys = Keys::new("kmod test");
    hello_image(&node, &keys, "hello.tar", R, "hello");
    let registry = common::registry::Registry::start();
    let tag = format!("{}/kmods/hello-kmod:{R}", registry.addr());
    common::run(
        std::process::Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!(
                "oci-archive:{}",
                node.work().join("hello.tar").display()
            ))
            .arg(format!("docker://{tag}")),
    );
    let reference = format!(
        "{}/kmods/hello-kmod:${{KERNEL_FULL_VERSION}}",
        registry.addr()
    );
    let cert = keys.cert();
    let cert = cert.to_str().unwrap();
    let out = node.ok(&["install", &reference, "--insecure", "--cert", cert]);
    assert!(
        out.contains(&format!("hello-kmod: {tag} is sha256:")),
        "{out}"
    );
    let digest = node.state()["images"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    node.ok(&["remove", "hello-kmod"]);
    drop(registry);

    let out = node.ok(&["install", &reference, "--insecure", "--cert", cert]);
    assert!(
        out.contains(&format!("using the cached copy {digest} (from {tag})")),
        "{out}"
    );
    assert_eq!(node.state()["images"][0]["digest"], digest.as_str());
    assert!(
        node.root()
            .join(format!(
                "lib/modules/{R}/updates/composer/hello-kmod/extra/hello.ko"
            ))
            .is_file()
    );
}
