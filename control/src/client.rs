//! A small blocking client for the control socket (loupectl and tests use it).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::protocol::{ControlError, ErrorKind, ReplyLine, Request, RequestLine, PROTOCOL_VERSION};

/// How long `call` waits for a reply (the daemon gives up on its workers after 30 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a call did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {}: {} ({})", path.display(), os_message(source), connect_hint(source))]
    Connect { path: PathBuf, source: io::Error },
    #[error("control socket: {}", os_message(.0))]
    Io(#[from] io::Error),
    #[error("the daemon closed the connection without a reply")]
    Closed,
    #[error("the daemon's reply is not understood: {0}")]
    Protocol(String),
    /// The daemon answered with an error.
    #[error("{0}")]
    Refused(ControlError),
}

/// An io::Error's text without the " (os error N)" suffix.
fn os_message(error: &io::Error) -> String {
    let text = error.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_string(),
        _ => text,
    }
}

fn connect_hint(error: &io::Error) -> &'static str {
    match error.kind() {
        io::ErrorKind::PermissionDenied => "run as root or as a member of the control group",
        _ => "is loupe running?",
    }
}

/// One connection to the daemon.
#[derive(Debug)]
pub struct ControlClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl ControlClient {
    pub fn connect(path: &Path) -> Result<ControlClient, ClientError> {
        let connect_error = |source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(connect_error)?;
        let writer = stream.try_clone().map_err(connect_error)?;
        Ok(ControlClient {
            reader: BufReader::new(stream),
            writer,
            next_id: 1,
        })
    }

    /// One request, one reply: the result, or [`ClientError::Refused`] with the
    /// daemon's error. A streamed answer is collected into an array.
    pub fn call(&mut self, request: Request) -> Result<Value, ClientError> {
        self.reader.get_ref().set_read_timeout(Some(CALL_TIMEOUT))?;
        let id = self.send(request)?;
        let mut streamed = Vec::new();
        loop {
            let reply = self.receive(id)?;
            let result = reply.result.unwrap_or(Value::Null);
            if !reply.more {
                if streamed.is_empty() {
                    return Ok(result);
                }
                if !result.is_null() {
                    streamed.push(result);
                }
                return Ok(Value::Array(streamed));
            }
            streamed.push(result);
        }
    }

    /// A streaming verb (`log-tail`): `each` gets every result until the daemon ends
    /// the stream or `each` returns false. No read timeout: a follower waits for as
    /// long as the log is quiet.
    pub fn stream(&mut self, request: Request, mut each: impl FnMut(Value) -> bool) -> Result<(), ClientError> {
        self.reader.get_ref().set_read_timeout(None)?;
        let id = self.send(request)?;
        loop {
            let reply = self.receive(id)?;
            let wants_more = match reply.result {
                Some(result) if !result.is_null() => each(result),
                _ => true,
            };
            if !wants_more || !reply.more {
                return Ok(());
            }
        }
    }

    fn send(&mut self, request: Request) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let line = RequestLine {
            v: PROTOCOL_VERSION,
            id: Some(id),
            request,
        };
        let mut bytes = serde_json::to_vec(&line).map_err(|e| ClientError::Protocol(e.to_string()))?;
        bytes.push(b'\n');
        match self.writer.write_all(&bytes) {
            Ok(()) => Ok(id),
            // The daemon may have refused us and closed before reading: its reply (the
            // reason) is still waiting to be read.
            Err(e) if matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset) => Ok(id),
            Err(e) => Err(e.into()),
        }
    }

    /// The next reply line; its error as `Refused`.
    fn receive(&mut self, id: u64) -> Result<ReplyLine, ClientError> {
        let mut line = Vec::new();
        let n = self.reader.read_until(b'\n', &mut line).map_err(|e| {
            if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
                ClientError::Protocol("no reply within 60 s".into())
            } else {
                e.into()
            }
        })?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Err(ClientError::Closed);
        }
        let reply: ReplyLine = serde_json::from_slice(&line).map_err(|e| ClientError::Protocol(format!("{e}")))?;
        // Replies without an id (a refusal before any request was read) are for us too.
        if reply.id.is_some_and(|got| got != id) {
            return Err(ClientError::Protocol(format!(
                "reply for request {} while waiting for {id}",
                reply.id.unwrap_or_default()
            )));
        }
        if !reply.ok {
            let error = reply
                .error
                .unwrap_or_else(|| ControlError::new(ErrorKind::Failed, "the daemon failed without saying why"));
            return Err(ClientError::Refused(error));
        }
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors_name_the_path_and_a_hint() {
        let err = ControlClient::connect(Path::new("/nonexistent/loupe/control.sock")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot connect to /nonexistent/loupe/control.sock: No such file or directory (is loupe running?)"
        );
    }
}
