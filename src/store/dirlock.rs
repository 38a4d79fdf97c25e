//! Exclusive locks on directories, for the local backend's writes.
//!
//! A write of `a/b/c` locks the directory `a/b` itself: an exclusive
//! advisory `flock` on an open handle of it. A lock belongs to the
//! directory's inode, not to a path, so every store reaches the same lock
//! whichever ancestor it is rooted at (the S3 Vectors service opens the
//! root and each index's directory as stores of their own), and there is
//! no lock file to list, to wipe with a prefix or to leave behind. The
//! local backend never removes a directory, so the inode a writer locks is
//! the one the next writer finds. `flock` locks belong to an open file
//! description, so two threads of one process exclude each other as two
//! processes do; a process that dies drops its locks with its descriptors.
//!
//! A process can also stop while it holds one (Ctrl-Z, SIGSTOP, a frozen
//! container). So a lock is waited for only up to a timeout, and the error
//! then names the holder when the system says who it is (Linux:
//! `/proc/locks`), and whether it is stopped, so a person can resume it.

use std::fs::File;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{Result, StoreError};

/// An exclusive lock on one directory, released when dropped.
pub(crate) struct DirLock {
    dir: File,
}

/// Polling starts this short, so an uncontended handover is quick...
const FIRST_PAUSE: Duration = Duration::from_millis(1);
/// ...and backs off to this, so a long wait costs little.
const LONGEST_PAUSE: Duration = Duration::from_millis(25);

impl DirLock {
    /// Locks `dir` for a write of `key`, waiting up to `timeout` for
    /// another holder to let go. `Ok(None)` if `dir` does not exist.
    pub(crate) fn acquire(key: &str, dir: &Path, timeout: Duration) -> Result<Option<DirLock>> {
        let handle = match File::open(dir) {
            Ok(f) => f,
            // NotADirectory: a component of `dir` is a file, so no key
            // under it exists either.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(lock_err(key, dir, e)),
        };
        let deadline = Instant::now() + timeout;
        let mut pause = FIRST_PAUSE;
        loop {
            match handle.try_lock() {
                Ok(()) => return Ok(Some(DirLock { dir: handle })),
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => return Err(lock_err(key, dir, e)),
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(StoreError::other(
                    key,
                    format!(
                        "timed out after {} waiting for the lock of directory {} (a write \
                         holds it while it checks and renames): held by {}; \
                         {} sets how long local writes wait",
                        humantime::format_duration(timeout),
                        dir.display(),
                        holder(&handle),
                        super::local::LOCK_TIMEOUT_ENV,
                    ),
                ));
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(LONGEST_PAUSE);
        }
    }

    /// fsyncs the directory, making a rename into it durable.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.dir.sync_all()
    }
}

fn lock_err(key: &str, dir: &Path, e: io::Error) -> StoreError {
    StoreError::other(key, format!("cannot lock directory {}: {e}", dir.display()))
}

/// Who holds the lock on `dir`, as well as the system can say.
fn holder(dir: &File) -> String {
    match holder_pid(dir) {
        Some(pid) if pid == std::process::id() => "another write in this process".into(),
        Some(pid) => describe_process(pid),
        None => "another process or thread (the system does not say which)".into(),
    }
}

/// The process holding a `flock` on `dir`'s inode, from `/proc/locks`
/// (Linux; elsewhere, and for a holder in another PID namespace, `None`).
/// A line reads `1: FLOCK  ADVISORY  WRITE 2557 fd:01:1835042 0 EOF`;
/// waiters have `->` after the ordinal and are skipped.
#[cfg(unix)]
fn holder_pid(dir: &File) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let ino = dir.metadata().ok()?.ino().to_string();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (kind, pid, id) = (f.get(1)?, f.get(4)?, f.get(5)?);
        let held_here = *kind == "FLOCK" && id.rsplit(':').next() == Some(ino.as_str());
        held_here
            .then(|| pid.parse().ok())
            .flatten()
            .filter(|&p| p > 0)
    })
}

#[cfg(not(unix))]
fn holder_pid(_dir: &File) -> Option<u32> {
    None
}

/// `process 1234 (shoal), which is stopped ...`, from `/proc/<pid>/stat`.
fn describe_process(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // `1234 (comm) S ...`: the name may hold spaces and parentheses.
    let name = stat
        .find('(')
        .zip(stat.rfind(')'))
        .map(|(a, b)| stat[a + 1..b].to_string());
    let state = stat
        .rfind(')')
        .and_then(|b| stat[b + 1..].split_whitespace().next());
    let who = match name {
        Some(n) => format!("process {pid} ({n})"),
        None => format!("process {pid}"),
    };
    match state {
        Some("T") | Some("t") => format!(
            "{who}, which is stopped (Ctrl-Z or SIGSTOP): resume it (`fg`, or `kill -CONT {pid}`) \
             or end it"
        ),
        Some(_) => format!("{who}, which is running"),
        None => who,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_held_past_the_timeout_fails_naming_the_key_and_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = File::open(dir.path()).unwrap();
        held.lock().unwrap();
        let e = DirLock::acquire("p/manifest.json", dir.path(), Duration::from_millis(50))
            .err()
            .expect("the lock is held");
        let msg = e.to_string();
        assert!(msg.contains("p/manifest.json"), "{msg}");
        assert!(msg.contains("timed out after 50ms"), "{msg}");
        if cfg!(target_os = "linux") {
            assert!(msg.contains("another write in this process"), "{msg}");
        }
        drop(held);
        let lock = DirLock::acquire("p/manifest.json", dir.path(), Duration::from_millis(50));
        assert!(lock.unwrap().is_some(), "free once the holder lets go");
    }

    #[test]
    fn a_missing_directory_has_no_lock_to_take() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("never-written");
        let lock = DirLock::acquire("never-written/k", &missing, Duration::ZERO).unwrap();
        assert!(lock.is_none());
    }
}
