//! Running one stage: its root assembled from its inputs, its steps in the
//! sandbox, its output finalized into a cache entry.
//!
//! Order, as bldr has it: inputs merged (each dependency's `from` copied to
//! its `to`, in merge order; whole outputs at `/` layered by `overlay`
//! instead of copied when it can) → `/pkg` → per step: sources (verified), then
//! `prepare`, `build`, `install` items, then the step's SBOM document at
//! its `outputPath` (`sbom`) → (session stages: every `.ko`
//! signed with the session key) → `finalize` into the entry → `test`
//! items. Tests run after finalize on the stage's own root, which is thrown
//! away afterwards: their changes never reach the output, and their failure
//! discards the entry.
//!
//! Invariants: every item runs as `<shell> -c "set -eou pipefail\n<item>"`
//! (`shell:` as written, else `shell::shell_of`'s default) with the built-in variables, `PKG_NAME` and the env of this and earlier
//! steps; every item's output is in `<logs>/<stage>/<n>-<phase>.log`; the
//! stage's work directory is removed whether it succeeds or not.

use std::collections::VecDeque;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::cache::{Cache, CacheError, Entry, Meta, now};
use super::fsops::{self, FsError};
use super::overlay;
use super::pkgdir::PkgDir;
use super::sandbox::{self, Mount, Outcome, SandboxError, SecretFile, Spec};
use super::sbom::{self, SbomError};
use super::shell::shell_of;
use super::sources::{self, SourceError, SourceOptions};
use crate::defs::load::Package;
use crate::defs::schema::{HOST_DIRS, Network, Variant};
use crate::defs::vars::Platform;
use crate::graph::Input;

/// Lines of a failing item's log shown with the error.
pub const TAIL_LINES: usize = 25;

/// Where the signing session's certificate directory appears.
pub const SESSION_DIR: &str = "/signing/certs";
/// The certificate's file name in [`SESSION_DIR`].
pub const SESSION_CERT_NAME: &str = "signing_key.x509";
/// The certificate as session stages see it (PEM).
pub const SESSION_CERT: &str = "/signing/certs/signing_key.x509";
/// Where session stages find the private key in `--sign-in-tree` mode.
pub const SESSION_KEY: &str = "/signing/keys/signing_key.pem";

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{what} failed{}\n  command:\n{}\n  log: {}\n{}", exit(.code), indent(.script), .log.display(), tail_text(.tail))]
    Step {
        what: String,
        script: String,
        code: Option<i32>,
        log: PathBuf,
        tail: Vec<String>,
    },
    #[error(
        "{what} read from stdin, which is closed in builds: `{command}` waited for input and was stopped\n  \
         make the command non-interactive (for a kernel config: `make olddefconfig` instead of `make oldconfig`)\n  log: {}", .log.display()
    )]
    ReadStdin {
        what: String,
        command: String,
        log: PathBuf,
    },
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("step {step}: {error}")]
    Sbom { step: usize, error: SbomError },
}

fn exit(code: &Option<i32>) -> String {
    code.map(|c| format!(" with exit code {c}"))
        .unwrap_or_else(|| " (killed by a signal)".to_string())
}

fn indent(s: &str) -> String {
    s.trim_end()
        .lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn tail_text(lines: &[String]) -> String {
    if lines.is_empty() {
        return "  (no output)".to_string();
    }
    let mut s = format!("  last {} lines:", lines.len());
    for l in lines {
        s.push_str("\n  | ");
        s.push_str(l);
    }
    s
}

/// What is shared by every stage of a build.
pub struct Context<'a> {
    pub cache: &'a Cache,
    pub sources: &'a SourceOptions,
    pub platform: Platform,
    pub epoch: Option<i64>,
    /// `<output>/logs`.
    pub logs: PathBuf,
    /// The signing session's certificate directory, for session stages.
    pub session_certs: Option<PathBuf>,
    /// The session's certificate (PEM), recorded with session entries.
    pub session_cert_pem: Option<String>,
    /// What the signing session does to its stages' filesystems.
    pub session_hooks: Option<&'a dyn SessionHooks>,
    /// `--sign-in-tree`: the session's private key (PEM, with its
    /// certificate) given to session stages on a tmpfs.
    pub session_key: Option<SecretFile>,
}

/// The signing session's part in running a session stage.
pub trait SessionHooks: Sync {
    /// After each step's `prepare` items, before anything compiles: check
    /// a kernel configuration the stage wrote against the session key.
    fn after_prepare(&self, root: &Path) -> Result<(), String>;
    /// After the `install` items, before `finalize` and `test`: sign every
    /// module; returns how many were signed.
    fn after_install(&self, root: &Path) -> Result<usize, String>;
}

/// A stage ready to run: everything resolved.
pub struct Job {
    pub package: Package,
    pub key: String,
    pub fingerprint: super::key::Fingerprint,
    /// Inputs in merge order with the output directory of each.
    pub inputs: Vec<(Input, PathBuf)>,
    pub pkgdir: PkgDir,
    pub session: Option<String>,
    /// The cached entry to sign again for the session instead of running
    /// the steps ([`resign`]).
    pub resign: Option<Entry>,
}

/// Progress of a running stage.
pub enum Event {
    Phase(String),
    Line(String),
    /// Something the user should know about how the stage ran.
    Note(String),
}

/// Runs `job` and commits its output to the cache.
pub fn run(job: &Job, ctx: &Context<'_>, emit: &mut dyn FnMut(Event)) -> Result<Entry, StageError> {
    let name = job.package.pkg.name.value.clone();
    let work = ctx.cache.work_dir(&name)?;
    let result = run_in(job, ctx, &work, emit);
    let _ = fsops::remove_tree(&work);
    result
}

fn run_in(
    job: &Job,
    ctx: &Context<'_>,
    work: &Path,
    emit: &mut dyn FnMut(Event),
) -> Result<Entry, StageError> {
    let started = Instant::now();
    let pkg = &job.package.pkg;
    let name = pkg.name.value.as_str();
    let shell = shell_of(pkg, Path::new("/"));
    let root = work.join("root");
    let build = work.join("build");
    let pkg_dir = work.join("pkg");
    for d in [&root, &build] {
        fs::create_dir_all(d).map_err(|e| FsError {
            path: d.clone(),
            source: e,
        })?;
    }
    let host = match pkg.variant {
        Variant::Host => true,
        Variant::Scratch => false,
        Variant::Alpine => {
            return Err(StageError::Config(format!(
                "stage {name}: variant alpine needs the Alpine base image from a registry, which this version cannot pull; \
                 use variant scratch with an image dependency from a local OCI layout (`image: oci:DIR[:TAG]`), or variant host"
            )));
        }
    };

    emit(Event::Phase("merging inputs".into()));
    // Whole outputs merged at `/`, as long as nothing else comes before
    // them, are overlay layers; what follows is copied on top, in order.
    let whole = job
        .inputs
        .iter()
        .take_while(|(i, _)| is_root(&i.from) && is_root(&i.to))
        .count();
    let lowers: Vec<PathBuf> = job.inputs[..whole]
        .iter()
        .map(|(_, out)| out.clone())
        .collect();
    let (_overlay, copied) = match overlay::mount(work, &root, &lowers) {
        Ok(Some(o)) => (Some(o), whole),
        Ok(None) => (None, 0),
        Err(why) => {
            emit(Event::Note(format!("inputs copied, not layered: {why}")));
            (None, 0)
        }
    };
    for (input, out) in &job.inputs[copied..] {
        if host {
            let first = input
                .to
                .trim_start_matches('/')
                .split('/')
                .next()
                .unwrap_or("");
            if HOST_DIRS.contains(&first) {
                return Err(StageError::Config(format!(
                    "stage {name}: {} cannot be merged at {}: in variant host, /{first} is the host's and read-only",
                    input.what, input.to
                )));
            }
        }
        fsops::copy_into(out, &input.from, &root, &input.to)?;
    }
    job.pkgdir.materialize(&pkg_dir)?;

    let mut env: Vec<(String, String)> = ctx
        .platform
        .builtins()
        .iter()
        .map(|(k, v)| (k.to_string(), value_string(v)))
        .collect();
    env.push(("PKG_NAME".into(), name.to_string()));

    let pending = ctx.cache.begin()?;
    let logs = ctx.logs.join(name);
    fs::create_dir_all(&logs).map_err(|e| FsError {
        path: logs.clone(),
        source: e,
    })?;

    let mut tests = Vec::new();
    for (i, step) in pkg.steps.iter().enumerate() {
        let n = i + 1;
        for (k, v) in &step.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        let mut mounts = vec![Mount {
            src: pkg_dir.clone(),
            dst: "/pkg".into(),
            writable: false,
        }];
        if let Some(certs) = &ctx.session_certs
            && job.session.is_some()
        {
            mounts.push(Mount {
                src: certs.clone(),
                dst: SESSION_DIR.into(),
                writable: false,
            });
        }
        for p in &step.cache_paths {
            mounts.push(Mount {
                src: ctx.cache.cache_path(&ctx.platform.to_string(), name, p)?,
                dst: p.clone(),
                writable: true,
            });
        }
        let spec = Spec {
            root: root.clone(),
            host,
            build_dir: build.clone(),
            mounts,
            network: !matches!(step.network.unwrap_or(Network::None), Network::None),
            env: env.clone(),
            secret_files: match (&job.session, &ctx.session_key) {
                (Some(_), Some(key)) => vec![key.clone()],
                _ => Vec::new(),
            },
        };
        if !step.sources.is_empty() {
            emit(Event::Phase(format!("step {n}: sources")));
        }
        for src in &step.sources {
            let cached = sources::fetch(src, ctx.sources)?;
            let dest = fsops::inside(&build, &src.destination).ok_or_else(|| {
                StageError::Config(format!(
                    "stage {name}: source destination `{}` leaves /tmp/build",
                    src.destination
                ))
            })?;
            if let Some(parent) = dest.parent() {
                fsops::ensure_dir(parent)?;
            }
            fs::copy(&cached, &dest).map_err(|e| FsError {
                path: dest.clone(),
                source: e,
            })?;
        }
        for (phase, items) in [
            ("prepare", &step.prepare),
            ("build", &step.build),
            ("install", &step.install),
        ] {
            run_items(&shell, &spec, n, phase, items, &logs, emit)?;
            if phase == "prepare"
                && job.session.is_some()
                && let Some(hooks) = ctx.session_hooks
            {
                hooks.after_prepare(&root).map_err(|e| {
                    StageError::Config(format!("stage {name}: after step {n} prepare: {e}"))
                })?;
            }
        }
        if let Some(doc) = &step.sbom {
            emit(Event::Phase(format!("step {n}: sbom")));
            sbom::document(&job.package, doc, ctx.epoch)
                .and_then(|bytes| sbom::write(&root, &build, pkg.variant, &doc.output_path, &bytes))
                .map_err(|error| StageError::Sbom { step: n, error })?;
        }
        if !step.test.is_empty() {
            tests.push((n, spec, &step.test));
        }
    }

    if job.session.is_some()
        && let Some(hooks) = ctx.session_hooks
    {
        emit(Event::Phase("signing modules".into()));
        let n = hooks
            .after_install(&root)
            .map_err(|e| StageError::Config(format!("stage {name}: signing: {e}")))?;
        emit(Event::Line(format!(
            "signed {n} module(s) with the session key"
        )));
    }

    emit(Event::Phase("finalize".into()));
    finalize(job, &root, &pkg_dir, host, &pending.out(), tests.is_empty())?;
    fsops::normalize_tree(&pending.out(), ctx.epoch)?;

    for (n, spec, items) in &tests {
        run_items(&shell, spec, *n, "test", items, &logs, emit)?;
    }

    let meta = Meta {
        stage: name.to_string(),
        platform: ctx.platform.to_string(),
        key: job.key.clone(),
        fingerprint: job.fingerprint.clone(),
        output_digest: String::new(),
        size: 0,
        created: now(),
        duration_ms: started.elapsed().as_millis() as u64,
        session: job.session.clone(),
        session_cert: job.session.as_ref().and(ctx.session_cert_pem.clone()),
    };
    Ok(ctx.cache.commit(pending, meta)?)
}

/// A session stage's cached build, signed for this job's session instead of
/// run again: its output copied, every module's signature replaced by the
/// session's (the session hooks, as after `install`), committed under the
/// same key with the new session. Only for stages whose output does not
/// depend on the session but through module signatures
/// (`build::can_resign`); nothing runs in a sandbox.
pub fn resign(
    job: &Job,
    hit: &Entry,
    ctx: &Context<'_>,
    emit: &mut dyn FnMut(Event),
) -> Result<Entry, StageError> {
    let started = Instant::now();
    let name = job.package.pkg.name.value.as_str();
    let (Some(session), Some(hooks)) = (&job.session, ctx.session_hooks) else {
        return Err(StageError::Config(format!(
            "stage {name}: to be signed again, a signing session is needed"
        )));
    };
    let pending = ctx.cache.begin()?;
    emit(Event::Phase("copying the cached build".into()));
    fsops::copy_into(&hit.out(), "/", &pending.out(), "/")?;
    emit(Event::Phase("signing modules".into()));
    let n = hooks
        .after_install(&pending.out())
        .map_err(|e| StageError::Config(format!("stage {name}: signing: {e}")))?;
    emit(Event::Line(format!(
        "signed {n} module(s) of the cached build with the session key"
    )));
    fsops::normalize_tree(&pending.out(), ctx.epoch)?;
    let meta = Meta {
        output_digest: String::new(),
        size: 0,
        created: now(),
        duration_ms: started.elapsed().as_millis() as u64,
        session: Some(session.clone()),
        session_cert: ctx.session_cert_pem.clone(),
        ..hit.meta.clone()
    };
    Ok(ctx.cache.commit(pending, meta)?)
}

/// Copies each `finalize` entry from the stage's filesystem into `out`.
/// Moves instead of copying when nothing reads the source afterwards.
/// `/pkg/...` is the package directory as the steps saw it (bldr mounts it
/// there too: `from: /pkg/manifest.yaml` is how extensions ship their
/// rendered manifest).
fn finalize(
    job: &Job,
    stage_root: &Path,
    pkg_dir: &Path,
    host: bool,
    out: &Path,
    may_move: bool,
) -> Result<(), StageError> {
    let pkg = &job.package.pkg;
    let name = pkg.name.value.as_str();
    for (i, f) in pkg.finalize.iter().enumerate() {
        let (root, from, may_move) = match f.from.trim_start_matches('/').strip_prefix("pkg") {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                (pkg_dir, if rest.is_empty() { "/" } else { rest }, false)
            }
            _ => (stage_root, f.from.as_str(), may_move),
        };
        let src = fsops::inside(root, from).ok_or_else(|| {
            StageError::Config(format!(
                "stage {name}: finalize from `{}` contains `..`",
                f.from
            ))
        })?;
        let first = f
            .from
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or("");
        if host && root == stage_root && (first.is_empty() || HOST_DIRS.contains(&first)) {
            return Err(StageError::Config(format!(
                "stage {name}: finalize from `{}` would copy the host's system directories; finalize a directory the steps wrote (such as /rootfs)",
                f.from
            )));
        }
        if fs::symlink_metadata(&src).is_err() {
            return Err(StageError::Config(format!(
                "stage {name}: finalize[{i}]: `{}` does not exist after the steps ran",
                f.from
            )));
        }
        let later_reads = pkg.finalize[i + 1..]
            .iter()
            .any(|g| overlaps(&g.from, &f.from));
        let dst = fsops::inside(out, &f.to).ok_or_else(|| {
            StageError::Config(format!(
                "stage {name}: finalize to `{}` contains `..`",
                f.to
            ))
        })?;
        let dst_empty = fs::read_dir(&dst)
            .map(|mut d| d.next().is_none())
            .unwrap_or(true);
        if may_move && !later_reads && src.is_dir() && dst_empty && from != "/" {
            if let Some(parent) = dst.parent() {
                fsops::ensure_dir(parent)?;
            }
            let _ = fs::remove_dir(&dst);
            if fs::rename(&src, &dst).is_ok() {
                continue;
            }
        }
        fsops::copy_into(root, from, out, &f.to)?;
    }
    Ok(())
}

fn is_root(path: &str) -> bool {
    path.trim_matches('/').is_empty()
}

fn overlaps(a: &str, b: &str) -> bool {
    let a = a.trim_end_matches('/');
    let b = b.trim_end_matches('/');
    a.is_empty()
        || b.is_empty()
        || a == b
        || a.starts_with(&format!("{b}/"))
        || b.starts_with(&format!("{a}/"))
}

fn run_items(
    shell: &str,
    spec: &Spec,
    step: usize,
    phase: &str,
    items: &[String],
    logs: &Path,
    emit: &mut dyn FnMut(Event),
) -> Result<(), StageError> {
    if items.is_empty() {
        return Ok(());
    }
    let log_path = logs.join(format!("{step}-{phase}.log"));
    let mut log = fs::File::create(&log_path).map_err(|e| FsError {
        path: log_path.clone(),
        source: e,
    })?;
    for (j, item) in items.iter().enumerate() {
        let what = format!("step {step} {phase}[{j}]");
        emit(Event::Phase(what.clone()));
        let _ = writeln!(log, "# {what}\n{}", indent(item));
        let mut last: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES);
        let argv = vec![
            shell.to_string(),
            "-c".to_string(),
            format!("set -eou pipefail\n{item}"),
        ];
        let outcome = sandbox::run(spec, &argv, &mut |line| {
            let _ = writeln!(log, "{line}");
            if last.len() == TAIL_LINES {
                last.pop_front();
            }
            last.push_back(line.to_string());
            emit(Event::Line(line.to_string()));
        })?;
        match outcome {
            Outcome::Success => {}
            Outcome::ReadStdin { command } => {
                let _ = writeln!(log, "# stopped: `{command}` read from stdin");
                return Err(StageError::ReadStdin {
                    what,
                    command,
                    log: log_path,
                });
            }
            Outcome::Failed { code } => {
                let mut tail: Vec<String> = last.into_iter().collect();
                if tail
                    .iter()
                    .any(|l| l.contains("Illegal option -o pipefail"))
                {
                    tail.push(format!(
                        "(hint: {shell} does not support `set -o pipefail`; set `shell: /bin/bash` in pkg.yaml)"
                    ));
                }
                return Err(StageError::Step {
                    what,
                    script: item.clone(),
                    code,
                    log: log_path,
                    tail,
                });
            }
        }
    }
    Ok(())
}

fn value_string(v: &gotmpl::Value) -> String {
    match v {
        gotmpl::Value::String(s) => s.to_string(),
        other => format!("{other:?}"),
    }
}
