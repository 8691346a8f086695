//! Loading and unloading modules with the kernel's own calls
//! (`composer kmod load|unload`), proven with real components:
//!
//! - the plans, against the fixture modules built with Debian's headers
//!   (hello_user uses a symbol hello_pcie exports) and Debian's own
//!   `dummy.ko`, with the kernel's state written into a temporary tree
//!   (`/proc/modules`, `/sys/module`): dependency first, the same build left
//!   alone, another build refused unless replaced, parameters checked
//!   against the module;
//! - Debian's cloud kernel under QEMU (TCG) with an initramfs holding
//!   busybox, composer with the shared libraries it needs (`ldd`), and
//!   module trees made by depmod: `composer kmod load` loads hello_pcie then
//!   hello_user, a second load changes nothing and says so, an unload takes
//!   hello_user first, a module held from outside the request is refused
//!   naming its holder, a parameter reaches the module (dummy's
//!   `numdummies` makes that many interfaces) and a bad one is refused in
//!   the kernel's words, compressed modules load, `--replace-in-tree`
//!   unloads first; under `module.sig_enforce=1` the unsigned fixture is
//!   refused with "Key was rejected by service" and the kernel's reason.
//!
//! The boot unit is proven in `kmod_unit.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::guest::{boot, expect, ours, step};
use common::{debian, run};
use composer::node::Host;
use composer::node::index::Index;
use composer::node::load::{Done, Kept, LoadRequest, Step, plan_load};
use tempfile::TempDir;

/// A second build of `hello_pcie`: another source, so another srcversion.
const OTHER_PCIE: &str = r#"
#include <linux/module.h>
static int __init other_init(void) { return 0; }
static void __exit other_exit(void) { }
module_init(other_init);
module_exit(other_exit);
MODULE_LICENSE("GPL");
MODULE_VERSION("2.0.0");
"#;

/// Module trees under one root, each `<root>/<name>/lib/modules/<release>/`
/// with depmod's index:
/// - `opt`: hello_pcie, hello_user (`extra/`) and Debian's dummy;
/// - `pcie-only`: hello_pcie alone (its index knows no hello_user);
/// - `user-only`: hello_user without what it needs;
/// - `other`: another build of hello_pcie;
/// - `xz`: hello_pcie.ko.xz and hello_user.ko.zst.
struct Trees {
    dir: TempDir,
    release: String,
}

impl Trees {
    fn base(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn index(&self, name: &str) -> Index {
        Index::read(&self.base(name), &self.release).unwrap()
    }
}

fn put(base: &Path, release: &str, rel: &str, bytes: &[u8]) {
    let p = base.join("lib/modules").join(release).join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

fn trees() -> Trees {
    let release = debian::new().to_string();
    let fx = debian::build_fixture(&release);
    let pcie = std::fs::read(&fx.pcie).unwrap();
    let user = std::fs::read(&fx.user).unwrap();
    let dummy = std::fs::read(
        debian::image(&release)
            .join("usr/lib/modules")
            .join(&release)
            .join("kernel/drivers/net/dummy.ko"),
    )
    .unwrap();
    let (_other_dir, other) = debian::build_module(&release, "hello_pcie", OTHER_PCIE);
    let dir = tempfile::tempdir().unwrap();
    let r = &release;
    let base = |n: &str| dir.path().join(n);
    put(&base("opt"), r, "extra/hello_pcie.ko", &pcie);
    put(&base("opt"), r, "extra/hello_user.ko", &user);
    put(&base("opt"), r, "kernel/drivers/net/dummy.ko", &dummy);
    put(&base("pcie-only"), r, "extra/hello_pcie.ko", &pcie);
    put(&base("user-only"), r, "extra/hello_user.ko", &user);
    put(
        &base("other"),
        r,
        "extra/hello_pcie.ko",
        &std::fs::read(other).unwrap(),
    );
    let xz = {
        use std::io::Write;
        let mut e = xz2::write::XzEncoder::new(Vec::new(), 6);
        e.write_all(&pcie).unwrap();
        e.finish().unwrap()
    };
    put(&base("xz"), r, "extra/hello_pcie.ko.xz", &xz);
    let zst = zstd::encode_all(&user[..], 3).unwrap();
    put(&base("xz"), r, "extra/hello_user.ko.zst", &zst);
    for name in ["opt", "pcie-only", "user-only", "other", "xz"] {
        run(Command::new("depmod").arg("-b").arg(base(name)).arg(r));
    }
    let t = Trees { dir, release };
    let dep = std::fs::read_to_string(&t.index("opt").files[0]).unwrap();
    assert!(
        dep.contains("extra/hello_user.ko: extra/hello_pcie.ko"),
        "depmod: {dep}"
    );
    t
}

/// A kernel state: `/proc/modules` lines, and `(module, file, contents)`
/// under `/sys/module`.
fn host(proc_modules: &str, sysfs: &[(&str, &str, &str)]) -> (TempDir, Host) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("proc")).unwrap();
    std::fs::write(dir.path().join("proc/modules"), proc_modules).unwrap();
    for (m, file, text) in sysfs {
        let p = dir.path().join("sys/module").join(m);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join(file), text).unwrap();
    }
    let host = Host::new(dir.path());
    (dir, host)
}

fn srcversion(ko: &Path) -> String {
    let out = run(Command::new("modinfo").args(["-F", "srcversion"]).arg(ko));
    let v = out.trim().to_string();
    assert!(!v.is_empty(), "{}: no srcversion", ko.display());
    v
}

fn request(modules: &[&str], params: &[&str], replace: &[&str]) -> LoadRequest {
    LoadRequest {
        modules: modules.iter().map(|s| s.to_string()).collect(),
        params: params.iter().map(|p| p.parse().unwrap()).collect(),
        replace_in_tree: replace.iter().map(|s| s.to_string()).collect(),
    }
}

fn loads(steps: &[Step]) -> Vec<&str> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Load { name, .. } => Some(name.as_str()),
            Step::Keep { .. } => None,
        })
        .collect()
}

#[test]
fn plan_loads_the_dependency_first_and_leaves_the_same_build_alone() {
    let t = trees();
    let index = t.index("opt");
    let (_d, h) = host("", &[]);
    let plan = plan_load(
        &index,
        &h.snapshot(&t.release).unwrap(),
        &request(&["hello-user"], &[], &[]),
    )
    .unwrap();
    assert_eq!(loads(&plan.steps), ["hello_pcie", "hello_user"]);

    let pcie = index.get("hello_pcie").unwrap().path.clone();
    let user = index.get("hello_user").unwrap().path.clone();
    let (_d, h) = host(
        "hello_user 16384 0 - Live 0x0 (OE)\nhello_pcie 16384 1 hello_user, Live 0x0 (OE)\n",
        &[
            ("hello_pcie", "srcversion", &srcversion(&pcie)),
            ("hello_pcie", "taint", "OE"),
            ("hello_user", "srcversion", &srcversion(&user)),
            ("hello_user", "taint", "OE"),
        ],
    );
    let plan = plan_load(
        &index,
        &h.snapshot(&t.release).unwrap(),
        &request(&["hello_user"], &[], &[]),
    )
    .unwrap();
    assert!(loads(&plan.steps).is_empty(), "{plan:?}");
    let Step::Keep { why, .. } = &plan.steps[0] else {
        panic!("{plan:?}")
    };
    assert_eq!(*why, Kept::SameBuild(srcversion(&pcie)));
    let Step::Keep {
        name, why, ignored, ..
    } = plan.steps[1].clone()
    else {
        panic!("{plan:?}")
    };
    let said = Done::Kept { name, why, ignored }.to_string();
    assert_eq!(
        said,
        format!(
            "hello_user is already loaded from this build (srcversion {}): left alone",
            srcversion(&user)
        )
    );
}

#[test]
fn plan_refuses_another_build_of_a_loaded_module_unless_replaced() {
    let t = trees();
    let index = t.index("opt");
    let (_d, h) = host(
        "hello_pcie 16384 0 - Live 0x0 (OE)\n",
        &[("hello_pcie", "srcversion", "0123456789ABCDEF0123456")],
    );
    let snap = h.snapshot(&t.release).unwrap();
    let e = plan_load(&index, &snap, &request(&["hello_user"], &[], &[]))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("hello_pcie is already loaded, from another build than "),
        "{e}"
    );
    assert!(
        e.contains("loaded srcversion 0123456789ABCDEF0123456"),
        "{e}"
    );
    assert!(
        e.ends_with("--replace-in-tree hello_pcie unloads it first"),
        "{e}"
    );

    let plan = plan_load(
        &index,
        &snap,
        &request(&["hello_user"], &[], &["hello_pcie"]),
    )
    .unwrap();
    assert_eq!(plan.unload, ["hello_pcie"]);
    assert_eq!(loads(&plan.steps), ["hello_pcie", "hello_user"]);

    // An in-tree module of that name (no srcversion, no O taint).
    let (_d, h) = host(
        "hello_pcie 16384 0 - Live 0x0\n",
        &[("hello_pcie", "initstate", "live")],
    );
    let e = plan_load(
        &index,
        &h.snapshot(&t.release).unwrap(),
        &request(&["hello_pcie"], &[], &[]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("(the loaded one is in-tree, the file is out-of-tree)"),
        "{e}"
    );
}

#[test]
fn plan_checks_parameters_against_the_module_before_any_load() {
    let t = trees();
    let index = t.index("opt");
    let (_d, h) = host("", &[]);
    let snap = h.snapshot(&t.release).unwrap();
    let e = plan_load(
        &index,
        &snap,
        &request(&["dummy"], &["dummy.nosuch=1"], &[]),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "--param dummy.nosuch=1: dummy has no parameter `nosuch` (it has: numdummies)"
    );
    let e = plan_load(
        &index,
        &snap,
        &request(&["hello_user"], &["hello_pcie.x=1"], &[]),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "--param hello_pcie.x=1: hello_pcie has no parameter `x` (it has: none)"
    );
    let e = plan_load(
        &index,
        &snap,
        &request(&["dummy"], &["hello_pcie.x=1"], &[]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.ends_with("hello_pcie is not among the modules to load (dummy)"),
        "{e}"
    );
    let plan = plan_load(
        &index,
        &snap,
        &request(&["dummy"], &["dummy.numdummies=3"], &[]),
    )
    .unwrap();
    assert!(
        matches!(&plan.steps[..], [Step::Load { params, .. }] if params == "numdummies=3"),
        "{plan:?}"
    );

    // Loaded already (in-tree, as the file: no srcversion on either side):
    // left alone, and the parameter is said not to apply.
    let (_d, h) = host("dummy 16384 0 - Live 0x0\n", &[]);
    let plan = plan_load(
        &index,
        &h.snapshot(&t.release).unwrap(),
        &request(&["dummy"], &["dummy.numdummies=3"], &[]),
    )
    .unwrap();
    let [
        Step::Keep {
            name, why, ignored, ..
        },
    ] = &plan.steps[..]
    else {
        panic!("{plan:?}")
    };
    assert_eq!(*why, Kept::Unverifiable);
    let said = Done::Kept {
        name: name.clone(),
        why: why.clone(),
        ignored: ignored.clone(),
    }
    .to_string();
    assert!(
        said.ends_with("left alone; its parameters (numdummies=3) apply only when it is loaded again (unload it first)"),
        "{said}"
    );
}

#[test]
fn cli_refuses_an_unknown_module_naming_a_close_one() {
    let t = trees();
    let o = common::composer(
        t.dir.path(),
        &[
            "kmod",
            "load",
            "hello_usr",
            "--base",
            "opt",
            "--kernel-release",
            &t.release,
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no module `hello_usr`; did you mean `hello_user`?"),
        "{err}"
    );
    assert!(o.stdout.is_empty());

    let o = common::composer(
        t.dir.path(),
        &[
            "kmod",
            "unload",
            "hello_pcie",
            "--base",
            "opt",
            "--kernel-release",
            "6.1.0-1-none",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "no modules for kernel 6.1.0-1-none there (it has: {})",
            t.release
        )),
        "{err}"
    );
    let o = common::composer(t.dir.path(), &["kmod", "load", "x", "--param", "x=1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("expected MODULE.KEY=VALUE"));
}

// ---- Debian's kernel under QEMU (guest.rs) ---------------------------------

/// The guest's steps, on the trees at `/<name>`.
const SCENARIO: &str = "\
step missing-dep composer kmod load hello_user --base /user-only
step load composer kmod load hello_user --base /opt
step again composer kmod load hello-user --base /opt
step held composer kmod unload hello_pcie --base /pcie-only
step other-build composer kmod load hello_pcie --base /other
step replace-held composer kmod load hello_pcie --base /other --replace-in-tree hello_pcie
step unload composer kmod unload hello_pcie --base /opt
step unload-again composer kmod unload hello_pcie --base /opt
step param-unknown composer kmod load dummy --base /opt --param dummy.nosuch=1
step param-bad composer kmod load dummy --base /opt --param dummy.numdummies=many
step param composer kmod load dummy --base /opt --param dummy.numdummies=3
step netdevs ls /sys/class/net
step replace composer kmod load hello_user --base /xz --replace-in-tree dummy
step netdevs-after ls /sys/class/net
";

#[test]
fn on_debians_kernel_modules_load_in_dependency_order_and_unload_dependants_first() {
    let t = trees();
    let steps = boot(t.dir.path(), &debian::vmlinuz(&t.release), "", SCENARIO);

    expect(
        &steps,
        "missing-dep",
        1,
        &[
            "loading hello_user",
            "No such file or directory: the module uses a symbol",
            "the kernel said: hello_user: Unknown symbol hello_pcie_greeting",
        ],
    );
    assert!(ours(step(&steps, "missing-dep")).is_empty());

    expect(&steps, "load", 0, &["loaded hello_pcie (/opt/lib/modules/"]);
    let load = step(&steps, "load");
    assert!(load.out[0].starts_with("loaded hello_pcie "), "{load:#?}");
    assert!(load.out[1].starts_with("loaded hello_user "), "{load:#?}");
    assert_eq!(
        ours(load),
        ["hello_pcie", "hello_user"],
        "the kernel's order"
    );

    expect(
        &steps,
        "again",
        0,
        &[
            "hello_pcie is already loaded from this build (srcversion ",
            "hello_user is already loaded from this build (srcversion ",
        ],
    );
    assert!(!step(&steps, "again").text().contains("loaded hello_"));

    expect(
        &steps,
        "held",
        1,
        &[
            "hello_pcie is in use by hello_user, not among the modules to unload (hello_pcie); unload it first",
        ],
    );
    assert_eq!(ours(step(&steps, "held")), ["hello_pcie", "hello_user"]);
    expect(
        &steps,
        "other-build",
        1,
        &[
            "hello_pcie is already loaded, from another build than /other/",
            "--replace-in-tree hello_pcie",
        ],
    );
    expect(
        &steps,
        "replace-held",
        1,
        &["hello_pcie is in use by hello_user"],
    );
    assert_eq!(
        ours(step(&steps, "replace-held")),
        ["hello_pcie", "hello_user"]
    );

    let unload = step(&steps, "unload");
    assert_eq!(unload.rc, Some(0), "{unload:#?}");
    assert_eq!(unload.out, ["unloaded hello_user", "unloaded hello_pcie"]);
    assert!(ours(unload).is_empty());
    expect(
        &steps,
        "unload-again",
        0,
        &["hello_pcie is not loaded: nothing to unload"],
    );

    expect(
        &steps,
        "param-unknown",
        1,
        &["--param dummy.nosuch=1: dummy has no parameter `nosuch` (it has: numdummies)"],
    );
    expect(
        &steps,
        "param-bad",
        1,
        &[
            "Invalid argument: the kernel refused a parameter value",
            "`many' invalid for parameter `numdummies'",
        ],
    );
    assert!(ours(step(&steps, "param-bad")).is_empty());
    expect(&steps, "param", 0, &["with numdummies=3"]);
    let devs = step(&steps, "netdevs").text();
    for d in ["dummy0", "dummy1", "dummy2"] {
        assert!(devs.split_whitespace().any(|w| w == d), "{d}: {devs}");
    }
    assert!(!devs.contains("dummy3"), "{devs}");

    let replace = step(&steps, "replace");
    assert_eq!(replace.rc, Some(0), "{replace:#?}");
    assert_eq!(replace.out[0], "unloaded dummy (--replace-in-tree)");
    assert!(
        replace.out[1].starts_with("loaded hello_pcie (/xz/")
            && replace.out[1].ends_with(".ko.xz)")
    );
    assert!(
        replace.out[2].starts_with("loaded hello_user (/xz/")
            && replace.out[2].ends_with(".ko.zst)")
    );
    assert_eq!(ours(replace), ["hello_pcie", "hello_user"]);
    assert!(!step(&steps, "netdevs-after").text().contains("dummy"));
}

#[test]
fn under_sig_enforce_an_unsigned_module_is_refused_in_plain_words() {
    let t = trees();
    let steps = boot(
        t.dir.path(),
        &debian::vmlinuz(&t.release),
        "module.sig_enforce=1",
        "step enforce composer kmod load hello_user --base /opt\n",
    );
    expect(
        &steps,
        "enforce",
        1,
        &[
            "loading hello_pcie",
            "Key was rejected by service: the kernel does not trust the module's signer",
            "the kernel said: Loading of unsigned module is rejected",
        ],
    );
    assert!(ours(step(&steps, "enforce")).is_empty());
}
