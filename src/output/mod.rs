//! Outputs: what a build leaves behind besides its root filesystems.
//!
//! - layers (a directory tree as a deterministic, compressed blob) are
//!   `oci::layer`'s; the execution phase's remote cache writes them too.
//! - `image`: config, manifest and multi-platform index around layers.
//! - `archive`: an image written as an OCI layout, an `oci-archive` or a
//!   `docker-archive` tarball (the `docker save` format).
//! - `extension`: Talos system extension images.
//! - `kmod`: Kernel Module Management kmod images.
//! - `foreign`: modules no signing session signed (a kernel the build
//!   did not make), signed with the user's key in a copy, or left unsigned.
//! - `pack`: a built stage to a validated image (rules first, then blobs).
//! - `publish`: staging, and writing an image to its destination.
//! - `tag`: the tag a target's image will carry, told before building.
//!
//! Every writer is reproducible: the same input tree and epoch give the
//! same digests (tested by building twice).

pub mod archive;
pub mod extension;
pub mod foreign;
pub mod image;
pub mod kmod;
pub mod pack;
pub mod publish;
pub mod tag;

use std::io;
use std::path::PathBuf;

pub use crate::oci::layer::{Compression, Layer, LayerError};
pub use archive::ArchiveError;
pub use image::{ImageError, ImageMeta, write_image, write_index};

/// Why an output could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },
    #[error("{tool}: {message}")]
    Tool { tool: String, message: String },
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Layout(#[from] crate::oci::LayoutError),
    /// Error-severity findings: the image was not written.
    #[error("{target}: {} — no image written\n{}", report.summary(), findings(report))]
    Rules {
        target: String,
        report: crate::validate::Report,
    },
}

fn findings(report: &crate::validate::Report) -> String {
    report
        .findings
        .iter()
        .map(|f| format!("  {f}"))
        .collect::<Vec<_>>()
        .join("\n")
}
