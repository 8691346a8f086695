//! `composer cache ls|prune|verify|push|pull`: look at, trim and check the
//! cache, and copy it to or from a shared cache (`exec::remote`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::build::default_cache_dir;
use super::progress::bytes;
use super::{CliError, CliResult, Global};
use crate::exec::cache::{Cache, now};
use crate::exec::fsops;
use crate::exec::remote::{Remote, RemoteEvent, Store, fetch_all, store_entries};

#[derive(Args, Debug)]
pub struct CacheArgs {
    /// The cache directory (default: $XDG_CACHE_HOME/composer or ~/.cache/composer).
    #[arg(long, value_name = "DIR", env = "COMPOSER_CACHE_DIR", global = true)]
    pub cache_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: CacheCommand,
}

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// List cached stage outputs.
    Ls,
    /// Remove stage outputs not built for a while (or everything).
    Prune {
        /// Remove entries created more than this many days ago.
        #[arg(long, value_name = "DAYS", default_value_t = 30)]
        older_than: u64,
        /// Remove everything: outputs, downloads and cachePaths.
        #[arg(long)]
        all: bool,
    },
    /// Recompute the digest of every output and report damaged entries.
    Verify {
        /// Remove damaged entries (the next build rebuilds them).
        #[arg(long)]
        repair: bool,
    },
    /// Store every cached stage output in a shared cache, signing
    /// sessions whole: to seed a registry, or an oci: directory carried to
    /// an air-gapped site. What is there already is not sent again.
    ///
    /// Examples:
    ///   composer cache push registry.example.com/team/composer-cache
    ///   composer cache push oci:/media/usb/composer-cache
    #[command(verbatim_doc_comment)]
    Push {
        /// A registry repository (host/name) or an OCI layout (oci:DIR).
        #[arg(value_name = "REF")]
        to: String,
        /// Plain HTTP, or HTTPS without certificate checks, to the registry.
        #[arg(long)]
        insecure: bool,
    },
    /// Fetch every entry of a shared cache that this cache lacks, each
    /// checked by digest; a signing session comes whole or not at all.
    ///
    /// Examples:
    ///   composer cache pull oci:/media/usb/composer-cache
    ///   composer cache pull registry.internal/team/composer-cache
    #[command(verbatim_doc_comment)]
    Pull {
        /// A registry repository (host/name) or an OCI layout (oci:DIR).
        #[arg(value_name = "REF")]
        from: String,
        /// Plain HTTP, or HTTPS without certificate checks, to the registry.
        #[arg(long)]
        insecure: bool,
    },
}

pub fn run(global: &Global, args: &CacheArgs) -> CliResult {
    let dir = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let mut waiting = || eprintln!("waiting for another composer using {}", dir.display());
    let internal = |e: crate::exec::cache::CacheError| CliError::Internal(e.into());
    match &args.command {
        CacheCommand::Ls => {
            if !dir.join("stages").is_dir() {
                eprintln!("no cache at {}", dir.display());
                return Ok(ExitCode::SUCCESS);
            }
            let cache = Cache::open_shared(&dir, &mut waiting).map_err(internal)?;
            let entries: Vec<_> = cache.entries().into_iter().flatten().collect();
            if global.json {
                let metas: Vec<_> = entries.iter().map(|e| &e.meta).collect();
                let text = serde_json::to_string_pretty(&metas)
                    .map_err(|e| CliError::Internal(e.into()))?;
                println!("{text}");
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<12}  {:<24} {:<12} {:>10} {:>8}  SESSION",
                "KEY", "STAGE", "PLATFORM", "SIZE", "AGE"
            );
            let mut total = 0;
            for e in &entries {
                let m = &e.meta;
                total += m.size;
                println!(
                    "{:<12}  {:<24} {:<12} {:>10} {:>8}  {}",
                    &m.key[..12],
                    m.stage,
                    m.platform,
                    bytes(m.size),
                    age(now().saturating_sub(m.created)),
                    m.session.as_deref().map(|s| &s[..12]).unwrap_or("-")
                );
            }
            let downloads = fsops::tree_size(&dir.join("downloads"));
            let paths = fsops::tree_size(&dir.join("paths"));
            println!(
                "{} entries, {}; downloads {}; cachePaths {}",
                entries.len(),
                bytes(total),
                bytes(downloads),
                bytes(paths)
            );
        }
        CacheCommand::Prune { older_than, all } => {
            let cache = Cache::open(&dir, &mut waiting).map_err(internal)?;
            let before = fsops::tree_size(&dir);
            if *all {
                cache.clear().map_err(internal)?;
            } else {
                let limit = now().saturating_sub(older_than.saturating_mul(86_400));
                for e in cache.entries() {
                    match e {
                        Ok(e) if e.meta.created < limit => {
                            cache.remove(&e.dir).map_err(internal)?
                        }
                        Ok(_) => {}
                        Err(err) => eprintln!("skipping: {err}"),
                    }
                }
            }
            let after = fsops::tree_size(&dir);
            eprintln!("freed {}", bytes(before.saturating_sub(after)));
        }
        CacheCommand::Verify { repair } => {
            let cache = if *repair {
                Cache::open(&dir, &mut waiting)
            } else {
                Cache::open_shared(&dir, &mut waiting)
            }
            .map_err(internal)?;
            let mut bad = 0;
            let mut n = 0;
            for e in cache.entries() {
                n += 1;
                let (dir, problem) = match e {
                    Err(err) => (None, err.to_string()),
                    Ok(e) => match fsops::tree_digest(&e.out()) {
                        Ok(d) if d == e.meta.output_digest => continue,
                        Ok(_) => (
                            Some(e.dir.clone()),
                            format!(
                                "{} ({}): output changed since it was cached",
                                e.meta.stage,
                                &e.meta.key[..12]
                            ),
                        ),
                        Err(err) => (Some(e.dir.clone()), format!("{}: {err}", e.meta.stage)),
                    },
                };
                bad += 1;
                eprintln!("damaged: {problem}");
                if *repair && let Some(d) = dir {
                    cache.remove(&d).map_err(internal)?;
                    eprintln!("  removed");
                }
            }
            eprintln!("{n} entries checked, {bad} damaged");
            if bad > 0 && !*repair {
                return Err(CliError::user(
                    "the cache has damaged entries; `composer cache verify --repair` removes them",
                ));
            }
        }
        CacheCommand::Push { to, insecure } => {
            let store = store(to)?;
            let cache = Cache::open(&dir, &mut waiting).map_err(internal)?;
            let entries: Vec<_> = cache.entries().into_iter().flatten().collect();
            let opts = Remote::registry_options(*insecure);
            let mut sent = 0;
            store_entries(&store, &entries, &cache, &opts, &mut |e| {
                if let RemoteEvent::Stored { bytes, .. } = &e {
                    sent += bytes;
                }
                show(e)
            })
            .map_err(|e| CliError::user(format!("storing in {store}: {e}")))?;
            eprintln!("{} entries in {store}; {} sent", entries.len(), bytes(sent));
        }
        CacheCommand::Pull { from, insecure } => {
            let store = store(from)?;
            let cache = Cache::open(&dir, &mut waiting).map_err(internal)?;
            let opts = Remote::registry_options(*insecure);
            let mut read = 0;
            let pulled = fetch_all(&store, &cache, &opts, &mut |e| {
                if let RemoteEvent::Fetched { bytes, .. } = &e {
                    read += bytes;
                }
                show(e)
            })
            .map_err(|e| CliError::user(format!("fetching from {store}: {e}")))?;
            eprintln!(
                "{} entries fetched from {store}; {} read",
                pulled.landed,
                bytes(read)
            );
            if pulled.damaged > 0 {
                return Err(CliError::user(format!(
                    "{} damaged in {store} and not kept (see the warnings above); everything else was fetched",
                    if pulled.damaged == 1 {
                        "1 entry or session".to_string()
                    } else {
                        format!("{} entries or sessions", pulled.damaged)
                    }
                )));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn store(reference: &str) -> Result<Store, CliError> {
    reference
        .parse()
        .map_err(|e| CliError::user(format!("shared cache {e}")))
}

fn show(e: RemoteEvent) {
    eprintln!("{}", super::progress::remote_line(&e));
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
