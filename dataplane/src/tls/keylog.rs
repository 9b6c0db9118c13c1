//! The NSS key log (`SSLKEYLOGFILE` format) of decrypted sessions whose rule exports
//! `keylog`: with it, Wireshark and tshark decrypt a `loupectl capture` of the same
//! sessions (`tshark -o tls.keylog_file:keys.log -r capture.pcap`).
//!
//! BoringSSL hands each secret as one line: `CLIENT_RANDOM <client random> <master secret>`
//! for TLS 1.2, and for TLS 1.3 `CLIENT_HANDSHAKE_TRAFFIC_SECRET`,
//! `SERVER_HANDSHAKE_TRAFFIC_SECRET`, `CLIENT_TRAFFIC_SECRET_0`, `SERVER_TRAFFIC_SECRET_0`
//! and `EXPORTER_SECRET` lines, each naming the connection by its client random (hex).
//!
//! Opt-in per connection on shared contexts: [`install`] sets a key log callback on a
//! context once (every profile's contexts may carry it); the callback writes a line only
//! for a connection whose `Ssl` was given a log with [`enable`] (held in the `Ssl`'s
//! ex_data, dropped with it). Connections not enabled cost one ex_data lookup per secret.
//!
//! The file ([`KeyLog`]) is opened once, `O_APPEND`, mode 0600 (its directory, when loupe
//! creates it, 0700); every line is one `write(2)` of the line and its newline, so lines
//! of concurrent workers never interleave. A write error is counted and logged (the first
//! one as a warning), never raised into the handshake.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use boring::error::ErrorStack;
use boring::ex_data::Index;
use boring::ssl::{Ssl, SslContextBuilder, SslRef};

/// An open key log file, shared by every worker (`Arc<KeyLog>`).
#[derive(Debug)]
pub struct KeyLog {
    path: PathBuf,
    file: File,
    lines: AtomicU64,
    errors: AtomicU64,
}

impl KeyLog {
    /// Opens `path` for appending (lines already there are kept), creating it mode 0600,
    /// and its missing directories mode 0700. An existing file is set to 0600. A symbolic
    /// link at `path` is refused.
    pub fn open(path: &Path) -> io::Result<KeyLog> {
        let context =
            |what: &str, err: io::Error| io::Error::new(err.kind(), format!("{what} {}: {err}", path.display()));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| context("creating the directory of", e))?;
            }
        }
        let file = Self::open_file(path)?;
        Ok(KeyLog {
            path: path.to_path_buf(),
            file,
            lines: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        })
    }

    /// `path` for appending, mode 0600, never through a symbolic link.
    fn open_file(path: &Path) -> io::Result<File> {
        let context =
            |what: &str, err: io::Error| io::Error::new(err.kind(), format!("{what} {}: {err}", path.display()));
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| context("opening the key log", e))?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| context("setting mode 0600 on", e))?;
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the path again (a new file, mode 0600, when rotation renamed the old one
    /// away) and writes there from now on: see [`crate::reopen::replace_open_file`].
    pub fn reopen(&self) -> io::Result<()> {
        crate::reopen::replace_open_file(&self.file, Self::open_file(&self.path)?)
    }

    /// Appends `line` and a newline in one write.
    pub fn write_line(&self, line: &str) {
        let mut stack = [0u8; 256];
        let mut heap;
        let record: &[u8] = if line.len() < stack.len() {
            stack[..line.len()].copy_from_slice(line.as_bytes());
            stack[line.len()] = b'\n';
            &stack[..=line.len()]
        } else {
            heap = Vec::with_capacity(line.len() + 1);
            heap.extend_from_slice(line.as_bytes());
            heap.push(b'\n');
            &heap
        };
        match (&self.file).write_all(record) {
            Ok(()) => {
                self.lines.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                if self.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(file = %self.path.display(), %err, "key log: a line could not be written (later errors are only counted)");
                } else {
                    tracing::debug!(file = %self.path.display(), %err, "key log: a line could not be written");
                }
            }
        }
    }

    /// Lines written.
    pub fn lines(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }

    /// Lines lost to write errors.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

static KEYLOG: OnceLock<Index<Ssl, Arc<KeyLog>>> = OnceLock::new();

fn index() -> Result<Index<Ssl, Arc<KeyLog>>, ErrorStack> {
    if let Some(index) = KEYLOG.get() {
        return Ok(*index);
    }
    let fresh = Ssl::new_ex_index::<Arc<KeyLog>>()?;
    // Two threads racing here waste one index slot; both then use the winner's.
    Ok(*KEYLOG.get_or_init(|| fresh))
}

/// Sets the key log callback on a context: connections of it that were [`enable`]d write
/// their secrets to their log; the others write nothing. Replaces any key log callback
/// set before.
pub fn install(builder: &mut SslContextBuilder) -> Result<(), ErrorStack> {
    let index = index()?;
    builder.set_keylog_callback(move |ssl, line| {
        if let Some(log) = ssl.ex_data(index) {
            log.write_line(line);
        }
    });
    Ok(())
}

/// Makes one connection write its secrets to `log`. Call before its handshake starts, on
/// an `Ssl` of a context that went through [`install`].
pub fn enable(ssl: &mut SslRef, log: Arc<KeyLog>) -> Result<(), ErrorStack> {
    ssl.set_ex_data(index()?, log);
    Ok(())
}

/// Whether [`enable`] was called on this connection.
pub fn is_enabled(ssl: &SslRef) -> bool {
    index().is_ok_and(|index| ssl.ex_data(index).is_some())
}

/// A key log [`shared`] opened, and its path.
type OpenKeyLog = (PathBuf, Arc<KeyLog>);

fn open_key_logs() -> std::sync::MutexGuard<'static, Vec<OpenKeyLog>> {
    static OPEN: OnceLock<std::sync::Mutex<Vec<OpenKeyLog>>> = OnceLock::new();
    OPEN.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reopens the key logs [`shared`] opened (log rotation): all of them, or with
/// `only_renamed` those whose file was renamed away; each one's path and the outcome.
pub fn reopen_shared(only_renamed: bool) -> Vec<(PathBuf, io::Result<()>)> {
    open_key_logs()
        .iter()
        .filter(|(path, log)| !only_renamed || crate::reopen::renamed_away(&log.file, path))
        .map(|(path, log)| (path.clone(), log.reopen()))
        .collect()
}

/// The key log at `path`, opened once per path for the life of the process: every policy
/// snapshot (reloads included) shares it, so its lines never interleave with a second
/// handle's and a reload does not reopen the file.
pub fn shared(path: &Path) -> io::Result<Arc<KeyLog>> {
    let mut open = open_key_logs();
    if let Some((_, log)) = open.iter().find(|(p, _)| p == path) {
        return Ok(Arc::clone(log));
    }
    let log = Arc::new(KeyLog::open(path)?);
    open.push((path.to_path_buf(), Arc::clone(&log)));
    Ok(log)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use boring::asn1::Asn1Time;
    use boring::bn::BigNum;
    use boring::ec::{EcGroup, EcKey};
    use boring::hash::MessageDigest;
    use boring::nid::Nid;
    use boring::pkey::{PKey, Private};
    use boring::ssl::{SslContext, SslMethod, SslVerifyMode, SslVersion};
    use boring::x509::{X509Name, X509};

    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("loupe-keylog-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn self_signed() -> (X509, PKey<Private>) {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let mut name = X509Name::builder().unwrap();
        name.append_entry_by_text("CN", "keylog.test").unwrap();
        let name = name.build();
        let mut cert = X509::builder().unwrap();
        cert.set_version(2).unwrap();
        cert.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
            .unwrap();
        cert.set_subject_name(&name).unwrap();
        cert.set_issuer_name(&name).unwrap();
        cert.set_pubkey(&key).unwrap();
        cert.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
        cert.set_not_after(&Asn1Time::days_from_now(1).unwrap()).unwrap();
        cert.sign(&key, MessageDigest::sha256()).unwrap();
        (cert.build(), key)
    }

    /// Contexts of both ends, each with the callback installed (as loupe's shared contexts).
    fn contexts(max: SslVersion) -> (SslContext, SslContext) {
        let (cert, key) = self_signed();
        let mut server = SslContext::builder(SslMethod::tls()).unwrap();
        server.set_certificate(&cert).unwrap();
        server.set_private_key(&key).unwrap();
        install(&mut server).unwrap();
        let mut client = SslContext::builder(SslMethod::tls()).unwrap();
        client.set_verify(SslVerifyMode::NONE);
        client.set_max_proto_version(Some(max)).unwrap();
        install(&mut client).unwrap();
        (server.build(), client.build())
    }

    /// One handshake and one byte each way over a socket pair; `log_client` and
    /// `log_server` enable the key log on that end. Returns the client random.
    fn handshake(
        server: &SslContext,
        client: &SslContext,
        log_client: Option<Arc<KeyLog>>,
        log_server: Option<Arc<KeyLog>>,
    ) -> Vec<u8> {
        let (a, b) = UnixStream::pair().unwrap();
        let mut server_ssl = Ssl::new(server).unwrap();
        if let Some(log) = log_server {
            enable(&mut server_ssl, log).unwrap();
        }
        let server_thread = std::thread::spawn(move || {
            let mut stream = server_ssl.accept(b).expect("server handshake");
            let mut byte = [0u8];
            stream.read_exact(&mut byte).unwrap();
            stream.write_all(&byte).unwrap();
        });
        let mut client_ssl = Ssl::new(client).unwrap();
        assert!(!is_enabled(&client_ssl));
        if let Some(log) = log_client {
            enable(&mut client_ssl, log).unwrap();
            assert!(is_enabled(&client_ssl));
        }
        let mut stream = client_ssl.connect(a).expect("client handshake");
        stream.write_all(b"x").unwrap();
        let mut byte = [0u8];
        stream.read_exact(&mut byte).unwrap();
        server_thread.join().unwrap();
        let mut random = vec![0u8; 32];
        let len = stream.ssl().client_random(&mut random);
        random.truncate(len);
        random
    }

    /// (label, client random) of each line; checks the shape `LABEL <hex> <hex>`.
    fn lines(path: &Path) -> Vec<(String, String)> {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.is_empty() || text.ends_with('\n'));
        text.lines()
            .map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                assert_eq!(fields.len(), 3, "{line}");
                assert_eq!(fields[1].len(), 64, "{line}");
                assert!(fields[2].len() >= 64, "{line}");
                assert!(fields[1..].iter().all(|f| f.bytes().all(|b| b.is_ascii_hexdigit())));
                (fields[0].to_string(), fields[1].to_ascii_lowercase())
            })
            .collect()
    }

    #[test]
    fn tls13_secrets_of_enabled_connections_only() {
        let dir = temp_dir("tls13");
        let path = dir.join("export/keys.log");
        let log = Arc::new(KeyLog::open(&path).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(mode(&dir), 0o700);

        let (server, client) = contexts(SslVersion::TLS1_3);
        // Not enabled on either end: nothing written, though both contexts have the callback.
        handshake(&server, &client, None, None);
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        assert_eq!(log.lines(), 0);

        // Enabled on the client end.
        let random = handshake(&server, &client, Some(Arc::clone(&log)), None);
        let written = lines(&path);
        let labels: BTreeSet<&str> = written.iter().map(|(label, _)| label.as_str()).collect();
        for label in [
            "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
            "SERVER_HANDSHAKE_TRAFFIC_SECRET",
            "CLIENT_TRAFFIC_SECRET_0",
            "SERVER_TRAFFIC_SECRET_0",
        ] {
            assert!(labels.contains(label), "{label} missing: {written:?}");
        }
        assert!(written.iter().all(|(_, r)| *r == hex::encode(&random)), "{written:?}");
        assert_eq!(log.lines(), written.len() as u64);
        assert_eq!(log.errors(), 0);

        // Enabled on the server end of another connection: its lines follow, appended.
        let before = written.len();
        let random2 = handshake(&server, &client, None, Some(Arc::clone(&log)));
        let written = lines(&path);
        assert!(written.len() > before);
        assert!(written[before..].iter().all(|(_, r)| *r == hex::encode(&random2)));
        assert_ne!(random, random2);

        // Reopening appends and keeps the mode even if someone loosened it.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let reopened = KeyLog::open(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        reopened.write_line("CLIENT_RANDOM 00 11");
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .ends_with("\nCLIENT_RANDOM 00 11\n"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tls12_writes_client_random_lines() {
        let dir = temp_dir("tls12");
        let path = dir.join("keys.log");
        let log = Arc::new(KeyLog::open(&path).unwrap());
        let (server, client) = contexts(SslVersion::TLS1_2);
        let random = handshake(&server, &client, Some(Arc::clone(&log)), None);
        let written = lines(&path);
        assert_eq!(written, vec![("CLIENT_RANDOM".to_string(), hex::encode(&random))]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Ciphertext in the order it passed: (sent by the client, bytes).
    type Wire = Arc<std::sync::Mutex<Vec<(bool, Vec<u8>)>>>;

    /// The client's socket, recording the ciphertext each way in order.
    #[derive(Debug)]
    struct Recording {
        socket: UnixStream,
        log: Wire,
    }

    impl Read for Recording {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.socket.read(buf)?;
            self.log.lock().unwrap().push((false, buf[..n].to_vec()));
            Ok(n)
        }
    }

    impl Write for Recording {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = self.socket.write(buf)?;
            self.log.lock().unwrap().push((true, buf[..n].to_vec()));
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.socket.flush()
        }
    }

    /// The key log as Wireshark uses it: a TLS 1.3 session's ciphertext, written to a pcap
    /// on port 443, is decrypted by tshark with the key log and shows its HTTP request.
    #[test]
    fn tshark_decrypts_a_capture_with_the_key_log() {
        use crate::capture::{CapturedFrame, PcapWriter};
        use crate::inspect::export::SyntheticFlow;

        let dir = temp_dir("tshark");
        let keys = dir.join("keys.log");
        let log = Arc::new(KeyLog::open(&keys).unwrap());
        let (server, client) = contexts(SslVersion::TLS1_3);
        let (a, b) = UnixStream::pair().unwrap();
        let server_ssl = Ssl::new(&server).unwrap();
        let server_thread = std::thread::spawn(move || {
            let mut stream = server_ssl.accept(b).expect("server handshake");
            let mut request = Vec::new();
            while !request.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8];
                stream.read_exact(&mut byte).unwrap();
                request.push(byte[0]);
            }
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .unwrap();
            stream.shutdown().unwrap();
        });
        let wire: Wire = Arc::default();
        let mut client_ssl = Ssl::new(&client).unwrap();
        enable(&mut client_ssl, Arc::clone(&log)).unwrap();
        let recording = Recording {
            socket: a,
            log: Arc::clone(&wire),
        };
        let mut stream = client_ssl.connect(recording).expect("client handshake");
        stream
            .write_all(b"GET /only-with-the-key-log HTTP/1.1\r\nHost: keylog.test\r\n\r\n")
            .unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        assert!(response.ends_with(b"ok"), "{response:?}");
        server_thread.join().unwrap();

        let mut flow = SyntheticFlow::new("198.18.0.1:40000".parse().unwrap(), "198.18.0.2:443".parse().unwrap());
        let mut packets = Vec::new();
        let at = std::time::SystemTime::now();
        for (from_client, bytes) in wire.lock().unwrap().iter() {
            if *from_client {
                flow.client_data(at, bytes, &mut packets);
            } else {
                flow.server_data(at, bytes, &mut packets);
            }
        }
        flow.close(at, &mut packets);
        let pcap_path = dir.join("capture.pcap");
        let mut pcap = PcapWriter::new(File::create(&pcap_path).unwrap(), 1 << 20).unwrap();
        for packet in &packets {
            assert!(pcap.write(&CapturedFrame::copy(&packet.frame, packet.at)).unwrap());
        }
        pcap.flush().unwrap();

        let tshark = |extra: &[&str]| {
            let output = std::process::Command::new("tshark")
                .arg("-r")
                .arg(&pcap_path)
                .args(extra)
                .args(["-Y", "http.request", "-T", "fields", "-e", "http.request.uri"])
                .output()
                .expect("tshark runs");
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            String::from_utf8(output.stdout).unwrap()
        };
        assert_eq!(tshark(&[]), "", "without the key log the request stays encrypted");
        let option = format!("tls.keylog_file:{}", keys.display());
        assert_eq!(tshark(&["-o", &option]), "/only-with-the-key-log\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn long_lines_and_refused_paths() {
        let dir = temp_dir("misc");
        let path = dir.join("keys.log");
        let log = KeyLog::open(&path).unwrap();
        let long = "X".repeat(600);
        log.write_line(&long);
        log.write_line("short");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{long}\nshort\n"));
        // A symbolic link is not followed.
        let link = dir.join("link.log");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let err = KeyLog::open(&link).unwrap_err();
        assert!(err.to_string().contains("link.log"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
