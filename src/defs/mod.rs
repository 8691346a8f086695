//! Definitions: bldr-compatible `Pkgfile`, `pkg.yaml`, `vars.yaml` and
//! `*.tmpl` trees, loaded into typed `Package`s with every problem reported.
//!
//! Flow inside this phase: `load` walks the roots → `vars` builds each
//! directory's variables → `template` renders (after `blocks` checks the
//! block structure) → `yaml` parses with positions → `pkgfile`/`pkg` read
//! the documents into `schema` types (`sbom` reads and checks a step's
//! `sbom:`).

pub mod blocks;
pub mod load;
pub mod pkg;
pub mod pkgfile;
pub mod sbom;
pub mod schema;
pub mod sprig;
pub mod template;
pub mod vars;
pub mod yaml;

pub use load::{Definitions, LoadOptions, Package, Root, load};
pub use vars::{Platform, Vars};
