//! `composer cache pull`: every entry of a store that the local cache
//! lacks, each signing session whole or not at all, then the entries
//! outside a session.
//!
//! Invariants: a damaged entry or session is reported and skipped (the
//! pull goes on, and says how many at the end); only a store that fails
//! as a whole stops it. A key has one entry locally, and a session is
//! taken only when the cache lacks one of its keys (then whole, replacing
//! the entries of sessions that share its other keys), so pulling again
//! fetches nothing.

use super::{Reader, RemoteError, RemoteEvent, Source, Store, artifact, fetch_members};
use crate::exec::cache::{Cache, is_key};
use crate::oci::registry::RegistryOptions;

/// What `composer cache pull` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pulled {
    /// Entries that landed in the cache.
    pub landed: usize,
    /// Entries (a session counts once) found damaged and not kept.
    pub damaged: usize,
}

/// Every entry of `from` that the cache does not have, fetched and
/// committed: each signing session whole (or not at all), then each entry
/// outside a session. A damaged entry or session is reported and skipped;
/// the pull goes on. A session is taken when the cache lacks one of its
/// keys, so pulling again fetches nothing. Fails only when the store
/// itself fails.
pub fn fetch_all(
    from: &Store,
    cache: &Cache,
    opts: &RegistryOptions,
    on: &mut dyn FnMut(RemoteEvent),
) -> Result<Pulled, RemoteError> {
    let reader = Reader {
        sources: vec![Source::new(from)],
        cache,
        opts,
    };
    let tags = from.tags(opts)?;
    let mut pulled = Pulled::default();
    let (sessions, stages): (Vec<&String>, Vec<&String>) =
        tags.iter().partition(|t| t.starts_with("session-"));
    let mut outcome = |what: &str,
                       got: Result<Vec<(String, u64)>, RemoteError>,
                       on: &mut dyn FnMut(RemoteEvent)| {
        match got {
            Ok(got) => {
                for (key, bytes) in got {
                    on(RemoteEvent::Fetched {
                        stage: cache.lookup(&key).map(|e| e.meta.stage).unwrap_or(key),
                        from: from.to_string(),
                        bytes,
                    });
                    pulled.landed += 1;
                }
                Ok(())
            }
            Err(e) if e.store_failed() => Err(e),
            Err(e) => {
                on(RemoteEvent::Warning(format!(
                    "{what} from {from} is damaged ({e}); not kept"
                )));
                pulled.damaged += 1;
                Ok(())
            }
        }
    };
    for tag in sessions {
        let id = tag.trim_start_matches("session-");
        let got = pull_session(&reader, from, tag, id);
        outcome(&format!("session {id}"), got, on)?;
    }
    for tag in stages {
        if !is_key(tag) {
            on(RemoteEvent::Warning(format!(
                "{from}: `{tag}` is not a stage key; left alone"
            )));
            continue;
        }
        if cache.lookup(tag).is_some() {
            continue;
        }
        let got = match from.session_of(tag, opts) {
            // A session's stage comes with its session, above.
            Ok(Some(_)) => continue,
            Ok(None) => reader
                .read(from, tag, None, &mut |_| {})
                .and_then(|p| p.map(|p| reader.commit(p)).transpose())
                .map(|got| {
                    got.map(|(e, bytes)| (e.meta.key, bytes))
                        .into_iter()
                        .collect()
                }),
            Err(e) => Err(e),
        };
        outcome(&format!("entry {tag}"), got, on)?;
    }
    Ok(pulled)
}

/// The session indexed by `tag`, when the cache lacks one of its keys:
/// its members that are not this session's here already, all or none.
fn pull_session(
    reader: &Reader<'_>,
    from: &Store,
    tag: &str,
    id: &str,
) -> Result<Vec<(String, u64)>, RemoteError> {
    let Some(members) = from.session_members(tag, reader.opts)? else {
        return Ok(Vec::new());
    };
    let cache = reader.cache;
    if members.keys().all(|key| cache.lookup(key).is_some()) {
        return Ok(Vec::new());
    }
    let missing: Vec<(String, String)> = members
        .iter()
        .filter(|(key, _)| {
            cache
                .lookup(key)
                .and_then(|e| e.meta.session)
                .is_none_or(|s| artifact::session_tag(&s) != *tag)
        })
        .map(|(key, d)| (key.clone(), d.digest().to_string()))
        .collect();
    fetch_members(reader, from, id, &missing)
}
