//! A build: keys for every stage of a plan, the cache decision for each,
//! the signing-session rule, the parallel scheduler, and the export of the
//! targets' filesystems.
//!
//! Scheduling: a small dependency queue. A stage starts when all its stage
//! inputs are done, at most `jobs` at a time, each on its own thread. Only
//! the calling thread reports progress (through the `on` callback); workers
//! send their events to it over a channel. After a failure no new stage
//! starts; the running ones finish and are cached.
//!
//! Sources first: before the first stage starts, every source of every
//! stage that will run (cache misses, and the stages a new signing session
//! rebuilds) is fetched and checked, and the build stops naming every one
//! that cannot be had. Cached stages need no sources.
//!
//! Signing sessions: a stage joins the session when its rendered definition
//! mentions the session directory (`/signing/`: it builds with the
//! session's certificate) or when it depends on a stage that joined (it is
//! built against that kernel). The session's stages are reused together or
//! rebuilt together: if every one of them is cached from one same session,
//! all are reused and no key is made; otherwise a new session starts and all
//! of them run, so a kernel never meets modules of another session.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use super::cache::{Cache, CacheError, Entry};
use super::fsops::{self, FsError};
use super::image;
use super::key::Fingerprint;
use super::pkgdir::PkgDir;
use super::prefetch::{self, Fetched, Unavailable};
use super::shell;
use super::sources::SourceOptions;
use super::stage::{self, Context, Event, Job, SessionHooks, StageError};
use crate::defs::load::{Definitions, Package};
use crate::graph::{Graph, Input, Plan};

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
    pub cached: Vec<String>,
    pub outputs: Vec<(String, PathBuf)>,
    pub session: Option<String>,
    /// The signing session's certificate (PEM), new or reused.
    pub session_cert: Option<String>,
}

/// Where an input comes from.
enum Origin {
    Stage(usize),
    Image(image::Resolved, Option<PathBuf>),
}

struct Planned<'d> {
    package: &'d Package,
    key: String,
    fingerprint: Fingerprint,
    pkgdir: PkgDir,
    deps: Vec<usize>,
    inputs: Vec<(Input, Origin)>,
    in_session: bool,
    hit: Option<Entry>,
    run: bool,
}

/// What the export gate sees: the targets' outputs, still in the cache
/// (which stays locked), and the signing session's certificate.
pub struct Built<'a> {
    /// `(target, its output directory in the cache)`, in target order.
    pub targets: &'a [(String, PathBuf)],
    pub session_cert: Option<&'a str>,
}

/// Builds `plan`. `start_session` is called at most once, when a stage of
/// the signing session has to run; `session_hooks` check and sign what a
/// session stage produces.
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
        &mut |_| Ok(()),
        on,
    )
}

/// [`build`], with a gate between the stages and the export: `gate` sees
/// the targets' outputs before anything lands in the output directory,
/// and when it fails nothing is exported (`BuildError::Rejected`). The
/// outputs phase validates and packs images there.
pub fn build_gated(
    defs: &Definitions,
    plan: &Plan,
    opts: &Options,
    start_session: &mut dyn FnMut() -> Result<SessionCert, String>,
    session_hooks: Option<&dyn SessionHooks>,
    gate: &mut dyn FnMut(&Built<'_>) -> Result<(), String>,
    on: &mut dyn FnMut(Progress),
) -> Result<Summary, BuildError> {
    let cache = Cache::open(&opts.cache_dir, &mut || {
        on(Progress::WaitingForLock(opts.cache_dir.clone()))
    })?;
    let mut report = crate::diag::Report::default();
    let graph = Graph::new(defs, &mut report);
    let platform = defs.platform.to_string();

    // Keys, dependencies first (the plan's order).
    let mut planned: Vec<Planned<'_>> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for name in &plan.order {
        let package = graph.get(name).ok_or_else(|| BuildError::Input {
            stage: name.clone(),
            message: "not in the definitions".into(),
        })?;
        let root = &defs.roots[package.root];
        let project = root.dir.parent().unwrap_or(&root.dir);
        let pkgdir = PkgDir::collect(&package.pkg.dir, project, &package.templates)?;
        let mut fp = Fingerprint::default();
        fp.add("platform", &platform);
        fp.add("definition", &package.rendered);
        fp.add(
            "variant",
            format!("{:?}", package.pkg.variant).to_lowercase(),
        );
        fp.add("shell", shell::shell_of(&package.pkg, Path::new("/")));
        fp.add(
            "sandbox",
            "bwrap; caps: runtime default; /tmp/build; /pkg ro",
        );
        if let Some(e) = opts.epoch {
            fp.add("SOURCE_DATE_EPOCH", e.to_string());
        }
        if package.pkg.variant == crate::defs::schema::Variant::Host {
            fp.add("base", host_fingerprint());
        }
        describe_steps(&mut fp, package);
        super::sbom::fingerprint(&mut fp, package, opts.epoch).map_err(|e| BuildError::Input {
            stage: name.clone(),
            message: e.to_string(),
        })?;
        for (n, v) in pkgdir.parts()? {
            fp.add(n, v);
        }
        let mut deps = Vec::new();
        let mut inputs = Vec::new();
        let mut in_session = package.joins_signing_session();
        for input in graph.inputs(package) {
            let Some(dep) = input.what.strip_prefix("stage:") else {
                let reference = input.what.trim_start_matches("image:");
                let fetch = image::Fetch {
                    store: &cache.root().join("images"),
                    offline: opts.offline,
                    insecure: opts.insecure,
                };
                let resolved =
                    image::resolve(reference, &root.dir, &platform, &fetch).map_err(|e| {
                        BuildError::Input {
                            stage: name.clone(),
                            message: e.to_string(),
                        }
                    })?;
                fp.add(
                    format!("dependency {reference} ({} → {})", input.from, input.to),
                    &resolved.digest,
                );
                inputs.push((input, Origin::Image(resolved, None)));
                continue;
            };
            let &i = index.get(dep).ok_or_else(|| BuildError::Input {
                stage: name.clone(),
                message: format!("dependency {dep} is not part of the plan"),
            })?;
            fp.add(
                format!("dependency {dep} ({} → {})", input.from, input.to),
                &planned[i].key,
            );
            in_session |= planned[i].in_session;
            if !deps.contains(&i) {
                deps.push(i);
            }
            inputs.push((input, Origin::Stage(i)));
        }
        let key = fp.key();
        let hit = cache.lookup(&key);
        index.insert(name.as_str(), planned.len());
        planned.push(Planned {
            package,
            key,
            fingerprint: fp,
            pkgdir,
            deps,
            inputs,
            in_session,
            run: hit.is_none(),
            hit,
        });
    }

    // The session rule.
    let session_stages: Vec<usize> = (0..planned.len())
        .filter(|&i| planned[i].in_session)
        .collect();
    let mut session: Option<SessionCert> = None;
    let mut session_reason: Option<String> = None;
    if !session_stages.is_empty() {
        let ids: Vec<Option<&str>> = session_stages
            .iter()
            .map(|&i| {
                planned[i]
                    .hit
                    .as_ref()
                    .and_then(|h| h.meta.session.as_deref())
            })
            .collect();
        let reusable = ids.iter().all(|id| id.is_some()) && ids.windows(2).all(|w| w[0] == w[1]);
        if reusable {
            if let Some(Some(id)) = ids.first() {
                on(Progress::SessionReused { id: id.to_string() });
            }
        } else {
            let why: Vec<&str> = session_stages
                .iter()
                .filter(|&&i| planned[i].hit.is_none())
                .map(|&i| planned[i].package.pkg.name.value.as_str())
                .collect();
            session_reason = Some(if why.is_empty() {
                "the session's stages come from different sessions".to_string()
            } else {
                format!("new signing session (to rebuild {})", why.join(", "))
            });
            let cert = start_session().map_err(BuildError::Session)?;
            on(Progress::SessionStarted {
                id: cert.id.clone(),
                description: cert.description.clone(),
                stages: session_stages
                    .iter()
                    .map(|&i| planned[i].package.pkg.name.value.clone())
                    .collect(),
            });
            for &i in &session_stages {
                planned[i].run = true;
            }
            session = Some(cert);
        }
    }

    for p in &planned {
        let name = p.package.pkg.name.value.clone();
        let mut reasons = Vec::new();
        if p.run {
            if p.hit.is_some() {
                reasons.extend(session_reason.clone());
            } else {
                match cache.last(&platform, &name) {
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

    // Sources first, all of them, before any stage starts.
    let sources = SourceOptions {
        dir: cache.downloads(),
        offline: opts.offline,
        mirrors: opts.mirrors.clone(),
    };
    let wanted = prefetch::wanted(planned.iter().filter(|p| p.run).map(|p| p.package));
    prefetch::fetch_all(&wanted, &sources, &mut |f| on(Progress::Source(f.clone())))
        .map_err(BuildError::Sources)?;

    // Image inputs of the stages that run, unpacked once each.
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

    let certs_dir = match &session {
        Some(cert) => {
            let d = cache.work_dir("session")?.join("certs");
            fs::create_dir_all(&d).map_err(|e| FsError {
                path: d.clone(),
                source: e,
            })?;
            let f = d.join(stage::SESSION_CERT_NAME);
            fs::write(&f, &cert.cert_pem).map_err(|e| FsError { path: f, source: e })?;
            Some(d)
        }
        None => None,
    };

    let logs = opts.output.join("logs");
    let ctx = Context {
        cache: &cache,
        sources: &sources,
        platform: defs.platform,
        epoch: opts.epoch,
        logs,
        session_certs: certs_dir,
        session_cert_pem: session
            .as_ref()
            .map(|c| String::from_utf8_lossy(&c.cert_pem).into_owned()),
        session_hooks,
        session_key: session
            .as_ref()
            .and_then(|s| s.private_pem.clone())
            .map(|content| super::sandbox::SecretFile {
                dst: stage::SESSION_KEY.to_string(),
                content,
            }),
    };
    let session_id = session.as_ref().map(|s| s.id.clone());
    let outputs = schedule(&mut planned, &ctx, opts.jobs.max(1), session_id.clone(), on)?;

    let mut summary = Summary {
        session: session_id.or_else(|| {
            session_stages
                .first()
                .and_then(|&i| outputs[i].meta.session.clone())
        }),
        session_cert: session
            .as_ref()
            .map(|c| String::from_utf8_lossy(&c.cert_pem).into_owned())
            .or_else(|| {
                session_stages
                    .first()
                    .and_then(|&i| outputs[i].meta.session_cert.clone())
            }),
        ..Summary::default()
    };
    for p in &planned {
        let name = p.package.pkg.name.value.clone();
        if p.run {
            cache.set_last(&platform, &name, &p.fingerprint)?;
            summary.built.push(name);
        } else {
            summary.cached.push(name);
        }
    }
    let cached: Vec<(String, PathBuf)> = plan
        .targets
        .iter()
        .map(|t| (t.clone(), outputs[index[t.as_str()]].out()))
        .collect();
    gate(&Built {
        targets: &cached,
        session_cert: summary.session_cert.as_deref(),
    })
    .map_err(BuildError::Rejected)?;
    for target in &plan.targets {
        let i = index[target.as_str()];
        let path = export(&outputs[i], &opts.output, target)?;
        on(Progress::Exported {
            target: target.clone(),
            path: path.clone(),
        });
        summary.outputs.push((target.clone(), path));
    }
    Ok(summary)
}

/// Runs the stages that must run, in dependency order, in parallel.
fn schedule(
    planned: &mut [Planned<'_>],
    ctx: &Context<'_>,
    jobs: usize,
    session: Option<String>,
    on: &mut dyn FnMut(Progress),
) -> Result<Vec<Entry>, BuildError> {
    let n = planned.len();
    let mut done: Vec<Option<Entry>> = planned
        .iter()
        .map(|p| if p.run { None } else { p.hit.clone() })
        .collect();
    let mut started = vec![false; n];
    for (i, d) in done.iter().enumerate() {
        started[i] = d.is_some();
    }
    let mut failures: Vec<(String, StageError)> = Vec::new();
    let (tx, rx) = mpsc::channel::<(usize, Msg)>();
    std::thread::scope(|scope| {
        let mut running = 0usize;
        loop {
            if failures.is_empty() {
                for i in 0..n {
                    if running >= jobs {
                        break;
                    }
                    if started[i] || !planned[i].deps.iter().all(|&d| done[d].is_some()) {
                        continue;
                    }
                    started[i] = true;
                    running += 1;
                    let p = &planned[i];
                    let job = Job {
                        package: p.package.clone(),
                        key: p.key.clone(),
                        fingerprint: p.fingerprint.clone(),
                        inputs: p
                            .inputs
                            .iter()
                            .map(|(input, origin)| {
                                let out = match origin {
                                    Origin::Stage(d) => {
                                        done[*d].as_ref().map(Entry::out).unwrap_or_default()
                                    }
                                    Origin::Image(_, path) => path.clone().unwrap_or_default(),
                                };
                                (input.clone(), out)
                            })
                            .collect(),
                        pkgdir: p.pkgdir.clone(),
                        session: if p.in_session { session.clone() } else { None },
                    };
                    let tx = tx.clone();
                    let stage_name = p.package.pkg.name.value.clone();
                    on(Progress::Started(stage_name));
                    scope.spawn(move || {
                        let mut emit = |e: Event| {
                            let _ = tx.send((i, Msg::Event(e)));
                        };
                        let r = stage::run(&job, ctx, &mut emit);
                        let _ = tx.send((i, Msg::Done(Box::new(r))));
                    });
                }
            }
            if running == 0 {
                break;
            }
            let (i, msg) = match rx.recv_timeout(TICK) {
                Ok(m) => m,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    on(Progress::Tick);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let stage_name = planned[i].package.pkg.name.value.clone();
            match msg {
                Msg::Event(Event::Phase(phase)) => on(Progress::Phase {
                    stage: stage_name,
                    phase,
                }),
                Msg::Event(Event::Line(line)) => on(Progress::Line {
                    stage: stage_name,
                    line,
                }),
                Msg::Event(Event::Note(note)) => on(Progress::Note {
                    stage: stage_name,
                    note,
                }),
                Msg::Done(r) => {
                    running -= 1;
                    match *r {
                        Ok(entry) => {
                            on(Progress::Finished {
                                stage: stage_name,
                                elapsed: Duration::from_millis(entry.meta.duration_ms),
                            });
                            done[i] = Some(entry);
                        }
                        Err(e) => {
                            on(Progress::Failed {
                                stage: stage_name.clone(),
                            });
                            failures.push((stage_name, e));
                        }
                    }
                }
            }
        }
    });
    if failures.len() > 1 {
        let total = failures.len();
        // Report every failure but the last through the progress stream's
        // owner: the caller prints the returned error; the others are
        // folded into it.
        let mut msg = String::new();
        for (stage, e) in &failures {
            msg.push_str(&format!("stage {stage}: {e}\n"));
        }
        return Err(BuildError::Input {
            stage: failures[0].0.clone(),
            message: format!("{total} stages failed:\n{msg}"),
        });
    }
    if let Some((stage, e)) = failures.pop() {
        return Err(BuildError::Stage {
            stage,
            error: Box::new(e),
        });
    }
    done.into_iter()
        .enumerate()
        .map(|(i, d)| {
            d.ok_or_else(|| BuildError::Input {
                stage: planned[i].package.pkg.name.value.clone(),
                message: "was not built".into(),
            })
        })
        .collect()
}

enum Msg {
    Event(Event),
    Done(Box<Result<Entry, StageError>>),
}

/// Adds the steps' scripts, env, sources, network and cachePaths, and the
/// finalize list, part by part so a miss names what changed.
fn describe_steps(fp: &mut Fingerprint, package: &Package) {
    for (i, step) in package.pkg.steps.iter().enumerate() {
        let n = i + 1;
        for (k, v) in &step.env {
            fp.add(format!("step {n} env {k}"), v);
        }
        for src in &step.sources {
            fp.add(
                format!("step {n} source {}", src.destination),
                format!("{} {}", src.sha256, src.sha512),
            );
        }
        if let Some(net) = step.network {
            fp.add(
                format!("step {n} network"),
                format!("{net:?}").to_lowercase(),
            );
        }
        if !step.cache_paths.is_empty() {
            fp.add(format!("step {n} cachePaths"), step.cache_paths.join(" "));
        }
        for (phase, items) in [
            ("prepare", &step.prepare),
            ("build", &step.build),
            ("install", &step.install),
            ("test", &step.test),
        ] {
            for (j, item) in items.iter().enumerate() {
                fp.add(format!("step {n} {phase}[{j}] script"), item);
            }
        }
    }
    let fin: Vec<String> = package
        .pkg
        .finalize
        .iter()
        .map(|f| format!("{} → {}", f.from, f.to))
        .collect();
    fp.add("finalize", fin.join(", "));
}

/// What identifies the host as a `variant: host` base: the distribution
/// and the installed packages (Debian's dpkg status, or rpm's database).
fn host_fingerprint() -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for f in [
        "/etc/os-release",
        "/var/lib/dpkg/status",
        "/var/lib/rpm/rpmdb.sqlite",
        "/lib/apk/db/installed",
    ] {
        if let Ok(bytes) = fs::read(f) {
            h.update(f.as_bytes());
            h.update(&bytes);
        }
    }
    format!("host packages {}", &hex::encode(h.finalize())[..16])
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
