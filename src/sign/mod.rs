//! Signing: the session key that a kernel and its modules share.
//!
//! Comes after execution in the pipeline: a build is handed the session's
//! public certificate (`exec::SessionCert`); the private key stays here.

pub mod config;
pub mod hooks;
pub mod kernel_image;
pub mod kmod;
pub mod session;
pub mod tree;
pub mod verify;

pub use session::Session;
