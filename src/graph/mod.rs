//! The build graph: stages resolved by name across all roots, their
//! dependency edges, the `runtime: true` closure, and renderings of it.

pub mod render;
pub mod resolve;

pub use resolve::{Graph, GraphError, Input, Plan};
