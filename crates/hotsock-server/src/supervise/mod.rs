//! Supervision: which worker processes run. The decisions (restarts,
//! reloads, rollbacks) are made in one place; this folder also holds one
//! worker process's task, the one thread that forks, and the per-generation
//! executable store.

pub(crate) mod core;
pub(crate) mod driver;
pub(crate) mod exit;
pub(crate) mod generations;
pub(crate) mod handle;
pub(crate) mod messages;
pub(crate) mod spawn;
pub(crate) mod view;
pub(crate) mod worker;
