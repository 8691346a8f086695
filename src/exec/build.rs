//! A build: keys for every stage of a plan, the cache decision for each,
//! the signing-session rule, and the export of the targets' filesystems;
//! `schedule` runs the stages.
//!
//! The phases, in order: keys (`plan::plan_stages`); the decision (`decide`: the
//! cache and the session rule say which stages run); the sources of the
//! stages that run (`prefetch_sources`); image inputs; the signing session
//! (`start_session_if_needed`); the stages (`schedule`); the gate; the
//! export.
//!
//! Sources first: before the first stage starts, and before a signing key
//! is made, every source of every stage that will run (cache misses, and
//! the stages a new signing session rebuilds) is fetched and checked, and
//! the build stops naming every one that cannot be had. Cached stages need
//! no sources. Each source is hashed twice in a build that runs its stage:
//! here, and again when the stage copies it in, because the download cache
//! re-checks a file before every use (see `sources`).
//!
//! Signing sessions: a stage joins the session when its rendered definition
//! mentions the session directory (`/signing/`: it builds with the
//! session's certificate), when it depends on a stage that joined, or when
//! it is built on the kernel tree such a stage certifies (`plan`: a kernel
//! compiled with no key, reused across sessions). The session's stages are
//! reused together or renewed together: if every one of them is cached from
//! one same session (and `--new-session` was not asked), all are reused and
//! no key is made; otherwise a new session starts and all of them run, so a
//! kernel never meets modules of another session. "Run" is cheaper for a
//! stage whose definition does not use the session and whose inputs are
//! outside it (a module compiled against the certified tree): its cached
//! build is signed again with the new key (`stage::resign`).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::cache::{Cache, CacheError, Entry};
use super::fsops::{self, FsError};
use super::image;
use super::plan::plan_stages;
pub(super) use super::plan::{Origin, Planned};
use super::prefetch::{self, Fetched, Unavailable};
use super::remote::{self, Remote, RemoteEvent};
use super::schedule;
use super::sources::SourceOptions;
use super::stage::{self, Context, SessionHooks, StageError};
use crate::defs::load::Definitions;
use crate::graph::Plan;

/// How a build runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub cache_dir: PathBuf,
    /// Targets land in `<output>/<target>/`, logs in `<output>/logs/`.
    pub output: PathBuf,
    pub jobs: usize,
    pub offline: bool,
    pub mirrors: Vec<String>,
    /// SOURCE_DATE_EPOCH: timestamps of outputs.
    pub epoch: Option<i64>,
    /// Plain HTTP allowed to registries (image dependencies).
    pub insecure: bool,
    /// Start a new signing session even when the cached one could be
    /// reused (the key rotates; what the session stages compile against is
    /// reused all the same).
    pub new_session: bool,
    /// The shared cache: stores looked in on a local miss, and the one
    /// every entry of the plan is stored in after the build.
    pub remote: Remote,
}

/// The public half of a signing session, as the build sees it.
pub struct SessionCert {
    /// A stable id (the certificate's fingerprint).
    pub id: String,
    /// The certificate, PEM.
    pub cert_pem: Vec<u8>,
    /// What the key is, for people ("ephemeral ECDSA P-384/SHA-384 key").
    pub description: String,
    /// `--sign-in-tree` only: the private key and certificate (PEM) that
    /// session stages find on a tmpfs at `stage::SESSION_KEY`.
    pub private_pem: Option<std::sync::Arc<zeroize::Zeroizing<Vec<u8>>>>,
}

/// How long the scheduler waits for a stage's news before it reports a
/// `Progress::Tick`.
pub const TICK: Duration = Duration::from_secs(1);

/// What the build reports, in order, on the calling thread.
pub enum Progress {
    WaitingForLock(PathBuf),
    /// The decision for a stage before anything runs.
    Planned {
        stage: String,
        cached: bool,
        reasons: Vec<String>,
    },
    SessionStarted {
        id: String,
        description: String,
        stages: Vec<String>,
    },
    SessionReused {
        id: String,
    },
    /// A source of a stage that will run, verified in the download cache.
    Source(Fetched),
    Started(String),
    Phase {
        stage: String,
        phase: String,
    },
    Line {
        stage: String,
        line: String,
    },
    Note {
        stage: String,
        note: String,
    },
    Finished {
        stage: String,
        elapsed: Duration,
    },
    Failed {
        stage: String,
    },
    /// Nothing happened for `TICK`: running stages are still running (a
    /// display without a terminal says so now and then).
    Tick,
    Exported {
        target: String,
        path: PathBuf,
    },
    /// The shared cache fetched, stored or skipped an entry, or warns.
    Remote(RemoteEvent),
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("stage {stage}: {error}")]
    Stage {
        stage: String,
        error: Box<StageError>,
    },
    #[error("stage {stage}: {message}")]
    Input { stage: String, message: String },
    #[error("no stage was started: {0}")]
    Sources(#[source] Unavailable),
    #[error("starting the signing session: {0}")]
    Session(String),
    #[error("{0}")]
    Rejected(String),
    #[error("{failed} of {total} stages failed; see above")]
    Several { failed: usize, total: usize },
}

/// The outcome of a successful build.
#[derive(Debug, Default)]
pub struct Summary {
    pub built: Vec<String>,
    /// Cached builds signed again for a new session, nothing run.
    pub resigned: Vec<String>,
    pub cached: Vec<String>,
    /// Of the cached stages, those whose entry came from the shared cache.
    pub fetched: Vec<String>,
    pub outputs: Vec<(String, PathBuf)>,
    pub session: Option<String>,
    /// The signing session's certificate (PEM), new or reused.
    pub session_cert: Option<String>,
}

/// What the cache and the session rule decided, before anything runs.
struct Decision {
    /// The signing session's stages, in plan order.
    session_stages: Vec<usize>,
    /// Why a new signing session starts (all its stages run); `None` when
    /// no stage joins one or the cached session is reused.
    new_session: Option<String>,
}

/// What the export gate sees: the targets' outputs, still in the cache
/// (which stays locked), and the signing session's certificate.
pub struct Built<'a> {
    /// `(target, its output directory in the cache)`, in target order.
    pub targets: &'a [(String, PathBuf)],
    pub session_cert: Option<&'a str>,
    /// The targets no stage of a signing session went into: their modules
    /// (if any) are for a kernel this build did not make, and no session
    /// signed them.
    pub outside_session: &'a [String],
    /// `(target, the outputs of every stage it is built on)`, in target
    /// order: where the gate finds the kernel tree a target's modules were
    /// built against.
    pub dependencies: &'a [(String, Vec<PathBuf>)],
}

/// What the gate hands back: trees to export in place of a target's
/// cached output (`(target, directory)`; the directory is moved into the
/// output directory, so it must be the gate's own, on the same file
/// system as the output).
pub type Replacements = Vec<(String, PathBuf)>;

/// Builds `plan`. `start_session` is called at most once, when a stage of
/// the signing session has to run and every source is at hand;
/// `session_hooks` check and sign what a session stage produces.
pub fn build(
    defs: &Definitions,
    plan: &Plan,
    opts: &Options,
    start_session: &mut dyn FnMut() -> Result<SessionCert, String>,
    session_hooks: Option<&dyn SessionHooks>,
    on: &mut dyn FnMut(Progress),
) -> Result<Summary, BuildError> {
    build_gated(
        defs,
        plan,
        opts,
        start_session,
        session_hooks,
        &mut |_| Ok(Vec::new()),
        on,
    )
}

/// [`build`], with a gate between the stages and the export: `gate` sees
/// the targets' outputs before anything lands in the output directory,
/// and when it fails nothing is exported (`BuildError::Rejected`). The
/// outputs phase validates and packs images there, and may hand back a
/// tree to export instead of a target's cached output (modules signed
/// with the user's key: the cache keeps them unsigned).
pub fn build_gated(
    defs: &Definitions,
    plan: &Plan,
    opts: &Options,
    start_session: &mut dyn FnMut() -> Result<SessionCert, String>,
    session_hooks: Option<&dyn SessionHooks>,
    gate: &mut dyn FnMut(&Built<'_>) -> Result<Replacements, String>,
    on: &mut dyn FnMut(Progress),
) -> Result<Summary, BuildError> {
    let cache = Cache::open(&opts.cache_dir, &mut || {
        on(Progress::WaitingForLock(opts.cache_dir.clone()))
    })?;
    let platform = defs.platform.to_string();
    let (mut planned, index) = plan_stages(defs, plan, opts, &cache)?;
    let filled = remote::fill(
        &mut planned,
        &cache,
        &opts.remote,
        opts.new_session,
        &mut |e| on(Progress::Remote(e)),
    );
    let decision = decide(&mut planned, opts.new_session, on);
    report_plan(&planned, &cache, &platform, &decision, on);
    let sources = SourceOptions {
        dir: cache.downloads(),
        offline: opts.offline,
        mirrors: opts.mirrors.clone(),
    };
    prefetch_sources(&planned, &sources, on)?;
    unpack_images(&mut planned, &cache)?;
    let session = start_session_if_needed(&decision, &planned, start_session, on)?;

    let session_cert_pem = session
        .as_ref()
        .map(|c| String::from_utf8_lossy(&c.cert_pem).into_owned());
    let ctx = context(
        &cache,
        &sources,
        defs,
        opts,
        session.as_ref(),
        session_hooks,
    )?;
    let session_id = session.as_ref().map(|s| s.id.clone());
    let outputs = schedule::run(&planned, &ctx, opts.jobs.max(1), session_id.clone(), on)?;

    // A reused session is the one its first stage's entry names.
    let reused = decision.session_stages.first().map(|&i| &outputs[i].meta);
    let mut summary = Summary {
        session: session_id.or_else(|| reused.and_then(|m| m.session.clone())),
        session_cert: session_cert_pem.or_else(|| reused.and_then(|m| m.session_cert.clone())),
        ..Summary::default()
    };
    tally(&planned, &cache, &platform, &mut summary)?;
    summary.fetched = filled
        .fetched
        .into_iter()
        .filter(|s| summary.cached.contains(s))
        .collect();
    summary.outputs = gate_and_export(plan, &planned, &index, &outputs, &summary, opts, gate, on)?;
    remote::publish(&outputs, &cache, &opts.remote, &filled.unusable, &mut |e| {
        on(Progress::Remote(e))
    });
    Ok(summary)
}

/// What the stages run with: the cache, the sources, the platform and the
/// session's public half (and, with `--sign-in-tree`, its key).
fn context<'a>(
    cache: &'a Cache,
    sources: &'a SourceOptions,
    defs: &Definitions,
    opts: &Options,
    session: Option<&SessionCert>,
    session_hooks: Option<&'a dyn SessionHooks>,
) -> Result<Context<'a>, BuildError> {
    Ok(Context {
        cache,
        sources,
        platform: defs.platform,
        epoch: opts.epoch,
        logs: opts.output.join("logs"),
        session_certs: write_session_cert(cache, session)?,
        session_cert_pem: session.map(|c| String::from_utf8_lossy(&c.cert_pem).into_owned()),
        session_hooks,
        session_key: session.and_then(|s| s.private_pem.clone()).map(|content| {
            super::sandbox::SecretFile {
                dst: stage::SESSION_KEY.to_string(),
                content,
            }
        }),
    })
}

/// Which stages were built, signed again or cached; a built stage's
/// fingerprint becomes the one `-v` compares the next build with.
fn tally(
    planned: &[Planned<'_>],
    cache: &Cache,
    platform: &str,
    summary: &mut Summary,
) -> Result<(), BuildError> {
    for p in planned {
        let name = p.package.pkg.name.value.clone();
        if p.resign {
            summary.resigned.push(name);
        } else if p.run {
            cache.set_last(platform, &name, &p.fingerprint)?;
            summary.built.push(name);
        } else {
            summary.cached.push(name);
        }
    }
    Ok(())
}

/// The gate over the targets' outputs, then their export; trees the gate
/// made and the export did not take are removed.
#[allow(clippy::too_many_arguments)]
fn gate_and_export(
    plan: &Plan,
    planned: &[Planned<'_>],
    index: &HashMap<&str, usize>,
    outputs: &[Entry],
    summary: &Summary,
    opts: &Options,
    gate: &mut dyn FnMut(&Built<'_>) -> Result<Replacements, String>,
    on: &mut dyn FnMut(Progress),
) -> Result<Vec<(String, PathBuf)>, BuildError> {
    let targets = gate_inputs(plan, planned, index, outputs);
    let replacements = gate(&Built {
        targets: &targets.cached,
        session_cert: summary.session_cert.as_deref(),
        outside_session: &targets.outside_session,
        dependencies: &targets.dependencies,
    })
    .map_err(BuildError::Rejected)?;
    let exported = export_all(plan, index, outputs, &replacements, &opts.output, on);
    if exported.is_err() {
        for (_, tree) in &replacements {
            let _ = fsops::remove_tree(tree);
        }
    }
    exported
}

/// What the gate is shown of the plan's targets.
struct GateInputs {
    cached: Vec<(String, PathBuf)>,
    outside_session: Vec<String>,
    dependencies: Vec<(String, Vec<PathBuf>)>,
}

fn gate_inputs(
    plan: &Plan,
    planned: &[Planned<'_>],
    index: &HashMap<&str, usize>,
    outputs: &[Entry],
) -> GateInputs {
    let at = |t: &String| index[t.as_str()];
    GateInputs {
        cached: plan
            .targets
            .iter()
            .map(|t| (t.clone(), outputs[at(t)].out()))
            .collect(),
        outside_session: plan
            .targets
            .iter()
            .filter(|t| !planned[at(t)].in_session)
            .cloned()
            .collect(),
        dependencies: plan
            .targets
            .iter()
            .map(|t| {
                let below = closure(planned, at(t));
                (t.clone(), below.iter().map(|&i| outputs[i].out()).collect())
            })
            .collect(),
    }
}

/// Exports every target: the gate's tree when it made one, else the
/// cached output.
fn export_all(
    plan: &Plan,
    index: &HashMap<&str, usize>,
    outputs: &[Entry],
    replacements: &Replacements,
    output: &Path,
    on: &mut dyn FnMut(Progress),
) -> Result<Vec<(String, PathBuf)>, BuildError> {
    let mut exported = Vec::new();
    for target in &plan.targets {
        let replacement = replacements.iter().find(|(t, _)| t == target);
        let path = match replacement {
            Some((_, tree)) => export_tree(tree, output, target)?,
            None => export(&outputs[index[target.as_str()]], output, target)?,
        };
        on(Progress::Exported {
            target: target.clone(),
            path: path.clone(),
        });
        exported.push((target.clone(), path));
    }
    Ok(exported)
}

/// The session rule: when the session's stages are not all cached from one
/// same session, a new one is needed and every one of them runs. Nothing
/// is started here: no key is made before the sources are at hand.
fn decide(
    planned: &mut [Planned<'_>],
    new_session: bool,
    on: &mut dyn FnMut(Progress),
) -> Decision {
    let session_stages: Vec<usize> = (0..planned.len())
        .filter(|&i| planned[i].in_session)
        .collect();
    let mut decision = Decision {
        session_stages,
        new_session: None,
    };
    if decision.session_stages.is_empty() {
        return decision;
    }
    let reused = (!new_session)
        .then(|| super::plan::reused_session(planned, &decision.session_stages))
        .flatten();
    if let Some(id) = reused {
        on(Progress::SessionReused { id: id.to_string() });
        return decision;
    }
    let why: Vec<&str> = decision
        .session_stages
        .iter()
        .filter(|&&i| planned[i].hit.is_none())
        .map(|&i| planned[i].package.pkg.name.value.as_str())
        .collect();
    decision.new_session = Some(if new_session {
        "a new signing session was asked for (--new-session)".to_string()
    } else if why.is_empty() {
        "the session's stages come from different sessions".to_string()
    } else {
        format!("new signing session (to rebuild {})", why.join(", "))
    });
    for &i in &decision.session_stages {
        planned[i].run = true;
        planned[i].resign = can_resign(planned, i);
    }
    decision
}

/// A session stage whose cached build can be signed again for a new
/// session instead of running: it has an entry, its definition does not
/// use the session (it compiled against a kernel tree, not with the
/// certificate), and none of its inputs is a session stage (they are all
/// what they were when it was built). Its modules' content does not depend
/// on the session; only their signatures do.
fn can_resign(planned: &[Planned<'_>], i: usize) -> bool {
    let p = &planned[i];
    p.hit.is_some()
        && !p.package.joins_signing_session()
        && p.deps.iter().all(|&d| !planned[d].in_session)
}

/// Reports the decision for every stage, with the reasons a stage runs.
fn report_plan(
    planned: &[Planned<'_>],
    cache: &Cache,
    platform: &str,
    decision: &Decision,
    on: &mut dyn FnMut(Progress),
) {
    for p in planned {
        let name = p.package.pkg.name.value.clone();
        let mut reasons = Vec::new();
        if p.run {
            if p.resign {
                reasons.push(
                    "its cached build is signed again for the new signing session (nothing compiles)"
                        .into(),
                );
            } else if p.hit.is_some() {
                reasons.extend(decision.new_session.clone());
            } else {
                match cache.last(platform, &name) {
                    None => reasons.push("never built with this cache".to_string()),
                    Some(old) => {
                        let mut r = p.fingerprint.reasons(&old);
                        if r.is_empty() {
                            r.push("its output is no longer in the cache".into());
                        }
                        reasons.extend(r);
                    }
                }
            }
        }
        on(Progress::Planned {
            stage: name,
            cached: !p.run,
            reasons,
        });
    }
}

/// Fetches and checks every source of the stages that run; fails naming
/// every one that cannot be had.
fn prefetch_sources(
    planned: &[Planned<'_>],
    sources: &SourceOptions,
    on: &mut dyn FnMut(Progress),
) -> Result<(), BuildError> {
    let wanted = prefetch::wanted(planned.iter().filter(|p| p.run).map(|p| p.package));
    prefetch::fetch_all(&wanted, sources, &mut |f| on(Progress::Source(f.clone())))
        .map_err(BuildError::Sources)?;
    Ok(())
}

/// Unpacks the image inputs of the stages that run, once each.
fn unpack_images(planned: &mut [Planned<'_>], cache: &Cache) -> Result<(), BuildError> {
    for p in planned.iter_mut().filter(|p| p.run) {
        let stage = p.package.pkg.name.value.clone();
        for (_, origin) in p.inputs.iter_mut() {
            if let Origin::Image(img, path) = origin {
                let rootfs = cache
                    .image_rootfs(&img.digest, |dir| image::unpack(img, dir))?
                    .map_err(|e| BuildError::Input {
                        stage: stage.clone(),
                        message: e.to_string(),
                    })?;
                *path = Some(rootfs);
            }
        }
    }
    Ok(())
}

/// Starts the signing session `decide` called for, and reports it.
fn start_session_if_needed(
    decision: &Decision,
    planned: &[Planned<'_>],
    start_session: &mut dyn FnMut() -> Result<SessionCert, String>,
    on: &mut dyn FnMut(Progress),
) -> Result<Option<SessionCert>, BuildError> {
    if decision.new_session.is_none() {
        return Ok(None);
    }
    let cert = start_session().map_err(BuildError::Session)?;
    on(Progress::SessionStarted {
        id: cert.id.clone(),
        description: cert.description.clone(),
        stages: decision
            .session_stages
            .iter()
            .map(|&i| planned[i].package.pkg.name.value.clone())
            .collect(),
    });
    Ok(Some(cert))
}

/// Writes a new session's certificate where its stages find it; returns
/// that directory.
fn write_session_cert(
    cache: &Cache,
    session: Option<&SessionCert>,
) -> Result<Option<PathBuf>, BuildError> {
    let Some(cert) = session else {
        return Ok(None);
    };
    let d = cache.work_dir("session")?.join("certs");
    fs::create_dir_all(&d).map_err(|e| FsError {
        path: d.clone(),
        source: e,
    })?;
    let f = d.join(stage::SESSION_CERT_NAME);
    fs::write(&f, &cert.cert_pem).map_err(|e| FsError { path: f, source: e })?;
    Ok(Some(d))
}

/// The plan's stages `i` is built on, directly or not (not `i` itself),
/// in plan order.
fn closure(planned: &[Planned<'_>], i: usize) -> Vec<usize> {
    let mut seen = vec![false; planned.len()];
    let mut todo = planned[i].deps.clone();
    while let Some(d) = todo.pop() {
        if !std::mem::replace(&mut seen[d], true) {
            todo.extend(planned[d].deps.iter().copied());
        }
    }
    (0..planned.len()).filter(|&d| seen[d]).collect()
}

/// Moves a tree the gate made to `<output>/<target>/`, replacing what was
/// there (and the mark that lets `export` skip an unchanged entry).
fn export_tree(tree: &Path, output: &Path, target: &str) -> Result<PathBuf, BuildError> {
    let dest = output.join(target);
    let mark = output.join(".composer").join(format!("{target}.digest"));
    let _ = fs::remove_file(&mark);
    fsops::remove_tree(&dest)?;
    fs::rename(tree, &dest).map_err(|source| FsError {
        path: dest.clone(),
        source,
    })?;
    Ok(dest)
}

/// Copies a target's output to `<output>/<target>/`, replacing what was
/// there. Skipped when the same entry was exported there last time.
fn export(entry: &Entry, output: &Path, target: &str) -> Result<PathBuf, BuildError> {
    let dest = output.join(target);
    let marks = output.join(".composer");
    let mark = marks.join(format!("{target}.digest"));
    let stamp = format!("{} {}", entry.meta.key, entry.meta.output_digest);
    if dest.is_dir() && fs::read_to_string(&mark).is_ok_and(|s| s == stamp) {
        return Ok(dest);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FsError { path, source }
    };
    fs::create_dir_all(&marks).map_err(io(&marks))?;
    let tmp = output.join(format!(".{target}.tmp"));
    fsops::remove_tree(&tmp)?;
    fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    fsops::copy_dir_contents(&entry.out(), &tmp)?;
    let _ = fs::remove_file(&mark);
    fsops::remove_tree(&dest)?;
    fs::rename(&tmp, &dest).map_err(io(&dest))?;
    fs::write(&mark, stamp).map_err(io(&mark))?;
    Ok(dest)
}
