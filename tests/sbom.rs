//! SBOMs: the SPDX 2.3 documents `sbom:` steps make, checked by a real SPDX
//! reader (spdx-tools' `pyspdxtools`, PyPI `spdx-tools`, which `make test`
//! installs), byte-identical from build to build and to `composer sbom`,
//! carried into the extension images built from the stage; the real
//! trees' documents all valid. Bad `sbom:` input: sbom_checks.rs.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256, Sha512};
use tempfile::TempDir;

const PKGFILE: &str = "format: v1alpha2\n";
const EPOCH: &str = "SOURCE_DATE_EPOCH=1700000000";
const DOC: &str = "usr/local/share/spdx/drv.spdx.json";
const TARBALL: &[u8] = b"not really a tarball\n";
const FIRMWARE: &[u8] = b"firmware\n";

/// `drv`: two steps, a source in each (an https one served from a mirror,
/// a file:// one), the second with `sbom:`; `drvext`: an extension that
/// merges drv at /rootfs, as the demo's extensions do.
fn project() -> TempDir {
    let (s256, s512) = digests(TARBALL);
    let (f256, f512) = digests(FIRMWARE);
    let drv = format!(
        r#"name: drv
variant: host
shell: /bin/bash
steps:
  - sources:
      - url: https://downloads.example.org/drv/drv-1.0.0.tar.gz
        destination: drv.tar.gz
        sha256: {s256}
        sha512: {s512}
  - sources:
      - url: file://FIRMWARE
        destination: fw.bin
        sha256: {f256}
        sha512: {f512}
    install:
      - install -d /rootfs/usr/lib/firmware/acme && cp fw.bin /rootfs/usr/lib/firmware/acme/
    sbom:
      outputPath: /rootfs/{DOC}
      name: acme-drv
      version: 1.0.0
      cpes:
        - cpe:2.3:a:acme:drv:1.0.0:*:*:*:*:*:*:*
      purl: pkg:github/acme/drv@v1.0.0
      licenses:
        - MIT OR Apache-2.0
        - GPL-2.0-only
      customLicenses:
        - id: LicenseRef-Acme-Firmware
          text: Redistribution of the firmware is permitted in unmodified form.
finalize:
  - from: /rootfs
    to: /
"#
    );
    let ext = "name: drvext\nvariant: scratch\ndependencies:\n  - stage: drv\n    to: /rootfs\nfinalize:\n  - from: /rootfs\n    to: /rootfs\n  - from: /pkg/manifest.yaml\n    to: /\n";
    let manifest = "version: v1alpha1\nmetadata:\n  name: drvext\n  version: 1.0.0\n  author: composer tests\n  description: an extension carrying drv\n  compatibility:\n    talos:\n      version: \">= v1.9.0\"\n";
    let p = common::project(
        PKGFILE,
        &[
            ("drv/pkg.yaml", drv.as_str()),
            ("drvext/pkg.yaml", ext),
            ("drvext/manifest.yaml", manifest),
        ],
    );
    let fw = p.path().join("fw.bin");
    fs::write(&fw, FIRMWARE).unwrap();
    let yaml = p.path().join("p/drv/pkg.yaml");
    let text = fs::read_to_string(&yaml).unwrap();
    fs::write(&yaml, text.replace("FIRMWARE", fw.to_str().unwrap())).unwrap();
    let mirror = p.path().join("mirror");
    fs::create_dir(&mirror).unwrap();
    fs::write(mirror.join(s256), TARBALL).unwrap();
    p
}

fn digests(bytes: &[u8]) -> (String, String) {
    (
        hex::encode(Sha256::digest(bytes)),
        hex::encode(Sha512::digest(bytes)),
    )
}

/// `composer build` offline, sources from the project's mirror.
fn build(dir: &Path, cache: &str, out: &str, targets: &[&str]) -> Output {
    let mut args = vec![
        "--root",
        "p",
        "build",
        "--cache-dir",
        cache,
        "-o",
        out,
        "--offline",
        "--source-mirror",
        "mirror",
        "--build-arg",
        EPOCH,
    ];
    args.extend_from_slice(targets);
    common::composer(dir, &args)
}

fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// spdx-tools' command-line reader: parses and validates the document.
fn spdx_reader(file: &Path) -> Output {
    let out = Command::new("python3")
        .args(["-m", "spdx_tools.spdx.clitools.pyspdxtools", "-i"])
        .arg(file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named"),
        "the SPDX reader is missing: pip install spdx-tools==0.8.5 (make test installs it)"
    );
    out
}

fn assert_valid_spdx(file: &Path) {
    let out = spdx_reader(file);
    assert!(
        out.status.success(),
        "{}: {}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

#[test]
fn the_reader_used_here_rejects_a_broken_document() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("bad.spdx.json");
    fs::write(
        &f,
        r#"{"spdxVersion": "SPDX-2.3", "SPDXID": "SPDXRef-DOCUMENT"}"#,
    )
    .unwrap();
    assert!(!spdx_reader(&f).status.success());
}

#[test]
fn a_build_writes_the_sbom_step_document_which_an_spdx_reader_accepts() {
    let p = project();
    ok(build(p.path(), "cache", "_out", &["drv"]));
    let file = p.path().join("_out/drv").join(DOC);
    assert_valid_spdx(&file);

    let doc = json(&fs::read(&file).unwrap());
    assert_eq!(doc["spdxVersion"], "SPDX-2.3");
    assert_eq!(doc["creationInfo"]["created"], "2023-11-14T22:13:20Z");
    assert!(
        doc["documentNamespace"]
            .as_str()
            .unwrap()
            .starts_with("urn:uuid:")
    );
    let pkg = &doc["packages"][0];
    assert_eq!(pkg["name"], "acme-drv");
    assert_eq!(pkg["versionInfo"], "1.0.0");
    assert_eq!(
        pkg["licenseDeclared"],
        "GPL-2.0-only AND LicenseRef-Acme-Firmware AND (MIT OR Apache-2.0)"
    );
    let refs: Vec<&str> = pkg["externalRefs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["referenceLocator"].as_str().unwrap())
        .collect();
    assert_eq!(
        refs,
        [
            "cpe:2.3:a:acme:drv:1.0.0:*:*:*:*:*:*:*",
            "pkg:github/acme/drv@v1.0.0"
        ]
    );
    assert_eq!(
        doc["hasExtractedLicensingInfos"][0]["licenseId"],
        "LicenseRef-Acme-Firmware"
    );

    // Both sources of the stage, from both steps, with URL and digests.
    let (s256, s512) = digests(TARBALL);
    let src = &doc["packages"][1];
    assert_eq!(
        src["downloadLocation"],
        "https://downloads.example.org/drv/drv-1.0.0.tar.gz"
    );
    assert_eq!(src["checksums"][0]["algorithm"], "SHA256");
    assert_eq!(src["checksums"][0]["checksumValue"], s256.as_str());
    assert_eq!(src["checksums"][1]["checksumValue"], s512.as_str());
    let fw = &doc["packages"][2];
    assert_eq!(fw["downloadLocation"], "NOASSERTION");
    assert!(
        fw["sourceInfo"]
            .as_str()
            .unwrap()
            .starts_with("fetched from file:///")
    );
    assert_eq!(
        fw["checksums"][0]["checksumValue"],
        digests(FIRMWARE).0.as_str()
    );
    let rel: Vec<(&str, &str)> = doc["relationships"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["relationshipType"].as_str().unwrap(),
                r["relatedSpdxElement"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rel,
        [
            ("DESCRIBES", "SPDXRef-Package-acme-drv"),
            ("GENERATED_FROM", "SPDXRef-Source-1"),
            ("GENERATED_FROM", "SPDXRef-Source-2"),
        ]
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(&file).unwrap().mtime(), 1_700_000_000);
}

#[test]
fn sbom_documents_are_the_same_bytes_from_two_caches_and_change_with_the_epoch() {
    let p = project();
    ok(build(p.path(), "cache-a", "out-a", &["drv"]));
    ok(build(p.path(), "cache-b", "out-b", &["drv"]));
    let a = fs::read(p.path().join("out-a/drv").join(DOC)).unwrap();
    let b = fs::read(p.path().join("out-b/drv").join(DOC)).unwrap();
    assert_eq!(a, b);

    let other = common::composer(
        p.path(),
        &[
            "--root",
            "p",
            "sbom",
            "drv",
            "--build-arg",
            "SOURCE_DATE_EPOCH=1",
        ],
    );
    let other = ok(other).stdout;
    assert_ne!(
        json(&other)["documentNamespace"],
        json(&a)["documentNamespace"]
    );
    assert_eq!(
        json(&other)["creationInfo"]["created"],
        "1970-01-01T00:00:01Z"
    );
}

#[test]
fn composer_sbom_prints_the_bytes_the_build_wrote() {
    let p = project();
    ok(build(p.path(), "cache", "_out", &["drv", "drvext"]));
    let built = fs::read(p.path().join("_out/drv").join(DOC)).unwrap();
    let sbom = |args: &[&str]| {
        let mut all = vec!["--root", "p", "sbom", "--build-arg", EPOCH];
        all.extend_from_slice(args);
        ok(common::composer(p.path(), &all)).stdout
    };
    assert_eq!(sbom(&["drv"]), built);
    assert_eq!(sbom(&["drvext"]), built, "the extension's one document");
    sbom(&["drvext", "--stage", "drv", "-o", "copy.spdx.json"]);
    assert_eq!(fs::read(p.path().join("copy.spdx.json")).unwrap(), built);
    let list = String::from_utf8(sbom(&["drvext", "--list"])).unwrap();
    assert_eq!(list, format!("/rootfs/{DOC}\tdrv\t2\tacme-drv 1.0.0\n"));
}

#[test]
fn an_extension_image_carries_the_documents_of_the_stages_it_merges() {
    let p = project();
    let o = ok(build(p.path(), "cache", "_out", &["drvext"]));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("drvext\timage\toci:"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let bundle = p.path().join("bundle");
    let layout = p.path().join("_out/images/drvext");
    common::umoci_unpack(&format!("{}:1.0.0", layout.display()), &bundle);
    let carried = bundle.join("rootfs/rootfs").join(DOC);
    assert_valid_spdx(&carried);
    let expected = ok(common::composer(
        p.path(),
        &["--root", "p", "sbom", "drv", "--build-arg", EPOCH],
    ))
    .stdout;
    assert_eq!(fs::read(&carried).unwrap(), expected);
}

fn bad_sbom(sbom: &str) -> TempDir {
    let pkg = format!(
        "name: bad\nvariant: host\nshell: /bin/bash\nsteps:\n  - install:\n      - mkdir -p /rootfs\n    sbom:\n{sbom}finalize:\n  - from: /rootfs\n    to: /\n"
    );
    common::project(PKGFILE, &[("bad/pkg.yaml", pkg)])
}

fn failed(dir: &Path, args: &[&str]) -> String {
    let out = common::composer(dir, args);
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "expected exit 1: {e}");
    e
}

#[test]
fn a_lone_non_spdx_license_name_is_a_warning_and_a_licenseref_the_reader_accepts() {
    let p = bad_sbom("      outputPath: /rootfs/x.spdx.json\n      licenses:\n        - CUSTOM\n");
    let out = common::composer(p.path(), &["--root", "p", "sbom", "bad"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{e}");
    assert!(
        e.contains("steps[0].sbom.licenses[0]: `CUSTOM` is not an SPDX license identifier"),
        "{e}"
    );
    let f = p.path().join("x.spdx.json");
    fs::write(&f, &out.stdout).unwrap();
    assert_valid_spdx(&f);
    assert_eq!(
        json(&out.stdout)["packages"][0]["licenseDeclared"],
        "LicenseRef-CUSTOM"
    );
    failed(p.path(), &["--root", "p", "validate", "--strict"]);
}

#[test]
fn an_output_path_through_a_symlink_fails_the_stage_and_writes_nothing_through_it() {
    let victim = tempfile::tempdir().unwrap();
    let p = common::project(
        PKGFILE,
        &[(
            "bad/pkg.yaml",
            format!(
                "name: bad\nvariant: host\nshell: /bin/bash\nsteps:\n  - install:\n      - ln -s {} /rootfs\n    sbom:\n      outputPath: /rootfs/x.spdx.json\nfinalize:\n  - from: /rootfs\n    to: /\n",
                victim.path().display()
            ),
        )],
    );
    let e = failed(
        p.path(),
        &["--root", "p", "build", "--cache-dir", "cache", "bad"],
    );
    assert!(e.contains("`rootfs` is a symlink"), "{e}");
    assert_eq!(fs::read_dir(victim.path()).unwrap().count(), 0);
    assert!(!p.path().join("_out/bad").exists());
}

#[test]
fn a_target_without_such_a_document_is_a_clear_error() {
    let p = project();
    let e = failed(
        p.path(),
        &["--root", "p", "sbom", "drvext", "--stage", "drvext"],
    );
    assert!(
        e.contains("`drvext` carries no document of stage `drvext`"),
        "{e}"
    );
    let e = failed(p.path(), &["--root", "p", "sbom", "drvex"]);
    assert!(
        e.contains("unknown target `drvex` (did you mean `drvext`?)"),
        "{e}"
    );
    // A document that finalize does not take is in no output.
    let p = bad_sbom("      outputPath: /elsewhere/x.spdx.json\n");
    let e = failed(p.path(), &["--root", "p", "sbom", "bad"]);
    assert!(e.contains("`bad` carries no SBOM"), "{e}");
}

#[test]
fn sbom_help_has_examples() {
    let out = ok(common::composer(Path::new("."), &["sbom", "--help"])).stdout;
    let help = String::from_utf8(out).unwrap();
    assert!(
        help.contains("Examples:\n  composer sbom hailort-pkg"),
        "{help}"
    );
    assert!(help.contains("--step <N>"), "{help}");
}

/// `two`: two `sbom:` steps (1: `a`, 2: `b`); finalize carries a's
/// document to two paths.
fn two_documents() -> TempDir {
    let sbom =
        |n: &str| format!("    sbom:\n      outputPath: /rootfs/{n}.spdx.json\n      name: {n}\n");
    let pkg = format!(
        "name: two\nvariant: host\nshell: /bin/bash\nsteps:\n  - install:\n      - mkdir -p /rootfs\n{}  - install:\n      - 'true'\n{}finalize:\n  - from: /rootfs\n    to: /\n  - from: /rootfs/a.spdx.json\n    to: /copy/\n",
        sbom("a"),
        sbom("b")
    );
    common::project(PKGFILE, &[("two/pkg.yaml", pkg)])
}

#[test]
fn step_chooses_between_two_sbom_steps_of_one_stage() {
    let p = two_documents();
    let sbom = |extra: &[&str]| {
        let mut args = vec!["--root", "p", "sbom", "two"];
        args.extend_from_slice(extra);
        common::composer(p.path(), &args)
    };
    let list = String::from_utf8(ok(sbom(&["--list"])).stdout).unwrap();
    assert_eq!(
        list,
        "/a.spdx.json\ttwo\t1\ta\n/b.spdx.json\ttwo\t2\tb\n/copy/a.spdx.json\ttwo\t1\ta\n"
    );
    for extra in [&["-o", "x.json"][..], &["--stage", "two", "-o", "x.json"]] {
        let out = sbom(extra);
        let e = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {e}");
        assert!(
            e.contains("carries 3 documents (/a.spdx.json from --stage two --step 1, /b.spdx.json from --stage two --step 2, /copy/a.spdx.json from --stage two --step 1); choose one with --stage STAGE --step N"),
            "{e}"
        );
        assert!(!p.path().join("x.json").exists());
    }
    ok(sbom(&["--stage", "two", "--step", "2", "-o", "b.json"]));
    let b = fs::read(p.path().join("b.json")).unwrap();
    assert_eq!(json(&b)["packages"][0]["name"], "b");
    assert_eq!(b, ok(sbom(&["--stage", "two", "--step", "2"])).stdout);
    // One step's document at two paths is one document.
    ok(sbom(&["--stage", "two", "--step", "1", "-o", "a.json"]));
    assert_eq!(
        json(&fs::read(p.path().join("a.json")).unwrap())["packages"][0]["name"],
        "a"
    );
    let out = sbom(&["--stage", "two", "--step", "3"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("`two` carries no document of step 3 of stage `two`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (extra, says) in [
        (&["--step", "2"][..], "--stage <STAGE>"),
        (&["--stage", "two", "--step", "0"], "0 is not in 1.."),
        (&["--list", "-o", "l.json"], "cannot be used with"),
    ] {
        let out = sbom(extra);
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?}");
        assert!(e.contains(says), "{extra:?}: {e}");
        assert!(out.stdout.is_empty(), "{extra:?}");
    }
    assert!(!p.path().join("l.json").exists());
}

#[test]
fn the_demo_modules_describe_themselves_and_their_extensions_carry_them() {
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sbom = |args: &[&str]| {
        let mut all = vec!["sbom"];
        all.extend_from_slice(args);
        ok(common::composer(top, &all)).stdout
    };
    let list = String::from_utf8(sbom(&["hailort", "--list"])).unwrap();
    assert!(
        list.starts_with(
            "/rootfs/usr/local/share/spdx/hailort.spdx.json\thailort-pkg\t1\thailort-drivers "
        ),
        "{list}"
    );
    let list = String::from_utf8(sbom(&["hello", "--list"])).unwrap();
    assert_eq!(
        list,
        "/rootfs/usr/local/share/spdx/hello-module.spdx.json\thello-module\t1\thello-module 1.0.0\n"
    );
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("hailort.spdx.json");
    fs::write(&f, sbom(&["hailort-pkg"])).unwrap();
    assert_valid_spdx(&f);
    let doc = json(&fs::read(&f).unwrap());
    assert!(
        doc["packages"][1]["downloadLocation"]
            .as_str()
            .unwrap()
            .starts_with("https://github.com/hailo-ai/hailort-drivers/archive/refs/tags/v"),
        "{doc}"
    );
}

/// Every `sbom:` of siderolabs/pkgs and siderolabs/extensions, rendered
/// by the library, passes spdx-tools' validator (one process for all).
#[test]
fn every_sbom_of_the_real_trees_is_a_valid_spdx_document() {
    use composer::defs::{LoadOptions, Platform, load};
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<PathBuf> = Vec::new();
    for tree in ["siderolabs-pkgs", "siderolabs-extensions"] {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/corpus")
            .join(tree);
        let (defs, _) = load(&LoadOptions {
            roots: vec![root],
            platform: Platform::LinuxAmd64,
            build_args: vec![("TEST_STAGE".into(), String::new())],
            kernel_release: None,
        });
        for stage in &defs.packages {
            for d in composer::exec::sbom::documents(stage, Some(1_700_000_000)).unwrap() {
                let name = format!("{}-{}.spdx.json", stage.pkg.name.value, d.step);
                let f = dir.path().join(name);
                fs::write(&f, d.bytes).unwrap();
                files.push(f);
            }
        }
    }
    assert!(files.len() > 60, "{}", files.len());
    let script = "import sys\n\
from spdx_tools.spdx.parser.parse_anything import parse_file\n\
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document\n\
bad = [f'{f}: {m.validation_message}' for f in sys.argv[1:] for m in validate_full_spdx_document(parse_file(f))]\n\
print('\\n'.join(bad))\n\
sys.exit(1 if bad else 0)\n";
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
