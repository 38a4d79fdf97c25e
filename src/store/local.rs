//! Local-directory backend: the embedded default, so shoal runs with no server.
//!
//! Key `a/b/c` is the file `<root>/a/b/c`. The guarantees match S3's:
//!
//! - **No torn reads.** Every write goes to a temp file under
//!   `<root>/.shoal-tmp/`, is fsynced, then renamed over the target (rename is
//!   atomic on POSIX), and the directory is fsynced. A reader that opened the
//!   old file keeps reading the old bytes.
//! - **Atomic conditional writes across threads and processes.** Each key
//!   maps to one of [`LOCK_STRIPES`] lock files under `<root>/.shoal-locks/`;
//!   a write holds an exclusive advisory lock (`flock`) on it while it checks
//!   the precondition and renames. `flock` locks belong to an open file
//!   description, so two threads of one process exclude each other just as
//!   two processes do. Reads take no lock: rename makes them safe.
//! - **Stable ETags.** An ETag is the xxh3-128 of the bytes, so it survives
//!   restarts; the price is that `head` and `list` read the files to hash
//!   them (list is only used by GC and tools, never on the query path).
//!
//! Keys whose first component starts with `.shoal-` are reserved.
//! Temp files left by a crash mid-write are harmless and never listed.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    content_etag, validate_key, ByteRange, Conditional, ETag, GetResult, ObjectMeta, ObjectStore,
    Result, StoreError,
};

/// Number of lock files; keys hash onto them. Bounded so lock files never
/// accumulate, large enough that unrelated keys rarely share one.
pub(crate) const LOCK_STRIPES: u64 = 1024;
const TMP_DIR: &str = ".shoal-tmp";
const LOCK_DIR: &str = ".shoal-locks";

/// A store rooted at a local directory.
#[derive(Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl LocalStore {
    /// Opens (creating if needed) the directory at `path`.
    pub fn open(path: &str) -> Result<Self> {
        if path.is_empty() {
            return Err(StoreError::other(path, "empty local store path"));
        }
        let root = PathBuf::from(path);
        for dir in [root.clone(), root.join(TMP_DIR), root.join(LOCK_DIR)] {
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
        Ok(LocalStore { root })
    }

    /// The directory this store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        validate_key(key)?;
        if key
            .split('/')
            .next()
            .is_some_and(|c| c.starts_with(".shoal-"))
        {
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

    /// Takes the exclusive lock for `key`; released when the file drops.
    fn lock(&self, key: &str) -> Result<File> {
        let stripe = xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % LOCK_STRIPES;
        let path = self.root.join(LOCK_DIR).join(format!("{stripe:04}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_err(key, e))?;
        file.lock().map_err(|e| io_err(key, e))?;
        Ok(file)
    }

    /// Reads the current bytes of `key`, `None` if missing.
    fn read(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match fs::read(self.path(key)?) {
            Ok(b) => Ok(Some(b)),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(io_err(key, e)),
        }
    }

    /// temp + fsync + rename + fsync(dir). Caller holds the key's lock.
    fn write_atomic(&self, key: &str, bytes: &[u8]) -> Result<ETag> {
        let target = self.path(key)?;
        let dir = target.parent().expect("key path has a parent");
        fs::create_dir_all(dir).map_err(|e| io_err(key, e))?;
        let tmp = self
            .root
            .join(TMP_DIR)
            .join(format!("{}.tmp", super::memory::uuid_like()));
        let result = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &target)?;
            File::open(dir)?.sync_all()
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(key, e));
        }
        Ok(content_etag(bytes))
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
            if rel.is_empty() && name.starts_with(".shoal-") {
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
        self.blocking(key, move |s| {
            let _lock = s.lock(&k)?;
            s.write_atomic(&k, &bytes)
        })
        .await
    }

    async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<ETag> {
        let k = key.to_string();
        self.blocking(key, move |s| {
            let _lock = s.lock(&k)?;
            if s.path(&k)?.exists() {
                return Err(StoreError::AlreadyExists { key: k });
            }
            s.write_atomic(&k, &bytes)
        })
        .await
    }

    async fn put_if_match(&self, key: &str, bytes: Bytes, etag: &ETag) -> Result<ETag> {
        let k = key.to_string();
        let expected = etag.clone();
        self.blocking(key, move |s| {
            let _lock = s.lock(&k)?;
            match s.read(&k)? {
                Some(current) if content_etag(&current) == expected => s.write_atomic(&k, &bytes),
                _ => Err(StoreError::PreconditionFailed { key: k }),
            }
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let k = key.to_string();
        self.blocking(key, move |s| {
            let _lock = s.lock(&k)?;
            match fs::remove_file(s.path(&k)?) {
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
