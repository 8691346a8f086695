//! Execution: runs the stages of a plan in sandboxes and caches their
//! outputs by content.
//!
//! Data flow inside the phase: `pkgdir` (what /pkg holds) and `key` (the
//! fingerprint of a stage) feed `build` (cache decisions, the signing
//! session rule; the scheduler in `schedule`), which runs each stage with
//! `stage`: inputs layered with `overlay` or merged with `fsops`, sources
//! fetched and verified by `sources` (all of a plan's at once, before any
//! stage runs, by `prefetch`), script items run by `sandbox` in the shell
//! `shell` picks, the output committed to `cache`. `sbom` writes the SPDX
//! documents (`spdx`) of `sbom:` steps into a stage's filesystem and
//! follows them to the targets. `remote` shares `cache` entries through an
//! OCI registry or layout (`--cache-from`, `--cache-to`).
//!
//! Imports only from `defs`, `graph`, `diag` and `oci` (image inputs, the
//! shared cache's transport); the signing session is
//! given to it as a certificate and a callback, so it knows nothing of keys.

pub mod build;
pub mod cache;
pub mod fsops;
pub mod image;
pub mod key;
pub mod overlay;
pub mod pkgdir;
mod plan;
pub mod prefetch;
pub mod remote;
pub mod sandbox;
pub mod sbom;
mod schedule;
pub mod shell;
pub mod sources;
pub mod spdx;
pub mod stage;

pub use build::{
    BuildError, Built, Options, Progress, Replacements, SessionCert, Summary, build, build_gated,
};
pub use stage::SessionHooks;
