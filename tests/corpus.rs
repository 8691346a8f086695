//! Real-world compatibility: the siderolabs/pkgs and siderolabs/extensions
//! trees (../shared/corpus) load with zero errors for both platforms, every
//! package's graph resolves, and spot-checked renders match the text Go's
//! text/template produces for them.

use std::path::PathBuf;

use composer::defs::{Definitions, LoadOptions, Platform, load};
use composer::diag::Report;
use composer::graph::Graph;

fn corpus(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/corpus")
        .join(name);
    assert!(dir.is_dir(), "corpus missing at {}", dir.display());
    dir
}

/// The build arguments the trees' own Makefiles pass to bldr.
fn makefile_build_args() -> Vec<(String, String)> {
    [
        ("SOURCE_DATE_EPOCH", "1700000000"),
        ("TAG", "v1.12.0"),
        ("PKGS", "v1.12.0"),
        ("PKGS_PREFIX", "ghcr.io/siderolabs"),
        ("TOOLS", "v1.12.0"),
        ("TOOLS_PREFIX", "ghcr.io/siderolabs"),
        ("TEST_STAGE", ""),
        ("GNU_MIRROR_URL", "https://ftp.gnu.org/gnu/"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn load_corpus(name: &str, platform: Platform) -> (Definitions, Report) {
    load(&LoadOptions {
        roots: vec![corpus(name)],
        platform,
        build_args: makefile_build_args(),
        kernel_release: None,
    })
}

#[test]
fn real_trees_load_without_errors_and_every_graph_resolves() {
    for tree in ["siderolabs-pkgs", "siderolabs-extensions"] {
        for platform in Platform::ALL {
            let (defs, mut report) = load_corpus(tree, platform);
            let graph = Graph::new(&defs, &mut report);
            assert!(
                !report.has_errors(),
                "{tree} {platform}:\n{}",
                report.clone().sorted()
            );
            assert!(defs.packages.len() > 80, "{tree}: {}", defs.packages.len());
            for name in graph.names() {
                graph
                    .resolve(&[name.to_string()])
                    .unwrap_or_else(|e| panic!("{tree} {platform} {name}: {e}"));
            }
        }
    }
}

#[test]
fn corpus_package_counts_match_the_trees() {
    let (pkgs, _) = load_corpus("siderolabs-pkgs", Platform::LinuxAmd64);
    assert_eq!(pkgs.packages.len(), 82);
    let (ext, _) = load_corpus("siderolabs-extensions", Platform::LinuxAmd64);
    assert_eq!(ext.packages.len(), 116);
}

#[test]
fn hailort_pkg_renders_arch_per_platform() {
    let (defs, _) = load_corpus("siderolabs-pkgs", Platform::LinuxAmd64);
    let p = defs.find("hailort-pkg").unwrap();
    assert!(
        p.rendered.contains("\n      ARCH: x86_64\n"),
        "{}",
        p.rendered
    );
    assert_eq!(
        p.pkg.steps[0].env,
        vec![
            ("ARCH".to_string(), "x86_64".to_string()),
            ("LLVM".to_string(), "1".to_string())
        ]
    );
    assert!(
        p.rendered.contains(
            "https://github.com/hailo-ai/hailort-drivers/archive/refs/tags/v4.24.0.tar.gz"
        )
    );

    let (defs, _) = load_corpus("siderolabs-pkgs", Platform::LinuxArm64);
    let p = defs.find("hailort-pkg").unwrap();
    assert!(p.rendered.contains("\n      ARCH: arm64\n"));
}

#[test]
fn kernel_prepare_url_uses_regex_replace_of_the_version() {
    let (defs, _) = load_corpus("siderolabs-pkgs", Platform::LinuxAmd64);
    let p = defs.find("kernel-prepare").unwrap();
    let src = &p.pkg.steps[0].sources[0];
    assert_eq!(
        src.url,
        "https://cdn.kernel.org/pub/linux/kernel/v6.x/linux-6.18.45.tar.xz"
    );
    assert_eq!(src.sha256.len(), 64);
}

#[test]
fn kernel_build_follows_the_kernel_target_build_arg() {
    let mut args = makefile_build_args();
    let plain = load(&LoadOptions {
        roots: vec![corpus("siderolabs-pkgs")],
        platform: Platform::LinuxAmd64,
        build_args: args.clone(),
        kernel_release: None,
    })
    .0;
    let p = plain.find("kernel-build").unwrap();
    assert_eq!(p.pkg.finalize.len(), 2);
    args.push(("KERNEL_TARGET".into(), "olddefconfig".into()));
    let with_target = load(&LoadOptions {
        roots: vec![corpus("siderolabs-pkgs")],
        platform: Platform::LinuxArm64,
        build_args: args,
        kernel_release: None,
    })
    .0;
    let p = with_target.find("kernel-build").unwrap();
    assert!(p.rendered.contains("make olddefconfig"));
    assert_eq!(p.pkg.finalize[0].to, "config-arm64");
}

#[test]
fn extension_manifest_template_renders_with_the_vars_cascade() {
    let (defs, _) = load_corpus("siderolabs-extensions", Platform::LinuxAmd64);
    let p = defs.find("hailort").unwrap();
    let (_, manifest) = p
        .templates
        .iter()
        .find(|(n, _)| n.to_str() == Some("manifest.yaml"))
        .unwrap();
    assert!(manifest.contains("  version: \"4.24.0\"\n"), "{manifest}");
    assert!(manifest.contains("    [extra] Driver for HailoRT"));
}

#[test]
fn pipelines_with_replace_and_trim_prefix_render_like_go() {
    let (defs, _) = load_corpus("siderolabs-pkgs", Platform::LinuxAmd64);
    // Every `{{ .x | replace "_" "." }}` and `trimPrefix` in the tree has
    // rendered: no template text is left in any package.
    for p in &defs.packages {
        assert!(!p.rendered.contains("{{"), "{}", p.file.display());
    }
}
