//! The registry client against a real `docker-registry` on 127.0.0.1,
//! with images made by umoci and checked by skopeo. Proxies written here
//! (127.0.0.1 only) cut connections, corrupt blobs and play a token
//! service.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use common::registry::{PASSWORD, Registry, USER};
use common::sh;
use composer::oci::Layout;
use composer::oci::reference::parse_registry;
use composer::oci::registry::{self, PullEvent, PushEvent, RegistryError, RegistryOptions};
use sha2::{Digest as _, Sha256};

/// Options for tests: plain HTTP, quick retries, no credential file of
/// the machine.
fn opts(dir: &Path) -> RegistryOptions {
    let auth = dir.join("no-credentials.json");
    std::fs::write(&auth, r#"{"auths":{}}"#).unwrap();
    RegistryOptions {
        insecure: true,
        auth_file: Some(auth),
        backoff: Duration::from_millis(20),
        io_timeout: Duration::from_secs(60),
        ..Default::default()
    }
}

fn quiet_push(_: PushEvent) {}
fn quiet_pull(_: PullEvent) {}

/// An image made by umoci in the layout `dir`, tagged `tag`, with one
/// layer per file.
fn umoci_image(dir: &Path, tag: &str, files: &[(&str, &[u8])]) {
    if !dir.join("index.json").exists() {
        sh(
            dir.parent().unwrap(),
            &format!("umoci init --layout {}", dir.display()),
        );
    }
    sh(dir, &format!("umoci new --image .:{tag}"));
    for (i, (path, content)) in files.iter().enumerate() {
        let src = dir.parent().unwrap().join(format!("insert-{tag}-{i}"));
        std::fs::write(&src, content).unwrap();
        sh(
            dir,
            &format!("umoci insert --image .:{tag} {} {path}", src.display()),
        );
    }
}

/// The digest `tag` names in a layout's `index.json`, read directly.
fn local_digest(dir: &Path, tag: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no tag {tag} in {index}"))["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn sha256_file(path: &Path) -> String {
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
    )
}

fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `skopeo inspect`'s digest of an image in the registry.
fn skopeo_digest(reference: &str) -> String {
    let out = skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["Digest"].as_str().unwrap().to_string()
}

/// A layout with one umoci image tagged `t`.
fn simple_image(work: &Path) -> PathBuf {
    let src = work.join("src");
    umoci_image(
        &src,
        "t",
        &[
            ("/etc/hello.txt", b"hello from composer\n"),
            ("/usr/share/data.bin", &[7u8; 70_000]),
        ],
    );
    src
}

#[test]
fn push_is_seen_by_skopeo_with_the_local_digest() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let src = simple_image(work.path());
    let dest = reg.reference("composer/hello:1.0");
    let events = Mutex::new(Vec::new());
    let pushed = registry::push(
        &Layout::open(&src).unwrap(),
        Some("t"),
        &dest,
        &opts(work.path()),
        &|e| events.lock().unwrap().push(e),
    )
    .unwrap();
    let local = local_digest(&src, "t");
    assert_eq!(pushed.digest.to_string(), local);
    assert_eq!(pushed.reference.digest.as_deref(), Some(local.as_str()));
    assert_eq!(
        pushed.uploaded.len(),
        3,
        "config and two layers: {pushed:?}"
    );
    assert!(pushed.skipped.is_empty());
    let events = events.into_inner().unwrap();
    assert!(
        events.iter().any(
            |e| matches!(e, PushEvent::ManifestPushed { reference, .. } if reference == "1.0")
        )
    );
    assert_eq!(
        skopeo_digest(&format!("{}/composer/hello:1.0", reg.addr())),
        local
    );

    let copy = work.path().join("copy");
    skopeo(&[
        "copy",
        "--insecure-policy",
        "--src-tls-verify=false",
        &format!("docker://{}/composer/hello:1.0", reg.addr()),
        &format!("oci:{}:t", copy.display()),
    ]);
    assert_eq!(local_digest(&copy, "t"), local);
    sh(
        work.path(),
        &format!("umoci unpack --image {}:t bundle", copy.display()),
    );
    assert_eq!(
        std::fs::read(work.path().join("bundle/rootfs/etc/hello.txt")).unwrap(),
        b"hello from composer\n"
    );
}

#[test]
fn pushing_again_skips_every_blob() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let src = simple_image(work.path());
    let layout = Layout::open(&src).unwrap();
    let o = opts(work.path());
    let first =
        registry::push(&layout, Some("t"), &reg.reference("a/b:1"), &o, &quiet_push).unwrap();
    let second =
        registry::push(&layout, Some("t"), &reg.reference("a/b:2"), &o, &quiet_push).unwrap();
    assert!(second.uploaded.is_empty(), "{second:?}");
    let mut a = first.uploaded.clone();
    let mut b = second.skipped.clone();
    a.sort_by_key(|d| d.to_string());
    b.sort_by_key(|d| d.to_string());
    assert_eq!(a, b);
    assert_eq!(first.digest, second.digest);
}

#[test]
fn pull_round_trips_a_pushed_image_that_umoci_unpacks() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let src = simple_image(work.path());
    let o = opts(work.path());
    let r = reg.reference("composer/hello:1.0");
    registry::push(&Layout::open(&src).unwrap(), Some("t"), &r, &o, &quiet_push).unwrap();

    let out = work.path().join("pulled");
    let dest = Layout::create(&out).unwrap();
    let desc = registry::pull(&r, None, &dest, "p", &o, &quiet_pull).unwrap();
    assert_eq!(desc.digest().to_string(), local_digest(&src, "t"));
    assert_eq!(local_digest(&out, "p"), local_digest(&src, "t"));
    sh(
        work.path(),
        &format!("umoci unpack --image {}:p bundle", out.display()),
    );
    let data = std::fs::read(work.path().join("bundle/rootfs/usr/share/data.bin")).unwrap();
    assert_eq!(data, vec![7u8; 70_000]);

    // Pulling again downloads nothing.
    let events = Mutex::new(Vec::new());
    registry::pull(&r, None, &dest, "p", &o, &|e| {
        events.lock().unwrap().push(e)
    })
    .unwrap();
    let events = events.into_inner().unwrap();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, PullEvent::BlobStarted { .. })),
        "{events:?}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, PullEvent::BlobPresent { .. }))
            .count(),
        3
    );
}

#[test]
fn pull_by_digest_stores_the_exact_manifest() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let src = simple_image(work.path());
    let o = opts(work.path());
    let pushed = registry::push(
        &Layout::open(&src).unwrap(),
        Some("t"),
        &reg.reference("x/y:v"),
        &o,
        &quiet_push,
    )
    .unwrap();
    let by_digest = parse_registry(&format!("{}/x/y@{}", reg.addr(), pushed.digest)).unwrap();
    let out = work.path().join("pulled");
    let desc = registry::pull(
        &by_digest,
        None,
        &Layout::create(&out).unwrap(),
        "d",
        &o,
        &quiet_pull,
    )
    .unwrap();
    assert_eq!(desc.digest(), &pushed.digest);
    let manifest = local_digest(&src, "t");
    assert_eq!(
        std::fs::read(blob_path(&out, &manifest)).unwrap(),
        std::fs::read(blob_path(&src, &manifest)).unwrap()
    );

    let unknown = parse_registry(&format!("{}/x/y@sha256:{}", reg.addr(), "1".repeat(64))).unwrap();
    let err = registry::pull(
        &unknown,
        None,
        &Layout::create(&out).unwrap(),
        "u",
        &o,
        &quiet_pull,
    )
    .unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
    assert!(err.to_string().contains("MANIFEST_UNKNOWN"), "{err}");
}

#[test]
fn pull_accepts_docker_schema2_images() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let src = simple_image(work.path());
    let remote = format!("{}/docker/v2s2:1", reg.addr());
    skopeo(&[
        "copy",
        "--insecure-policy",
        "--dest-tls-verify=false",
        "--format",
        "v2s2",
        &format!("oci:{}:t", src.display()),
        &format!("docker://{remote}"),
    ]);
    let o = opts(work.path());
    let out = work.path().join("pulled");
    let desc = registry::pull(
        &parse_registry(&remote).unwrap(),
        Some("linux/amd64"),
        &Layout::create(&out).unwrap(),
        "d",
        &o,
        &quiet_pull,
    )
    .unwrap();
    assert_eq!(desc.media_type().to_string(), registry::DOCKER_MANIFEST);
    assert_eq!(desc.digest().to_string(), skopeo_digest(&remote));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob_path(&out, desc.digest().as_ref())).unwrap())
            .unwrap();
    for layer in manifest["layers"].as_array().unwrap() {
        let d = layer["digest"].as_str().unwrap();
        assert_eq!(sha256_file(&blob_path(&out, d)), d);
    }
    // A single-platform image for another platform is refused.
    let err = registry::pull(
        &parse_registry(&remote).unwrap(),
        Some("linux/s390x"),
        &Layout::create(&work.path().join("other")).unwrap(),
        "d",
        &o,
        &quiet_pull,
    )
    .unwrap_err();
    assert!(matches!(err, RegistryError::NoPlatform { .. }), "{err}");
    assert!(err.to_string().contains("linux/amd64"), "{err}");

    // And pushed back from the layout as it is.
    let back = registry::push(
        &Layout::open(&out).unwrap(),
        Some("d"),
        &reg.reference("docker/back:1"),
        &o,
        &quiet_push,
    )
    .unwrap();
    assert_eq!(back.digest, *desc.digest());
    assert_eq!(
        skopeo_digest(&format!("{}/docker/back:1", reg.addr())),
        desc.digest().to_string()
    );
}

/// Two umoci images (amd64, arm64) and an index over them tagged `multi`.
fn multi_arch_image(work: &Path) -> PathBuf {
    let src = work.join("multi");
    umoci_image(&src, "amd", &[("/arch", b"amd64\n")]);
    umoci_image(&src, "arm", &[("/arch", b"arm64\n")]);
    sh(&src, "umoci config --image .:arm --architecture arm64");
    let entry = |tag: &str, arch: &str| {
        let digest = local_digest(&src, tag);
        let size = std::fs::metadata(blob_path(&src, &digest)).unwrap().len();
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": size,
            "platform": {"os": "linux", "architecture": arch},
        })
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry("amd", "amd64"), entry("arm", "arm64")],
    });
    let bytes = serde_json::to_vec(&index).unwrap();
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    std::fs::write(blob_path(&src, &digest), &bytes).unwrap();
    let mut top: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("index.json")).unwrap()).unwrap();
    top["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest,
            "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }));
    std::fs::write(src.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    src
}

#[test]
fn multi_arch_index_is_pushed_whole_and_pulled_per_platform() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let src = multi_arch_image(work.path());
    let o = opts(work.path());
    let r = reg.reference("composer/multi:1");
    let pushed = registry::push(
        &Layout::open(&src).unwrap(),
        Some("multi"),
        &r,
        &o,
        &quiet_push,
    )
    .unwrap();
    let index_digest = local_digest(&src, "multi");
    assert_eq!(pushed.digest.to_string(), index_digest);
    assert_eq!(pushed.manifests.len(), 3, "two children, then the index");
    assert_eq!(pushed.manifests[2].to_string(), index_digest);
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/composer/multi:1", reg.addr()),
    ]);
    assert_eq!(
        raw.as_bytes(),
        std::fs::read(blob_path(&src, &index_digest)).unwrap()
    );

    let arm = work.path().join("arm");
    let desc = registry::pull(
        &r,
        Some("linux/arm64"),
        &Layout::create(&arm).unwrap(),
        "a",
        &o,
        &quiet_pull,
    )
    .unwrap();
    assert_eq!(desc.digest().to_string(), local_digest(&src, "arm"));
    assert_eq!(
        desc.platform().as_ref().unwrap().architecture().to_string(),
        "arm64"
    );
    assert_eq!(local_digest(&arm, "a"), local_digest(&src, "arm"));
    assert!(!blob_path(&arm, &local_digest(&src, "amd")).exists());
    sh(
        work.path(),
        &format!("umoci unpack --image {}:a arm-bundle", arm.display()),
    );
    assert_eq!(
        std::fs::read(work.path().join("arm-bundle/rootfs/arch")).unwrap(),
        b"arm64\n"
    );

    let all = work.path().join("all");
    let desc = registry::pull(
        &r,
        None,
        &Layout::create(&all).unwrap(),
        "m",
        &o,
        &quiet_pull,
    )
    .unwrap();
    assert_eq!(desc.digest().to_string(), index_digest);
    for tag in ["amd", "arm"] {
        assert!(blob_path(&all, &local_digest(&src, tag)).exists());
    }

    let err = registry::pull(
        &r,
        Some("linux/s390x"),
        &Layout::create(&all).unwrap(),
        "z",
        &o,
        &quiet_pull,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}/composer/multi:1: no manifest for platform linux/s390x (available: linux/amd64, linux/arm64)",
            reg.addr()
        )
    );
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A listener on 127.0.0.1, served by a thread per connection until
/// dropped.
struct Proxy {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(listener: TcpListener, handle: impl Fn(TcpStream) + Send + Sync + 'static) -> Proxy {
    let port = listener.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let handle = Arc::new(handle);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stopped.load(Ordering::SeqCst) {
                break;
            }
            if let Ok(conn) = conn {
                let handle = handle.clone();
                std::thread::spawn(move || handle(conn));
            }
        }
    });
    Proxy { port, stop }
}

/// Sends `req` to the registry on `upstream` and returns its whole answer.
fn forward(upstream: u16, req: &Request) -> Vec<u8> {
    let mut up = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.path);
    for (k, v) in &req.headers {
        if !k.eq_ignore_ascii_case("connection") && !k.eq_ignore_ascii_case("authorization") {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str("Connection: close\r\n\r\n");
    up.write_all(head.as_bytes()).unwrap();
    up.write_all(&req.body).unwrap();
    let mut resp = Vec::new();
    up.read_to_end(&mut resp).unwrap();
    resp
}

/// A header of a raw HTTP answer.
fn answer_header(resp: &[u8], name: &str) -> Option<String> {
    let end = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
    String::from_utf8_lossy(&resp[..end]).lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// Replaces a header of a raw HTTP answer.
fn set_answer_header(resp: &mut Vec<u8>, name: &str, value: &str) {
    let end = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&resp[..end]).to_string();
    let lines: Vec<String> = head
        .lines()
        .map(|l| match l.split_once(':') {
            Some((k, _)) if k.eq_ignore_ascii_case(name) => format!("{k}: {value}"),
            _ => l.to_string(),
        })
        .collect();
    let mut out = lines.join("\r\n").into_bytes();
    out.extend_from_slice(&resp[end..]);
    *resp = out;
}

/// An HTTP proxy handling one request per connection: `handle` gets the
/// request and a way to forward it to the registry, and returns the
/// answer to send (`None`: close the connection without one).
fn http_proxy(
    listener: TcpListener,
    upstream: u16,
    handle: impl Fn(&mut Request, &dyn Fn(&Request) -> Vec<u8>) -> Option<Vec<u8>>
    + Send
    + Sync
    + 'static,
) -> Proxy {
    serve(listener, move |mut client| {
        let mut reader = BufReader::new(client.try_clone().unwrap());
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let mut req = Request {
            method,
            path,
            headers,
            body: Vec::new(),
        };
        let len: usize = req
            .header("content-length")
            .map_or(0, |l| l.parse().unwrap());
        req.body = vec![0u8; len];
        reader.read_exact(&mut req.body).unwrap();
        if let Some(answer) = handle(&mut req, &|r| forward(upstream, r)) {
            let _ = client.write_all(&answer);
        }
        let _ = client.shutdown(Shutdown::Both);
    })
}

fn blob_layout_is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir.join("blobs/sha256")).unwrap().count() == 0
}

#[test]
fn pull_refuses_a_corrupted_blob_and_stores_nothing() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let src = simple_image(work.path());
    let o = opts(work.path());
    registry::push(
        &Layout::open(&src).unwrap(),
        Some("t"),
        &reg.reference("c/d:1"),
        &o,
        &quiet_push,
    )
    .unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = http_proxy(listener, reg.port, |req, forward| {
        let mut answer = forward(req);
        let body_at = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        if req.method == "GET"
            && req.path.contains("/blobs/sha256:")
            && answer.starts_with(b"HTTP/1.1 200")
            && answer.len() > body_at
        {
            *answer.last_mut().unwrap() ^= 0x01;
        }
        Some(answer)
    });
    let through = parse_registry(&format!("127.0.0.1:{}/c/d:1", proxy.port)).unwrap();
    let out = work.path().join("pulled");
    let dest = Layout::create(&out).unwrap();
    let err = registry::pull(&through, None, &dest, "p", &o, &quiet_pull).unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains("nothing was stored"), "{err}");
    assert!(blob_layout_is_empty(&out), "a corrupted pull left blobs");
    assert!(
        dest.resolve(Some("p")).is_err(),
        "a failed pull set the tag"
    );
}

/// The head length and `Content-Length` of the request at the start of
/// `bytes`.
fn request_size(bytes: &[u8]) -> Option<(usize, usize)> {
    let head_len = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&bytes[..head_len]).to_string();
    let len = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        })
        .and_then(|(_, v)| v.trim().parse().ok())?;
    Some((head_len, len))
}

/// A TCP proxy that cuts the connection (both ways) of the `nth` upload
/// `PATCH` carrying more than 1 MiB once `cut_after` bytes of it went to
/// the registry.
fn cutting_proxy(upstream: u16, nth: usize, cut_after: usize) -> (Proxy, Arc<AtomicBool>) {
    let fired = Arc::new(AtomicBool::new(false));
    let fired_here = fired.clone();
    let seen = Arc::new(AtomicUsize::new(0));
    let proxy = serve(TcpListener::bind("127.0.0.1:0").unwrap(), move |client| {
        let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
            return;
        };
        let (mut down_r, mut down_w) = (up.try_clone().unwrap(), client.try_clone().unwrap());
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut down_r, &mut down_w);
            let _ = down_w.shutdown(Shutdown::Both);
        });
        let (mut from, mut to) = (client, up);
        let mut buf = vec![0u8; 64 << 10];
        // Bytes still to forward before the cut.
        let mut remaining: Option<usize> = None;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if remaining.is_none()
                && let Some(p) = buf[..n].windows(10).position(|w| w == b"PATCH /v2/")
                && request_size(&buf[p..n]).is_some_and(|(_, len)| len > 1 << 20)
                && seen.fetch_add(1, Ordering::SeqCst) + 1 == nth
            {
                fired_here.store(true, Ordering::SeqCst);
                remaining = Some(p + cut_after);
            }
            let mut limit = n;
            if let Some(r) = remaining {
                limit = n.min(r);
                remaining = Some(r - limit);
            }
            if to.write_all(&buf[..limit]).is_err() || remaining == Some(0) {
                break;
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
    (proxy, fired)
}

/// A layout tagged `t` whose one layer is 5 MiB of random bytes.
fn big_image(work: &Path) -> PathBuf {
    let src = work.join("src");
    sh(work, "head -c 5242880 /dev/urandom > random.bin");
    let random = std::fs::read(work.join("random.bin")).unwrap();
    umoci_image(&src, "t", &[("/random.bin", &random)]);
    src
}

/// The registry (without a proxy) serves `tag` completely: skopeo copies
/// it, and every layer has its digest and size.
fn assert_complete_in_registry(reg: &Registry, repo_tag: &str, src: &Path, work: &Path) {
    let direct = format!("{}/{repo_tag}", reg.addr());
    assert_eq!(skopeo_digest(&direct), local_digest(src, "t"));
    let copy = work.join("copy");
    skopeo(&[
        "copy",
        "--insecure-policy",
        "--src-tls-verify=false",
        &format!("docker://{direct}"),
        &format!("oci:{}:t", copy.display()),
    ]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob_path(src, &local_digest(src, "t"))).unwrap())
            .unwrap();
    for layer in manifest["layers"].as_array().unwrap() {
        let d = layer["digest"].as_str().unwrap();
        assert_eq!(sha256_file(&blob_path(&copy, d)), d);
        assert_eq!(
            std::fs::metadata(blob_path(&copy, d)).unwrap().len(),
            layer["size"].as_u64().unwrap()
        );
    }
}

/// docker-registry 2.8 keeps the part of a broken `PATCH` it received but
/// not in the upload's state, and then refuses the session: the client
/// learns that from `GET <location>` and sends the blob again.
#[test]
fn push_resumes_after_connection_cut_mid_blob() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let src = big_image(work.path());
    let (proxy, fired) = cutting_proxy(reg.port, 2, 700_000);
    let through = parse_registry(&format!("127.0.0.1:{}/big/blob:1", proxy.port)).unwrap();
    let o = RegistryOptions {
        chunk_size: 2 << 20,
        ..opts(work.path())
    };
    let events = Mutex::new(Vec::new());
    let pushed = registry::push(
        &Layout::open(&src).unwrap(),
        Some("t"),
        &through,
        &o,
        &|e| events.lock().unwrap().push(e),
    )
    .unwrap();
    assert!(fired.load(Ordering::SeqCst), "the proxy never cut a PATCH");
    let retries: Vec<PushEvent> = events
        .into_inner()
        .unwrap()
        .into_iter()
        .filter(|e| matches!(e, PushEvent::Retry { .. }))
        .collect();
    assert_eq!(retries.len(), 1, "{retries:?}");
    assert_eq!(pushed.digest.to_string(), local_digest(&src, "t"));
    assert_complete_in_registry(&reg, "big/blob:1", &src, work.path());
}

/// A proxy giving docker-registry stable upload URLs, as the distribution
/// spec allows (docker-registry's own carry a `_state` that goes stale when
/// an answer is lost), and that loses the answer to the `nth` upload
/// `PATCH` carrying more than 1 MiB after the registry stored it.
fn lost_answer_proxy(upstream: u16, nth: usize) -> (Proxy, Arc<AtomicBool>) {
    let fired = Arc::new(AtomicBool::new(false));
    let fired_here = fired.clone();
    let seen = AtomicUsize::new(0);
    // Upload id → the registry's newest location for it (path and query).
    let newest: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = http_proxy(listener, upstream, move |req, forward| {
        let (path, query) = req.path.split_once('?').unwrap_or((&req.path, ""));
        let (path, query) = (path.to_string(), query.to_string());
        if let Some((_, id)) = path.split_once("/blobs/uploads/")
            && !id.is_empty()
        {
            let known = newest
                .lock()
                .unwrap()
                .iter()
                .find(|(i, _)| i == id)
                .map(|(_, l)| l.clone());
            if let Some(l) = known {
                req.path = if query.is_empty() {
                    l
                } else {
                    format!("{l}&{query}")
                };
            }
        }
        let mut answer = forward(req);
        if let Some(location) = answer_header(&answer, "location")
            && location.contains("/blobs/uploads/")
        {
            let local = location
                .split_once("://")
                .map_or(location.as_str(), |(_, rest)| {
                    &rest[rest.find('/').unwrap_or(rest.len())..]
                });
            let (stable, _) = local.split_once('?').unwrap_or((local, ""));
            let id = stable.rsplit('/').next().unwrap().to_string();
            let mut all = newest.lock().unwrap();
            all.retain(|(i, _)| *i != id);
            all.push((id, local.to_string()));
            set_answer_header(&mut answer, "location", stable);
        }
        let big_patch = req.method == "PATCH" && req.body.len() > 1 << 20;
        if big_patch && seen.fetch_add(1, Ordering::SeqCst) + 1 == nth {
            fired_here.store(true, Ordering::SeqCst);
            return None;
        }
        Some(answer)
    });
    (proxy, fired)
}

/// When a `PATCH` arrived whole but its answer was lost, the upload
/// continues at the `Range` the registry reports, not from the start.
#[test]
fn push_continues_at_the_committed_range_when_an_answer_is_lost() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let src = big_image(work.path());
    let (proxy, fired) = lost_answer_proxy(reg.port, 2);
    let through = parse_registry(&format!("127.0.0.1:{}/big/blob:1", proxy.port)).unwrap();
    let o = RegistryOptions {
        chunk_size: 2 << 20,
        ..opts(work.path())
    };
    let events = Mutex::new(Vec::new());
    registry::push(
        &Layout::open(&src).unwrap(),
        Some("t"),
        &through,
        &o,
        &|e| events.lock().unwrap().push(e),
    )
    .unwrap();
    assert!(
        fired.load(Ordering::SeqCst),
        "the proxy never lost an answer"
    );
    let offsets: Vec<u64> = events
        .into_inner()
        .unwrap()
        .into_iter()
        .filter_map(|e| match e {
            PushEvent::Retry { offset, .. } => Some(offset),
            _ => None,
        })
        .collect();
    assert_eq!(offsets, vec![4 << 20], "resumed after two committed chunks");
    assert_complete_in_registry(&reg, "big/blob:1", &src, work.path());
}

#[test]
fn push_without_credentials_is_unauthorized_with_a_hint() {
    let reg = Registry::start_with(true, false);
    let work = tempfile::tempdir().unwrap();
    let src = simple_image(work.path());
    let err = registry::push(
        &Layout::open(&src).unwrap(),
        Some("t"),
        &reg.reference("private/app:1"),
        &opts(work.path()),
        &quiet_push,
    )
    .unwrap_err();
    assert!(
        matches!(err, RegistryError::Unauthorized { status: 401, .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("unauthorized, HTTP 401") && msg.contains("--username"),
        "{msg}"
    );

    let wrong = RegistryOptions {
        username: Some(USER.into()),
        password: Some("wrong-pw".into()),
        ..opts(work.path())
    };
    let err = registry::push(
        &Layout::open(&src).unwrap(),
        Some("t"),
        &reg.reference("private/app:1"),
        &wrong,
        &quiet_push,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("rejected the credentials of `composer`") && !err.contains("wrong-pw"),
        "{err}"
    );
}

#[test]
fn push_and_pull_with_credentials_from_options() {
    let reg = Registry::start_with(true, false);
    let work = tempfile::tempdir().unwrap();
    let src = simple_image(work.path());
    let o = RegistryOptions {
        username: Some(USER.into()),
        password: Some(PASSWORD.into()),
        ..opts(work.path())
    };
    let r = reg.reference("private/app:1");
    let pushed =
        registry::push(&Layout::open(&src).unwrap(), Some("t"), &r, &o, &quiet_push).unwrap();
    let out = work.path().join("pulled");
    let desc = registry::pull(
        &r,
        None,
        &Layout::create(&out).unwrap(),
        "p",
        &o,
        &quiet_pull,
    )
    .unwrap();
    assert_eq!(desc.digest(), &pushed.digest);
}

/// Run by `push_uses_credentials_from_docker_config` in a child process
/// whose environment names the credential file; does nothing otherwise.
#[test]
#[ignore = "runs as a child of push_uses_credentials_from_docker_config"]
fn docker_config_child() {
    let (Ok(reference), Ok(layout)) = (
        std::env::var("COMPOSER_TEST_REF"),
        std::env::var("COMPOSER_TEST_LAYOUT"),
    ) else {
        return;
    };
    let o = RegistryOptions {
        insecure: true,
        ..Default::default()
    };
    let pushed = registry::push(
        &Layout::open(Path::new(&layout)).unwrap(),
        Some("t"),
        &parse_registry(&reference).unwrap(),
        &o,
        &quiet_push,
    )
    .unwrap();
    println!("child pushed {}", pushed.digest);
}

#[test]
fn push_uses_credentials_from_docker_config() {
    let reg = Registry::start_with(true, false);
    let work = tempfile::tempdir().unwrap();
    let src = simple_image(work.path());
    let config = work.path().join("docker");
    std::fs::create_dir(&config).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    std::fs::write(
        config.join("config.json"),
        serde_json::json!({"auths": {reg.addr(): {"auth": auth}}}).to_string(),
    )
    .unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "docker_config_child", "--ignored", "--nocapture"])
        .env("DOCKER_CONFIG", &config)
        .env("HOME", work.path())
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("XDG_RUNTIME_DIR")
        .env("COMPOSER_TEST_REF", format!("{}/private/app:1", reg.addr()))
        .env("COMPOSER_TEST_LAYOUT", &src)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains(&format!("child pushed {}", local_digest(&src, "t"))),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bearer_token_flow_gets_a_push_scoped_token() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let src = simple_image(work.path());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let scopes = Arc::new(Mutex::new(Vec::new()));
    let seen = scopes.clone();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    let reply = |status: &str, extra: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let proxy = http_proxy(listener, reg.port, move |req, forward| {
        if let Some(query) = req.path.strip_prefix("/token?") {
            seen.lock().unwrap().push(query.to_string());
            return Some(if req.header("authorization") == Some(basic.as_str()) {
                reply("200 OK", "", r#"{"token":"tok-123"}"#)
            } else {
                reply("401 Unauthorized", "", r#"{"details":"bad credentials"}"#)
            });
        }
        if req.header("authorization") == Some("Bearer tok-123") {
            return Some(forward(req));
        }
        let challenge = format!(
            "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"composer-test\"\r\n"
        );
        Some(reply(
            "401 Unauthorized",
            &challenge,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        ))
    });
    let through = parse_registry(&format!("127.0.0.1:{}/tok/app:1", proxy.port)).unwrap();
    let o = RegistryOptions {
        username: Some(USER.into()),
        password: Some(PASSWORD.into()),
        ..opts(work.path())
    };
    let pushed = registry::push(
        &Layout::open(&src).unwrap(),
        Some("t"),
        &through,
        &o,
        &quiet_push,
    )
    .unwrap();
    assert_eq!(pushed.digest.to_string(), local_digest(&src, "t"));
    let scopes = scopes.lock().unwrap().clone();
    assert_eq!(
        scopes,
        vec!["service=composer-test&scope=repository%3Atok%2Fapp%3Apull%2Cpush".to_string()],
        "one token, scoped for push"
    );

    let anonymous = opts(work.path());
    let err = registry::push(
        &Layout::open(&src).unwrap(),
        Some("t"),
        &through,
        &anonymous,
        &quiet_push,
    )
    .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
}

#[test]
fn plain_http_registry_without_insecure_asks_for_insecure() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let o = RegistryOptions {
        insecure: false,
        ..opts(work.path())
    };
    let out = Layout::create(&work.path().join("pulled")).unwrap();
    let err =
        registry::pull(&reg.reference("a/b:1"), None, &out, "p", &o, &quiet_pull).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: the registry speaks plain HTTP; pass --insecure to use it",
            reg.addr()
        )
    );
}

#[test]
fn pull_of_a_missing_tag_names_the_registry_error() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let out = Layout::create(&work.path().join("pulled")).unwrap();
    let err = registry::pull(
        &reg.reference("a/b:nope"),
        None,
        &out,
        "p",
        &opts(work.path()),
        &quiet_pull,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with(&format!(
            "{}/a/b:nope: GET manifest nope: HTTP 404 (",
            reg.addr()
        )) && err.contains("UNKNOWN"),
        "{err}"
    );
}

#[test]
fn self_signed_https_registry_needs_insecure() {
    let reg = Registry::start_with(false, true);
    let work = tempfile::tempdir().unwrap();
    let src = simple_image(work.path());
    let layout = Layout::open(&src).unwrap();
    let strict = RegistryOptions {
        insecure: false,
        ..opts(work.path())
    };
    let err = registry::push(
        &layout,
        Some("t"),
        &reg.reference("tls/app:1"),
        &strict,
        &quiet_push,
    )
    .unwrap_err();
    assert!(matches!(err, RegistryError::Tls { .. }), "{err}");
    assert!(err.to_string().contains("pass --insecure"), "{err}");
    // The registry speaks only HTTPS: success means no fallback to HTTP.
    let pushed = registry::push(
        &layout,
        Some("t"),
        &reg.reference("tls/app:1"),
        &opts(work.path()),
        &quiet_push,
    )
    .unwrap();
    assert_eq!(pushed.digest.to_string(), local_digest(&src, "t"));
}

#[test]
fn pull_resumes_a_cut_download_with_a_range_request() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let src = big_image(work.path());
    let o = opts(work.path());
    registry::push(
        &Layout::open(&src).unwrap(),
        Some("t"),
        &reg.reference("big/pull:1"),
        &o,
        &quiet_push,
    )
    .unwrap();
    let cut = Arc::new(AtomicBool::new(false));
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let (cut_here, ranges_here) = (cut.clone(), ranges.clone());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = http_proxy(listener, reg.port, move |req, forward| {
        if let Some(r) = req.header("range") {
            ranges_here.lock().unwrap().push(r.to_string());
        }
        let mut answer = forward(req);
        if req.method == "GET" && answer.len() > 1 << 20 && !cut_here.swap(true, Ordering::SeqCst) {
            answer.truncate(answer.len() / 2);
        }
        Some(answer)
    });
    let through = parse_registry(&format!("127.0.0.1:{}/big/pull:1", proxy.port)).unwrap();
    let out = work.path().join("pulled");
    let events = Mutex::new(Vec::new());
    let desc = registry::pull(
        &through,
        None,
        &Layout::create(&out).unwrap(),
        "p",
        &o,
        &|e| events.lock().unwrap().push(e),
    )
    .unwrap();
    assert!(cut.load(Ordering::SeqCst), "the proxy never cut a download");
    assert_eq!(desc.digest().to_string(), local_digest(&src, "t"));
    let offsets: Vec<u64> = events
        .into_inner()
        .unwrap()
        .into_iter()
        .filter_map(|e| match e {
            PullEvent::Retry { offset, .. } => Some(offset),
            _ => None,
        })
        .collect();
    assert_eq!(offsets.len(), 1, "{offsets:?}");
    assert!(offsets[0] > 0, "the download started over");
    assert_eq!(
        *ranges.lock().unwrap(),
        vec![format!("bytes={}-", offsets[0])]
    );
    sh(
        work.path(),
        &format!("umoci unpack --image {}:p bundle", out.display()),
    );
    assert_eq!(
        std::fs::read(work.path().join("bundle/rootfs/random.bin")).unwrap(),
        std::fs::read(work.path().join("random.bin")).unwrap()
    );
}
