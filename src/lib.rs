//! composer: builds custom Linux kernels, out-of-tree modules and Talos
//! system extensions from bldr-compatible definitions, in one binary.
//!
//! The pipeline runs in one direction, and each module imports only from
//! the phases before it:
//!
//! ```text
//! definitions (Pkgfile, pkg.yaml, vars.yaml, *.tmpl; several roots)   defs/
//!   → graph (resolved stages, targets, runtime closure)                graph/
//!   → execution (sandbox, sources, cache, scheduler)                  exec/
//!       ↳ signing session (ephemeral key; certificate to the kernel)  sign/
//!   → validation (named rules over a rootfs or an image)             validate/
//!   → outputs (layers, OCI images, extension and kmod images, push)   output/
//!   → installer (extensions into a base installer's initramfs)        installer/
//!   → node (images verified, installed, loaded in order; a boot unit) node/
//! CLI: a thin layer over the library; it parses, calls, prints.        cli/
//! ```
//!
//! `diag` is shared by every phase: positions, diagnostics, reports.
//! `oci` is format code shared by the phases that read images (image
//! dependencies) and those that write them: references, layouts, the
//! registry client.
//!
//! `scaffold` stands beside the pipeline: `composer new` writes new
//! definitions (from the repository's `templates/`) that `defs` then loads.

pub mod cli;
pub mod defs;
pub mod diag;
pub mod exec;
pub mod graph;
pub mod installer;
pub mod node;
pub mod oci;
pub mod output;
pub mod scaffold;
pub mod sign;
pub mod validate;
