//! The node side: what runs on the machine that uses the modules. Loading
//! and unloading them in dependency order with the kernel's own calls
//! (`index` reads depmod's `modules.dep`, `host` the kernel's state,
//! `kernel` makes the calls, `load` and `unload` plan and carry out), and
//! the systemd unit that does it at boot (`unit`).

pub mod host;
pub mod index;
pub mod kernel;
pub mod load;
pub mod unit;
pub mod unload;
