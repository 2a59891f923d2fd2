//! Control: the admin socket, what `status` reports, and the file watcher
//! that turns saved source into reload requests. Nothing here starts or
//! stops a worker itself; it asks the supervisor.

pub(crate) mod admin;
pub(crate) mod notify;
pub(crate) mod reconfig;
pub(crate) mod scrape;
pub(crate) mod status;
pub(crate) mod watch;
