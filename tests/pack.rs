//! `composer pack` against real clients: the OCI layouts, oci-archives and
//! docker-archives it writes are read back by skopeo, umoci and podman,
//! are reproducible byte for byte, never hold a blob whose name lies, and
//! bad input fails with a clear message and nothing written.
//!
//! Needs skopeo, umoci, podman and runc (the test setup installs them) and
//! root (umoci unpack, chown).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::sh;
use sha2::{Digest as _, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_composer");
/// The SOURCE_DATE_EPOCH of every run, and its RFC 3339 form.
const EPOCH: u64 = 1_700_000_000;
const CREATED: &str = "2023-11-14T22:13:20Z";
const BIG: usize = 2 << 20;

// ---------------------------------------------------------------------------
// Running things

/// Runs `prefix... composer pack args...` in `cwd` with SOURCE_DATE_EPOCH =
/// `epoch`; a panic is always a failure.
fn run_composer(cwd: &Path, prefix: &[&str], epoch: &str, args: &[&str]) -> Output {
    let mut argv: Vec<&OsStr> = prefix.iter().map(OsStr::new).collect();
    argv.extend([OsStr::new(BIN), OsStr::new("pack")]);
    argv.extend(args.iter().map(OsStr::new));
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .env("SOURCE_DATE_EPOCH", epoch)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    out
}

fn pack(cwd: &Path, args: &[&str]) -> Output {
    run_composer(cwd, &[], &EPOCH.to_string(), args)
}

/// Checks a successful run printed `DESTINATION\tDIGEST`; returns DIGEST.
fn printed_digest(out: &Output, destination: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "composer failed ({:?}): {stderr}",
        out.status
    );
    let line = stdout.strip_suffix('\n').unwrap_or(&stdout);
    let (dest, digest) = line
        .split_once('\t')
        .unwrap_or_else(|| panic!("stdout is not DESTINATION\\tDIGEST: {stdout:?}"));
    assert_eq!(dest, destination, "printed destination");
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
    assert!(is_hex64(hex), "not a sha256 digest: {digest}");
    digest.to_string()
}

/// Packs and returns the printed digest; `output` must carry its tag so
/// that the printed destination is the one given.
fn pack_ok(cwd: &Path, args: &[&str]) -> String {
    let out = pack(cwd, args);
    let i = args.iter().position(|a| *a == "-o").expect("-o DEST");
    printed_digest(&out, args[i + 1])
}

/// A tool that must succeed; returns its stdout.
fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (the test setup installs it): {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn skopeo_json(args: &[&str]) -> serde_json::Value {
    let out = tool("skopeo", args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("skopeo {args:?}: {e}: {out}"))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

// ---------------------------------------------------------------------------
// Trees

/// Deterministic pseudo-random bytes (xorshift64*).
fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(n);
    out
}

const LONG_DIR: &str = "deep/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn write_mode(path: &Path, content: &[u8], mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A small root filesystem at `root` with every kind of entry a layer
/// carries: nested directories, a 0640 file, an executable, an empty file,
/// a symlink, a hard link, an empty directory, a sticky 1777 directory, a
/// FIFO, a path and a symlink target longer than 100 bytes, and a 2 MiB
/// file of seeded random bytes.
fn rootfs(root: &Path) {
    fs::create_dir_all(root).unwrap();
    write_mode(&root.join("etc/secret"), b"s3cret\n", 0o640);
    write_mode(&root.join("etc/os-release"), b"ID=composer\n", 0o644);
    write_mode(&root.join("usr/bin/tool"), b"#!/bin/sh\necho tool\n", 0o755);
    write_mode(
        &root.join("usr/lib/libx.so.1"),
        b"\x7fELF not really",
        0o644,
    );
    std::os::unix::fs::symlink("libx.so.1", root.join("usr/lib/libx.so")).unwrap();
    fs::create_dir_all(root.join("usr/share")).unwrap();
    fs::hard_link(root.join("etc/secret"), root.join("usr/share/secret-link")).unwrap();
    fs::create_dir_all(root.join("var/empty")).unwrap();
    fs::set_permissions(root.join("var/empty"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::create_dir_all(root.join("tmp")).unwrap();
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    write_mode(&root.join("empty-file"), b"", 0o600);
    let long = format!("{LONG_DIR}/a-file-with-a-long-name.txt");
    assert!(long.len() > 100);
    write_mode(&root.join(&long), b"long path\n", 0o644);
    std::os::unix::fs::symlink(&long, root.join("long-link")).unwrap();
    write_mode(&root.join("big.bin"), &random_bytes(42, BIG), 0o644);
    fs::create_dir_all(root.join("run")).unwrap();
    sh(root, "mkfifo -m 0644 run/fifo");
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    /// sha256 and size of the content.
    File(String, u64),
    Symlink(PathBuf),
    Fifo,
    Other,
}

#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: Kind,
    /// `mode & 0o7777`; 0 for symlinks (their mode means nothing).
    mode: u32,
}

/// Everything under `root` (not `root` itself): path → kind, mode,
/// content; plus the groups of paths that are hard links of each other.
type Snapshot = (BTreeMap<PathBuf, Node>, BTreeSet<BTreeSet<PathBuf>>);

fn snapshot(root: &Path) -> Snapshot {
    let mut nodes = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), BTreeSet<PathBuf>> = HashMap::new();
    for e in walkdir::WalkDir::new(root).min_depth(1) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
        let meta = fs::symlink_metadata(e.path()).unwrap();
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink(fs::read_link(e.path()).unwrap())
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                inodes
                    .entry((meta.dev(), meta.ino()))
                    .or_default()
                    .insert(rel.clone());
            }
            Kind::File(sha256_file(e.path()), meta.len())
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            Kind::Other
        };
        let mode = if ft.is_symlink() {
            0
        } else {
            meta.mode() & 0o7777
        };
        nodes.insert(rel, Node { kind, mode });
    }
    let links = inodes.into_values().filter(|g| g.len() > 1).collect();
    (nodes, links)
}

/// Every path under `dir`, relative, sorted (what "nothing written" compares).
fn listing(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter()
        .map(|e| e.unwrap().path().strip_prefix(dir).unwrap().to_path_buf())
        .collect()
}

// ---------------------------------------------------------------------------
// Blobs

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn sha256_reader(mut r: impl Read) -> String {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

fn sha256_file(p: &Path) -> String {
    sha256_reader(fs::File::open(p).unwrap())
}

/// Every file under `layout/blobs/sha256/` hashes to its name; returns how
/// many there are.
fn assert_blobs_named_by_digest(layout: &Path) -> usize {
    let dir = layout.join("blobs/sha256");
    let mut n = 0;
    for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        assert!(
            fs::symlink_metadata(&p).unwrap().is_file(),
            "{}: not a regular file",
            p.display()
        );
        assert!(is_hex64(&name), "{}: not named by a digest", p.display());
        assert_eq!(sha256_file(&p), name, "{}: lying blob", p.display());
        n += 1;
    }
    n
}

/// [`assert_blobs_named_by_digest`] for every OCI layout anywhere under
/// `root` (destinations and leftover staging layouts alike).
fn assert_no_lying_blob_under(root: &Path) -> usize {
    let mut n = 0;
    for e in walkdir::WalkDir::new(root) {
        let e = e.unwrap();
        if e.file_type().is_dir()
            && e.file_name() == "sha256"
            && e.path().parent().and_then(Path::file_name) == Some(OsStr::new("blobs"))
        {
            n += assert_blobs_named_by_digest(e.path().parent().unwrap().parent().unwrap());
        }
    }
    n
}

/// Every `blobs/sha256/<hex>` entry of a tar archive hashes to its name;
/// returns how many there are.
fn assert_archive_blobs_named_by_digest(archive: &Path) -> usize {
    let mut ar = tar::Archive::new(fs::File::open(archive).unwrap());
    let mut n = 0;
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        if let Some(name) = path.strip_prefix("blobs/sha256/")
            && !name.is_empty()
        {
            let name = name.to_string();
            assert!(is_hex64(&name), "{path}: not named by a digest");
            assert_eq!(
                sha256_reader(e),
                name,
                "{}: {path}: lying blob",
                archive.display()
            );
            n += 1;
        }
    }
    n
}

/// The digest `index.json` of a layout gives the tag `tag`.
fn tagged_digest(layout: &Path, tag: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let hits: Vec<&serde_json::Value> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .collect();
    assert_eq!(hits.len(), 1, "tag {tag} in {index}");
    hits[0]["digest"].as_str().unwrap().to_string()
}

/// Packs `dir` into a fresh layout `out` with tag `t`; checks the printed
/// digest is what the layout tags and that no blob lies.
fn pack_layout(cwd: &Path, dir: &Path, out: &Path, compression: &str) -> String {
    let dest = format!("oci:{}:t", s(out));
    let digest = pack_ok(cwd, &[s(dir), "-o", &dest, "--compression", compression]);
    assert_eq!(tagged_digest(out, "t"), digest, "{dest}");
    assert!(
        assert_blobs_named_by_digest(out) >= 3,
        "{dest}: blobs missing"
    );
    digest
}

// ---------------------------------------------------------------------------
// 1. Reproducibility

#[test]
fn pack_is_reproducible_across_runs_and_mtimes() {
    let t = tempfile::tempdir().unwrap();
    let t = t.path();
    let a = t.join("a");
    rootfs(&a);
    // The same content elsewhere, with other inodes, and owned by others.
    sh(
        t,
        "cp -a a copy && cp -a a owned && chown -R -h 1234:1234 owned",
    );
    // One byte of the big file changed.
    sh(t, "cp -a a changed");
    let mut big = fs::read(t.join("changed/big.bin")).unwrap();
    big[BIG / 2] ^= 1;
    fs::write(t.join("changed/big.bin"), big).unwrap();

    let mut seen = BTreeMap::new();
    for (i, c) in ["gzip", "zstd", "none"].into_iter().enumerate() {
        let l = |name: &str| t.join(format!("{c}-{name}"));
        let first = pack_layout(t, &a, &l("first"), c);
        assert_eq!(pack_layout(t, &a, &l("again"), c), first, "{c}: second run");
        // New atimes and mtimes (other ones at each turn).
        let (atime, mtime) = (1_000_000 + i, 2_000_000 + i);
        sh(
            t,
            &format!(
                "find a -exec touch -h -a -d @{atime} {{}} + && \
                 find a -exec touch -h -m -d @{mtime} {{}} +"
            ),
        );
        let m = fs::symlink_metadata(a.join("etc/secret")).unwrap();
        assert_eq!((m.atime(), m.mtime()), (atime as i64, mtime as i64));
        assert_eq!(
            pack_layout(t, &a, &l("touched"), c),
            first,
            "{c}: new mtimes"
        );
        let copy = t.join("copy");
        assert_eq!(pack_layout(t, &copy, &l("copy"), c), first, "{c}: cp -a");
        let owned = t.join("owned");
        assert_eq!(pack_layout(t, &owned, &l("owned"), c), first, "{c}: chown");
        let changed = t.join("changed");
        assert_ne!(
            pack_layout(t, &changed, &l("changed"), c),
            first,
            "{c}: a changed byte must change the digest"
        );
        let other_epoch = run_composer(
            t,
            &[],
            "1700000001",
            &[
                s(&a),
                "-o",
                &format!("oci:{}:t", s(&l("epoch"))),
                "--compression",
                c,
            ],
        );
        assert_ne!(
            printed_digest(&other_epoch, &format!("oci:{}:t", s(&l("epoch")))),
            first,
            "{c}: another SOURCE_DATE_EPOCH must change the digest"
        );
        if c == "zstd" {
            // One zstd worker instead of one per core: the same bytes.
            let dest = format!("oci:{}:t", s(&l("one-core")));
            let out = run_composer(
                t,
                &["taskset", "-c", "0"],
                &EPOCH.to_string(),
                &[s(&a), "-o", &dest, "--compression", c],
            );
            assert_eq!(printed_digest(&out, &dest), first, "zstd on one core");
        }
        seen.insert(c, first);
    }
    let distinct: BTreeSet<&String> = seen.values().collect();
    assert_eq!(
        distinct.len(),
        3,
        "each compression its own digest: {seen:?}"
    );

    // Archives: byte-identical across runs (and whatever their file name).
    for (kind, suffix) in [("oci-archive", ":t"), ("docker-archive", ":img:t")] {
        let mut sums = Vec::new();
        for run in ["one", "two"] {
            let file = t.join(format!("{run}-{kind}.tar"));
            let dest = format!("{kind}:{}{suffix}", s(&file));
            pack_ok(t, &[s(&a), "-o", &dest]);
            assert!(assert_archive_blobs_named_by_digest(&file) >= 3, "{dest}");
            sums.push(sha256_file(&file));
        }
        assert_eq!(sums[0], sums[1], "{kind}: two runs, different bytes");
    }
    assert!(
        !listing(t).iter().any(|p| {
            let n = p.to_string_lossy();
            n.contains(".composer-staging-") || n.ends_with(".composer-tmp")
        }),
        "leftovers: {:?}",
        listing(t)
    );
}

// ---------------------------------------------------------------------------
// 2. skopeo

#[test]
fn skopeo_reads_every_output_kind() {
    let t = tempfile::tempdir().unwrap();
    let t = t.path();
    let tree = t.join("tree");
    rootfs(&tree);
    let labels = serde_json::json!({
        "org.opencontainers.image.title": "hello",
        "com.example.note": "a=b c",
    });
    let mut copies = 0;
    for c in ["gzip", "zstd"] {
        let layout = t.join(format!("layout-{c}"));
        let oci_archive = t.join(format!("oci-{c}.tar"));
        let docker_archive = t.join(format!("docker-{c}.tar"));
        let cases = [
            (
                format!("oci:{}:v1", s(&layout)),
                vec![format!("oci:{}:v1", s(&layout))],
            ),
            (
                format!("oci-archive:{}:v1", s(&oci_archive)),
                vec![format!("oci-archive:{}:v1", s(&oci_archive))],
            ),
            (
                format!(
                    "docker-archive:{}:example.com/composer/img:v1",
                    s(&docker_archive)
                ),
                vec![
                    format!("docker-archive:{}", s(&docker_archive)),
                    format!(
                        "docker-archive:{}:example.com/composer/img:v1",
                        s(&docker_archive)
                    ),
                ],
            ),
        ];
        for (dest, sources) in &cases {
            let digest = pack_ok(
                t,
                &[
                    s(&tree),
                    "-o",
                    dest,
                    "--compression",
                    c,
                    "--label",
                    "org.opencontainers.image.title=hello",
                    "--label",
                    "com.example.note=a=b c",
                ],
            );
            for src in sources {
                let info = skopeo_json(&["inspect", src]);
                assert_eq!(info["Labels"], labels, "{src}");
                assert_eq!(info["Created"], CREATED, "{src}");
                assert_eq!(info["Architecture"], "amd64", "{src}");
                assert_eq!(info["Os"], "linux", "{src}");
                assert_eq!(info["Layers"].as_array().unwrap().len(), 1, "{src}");
                if !src.starts_with("docker-archive:") {
                    // skopeo converts a docker-archive to a schema 2
                    // manifest, so only the OCI transports keep the digest.
                    assert_eq!(info["Digest"], digest.as_str(), "{src}");
                    let raw = skopeo_json(&["inspect", "--raw", src]);
                    let media = match c {
                        "gzip" => "application/vnd.oci.image.layer.v1.tar+gzip",
                        _ => "application/vnd.oci.image.layer.v1.tar+zstd",
                    };
                    assert_eq!(raw["layers"][0]["mediaType"], media, "{src}");
                    assert_eq!(raw["annotations"], labels, "{src}: manifest annotations");
                }
                copies += 1;
                let copy = t.join(format!("copy-{copies}"));
                let to = format!("oci:{}:copied", s(&copy));
                tool(
                    "skopeo",
                    &["copy", "--insecure-policy", "--quiet", src, &to],
                );
                assert!(assert_blobs_named_by_digest(&copy) >= 3);
                let back = skopeo_json(&["inspect", &to]);
                assert_eq!(back["Labels"], labels, "{to}");
                assert_eq!(back["Created"], CREATED, "{to}");
            }
        }
        assert!(assert_blobs_named_by_digest(&layout) >= 3);
        assert!(assert_archive_blobs_named_by_digest(&oci_archive) >= 3);
        assert!(assert_archive_blobs_named_by_digest(&docker_archive) >= 3);
    }

    // No tag given: `latest`; another platform: its architecture.
    let untagged = t.join("untagged");
    let out = pack(t, &[s(&tree), "-o", &format!("oci:{}", s(&untagged))]);
    let latest = format!("oci:{}:latest", s(&untagged));
    let digest = printed_digest(&out, &latest);
    let info = skopeo_json(&["inspect", &latest]);
    assert_eq!(info["Digest"], digest.as_str());
    assert_eq!(info["Created"], CREATED);
    let arm = t.join("arm");
    let dest = format!("oci:{}:v1", s(&arm));
    pack_ok(t, &[s(&tree), "-o", &dest, "--platform", "linux/arm64"]);
    let info = skopeo_json(&["inspect", &dest]);
    assert_eq!(info["Architecture"], "arm64");
    assert_eq!(info["Os"], "linux");
    assert!(assert_blobs_named_by_digest(&arm) >= 3);
}

// ---------------------------------------------------------------------------
// 3. umoci

#[test]
fn umoci_unpack_yields_the_tree() {
    let t = tempfile::tempdir().unwrap();
    let t = t.path();
    let tree = t.join("tree");
    rootfs(&tree);
    // Packed from a copy owned by someone else: the image is 0:0 anyway.
    sh(t, "cp -a tree owned && chown -R -h 1234:1234 owned");
    let want = snapshot(&tree);
    assert_eq!(snapshot(&t.join("owned")), want, "cp -a changed the tree");
    // The tree holds what it claims to.
    let hard: BTreeSet<PathBuf> = ["etc/secret", "usr/share/secret-link"]
        .iter()
        .map(PathBuf::from)
        .collect();
    assert_eq!(want.1, BTreeSet::from([hard]));
    assert_eq!(want.0[Path::new("run/fifo")].kind, Kind::Fifo);
    assert_eq!(want.0[Path::new("tmp")].mode, 0o1777);
    assert_eq!(want.0[Path::new("etc/secret")].mode, 0o640);
    // umoci 0.4.7 cannot read zstd layers ("blob is not correct mediatype").
    for c in ["gzip", "none"] {
        let layout = t.join(format!("layout-{c}"));
        pack_layout(t, &t.join("owned"), &layout, c);
        let bundle = t.join(format!("bundle-{c}"));
        tool(
            "umoci",
            &[
                "unpack",
                "--image",
                &format!("{}:t", s(&layout)),
                s(&bundle),
            ],
        );
        let got = snapshot(&bundle.join("rootfs"));
        let (want_paths, got_paths): (BTreeSet<_>, BTreeSet<_>) =
            (want.0.keys().collect(), got.0.keys().collect());
        assert_eq!(got_paths, want_paths, "{c}: paths");
        for (p, node) in &want.0 {
            assert_eq!(&got.0[p], node, "{c}: {}", p.display());
        }
        assert_eq!(got.1, want.1, "{c}: hard links");
        for e in walkdir::WalkDir::new(bundle.join("rootfs")).min_depth(1) {
            let e = e.unwrap();
            let m = fs::symlink_metadata(e.path()).unwrap();
            assert_eq!((m.uid(), m.gid()), (0, 0), "{c}: {}", e.path().display());
            assert_eq!(m.mtime(), EPOCH as i64, "{c}: {}", e.path().display());
        }
        assert!(assert_blobs_named_by_digest(&layout) >= 3);
    }
}

// ---------------------------------------------------------------------------
// 4. podman

/// podman with its storage, state and configuration in `store`.
fn podman(store: &Path, args: &[&str]) -> String {
    let conf = store.join("containers.conf");
    if !conf.exists() {
        fs::create_dir_all(store).unwrap();
        fs::write(
            &conf,
            "[engine]\nruntime=\"runc\"\ncgroup_manager=\"cgroupfs\"\nevents_logger=\"file\"\n\
             [containers]\ndefault_ulimits=[\"nofile=1024:1024\",\"nproc=1024:1024\"]\n",
        )
        .unwrap();
    }
    let dirs = [
        "--root",
        &format!("{}/root", s(store)),
        "--runroot",
        &format!("{}/runroot", s(store)),
        "--tmpdir",
        &format!("{}/tmp", s(store)),
        "--storage-driver",
        "vfs",
    ]
    .map(String::from);
    let out = Command::new("podman")
        .env("CONTAINERS_CONF", &conf)
        .args(&dirs)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("podman is missing ({e}); the test setup installs podman and runc")
        });
    assert!(
        out.status.success(),
        "podman {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn require_podman_and_runc() {
    let found = |name: &str| {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
            .any(|d| d.join(name).is_file())
    };
    for name in ["podman", "runc"] {
        assert!(
            found(name),
            "{name} is not installed: this test needs podman and runc \
             (the test setup installs them: apt-get install podman runc)"
        );
    }
}

#[test]
fn podman_loads_the_docker_archive() {
    require_podman_and_runc();
    let t = tempfile::tempdir().unwrap();
    let t = t.path();
    let tree = t.join("tree");
    rootfs(&tree);
    let store = t.join("store");
    let labels = serde_json::json!({"org.opencontainers.image.title": "hello", "k": "v"});
    let mut ids = BTreeMap::new();
    for (c, tag) in [("gzip", "v1"), ("zstd", "v2")] {
        let file = t.join(format!("img-{c}.tar"));
        let dest = format!("docker-archive:{}:composer-test/img:{tag}", s(&file));
        pack_ok(
            t,
            &[
                s(&tree),
                "-o",
                &dest,
                "--compression",
                c,
                "--label",
                "org.opencontainers.image.title=hello",
                "--label",
                "k=v",
            ],
        );
        let loaded = podman(&store, &["load", "-i", s(&file)]);
        let name = format!("localhost/composer-test/img:{tag}");
        assert!(loaded.contains(&name), "podman load: {loaded}");
        let info: serde_json::Value =
            serde_json::from_str(&podman(&store, &["image", "inspect", &name])).unwrap();
        let info = &info[0];
        assert_eq!(info["Labels"], labels, "{name}");
        assert_eq!(info["Config"]["Labels"], labels, "{name}");
        assert_eq!(info["Created"], CREATED, "{name}");
        assert_eq!(info["Architecture"], "amd64", "{name}");
        assert_eq!(info["RootFS"]["Layers"].as_array().unwrap().len(), 1);
        ids.insert(tag, info["Id"].as_str().unwrap().to_string());
    }
    let listed = podman(&store, &["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    let listed: BTreeSet<&str> = listed.lines().collect();
    for tag in ["v1", "v2"] {
        let name = format!("localhost/composer-test/img:{tag}");
        assert!(listed.contains(name.as_str()), "{name} not in {listed:?}");
    }
    // Same config whatever the layer compression: the same image ID.
    assert_eq!(ids["v1"], ids["v2"]);

    // `podman load` reads the archive's index.json; the docker-archive
    // transport reads the legacy manifest.json: both give the same image.
    let store2 = t.join("store2");
    podman(
        &store2,
        &[
            "pull",
            &format!("docker-archive:{}", s(&t.join("img-gzip.tar"))),
        ],
    );
    let info: serde_json::Value = serde_json::from_str(&podman(
        &store2,
        &["image", "inspect", "localhost/composer-test/img:v1"],
    ))
    .unwrap();
    assert_eq!(info[0]["Id"], ids["v1"].as_str());
    assert_eq!(info[0]["Labels"], labels);
}

// ---------------------------------------------------------------------------
// 5. Multi-platform

#[test]
fn multi_platform_index_lists_both_platforms() {
    let t = tempfile::tempdir().unwrap();
    let t = t.path();
    let amd = t.join("amd64");
    rootfs(&amd);
    sh(t, "cp -a amd64 arm64 && echo arm64 > arm64/etc/arch");
    let layout = t.join("multi");
    let dest = format!("oci:{}:t", s(&layout));
    let rootfs_args = [
        "--rootfs",
        &format!("linux/amd64={}", s(&amd)),
        "--rootfs",
        &format!("linux/arm64={}", s(&t.join("arm64"))),
    ]
    .map(String::from);
    let mut args: Vec<&str> = rootfs_args.iter().map(String::as_str).collect();
    args.extend(["-o", &dest, "--label", "k=v"]);
    let digest = pack_ok(t, &args);
    assert_eq!(tagged_digest(&layout, "t"), digest);
    assert!(assert_blobs_named_by_digest(&layout) >= 5);

    let raw = tool("skopeo", &["inspect", "--raw", &dest]);
    assert_eq!(format!("sha256:{}", sha256_reader(raw.as_bytes())), digest);
    let index: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(index["schemaVersion"], 2);
    let platforms: Vec<(String, String)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
            (
                m["platform"]["os"].as_str().unwrap().to_string(),
                m["platform"]["architecture"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        platforms,
        [
            ("linux".into(), "amd64".into()),
            ("linux".into(), "arm64".into())
        ]
    );

    let arm = skopeo_json(&[
        "--override-arch",
        "arm64",
        "--override-os",
        "linux",
        "inspect",
        &dest,
    ]);
    let x86 = skopeo_json(&[
        "--override-arch",
        "amd64",
        "--override-os",
        "linux",
        "inspect",
        &dest,
    ]);
    assert_eq!(arm["Architecture"], "arm64");
    assert_eq!(x86["Architecture"], "amd64");
    for info in [&arm, &x86] {
        assert_eq!(info["Created"], CREATED);
        assert_eq!(info["Labels"], serde_json::json!({"k": "v"}));
    }
    assert_ne!(arm["Layers"], x86["Layers"], "the two trees differ");

    let copy = t.join("copy");
    let to = format!("oci:{}:c", s(&copy));
    tool(
        "skopeo",
        &["copy", "--all", "--insecure-policy", "--quiet", &dest, &to],
    );
    assert_eq!(tool("skopeo", &["inspect", "--raw", &to]), raw);
    assert!(assert_blobs_named_by_digest(&copy) >= 5);

    // The same index as an oci-archive.
    let file = t.join("multi.tar");
    let adest = format!("oci-archive:{}:t", s(&file));
    let mut args: Vec<&str> = rootfs_args.iter().map(String::as_str).collect();
    args.extend(["-o", &adest, "--label", "k=v"]);
    assert_eq!(pack_ok(t, &args), digest);
    assert_eq!(tool("skopeo", &["inspect", "--raw", &adest]), raw);
    assert!(assert_archive_blobs_named_by_digest(&file) >= 5);
}

// ---------------------------------------------------------------------------
// 6. Bad input

/// Runs pack in `cwd`; it must exit 1 with an `error:` naming every word of
/// `words`, print nothing on stdout, and leave `cwd` exactly as it was (no
/// destination, no staging directory, no temp file). Returns stderr.
fn assert_fails_cleanly(cwd: &Path, args: &[&str], words: &[&str]) -> String {
    let before = listing(cwd);
    let out = pack(cwd, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{args:?}: stdout {:?}", out.stdout);
    assert!(stderr.contains("error: "), "{args:?}: {stderr}");
    for w in words {
        assert!(stderr.contains(w), "{args:?}: stderr lacks `{w}`: {stderr}");
    }
    assert_eq!(listing(cwd), before, "{args:?} left something behind");
    stderr.into_owned()
}

/// One destination of each kind, relative to the working directory, and
/// one in a subdirectory (`dest/`, which exists and stays empty).
const DESTINATIONS: [&str; 4] = [
    "oci:out:t",
    "oci-archive:out.tar:t",
    "docker-archive:out.tar:img:t",
    "oci:dest/layout:t",
];

fn workdir() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    fs::create_dir(t.path().join("dest")).unwrap();
    fs::create_dir_all(t.path().join("tree/etc")).unwrap();
    fs::write(t.path().join("tree/etc/ok"), "ok\n").unwrap();
    t
}

#[test]
fn missing_directory_fails_and_writes_nothing() {
    let t = workdir();
    for dest in DESTINATIONS {
        let stderr = assert_fails_cleanly(t.path(), &["nope", "-o", dest], &["nope"]);
        assert!(
            ["not a directory", "does not exist", "No such file"]
                .iter()
                .any(|w| stderr.contains(w)),
            "says what is wrong with `nope`: {stderr}"
        );
    }
    let missing = t.path().join("gone");
    let rootfs = format!("linux/arm64={}", s(&missing));
    assert_fails_cleanly(
        t.path(),
        &[
            "--rootfs",
            "linux/amd64=tree",
            "--rootfs",
            &rootfs,
            "-o",
            "oci:out:t",
        ],
        &[s(&missing)],
    );
}

#[test]
fn unknown_transport_fails_and_writes_nothing() {
    let t = workdir();
    assert_fails_cleanly(
        t.path(),
        &["tree", "-o", "ftp://x"],
        &["ftp://x", "unknown transport"],
    );
    assert_fails_cleanly(t.path(), &["tree", "-o", "oci:"], &["oci:"]);
}

#[test]
fn socket_in_the_tree_fails_naming_it() {
    let t = workdir();
    fs::create_dir_all(t.path().join("tree/run")).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(t.path().join("tree/run/sock")).unwrap();
    for dest in DESTINATIONS {
        assert_fails_cleanly(
            t.path(),
            &["tree", "-o", dest],
            &["tree/run/sock", "socket"],
        );
    }
}

#[test]
fn non_utf8_file_name_fails_naming_it() {
    let t = workdir();
    let mut name = OsString::from("tree/etc/");
    name.push(OsStr::from_bytes(b"bad\xff"));
    fs::write(t.path().join(&name), "x").unwrap();
    for dest in DESTINATIONS {
        assert_fails_cleanly(t.path(), &["tree", "-o", dest], &["tree/etc/bad", "UTF-8"]);
    }
}

#[test]
fn same_platform_twice_fails() {
    let t = workdir();
    fs::create_dir(t.path().join("other")).unwrap();
    assert_fails_cleanly(
        t.path(),
        &[
            "--rootfs",
            "linux/arm64=tree",
            "--rootfs",
            "linux/arm64=other",
            "-o",
            "oci:out:t",
        ],
        &["linux/arm64", "twice"],
    );
}

#[test]
fn docker_archive_of_several_platforms_fails() {
    let t = workdir();
    for dest in [
        "docker-archive:out.tar:img:t",
        "docker-archive:dest/out.tar",
    ] {
        assert_fails_cleanly(
            t.path(),
            &[
                "--rootfs",
                "linux/amd64=tree",
                "--rootfs",
                "linux/arm64=tree",
                "-o",
                dest,
            ],
            &["docker-archive", "platform"],
        );
    }
}

#[test]
fn malformed_arguments_fail_and_write_nothing() {
    let t = workdir();
    assert_fails_cleanly(
        t.path(),
        &["--rootfs", "tree", "-o", "oci:out:t"],
        &["PLATFORM=DIR"],
    );
    assert_fails_cleanly(
        t.path(),
        &["--rootfs", "linux/sparc=tree", "-o", "oci:out:t"],
        &["linux/sparc"],
    );
    let before = listing(t.path());
    let out = run_composer(t.path(), &[], "yesterday", &["tree", "-o", "oci:out:t"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("SOURCE_DATE_EPOCH") && stderr.contains("yesterday"),
        "{stderr}"
    );
    assert_eq!(listing(t.path()), before);
}

#[test]
fn destination_that_cannot_be_written_fails_and_writes_nothing() {
    let t = workdir();
    fs::write(t.path().join("plain"), "a file, not a directory").unwrap();
    fs::create_dir(t.path().join("adir")).unwrap();
    for (dest, path) in [
        ("oci:plain/layout:t", "plain"),
        ("oci-archive:adir:t", "adir"),
        ("docker-archive:adir:img:t", "adir"),
        ("oci-archive:plain/img.tar:t", "plain"),
    ] {
        assert_fails_cleanly(t.path(), &["tree", "-o", dest], &[path]);
    }
    assert_eq!(
        fs::read(t.path().join("plain")).unwrap(),
        b"a file, not a directory"
    );
}

// ---------------------------------------------------------------------------
// 7. Crashes

/// Runs pack with a file size limit of `kib` KiB: the write that crosses it
/// kills composer with SIGXFSZ (a crash at a known point, no timing), or,
/// with `ignore_signal`, fails with EFBIG (a full disk, as far as composer
/// can tell).
fn pack_with_file_limit(cwd: &Path, kib: u64, ignore_signal: bool, args: &[&str]) -> Output {
    let trap = if ignore_signal { "trap '' XFSZ; " } else { "" };
    let script = format!("{trap}ulimit -f {kib}; exec \"$@\"");
    let prefix = ["bash", "-c", script.as_str(), "bash"];
    run_composer(cwd, &prefix, &EPOCH.to_string(), args)
}

fn largest_file(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap().metadata().unwrap())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .max()
        .unwrap()
}

#[test]
fn crash_never_leaves_a_lying_blob() {
    let t = tempfile::tempdir().unwrap();
    let t = t.path();
    let tree = t.join("tree");
    rootfs(&tree);
    // References: the layer blob (S bytes) and the archive around it.
    let reference = t.join("reference");
    let digest = pack_layout(t, &tree, &reference, "none");
    let layer_size = largest_file(&reference.join("blobs/sha256"));
    let ref_archive = t.join("reference.tar");
    pack_ok(
        t,
        &[
            s(&tree),
            "-o",
            &format!("oci-archive:{}:t", s(&ref_archive)),
            "--compression",
            "none",
        ],
    );
    let archive_sum = sha256_file(&ref_archive);
    let archive_size = fs::metadata(&ref_archive).unwrap().len();
    // A limit the layer blob fits under but the archive does not.
    let between = layer_size / 1024 + 2;
    assert!(
        layer_size < between * 1024 && between * 1024 < archive_size,
        "layer {layer_size}, archive {archive_size}: no limit between"
    );
    let xfsz = Some(libc::SIGXFSZ);

    // Killed while the layer blob is being written.
    let dir = t.join("crash-layer");
    fs::create_dir(&dir).unwrap();
    let layout = dir.join("layout");
    let dest = format!("oci:{}:t", s(&layout));
    let args = [s(&tree), "-o", &dest, "--compression", "none"];
    let out = pack_with_file_limit(t, 1024, false, &args);
    assert_eq!(out.status.signal(), xfsz, "{:?}", out.status);
    assert!(!layout.exists(), "a crashed run wrote its destination");
    assert_no_lying_blob_under(&dir);
    let partial: Vec<u64> = walkdir::WalkDir::new(&dir)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file() && e.path().to_string_lossy().contains("blobs/.tmp/"))
        .map(|e| e.metadata().unwrap().len())
        .collect();
    assert!(
        partial.iter().any(|&n| n > 0 && n <= 1024 * 1024),
        "the crash happened mid-blob: temp files {partial:?} in {:?}",
        listing(&dir)
    );
    // A run after the crash is whole and the same.
    assert_eq!(pack_layout(t, &tree, &layout, "none"), digest);
    assert_no_lying_blob_under(&dir);

    // Killed while the archive is being written (every blob is staged).
    let dir = t.join("crash-archive");
    fs::create_dir(&dir).unwrap();
    let file = dir.join("img.tar");
    let dest = format!("oci-archive:{}:t", s(&file));
    let args = [s(&tree), "-o", &dest, "--compression", "none"];
    let out = pack_with_file_limit(t, between, false, &args);
    assert_eq!(out.status.signal(), xfsz, "{:?}", out.status);
    assert!(
        !file.exists(),
        "a crashed run left a partial archive as the destination"
    );
    assert!(
        assert_no_lying_blob_under(&dir) >= 3,
        "the staged blobs: {:?}",
        listing(&dir)
    );
    pack_ok(t, &args);
    assert_eq!(sha256_file(&file), archive_sum, "the run after the crash");
    assert!(
        !dir.join(".img.tar.composer-tmp").exists(),
        "{:?}",
        listing(&dir)
    );

    // The same failures as errors (the disk is full): exit 1, nothing left.
    for (kib, what) in [(1024, "layer"), (between, "archive")] {
        let dir = t.join(format!("full-{what}"));
        fs::create_dir(&dir).unwrap();
        for dest in [
            format!("oci:{}:t", s(&dir.join("layout"))),
            format!("oci-archive:{}:t", s(&dir.join("img.tar"))),
            format!("docker-archive:{}:img:t", s(&dir.join("img.tar"))),
        ] {
            if kib == between && dest.starts_with("oci:") {
                continue; // the layout's blobs all fit under the limit
            }
            let args = [s(&tree), "-o", &dest, "--compression", "none"];
            let out = pack_with_file_limit(t, kib, true, &args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{what}, {dest}: {stderr}");
            assert!(
                stderr.contains("File too large"),
                "{what}, {dest}: {stderr}"
            );
            assert_eq!(
                listing(&dir),
                Vec::<PathBuf>::new(),
                "{what}, {dest}: left behind"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Known bugs (see the notes in each `ignore`)

/// The entry names of the (uncompressed) layer of the image tagged `tag`.
fn layer_entries(layout: &Path, tag: &str) -> Vec<String> {
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.strip_prefix("sha256:").unwrap())
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(blob(&tagged_digest(layout, tag))).unwrap()).unwrap();
    let layer = blob(manifest["layers"][0]["digest"].as_str().unwrap());
    let mut ar = tar::Archive::new(fs::File::open(layer).unwrap());
    ar.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_destination_inside_the_tree_is_never_packed() {
    // (working directory, DIR, destination, the layout written)
    for (cwd, dir, dest, layout) in [
        ("", "tree", "oci:tree/out:t", "tree/out"),
        ("tree", ".", "oci:out:t", "out"),
    ] {
        let t = workdir();
        let cwd = t.path().join(cwd);
        let args = [dir, "-o", dest, "--compression", "none"];
        let before = listing(t.path());
        let out = pack(&cwd, &args);
        if !out.status.success() {
            // Refusing is fine, if it is clean.
            assert_eq!(out.status.code(), Some(1), "{args:?}");
            assert_eq!(listing(t.path()), before, "{args:?} left something behind");
            continue;
        }
        let first = printed_digest(&out, dest);
        let entries = layer_entries(&cwd.join(layout), "t");
        assert!(
            !entries.iter().any(|e| e.contains(".composer-staging-")),
            "{args:?}: composer packed its own staging directory: {entries:?}"
        );
        fs::remove_dir_all(cwd.join(layout)).unwrap();
        assert_eq!(pack_ok(&cwd, &args), first, "{args:?}: not reproducible");
    }
}

#[test]
fn an_io_error_names_its_cause_once() {
    let t = workdir();
    fs::write(t.path().join("plain"), "").unwrap();
    fs::create_dir(t.path().join("adir")).unwrap();
    for dest in ["oci:plain/layout:t", "oci-archive:adir:t"] {
        let out = pack(t.path(), &["tree", "-o", dest]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{dest}: {stderr}");
        assert_eq!(stderr.matches("(os error").count(), 1, "{dest}: {stderr}");
    }
}

#[test]
fn a_failed_blob_write_does_not_blame_the_input() {
    let t = tempfile::tempdir().unwrap();
    let t = t.path();
    let tree = t.join("tree");
    rootfs(&tree);
    let dest = format!("oci:{}:t", s(&t.join("layout")));
    let out = pack_with_file_limit(
        t,
        1024,
        true,
        &[s(&tree), "-o", &dest, "--compression", "none"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("File too large"), "{stderr}");
    assert!(
        !stderr.contains("big.bin"),
        "blames the input file for a failed write: {stderr}"
    );
}
