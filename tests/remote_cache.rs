//! The stage cache shared through an OCI registry (a real docker-registry
//! on 127.0.0.1) or an `oci:` layout: two project copies with their own
//! cache directories stand for two machines, building the stand-in session
//! tree (`common::ktree`: a keyless tree, its certifying session stage, a
//! module stage on it).
//!
//! - machine B, empty, builds nothing when machine A stored its build: all
//!   three stages are fetched, the session's two together, and B's outputs
//!   are A's;
//! - B changes the module: a new session built on B and stored; A then
//!   fetches it (the tree stays A's own);
//! - a damaged blob in the registry is reported and the stage built here;
//!   an unreachable registry is a warning;
//! - storing what is there sends nothing; two writers racing on the same
//!   keys both succeed and each key has one tag;
//! - a session index that lacks a stage of the plan brings none of the
//!   session; a tag that is not a stage key names no directory; machines
//!   with different umasks agree;
//! - an `oci:` directory carries the cache to an air-gapped machine;
//!   `composer cache push|pull` carry a whole cache.

mod common;

use std::fs;
use std::path::Path;

use common::composer;
use common::ktree::{build, mods, project, read, verifies};
use common::registry::{Registry, free_port};

/// Machine A's build of the stand-in tree, stored in `to`.
fn machine_a(to: &str) -> tempfile::TempDir {
    let a = project("hello");
    let e = build(a.path(), &["--insecure", "--cache-to", to, "kcert", "mods"]);
    assert!(e.contains("built 3 stage(s), 0 cached"), "{e}");
    for stage in ["ktree", "kcert", "mods"] {
        assert!(e.contains(&format!("{stage}: stored in ")), "{stage}: {e}");
    }
    a
}

fn same_outputs(a: &Path, b: &Path) {
    for f in [
        "_out/kcert/boot/session.pem",
        "_out/kcert/boot/tree-compiled",
        "_out/kcert/boot/certified",
        "_out/mods/compiled",
        "_out/mods/usr/lib/modules/6.1.0-test/extra/mods.ko",
    ] {
        assert_eq!(
            fs::read(a.join(f)).unwrap(),
            fs::read(b.join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn a_second_machine_builds_nothing_when_the_first_stored_its_build() {
    let registry = Registry::start();
    let cache = format!("{}/team/cache", registry.addr());
    let a = machine_a(&cache);
    let b = project("hello");
    let e = build(
        b.path(),
        &["-v", "--insecure", "--cache-from", &cache, "kcert", "mods"],
    );
    assert!(
        e.contains("built 0 stage(s), 3 cached (3 from the shared cache)"),
        "{e}"
    );
    for stage in ["ktree", "kcert", "mods"] {
        assert!(
            e.contains(&format!("{stage}: fetched from {cache} (")),
            "{stage}: {e}"
        );
    }
    assert!(!e.contains("started"), "no stage ran: {e}");
    // `-v` announces each fetch before it starts (without it, only large
    // ones): the stage outside the session.
    let announced = e.find("ktree: fetching ").expect(&e);
    assert!(announced < e.find("ktree: fetched from").unwrap(), "{e}");
    same_outputs(a.path(), b.path());
    assert!(verifies(
        b.path(),
        &a.path().join("_out/kcert/boot/session.pem")
    ));
    // The fetched entries are B's own now: no registry needed.
    drop(registry);
    let e = build(b.path(), &["kcert", "mods"]);
    assert!(e.contains("built 0 stage(s), 3 cached, in"), "{e}");
}

#[test]
fn a_new_session_built_on_one_machine_is_fetched_whole_by_the_other() {
    let registry = Registry::start();
    let cache = format!("{}/team/cache", registry.addr());
    let a = machine_a(&cache);
    let tree = read(a.path(), "_out/kcert/boot/tree-compiled");

    // B changes the module: the tree comes from the cache, the session is new.
    let b = project("changed");
    let e = build(
        b.path(),
        &[
            "--insecure",
            "--cache-from",
            &cache,
            "--cache-to",
            &cache,
            "kcert",
            "mods",
        ],
    );
    assert!(e.contains("ktree: fetched from"), "{e}");
    assert!(e.contains("signing session "), "{e}");
    assert!(
        e.contains("built 2 stage(s), 1 cached (1 from the shared cache)"),
        "{e}"
    );
    assert!(
        e.contains("kcert: stored in") && e.contains("mods: stored in"),
        "{e}"
    );
    assert_eq!(read(b.path(), "_out/kcert/boot/tree-compiled"), tree);

    // A changes the module the same way: B's session, fetched as a unit.
    fs::write(a.path().join("pkgs/mods/pkg.yaml"), mods("changed")).unwrap();
    let e = build(
        a.path(),
        &["--insecure", "--cache-from", &cache, "kcert", "mods"],
    );
    assert!(
        e.contains("built 0 stage(s), 3 cached (2 from the shared cache)"),
        "{e}"
    );
    same_outputs(a.path(), b.path());
    assert!(verifies(
        a.path(),
        &b.path().join("_out/kcert/boot/session.pem")
    ));
}

#[test]
fn a_damaged_entry_is_reported_and_built_here() {
    let registry = Registry::start();
    let cache = format!("{}/team/cache", registry.addr());
    let a = machine_a(&cache);
    // Damage the layer of ktree's entry in the registry's storage.
    let key = fs::read_dir(a.path().join("cache/stages"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|d| read(d, "meta.json").contains("\"stage\": \"ktree\""))
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .expect("ktree's entry");
    let manifest = registry.manifest("team/cache", &key);
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = registry.blob_file(&layer);
    let mut bytes = fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&blob, bytes).unwrap();

    let b = project("hello");
    let e = build(
        b.path(),
        &["--insecure", "--cache-from", &cache, "kcert", "mods"],
    );
    assert!(e.contains("warning: ktree from"), "{e}");
    assert!(e.contains("is damaged"), "{e}");
    assert!(e.contains("ktree: built in"), "built here: {e}");
    // The session's entries were sound: they came, and nothing else ran.
    assert!(
        e.contains("kcert: fetched from") && e.contains("mods: fetched from"),
        "{e}"
    );
    assert!(
        e.contains("built 1 stage(s), 2 cached (2 from the shared cache)"),
        "{e}"
    );
    // Nothing damaged was kept: the cache verifies.
    let o = composer(b.path(), &["cache", "verify", "--cache-dir", "cache"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // `cache pull` reports the damaged entry, takes the rest, and fails.
    let c = project("hello");
    let o = composer(
        c.path(),
        &[
            "cache",
            "pull",
            "--insecure",
            "--cache-dir",
            "cache",
            &cache,
        ],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{e}");
    assert!(e.contains(&format!("warning: entry {key} from")), "{e}");
    assert!(e.contains("2 entries fetched"), "the session came: {e}");
    assert!(e.contains("1 entry or session damaged"), "{e}");
}

#[test]
fn pulling_sessions_that_share_keys_twice_fetches_nothing_the_second_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("oci:{}", dir.path().join("cache").display());
    let a = machine_a(&store);
    // A second session over the same keys (a rotated key).
    let e = build(
        a.path(),
        &["--new-session", "--cache-to", &store, "kcert", "mods"],
    );
    assert!(e.contains("kcert: stored in"), "{e}");
    let b = project("hello");
    let e = cache_cmd(b.path(), &["pull", &store]);
    assert!(
        e.contains("3 entries fetched"),
        "one session and the tree: {e}"
    );
    let e = cache_cmd(b.path(), &["pull", &store]);
    assert!(e.contains("0 entries fetched"), "{e}");
}

#[test]
fn an_unreachable_cache_is_a_warning_not_a_failure() {
    let nowhere = format!("127.0.0.1:{}/team/cache", free_port());
    let b = project("hello");
    let e = build(
        b.path(),
        &[
            "--cache-from",
            &nowhere,
            "--cache-to",
            &nowhere,
            "kcert",
            "mods",
        ],
    );
    assert!(e.contains("built 3 stage(s), 0 cached"), "{e}");
    assert_eq!(
        e.matches(&format!("warning: shared cache {nowhere} cannot be used"))
            .count(),
        1,
        "said once, then not asked again: {e}"
    );
    assert!(
        e.contains(&format!(
            "warning: nothing stored in the shared cache {nowhere}: it could not be used earlier in this build"
        )),
        "not tried again when storing: {e}"
    );

    // Only storing: tried, and the build still succeeds.
    let e = build(b.path(), &["--cache-to", &nowhere, "kcert", "mods"]);
    assert!(
        e.contains(&format!(
            "warning: storing in the shared cache {nowhere} stopped"
        )),
        "{e}"
    );
}

#[test]
fn an_offline_build_refuses_a_registry_cache_before_anything_runs() {
    let b = project("hello");
    for flag in ["--cache-from", "--cache-to"] {
        let cache = b.path().join("cache");
        let o = composer(
            b.path(),
            &[
                "build",
                "--offline",
                "--cache-dir",
                cache.to_str().unwrap(),
                flag,
                "127.0.0.1:1/team/cache",
                "kcert",
            ],
        );
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{e}");
        assert!(
            e.contains("--offline: the shared cache 127.0.0.1:1/team/cache is a registry"),
            "{e}"
        );
        assert!(!b.path().join("_out").exists(), "nothing built: {e}");
    }
    // An oci: directory is no network: allowed.
    let dir = tempfile::tempdir().unwrap();
    let store = format!("oci:{}", dir.path().join("cache").display());
    let e = build(b.path(), &["--offline", "--cache-to", &store, "kcert"]);
    assert!(e.contains("kcert: stored in"), "{e}");
}

#[test]
fn storing_what_is_there_sends_nothing_and_racing_writers_both_succeed() {
    let registry = Registry::start();
    let cache = format!("{}/team/cache", registry.addr());
    let a = machine_a(&cache);
    let tags = registry.tags("team/cache");
    assert_eq!(tags.len(), 4, "three stages and one session: {tags:?}");
    let e = build(
        a.path(),
        &["-v", "--insecure", "--cache-to", &cache, "kcert", "mods"],
    );
    assert!(!e.contains("stored in"), "{e}");
    assert_eq!(e.matches("already in").count(), 3, "{e}");

    // Two machines with the same entries store them at once in a fresh
    // repository: both succeed, one tag per key.
    let fresh = format!("{}/team/other", registry.addr());
    let b = project("hello");
    fs::remove_dir_all(b.path().join("pkgs")).unwrap();
    copy_dir(&a.path().join("pkgs"), &b.path().join("pkgs"));
    copy_dir(&a.path().join("cache"), &b.path().join("cache"));
    let racers: Vec<_> = [a.path(), b.path()]
        .into_iter()
        .map(|p| {
            let (p, fresh) = (p.to_path_buf(), fresh.clone());
            std::thread::spawn(move || {
                build(&p, &["--insecure", "--cache-to", &fresh, "kcert", "mods"])
            })
        })
        .collect();
    for r in racers {
        let e = r.join().unwrap();
        assert!(!e.contains("warning"), "{e}");
    }
    assert_eq!(registry.tags("team/other"), tags);
}

#[test]
fn a_build_with_more_of_a_session_completes_the_index_a_partial_build_stored() {
    let registry = Registry::start();
    let cache = format!("{}/team/cache", registry.addr());
    let a = project("hello");
    build(a.path(), &["kcert", "mods"]);
    // A build of part of the session stores an index of that part.
    let e = build(a.path(), &["--insecure", "--cache-to", &cache, "kcert"]);
    assert!(e.contains("kcert: stored in"), "{e}");
    // The whole session later: the index is completed, not left partial.
    let e = build(
        a.path(),
        &["--insecure", "--cache-to", &cache, "kcert", "mods"],
    );
    assert!(e.contains("mods: stored in"), "{e}");
    assert!(!e.contains("kcert: stored in"), "{e}");

    let b = project("hello");
    let e = build(
        b.path(),
        &["--insecure", "--cache-from", &cache, "kcert", "mods"],
    );
    assert!(
        e.contains("built 0 stage(s), 3 cached (3 from the shared cache)"),
        "{e}"
    );
    same_outputs(a.path(), b.path());
}

#[test]
fn an_oci_directory_carries_the_cache_to_an_air_gapped_machine() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("oci:{}", dir.path().join("cache").display());
    let a = machine_a(&store);
    let b = project("hello");
    let e = build(b.path(), &["--cache-from", &store, "kcert", "mods"]);
    assert!(
        e.contains("built 0 stage(s), 3 cached (3 from the shared cache)"),
        "{e}"
    );
    same_outputs(a.path(), b.path());
}

/// `composer cache ARGS... --cache-dir <p>/cache`; its stderr.
fn cache_cmd(p: &Path, args: &[&str]) -> String {
    let mut all = vec!["cache", "--cache-dir", "cache"];
    all.extend_from_slice(args);
    let o = composer(p, &all);
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{args:?}:\n{e}");
    e
}

#[test]
fn cache_push_and_pull_carry_a_whole_cache_through_a_registry_and_a_directory() {
    let registry = Registry::start();
    let repo = format!("{}/team/seed", registry.addr());
    let usb = tempfile::tempdir().unwrap();
    let dir = format!("oci:{}", usb.path().join("cache").display());
    // The connected site: built without any shared cache, then pushed.
    let a = project("hello");
    build(a.path(), &["kcert", "mods"]);
    let e = cache_cmd(a.path(), &["push", "--insecure", &repo]);
    assert!(e.contains("3 entries in"), "{e}");
    assert_eq!(
        registry.tags("team/seed").len(),
        4,
        "three stages, one session"
    );
    // A relay fetches it all from the registry and writes the directory.
    let relay = project("hello");
    let e = cache_cmd(relay.path(), &["pull", "--insecure", &repo]);
    assert!(e.contains("3 entries fetched"), "{e}");
    let e = cache_cmd(relay.path(), &["push", &dir]);
    assert!(e.contains("3 entries in"), "{e}");
    // The air-gapped machine: the directory only.
    let b = project("hello");
    let e = cache_cmd(b.path(), &["pull", &dir]);
    assert!(e.contains("3 entries fetched"), "{e}");
    let e = build(b.path(), &["kcert", "mods"]);
    assert!(e.contains("built 0 stage(s), 3 cached, in"), "{e}");
    same_outputs(a.path(), b.path());
    // Pulling again brings nothing new.
    let e = cache_cmd(b.path(), &["pull", &dir]);
    assert!(e.contains("0 entries fetched"), "{e}");
}

#[test]
fn a_cache_reference_with_a_tag_is_refused_before_anything_runs() {
    let b = project("hello");
    let o = composer(
        b.path(),
        &[
            "build",
            "--cache-dir",
            "cache",
            "--cache-from",
            "127.0.0.1:5000/team/cache:v1",
            "mods",
        ],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("a cache is a repository"), "{e}");
    assert!(!b.path().join("cache").exists() && !b.path().join("_out").exists());
}

/// The layout's `index.json` and the JSON of the blob tagged `tag`.
fn layout_doc(dir: &Path, tag_prefix: &str) -> (serde_json::Value, usize, serde_json::Value) {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let at = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .position(|d| {
            d["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .is_some_and(|t| t.starts_with(tag_prefix))
        })
        .unwrap_or_else(|| panic!("no tag {tag_prefix}*"));
    let digest = index["manifests"][at]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = dir
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    let doc = serde_json::from_slice(&fs::read(blob).unwrap()).unwrap();
    (index, at, doc)
}

/// Stores `doc` as a blob of the layout and points index entry `at` at it.
fn replace_tagged(dir: &Path, mut index: serde_json::Value, at: usize, doc: &serde_json::Value) {
    use sha2::Digest as _;
    let bytes = serde_json::to_vec(doc).unwrap();
    let hex = hex::encode(sha2::Sha256::digest(&bytes));
    fs::write(dir.join("blobs/sha256").join(&hex), &bytes).unwrap();
    index["manifests"][at]["digest"] = format!("sha256:{hex}").into();
    index["manifests"][at]["size"] = bytes.len().into();
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

#[test]
fn a_session_index_without_a_stage_of_the_plan_brings_none_of_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("cache");
    let store = format!("oci:{}", layout.display());
    machine_a(&store);
    // The session's index loses its `mods` member.
    let (index, at, mut session) = layout_doc(&layout, "session-");
    session["manifests"]
        .as_array_mut()
        .unwrap()
        .retain(|m| m["annotations"]["dev.composer.stage.name"] != "mods");
    assert_eq!(session["manifests"].as_array().unwrap().len(), 1);
    replace_tagged(&layout, index, at, &session);

    let b = project("hello");
    let e = build(b.path(), &["--cache-from", &store, "kcert", "mods"]);
    assert!(e.contains("ktree: fetched from"), "{e}");
    assert!(!e.contains("kcert: fetched"), "not half a session: {e}");
    assert!(e.contains("signing session "), "a new one: {e}");
    assert!(
        e.contains("built 2 stage(s), 1 cached (1 from the shared cache)"),
        "{e}"
    );
}

#[test]
fn a_store_tag_that_is_not_a_stage_key_names_no_directory() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("cache");
    let store = format!("oci:{}", layout.display());
    machine_a(&store);
    // A stage entry tagged with a path instead of a key.
    let (mut index, at, _) = layout_doc(&layout, "");
    let mut hostile = index["manifests"][at].clone();
    hostile["annotations"]["org.opencontainers.image.ref.name"] = "../../../escape".into();
    index["manifests"].as_array_mut().unwrap().push(hostile);
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();

    let b = project("hello");
    let e = cache_cmd(b.path(), &["pull", &store]);
    assert!(
        e.contains("`../../../escape` is not a stage key; left alone"),
        "{e}"
    );
    assert!(e.contains("3 entries fetched"), "{e}");
    assert!(!b.path().join("escape").exists() && !dir.path().join("escape").exists());
}

#[test]
fn machines_with_different_umasks_agree_on_every_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("oci:{}", dir.path().join("cache").display());
    let a = machine_a(&store);
    let b = project("hello");
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg("umask 077 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_composer"))
        .args([
            "build",
            "--cache-dir",
            "cache",
            "--cache-from",
            &store,
            "kcert",
            "mods",
        ])
        .current_dir(b.path())
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{e}");
    assert!(!e.contains("damaged"), "{e}");
    assert!(
        e.contains("built 0 stage(s), 3 cached (3 from the shared cache)"),
        "{e}"
    );
    same_outputs(a.path(), b.path());
}

fn copy_dir(from: &Path, to: &Path) {
    let s = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(s.success());
}
