//! `composer kmod load`, `unload` and `install --load` find the modules of
//! the installed images through `installed.json` (each image's module
//! directory, then the system's `/lib/modules/<release>`), on a node a
//! temporary directory stands for (`common::node`). Every case here is
//! decided before the kernel would be called: modules the fake kernel
//! has loaded already, unknown names, parameters, holders; the kernel's
//! own calls are proven under QEMU (`kmod_load.rs`).

mod common;

use common::node::{Keys, Node, R, ko, refused, said, vermagic};

/// Installs `two.tar`: hello_a, and hello_b that uses it.
fn two(node: &Node, keys: &Keys, extra: &[&str]) -> std::process::Output {
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
            (format!("lib/modules/{R}/extra/hello_b.ko"), b),
            (format!("lib/modules/{R}/extra/hello_a.ko"), a),
        ],
    );
    let cert = keys.cert();
    let mut args = vec![
        "install",
        "oci-archive:two.tar",
        "--cert",
        cert.to_str().unwrap(),
    ];
    args.extend(extra);
    node.kmod(&args)
}

/// The fake kernel has hello_a (used by `user`) loaded, out-of-tree.
fn loaded(node: &Node, user: &str, more: &str) {
    node.put(
        "proc/modules",
        format!("hello_a 16384 1 {user}, Live 0x0 (OE)\n{more}").as_bytes(),
    );
    node.put("sys/module/hello_a/taint", b"OE\n");
}

#[test]
fn install_load_leaves_the_modules_the_kernel_has_alone_in_load_order() {
    let node = Node::new("N");
    let keys = Keys::new("kmod test");
    loaded(&node, "hello_b", "hello_b 16384 0 - Live 0x0 (OE)\n");
    node.put("sys/module/hello_b/taint", b"OE\n");
    let o = two(&node, &keys, &["--load"]);
    assert!(o.status.success(), "{}", said(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("two\tinstalled\tsha256:"), "{out}");
    let kept = |m: &str| {
        format!(
            "{m} is already loaded (it or the file has no srcversion, so whether it is this build cannot be told): left alone"
        )
    };
    assert_eq!(lines[1..], [kept("hello_a"), kept("hello_b")], "{out}");
    assert!(!said(&o).contains("load with:"), "{}", said(&o));
}

#[test]
fn install_load_with_a_parameter_the_module_lacks_installs_and_says_it_did_not_load() {
    let node = Node::new("N");
    let keys = Keys::new("kmod test");
    let o = two(&node, &keys, &["--load", "--param", "hello_a.nosuch=1"]);
    assert_eq!(o.status.code(), Some(1), "{}", said(&o));
    assert!(
        said(&o).contains(
            "error: installed two, not loaded: --param hello_a.nosuch=1: hello_a has no parameter `nosuch` (it has: none)"
        ),
        "{}",
        said(&o)
    );
    assert_eq!(node.state()["images"][0]["name"], "two");

    refused(
        &node,
        &["install", "oci-archive:two.tar", "--param", "hello_a.x=1"],
        "--param and --replace-in-tree apply to loading: add --load",
    );
    refused(
        &node,
        &[
            "install",
            "oci-archive:two.tar",
            "--load",
            "--kernel-release",
            "6.1.0-1-other",
        ],
        "--load loads into the running kernel, and kernel 6.1.0-1-other is not running: install without --load",
    );
}

#[test]
fn load_and_unload_look_in_the_installed_images_then_the_systems_modules() {
    let node = Node::new("N");
    let keys = Keys::new("kmod test");
    let o = two(&node, &keys, &["--own-modules-dir"]);
    assert!(o.status.success(), "{}", said(&o));
    let own = node.root().join(format!(
        "var/lib/composer/modules/lib/modules/{R}/modules.dep"
    ));
    let system = node.root().join(format!("lib/modules/{R}/modules.dep"));

    let before = node.snapshot();
    let o = node.kmod(&["load", "hello-c"]);
    assert_eq!(o.status.code(), Some(1), "{}", said(&o));
    assert!(
        said(&o).contains(&format!(
            "{}, {}: no module `hello_c`; did you mean `hello_a`?",
            own.display(),
            system.display()
        )),
        "{}",
        said(&o)
    );
    let o = node.kmod(&["load", "hello_b", "--param", "hello_a.x=1"]);
    assert!(
        said(&o).contains("--param hello_a.x=1: hello_a has no parameter `x` (it has: none)"),
        "{}",
        said(&o)
    );
    // The system's in-tree module, loaded from another build than its file.
    node.put("proc/modules", b"intree 16384 0 - Live 0x0\n");
    let o = node.kmod(&["load", "intree"]);
    assert_eq!(o.status.code(), Some(1), "{}", said(&o));
    assert!(
        said(&o).contains("intree is already loaded, from another build than ")
            && said(&o).contains("(the loaded one is in-tree, the file is out-of-tree)"),
        "{}",
        said(&o)
    );
    node.put("proc/modules", b"");

    let out = node.ok(&["unload", "--image", "two"]);
    assert_eq!(
        out,
        "hello_a is not loaded: nothing to unload\nhello_b is not loaded: nothing to unload\n"
    );
    let o = node.kmod(&["unload", "--image", "one"]);
    assert!(
        said(&o).contains(&format!(
            "no image `one` is installed for kernel {R} in /var/lib/composer (installed: two)"
        )),
        "{}",
        said(&o)
    );
    loaded(&node, "other_drv", "other_drv 16384 0 - Live 0x0 (OE)\n");
    let o = node.kmod(&["unload", "--image", "two"]);
    assert_eq!(o.status.code(), Some(1), "{}", said(&o));
    assert!(
        said(&o).contains("hello_a is in use by other_drv, not among the modules to unload (hello_a); unload it first"),
        "{}",
        said(&o)
    );
    node.put("proc/modules", b"");
    std::fs::remove_dir_all(node.root().join("sys/module/hello_a")).unwrap();
    assert_eq!(node.snapshot(), before, "load and unload wrote nothing");
}
