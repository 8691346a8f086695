//! The module rules against a kernel composer did not build: Debian 12's
//! cloud kernel, read from its own linux-headers packages
//! (`--kernel-tree`). The modules are real: the fixture and one-file
//! modules built here against those headers, and every module Debian
//! ships. Each test breaks one thing and looks for the rule, the module
//! and what names the fault.

mod common;

use std::path::{Path, PathBuf};

use common::debian;
use composer::validate::kernel_tree::{KernelTree, SEARCH_DEPTH, find_kernel_trees};
use composer::validate::modules::{modinfo, read_module};
use tempfile::TempDir;

/// Runs `composer validate-rootfs ARGS`; (exit code, stdout, stderr).
fn validate_rootfs(args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["validate-rootfs"];
    all.extend_from_slice(args);
    let out = common::composer(&std::env::temp_dir(), &all);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A root filesystem with `modules` in `usr/lib/modules/<release>/extra/`.
fn rootfs(release: &str, modules: &[&Path]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let extra = dir.path().join(format!("usr/lib/modules/{release}/extra"));
    std::fs::create_dir_all(&extra).unwrap();
    for m in modules {
        std::fs::copy(m, extra.join(m.file_name().unwrap())).unwrap();
    }
    dir
}

/// Validates `root` with the module rules (the modules are unsigned)
/// against the build trees `trees`.
fn check(root: &Path, trees: &[PathBuf], extra: &[&str]) -> (i32, String, String) {
    let root = root.to_str().unwrap();
    let mut args = vec![root, "--rules", "modules-vermagic,modules-depends"];
    let trees: Vec<String> = trees.iter().map(|t| t.display().to_string()).collect();
    for t in &trees {
        args.extend(["--kernel-tree", t.as_str()]);
    }
    args.extend_from_slice(extra);
    validate_rootfs(&args)
}

fn vermagic_of(ko: &Path) -> String {
    let info = modinfo(&read_module(ko).unwrap()).unwrap();
    info.into_iter().find(|(k, _)| k == "vermagic").unwrap().1
}

#[test]
fn debian_headers_read_as_the_kernel_they_build_for() {
    let new = debian::new();
    let dir = debian::build_tree(new);
    let tree = KernelTree::read(&dir).unwrap();
    // Debian's include/config/kernel.release is the upstream version.
    let plain = std::fs::read_to_string(dir.join("include/config/kernel.release")).unwrap();
    assert_ne!(plain.trim(), new);
    assert_eq!(tree.release, new);
    assert_eq!(
        tree.vermagic,
        format!("{new} SMP preempt mod_unload modversions ")
    );
    // Exactly what kbuild wrote into a module built against the headers.
    let fixture = debian::build_fixture(new);
    assert_eq!(vermagic_of(&fixture.pcie), tree.vermagic);
    let printk = tree.export("_printk").unwrap();
    assert!(printk.in_vmlinux() && !printk.gpl_only);
    assert!(tree.export("ktime_get_with_offset").unwrap().gpl_only);
    assert!(tree.export("hello_pcie_greeting").is_none());
    assert_eq!(
        find_kernel_trees(&debian::header_prefix(new), SEARCH_DEPTH),
        vec![dir]
    );
}

#[test]
fn modules_built_for_the_kernel_pass_against_its_build_tree() {
    let new = debian::new();
    let fixture = debian::build_fixture(new);
    let root = rootfs(new, &[&fixture.pcie, &fixture.user]);
    let (code, stdout, stderr) = check(root.path(), &[debian::build_tree(new)], &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout, "");
    assert!(
        stderr.contains("2 rules run: 0 errors, 0 warnings"),
        "{stderr}"
    );
    // The directory holding the unpacked packages finds the same tree.
    let (code, stdout, _) = check(root.path(), &[debian::header_prefix(new)], &[]);
    assert_eq!((code, stdout.as_str()), (0, ""));
    // A KMM image: the same modules under /opt/lib/modules.
    let kmm = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(kmm.path().join("opt/lib")).unwrap();
    std::fs::rename(
        root.path().join("usr/lib/modules"),
        kmm.path().join("opt/lib/modules"),
    )
    .unwrap();
    let (code, stdout, stderr) = check(kmm.path(), &[debian::build_tree(new)], &["--kind", "kmod"]);
    assert_eq!((code, stdout.as_str()), (0, ""), "{stderr}");
    assert!(
        stderr.contains("(kmod): 2 rules run: 0 errors, 0 warnings"),
        "{stderr}"
    );
}

#[test]
fn a_module_built_for_another_release_is_refused_naming_both_vermagics() {
    let new = debian::new();
    let old = debian::old();
    let old_fixture = debian::build_fixture(old);
    let new_fixture = debian::build_fixture(new);
    let root = rootfs(new, &[&old_fixture.pcie, &new_fixture.user]);
    let (code, stdout, _) = check(root.path(), &[debian::build_tree(new)], &[]);
    assert_eq!(code, 1, "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let want = format!(
        "error[modules-vermagic]: /usr/lib/modules/{new}/extra/hello_pcie.ko: vermagic \"{old} SMP preempt mod_unload modversions\" is not that of kernel {new}, \"{new} SMP preempt mod_unload modversions\""
    );
    assert!(lines[0].starts_with(&want), "{stdout}");
}

#[test]
fn a_module_without_the_module_it_uses_names_the_missing_symbol() {
    let new = debian::new();
    let fixture = debian::build_fixture(new);
    let root = rootfs(new, &[&fixture.user]);
    // The node's own modules do not export it either: still refused.
    let (code, stdout, _) = check(
        root.path(),
        &[debian::build_tree(new)],
        &["--allow-in-tree-deps"],
    );
    assert_eq!(code, 1, "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert!(
        lines[0].starts_with(&format!(
            "error[modules-depends]: /usr/lib/modules/{new}/extra/hello_user.ko: uses symbol `hello_pcie_greeting`, which neither kernel {new}"
        )),
        "{stdout}"
    );
    // Without --allow-in-tree-deps, the `depends=` name too.
    let (code, stdout, _) = check(root.path(), &[debian::build_tree(new)], &[]);
    assert_eq!(code, 1);
    assert!(stdout.contains("depends on `hello_pcie`"), "{stdout}");
    assert!(stdout.contains("`hello_pcie_greeting`"), "{stdout}");
}

#[test]
fn a_module_using_a_symbol_the_kernel_does_not_export_is_refused() {
    let new = debian::new();
    let source = r#"
#include <linux/module.h>
extern void composer_not_exported(void);
/* Weak: the loader leaves it 0 when nobody exports it, so it is fine. */
extern void composer_weak(void) __attribute__((weak));
static int __init composer_extra_init(void)
{
	pr_info("composer_extra\n");
	composer_not_exported();
	if (composer_weak)
		composer_weak();
	return 0;
}
module_init(composer_extra_init);
MODULE_LICENSE("GPL");
"#;
    let (_dir, ko) = debian::build_module(new, "composer_extra", source);
    let root = rootfs(new, &[&ko]);
    let (code, stdout, _) = check(root.path(), &[debian::build_tree(new)], &[]);
    assert_eq!(code, 1, "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "only the one symbol: {stdout}");
    assert!(
        lines[0].starts_with(&format!(
            "error[modules-depends]: /usr/lib/modules/{new}/extra/composer_extra.ko: uses symbol `composer_not_exported`, which neither kernel {new}"
        )),
        "{stdout}"
    );
}

#[test]
fn a_proprietary_module_using_a_gpl_only_export_is_refused() {
    let new = debian::new();
    // Built without hello_pcie's Module.symvers, so modpost cannot see
    // that the symbol is GPL-only; the kernel would refuse it.
    let source = r#"
#include <linux/module.h>
const char *hello_pcie_greeting(void);
static int __init composer_prop_init(void)
{
	return hello_pcie_greeting() ? 0 : 1;
}
module_init(composer_prop_init);
MODULE_LICENSE("Proprietary");
"#;
    let (_dir, ko) = debian::build_module(new, "composer_prop", source);
    let fixture = debian::build_fixture(new);
    let root = rootfs(new, &[&ko, &fixture.pcie]);
    let (code, stdout, _) = check(root.path(), &[debian::build_tree(new)], &[]);
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(
        stdout.trim_end(),
        format!(
            "error[modules-depends]: /usr/lib/modules/{new}/extra/composer_prop.ko: uses symbol `hello_pcie_greeting`, which hello_pcie exports to GPL-compatible modules only, and its licence \"Proprietary\" is not: the kernel refuses the module"
        )
    );
}

#[test]
fn modules_of_a_release_no_given_tree_is_for_are_named_in_a_warning() {
    let new = debian::new();
    let old = debian::old();
    let fixture = debian::build_fixture(new);
    let root = rootfs(new, &[&fixture.pcie, &fixture.user]);
    let (code, stdout, _) = check(root.path(), &[debian::build_tree(old)], &[]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.starts_with(&format!(
            "warning[modules-vermagic]: /usr/lib/modules/{new}: no kernel build tree for release {new} (known: {old})"
        )),
        "{stdout}"
    );
    let (code, _, _) = check(root.path(), &[debian::build_tree(old)], &["--strict"]);
    assert_eq!(code, 1);
}

#[test]
fn every_module_debian_ships_passes_against_its_own_headers() {
    let new = debian::new();
    let old = debian::old();
    let image = debian::image(new);
    let count = walkdir::WalkDir::new(image.join("usr/lib/modules"))
        .into_iter()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("ko".as_ref()))
        .count();
    assert!(count > 500, "{count} modules");
    let (code, stdout, stderr) = check(&image, &[debian::build_tree(new)], &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout, "");
    // One of them put under the previous release, checked against that
    // release's headers: refused.
    let moved = tempfile::tempdir().unwrap();
    let old_dir = moved.path().join(format!("usr/lib/modules/{old}"));
    std::fs::create_dir_all(&old_dir).unwrap();
    let tun = image.join(format!("usr/lib/modules/{new}/kernel/drivers/net/tun.ko"));
    std::fs::copy(&tun, old_dir.join("tun.ko")).unwrap();
    let (code, stdout, _) = check(moved.path(), &[debian::build_tree(old)], &[]);
    assert_eq!(code, 1);
    assert!(
        stdout.contains(&format!(
            "vermagic \"{new} SMP preempt mod_unload modversions\" is not that of kernel {old}"
        )),
        "{stdout}"
    );
}

/// A synthetic kernel build tree: `Module.symvers` as given.
fn synthetic_tree(symvers: &str) -> TempDir {
    common::tree(&[
        (
            "include/generated/utsrelease.h",
            "#define UTS_RELEASE \"6.1.0-composer\"\n",
        ),
        (
            "include/generated/autoconf.h",
            "#define CONFIG_X86_64 1\n#define CONFIG_SMP 1\n",
        ),
        ("Module.symvers", symvers),
    ])
}

#[test]
fn a_kernel_tree_option_naming_no_tree_is_refused_before_any_check() {
    let root = common::tree(&[("usr/lib/modules/6.1.0/extra/a.ko", "junk")]);
    let empty = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = check(root.path(), &[empty.path().to_path_buf()], &[]);
    assert_eq!(code, 1);
    assert_eq!(stdout, "");
    assert!(
        stderr.contains("no kernel build tree (a directory with Module.symvers and include/generated/utsrelease.h)"),
        "{stderr}"
    );
    let missing = empty.path().join("nope");
    let (code, stdout, stderr) = check(root.path(), &[missing], &[]);
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert!(stderr.contains("nope: No such file"), "{stderr}");
}

#[test]
fn a_broken_module_symvers_is_refused_with_its_line() {
    let root = common::tree(&[("usr/lib/modules/6.1.0/extra/a.ko", "junk")]);
    let tree = synthetic_tree("0x1\tok\tvmlinux\tEXPORT_SYMBOL\t\n0x2\tbroken\n");
    let (code, stdout, stderr) = check(root.path(), &[tree.path().to_path_buf()], &[]);
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert!(
        stderr.contains("Module.symvers:2: expected CRC, symbol, module and export type"),
        "{stderr}"
    );
    let tree = synthetic_tree("");
    let (code, _, stderr) = check(root.path(), &[tree.path().to_path_buf()], &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("lists no exported symbol"), "{stderr}");
}

#[test]
fn two_trees_for_one_release_are_refused() {
    let root = common::tree(&[("usr/lib/modules/6.1.0/extra/a.ko", "junk")]);
    let a = synthetic_tree("0x1\tok\tvmlinux\tEXPORT_SYMBOL\t\n");
    let b = synthetic_tree("0x1\tok\tvmlinux\tEXPORT_SYMBOL\t\n");
    let trees = [a.path().to_path_buf(), b.path().to_path_buf()];
    let (code, stdout, stderr) = check(root.path(), &trees, &[]);
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert!(
        stderr.contains("are both for kernel 6.1.0-composer: give one"),
        "{stderr}"
    );
    // The same tree twice is one tree.
    let same = [a.path().to_path_buf(), a.path().to_path_buf()];
    let (code, _, stderr) = check(root.path(), &same, &[]);
    assert!(!stderr.contains("give one"), "{code} {stderr}");
}

/// Debian's kernel image is lz4-compressed (the legacy format): the
/// certificate read out of it is the one every module Debian ships for it
/// is signed with; the other release's image does not trust them.
#[test]
fn debians_own_modules_verify_against_the_certificate_in_its_lz4_kernel_image() {
    let new = debian::new();
    let old = debian::old();
    let modules = debian::image(new).join(format!("usr/lib/modules/{new}"));
    let verify = |kernel: &str| {
        let vmlinuz = debian::vmlinuz(kernel);
        common::composer(
            Path::new("."),
            &[
                "verify",
                modules.to_str().unwrap(),
                "--kernel",
                vmlinuz.to_str().unwrap(),
                "-q",
            ],
        )
    };
    let o = verify(new);
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{said}");
    assert!(said.contains("signed by a trusted key, 0 not"), "{said}");
    // Each Debian build makes its own key: the older release's image
    // trusts none of these modules.
    let o = verify(old);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("0 signed by a trusted key"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
