//! `composer build TARGET...`: loads the definitions, resolves the plan,
//! runs it through `exec::build`, and shows progress. This thread owns the
//! terminal: a live view of running stages on a terminal, plain lines
//! otherwise.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;

use super::progress::{View, human};
use super::{CliError, CliResult, Global, RenderOpts, load_checked};
use crate::exec::{self, SessionCert};
use crate::sign::Session;
use crate::sign::hooks::Hooks;
use crate::sign::session::KeyType;

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Stages to build; each one's filesystem lands in OUTPUT/<target>/.
    #[arg(value_name = "TARGET", required = true)]
    pub targets: Vec<String>,
    /// Where targets and logs go.
    #[arg(long, short = 'o', value_name = "DIR", default_value = "_out")]
    pub output: PathBuf,
    /// Stages run in parallel at most (default: number of CPUs).
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<usize>,
    #[command(flatten)]
    pub sources: SourceArgs,
    /// Key of the signing session: an ephemeral ECDSA P-384 key (default)
    /// or an ephemeral RSA-4096 key (for kernels before 5.15).
    #[arg(long, value_name = "TYPE", default_value = "ecdsa-p384", value_parser = ["ecdsa-p384", "rsa-4096", "rsa-4096-sha512"])]
    pub signing_key_type: String,
    /// Sign with this key instead of an ephemeral one: a PEM file with a
    /// PKCS#8 PRIVATE KEY and its CERTIFICATE (like a kernel tree's
    /// certs/signing_key.pem). The key is then stable, not ephemeral. Also
    /// the key that signs modules built for a kernel this build does not
    /// make (a distribution's), which no session signs: the key your nodes
    /// trust (enrolled with MOK). In a build that makes a kernel too, the
    /// kernel then trusts this key.
    #[arg(long, value_name = "FILE", conflicts_with = "signing_key_type")]
    pub signing_key: Option<PathBuf>,
    /// Let modules built for a kernel this build does not make leave
    /// unsigned (they load only where the kernel does not enforce module
    /// signatures, and taint it). Without it or --signing-key, such a
    /// build stops before exporting anything.
    #[arg(long, conflicts_with = "signing_key")]
    pub unsigned: bool,
    /// Also give the session's private key (with its certificate, PEM) to
    /// the session's stages at /signing/keys/signing_key.pem, on a tmpfs
    /// of each sandbox's own, for kernel trees that sign during
    /// `modules_install` (CONFIG_MODULE_SIG_ALL=y). It never touches the
    /// disk; composer still signs every module afterwards.
    #[arg(long)]
    pub sign_in_tree: bool,
    /// Start a new signing session even when the cached one could be
    /// reused: a new ephemeral key and certificate (key rotation). The
    /// session's stages run again; a kernel compiled with no key (its
    /// certificate written in by a session stage) is not recompiled.
    #[arg(long, conflicts_with = "signing_key")]
    pub new_session: bool,
    /// On a local cache miss, look for the stage's output here before
    /// building it: a registry repository (`host/name`) or an OCI layout
    /// directory (`oci:DIR`). Repeatable; tried in order. A signing
    /// session's stages come all together or not at all.
    #[arg(long = "cache-from", value_name = "REF")]
    pub cache_from: Vec<String>,
    /// After the build, store every stage output of the plan here (a
    /// registry repository or `oci:DIR`), keyed by the stage's key; what
    /// is there already is not sent again. Private keys never are.
    #[arg(long = "cache-to", value_name = "REF")]
    pub cache_to: Option<String>,
    /// Without a terminal, report every running stage at least this often
    /// (elapsed time, phase, last log line), so a log shows a slow stage is
    /// not a hung one.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub progress_interval: u64,
    #[command(flatten)]
    pub images: super::images::ImageArgs,
    #[command(flatten)]
    pub existing: super::existing::ExistingArgs,
    #[command(flatten)]
    pub opts: RenderOpts,
}

/// Where sources come from: the cache, mirrors, the network (build, fetch).
#[derive(Args, Debug)]
pub struct SourceArgs {
    /// The cache directory (default: $XDG_CACHE_HOME/composer or ~/.cache/composer).
    #[arg(long, value_name = "DIR", env = "COMPOSER_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Never download: sources come from the download cache or a local mirror.
    #[arg(long)]
    pub offline: bool,
    /// Look for sources here first, as MIRROR/<sha256> or MIRROR/<file name>
    /// (a directory, file:// or http(s):// URL). Repeatable.
    #[arg(long = "source-mirror", value_name = "MIRROR")]
    pub mirrors: Vec<String>,
}

impl SourceArgs {
    /// `--cache-dir`, else the default.
    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(default_cache_dir)
    }
}

/// The default cache directory.
pub fn default_cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("composer");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => PathBuf::from(h).join(".cache/composer"),
        None => PathBuf::from(".composer-cache"),
    }
}

pub fn run(global: &Global, args: &BuildArgs) -> CliResult {
    let started = Instant::now();
    let defs = load_checked(global, &args.opts)?;
    let (_, plan) = super::resolve_targets(&defs, &args.targets)?;
    let skipping =
        super::existing::skip_existing(&args.existing, &args.images, &args.opts, &defs, plan)?;
    let Some(plan) = &skipping.plan else {
        return Ok(ExitCode::SUCCESS);
    };
    let epoch = source_date_epoch(&args.opts.build_args)?;
    let opts = exec_options(args, epoch)?;
    // Made when a session stage has to run; signing reads it from the
    // worker threads. Dropped (key zeroized) when this function returns.
    let session: OnceLock<Session> = OnceLock::new();
    let mut start_session = || start_session(args, &session);
    let hooks = Hooks {
        session: &session,
        in_tree: args.sign_in_tree,
    };
    let mut view = View::new(
        global.verbose,
        Duration::from_secs(args.progress_interval.max(1)),
    );
    let image_epoch = epoch.unwrap_or(0).max(0) as u64;
    let mut gate = Gate {
        args,
        defs: &defs,
        session: &session,
        told: &skipping.told,
        epoch: image_epoch,
        user_key: None,
        pending: None,
    };
    let result = exec::build_gated(
        &defs,
        plan,
        &opts,
        &mut start_session,
        Some(&hooks),
        &mut |built| gate.check(built),
        &mut |p| view.show(p),
    );
    view.clear();
    let summary = result
        .with_context(|| format!("building {}", args.targets.join(" ")))
        .map_err(CliError::User)?;
    let resigned = match summary.resigned.len() {
        0 => String::new(),
        n => format!("{n} signed again, "),
    };
    let fetched = match summary.fetched.len() {
        0 => String::new(),
        n => format!(" ({n} from the shared cache)"),
    };
    eprintln!(
        "built {} stage(s), {resigned}{} cached{fetched}, in {}",
        summary.built.len(),
        summary.cached.len(),
        human(started.elapsed())
    );
    for (target, path) in &summary.outputs {
        println!("{target}\t{}", path.display());
    }
    if let Some(pending) = gate.pending {
        super::images::publish(&args.images, pending, &args.output, image_epoch)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn exec_options(args: &BuildArgs, epoch: Option<i64>) -> Result<exec::Options, CliError> {
    let store = |s: &String| {
        s.parse::<exec::remote::Store>()
            .map_err(|e| CliError::user(format!("shared cache {e}")))
    };
    let remote = exec::remote::Remote {
        from: args
            .cache_from
            .iter()
            .map(store)
            .collect::<Result<_, _>>()?,
        to: args.cache_to.as_ref().map(store).transpose()?,
        registry: exec::remote::Remote::registry_options(args.images.insecure),
    };
    if args.sources.offline
        && let Some(r) = remote
            .from
            .iter()
            .chain(&remote.to)
            .find(|s| s.is_registry())
    {
        return Err(CliError::user(format!(
            "--offline: the shared cache {r} is a registry; an offline build reads and writes only oci: directories"
        )));
    }
    Ok(exec::Options {
        cache_dir: args.sources.cache_dir(),
        output: args.output.clone(),
        jobs: args.jobs.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }),
        offline: args.sources.offline,
        mirrors: args.sources.mirrors.clone(),
        epoch,
        insecure: args.images.insecure,
        new_session: args.new_session,
        remote,
    })
}

/// Makes the signing session's key (ephemeral, or `--signing-key`'s) when
/// the build asks for it, and hands the build its public half.
fn start_session(args: &BuildArgs, session: &OnceLock<Session>) -> Result<SessionCert, String> {
    let s = match &args.signing_key {
        Some(path) => Session::from_pem(path),
        None => match args.signing_key_type.as_str() {
            "rsa-4096" => Session::generate(KeyType::Rsa, 4096),
            "rsa-4096-sha512" => Session::generate(KeyType::RsaSha512, 4096),
            _ => Session::generate(KeyType::EcdsaP384, 0),
        },
    }
    .map_err(|e| e.to_string())?;
    let description = match &args.signing_key {
        Some(path) => format!(
            "{} key from {}: NOT ephemeral, kept by you",
            s.key_type().describe(),
            path.display()
        ),
        None => format!("ephemeral {} key, in memory only", s.key_type().describe()),
    };
    let cert = SessionCert {
        id: s.id(),
        cert_pem: s.cert_pem().as_bytes().to_vec(),
        description,
        private_pem: if args.sign_in_tree {
            Some(std::sync::Arc::new(
                s.combined_pem().map_err(|e| e.to_string())?,
            ))
        } else {
            None
        },
    };
    session
        .set(s)
        .map_err(|_| "a build has one signing session".to_string())?;
    Ok(cert)
}

/// The export gate of `composer build`: modules outside a signing session
/// are signed (in a copy) or left unsigned as asked, then every image is
/// validated and packed, and the registry's tags are checked, while the
/// outputs are still in the cache: when anything fails, nothing is
/// exported, written or pushed.
struct Gate<'a> {
    args: &'a BuildArgs,
    defs: &'a crate::defs::Definitions,
    session: &'a OnceLock<Session>,
    told: &'a std::collections::BTreeMap<String, String>,
    epoch: u64,
    /// `--signing-key`, read once at the gate: the key that signs modules
    /// outside a session, and bytes no image may hold.
    user_key: Option<Session>,
    pending: Option<super::images::Pending>,
}

impl Gate<'_> {
    fn check(&mut self, built: &exec::Built<'_>) -> Result<exec::Replacements, String> {
        let args = self.args;
        let staging = args.output.join(".composer").join("signed");
        // Copies a failed build left behind, or of targets no longer built.
        crate::exec::fsops::remove_tree(&staging).map_err(|e| e.to_string())?;
        if let (Some(path), None) = (&args.signing_key, &self.user_key) {
            self.user_key =
                Some(Session::from_pem(path).map_err(|e| format!("--signing-key: {e}"))?);
        }
        let choice = super::foreign::Choice {
            signing_key: args.signing_key.as_deref(),
            unsigned: args.unsigned,
        };
        let foreign = super::foreign::decide(&choice, built, &staging, self.user_key.as_ref())?;
        let mut secrets = self
            .session
            .get()
            .map(Session::secret_patterns_for_audit)
            .unwrap_or_default();
        secrets.extend(
            self.user_key
                .iter()
                .flat_map(Session::secret_patterns_for_audit),
        );
        let checked = super::images::gate(
            &args.images,
            self.defs,
            &args.output,
            self.epoch,
            secrets,
            built,
            &foreign,
        )
        .and_then(|mut p| {
            super::existing::before_push(&args.existing, &args.images, self.told, &mut p)?;
            Ok(p)
        });
        match checked {
            Ok(p) => self.pending = Some(p),
            Err(e) => {
                super::foreign::discard(&foreign);
                return Err(e);
            }
        }
        Ok(foreign
            .into_iter()
            .filter_map(|f| f.copy.map(|c| (f.target, c)))
            .collect())
    }
}

/// SOURCE_DATE_EPOCH from `--build-arg` or the environment.
pub fn source_date_epoch(build_args: &[(String, String)]) -> Result<Option<i64>, CliError> {
    let v = build_args
        .iter()
        .rev()
        .find(|(k, _)| k == "SOURCE_DATE_EPOCH")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("SOURCE_DATE_EPOCH").ok())
        .filter(|v| !v.is_empty());
    match v {
        None => Ok(None),
        Some(v) => v.trim().parse::<i64>().map(Some).map_err(|_| {
            CliError::user(format!(
                "SOURCE_DATE_EPOCH must be a number of seconds, got `{v}`"
            ))
        }),
    }
}
