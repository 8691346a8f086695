//! OCI formats and transports, shared by the phases that read images
//! (execution: image dependencies) and the ones that write them (outputs,
//! installer). Pure format code: nothing here knows about stages, signing
//! or Talos.
//!
//! - `reference`: image references with skopeo's transports
//!   (`oci:`, `oci-archive:`, `docker-archive:`, registry references).
//! - `layout`: an OCI image layout directory used as a blob store; every
//!   blob is hashed while it is written and renamed into place, so a blob's
//!   name never lies, and every read is checked against its digest.
//! - `layer`: deterministic image layers (a directory tree as a tar
//!   stream, compressed into a blob, digest and diff ID in one pass).
//! - `registry`: an OCI distribution client (push, pull, auth).

pub mod layer;
pub mod layout;
pub mod reference;
pub mod registry;

pub use layout::{Layout, LayoutError};
pub use reference::{ImageRef, ReferenceError, RegistryRef};
