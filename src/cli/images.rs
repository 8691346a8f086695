//! The image part of `composer build`: which targets become images, the
//! gate that validates and packs them before anything is exported, and
//! writing/pushing them afterwards. Argument handling and printing only;
//! the work is `output::pack`, `output::publish` and `oci::registry`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;

use super::CliError;
use crate::defs::Definitions;
use crate::oci::reference::{ImageRef, parse_registry};
use crate::oci::registry::{self, PushEvent, RegistryOptions};
use crate::output::Compression;
use crate::output::extension::is_extension;
use crate::output::pack::{ImageKind, Packed, Request, is_installer, pack};
use crate::output::publish::write_local;
use crate::sign::verify::Trusted;
use crate::validate::kernel_tree::SEARCH_DEPTH;
use crate::validate::{Context, KernelTree, Kind, Selection, find_kernel_trees};

#[derive(Args, Debug)]
pub struct ImageArgs {
    /// What targets become besides their filesystem: `auto` (system
    /// extensions — outputs holding manifest.yaml and rootfs/ — become
    /// extension images), `rootfs` (filesystems only) or `kmm` (each
    /// target's modules as a Kernel Module Management kmod image).
    #[arg(long, default_value = "auto", value_parser = ["auto", "rootfs", "kmm"])]
    pub format: String,
    /// KMM images: add /opt/lib/modules/<release>/host -> /lib/modules/<release>
    /// so modprobe finds in-tree dependencies on the node.
    #[arg(long)]
    pub kmm_host_link: bool,
    /// How images are written: `oci` (OUTPUT/images/<target>/, an OCI
    /// layout), `oci-archive` (OUTPUT/images/<target>.oci.tar) or
    /// `docker-archive` (OUTPUT/images/<target>.docker.tar, for docker/podman load).
    #[arg(long, default_value = "oci", value_parser = ["oci", "oci-archive", "docker-archive"])]
    pub image_format: String,
    /// Layer compression: gzip (default), zstd or none.
    #[arg(long, default_value = "gzip")]
    pub compression: Compression,
    /// Also push every image to REGISTRY/PATH/<target>:<tag>
    /// (credentials: ~/.docker/config.json or $REGISTRY_AUTH_FILE).
    #[arg(long, value_name = "REGISTRY/PATH")]
    pub push: Option<String>,
    /// Allow plain HTTP to the registry (loopback test registries).
    #[arg(long)]
    pub insecure: bool,
    /// Do not run this validation rule (`composer rules` lists them). Repeatable.
    #[arg(long = "skip-rule", value_name = "RULE")]
    pub skip_rules: Vec<String>,
}

/// Validated images waiting for the export.
pub struct Pending {
    pub packed: Vec<(String, Packed)>,
    /// Targets whose tag already names their image in the registry
    /// (`existing::before_push`): not pushed again.
    pub in_registry: std::collections::BTreeSet<String>,
}

fn kind_for(args: &ImageArgs, tree: &Path) -> Option<ImageKind> {
    match args.format.as_str() {
        "rootfs" => None,
        "kmm" => Some(ImageKind::Kmm {
            host_link: args.kmm_host_link,
        }),
        _ if is_extension(tree) => Some(ImageKind::Extension),
        _ if is_installer(tree) => Some(ImageKind::Installer),
        _ => None,
    }
}

/// The kernel build trees among the outputs of the stages a target is
/// built on (the demo kernel's `/src`, a distribution's headers), read
/// once per output: the rules check modules' vermagic and symbols against
/// them. A tree that cannot be read is said once, and its modules are then
/// checked as without a tree.
#[derive(Default)]
struct KernelTrees {
    read: HashMap<PathBuf, Vec<Arc<KernelTree>>>,
}

impl KernelTrees {
    fn for_target(
        &mut self,
        built: &crate::exec::Built<'_>,
        target: &str,
    ) -> BTreeMap<String, Arc<KernelTree>> {
        let deps = built
            .dependencies
            .iter()
            .find(|(t, _)| t == target)
            .map(|(_, d)| d.as_slice())
            .unwrap_or_default();
        let mut trees = BTreeMap::new();
        for out in deps {
            let found = self.read.entry(out.clone()).or_insert_with(|| {
                find_kernel_trees(out, SEARCH_DEPTH)
                    .iter()
                    .filter_map(|dir| match KernelTree::read(dir) {
                        Ok(t) => Some(Arc::new(t)),
                        Err(e) => {
                            eprintln!(
                                "warning: {e}: the modules built against it are checked without it"
                            );
                            None
                        }
                    })
                    .collect()
            });
            for tree in found.iter() {
                trees.insert(tree.release.clone(), Arc::clone(tree));
            }
        }
        trees
    }
}

/// The session's certificates: the trust anchor of its modules.
fn session_trust(built: &crate::exec::Built<'_>) -> Result<Vec<Trusted>, String> {
    match built.session_cert {
        Some(pem) => Ok(x509_cert::Certificate::load_pem_chain(pem.as_bytes())
            .map_err(|e| format!("the session certificate: {e}"))?
            .into_iter()
            .map(Trusted::new)
            .collect()),
        None => Ok(Vec::new()),
    }
}

/// What every image of the gate shares.
struct Shared<'a> {
    args: &'a ImageArgs,
    defs: &'a Definitions,
    epoch: u64,
    secrets: Vec<zeroize::Zeroizing<Vec<u8>>>,
    trusted: Vec<Trusted>,
}

impl<'a> Shared<'a> {
    /// The request to validate and pack `tree` as `target`'s image.
    /// Modules outside the session are checked against the user's
    /// certificate, or (unsigned, as asked) not for signatures.
    fn request(
        &self,
        target: &'a String,
        tree: &'a Path,
        kind: ImageKind,
        outside: Option<&super::foreign::Foreign>,
        kernel_trees: BTreeMap<String, Arc<KernelTree>>,
    ) -> Request<'a> {
        let mut skip = self.args.skip_rules.clone();
        if outside.is_some_and(|f| f.trusted.is_empty()) {
            skip.push("modules-signed".into());
        }
        let package = self.defs.find(target);
        Request {
            target,
            tree,
            kind,
            platform: self.defs.platform,
            labels: package
                .map(|p| self.defs.roots[p.root].pkgfile.labels.clone())
                .unwrap_or_default(),
            compression: self.args.compression,
            epoch: self.epoch,
            context: Context {
                kind: Kind::Rootfs,
                package: None,
                trusted: outside.map_or_else(|| self.trusted.clone(), |f| f.trusted.clone()),
                allow_in_tree_deps: false,
                secret_patterns: self.secrets.clone(),
                talos_version: None,
                kernel_trees,
            },
            selection: Selection {
                only: Vec::new(),
                skip,
            },
            version: package
                .and_then(|p| crate::defs::template::render_inline("{{ .VERSION }}", &p.vars).ok())
                .filter(|v| !v.is_empty() && v != "<no value>"),
        }
    }
}

/// The gate: validates and packs every target that becomes an image;
/// fails (with every finding) when any breaks a rule.
pub fn gate(
    args: &ImageArgs,
    defs: &Definitions,
    output: &Path,
    epoch: u64,
    secrets: Vec<zeroize::Zeroizing<Vec<u8>>>,
    built: &crate::exec::Built<'_>,
    foreign: &[super::foreign::Foreign],
) -> Result<Pending, String> {
    if let Some(p) = &args.push {
        parse_registry(p).map_err(|e| format!("--push {p}: {e}"))?;
    }
    let shared = Shared {
        args,
        defs,
        epoch,
        secrets,
        trusted: session_trust(built)?,
    };
    let mut trees = KernelTrees::default();
    let mut packed = Vec::new();
    let mut failures = Vec::new();
    for (target, cached) in built.targets {
        let outside = foreign.iter().find(|f| &f.target == target);
        let tree = outside.map_or(cached, |f| &f.tree);
        let Some(kind) = kind_for(args, tree) else {
            continue;
        };
        let req = shared.request(target, tree, kind, outside, trees.for_target(built, target));
        match pack(req, output) {
            Ok(p) => {
                for w in p.report.warnings() {
                    eprintln!("{target}: {w}");
                }
                packed.push((target.clone(), p));
            }
            Err(e) => failures.push(format!("{target}: {e}")),
        }
    }
    if !failures.is_empty() {
        return Err(format!(
            "no output written: {} image(s) failed validation or packing\n{}",
            failures.len(),
            failures.join("\n")
        ));
    }
    Ok(Pending {
        packed,
        in_registry: Default::default(),
    })
}

/// Writes the validated images and pushes them when asked.
pub fn publish(
    args: &ImageArgs,
    pending: Pending,
    output: &Path,
    epoch: u64,
) -> Result<(), CliError> {
    let images = output.join("images");
    let in_registry = pending.in_registry;
    for (target, p) in pending.packed {
        let dest: ImageRef = match args.image_format.as_str() {
            "oci-archive" => ImageRef::OciArchive {
                path: images.join(format!("{target}.oci.tar")),
                tag: None,
            },
            "docker-archive" => ImageRef::DockerArchive {
                path: images.join(format!("{target}.docker.tar")),
                name: None,
            },
            _ => ImageRef::Layout {
                dir: images.join(&target),
                tag: None,
            },
        };
        let done =
            write_local(&p.staging.layout, &p.top, &dest, &target, &p.tag, epoch).map_err(|e| {
                CliError::User(
                    anyhow::Error::new(e).context(format!("writing the image of {target}")),
                )
            })?;
        println!("{target}\timage\t{}\t{}", done.destination, done.digest);
        if let Some(prefix) = &args.push {
            let reference = super::existing::push_reference(prefix, &target, &p.tag)
                .map_err(|e| CliError::user(format!("--push: {e}")))?;
            if in_registry.contains(&target) {
                eprintln!("{target}: {reference} already there ({})", done.digest);
                println!("{target}\tpresent\t{reference}\t{}", done.digest);
                continue;
            }
            p.staging
                .layout
                .set_tag(&p.top, &p.tag)
                .map_err(|e| CliError::User(e.into()))?;
            let opts = RegistryOptions {
                insecure: args.insecure,
                ..RegistryOptions::default()
            };
            let pushed = registry::push(&p.staging.layout, Some(&p.tag), &reference, &opts, &|e| {
                push_progress(&target, &e)
            })
            .map_err(|e| {
                CliError::User(anyhow::Error::new(e).context(format!("pushing {reference}")))
            })?;
            println!("{target}\tpushed\t{reference}\t{}", pushed.digest);
        }
    }
    Ok(())
}

fn push_progress(target: &str, e: &PushEvent) {
    let short = |d: &oci_spec::image::Digest| d.digest().chars().take(12).collect::<String>();
    match e {
        PushEvent::BlobExists { digest, .. } => {
            eprintln!("{target}: blob {} already in the registry", short(digest))
        }
        PushEvent::BlobDone { digest, size } => {
            eprintln!("{target}: blob {} uploaded ({size} bytes)", short(digest))
        }
        PushEvent::Retry {
            digest,
            offset,
            attempt,
            reason,
        } => eprintln!(
            "{target}: blob {}: {reason}; retry {attempt} from byte {offset}",
            short(digest)
        ),
        PushEvent::ManifestPushed { reference, .. } => {
            eprintln!("{target}: manifest stored as {reference}")
        }
        PushEvent::BlobStarted { .. } | PushEvent::BlobProgress { .. } => {}
    }
}
