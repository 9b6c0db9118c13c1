//! The control socket server: a Unix stream socket speaking the JSON-lines protocol of
//! [`crate::protocol`] (see `control/PROTOCOL.md`).
//!
//! One thread accepts; each connection gets its own thread, which checks the peer's
//! credentials (SO_PEERCRED), reads request lines under a size cap and an idle timeout,
//! and hands each request to the control thread as a [`ControlCall`]. `log-tail` is
//! answered by the connection thread itself from the decryption log (or, with `http`,
//! from the EVE log beside it), so a slow or endless follower never occupies the
//! control thread.

use std::ffi::{CStr, CString};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use serde_json::Value;

use crate::log_tail::{LogFollower, LogKind, RecordFilter};
use crate::protocol::{
    parse_request, ControlCall, ControlError, ErrorKind, PeerCred, ReplyLine, Request, RequestLine, DEFAULT_SOCKET,
    MAX_REQUEST_BYTES,
};

/// How often blocked connection threads look at the stop flag, and how often a
/// follower looks at the log file.
const TICK: Duration = Duration::from_millis(200);
/// The accept loop's poll timeout.
const ACCEPT_TICK: i32 = 100;
/// Bytes read from a client at a time.
const READ_CHUNK: usize = 64 << 10;

/// Where and how the control socket is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// The socket path, e.g. `/run/loupe/control.sock`.
    pub path: PathBuf,
    /// The group whose members are served besides root.
    pub group: Option<String>,
    /// A connection silent this long gets a `timeout` error and is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; more get a `failed` "too many connections" error.
    pub max_connections: usize,
    /// The decryption log (JSON lines) that `log-tail` reads. `log-tail --http` reads
    /// the EVE log in the same directory (`eve.json`, see [`ServerSettings::log_path`]).
    pub log_file: PathBuf,
    /// How long a connection waits for the control thread's reply.
    pub call_timeout: Duration,
}

impl Default for ServerSettings {
    fn default() -> ServerSettings {
        ServerSettings {
            path: PathBuf::from(DEFAULT_SOCKET),
            group: None,
            idle_timeout: Duration::from_secs(10),
            max_connections: 32,
            log_file: PathBuf::from("/var/log/loupe/decryption.jsonl"),
            call_timeout: Duration::from_secs(30),
        }
    }
}

impl ServerSettings {
    /// The file `log-tail` reads for this kind of log: `log_file` itself for the
    /// decryption log; for HTTP events, `eve.json` in `log_file`'s directory (the
    /// daemon writes both under its `--log-dir`).
    pub fn log_path(&self, kind: LogKind) -> PathBuf {
        match kind {
            LogKind::Decryption => self.log_file.clone(),
            LogKind::Http => self.log_file.with_file_name(kind.file_name()),
        }
    }
}

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create the control socket directory {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot use {} as the control socket: {source}", path.display())]
    Inspect { path: PathBuf, source: io::Error },
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("another daemon is already listening on {}", path.display())]
    InUse { path: PathBuf },
    #[error("cannot remove the stale control socket {}: {source}", path.display())]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("cannot bind the control socket {}: {source}", path.display())]
    Bind { path: PathBuf, source: io::Error },
    #[error(
        "the control socket's directory {} is writable by everyone (mode {mode:o}) without the sticky bit: anyone could replace the socket; use a directory only root writes, such as /run/loupe",
        path.display()
    )]
    DirWorldWritable { path: PathBuf, mode: u32 },
    #[error("cannot set the mode of the control socket {}: {source}", path.display())]
    Chmod { path: PathBuf, source: io::Error },
    #[error("cannot give the control socket {} to group {group}: {source}", path.display())]
    Chown {
        path: PathBuf,
        group: String,
        source: io::Error,
    },
    #[error("the control group {group:?} does not exist (create it or change the setting)")]
    UnknownGroup { group: String },
    #[error("cannot look up the control group {group:?}: {source}")]
    GroupLookup { group: String, source: io::Error },
}

/// A bound control socket, not yet serving.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    settings: ServerSettings,
    /// The configured group's id.
    gid: Option<u32>,
    /// The socket file's (dev, inode): removed on exit only while it is still ours.
    inode: (u64, u64),
}

impl ControlServer {
    /// Creates the parent directory (mode 0755) if missing; refuses to replace an
    /// existing path that is not a socket; replaces a stale socket (nobody accepts on
    /// it) but errors if another daemon is listening; binds; sets mode 0660 and, with a
    /// group configured, group ownership (the owner stays the daemon's user, root).
    pub fn bind(settings: ServerSettings) -> Result<ControlServer, ServerError> {
        let path = settings.path.clone();
        // Resolve the group first: a typo must not leave a half-set-up socket behind.
        let gid = match &settings.group {
            Some(group) => Some(lookup_group(group)?),
            None => None,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
                    .map_err(|source| ServerError::CreateDir {
                        path: parent.to_path_buf(),
                        source,
                    })?;
            }
        }
        // Whoever may rename entries in the directory may swap the socket for their own and
        // read what loupectl sends: only a sticky world-writable directory (/tmp) is safe.
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir_mode = std::fs::metadata(dir)
            .map_err(|source| ServerError::Inspect {
                path: dir.to_path_buf(),
                source,
            })?
            .permissions()
            .mode();
        if dir_mode & 0o002 != 0 && dir_mode & 0o1000 == 0 {
            return Err(ServerError::DirWorldWritable {
                path: dir.to_path_buf(),
                mode: dir_mode & 0o7777,
            });
        }
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(&path) {
                Ok(_) => return Err(ServerError::InUse { path }),
                Err(_) => std::fs::remove_file(&path).map_err(|source| ServerError::RemoveStale {
                    path: path.clone(),
                    source,
                })?,
            },
            Ok(_) => return Err(ServerError::NotASocket { path }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(ServerError::Inspect { path, source }),
        }
        let listener = UnixListener::bind(&path).map_err(|source| ServerError::Bind {
            path: path.clone(),
            source,
        })?;
        // From here on a failure removes the socket it made.
        let cleanup = |error: ServerError| {
            let _ = std::fs::remove_file(&path);
            error
        };
        // Until this chmod the socket has the umask's mode; peers are checked with
        // SO_PEERCRED on every connection regardless.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).map_err(|source| {
            cleanup(ServerError::Chmod {
                path: path.clone(),
                source,
            })
        })?;
        if let (Some(gid), Some(group)) = (gid, &settings.group) {
            std::os::unix::fs::chown(&path, None, Some(gid)).map_err(|source| {
                cleanup(ServerError::Chown {
                    path: path.clone(),
                    group: group.clone(),
                    source,
                })
            })?;
        }
        let meta = std::fs::symlink_metadata(&path).map_err(|source| {
            cleanup(ServerError::Inspect {
                path: path.clone(),
                source,
            })
        })?;
        listener.set_nonblocking(true).map_err(|source| {
            cleanup(ServerError::Bind {
                path: path.clone(),
                source,
            })
        })?;
        Ok(ControlServer {
            listener,
            settings,
            gid,
            inode: (meta.dev(), meta.ino()),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.settings.path
    }

    /// Serves on a thread named `loupe-control-accept`, one thread per connection, until
    /// `stop` becomes true; then removes the socket file (if it is still this one).
    pub fn spawn(self, calls: Sender<ControlCall>, stop: Arc<AtomicBool>) -> io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("loupe-control-accept".into())
            .spawn(move || self.accept_loop(calls, stop))
    }

    fn accept_loop(self, calls: Sender<ControlCall>, stop: Arc<AtomicBool>) {
        let shared = Arc::new(Shared {
            settings: self.settings.clone(),
            gid: self.gid,
            calls,
            stop: stop.clone(),
        });
        let active = Arc::new(AtomicUsize::new(0));
        tracing::info!(path = %self.settings.path.display(), "control socket listening");
        while !stop.load(Ordering::Relaxed) {
            if !wait_readable(self.listener.as_raw_fd(), ACCEPT_TICK) {
                continue;
            }
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: do not spin on them.
                    tracing::warn!(error = %e, "control socket: accept failed");
                    std::thread::sleep(Duration::from_millis(ACCEPT_TICK as u64));
                    continue;
                }
            };
            if active.load(Ordering::Acquire) >= self.settings.max_connections {
                refuse_busy(stream, self.settings.max_connections);
                continue;
            }
            active.fetch_add(1, Ordering::AcqRel);
            let slot = Slot(active.clone());
            let shared = shared.clone();
            let spawned = std::thread::Builder::new()
                .name("loupe-control-conn".into())
                .spawn(move || {
                    let _slot = slot;
                    Connection::new(stream, &shared).serve();
                });
            if let Err(e) = spawned {
                // The closure (and its slot) was dropped: the count is right again.
                tracing::warn!(error = %e, "control socket: cannot start a connection thread");
            }
        }
        let still_ours = std::fs::symlink_metadata(&self.settings.path)
            .map(|meta| (meta.dev(), meta.ino()) == self.inode)
            .unwrap_or(false);
        if still_ours {
            let _ = std::fs::remove_file(&self.settings.path);
        }
        tracing::info!(path = %self.settings.path.display(), "control socket closed");
    }
}

/// Frees a connection slot when its thread ends, however it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What every connection thread needs.
struct Shared {
    settings: ServerSettings,
    gid: Option<u32>,
    calls: Sender<ControlCall>,
    stop: Arc<AtomicBool>,
}

fn refuse_busy(mut stream: UnixStream, max: usize) {
    // A fresh socket's send buffer is empty: one short line never blocks, and the
    // accept loop must not wait on a client in any case.
    let _ = stream.set_nonblocking(true);
    let reply = ReplyLine::error(
        None,
        ControlError::new(
            ErrorKind::Failed,
            format!("too many connections ({max} at most); try again later"),
        ),
    );
    let _ = stream.write_all(&reply_bytes(&reply));
    tracing::warn!(max, "control socket: too many connections, refused one");
}

fn reply_bytes(reply: &ReplyLine) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(reply).unwrap_or_else(|_| {
        // Serializing a Value tree cannot fail; keep a valid line regardless.
        br#"{"v":1,"ok":false,"error":{"kind":"failed","message":"reply not serializable"}}"#.to_vec()
    });
    bytes.push(b'\n');
    bytes
}

/// poll(2) for readability; true when readable (or hung up, or in error: a read then
/// tells which).
fn wait_readable(fd: RawFd, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    n > 0
}

/// "10 s", "1.5 s", "200 ms".
fn human_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{} s", d.as_secs())
    } else if d >= Duration::from_secs(1) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} ms", d.as_millis())
    }
}

// ---- credentials ----

/// The connected process's pid, uid and gid.
pub fn peer_cred(stream: &UnixStream) -> io::Result<PeerCred> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes and `len` is its size.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PeerCred {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// SO_PEERGROUPS (Linux 4.13): the peer's supplementary groups at connect time. Not
/// exported by the libc crate for every target; this is the asm-generic value.
#[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
const SO_PEERGROUPS: libc::c_int = 59;
#[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
const SO_PEERGROUPS: libc::c_int = 0x3d;

/// The connected process's supplementary groups (SO_PEERCRED has only its gid).
fn peer_groups(stream: &UnixStream) -> io::Result<Vec<u32>> {
    let mut count = 64usize;
    for _ in 0..4 {
        let mut groups = vec![0 as libc::gid_t; count];
        let mut len = (count * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `groups` has room for `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc == 0 {
            groups.truncate(len as usize / std::mem::size_of::<libc::gid_t>());
            return Ok(groups);
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::ERANGE) {
            return Err(error);
        }
        // `len` now holds the size needed.
        count = (len as usize / std::mem::size_of::<libc::gid_t>()).max(count * 2);
    }
    Err(io::Error::from_raw_os_error(libc::ERANGE))
}

/// Runs a `get*_r` lookup, growing the buffer on ERANGE. `call` returns the function's
/// error number and whether an entry was found.
fn with_lookup_buffer<T>(mut call: impl FnMut(&mut [u8]) -> (i32, Option<T>)) -> io::Result<Option<T>> {
    let mut size = 1024;
    loop {
        let mut buf = vec![0u8; size];
        match call(&mut buf) {
            (0, found) => return Ok(found),
            (libc::ERANGE, _) if size < (1 << 20) => size *= 4,
            (errno, _) => return Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

/// The gid of a group name (getgrnam_r).
pub fn lookup_group(group: &str) -> Result<u32, ServerError> {
    let name = CString::new(group).map_err(|_| ServerError::UnknownGroup { group: group.into() })?;
    let found = with_lookup_buffer(|buf| {
        // SAFETY: all-zero is a valid `group` (null pointers, zero gid).
        let mut entry: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; `buf` outlives it.
        let rc = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut entry,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        (rc, (!result.is_null()).then_some(entry.gr_gid))
    })
    .map_err(|source| ServerError::GroupLookup {
        group: group.into(),
        source,
    })?;
    found.ok_or_else(|| ServerError::UnknownGroup { group: group.into() })
}

/// The user's name and primary gid (getpwuid_r).
fn lookup_user(uid: u32) -> io::Result<Option<(CString, u32)>> {
    with_lookup_buffer(|buf| {
        // SAFETY: all-zero is a valid `passwd` (null pointers, zero ids).
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; `buf` outlives it.
        let rc = unsafe { libc::getpwuid_r(uid, &mut entry, buf.as_mut_ptr().cast(), buf.len(), &mut result) };
        let found = (!result.is_null() && !entry.pw_name.is_null()).then(|| {
            // SAFETY: getpwuid_r set pw_name to a NUL-terminated string inside `buf`.
            let name = unsafe { CStr::from_ptr(entry.pw_name) }.to_owned();
            (name, entry.pw_gid)
        });
        (rc, found)
    })
}

/// Whether the user (by name and primary gid) belongs to `gid` (getgrouplist).
fn user_in_group(name: &CStr, primary: u32, gid: u32) -> bool {
    let mut count: libc::c_int = 32;
    for _ in 0..8 {
        let mut groups = vec![0 as libc::gid_t; count.max(1) as usize];
        let mut n = count;
        // SAFETY: `groups` has room for `n` entries; the name is NUL-terminated.
        let rc = unsafe { libc::getgrouplist(name.as_ptr(), primary, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n.max(0) as usize);
            return groups.contains(&gid);
        }
        // Too small: `n` now holds the number needed.
        count = n.max(count.saturating_mul(2));
    }
    false
}

/// Whether this peer may use the socket; the refusal message otherwise. Members are
/// the peer's gid, its supplementary groups (`peer_groups`, from SO_PEERGROUPS), and
/// the groups its user belongs to (getgrouplist).
fn authorize(peer: &PeerCred, peer_groups: &[u32], group: Option<(&str, u32)>) -> Result<(), String> {
    if peer.uid == 0 {
        return Ok(());
    }
    let Some((group, gid)) = group else {
        return Err(format!("uid {} is not root (no control group is configured)", peer.uid));
    };
    if peer.gid == gid || peer_groups.contains(&gid) {
        return Ok(());
    }
    match lookup_user(peer.uid) {
        Ok(Some((name, primary))) if user_in_group(&name, primary, gid) => Ok(()),
        _ => Err(format!("uid {} is neither root nor in group {group}", peer.uid)),
    }
}

// ---- connections ----

/// Why a connection's read loop ended without a line.
enum ReadEnd {
    /// The client closed its end.
    Closed,
    /// Silent past the idle timeout.
    Idle,
    /// A line longer than MAX_REQUEST_BYTES.
    TooLarge,
    /// The server is stopping.
    Stopping,
    /// A socket error.
    Failed,
}

struct Connection<'a> {
    stream: UnixStream,
    shared: &'a Shared,
    /// Received bytes not yet split into lines; at most MAX_REQUEST_BYTES + 1.
    pending: Vec<u8>,
    /// How much of `pending` is known to hold no newline.
    scanned: usize,
    /// The client shut down its sending side.
    eof: bool,
}

impl<'a> Connection<'a> {
    fn new(stream: UnixStream, shared: &'a Shared) -> Connection<'a> {
        Connection {
            stream,
            shared,
            pending: Vec::new(),
            scanned: 0,
            eof: false,
        }
    }

    fn serve(mut self) {
        let shared = self.shared;
        let settings = &shared.settings;
        // Accepted sockets are blocking on Linux; say so anyway, and bound every wait.
        let ok = self.stream.set_nonblocking(false).is_ok()
            && self.stream.set_read_timeout(Some(TICK)).is_ok()
            && self
                .stream
                .set_write_timeout(Some(settings.idle_timeout.max(TICK)))
                .is_ok();
        if !ok {
            return;
        }
        let peer = match peer_cred(&self.stream) {
            Ok(peer) => peer,
            Err(e) => {
                tracing::warn!(error = %e, "control socket: cannot read the peer's credentials");
                return;
            }
        };
        let group = settings.group.as_deref().zip(shared.gid);
        // Old kernels lack SO_PEERGROUPS: then the user's groups from getgrouplist count.
        let supplementary = if group.is_some() {
            peer_groups(&self.stream).unwrap_or_default()
        } else {
            Vec::new()
        };
        if let Err(message) = authorize(&peer, &supplementary, group) {
            tracing::warn!(
                uid = peer.uid,
                gid = peer.gid,
                pid = peer.pid,
                "control socket: refused: {message}"
            );
            self.send(&ReplyLine::error(
                None,
                ControlError::new(ErrorKind::PermissionDenied, message),
            ));
            return;
        }
        loop {
            let line = match self.next_line() {
                Ok(line) => line,
                Err(ReadEnd::Idle) => {
                    let message = format!("no request within {}", human_duration(settings.idle_timeout));
                    self.send(&ReplyLine::error(None, ControlError::new(ErrorKind::Timeout, message)));
                    return;
                }
                Err(ReadEnd::TooLarge) => {
                    let message = format!("request line longer than {MAX_REQUEST_BYTES} bytes");
                    self.send(&ReplyLine::error(
                        None,
                        ControlError::new(ErrorKind::TooLarge, message.clone()),
                    ));
                    tracing::warn!(pid = peer.pid, uid = peer.uid, "control socket: {message}; closed");
                    return;
                }
                Err(ReadEnd::Closed | ReadEnd::Stopping | ReadEnd::Failed) => return,
            };
            let trimmed = line.trim_ascii();
            if trimmed.is_empty() {
                continue;
            }
            let keep_open = match parse_request(trimmed) {
                Err((id, error)) => self.send(&ReplyLine::error(id, error)),
                Ok(RequestLine {
                    id,
                    request:
                        Request::LogTail {
                            follow,
                            errors,
                            sni,
                            lines,
                            http,
                        },
                    ..
                }) => {
                    let log = if http { LogKind::Http } else { LogKind::Decryption };
                    self.log_tail(id, follow, RecordFilter { log, errors, sni }, lines)
                }
                Ok(RequestLine { id, request, .. }) => {
                    let reply = self.call(request, peer, id);
                    self.send(&reply)
                }
            };
            if !keep_open {
                return;
            }
        }
    }

    /// Writes one reply line; false when the client is gone.
    fn send(&mut self, reply: &ReplyLine) -> bool {
        self.stream.write_all(&reply_bytes(reply)).is_ok()
    }

    /// The next request line (without its newline), reading no more than
    /// MAX_REQUEST_BYTES + 1 bytes ahead.
    fn next_line(&mut self) -> Result<Vec<u8>, ReadEnd> {
        let idle = self.shared.settings.idle_timeout;
        let mut last_heard = Instant::now();
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            if let Some(rel) = self.pending[self.scanned..].iter().position(|&b| b == b'\n') {
                let nl = self.scanned + rel;
                let mut line: Vec<u8> = self.pending.drain(..=nl).collect();
                line.pop();
                self.scanned = 0;
                return Ok(line);
            }
            self.scanned = self.pending.len();
            if self.pending.len() > MAX_REQUEST_BYTES {
                return Err(ReadEnd::TooLarge);
            }
            if self.eof {
                // A last request without its newline still counts.
                return if self.pending.is_empty() {
                    Err(ReadEnd::Closed)
                } else {
                    self.scanned = 0;
                    Ok(std::mem::take(&mut self.pending))
                };
            }
            if self.shared.stop.load(Ordering::Relaxed) {
                return Err(ReadEnd::Stopping);
            }
            let room = (MAX_REQUEST_BYTES + 1 - self.pending.len()).min(READ_CHUNK);
            match self.stream.read(&mut chunk[..room]) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.pending.extend_from_slice(&chunk[..n]);
                    last_heard = Instant::now();
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    if last_heard.elapsed() >= idle {
                        return Err(ReadEnd::Idle);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(ReadEnd::Failed),
            }
        }
    }

    /// Hands a request to the control thread and waits for its answer.
    fn call(&self, request: Request, peer: PeerCred, id: Option<u64>) -> ReplyLine {
        let settings = &self.shared.settings;
        let (reply, answer) = bounded(16);
        let failed = |message: String| ReplyLine::error(id, ControlError::new(ErrorKind::Failed, message));
        if self.shared.calls.send(ControlCall { request, peer, reply }).is_err() {
            return failed("the control thread is not running".into());
        }
        let deadline = Instant::now() + settings.call_timeout;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now()).min(TICK);
            match answer.recv_timeout(wait) {
                Ok(Ok(result)) => return ReplyLine::ok(id, result),
                Ok(Err(error)) => return ReplyLine::error(id, error),
                Err(RecvTimeoutError::Disconnected) => {
                    return failed("the control thread dropped the request without answering".into())
                }
                Err(RecvTimeoutError::Timeout) => {
                    if Instant::now() >= deadline {
                        return failed(format!(
                            "no answer from the control thread within {}",
                            human_duration(settings.call_timeout)
                        ));
                    }
                    if self.shared.stop.load(Ordering::Relaxed) {
                        return failed("the daemon is stopping".into());
                    }
                }
            }
        }
    }

    /// Serves `log-tail`; false when the connection should close.
    fn log_tail(&mut self, id: Option<u64>, follow: bool, filter: RecordFilter, lines: usize) -> bool {
        let path = self.shared.settings.log_path(filter.log);
        let what = filter.log.describe();
        let mut follower = LogFollower::new(&path);
        let mut client_gone = false;
        let started = {
            let stream = &mut self.stream;
            follower.start(lines, &filter, |record| {
                client_gone = !send_record(stream, id, record);
                !client_gone
            })
        };
        if let Err(e) = started {
            let message = format!("cannot read {what} {}: {e}", path.display());
            return self.send(&ReplyLine::error(id, ControlError::new(ErrorKind::Failed, message)));
        }
        if client_gone {
            return false;
        }
        if !follow {
            return self.send(&ReplyLine::ok(id, Value::Null));
        }
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                self.send(&ReplyLine::ok(id, Value::Null));
                return false;
            }
            if self.hung_up(TICK) {
                return false;
            }
            let polled = {
                let stream = &mut self.stream;
                follower.poll(&filter, |record| {
                    client_gone = !send_record(stream, id, record);
                    !client_gone
                })
            };
            if client_gone {
                return false;
            }
            if let Err(e) = polled {
                // Transient (a rotation race, a permission change): say it, keep going.
                tracing::warn!(path = %path.display(), error = %e, "log-tail: cannot read {what}");
            }
        }
    }

    /// Waits up to `wait` for the client to hang up; bytes it sends meanwhile (it should
    /// send none while following) are discarded.
    fn hung_up(&mut self, wait: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.stream.as_raw_fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, wait.as_millis() as i32) };
        if n <= 0 {
            return false;
        }
        if pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLRDHUP | libc::POLLNVAL) != 0 {
            return true;
        }
        let mut scratch = [0u8; 4096];
        match self.stream.read(&mut scratch) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
            ),
        }
    }
}

fn send_record(stream: &mut UnixStream, id: Option<u64>, record: Value) -> bool {
    let mut reply = ReplyLine::ok(id, record);
    reply.more = true;
    stream.write_all(&reply_bytes(&reply)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(Duration::from_secs(10)), "10 s");
        assert_eq!(human_duration(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(human_duration(Duration::from_millis(200)), "200 ms");
    }

    #[test]
    fn root_is_served_and_strangers_are_told_why_not() {
        let root = PeerCred { pid: 1, uid: 0, gid: 0 };
        assert!(authorize(&root, &[], None).is_ok());
        let stranger = PeerCred {
            pid: 1,
            uid: 1234,
            gid: 1234,
        };
        let err = authorize(&stranger, &[4321], None).unwrap_err();
        assert!(err.contains("uid 1234"), "{err}");
        let err = authorize(&stranger, &[5, 6], Some(("loupe", 4321))).unwrap_err();
        assert_eq!(err, "uid 1234 is neither root nor in group loupe");
        assert!(authorize(&stranger, &[], Some(("loupe", 1234))).is_ok());
        assert!(authorize(&stranger, &[5, 4321], Some(("loupe", 4321))).is_ok());
    }

    #[test]
    fn groups_resolve_or_are_named_in_the_error() {
        assert_eq!(lookup_group("root").unwrap(), 0);
        let err = lookup_group("no-such-group-loupe").unwrap_err().to_string();
        assert!(err.contains("no-such-group-loupe"), "{err}");
        let err = lookup_group("nul\0inside").unwrap_err().to_string();
        assert!(err.contains("nul"), "{err}");
    }

    #[test]
    fn supplementary_groups_count() {
        // root's primary group is 0; getgrouplist always includes the primary group.
        let (name, primary) = lookup_user(0).unwrap().unwrap();
        assert!(user_in_group(&name, primary, primary));
        assert!(!user_in_group(&name, primary, 4_000_000_000));
    }

    #[test]
    fn log_tail_http_reads_eve_json_beside_the_decryption_log() {
        let dir = std::env::temp_dir().join(format!("loupe-eve-tail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let settings = ServerSettings {
            path: dir.join("control.sock"),
            log_file: dir.join("decryption.jsonl"),
            ..ServerSettings::default()
        };
        assert_eq!(settings.log_path(LogKind::Decryption), dir.join("decryption.jsonl"));
        assert_eq!(settings.log_path(LogKind::Http), dir.join("eve.json"));
        std::fs::write(
            dir.join("decryption.jsonl"),
            "{\"session_id\":1,\"sni\":\"shop.example\",\"outcome\":\"blocked\"}\n",
        )
        .unwrap();
        let event = |flow: u64, kind: &str, status: u16, blocked: bool| {
            format!(
                "{{\"flow_id\":{flow},\"event_type\":\"{kind}\",\"http\":{{\"hostname\":\"shop.example\",\
                 \"url\":\"/\",\"status\":{status}}},\"loupe\":{{\"blocked\":{blocked}}}}}\n"
            )
        };
        let eve = [
            event(10, "tls", 0, false),
            event(11, "http", 200, false),
            event(12, "http", 403, true),
        ]
        .concat();
        std::fs::write(dir.join("eve.json"), eve).unwrap();

        let server = ControlServer::bind(settings).unwrap();
        let (calls, _control_thread) = crossbeam_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let accept = server.spawn(calls, stop.clone()).unwrap();
        let tail = |errors: bool, http: bool| {
            let mut client = crate::client::ControlClient::connect(&dir.join("control.sock")).unwrap();
            let mut ids = Vec::new();
            let request = Request::LogTail {
                follow: false,
                errors,
                sni: Some("shop.example".into()),
                lines: 10,
                http,
            };
            client
                .stream(request, |record| {
                    let id = record.get("flow_id").or_else(|| record.get("session_id"));
                    ids.push(id.and_then(Value::as_u64).unwrap());
                    true
                })
                .unwrap();
            ids
        };
        assert_eq!(tail(false, true), vec![11, 12]);
        assert_eq!(tail(true, true), vec![12]);
        assert_eq!(tail(true, false), vec![1]);
        stop.store(true, Ordering::Relaxed);
        accept.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bind_refuses_what_it_must_not_replace() {
        let dir = std::env::temp_dir().join(format!("loupe-bind-{}", std::process::id()));
        let path = dir.join("sub").join("control.sock");
        let settings = ServerSettings {
            path: path.clone(),
            ..ServerSettings::default()
        };
        // Creates the directory, binds, mode 0660.
        let first = ControlServer::bind(settings.clone()).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        assert_eq!(
            std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777,
            0o755
        );
        // Someone listens: refused.
        let err = ControlServer::bind(settings.clone()).unwrap_err();
        assert!(matches!(err, ServerError::InUse { .. }), "{err}");
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
        // Stale (the listener is gone): replaced.
        drop(first);
        let second = ControlServer::bind(settings.clone()).unwrap();
        drop(second);
        // Not a socket: refused, left alone.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "keep me").unwrap();
        let err = ControlServer::bind(settings.clone()).unwrap_err();
        assert!(matches!(err, ServerError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
        // Unknown group: named, nothing bound.
        std::fs::remove_file(&path).unwrap();
        let err = ControlServer::bind(ServerSettings {
            group: Some("no-such-group-loupe".into()),
            ..settings.clone()
        })
        .unwrap_err();
        assert!(err.to_string().contains("no-such-group-loupe"), "{err}");
        assert!(!path.exists());
        // A directory anyone may rename entries in: refused, named with its mode; with the
        // sticky bit (like /tmp) accepted.
        let parent = path.parent().unwrap();
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ControlServer::bind(settings.clone()).unwrap_err();
        assert!(
            matches!(err, ServerError::DirWorldWritable { mode: 0o777, .. }),
            "{err}"
        );
        assert!(err.to_string().contains(&*parent.to_string_lossy()), "{err}");
        assert!(!path.exists());
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o1777)).unwrap();
        drop(ControlServer::bind(settings).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
