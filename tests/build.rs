//! `composer build` on small trees: real sandboxes (bubblewrap), the real
//! cache on disk, the host's bash as the toolchain (variant host).

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

const PKGFILE: &str = "format: v1alpha2\nvars:\n  greeting: hello\n";

/// A project: definitions under `p/`, cache in `cache/`, outputs in `_out/`.
fn project(pkgs: &[(&str, &str)]) -> TempDir {
    common::project(PKGFILE, pkgs)
}

fn build(dir: &Path, args: &[&str]) -> Output {
    let mut all = vec!["--root", "p", "build", "--cache-dir", "cache"];
    all.extend_from_slice(args);
    common::composer(dir, &all)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: &Output) -> String {
    let e = stderr(o);
    assert!(o.status.success(), "build failed: {e}");
    e
}

fn failed(o: &Output) -> String {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "expected exit 1: {e}");
    e
}

fn read(dir: &Path, rel: &str) -> String {
    fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

const PRODUCER: &str = r#"name: a
variant: host
shell: /bin/bash
steps:
  - env:
      FOO: bar
    prepare:
      - echo "{{ .greeting }} $FOO $PKG_NAME $ARCH $TARGET" > msg
    install:
      - install -d /out/sub && cp msg /out/sub/ && cp /pkg/data.txt /out/
finalize:
  - from: /out
    to: /a
"#;

const CONSUMER: &str = r#"name: b
variant: host
shell: /bin/bash
dependencies:
  - stage: a
    from: /a/sub
    to: /in
steps:
  - install:
      - install -d /rootfs && cp /in/msg /rootfs/got && ls /in > /rootfs/listing
finalize:
  - from: /rootfs
    to: /
"#;

#[test]
fn build_merges_dependency_from_to_and_finalizes_output() {
    let d = project(&[
        ("a/pkg.yaml", PRODUCER),
        ("a/data.txt", "data\n"),
        ("b/pkg.yaml", CONSUMER),
    ]);
    let out = build(d.path(), &["b"]);
    ok(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "b\t_out/b\n");
    // Only /a/sub of a's output was merged, at /in.
    assert_eq!(read(d.path(), "_out/b/listing"), "msg\n");
    assert_eq!(
        read(d.path(), "_out/b/got"),
        "hello bar a x86_64 x86_64-talos-linux-musl\n"
    );
    let meta = fs::symlink_metadata(d.path().join("_out/b/got")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    assert!(d.path().join("_out/logs/a/1-prepare.log").is_file());
}

#[test]
fn finalize_sets_timestamps_from_source_date_epoch() {
    let d = project(&[("a/pkg.yaml", PRODUCER), ("a/data.txt", "data\n")]);
    ok(&build(
        d.path(),
        &["a", "--build-arg", "SOURCE_DATE_EPOCH=1700000000"],
    ));
    use std::os::unix::fs::MetadataExt;
    for f in ["_out/a/a/data.txt", "_out/a/a/sub/msg", "_out/a/a/sub"] {
        let m = fs::symlink_metadata(d.path().join(f)).unwrap();
        assert_eq!(m.mtime(), 1_700_000_000, "{f}");
    }
}

#[test]
fn steps_see_only_builtins_pkg_name_and_step_env() {
    let d = project(&[(
        "e/pkg.yaml",
        r#"name: e
variant: host
shell: /bin/bash
steps:
  - env:
      ONE: "1"
  - env:
      TWO: "2"
    install:
      - install -d /o && env | sort > /o/env && pwd > /o/pwd
finalize:
  - from: /o
    to: /
"#,
    )]);
    ok(&build(d.path(), &["e"]));
    let env = read(d.path(), "_out/e/env");
    let names: Vec<&str> = env
        .lines()
        .map(|l| l.split('=').next().unwrap())
        .filter(|n| !["PWD", "SHLVL", "_", "OLDPWD"].contains(n))
        .collect();
    assert_eq!(
        names,
        [
            "ARCH", "BUILD", "CFLAGS", "CXXFLAGS", "HOST", "LDFLAGS", "ONE", "PATH", "PKG_NAME",
            "SYSROOT", "TARGET", "TWO", "VENDOR"
        ]
    );
    assert!(env.contains("PKG_NAME=e\n") && env.contains("ONE=1\n"));
    assert_eq!(read(d.path(), "_out/e/pwd"), "/tmp/build\n");
}

fn net_pkg(network: &str) -> String {
    format!(
        r#"name: n
variant: host
shell: /bin/bash
steps:
  - network: {network}
    install:
      - install -d /o && grep -c ':' /proc/net/dev > /o/interfaces
finalize:
  - from: /o
    to: /
"#
    )
}

#[test]
fn network_none_leaves_only_loopback() {
    let host_ifaces = fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .filter(|l| l.contains(':'))
        .count();
    let d = project(&[("n/pkg.yaml", &net_pkg("none"))]);
    ok(&build(d.path(), &["n"]));
    assert_eq!(read(d.path(), "_out/n/interfaces"), "1\n");
    let d = project(&[("n/pkg.yaml", &net_pkg("default"))]);
    ok(&build(d.path(), &["n"]));
    assert_eq!(
        read(d.path(), "_out/n/interfaces"),
        format!("{host_ifaces}\n")
    );
}

#[test]
fn a_host_stage_without_shell_runs_its_items_in_bash_with_pipefail() {
    let d = project(&[
        (
            "h/pkg.yaml",
            r#"name: h
variant: host
steps:
  - install:
      - install -d /o && echo "$0" > /o/shell
      - if false | true; then echo off; else echo on; fi > /o/pipefail
      - printf 'b\na\n' | sort | head -n 1 > /o/first
finalize:
  - from: /o
    to: /
"#,
        ),
        (
            "x/pkg.yaml",
            r#"name: x
variant: host
shell: /usr/bin/bash
steps:
  - install:
      - install -d /o && echo "$0" > /o/shell
finalize:
  - from: /o
    to: /
"#,
        ),
    ]);
    ok(&build(d.path(), &["h", "x"]));
    assert_eq!(read(d.path(), "_out/h/shell"), "/bin/bash\n");
    assert_eq!(read(d.path(), "_out/h/pipefail"), "on\n");
    assert_eq!(read(d.path(), "_out/h/first"), "a\n");
    // An explicit `shell:` is used as written.
    assert_eq!(read(d.path(), "_out/x/shell"), "/usr/bin/bash\n");
}

#[test]
fn a_step_reading_stdin_fails_at_once_naming_the_step() {
    let d = project(&[(
        "s/pkg.yaml",
        r#"name: s
variant: host
shell: /bin/bash
steps:
  - build:
      - echo before
      - echo "question?"; read answer; echo "got $answer"
finalize:
  - from: /tmp/build
    to: /
"#,
    )]);
    // Not a timing assertion: a watchdog so a regression fails instead of
    // hanging the test run.
    let mut child = Command::new(env!("CARGO_BIN_EXE_composer"))
        .args(["--root", "p", "build", "--cache-dir", "cache", "s"])
        .current_dir(d.path())
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            panic!("a step reading stdin hung the build");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let e = failed(&out);
    assert!(e.contains("step 1 build[1] read from stdin"), "{e}");
    assert!(e.contains("read answer"), "{e}");
    assert!(!d.path().join("_out/s").exists());
}

#[test]
fn a_failing_test_step_fails_the_build_and_caches_nothing() {
    let d = project(&[(
        "t/pkg.yaml",
        r#"name: t
variant: host
shell: /bin/bash
steps:
  - install:
      - install -d /o && echo payload > /o/f
    test:
      - echo "checking"; test -f /o/missing
finalize:
  - from: /o
    to: /
"#,
    )]);
    let e = failed(&build(d.path(), &["t"]));
    assert!(e.contains("step 1 test[0] failed with exit code 1"), "{e}");
    assert!(
        e.contains("| checking"),
        "the log's last lines are shown: {e}"
    );
    assert!(e.contains("_out/logs/t/1-test.log"), "{e}");
    assert!(!d.path().join("_out/t").exists());
    let stages = fs::read_dir(d.path().join("cache/stages")).unwrap().count();
    assert_eq!(stages, 0, "a failed stage is not cached");
}

#[test]
fn test_steps_changes_are_discarded() {
    let d = project(&[(
        "t/pkg.yaml",
        r#"name: t
variant: host
shell: /bin/bash
steps:
  - install:
      - install -d /o && echo payload > /o/f
    test:
      - echo scribble > /o/f && touch /o/extra
finalize:
  - from: /o
    to: /
"#,
    )]);
    ok(&build(d.path(), &["t"]));
    assert_eq!(read(d.path(), "_out/t/f"), "payload\n");
    assert!(!d.path().join("_out/t/extra").exists());
}

fn source_pkg(url: &str, sha256: &str, sha512: &str) -> String {
    format!(
        r#"name: src
variant: host
shell: /bin/bash
steps:
  - sources:
      - url: {url}
        destination: in/payload.txt
        sha256: {sha256}
        sha512: {sha512}
    install:
      - install -d /o && cp in/payload.txt /o/
finalize:
  - from: /o
    to: /
"#
    )
}

fn digests(bytes: &[u8]) -> (String, String) {
    use sha2::{Digest, Sha256, Sha512};
    (
        hex::encode(Sha256::digest(bytes)),
        hex::encode(Sha512::digest(bytes)),
    )
}

#[test]
fn a_checksum_mismatch_names_the_url_and_both_digests_and_caches_nothing() {
    let d = tempfile::tempdir().unwrap();
    let payload = d.path().join("payload.txt");
    fs::write(&payload, "the real content\n").unwrap();
    let (good256, good512) = digests(b"the real content\n");
    let (bad256, _) = digests(b"something else\n");
    let url = format!("file://{}", payload.display());
    let p = project(&[("src/pkg.yaml", &source_pkg(&url, &bad256, &good512))]);
    let e = failed(&build(p.path(), &["src"]));
    assert!(e.contains(&format!("checksum mismatch for {url}")), "{e}");
    assert!(e.contains(&format!("expected sha256 {bad256}")), "{e}");
    assert!(e.contains(&format!("got      sha256 {good256}")), "{e}");
    let cached = fs::read_dir(p.path().join("cache/downloads/sha256"))
        .unwrap()
        .count();
    assert_eq!(cached, 0);
    let tmp = fs::read_dir(p.path().join("cache/downloads/tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0);

    // The right digests: fetched, verified, cached, used.
    let p = project(&[("src/pkg.yaml", &source_pkg(&url, &good256, &good512))]);
    ok(&build(p.path(), &["src"]));
    assert_eq!(read(p.path(), "_out/src/payload.txt"), "the real content\n");
    assert!(
        p.path()
            .join(format!("cache/downloads/sha256/{good256}"))
            .is_file()
    );
}

/// Serves `body` over HTTP on 127.0.0.1 for a bounded number of requests.
fn serve(body: &'static [u8], requests: usize) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(body);
        }
    });
    format!("http://{addr}/payload.txt")
}

#[test]
fn http_sources_are_downloaded_and_offline_uses_only_the_cache_or_a_mirror() {
    const BODY: &[u8] = b"served over http\n";
    let (s256, s512) = digests(BODY);
    let url = serve(BODY, 1);
    let p = project(&[("src/pkg.yaml", &source_pkg(&url, &s256, &s512))]);
    // --offline with an empty cache: refused, no network.
    let e = failed(&build(p.path(), &["src", "--offline"]));
    assert!(e.contains("--offline forbids downloading"), "{e}");
    ok(&build(p.path(), &["src"]));
    assert_eq!(read(p.path(), "_out/src/payload.txt"), "served over http\n");

    // A mirror directory stands in for an unreachable upstream, offline.
    let mirror = tempfile::tempdir().unwrap();
    fs::write(mirror.path().join("payload.txt"), BODY).unwrap();
    let q = project(&[(
        "src/pkg.yaml",
        &source_pkg("http://127.0.0.1:9/payload.txt", &s256, &s512),
    )]);
    let m = mirror.path().to_str().unwrap();
    ok(&build(
        q.path(),
        &["src", "--offline", "--source-mirror", m],
    ));
    assert_eq!(read(q.path(), "_out/src/payload.txt"), "served over http\n");
}

#[test]
fn a_second_build_hits_the_cache_and_misses_are_explained() {
    let d = project(&[
        ("a/pkg.yaml", PRODUCER),
        ("a/data.txt", "data\n"),
        ("b/pkg.yaml", CONSUMER),
    ]);
    let e = ok(&build(d.path(), &["-v", "b"]));
    assert!(
        e.contains("a: to build, because:\n    never built with this cache"),
        "{e}"
    );
    let e = ok(&build(d.path(), &["-v", "b"]));
    assert!(e.contains("a: cached") && e.contains("b: cached"), "{e}");
    assert!(e.contains("built 0 stage(s), 2 cached"), "{e}");

    // A step env change: a misses, and b because its input changed.
    let changed = PRODUCER.replace("FOO: bar", "FOO: baz");
    fs::write(d.path().join("p/a/pkg.yaml"), changed).unwrap();
    let e = ok(&build(d.path(), &["-v", "b"]));
    assert!(e.contains("step 1 env FOO changed (bar → baz)"), "{e}");
    assert!(e.contains("dependency a (/a/sub → /in) changed"), "{e}");

    // A package file changes: named.
    fs::write(d.path().join("p/a/data.txt"), "other\n").unwrap();
    let e = ok(&build(d.path(), &["-v", "b"]));
    assert!(e.contains("file /pkg/data.txt changed"), "{e}");

    // Moving the checkout or touching files changes nothing.
    let moved = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .args(["-a", "--no-preserve=timestamps"])
        .arg(d.path().join("p"))
        .arg(moved.path())
        .status()
        .unwrap();
    assert!(status.success());
    let cache = d.path().join("cache");
    let out = common::composer(
        moved.path(),
        &[
            "--root",
            "p",
            "build",
            "--cache-dir",
            cache.to_str().unwrap(),
            "-v",
            "b",
        ],
    );
    let e = ok(&out);
    assert!(e.contains("built 0 stage(s), 2 cached"), "{e}");
}

#[test]
fn touching_one_stage_rebuilds_only_it_and_its_dependants() {
    let d = project(&[
        ("a/pkg.yaml", PRODUCER),
        ("a/data.txt", "data\n"),
        ("b/pkg.yaml", CONSUMER),
        (
            "c/pkg.yaml",
            "name: c\nvariant: host\nshell: /bin/bash\ndependencies:\n  - stage: b\nsteps:\n  - install:\n      - install -d /o && cp /got /o/\nfinalize:\n  - from: /o\n    to: /\n",
        ),
    ]);
    ok(&build(d.path(), &["c"]));
    let changed = CONSUMER.replace("ls /in", "ls -1 /in");
    fs::write(d.path().join("p/b/pkg.yaml"), changed).unwrap();
    let e = ok(&build(d.path(), &["-v", "c"]));
    assert!(e.contains("a: cached"), "{e}");
    assert!(
        e.contains("b: to build") && e.contains("c: to build"),
        "{e}"
    );
    assert!(e.contains("built 2 stage(s), 1 cached"), "{e}");
}

#[test]
fn independent_stages_run_in_parallel() {
    let stage = |name: &str| {
        format!(
            "name: {name}\nvariant: host\nshell: /bin/bash\nsteps:\n  - install:\n      - install -d /o && date +%s.%N > /o/start && sleep 2 && date +%s.%N > /o/end\nfinalize:\n  - from: /o\n    to: /{name}\n"
        )
    };
    let d = project(&[
        ("x/pkg.yaml", &stage("x")),
        ("y/pkg.yaml", &stage("y")),
        (
            "both/pkg.yaml",
            "name: both\nvariant: scratch\ndependencies:\n  - stage: x\n  - stage: y\nfinalize:\n  - from: /\n    to: /\n",
        ),
    ]);
    ok(&build(d.path(), &["both", "--jobs", "2"]));
    let t = |f: &str| -> f64 {
        read(d.path(), &format!("_out/both/{f}"))
            .trim()
            .parse()
            .unwrap()
    };
    // The two intervals overlap: each started before the other ended.
    assert!(t("x/start") < t("y/end") && t("y/start") < t("x/end"));

    // With --jobs 1 they do not.
    fs::remove_dir_all(d.path().join("cache")).unwrap();
    ok(&build(d.path(), &["both", "--jobs", "1"]));
    assert!(t("x/end") <= t("y/start") || t("y/end") <= t("x/start"));
}

#[test]
fn a_build_killed_mid_step_leaves_a_cache_the_next_build_trusts() {
    let pkg = r#"name: k
variant: host
shell: /bin/bash
steps:
  - install:
      - install -d /o && echo partial > /o/f && if [ -e /pkg/slow ]; then echo waiting; sleep 60; fi; echo done > /o/f
finalize:
  - from: /o
    to: /
"#;
    let d = project(&[("k/pkg.yaml", pkg), ("k/slow", "")]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_composer"))
        .args(["--root", "p", "build", "--cache-dir", "cache", "k"])
        .current_dir(d.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let log = d.path().join("_out/logs/k/1-install.log");
    let start = Instant::now();
    while !fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("waiting")
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the step never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!d.path().join("_out/k").exists());

    fs::remove_file(d.path().join("p/k/slow")).unwrap();
    ok(&build(d.path(), &["k"]));
    assert_eq!(read(d.path(), "_out/k/f"), "done\n");
    for leftover in ["cache/tmp", "cache/work"] {
        let n = fs::read_dir(d.path().join(leftover)).unwrap().count();
        assert_eq!(n, 0, "{leftover} holds what the killed build left");
    }
    let v = common::composer(d.path(), &["cache", "--cache-dir", "cache", "verify"]);
    assert!(v.status.success(), "{}", stderr(&v));
}

#[test]
fn cache_verify_finds_a_damaged_entry_and_repair_removes_it() {
    let d = project(&[("a/pkg.yaml", PRODUCER), ("a/data.txt", "data\n")]);
    ok(&build(d.path(), &["a"]));
    let ls = common::composer(d.path(), &["cache", "--cache-dir", "cache", "ls"]);
    assert!(
        String::from_utf8_lossy(&ls.stdout).contains(" a "),
        "{ls:?}"
    );
    let entry = fs::read_dir(d.path().join("cache/stages"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    fs::write(entry.path().join("out/a/data.txt"), "tampered\n").unwrap();
    let v = common::composer(d.path(), &["cache", "--cache-dir", "cache", "verify"]);
    assert_eq!(v.status.code(), Some(1));
    assert!(stderr(&v).contains("a ("), "{}", stderr(&v));
    let r = common::composer(
        d.path(),
        &["cache", "--cache-dir", "cache", "verify", "--repair"],
    );
    assert!(r.status.success(), "{}", stderr(&r));
    let e = ok(&build(d.path(), &["-v", "a"]));
    assert!(e.contains("its output is no longer in the cache"), "{e}");
}

#[test]
fn an_unknown_target_is_a_user_error_before_anything_runs() {
    let d = project(&[("a/pkg.yaml", PRODUCER)]);
    let e = failed(&build(d.path(), &["nope"]));
    assert!(e.contains("nope"), "{e}");
    assert!(!d.path().join("cache").exists());
}

#[test]
fn a_host_stage_cannot_merge_into_the_hosts_directories() {
    let d = project(&[
        ("a/pkg.yaml", PRODUCER),
        ("a/data.txt", "x"),
        (
            "h/pkg.yaml",
            "name: h\nvariant: host\ndependencies:\n  - stage: a\n    to: /usr/local/a\nfinalize:\n  - from: /usr/local/a\n    to: /\n",
        ),
    ]);
    let e = failed(&build(d.path(), &["h"]));
    assert!(e.contains("/usr is the host's and read-only"), "{e}");
}

fn run(cmd: &str, dir: &Path) {
    common::sh(dir, cmd);
}

/// An OCI layout made by umoci: a busybox layer, then a layer that deletes
/// a file and replaces a directory (whiteouts).
fn busybox_layout(dir: &Path) {
    run(
        "umoci init --layout img && umoci new --image img:v1 && umoci unpack --image img:v1 b1 \
         && install -D -m 0755 /bin/busybox b1/rootfs/bin/busybox && ln -s busybox b1/rootfs/bin/sh \
         && mkdir -p b1/rootfs/etc b1/rootfs/data && echo keep > b1/rootfs/etc/keep \
         && echo gone > b1/rootfs/etc/gone && touch b1/rootfs/data/old1 b1/rootfs/data/old2 \
         && umoci repack --image img:v1 b1 \
         && umoci unpack --image img:v1 b2 && rm b2/rootfs/etc/gone \
         && rm -rf b2/rootfs/data && mkdir b2/rootfs/data && touch b2/rootfs/data/new \
         && umoci repack --image img:v1 b2",
        dir,
    );
}

#[test]
fn a_scratch_stage_runs_on_an_image_from_an_oci_layout_with_whiteouts_applied() {
    let d = project(&[(
        "i/pkg.yaml",
        r#"name: i
variant: scratch
shell: /bin/sh
dependencies:
  - image: oci:../img:v1
steps:
  - install:
      - mkdir -p /o && ls /etc > /o/etc && ls /data > /o/data && echo "$PKG_NAME" > /o/name
finalize:
  - from: /o
    to: /
"#,
    )]);
    busybox_layout(d.path());
    ok(&build(d.path(), &["i"]));
    assert_eq!(read(d.path(), "_out/i/etc"), "keep\n");
    assert_eq!(read(d.path(), "_out/i/data"), "new\n");
    assert_eq!(read(d.path(), "_out/i/name"), "i\n");
    // Cached by the manifest's digest: a second build is a hit.
    let e = ok(&build(d.path(), &["-v", "i"]));
    assert!(e.contains("i: cached"), "{e}");
}

const IMAGE_STAGE: &str = r#"name: i
variant: scratch
shell: /bin/sh
dependencies:
  - image: IMAGE
steps:
  - install:
      - mkdir -p /o && ls /etc > /o/etc && ls /data > /o/data
finalize:
  - from: /o
    to: /
"#;

#[test]
fn image_dependencies_come_from_a_registry_and_from_archives() {
    let registry = common::registry::Registry::start();
    let reference = format!("{}/tools/busybox:v1", registry.addr());
    let d = project(&[("i/pkg.yaml", &IMAGE_STAGE.replace("IMAGE", &reference))]);
    busybox_layout(d.path());
    // Offline and never pulled: refused, naming the reference.
    let e = failed(&build(d.path(), &["i", "--offline", "--insecure"]));
    assert!(e.contains(&reference) && e.contains("--offline"), "{e}");
    run(
        &format!("skopeo copy -q --dest-tls-verify=false oci:img:v1 docker://{reference}"),
        d.path(),
    );
    // A plain-HTTP registry needs --insecure, and says so.
    let e = failed(&build(d.path(), &["i"]));
    assert!(e.contains("--insecure"), "{e}");
    ok(&build(d.path(), &["i", "--insecure"]));
    assert_eq!(read(d.path(), "_out/i/etc"), "keep\n");
    assert_eq!(read(d.path(), "_out/i/data"), "new\n");
    // Offline, the copy pulled before is used.
    let e = ok(&build(d.path(), &["-v", "i", "--offline"]));
    assert!(e.contains("i: cached"), "{e}");

    // The same image as an oci-archive and a docker-archive.
    run(
        "skopeo copy -q oci:img:v1 oci-archive:img.tar:v1 && skopeo copy -q oci:img:v1 docker-archive:old.tar",
        d.path(),
    );
    for (image, expect_ok) in [
        ("oci-archive:../img.tar:v1", true),
        ("docker-archive:../old.tar", false),
    ] {
        fs::write(
            d.path().join("p/i/pkg.yaml"),
            IMAGE_STAGE.replace("IMAGE", image),
        )
        .unwrap();
        let o = build(d.path(), &["i"]);
        if expect_ok {
            ok(&o);
            assert_eq!(read(d.path(), "_out/i/data"), "new\n");
        } else {
            // skopeo 1.9 writes the pre-OCI docker save format.
            let e = failed(&o);
            assert!(e.contains("skopeo copy docker-archive:"), "{e}");
        }
    }
}

#[test]
fn a_damaged_image_layer_is_refused() {
    let d = project(&[(
        "i/pkg.yaml",
        "name: i\nvariant: scratch\ndependencies:\n  - image: oci:../img:v1\nfinalize:\n  - from: /etc\n    to: /\n",
    )]);
    busybox_layout(d.path());
    // Flip bytes in the largest blob (the busybox layer).
    let blobs = d.path().join("img/blobs/sha256");
    let biggest = fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = fs::read(&biggest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&biggest, bytes).unwrap();
    let e = failed(&build(d.path(), &["i"]));
    assert!(e.contains("blob sha256:"), "{e}");
    assert!(!d.path().join("_out/i").exists());
}

#[test]
fn an_unprivileged_user_builds_rootless_through_a_user_namespace() {
    use std::os::unix::fs::PermissionsExt;
    assert!(
        running_as_root(),
        "this test switches to the user nobody and needs to start as root"
    );
    let d = project(&[
        ("a/pkg.yaml", PRODUCER),
        ("a/data.txt", "data\n"),
        ("b/pkg.yaml", CONSUMER),
    ]);
    let bin = d.path().join("composer");
    fs::copy(env!("CARGO_BIN_EXE_composer"), &bin).unwrap();
    run("chmod -R a+rwX .", d.path());
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--", "env"])
        .arg(format!("HOME={}", d.path().display()))
        .args([
            "./composer",
            "--root",
            "p",
            "build",
            "--cache-dir",
            "cache",
            "b",
        ])
        .current_dir(d.path())
        .output()
        .unwrap();
    ok(&out);
    assert_eq!(
        read(d.path(), "_out/b/got"),
        "hello bar a x86_64 x86_64-talos-linux-musl\n"
    );
    use std::os::unix::fs::MetadataExt;
    let owner = fs::metadata(d.path().join("_out/b/got")).unwrap().uid();
    assert_ne!(owner, 0, "written by the unprivileged user");
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

#[test]
fn without_a_terminal_a_running_stage_reports_elapsed_time_phase_and_last_line() {
    let slow = r#"name: slow
variant: host
shell: /bin/bash
steps:
  - build:
      - echo compiling part one; sleep 4; echo compiling part two
    install:
      - install -d /out && touch /out/done
finalize:
  - from: /out
    to: /
"#;
    let d = project(&[("slow/pkg.yaml", slow)]);
    let e = ok(&build(d.path(), &["slow", "--progress-interval", "1"]));
    let beats: Vec<&str> = e
        .lines()
        .filter(|l| l.starts_with("slow: still running after "))
        .collect();
    assert!(beats.len() >= 2, "a heartbeat every second:\n{e}");
    assert!(
        beats
            .iter()
            .any(|l| l.contains("build") && l.contains("last output: compiling part one")),
        "phase and last line:\n{e}"
    );
    // The stage's end is reported as before, after its heartbeats.
    let end = e.find("slow: built in").expect("end line");
    assert!(e.find(beats[0]).unwrap() < end, "{e}");

    // With the default interval (30 s) a 4-second stage says nothing more.
    let d = project(&[("slow/pkg.yaml", slow)]);
    let quiet = ok(&build(d.path(), &["slow"]));
    assert!(!quiet.contains("still running"), "{quiet}");
}
