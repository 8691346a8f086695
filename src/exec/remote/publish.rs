//! Storing entries in a shared cache: after a build (`--cache-to`: every
//! entry of the plan) and for `composer cache push` (every local entry).
//! Entries outside a signing session go one by one; a session's entries
//! go together, then the session's index, so a reader never finds an index
//! whose members are missing.
//!
//! Invariants: what the store has (by tag; for a session, its index) is
//! not sent again; a local entry whose tree no longer has its recorded
//! digest is not sent (a warning says so); a failure is the caller's to
//! report, never a build failure.

use super::artifact;
use super::store::Store;
use super::{Remote, RemoteError, RemoteEvent};
use crate::exec::cache::{Cache, CacheError, Entry};
use crate::oci::layout::Layout;
use crate::oci::registry::RegistryOptions;

/// After a successful build: every stage's entry is stored in `--cache-to`
/// unless it is there already (`outputs`: the entries of the plan), or
/// unless it is one of the stores found `unusable` while fetching.
pub(crate) fn publish(
    outputs: &[Entry],
    cache: &Cache,
    remote: &Remote,
    unusable: &[Store],
    on: &mut dyn FnMut(RemoteEvent),
) {
    let Some(to) = &remote.to else {
        return;
    };
    if unusable.contains(to) {
        on(RemoteEvent::Warning(format!(
            "nothing stored in the shared cache {to}: it could not be used earlier in this build"
        )));
        return;
    }
    if let Err(e) = store_entries(to, outputs, cache, &remote.registry, on) {
        on(RemoteEvent::Warning(format!(
            "storing in the shared cache {to} stopped: {e}"
        )));
    }
}

/// Stores `entries` in `to`: each entry outside a signing session on its
/// own, each session's entries together, then the session's index.
pub fn store_entries(
    to: &Store,
    entries: &[Entry],
    cache: &Cache,
    opts: &RegistryOptions,
    on: &mut dyn FnMut(RemoteEvent),
) -> Result<(), RemoteError> {
    let scratch = cache.begin()?.dir;
    let result = (|| {
        let layout = Layout::create(&scratch.join("layout"))?;
        let mut sessions: std::collections::BTreeMap<&str, Vec<&Entry>> = Default::default();
        for entry in entries {
            match entry.meta.session.as_deref() {
                Some(id) => sessions.entry(id).or_default().push(entry),
                None => store_stage(to, &layout, entry, opts, on)?,
            }
        }
        for (id, members) in sessions {
            store_session(to, &layout, id, &members, opts, on)?;
        }
        Ok(())
    })();
    let _ = crate::exec::fsops::remove_tree(&scratch);
    result
}

/// One stage's entry, unless the store has its key.
fn store_stage(
    to: &Store,
    layout: &Layout,
    entry: &Entry,
    opts: &RegistryOptions,
    on: &mut dyn FnMut(RemoteEvent),
) -> Result<(), RemoteError> {
    let tag = artifact::stage_tag(&entry.meta.key);
    if to.has(&tag, opts)? {
        on(RemoteEvent::Present {
            stage: entry.meta.stage.clone(),
            to: to.to_string(),
        });
        return Ok(());
    }
    if !intact(entry, on)? {
        return Ok(());
    }
    let desc = artifact::write_stage(layout, &entry.meta, &entry.out())?;
    let bytes = put(to, layout, &desc, &tag, opts)?;
    on(RemoteEvent::Stored {
        stage: entry.meta.stage.clone(),
        to: to.to_string(),
        bytes,
    });
    Ok(())
}

/// Whether a local entry still has the digest it was committed with; a
/// damaged one is not stored (a warning says so).
fn intact(entry: &Entry, on: &mut dyn FnMut(RemoteEvent)) -> Result<bool, RemoteError> {
    let actual = crate::exec::fsops::tree_digest(&entry.out()).map_err(CacheError::from)?;
    if actual == entry.meta.output_digest {
        return Ok(true);
    }
    on(RemoteEvent::Warning(format!(
        "{}: the local entry changed since it was cached; not stored (`composer cache verify --repair` removes it)",
        entry.meta.stage
    )));
    Ok(false)
}

/// The session's stages the store's index of the session lacks (tagged by
/// key, replacing another session's entry of the same key), then the
/// index over what it had and what was added. A build that reused part of
/// a session stores a partial index; a later build with more of the
/// session completes it. Two writers completing one index at once: each
/// reads the index again after writing it and adds what the other's write
/// dropped (three rounds at most). A writer that wrote after the other
/// had checked can still drop its stages from the index; the next build
/// with those stages finds them missing and adds them again.
fn store_session(
    to: &Store,
    layout: &Layout,
    id: &str,
    entries: &[&Entry],
    opts: &RegistryOptions,
    on: &mut dyn FnMut(RemoteEvent),
) -> Result<(), RemoteError> {
    let index_tag = artifact::session_tag(id);
    let mut stored = to.session_members(&index_tag, opts)?.unwrap_or_default();
    let (present, missing): (Vec<&Entry>, Vec<&Entry>) = entries
        .iter()
        .partition(|e| stored.contains_key(&e.meta.key));
    for entry in present {
        on(RemoteEvent::Present {
            stage: entry.meta.stage.clone(),
            to: to.to_string(),
        });
    }
    if missing.is_empty() {
        return Ok(());
    }
    for entry in &missing {
        if !intact(entry, on)? {
            return Ok(());
        }
    }
    let mut ours = Vec::new();
    for entry in missing {
        let desc = artifact::write_stage(layout, &entry.meta, &entry.out())?;
        let tag = artifact::stage_tag(&entry.meta.key);
        let bytes = put(to, layout, &desc, &tag, opts)?;
        on(RemoteEvent::Stored {
            stage: entry.meta.stage.clone(),
            to: to.to_string(),
            bytes,
        });
        ours.push((entry.meta.key.clone(), desc));
    }
    for _ in 0..3 {
        for (key, desc) in &ours {
            stored.entry(key.clone()).or_insert_with(|| desc.clone());
        }
        for desc in stored.values() {
            copy_manifest(to, layout, desc, opts)?;
        }
        let members: Vec<_> = stored.values().cloned().collect();
        let index = artifact::write_session(layout, id, &members)?;
        put(to, layout, &index, &index_tag, opts)?;
        stored = to.session_members(&index_tag, opts)?.unwrap_or_default();
        if ours.iter().all(|(key, _)| stored.contains_key(key)) {
            return Ok(());
        }
    }
    Err(RemoteError::Invalid(format!(
        "the index of session {id} kept losing stages to other writers"
    )))
}

/// Puts the manifest `desc` names (one already in the store) into the
/// staging layout, so an index naming it can be stored from there.
fn copy_manifest(
    to: &Store,
    layout: &Layout,
    desc: &oci_spec::image::Descriptor,
    opts: &RegistryOptions,
) -> Result<(), RemoteError> {
    if layout.has_blob(desc.digest()) {
        return Ok(());
    }
    let digest = desc.digest().to_string();
    let bytes = to.manifest_at(&digest, opts)?.ok_or_else(|| {
        RemoteError::Damaged(format!("{to} lists {digest} in a session but lacks it"))
    })?;
    layout.write_blob(&bytes)?;
    Ok(())
}

/// [`Store::put`], tried again (three times at most, waiting a little
/// longer each time) when the store refused it but still answers: a writer
/// racing on the same content makes a registry refuse a manifest whose
/// blobs the other is still uploading. Storing is idempotent (blobs by
/// digest, the tag names the same manifest), so trying again is safe.
fn put(
    to: &Store,
    layout: &Layout,
    desc: &oci_spec::image::Descriptor,
    tag: &str,
    opts: &RegistryOptions,
) -> Result<u64, RemoteError> {
    let mut attempt = 0;
    loop {
        match to.put(layout, desc, tag, opts) {
            Err(e) if attempt < 3 && !e.store_failed() => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(250 << attempt));
            }
            done => return done,
        }
    }
}
