//! The stage cache shared past one machine: every entry the local cache
//! keeps can also live in an OCI store (a registry repository, or an `oci:`
//! layout directory for an air-gapped copy), addressed by the stage's key.
//! CI cells and laptops read (`--cache-from`) and write (`--cache-to`) the
//! same store; the registry is the only thing they share.
//!
//! - `artifact`: an entry as an OCI artifact (meta.json + a zstd tar of
//!   `out/`), a signing session as an index over its stages' artifacts.
//! - `store`: the registry or layout behind a reference.
//! - `publish`: storing entries after a build, and `composer cache push`.
//! - `pull`: `composer cache pull` ([`fetch_all`]).
//! - `unpack`: an entry's layer into the local cache, checked as written.
//! - here: which entries are fetched before a build decides what runs
//!   ([`fill`]), and reading entries and sessions from a store.
//!
//! Invariants:
//! - A signing session travels as one unit: its stages are fetched only
//!   when the store's session index lists every session stage the plan
//!   has, and all of them land in the cache or none does; a session is
//!   stored stage by stage, then its index last (an index stored from part
//!   of a session is completed by a later build with more of it).
//! - What is fetched is checked by digest while it is read, and its tree
//!   against the digest the entry recorded, before it is committed: the
//!   local cache then holds exactly what a local build would have left.
//! - The shared cache never fails a build: a store that cannot be reached
//!   is a warning (and is not asked again in this build), a damaged entry
//!   is a warning and the stage is built here.
//! - Storing a key the store already has sends nothing (for a session
//!   stage: the session's index is there). Two writers racing on one key
//!   both succeed; the tag names one entry.
//! - Nothing secret is sent: entries hold no session key (the cache never
//!   does), and only `meta.json` and `out/` travel.

pub mod artifact;
mod publish;
mod pull;
pub mod store;
mod unpack;

use std::cell::Cell;
use std::path::PathBuf;
use std::time::Duration;

use super::cache::{Cache, CacheError, Entry, Meta, Pending, is_key};
use super::plan::Planned;
use crate::oci::layer::LayerError;
use crate::oci::layout::LayoutError;
use crate::oci::registry::{RegistryError, RegistryOptions};
pub(crate) use publish::publish;
pub use publish::store_entries;
pub use pull::{Pulled, fetch_all};
pub use store::Store;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Damaged(String),
}

impl RemoteError {
    /// Whether the store itself failed (not one entry): unreachable, TLS,
    /// credentials, a server error. It is not asked again in this build.
    pub(super) fn store_failed(&self) -> bool {
        matches!(self, RemoteError::Registry(e) if registry_unusable(e))
    }
}

fn registry_unusable(e: &RegistryError) -> bool {
    match e {
        RegistryError::PlainHttp { .. }
        | RegistryError::Tls { .. }
        | RegistryError::Transport { .. }
        | RegistryError::Unauthorized { .. }
        | RegistryError::InsecureCredentials { .. }
        | RegistryError::Credentials { .. } => true,
        RegistryError::Status { status, .. } => *status >= 500,
        RegistryError::RetriesExhausted { last, .. } => registry_unusable(last),
        _ => false,
    }
}

/// Where a build reads and writes shared entries.
#[derive(Clone, Debug, Default)]
pub struct Remote {
    /// Looked in, in order, on a local miss.
    pub from: Vec<Store>,
    /// Every entry of the plan is stored here after the build.
    pub to: Option<Store>,
    pub registry: RegistryOptions,
}

impl Remote {
    /// Registry options for the cache: few retries and short waits, so an
    /// unreachable registry costs seconds, not minutes.
    pub fn registry_options(insecure: bool) -> RegistryOptions {
        RegistryOptions {
            insecure,
            retries: 2,
            backoff: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(10),
            ..RegistryOptions::default()
        }
    }
}

/// What the shared cache did, for the build's report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteEvent {
    /// `from` has a stage's entry of `bytes`; it is being read.
    Fetching {
        stage: String,
        from: String,
        bytes: u64,
    },
    /// A stage's entry came from `from`: `bytes` read.
    Fetched {
        stage: String,
        from: String,
        bytes: u64,
    },
    /// A stage's entry was stored in `to`: `bytes` sent.
    Stored {
        stage: String,
        to: String,
        bytes: u64,
    },
    /// `to` already had the stage's entry: nothing sent.
    Present { stage: String, to: String },
    /// Something failed; the build goes on without it.
    Warning(String),
}

/// A store and whether it still answers.
struct Source<'a> {
    store: &'a Store,
    usable: Cell<bool>,
}

impl<'a> Source<'a> {
    fn new(store: &'a Store) -> Self {
        Source {
            store,
            usable: Cell::new(true),
        }
    }

    fn usable(&self) -> bool {
        self.usable.get()
    }
}

/// Reads entries from the `--cache-from` stores.
struct Reader<'a> {
    sources: Vec<Source<'a>>,
    cache: &'a Cache,
    opts: &'a RegistryOptions,
}

impl Reader<'_> {
    /// A scratch directory in the cache's `tmp/` (emptied by every build).
    fn scratch(&self) -> Result<PathBuf, CacheError> {
        let p = self.cache.begin()?;
        Ok(p.dir)
    }

    /// Reports a failure of `source`; a failed store is not asked again
    /// (and is reported once).
    fn failed(source: &Source<'_>, what: &str, e: RemoteError, on: &mut dyn FnMut(RemoteEvent)) {
        if e.store_failed() {
            if source.usable.replace(false) {
                on(RemoteEvent::Warning(format!(
                    "shared cache {} cannot be used ({e}); going on without it",
                    source.store
                )));
            }
        } else {
            on(RemoteEvent::Warning(format!(
                "{what} from {} is damaged ({e}); it is built here",
                source.store
            )));
        }
    }

    /// One stage's entry from `store` (by tag, or by manifest digest),
    /// pending in the cache with its meta and the bytes read.
    fn read(
        &self,
        store: &Store,
        key: &str,
        digest: Option<&str>,
        found: &mut dyn FnMut(u64),
    ) -> Result<Option<(Pending, Meta, u64)>, RemoteError> {
        let scratch = self.scratch()?;
        let found = store.fetch(
            &artifact::stage_tag(key),
            digest,
            &scratch.join("layout"),
            self.opts,
            found,
        );
        let result = match found {
            Ok(Some(f)) => artifact::read_stage(&f.layout, &f.manifest, key, self.cache).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        let _ = super::fsops::remove_tree(&scratch);
        result
    }

    /// A stage's entry from the first store that has it, committed.
    fn stage(&self, name: &str, key: &str, on: &mut dyn FnMut(RemoteEvent)) -> Option<Entry> {
        for source in &self.sources {
            if !source.usable() {
                continue;
            }
            let store = source.store;
            let mut fetching = |bytes| {
                on(RemoteEvent::Fetching {
                    stage: name.to_string(),
                    from: store.to_string(),
                    bytes,
                })
            };
            let got = self
                .read(store, key, None, &mut fetching)
                .and_then(|r| r.map(|p| self.commit(p)).transpose());
            match got {
                Ok(None) => {}
                Ok(Some((entry, bytes))) => {
                    on(RemoteEvent::Fetched {
                        stage: name.to_string(),
                        from: store.to_string(),
                        bytes,
                    });
                    return Some(entry);
                }
                Err(e) => Self::failed(source, name, e, on),
            }
        }
        None
    }

    fn commit(
        &self,
        (pending, meta, bytes): (Pending, Meta, u64),
    ) -> Result<(Entry, u64), RemoteError> {
        let entry = self.cache.commit_checked(pending, meta)?;
        Ok((entry, bytes))
    }
}

/// What [`fill`] did: the stages fetched, and the stores that could not
/// be used (storing in one of them is not tried again in this build).
#[derive(Debug, Default)]
pub(crate) struct Filled {
    pub fetched: Vec<String>,
    pub unusable: Vec<Store>,
}

/// Before the build decides what runs: every stage with no local entry is
/// looked for in the `--cache-from` stores, and what is found becomes its
/// entry. The signing session's stages come as one unit, and only when
/// the local cache cannot reuse a session already and no new one was
/// asked for.
pub(crate) fn fill(
    planned: &mut [Planned<'_>],
    cache: &Cache,
    remote: &Remote,
    new_session: bool,
    on: &mut dyn FnMut(RemoteEvent),
) -> Filled {
    if remote.from.is_empty() {
        return Filled::default();
    }
    let reader = Reader {
        sources: remote.from.iter().map(Source::new).collect(),
        cache,
        opts: &remote.registry,
    };
    let fetched = fill_from(&reader, planned, new_session, on);
    Filled {
        fetched,
        unusable: reader
            .sources
            .iter()
            .filter(|s| !s.usable())
            .map(|s| s.store.clone())
            .collect(),
    }
}

fn fill_from(
    reader: &Reader<'_>,
    planned: &mut [Planned<'_>],
    new_session: bool,
    on: &mut dyn FnMut(RemoteEvent),
) -> Vec<String> {
    let cache = reader.cache;
    let mut fetched = Vec::new();
    // One stage at a time: unpacking is mostly the file system's work,
    // and two unpacks at once on two cores took longer than one after the
    // other (each unpack already reads on one thread and writes on another).
    for p in planned.iter_mut() {
        if p.hit.is_none() && !p.in_session {
            p.hit = reader.stage(&p.package.pkg.name.value, &p.key, on);
            if p.hit.is_some() {
                p.run = false;
                fetched.push(p.package.pkg.name.value.clone());
            }
        }
    }
    let session: Vec<usize> = (0..planned.len())
        .filter(|&i| planned[i].in_session)
        .collect();
    if session.is_empty() || new_session || super::plan::reused_session(planned, &session).is_some()
    {
        return fetched;
    }
    for source in &reader.sources {
        if !source.usable() {
            continue;
        }
        match fetch_session(reader, source.store, planned, &session) {
            Ok(None) => {}
            Ok(Some(got)) => {
                for (i, entry, bytes) in got {
                    let stage = planned[i].package.pkg.name.value.clone();
                    on(RemoteEvent::Fetched {
                        stage: stage.clone(),
                        from: source.store.to_string(),
                        bytes,
                    });
                    fetched.push(stage);
                    planned[i].hit = Some(entry);
                    planned[i].run = false;
                }
                return fetched;
            }
            Err(e) => {
                Reader::failed(source, "the signing session", e, on);
                // What the cache holds now (a failed fetch may have replaced
                // entries of another session before it was undone).
                for &i in &session {
                    planned[i].hit = cache.lookup(&planned[i].key);
                    planned[i].run = planned[i].hit.is_none();
                }
            }
        }
    }
    fetched
}

/// The entries `(key, manifest digest)` of session `id`, all read, then
/// all committed; on any failure none is kept.
fn fetch_members(
    reader: &Reader<'_>,
    store: &Store,
    id: &str,
    members: &[(String, String)],
) -> Result<Vec<(String, u64)>, RemoteError> {
    if let Some((key, _)) = members.iter().find(|(key, _)| !is_key(key)) {
        return Err(RemoteError::Invalid(format!(
            "session {id} lists `{key}`, which is not a stage key"
        )));
    }
    let tag = artifact::session_tag(id);
    let mut pending = Vec::new();
    for (n, (key, digest)) in members.iter().enumerate() {
        let failure = match reader.read(store, key, Some(digest), &mut |_| {}) {
            Ok(Some(p))
                if p.1.session.as_deref().map(artifact::session_tag) == Some(tag.clone()) =>
            {
                pending.push((n, p));
                continue;
            }
            Ok(other) => {
                if let Some((p, _, _)) = other {
                    let _ = reader.cache.discard(p);
                }
                RemoteError::Damaged(format!(
                    "the entry {key} listed in session {id} is missing or of another session"
                ))
            }
            Err(e) => e,
        };
        discard_all(reader.cache, pending);
        return Err(failure);
    }
    commit_all(reader, pending).map(|got| {
        got.into_iter()
            .map(|(n, _, bytes)| (members[n].0.clone(), bytes))
            .collect()
    })
}

/// Commits every pending entry (each checked while it was read), or
/// none: a failure while sealing (the disk) removes those sealed already.
fn commit_all(
    reader: &Reader<'_>,
    pending: Vec<(usize, (Pending, Meta, u64))>,
) -> Result<Vec<Landed>, RemoteError> {
    let mut out = Vec::new();
    let mut left = pending.into_iter();
    while let Some((i, (p, meta, bytes))) = left.next() {
        match reader.cache.commit_checked(p, meta) {
            Ok(entry) => out.push((i, entry, bytes)),
            Err(e) => {
                for (_, (rest, _, _)) in left {
                    let _ = reader.cache.discard(rest);
                }
                for (_, entry, _) in out {
                    let _ = reader.cache.remove(&entry.dir);
                }
                return Err(e.into());
            }
        }
    }
    Ok(out)
}

/// A fetched entry in the cache: the plan's stage (or a member's index),
/// the entry, the bytes read.
type Landed = (usize, Entry, u64);

/// The session the store holds for the plan's session stages, all of them
/// read and committed; `None` when the store has no session covering them.
fn fetch_session(
    reader: &Reader<'_>,
    store: &Store,
    planned: &[Planned<'_>],
    session: &[usize],
) -> Result<Option<Vec<Landed>>, RemoteError> {
    // Each session stage's tag names the session that stored it last; any
    // of those sessions whose index covers the plan will do.
    let mut ids: Vec<String> = Vec::new();
    for &i in session {
        if let Some(id) = store.session_of(&artifact::stage_tag(&planned[i].key), reader.opts)?
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    let mut covering = None;
    for id in ids {
        let tag = artifact::session_tag(&id);
        if let Some(members) = store.session_members(&tag, reader.opts)?
            && session
                .iter()
                .all(|&i| members.contains_key(&planned[i].key))
        {
            covering = Some((id, members));
            break;
        }
    }
    let Some((id, members)) = covering else {
        return Ok(None);
    };
    let wanted: Vec<(String, String)> = session
        .iter()
        .map(|&i| {
            let key = planned[i].key.clone();
            let digest = members[&key].digest().to_string();
            (key, digest)
        })
        .collect();
    let got = fetch_members(reader, store, &id, &wanted)?;
    let mut out = Vec::new();
    for (key, bytes) in got {
        let i = session
            .iter()
            .copied()
            .find(|&i| planned[i].key == key)
            .ok_or_else(|| RemoteError::Invalid(format!("no stage with key {key}")))?;
        let entry = reader
            .cache
            .lookup(&key)
            .ok_or_else(|| RemoteError::Invalid(format!("entry {key} vanished")))?;
        out.push((i, entry, bytes));
    }
    Ok(Some(out))
}

fn discard_all(cache: &Cache, pending: Vec<(usize, (Pending, Meta, u64))>) {
    for (_, (p, _, _)) in pending {
        let _ = cache.discard(p);
    }
}
