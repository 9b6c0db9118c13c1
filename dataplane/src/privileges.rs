//! The daemon's privileges after start-up: none.
//!
//! Everything that needs a capability happens while the daemon starts: loading and
//! attaching the XDP program and pinning it (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON,
//! CAP_SYS_ADMIN for bpffs), opening the AF_XDP sockets and their UMEM (CAP_NET_RAW,
//! CAP_IPC_LOCK), and binding the control socket with its group (CAP_CHOWN). What runs
//! afterwards works on descriptors it already holds: updates to the pinned maps through
//! their descriptors (policy loads, exclusions), frames through the AF_XDP rings, files
//! in directories root owns. So the daemon keeps no capability at all: a flaw in a
//! parser of outside bytes then runs as a root without privileges — it cannot load BPF,
//! reconfigure interfaces, open raw sockets, override file modes or regain any of it by
//! running a program (the bounding set is emptied and no_new_privs is set).
//!
//! Capabilities are per thread on Linux, so this must run while the daemon is a single
//! thread; every thread spawned afterwards inherits the empty sets.

use caps::{CapSet, Capability};

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "cannot drop capabilities: the daemon already runs {threads} threads, and a thread started before the drop would keep them"
    )]
    NotSingleThreaded { threads: usize },
    #[error("cannot read the number of threads from /proc/self/task: {0}")]
    Threads(std::io::Error),
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(std::io::Error),
    #[error("cannot drop {what}: {source}")]
    Drop {
        what: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
}

/// What [`drop_all`] left, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// Whether the bounding set could be emptied too (needs CAP_SETPCAP at the time).
    pub bounding_set_emptied: bool,
}

/// Drops every capability of the (single-threaded) process for good: no_new_privs, the
/// bounding set (when CAP_SETPCAP allows it), ambient, inheritable, permitted and
/// effective sets.
pub fn drop_all() -> Result<Dropped, PrivilegeError> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map_err(PrivilegeError::Threads)?
        .count();
    if threads != 1 {
        return Err(PrivilegeError::NotSingleThreaded { threads });
    }
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes plain integers and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(PrivilegeError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    let drop = |what, result: Result<(), caps::errors::CapsError>| {
        result.map_err(|source| PrivilegeError::Drop { what, source })
    };
    // Without CAP_SETPCAP (a service manager may withhold it) the bounding set stays;
    // no_new_privs and an empty permitted set already keep execve from granting anything.
    let bounding_set_emptied = caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false);
    if bounding_set_emptied {
        drop("the bounding set", caps::clear(None, CapSet::Bounding))?;
    }
    drop("the ambient set", caps::clear(None, CapSet::Ambient))?;
    drop("the inheritable set", caps::clear(None, CapSet::Inheritable))?;
    drop("the effective set", caps::clear(None, CapSet::Effective))?;
    drop("the permitted set", caps::clear(None, CapSet::Permitted))?;
    Ok(Dropped { bounding_set_emptied })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_to_drop_while_other_threads_run() {
        // The test harness runs this on a thread of its own beside the main one.
        let helper = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(200)));
        let err = drop_all().unwrap_err();
        assert!(
            matches!(err, PrivilegeError::NotSingleThreaded { threads } if threads >= 2),
            "{err}"
        );
        assert!(err.to_string().contains("would keep them"), "{err}");
        helper.join().unwrap();
        // Nothing was dropped on the way.
        // SAFETY: prctl with PR_GET_NO_NEW_PRIVS reads a flag and touches no memory.
        assert_eq!(unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) }, 0);
    }
}
