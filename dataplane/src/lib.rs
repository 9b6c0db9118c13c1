//! loupe dataplane: the XDP wire, AF_XDP I/O, the flow table, transparent TCP endpoints
//! and the pinned workers.

pub mod capture;
pub mod control_plane;
pub mod daemon;
pub mod eve;
pub mod flow;
pub mod frame;
pub mod inspect;
pub mod latency;
pub mod log_writer;
pub mod metrics;
pub mod policy;
pub mod privileges;
pub mod probing;
pub mod relay;
pub mod reopen;
pub mod session;
pub mod tcp_device;
#[cfg(test)]
mod test_dir;
#[cfg(test)]
mod test_rng;
pub mod tls;
pub mod wire;
pub mod worker;
pub mod xsk;
