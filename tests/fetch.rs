//! Sources first: `composer build` fetches and checks every source of the
//! stages it will run before starting any, and names every one it cannot
//! get; `composer fetch` does only that, and with `--to` seeds a mirror
//! that an offline build on an empty cache builds from. Sources come from
//! `file://` paths and HTTP servers on 127.0.0.1 started here.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Output;

use tempfile::TempDir;

const PKGFILE: &str = "format: v1alpha2\n";

fn project(pkgs: &[(&str, &str)]) -> TempDir {
    common::project(PKGFILE, pkgs)
}

fn composer(dir: &Path, cmd: &str, args: &[&str]) -> Output {
    let mut all = vec!["--root", "p", cmd];
    all.extend_from_slice(args);
    common::composer(dir, &all)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(o: &Output) -> (String, String) {
    assert!(o.status.success(), "failed: {}", text(&o.stderr));
    (text(&o.stdout), text(&o.stderr))
}

fn failed(o: &Output) -> String {
    let e = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "expected exit 1: {e}");
    e
}

fn digests(bytes: &[u8]) -> (String, String) {
    use sha2::{Digest, Sha256, Sha512};
    (
        hex::encode(Sha256::digest(bytes)),
        hex::encode(Sha512::digest(bytes)),
    )
}

/// A source entry declaring `content`'s digests.
fn source(url: &str, dest: &str, content: &[u8]) -> String {
    let (s256, s512) = digests(content);
    format!(
        "      - url: {url}\n        destination: {dest}\n        sha256: {s256}\n        sha512: {s512}\n"
    )
}

/// A stage that copies its sources' destinations to its output; depends
/// on `dep` when given.
fn stage(name: &str, dep: Option<&str>, sources: &[String]) -> String {
    let deps = dep
        .map(|d| format!("dependencies:\n  - stage: {d}\n"))
        .unwrap_or_default();
    let sources = if sources.is_empty() {
        "  - prepare:\n      - echo running > ran\n".to_string()
    } else {
        format!(
            "  - sources:\n{}    prepare:\n      - echo running > ran\n",
            sources.concat()
        )
    };
    format!(
        "name: {name}\nvariant: host\nshell: /bin/bash\n{deps}steps:\n{sources}    install:\n      - install -d /o && cp -r . /o/{name}\nfinalize:\n  - from: /o\n    to: /\n"
    )
}

/// An HTTP server on 127.0.0.1 for a bounded number of requests: `path`
/// answers 200 with `body`, every other path 404. Returns its base URL.
fn serve(path: &'static str, body: &'static [u8], requests: usize) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let wanted = request.split_whitespace().nth(1).unwrap_or_default();
            let (status, body): (&str, &[u8]) = if wanted == path {
                ("200 OK", body)
            } else {
                ("404 Not Found", b"not here\n")
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(body);
        }
    });
    format!("http://{addr}")
}

/// A URL on 127.0.0.1 where nothing listens.
fn closed_port_url(name: &str) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/{name}")
}

#[test]
fn a_build_missing_a_later_stages_sources_fails_before_the_first_stage_names_them_all() {
    let files = tempfile::tempdir().unwrap();
    let missing = format!("file://{}/missing-1.0.tar.gz", files.path().display());
    let unreachable = closed_port_url("other-2.0.tar.gz");
    let server = serve("/present.tar.gz", b"present\n", 1);
    let not_found = format!("{server}/gone-3.0.tar.gz");
    let b_sources = [
        source(&missing, "m.tar.gz", b"missing\n"),
        source(&unreachable, "o.tar.gz", b"other\n"),
        source(&not_found, "g.tar.gz", b"gone\n"),
    ];
    let p = project(&[
        ("a/pkg.yaml", &stage("a", None, &[])),
        ("b/pkg.yaml", &stage("b", Some("a"), &b_sources)),
    ]);
    let e = failed(&composer(
        p.path(),
        "build",
        &["--cache-dir", "cache", "-j", "1", "a", "b"],
    ));
    assert!(e.contains("no stage was started"), "{e}");
    assert!(e.contains("3 of 3 sources cannot be had"), "{e}");
    assert!(
        e.contains(&format!("stage b: cannot fetch {missing}: not found")),
        "{e}"
    );
    assert!(
        e.contains(&format!("stage b: cannot fetch {unreachable}: unreachable")),
        "{e}"
    );
    assert!(
        e.contains(&format!(
            "stage b: cannot fetch {not_found}: not found (HTTP 404)"
        )),
        "{e}"
    );
    // Stage a, which needs nothing missing and comes first, never started.
    assert!(!e.contains("a: started"), "{e}");
    assert!(!p.path().join("_out/logs/a").exists());
    assert!(!p.path().join("_out/a").exists());

    // The same stage alone builds, and leaves the log checked above.
    ok(&composer(p.path(), "build", &["--cache-dir", "cache", "a"]));
    assert!(p.path().join("_out/logs/a").is_dir());
}

#[test]
fn a_checksum_mismatch_names_the_stage_url_expected_and_got_and_nothing_runs() {
    const SERVED: &[u8] = b"what the server has\n";
    let server = serve("/lib-1.0.tar.gz", SERVED, 1);
    let url = format!("{server}/lib-1.0.tar.gz");
    let (expected, _) = digests(b"what the definition says\n");
    let (got, _) = digests(SERVED);
    let files = tempfile::tempdir().unwrap();
    let fine = files.path().join("fine.txt");
    fs::write(&fine, "fine\n").unwrap();
    let fine_url = format!("file://{}", fine.display());
    let p = project(&[
        (
            "a/pkg.yaml",
            &stage("a", None, &[source(&fine_url, "fine.txt", b"fine\n")]),
        ),
        (
            "b/pkg.yaml",
            &stage(
                "b",
                Some("a"),
                &[source(&url, "lib.tar.gz", b"what the definition says\n")],
            ),
        ),
    ]);
    let e = failed(&composer(p.path(), "build", &["--cache-dir", "cache", "b"]));
    assert!(e.contains("1 of 2 sources cannot be had"), "{e}");
    assert!(
        e.contains(&format!("stage b: checksum mismatch for {url}")),
        "{e}"
    );
    assert!(e.contains(&format!("expected sha256 {expected}")), "{e}");
    assert!(e.contains(&format!("got      sha256 {got}")), "{e}");
    assert!(!p.path().join("_out/logs/a").exists());
    // The good source is cached; the bad one is not.
    let cached: Vec<String> = fs::read_dir(p.path().join("cache/downloads/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(cached, [digests(b"fine\n").0]);
}

#[test]
fn cached_stages_need_no_sources() {
    let files = tempfile::tempdir().unwrap();
    let input = files.path().join("input.txt");
    fs::write(&input, "input\n").unwrap();
    let url = format!("file://{}", input.display());
    let p = project(&[
        (
            "a/pkg.yaml",
            &stage("a", None, &[source(&url, "input.txt", b"input\n")]),
        ),
        ("b/pkg.yaml", &stage("b", Some("a"), &[])),
    ]);
    ok(&composer(p.path(), "build", &["--cache-dir", "cache", "a"]));
    // The source is gone from its URL and from the download cache: the
    // cached stage a does not need it, so b builds.
    fs::remove_file(&input).unwrap();
    fs::remove_dir_all(p.path().join("cache/downloads")).unwrap();
    let (_, e) = ok(&composer(
        p.path(),
        "build",
        &["--cache-dir", "cache", "a", "b"],
    ));
    assert!(e.contains("built 1 stage(s), 1 cached"), "{e}");
    // composer fetch wants every source of the plan, cached stages' too.
    let e = failed(&composer(p.path(), "fetch", &["--cache-dir", "cache", "b"]));
    assert!(
        e.contains(&format!("stage a: cannot fetch {url}: not found")),
        "{e}"
    );
}

#[test]
fn fetch_to_a_mirror_seeds_an_offline_build_on_an_empty_cache() {
    const SERVED: &[u8] = b"served over http\n";
    // One request: the mirror and the second fetch must not need the server.
    let server = serve("/driver-4.23.0.tar.gz", SERVED, 1);
    let http_url = format!("{server}/driver-4.23.0.tar.gz");
    let files = tempfile::tempdir().unwrap();
    let local = files.path().join("local-1.0.txt");
    fs::write(&local, "local file\n").unwrap();
    let file_url = format!("file://{}", local.display());
    let p = project(&[
        (
            "a/pkg.yaml",
            &stage(
                "a",
                None,
                &[source(&file_url, "local.txt", b"local file\n")],
            ),
        ),
        (
            "b/pkg.yaml",
            &stage(
                "b",
                Some("a"),
                &[source(&http_url, "driver.tar.gz", SERVED)],
            ),
        ),
    ]);
    let (out, e) = ok(&composer(
        p.path(),
        "fetch",
        &["--cache-dir", "c1", "b", "--to", "mirror"],
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with(&format!("copied   {file_url}  (a)  fetched from")),
        "{out}"
    );
    assert!(
        lines[1].starts_with(&format!("copied   {http_url}  (b)  fetched from")),
        "{out}"
    );
    assert!(
        e.contains("2 sources of 2 stages: 2 fetched, 0 cached"),
        "{e}"
    );
    assert!(e.contains("2 copied to mirror"), "{e}");
    for (content, name) in [
        (&b"local file\n"[..], "local-1.0.txt"),
        (SERVED, "driver-4.23.0.tar.gz"),
    ] {
        let (s256, _) = digests(content);
        assert_eq!(
            fs::read(p.path().join("mirror").join(&s256)).unwrap(),
            content
        );
        assert_eq!(
            fs::read(p.path().join("mirror").join(name)).unwrap(),
            content
        );
    }

    // Again: both in the download cache and in the mirror, no network.
    let (out, e) = ok(&composer(
        p.path(),
        "fetch",
        &["--cache-dir", "c1", "b", "--to", "mirror", "--offline"],
    ));
    assert!(
        out.lines()
            .all(|l| l.starts_with("cached ") && l.ends_with("(in the mirror already)")),
        "{out}"
    );
    assert!(e.contains("0 fetched, 2 cached"), "{e}");

    // The air-gapped side: an empty cache, no upstream at all, the mirror.
    fs::remove_file(&local).unwrap();
    let (_, e) = ok(&composer(
        p.path(),
        "build",
        &[
            "--cache-dir",
            "c2",
            "--offline",
            "--source-mirror",
            "mirror",
            "a",
            "b",
        ],
    ));
    assert!(e.contains("built 2 stage(s)"), "{e}");
    assert_eq!(
        fs::read(p.path().join("_out/b/b/driver.tar.gz")).unwrap(),
        SERVED
    );
    assert_eq!(
        fs::read_to_string(p.path().join("_out/a/a/local.txt")).unwrap(),
        "local file\n"
    );
}

#[test]
fn fetch_names_every_missing_source_and_writes_no_mirror() {
    let files = tempfile::tempdir().unwrap();
    let present = files.path().join("present.txt");
    fs::write(&present, "present\n").unwrap();
    let present_url = format!("file://{}", present.display());
    let missing = format!("file://{}/absent.txt", files.path().display());
    let unreachable = closed_port_url("far.tar.gz");
    let p = project(&[
        (
            "a/pkg.yaml",
            &stage("a", None, &[source(&present_url, "p.txt", b"present\n")]),
        ),
        (
            "b/pkg.yaml",
            &stage(
                "b",
                Some("a"),
                &[
                    source(&missing, "m.txt", b"absent\n"),
                    source(&unreachable, "f.tar.gz", b"far\n"),
                ],
            ),
        ),
    ]);
    let o = composer(
        p.path(),
        "fetch",
        &["--cache-dir", "c", "b", "--to", "mirror"],
    );
    let e = failed(&o);
    assert!(o.stdout.is_empty(), "{}", text(&o.stdout));
    assert!(e.contains("2 of 3 sources cannot be had"), "{e}");
    assert!(
        e.contains(&format!("stage b: cannot fetch {missing}: not found")),
        "{e}"
    );
    assert!(
        e.contains(&format!("stage b: cannot fetch {unreachable}: unreachable")),
        "{e}"
    );
    assert!(!p.path().join("mirror").exists());

    // --offline: local files only; the server is not even tried, and a
    // mirror that lacks a source is not what stops it.
    let empty_mirror = tempfile::tempdir().unwrap();
    let e = failed(&composer(
        p.path(),
        "fetch",
        &[
            "--cache-dir",
            "empty",
            "--offline",
            "--source-mirror",
            empty_mirror.path().to_str().unwrap(),
            "b",
        ],
    ));
    assert!(e.contains("2 of 3 sources cannot be had"), "{e}");
    assert!(
        e.contains(&format!(
            "stage b: {unreachable} is not in the download cache or a local mirror, and --offline forbids downloading it"
        )),
        "{e}"
    );
}

/// Stages a (source `first`) and b (sources `first` and `second`), the
/// two sources sharing the file name `v1.0.tar.gz`, each in its own
/// directory: `(project, first's dir, second's dir, first, second)`.
fn two_sources_one_file_name() -> (TempDir, TempDir, TempDir, String, String) {
    let one = tempfile::tempdir().unwrap();
    let two = tempfile::tempdir().unwrap();
    fs::write(one.path().join("v1.0.tar.gz"), "first project\n").unwrap();
    fs::write(two.path().join("v1.0.tar.gz"), "second project\n").unwrap();
    let first = format!("file://{}/v1.0.tar.gz", one.path().display());
    let second = format!("file://{}/v1.0.tar.gz", two.path().display());
    let p = project(&[
        (
            "a/pkg.yaml",
            &stage("a", None, &[source(&first, "x.tar.gz", b"first project\n")]),
        ),
        (
            "b/pkg.yaml",
            &stage(
                "b",
                Some("a"),
                &[
                    source(&first, "x.tar.gz", b"first project\n"),
                    source(&second, "y.tar.gz", b"second project\n"),
                ],
            ),
        ),
    ]);
    (p, one, two, first, second)
}

#[test]
fn a_source_declared_by_two_stages_is_fetched_once_and_shared_file_names_keep_the_first() {
    let (p, one, two, first, _) = two_sources_one_file_name();
    let (out, _) = ok(&composer(
        p.path(),
        "fetch",
        &["--cache-dir", "c", "b", "--to", "mirror"],
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].contains(&format!("{first}  (a, b)")), "{out}");
    let (second256, _) = digests(b"second project\n");
    assert!(
        lines[1].ends_with(&format!("as {second256} only: v1.0.tar.gz is {first}")),
        "{out}"
    );
    let mirror = p.path().join("mirror");
    assert_eq!(
        fs::read_to_string(mirror.join("v1.0.tar.gz")).unwrap(),
        "first project\n"
    );
    assert_eq!(
        fs::read_to_string(mirror.join(&second256)).unwrap(),
        "second project\n"
    );

    // The mirror serves both to an offline build (by sha256 first).
    fs::remove_dir_all(one.path()).unwrap();
    fs::remove_dir_all(two.path()).unwrap();
    ok(&composer(
        p.path(),
        "build",
        &[
            "--cache-dir",
            "c2",
            "--offline",
            "--source-mirror",
            "mirror",
            "b",
        ],
    ));
    assert_eq!(
        fs::read_to_string(p.path().join("_out/b/b/y.tar.gz")).unwrap(),
        "second project\n"
    );
}

#[test]
fn fetch_to_a_mirror_again_reports_every_source_there_already() {
    let (p, _one, _two, first, second) = two_sources_one_file_name();
    let fetch = ["--cache-dir", "c", "b", "--to", "mirror"];
    let (out, e) = ok(&composer(p.path(), "fetch", &fetch));
    assert!(
        out.lines().all(|l| l.starts_with("copied ")),
        "first time, both written: {out}"
    );
    assert!(e.contains("2 copied to mirror, 0 there already"), "{e}");

    // The second source is in the mirror by its sha256 only (its file name
    // is the first's): nothing is written for it either.
    let (out, e) = ok(&composer(p.path(), "fetch", &fetch));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with(&format!("cached   {first}  (a, b)"))
            && lines[0].ends_with("(in the mirror already)"),
        "{out}"
    );
    let (second256, _) = digests(b"second project\n");
    assert!(
        lines[1].starts_with(&format!("cached   {second}  (b)"))
            && lines[1].ends_with(&format!(
                "as {second256} only: v1.0.tar.gz is {first}  (in the mirror already)"
            )),
        "{out}"
    );
    assert!(e.contains("0 copied to mirror, 2 there already"), "{e}");

    let json = common::composer(
        p.path(),
        &[
            "--root",
            "p",
            "--json",
            "fetch",
            "--cache-dir",
            "c",
            "b",
            "--to",
            "mirror",
        ],
    );
    let (out, _) = ok(&json);
    let items: serde_json::Value = serde_json::from_str(&out).unwrap();
    let statuses: Vec<&str> = items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["cached", "cached"], "{out}");
}

#[test]
fn a_mirror_entry_that_cannot_be_replaced_fails_naming_it_and_leaves_no_temporary_file() {
    let files = tempfile::tempdir().unwrap();
    let local = files.path().join("tool-1.0.txt");
    fs::write(&local, "tool\n").unwrap();
    let url = format!("file://{}", local.display());
    let p = project(&[(
        "a/pkg.yaml",
        &stage("a", None, &[source(&url, "t.txt", b"tool\n")]),
    )]);
    // Where the source's sha256 entry goes, a directory: nothing can be
    // renamed over it.
    let (s256, _) = digests(b"tool\n");
    let mirror = p.path().join("mirror");
    fs::create_dir_all(mirror.join(&s256).join("in-the-way")).unwrap();
    let o = composer(
        p.path(),
        "fetch",
        &["--cache-dir", "c", "a", "--to", "mirror"],
    );
    let e = failed(&o);
    assert!(o.stdout.is_empty(), "{}", text(&o.stdout));
    assert!(e.contains(&format!("source mirror mirror/{s256}: ")), "{e}");
    let mut left: Vec<String> = fs::read_dir(&mirror)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, [s256], "only what was there before");
}

#[test]
fn a_missing_source_stops_a_build_before_its_signing_session_starts() {
    let files = tempfile::tempdir().unwrap();
    let driver = files.path().join("driver-1.0.tar.gz");
    let url = format!("file://{}", driver.display());
    // A session stage: it builds with the session's certificate.
    let mods = format!(
        "name: mods\nvariant: host\nshell: /bin/bash\nsteps:\n  - sources:\n{}    env:\n      SIGNING_CERT: /signing/certs/signing_key.x509\n    install:\n      - install -d /o && cp driver.tar.gz \"$SIGNING_CERT\" /o/\nfinalize:\n  - from: /o\n    to: /\n",
        source(&url, "driver.tar.gz", b"driver\n")
    );
    let p = project(&[("mods/pkg.yaml", &mods)]);
    let e = failed(&composer(p.path(), "build", &["--cache-dir", "c", "mods"]));
    assert!(e.contains("no stage was started"), "{e}");
    assert!(
        e.contains(&format!("stage mods: cannot fetch {url}: not found")),
        "{e}"
    );
    assert!(!e.contains("signing session"), "no key was made: {e}");

    // With the source at hand, the session starts and the stage builds
    // with its certificate.
    fs::write(&driver, "driver\n").unwrap();
    let (_, e) = ok(&composer(p.path(), "build", &["--cache-dir", "c", "mods"]));
    assert!(e.contains("signing session "), "{e}");
    assert!(e.contains("for mods"), "{e}");
    assert!(
        fs::read_to_string(p.path().join("_out/mods/signing_key.x509"))
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----"),
    );
}
