//! Reopening an append-only log file in place, for renaming log rotation (logrotate
//! renames `eve.json` to `eve.json.1`, then tells loupe with `loupectl log reopen` or
//! SIGHUP): the decryption log, the EVE log and the key log share this step.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Whether `path` no longer names `file`: log rotation renamed or removed it. One
/// fstat(2) and one stat(2). A file or path that cannot be examined (other than the path
/// being gone) counts as not renamed: no reopening at every check of a failing disk.
pub fn renamed_away(file: &File, path: &Path) -> bool {
    let Ok(open) = file.metadata() else {
        return false;
    };
    match std::fs::metadata(path) {
        Ok(on_disk) => on_disk.dev() != open.dev() || on_disk.ino() != open.ino(),
        Err(error) => error.kind() == io::ErrorKind::NotFound,
    }
}

/// Makes `file`'s descriptor refer to `new` (the same path opened again, so a fresh file
/// when the old one was renamed away). `file` stays the same `File` value, so it can be
/// shared (`Arc`) by writers on other threads without a lock on their write path:
/// dup2(2) swaps the open file description behind the descriptor number in one atomic
/// step, so a write running on another thread lands whole in the old file or whole in
/// the new one, never split or lost. `new`'s own descriptor is closed when it drops.
pub fn replace_open_file(file: &File, new: File) -> io::Result<()> {
    loop {
        // SAFETY: both descriptors are open and owned by `File`s that outlive the call;
        // dup2 closes the old file description behind `file`'s number and puts a
        // duplicate of `new`'s there, which `file` keeps owning.
        let rc = unsafe { libc::dup2(new.as_raw_fd(), file.as_raw_fd()) };
        if rc >= 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        // EINTR, or Linux's EBUSY while another thread's open(2) races for the number.
        if !matches!(error.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) {
            return Err(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;

    fn open_append(path: &std::path::Path) -> File {
        OpenOptions::new().append(true).create(true).open(path).unwrap()
    }

    /// Writers keep appending whole lines from several threads while the file is renamed
    /// and reopened over and over: every line is in exactly one of the files, whole.
    #[test]
    fn a_rename_then_reopen_loses_and_splits_no_line() {
        let dir = std::env::temp_dir().join(format!("loupe-reopen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log.jsonl");
        let file = Arc::new(open_append(&path));
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..3)
            .map(|writer| {
                let file = Arc::clone(&file);
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut written = 0u64;
                    while !stop.load(Ordering::Relaxed) || written < 1000 {
                        let line = format!(
                            "{{\"writer\":{writer},\"n\":{written},\"pad\":\"{}\"}}\n",
                            "x".repeat(200)
                        );
                        (&*file).write_all(line.as_bytes()).unwrap();
                        written += 1;
                    }
                    written
                })
            })
            .collect();
        for rotation in 1..=20 {
            std::thread::sleep(std::time::Duration::from_millis(2));
            std::fs::rename(&path, dir.join(format!("log.jsonl.{rotation}"))).unwrap();
            replace_open_file(&file, open_append(&path)).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let written: Vec<u64> = writers.into_iter().map(|w| w.join().unwrap()).collect();

        let mut seen = vec![Vec::new(); written.len()];
        let mut files_with_lines = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            assert!(text.is_empty() || text.ends_with('\n'), "a file ends inside a line");
            files_with_lines += usize::from(!text.is_empty());
            for line in text.lines() {
                let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
                seen[value["writer"].as_u64().unwrap() as usize].push(value["n"].as_u64().unwrap());
            }
        }
        for (writer, mut numbers) in seen.into_iter().enumerate() {
            numbers.sort_unstable();
            let expected: Vec<u64> = (0..written[writer]).collect();
            assert!(numbers == expected, "writer {writer}: lines lost or written twice");
        }
        assert!(files_with_lines > 1, "the writes never reached a reopened file");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
