//! Modules for kernels composer does not build: Debian 12's cloud kernel,
//! its two newest releases side by side (a node that is updating needs
//! both), through the whole flow a KMM user runs:
//!
//! - `composer build --kernel-release R $(build-args) hello-kmod
//!   hailort-kmod --format kmm --signing-key KEY --push REG/kmods`: the
//!   fixture modules (hello_user uses a symbol hello_pcie exports) and the
//!   real HailoRT driver, built against Debian's own headers, signed with
//!   the user's key, pushed as `REG/kmods/<name>:<release>`;
//! - without `--signing-key` or `--unsigned` the build stops and exports
//!   nothing;
//! - a second run with `--skip-existing` finds every image in the registry
//!   and compiles nothing;
//! - a module of one release is refused in the other's directory;
//! - (in `kmm/boot.rs`) Debian's own kernel boots under QEMU and loads each
//!   release's image in dependency order, and refuses it under
//!   `module.sig_enforce=1` (it trusts only Debian's key).

#[path = "kmm/boot.rs"]
mod boot;
mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::debian;
use common::demo::{copy_project, firmware_standin, modinfo, shared_sources};
use common::kmod::user_key;
use common::registry::Registry;

fn said(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The build of one release's KMM images, as the release workflow's cell
/// runs it: `extra` adds the signing choice, `--push` and so on.
fn build_release(project: &Path, release: &str, extra: &[&str]) -> Output {
    build_release_in(project, "cache", release, extra)
}

fn build_release_in(project: &Path, cache: &str, release: &str, extra: &[&str]) -> Output {
    let out = format!("_out/{release}");
    let mut args: Vec<String> = [
        "build",
        "--cache-dir",
        cache,
        "-o",
        &out,
        "--kernel-release",
        release,
        "--format",
        "kmm",
        "--source-mirror",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(shared_sources().to_string_lossy().into_owned());
    args.extend(firmware_standin(&project.join("firmware-mirror")));
    args.extend(debian::build_args(release));
    args.extend(["hello-kmod", "hailort-kmod"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    common::composer(project, &refs)
}

fn tags(registry: &Registry, repo: &str) -> Vec<String> {
    let out = common::run(Command::new("skopeo").args([
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{}/{repo}", registry.addr()),
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut tags: Vec<String> = v["Tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    tags.sort();
    tags
}

/// What one release's build must have produced.
fn assert_release_outputs(project: &Path, release: &str, cert: &Path, other_cert: &Path) {
    let out = project.join("_out").join(release);
    let extra = out.join(format!("hello-kmod/usr/lib/modules/{release}/extra"));
    for m in ["hello_pcie", "hello_user"] {
        let ko = extra.join(format!("{m}.ko"));
        assert!(ko.is_file(), "{} missing", ko.display());
        assert!(
            modinfo(&ko, "vermagic").starts_with(&format!("{release} ")),
            "{m} built against {release}'s headers"
        );
    }
    assert_eq!(
        modinfo(&extra.join("hello_user.ko"), "depends"),
        "hello_pcie"
    );
    let hailo = out.join(format!(
        "hailort-kmod/usr/lib/modules/{release}/kernel/drivers/misc/hailo_pci.ko"
    ));
    assert!(hailo.is_file(), "{} missing", hailo.display());

    let verify = |cert: &Path| {
        common::composer(
            project,
            &[
                "verify",
                out.join("hello-kmod").to_str().unwrap(),
                out.join("hailort-kmod").to_str().unwrap(),
                "--cert",
                cert.to_str().unwrap(),
            ],
        )
    };
    let v = verify(cert);
    assert!(
        v.status.success(),
        "signed with the user's key: {}",
        said(&v)
    );
    let v = verify(other_cert);
    assert_eq!(
        v.status.code(),
        Some(1),
        "another key must fail: {}",
        said(&v)
    );

    // The KMM image: modules under /opt/lib/modules/<release>/ with
    // depmod's index, which orders hello_user after hello_pcie.
    let bundle = project.join(format!("bundle-{release}"));
    common::umoci_unpack(
        &format!("{}:{release}", out.join("images/hello-kmod").display()),
        &bundle,
    );
    let dep =
        fs::read_to_string(bundle.join(format!("rootfs/opt/lib/modules/{release}/modules.dep")))
            .unwrap();
    assert!(
        dep.contains("extra/hello_user.ko: extra/hello_pcie.ko"),
        "{dep}"
    );
}

#[test]
fn modules_for_debian_kernels_build_per_release_push_and_load_in_order() {
    let releases = debian::two_releases();
    let p = copy_project();
    let keys = tempfile::tempdir().unwrap();
    let (pem, cert) = user_key(keys.path(), "mok");
    let (_, other_cert) = user_key(keys.path(), "other");
    let registry = Registry::start();
    let prefix = format!("{}/kmods", registry.addr());

    needs_a_signing_choice(p.path(), &releases[0]);
    let signing = [
        "--signing-key",
        pem.to_str().unwrap(),
        "--push",
        &prefix,
        "--insecure",
    ];
    for release in releases {
        let o = build_release(p.path(), release, &signing);
        let text = said(&o);
        assert!(o.status.success(), "{release}: {text}");
        assert!(
            text.contains(
                "hello-kmod: 2 module(s) for a kernel this build did not make: signed with your"
            ),
            "{text}"
        );
        assert_release_outputs(p.path(), release, &cert, &other_cert);
    }
    let mut expected: Vec<String> = releases.to_vec();
    expected.sort();
    assert_eq!(tags(&registry, "kmods/hello-kmod"), expected);
    assert_eq!(tags(&registry, "kmods/hailort-kmod"), expected);
    a_second_run_compiles_nothing(p.path(), releases, &prefix, &signing);
    another_releases_module_is_refused(p.path(), releases, &cert);
    boot::each_release_loads_its_own_image(p.path(), releases);
}

/// No signing choice: nothing exported, and the message says what to do.
fn needs_a_signing_choice(project: &Path, release: &str) {
    let o = build_release(project, release, &[]);
    let text = said(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("error[modules-signed]"), "{text}");
    assert!(
        text.contains("hello_user.ko") && text.contains("--unsigned"),
        "{text}"
    );
    assert!(
        !project
            .join("_out")
            .join(release)
            .join("hello-kmod")
            .exists()
    );
}

/// A second run, as on a fresh CI runner: every image is in the registry,
/// so nothing is fetched, compiled or written.
fn a_second_run_compiles_nothing(
    project: &Path,
    releases: &[String],
    prefix: &str,
    signing: &[&str],
) {
    let mut args = signing.to_vec();
    args.push("--skip-existing");
    for release in releases {
        let o = build_release_in(project, "fresh-cache", release, &args);
        let text = said(&o);
        assert!(o.status.success(), "{release}: {text}");
        for target in ["hello-kmod", "hailort-kmod"] {
            let line = format!("skipped {target}: {prefix}/{target}:{release} exists (sha256:");
            assert!(text.contains(&line), "{line}\n{text}");
        }
        assert!(text.contains("built 0 stage(s)"), "{text}");
        assert!(!text.contains("started"), "a stage ran: {text}");
    }
    assert!(!project.join("fresh-cache").exists(), "nothing cached");
}

/// A module built for one release is refused in the other's directory.
fn another_releases_module_is_refused(project: &Path, releases: &[String], cert: &Path) {
    let (newer, older) = (&releases[0], &releases[1]);
    let wrong = project.join("wrong");
    let dir = wrong.join(format!("usr/lib/modules/{newer}/extra"));
    fs::create_dir_all(&dir).unwrap();
    fs::copy(
        project.join(format!(
            "_out/{older}/hello-kmod/usr/lib/modules/{older}/extra/hello_pcie.ko"
        )),
        dir.join("hello_pcie.ko"),
    )
    .unwrap();
    let v = common::composer(
        project,
        &[
            "validate-rootfs",
            wrong.to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
        ],
    );
    let text = said(&v);
    assert_eq!(v.status.code(), Some(1), "{text}");
    assert!(
        text.contains("modules-vermagic")
            && text.contains(older.as_str())
            && text.contains(newer.as_str()),
        "{text}"
    );
}

/// The image gate checks modules against the Debian tree they were built
/// on: hello_user without hello_pcie (which exports the symbol it uses)
/// is refused, and nothing is exported or written.
#[test]
fn a_kmm_image_missing_a_module_another_needs_is_refused() {
    let release = &debian::two_releases()[0];
    let p = copy_project();
    let pkg = p.path().join("pkgs/kmm/hello-kmod/pkg.yaml");
    let text = fs::read_to_string(&pkg).unwrap();
    let broken = text.replace("for dir in pcie user; do", "for dir in user; do");
    assert_ne!(text, broken);
    let broken = broken.replace(
        "for m in hello_pcie hello_user; do",
        "for m in hello_user; do",
    );
    fs::write(&pkg, broken).unwrap();
    let o = build_release(p.path(), release, &["--unsigned"]);
    let text = said(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("error[modules-depends]")
            && text.contains("hello_user.ko: uses symbol `hello_pcie_greeting`"),
        "{text}"
    );
    let out = p.path().join("_out").join(release);
    assert!(!out.join("hello-kmod").exists(), "exported");
    assert!(!out.join("images/hello-kmod").exists(), "image written");
}

/// debian-kernel fails when it runs, saying why: headers of another
/// release than `--kernel-release`, or no release at all.
#[test]
fn debian_kernel_refuses_headers_of_another_release_and_a_missing_release() {
    let releases = debian::two_releases();
    let p = copy_project();
    let mut args: Vec<String> = ["build", "--cache-dir", "cache", "--kernel-release"]
        .map(String::from)
        .to_vec();
    args.push(releases[0].clone());
    args.extend(debian::build_args(&releases[1]));
    args.push("debian-kernel".into());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = common::composer(p.path(), &refs);
    let text = said(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "headers.deb holds no usr/src/linux-headers-{}",
            releases[0]
        )),
        "{text}"
    );
    assert!(!p.path().join("_out/debian-kernel").exists());

    let o = common::composer(
        p.path(),
        &["build", "--cache-dir", "cache", "debian-kernel"],
    );
    let text = said(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("pass --kernel-release RELEASE"), "{text}");
}
