//! Local-directory backend: the embedded default, so shoal runs with no server.
//!
//! Key `a/b/c` is the file `<root>/a/b/c`. The guarantees match S3's:
//!
//! - **No torn reads.** Every write goes to a temp file under
//!   `<root>/.shoal-tmp/`, is fsynced, then renamed over the target (rename is
//!   atomic on POSIX), and the directory is fsynced. A reader that opened the
//!   old file keeps reading the old bytes.
//! - **Atomic conditional writes across threads, processes and roots.** A
//!   write holds an exclusive lock on the directory that holds the key
//!   (`store::dirlock`) while it checks the precondition and renames
//!   its staged temp file in. The lock is the directory's inode, so stores
//!   rooted at different ancestors of one file (the S3 Vectors service's
//!   root and an index's directory) exclude each other, and there are no
//!   lock files to list or delete. A lock is waited for up to
//!   [`DEFAULT_LOCK_TIMEOUT`] (`SHOAL_LOCAL_LOCK_TIMEOUT_MS`); past it the
//!   write fails naming the key and the holder (a process stopped inside a
//!   write, say). Reads take no lock: rename makes them safe.
//! - **Stable ETags.** An ETag is the xxh3-128 of the bytes, so it survives
//!   restarts; the price is that `head` and `list` read the files to hash
//!   them (list is only used by GC and tools, never on the query path).
//!
//! Key components starting with `.shoal-` are reserved, at every depth (a
//! store rooted in a subdirectory keeps its temp files there), and never
//! listed. Temp files left by a crash mid-write are harmless. Directories
//! of earlier versions may hold `.shoal-locks/` (the lock files of 1,024
//! stripes per store root, before issue 28 F12); nothing uses them now.

use std::fs::{self, File};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::dirlock::DirLock;
use super::{
    content_etag, validate_key, ByteRange, Conditional, ETag, GetResult, ObjectMeta, ObjectStore,
    Result, StoreError,
};

const TMP_DIR: &str = ".shoal-tmp";
const RESERVED: &str = ".shoal-";

/// How long a write waits for its directory's lock unless
/// [`LOCK_TIMEOUT_ENV`] or [`LocalStore::with_lock_timeout`] says
/// otherwise. A write holds the lock for a check and a rename, so a wait
/// this long means the holder is stopped or hung.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// Whole milliseconds, 1 to 3,600,000: the lock timeout of every local
/// store opened with [`LocalStore::open`].
pub const LOCK_TIMEOUT_ENV: &str = "SHOAL_LOCAL_LOCK_TIMEOUT_MS";

/// A store rooted at a local directory.
#[derive(Clone)]
pub struct LocalStore {
    root: PathBuf,
    lock_timeout: Duration,
}

/// What a write requires of the key's current object.
enum Precondition {
    /// Nothing: an unconditional put.
    None,
    /// That there is none (create-only).
    Absent,
    /// That its bytes have this ETag (compare-and-swap).
    Matches(ETag),
}

/// A temp file holding a write's bytes, fsynced; removed on drop unless
/// it was renamed into place.
struct Staged(Option<PathBuf>);

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl LocalStore {
    /// Opens (creating if needed) the directory at `path`, with the lock
    /// timeout [`LOCK_TIMEOUT_ENV`] sets (default [`DEFAULT_LOCK_TIMEOUT`]).
    pub fn open(path: &str) -> Result<Self> {
        if path.is_empty() {
            return Err(StoreError::other(path, "empty local store path"));
        }
        let lock_timeout = lock_timeout_from_env(path)?;
        let root = PathBuf::from(path);
        for dir in [root.clone(), root.join(TMP_DIR)] {
            fs::create_dir_all(&dir).map_err(|e| {
                StoreError::other(
                    path,
                    format!("cannot create store directory {}: {e}", dir.display()),
                )
            })?;
        }
        let root = root
            .canonicalize()
            .map_err(|e| StoreError::other(path, e))?;
        Ok(LocalStore { root, lock_timeout })
    }

    /// This store, waiting up to `timeout` for a directory's lock.
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// The directory this store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        validate_key(key)?;
        if key.split('/').any(|c| c.starts_with(RESERVED)) {
            return Err(StoreError::other(
                key,
                "invalid key: `.shoal-` is reserved for the local store's own files",
            ));
        }
        Ok(self.root.join(key))
    }

    /// Runs blocking file work off the async runtime.
    async fn blocking<T: Send + 'static>(
        &self,
        key: &str,
        f: impl FnOnce(LocalStore) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(me))
            .await
            .map_err(|e| StoreError::other(key, format!("local store task failed: {e}")))?
    }

    /// Takes the lock of the directory holding `target`, the file of
    /// `key`; `None` if that directory does not exist.
    fn lock(&self, key: &str, target: &Path) -> Result<Option<DirLock>> {
        let dir = target.parent().expect("key path has a parent");
        DirLock::acquire(key, dir, self.lock_timeout)
    }

    /// Reads the current bytes of `key`, `None` if missing.
    fn read(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match fs::read(self.path(key)?) {
            Ok(b) => Ok(Some(b)),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(io_err(key, e)),
        }
    }

    /// Writes `bytes` to `key` if `pre` holds: the bytes go to a temp
    /// file and are fsynced first, outside the lock; then, holding the
    /// directory's lock, the precondition is checked, the temp file
    /// renamed over the target and the directory fsynced.
    fn write(&self, key: &str, bytes: &[u8], pre: &Precondition) -> Result<ETag> {
        let target = self.path(key)?;
        // A write that has already lost fails without staging anything.
        self.check(key, &target, pre)?;
        if !matches!(pre, Precondition::Matches(_)) {
            let dir = target.parent().expect("key path has a parent");
            fs::create_dir_all(dir).map_err(|e| io_err(key, e))?;
        }
        let mut staged = self.stage(key, bytes)?;
        let Some(lock) = self.lock(key, &target)? else {
            // Only a matching object's directory can be missing here (we
            // just created it otherwise), and it is gone: the match lost.
            return Err(StoreError::PreconditionFailed {
                key: key.to_string(),
            });
        };
        self.check(key, &target, pre)?;
        let tmp = staged.0.take().expect("staged once");
        if let Err(e) = fs::rename(&tmp, &target) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(key, e));
        }
        lock.sync().map_err(|e| io_err(key, e))?;
        Ok(content_etag(bytes))
    }

    /// Whether `pre` holds for the current file of `key` at `target`.
    fn check(&self, key: &str, target: &Path, pre: &Precondition) -> Result<()> {
        match pre {
            Precondition::None => Ok(()),
            Precondition::Absent => match target.try_exists() {
                Ok(false) => Ok(()),
                Ok(true) => Err(StoreError::AlreadyExists {
                    key: key.to_string(),
                }),
                Err(e) if is_missing(&e) => Ok(()),
                Err(e) => Err(io_err(key, e)),
            },
            Precondition::Matches(expected) => match self.read(key)? {
                Some(current) if &content_etag(&current) == expected => Ok(()),
                _ => Err(StoreError::PreconditionFailed {
                    key: key.to_string(),
                }),
            },
        }
    }

    /// Writes `bytes` to a fresh temp file and fsyncs it.
    fn stage(&self, key: &str, bytes: &[u8]) -> Result<Staged> {
        let tmp = self
            .root
            .join(TMP_DIR)
            .join(format!("{}.tmp", super::memory::uuid_like()));
        let staged = Staged(Some(tmp.clone()));
        let mut f = File::create(&tmp).map_err(|e| io_err(key, e))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| io_err(key, e))?;
        Ok(staged)
    }

    fn meta(&self, key: &str, path: &Path) -> Result<Option<ObjectMeta>> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(io_err(key, e)),
        };
        let modified = fs::metadata(path).and_then(|m| m.modified()).ok();
        Ok(Some(ObjectMeta {
            key: key.to_string(),
            size: bytes.len() as u64,
            etag: content_etag(&bytes),
            last_modified: modified,
        }))
    }

    fn walk(&self, dir: &Path, rel: &str, prefix: &str, out: &mut Vec<ObjectMeta>) -> Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if is_missing(&e) => return Ok(()),
            Err(e) => return Err(io_err(prefix, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_err(prefix, e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue; // not a key shoal could have written
            };
            if name.starts_with(RESERVED) {
                continue;
            }
            let key = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            // Prune subtrees that cannot contain a match.
            if !key.starts_with(prefix) && !prefix.starts_with(&key) {
                continue;
            }
            let ty = entry.file_type().map_err(|e| io_err(&key, e))?;
            if ty.is_dir() {
                self.walk(&entry.path(), &key, prefix, out)?;
            } else if ty.is_file() && key.starts_with(prefix) {
                if let Some(meta) = self.meta(&key, &entry.path())? {
                    out.push(meta);
                }
            }
        }
        Ok(())
    }
}

/// [`LOCK_TIMEOUT_ENV`], or [`DEFAULT_LOCK_TIMEOUT`] when unset.
fn lock_timeout_from_env(path: &str) -> Result<Duration> {
    let Ok(v) = std::env::var(LOCK_TIMEOUT_ENV) else {
        return Ok(DEFAULT_LOCK_TIMEOUT);
    };
    match v.trim().parse::<u64>() {
        Ok(ms @ 1..=3_600_000) => Ok(Duration::from_millis(ms)),
        _ => Err(StoreError::other(
            path,
            format!("{LOCK_TIMEOUT_ENV} must be whole milliseconds from 1 to 3600000, not {v:?}"),
        )),
    }
}

fn is_missing(e: &std::io::Error) -> bool {
    // NotADirectory: a key component names an existing file.
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
}

fn io_err(key: &str, e: std::io::Error) -> StoreError {
    StoreError::other(key, format!("local i/o error: {e}"))
}

fn not_found(key: &str) -> StoreError {
    StoreError::NotFound {
        key: key.to_string(),
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn get(&self, key: &str) -> Result<GetResult> {
        let k = key.to_string();
        self.blocking(key, move |s| {
            let bytes = s.read(&k)?.ok_or_else(|| not_found(&k))?;
            let etag = content_etag(&bytes);
            Ok(GetResult {
                bytes: Bytes::from(bytes),
                etag,
            })
        })
        .await
    }

    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Bytes> {
        let k = key.to_string();
        self.blocking(key, move |s| {
            let mut f = match File::open(s.path(&k)?) {
                Ok(f) => f,
                Err(e) if is_missing(&e) => return Err(not_found(&k)),
                Err(e) => return Err(io_err(&k, e)),
            };
            let len = f.metadata().map_err(|e| io_err(&k, e))?.len();
            let r = range.clamp(len);
            let mut buf = vec![0u8; r.len()];
            f.seek(SeekFrom::Start(r.start as u64))
                .and_then(|_| f.read_exact(&mut buf))
                .map_err(|e| io_err(&k, e))?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn get_if_changed(&self, key: &str, etag: &ETag) -> Result<Conditional> {
        let got = self.get(key).await?;
        if &got.etag == etag {
            Ok(Conditional::NotModified)
        } else {
            Ok(Conditional::Modified(got))
        }
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let k = key.to_string();
        self.blocking(key, move |s| {
            let path = s.path(&k)?;
            s.meta(&k, &path)?.ok_or_else(|| not_found(&k))
        })
        .await
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<ETag> {
        let k = key.to_string();
        self.blocking(key, move |s| s.write(&k, &bytes, &Precondition::None))
            .await
    }

    async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<ETag> {
        let k = key.to_string();
        self.blocking(key, move |s| s.write(&k, &bytes, &Precondition::Absent))
            .await
    }

    async fn put_if_match(&self, key: &str, bytes: Bytes, etag: &ETag) -> Result<ETag> {
        let k = key.to_string();
        let pre = Precondition::Matches(etag.clone());
        self.blocking(key, move |s| s.write(&k, &bytes, &pre)).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let k = key.to_string();
        self.blocking(key, move |s| {
            let target = s.path(&k)?;
            // No directory, no object: nothing to delete, nothing to lock.
            let Some(_lock) = s.lock(&k, &target)? else {
                return Ok(());
            };
            match fs::remove_file(&target) {
                Ok(()) => Ok(()),
                Err(e) if is_missing(&e) => Ok(()),
                Err(e) => Err(io_err(&k, e)),
            }
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let p = prefix.to_string();
        self.blocking(prefix, move |s| {
            // Start at the deepest directory the prefix names.
            let (dir_rel, start) = match p.rfind('/') {
                Some(i) => {
                    validate_key(&p[..i])?;
                    if p[..i].split('/').any(|c| c.starts_with(RESERVED)) {
                        return Ok(Vec::new()); // the store's own files
                    }
                    (&p[..i], s.root.join(&p[..i]))
                }
                None => ("", s.root.clone()),
            };
            let mut out = Vec::new();
            s.walk(&start, dir_rel, &p, &mut out)?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
}
