//! Where the manifests live, and the one-time move that put them there.
//!
//! Every manifest (the partition manifests and the index manifest) lives
//! under `_brainy/manifests/` and nothing else does, so one LIST page
//! (ListObjectsV2 returns up to 1,000 keys with their ETags; S3 lists
//! are strongly consistent) tells a reader which manifests changed since
//! it last read them: a freshness check is one request whatever the
//! partition count (issue 30). Buckets made before kept each partition's
//! manifest at `vectors/pNNN/manifest.json` and the index manifest at
//! `index/manifest.json`.
//!
//! The move, per manifest, is safe to race and to interrupt:
//! 1. the legacy object is replaced, by compare-and-swap, with a *moved
//!    marker*: the same document with `version` set to [`MOVED_VERSION`],
//!    its own version in `movedVersion` and the new key in `movedTo`.
//!    From then on it never changes: shoal versions that predate the move
//!    refuse it (its version is newer than they understand), so no old
//!    process can commit to a manifest nobody reads any more. A missing
//!    legacy manifest gets a bare marker (create-only) for the same reason;
//! 2. the new key is created, create-only, from the marker's document; if
//!    it exists, whoever created it first wins (it may already hold newer
//!    commits).
//!
//! Readers never move anything ([`read_current`] follows a marker, or a
//! legacy manifest not yet moved, without writing); every
//! compare-and-swap on a manifest moves it first ([`migrate`], called by
//! [`super::cas::update_json`] when the new key is missing and a legacy
//! one may exist), and writers move them all when they join ([`upgrade`]),
//! then raise the config to version 2, which older shoal versions refuse
//! to open.

use bytes::Bytes;
use serde_json::Value;

use super::error::excerpt;
use super::paths::{legacy_of, manifest_key, INDEX_MANIFEST_KEY, MANIFESTS_PREFIX};
use super::CoordError;
use crate::store::{GetResult, ObjectStore, StoreError};

/// The `version` a moved marker carries: far above any manifest version,
/// so every shoal version refuses to commit to it.
pub(crate) const MOVED_VERSION: u64 = 1_000_000;

/// What a legacy manifest key holds.
enum Legacy {
    /// Nothing: the manifest never existed there.
    Missing,
    /// A manifest not yet moved, with its ETag.
    Live(GetResult),
    /// A moved marker, the document it carries (`None` for the bare
    /// marker of a manifest that did not exist) and the marker's ETag.
    Moved(Option<Vec<u8>>, crate::store::ETag),
}

/// Reads and classifies the legacy key `legacy`.
async fn read_legacy(store: &dyn ObjectStore, legacy: &str) -> Result<Legacy, CoordError> {
    let got = match store.get(legacy).await {
        Ok(got) => got,
        Err(StoreError::NotFound { .. }) => return Ok(Legacy::Missing),
        Err(e) => return Err(e.into()),
    };
    match moved_document(legacy, &got.bytes)? {
        Some(doc) => Ok(Legacy::Moved(doc, got.etag)),
        None => Ok(Legacy::Live(got)),
    }
}

/// If `bytes` (read from `key`) are a moved marker, the document it
/// carries (`Some(None)` for a bare marker); `None` for any other document.
fn moved_document(key: &str, bytes: &[u8]) -> Result<Option<Option<Vec<u8>>>, CoordError> {
    let Ok(Value::Object(mut doc)) = serde_json::from_slice::<Value>(bytes) else {
        return Ok(None); // not JSON: the caller's parser names the damage
    };
    if doc.remove("movedTo").is_none() {
        return Ok(None);
    }
    let Some(version) = doc.remove("movedVersion") else {
        return Ok(Some(None));
    };
    if !version.is_u64() {
        return Err(CoordError::Corrupt {
            key: key.to_string(),
            reason: format!("a moved manifest's movedVersion must be a number, found {version}"),
            found: excerpt(bytes),
        });
    }
    doc.insert("version".into(), version);
    Ok(Some(Some(serde_json::to_vec(&doc).expect("serializable"))))
}

/// The moved marker for the document `bytes` (`None`: a bare marker)
/// whose new home is `to`.
fn marker(bytes: Option<&[u8]>, to: &str) -> Result<Bytes, String> {
    let mut doc = match bytes {
        None => serde_json::Map::new(),
        Some(b) => match serde_json::from_slice::<Value>(b) {
            Ok(Value::Object(doc)) => doc,
            _ => return Err("not a JSON object".into()),
        },
    };
    if let Some(v) = doc.remove("version") {
        doc.insert("movedVersion".into(), v);
    }
    doc.insert("version".into(), MOVED_VERSION.into());
    doc.insert("movedTo".into(), to.into());
    Ok(serde_json::to_vec(&doc).expect("serializable").into())
}

/// The current manifest at `key` (a manifest key of the listed layout)
/// without writing anything: the object at `key`; else, for a bucket not
/// yet (fully) moved, what its legacy key holds (a manifest not yet moved,
/// or the document a moved marker carries when the new key is not created
/// yet). `None` when there is none anywhere. The ETag returned is the
/// one of the object the bytes came from.
pub(crate) async fn read_current(
    store: &dyn ObjectStore,
    key: &str,
) -> Result<Option<Current>, CoordError> {
    match store.get(key).await {
        Ok(got) => Ok(Some(Current { got, legacy: false })),
        Err(StoreError::NotFound { .. }) => through_legacy(store, key).await,
        Err(e) => Err(e.into()),
    }
}

/// [`read_current`] once `key` itself was found missing.
pub(crate) async fn through_legacy(
    store: &dyn ObjectStore,
    key: &str,
) -> Result<Option<Current>, CoordError> {
    let Some(legacy) = legacy_of(key) else {
        return Ok(None);
    };
    match read_legacy(store, &legacy).await? {
        Legacy::Missing | Legacy::Moved(None, _) => Ok(None),
        Legacy::Live(got) => Ok(Some(Current { got, legacy: true })),
        Legacy::Moved(Some(doc), etag) => match store.get(key).await {
            // Created since our first look (the move finished).
            Ok(got) => Ok(Some(Current { got, legacy: false })),
            Err(StoreError::NotFound { .. }) => Ok(Some(Current {
                got: GetResult {
                    bytes: doc.into(),
                    etag,
                },
                legacy: true,
            })),
            Err(e) => Err(e.into()),
        },
    }
}

/// A manifest as [`read_current`] found it.
#[derive(Debug)]
pub(crate) struct Current {
    pub got: GetResult,
    /// Read through the legacy key: not at the manifest's key yet, so a
    /// compare-and-swap on it must [`migrate`] first.
    pub legacy: bool,
}

/// Moves the manifest of `key` from its legacy key, if there is one (the
/// steps in the module doc). Idempotent and safe to race with other
/// movers, with writers of this version and with older ones. Returns
/// whether a manifest now exists at `key`.
pub(crate) async fn migrate(store: &dyn ObjectStore, key: &str) -> Result<bool, CoordError> {
    let Some(legacy) = legacy_of(key) else {
        return Ok(false);
    };
    let doc = loop {
        match read_legacy(store, &legacy).await? {
            Legacy::Moved(doc, _) => break doc,
            Legacy::Missing => {
                let bare = marker(None, key).expect("a bare marker is built from nothing");
                match store.put_if_absent(&legacy, bare).await {
                    Ok(_) => break None,
                    Err(e) if e.is_conflict() => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            Legacy::Live(got) => {
                let moved =
                    marker(Some(&got.bytes), key).map_err(|reason| CoordError::Corrupt {
                        key: legacy.clone(),
                        reason,
                        found: excerpt(&got.bytes),
                    })?;
                match store.put_if_match(&legacy, moved, &got.etag).await {
                    Ok(_) => break Some(got.bytes.to_vec()),
                    // An older writer committed meanwhile: move that.
                    Err(e) if e.is_conflict() => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    };
    let Some(doc) = doc else {
        return Ok(store.head(key).await.is_ok());
    };
    match store.put_if_absent(key, doc.into()).await {
        Ok(_) | Err(StoreError::AlreadyExists { .. }) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// Every manifest's ETag, by key: one LIST of `_brainy/manifests/`
/// (one page up to 999 partitions).
pub(crate) async fn manifest_etags(
    store: &dyn ObjectStore,
) -> Result<std::collections::BTreeMap<String, crate::store::ETag>, StoreError> {
    let listed = store.list(MANIFESTS_PREFIX).await?;
    Ok(listed.into_iter().map(|o| (o.key, o.etag)).collect())
}

/// Moves every manifest of an index with `partition_count` partitions,
/// 8 at a time; safe to run again after an interruption.
pub(crate) async fn upgrade(
    store: &dyn ObjectStore,
    partition_count: u32,
) -> Result<(), CoordError> {
    use futures::{StreamExt, TryStreamExt};
    let keys: Vec<String> = (0..partition_count)
        .map(manifest_key)
        .chain(std::iter::once(INDEX_MANIFEST_KEY.to_string()))
        .collect();
    futures::stream::iter(keys)
        .map(|key| async move { migrate(store, &key).await })
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coord::cas::{update_json, Backoff, Step};
    use crate::coord::manifest::{parse_manifest, Manifest};
    use crate::coord::paths::legacy_manifest_key;
    use crate::store::memory::MemoryStore;

    fn store() -> MemoryStore {
        MemoryStore::unique()
    }

    fn manifest(next_seq: u64) -> Vec<u8> {
        let mut m = Manifest::empty(0);
        m.next_seq = next_seq;
        serde_json::to_vec(&m).unwrap()
    }

    async fn bump(store: &dyn ObjectStore) -> Manifest {
        update_json::<Manifest, _>(store, &manifest_key(0), Backoff::default(), |m| {
            let mut m = m.expect("a manifest");
            m.next_seq += 1;
            Ok(Step::Write(m))
        })
        .await
        .unwrap()
        .value
    }

    /// A manifest still at its legacy key reads the same, and the first
    /// commit moves it: the new key holds it with the commit applied, the
    /// legacy key a marker that an older shoal (whose manifest check is
    /// the same `validate`) refuses, and that no older writer can commit
    /// to with the ETag it held.
    #[tokio::test]
    async fn a_legacy_manifest_reads_the_same_and_the_first_commit_moves_it() {
        let s = store();
        let legacy = legacy_manifest_key(0);
        let held = s.put(&legacy, manifest(5).into()).await.unwrap();
        let c = read_current(&s, &manifest_key(0)).await.unwrap().unwrap();
        assert!(c.legacy);
        assert_eq!(parse_manifest(0, &c.got.bytes).unwrap().next_seq, 5);
        assert_eq!(bump(&s).await.next_seq, 6);
        let moved = s.get(&manifest_key(0)).await.unwrap();
        assert_eq!(parse_manifest(0, &moved.bytes).unwrap().next_seq, 6);
        let marker = s.get(&legacy).await.unwrap();
        let e = parse_manifest(0, &marker.bytes).unwrap_err().to_string();
        assert!(e.contains("newer than this shoal understands"), "{e}");
        let old_writer = s.put_if_match(&legacy, manifest(6).into(), &held).await;
        assert!(matches!(
            old_writer,
            Err(StoreError::PreconditionFailed { .. })
        ));
        // Reading now takes the new key; moving again changes nothing.
        assert!(migrate(&s, &manifest_key(0)).await.unwrap());
        let c = read_current(&s, &manifest_key(0)).await.unwrap().unwrap();
        assert!(!c.legacy);
        assert_eq!(c.got.etag, moved.etag);
    }

    /// A store on which an older writer commits to `legacy` (unconditionally,
    /// as a CAS that won would) just before the mover's compare-and-swap.
    #[derive(Debug)]
    struct RacingOldWriter {
        inner: MemoryStore,
        legacy: String,
        fired: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl ObjectStore for RacingOldWriter {
        async fn get(&self, key: &str) -> crate::store::Result<GetResult> {
            self.inner.get(key).await
        }
        async fn get_range(
            &self,
            key: &str,
            r: crate::store::ByteRange,
        ) -> crate::store::Result<Bytes> {
            self.inner.get_range(key, r).await
        }
        async fn get_if_changed(
            &self,
            key: &str,
            etag: &crate::store::ETag,
        ) -> crate::store::Result<crate::store::Conditional> {
            self.inner.get_if_changed(key, etag).await
        }
        async fn head(&self, key: &str) -> crate::store::Result<crate::store::ObjectMeta> {
            self.inner.head(key).await
        }
        async fn put(&self, key: &str, b: Bytes) -> crate::store::Result<crate::store::ETag> {
            self.inner.put(key, b).await
        }
        async fn put_if_absent(
            &self,
            key: &str,
            b: Bytes,
        ) -> crate::store::Result<crate::store::ETag> {
            self.inner.put_if_absent(key, b).await
        }
        async fn put_if_match(
            &self,
            key: &str,
            b: Bytes,
            etag: &crate::store::ETag,
        ) -> crate::store::Result<crate::store::ETag> {
            if key == self.legacy && !self.fired.swap(true, std::sync::atomic::Ordering::SeqCst) {
                self.inner.put(key, manifest(9).into()).await?;
            }
            self.inner.put_if_match(key, b, etag).await
        }
        async fn delete(&self, key: &str) -> crate::store::Result<()> {
            self.inner.delete(key).await
        }
        async fn list(&self, prefix: &str) -> crate::store::Result<Vec<crate::store::ObjectMeta>> {
            self.inner.list(prefix).await
        }
        fn describe(&self) -> String {
            "racing".into()
        }
    }

    /// An older writer that commits between the mover's read and its
    /// compare-and-swap is not lost: the move retries and carries it.
    #[tokio::test]
    async fn a_commit_racing_the_move_is_carried_over() {
        let legacy = legacy_manifest_key(0);
        let s = RacingOldWriter {
            inner: store(),
            legacy: legacy.clone(),
            fired: false.into(),
        };
        s.put(&legacy, manifest(5).into()).await.unwrap();
        assert!(migrate(&s, &manifest_key(0)).await.unwrap());
        assert!(s.fired.load(std::sync::atomic::Ordering::SeqCst));
        let moved = s.get(&manifest_key(0)).await.unwrap();
        assert_eq!(parse_manifest(0, &moved.bytes).unwrap().next_seq, 9);
    }

    /// A partition with no manifest anywhere: the legacy key gets a bare
    /// marker (so no older writer creates one there), nothing is made up
    /// at the new key, and a first commit creates it.
    #[tokio::test]
    async fn a_missing_manifest_gets_a_bare_marker() {
        let s = store();
        assert!(!migrate(&s, &manifest_key(0)).await.unwrap());
        let marker = s.get(&legacy_manifest_key(0)).await.unwrap();
        assert!(parse_manifest(0, &marker.bytes).is_err());
        assert!(read_current(&s, &manifest_key(0)).await.unwrap().is_none());
        let created = update_json::<Manifest, _>(&s, &manifest_key(0), Backoff::default(), |m| {
            assert!(m.is_none());
            Ok(Step::Write(Manifest::empty(0)))
        })
        .await
        .unwrap();
        assert!(created.wrote);
        assert!(s.get(&manifest_key(0)).await.is_ok());
    }
}
