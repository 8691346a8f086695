//! The build graph: stages resolved by name across all roots, their
//! dependency edges, the `runtime: true` closure, renderings of it, and
//! the build matrix (which targets must be built together).

pub mod matrix;
pub mod render;
pub mod resolve;

pub use matrix::{Cell, Matrix};
pub use resolve::{Graph, GraphError, Input, Plan};
