//! Startup probe: does this store really enforce conditional writes?
//!
//! Some S3-compatible servers (s3s-fs, s3rver) accept `If-None-Match` and
//! `If-Match` and silently ignore them. On such a store two writers would
//! both "win" a manifest commit and one would lose acknowledged data, so
//! shoal refuses it up front.

use bytes::Bytes;

use super::{ETag, ObjectStore, StoreError};

/// Why a store was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The store accepted a conditional write it should have refused.
    #[error(
        "store {store} does not enforce conditional writes ({check}); shoal needs create-only \
         (If-None-Match: *) and compare-and-swap (If-Match) writes to keep commits from several \
         writers safe. Servers known to ignore these headers include s3s-fs and s3rver; use AWS S3, \
         MinIO, LocalStack or moto"
    )]
    NotEnforced { store: String, check: &'static str },
    #[error(
        "store {store} lists objects with a delay: a listing right after a write did not show \
         the written object's ETag; shoal's readers check every manifest's freshness with one \
         LIST and need it read-after-write consistent (AWS S3 is since 2020, as are MinIO, \
         LocalStack and moto)"
    )]
    ListLags { store: String },
    /// The probe could not run (permissions, network, ...).
    #[error("conditional-write probe on {store} failed: {source}")]
    Store {
        store: String,
        #[source]
        source: StoreError,
    },
}

impl ProbeError {
    /// A store that ignores conditions is an environment problem; a
    /// probe that could not run is whatever its store error is.
    pub fn kind(&self) -> crate::vocab::ErrorKind {
        match self {
            ProbeError::NotEnforced { .. } | ProbeError::ListLags { .. } => {
                crate::vocab::ErrorKind::Internal
            }
            ProbeError::Store { source, .. } => source.kind(),
        }
    }
}

/// Writes the scratch object `key` and checks that a second create-only
/// write fails, a stale `If-Match` fails, and `If-Match` on `missing` (a
/// key nobody writes) neither succeeds nor creates it. Cleans up after
/// itself (also on failure). Costs about 8 requests. The keys come from
/// the caller (`coord::paths::probe_keys` mints them under
/// `_brainy/probe/`).
pub async fn probe_conditional_writes(
    store: &dyn ObjectStore,
    (key, missing): (String, String),
) -> Result<(), ProbeError> {
    let result = run_checks(store, &key, &missing).await;
    let _ = store.delete(&key).await;
    let _ = store.delete(&missing).await;
    result
}

async fn run_checks(store: &dyn ObjectStore, key: &str, missing: &str) -> Result<(), ProbeError> {
    let name = store.describe();
    let io = |source: StoreError| ProbeError::Store {
        store: name.clone(),
        source,
    };
    let refused = |check: &'static str| ProbeError::NotEnforced {
        store: name.clone(),
        check,
    };

    let e1 = store
        .put_if_absent(key, Bytes::from_static(b"probe-1"))
        .await
        .map_err(io)?;
    match store
        .put_if_absent(key, Bytes::from_static(b"probe-2"))
        .await
    {
        Err(StoreError::AlreadyExists { .. }) => {}
        Ok(_) => {
            return Err(refused(
                "a second create-only write to the same key succeeded",
            ))
        }
        Err(e) => return Err(io(e)),
    }
    let e2 = store
        .put_if_match(key, Bytes::from_static(b"probe-3"), &e1)
        .await
        .map_err(io)?;
    // Readers' freshness check trusts one LIST of the manifests: it must
    // show an acknowledged write at once, with the ETag a GET gives.
    let listed = store.list(key).await.map_err(io)?;
    match listed.iter().find(|o| o.key == key) {
        Some(o) if o.etag.same_as(&e2) => {}
        _ => {
            return Err(ProbeError::ListLags {
                store: name.clone(),
            })
        }
    }
    match store
        .put_if_match(key, Bytes::from_static(b"probe-4"), &e1)
        .await
    {
        Err(StoreError::PreconditionFailed { .. }) => {}
        Ok(_) => return Err(refused("a compare-and-swap with a stale etag succeeded")),
        Err(e) => return Err(io(e)),
    }
    let bogus = ETag("\"00000000000000000000000000000000\"".into());
    match store
        .put_if_match(missing, Bytes::from_static(b"probe-5"), &bogus)
        .await
    {
        Err(StoreError::PreconditionFailed { .. }) => {}
        Ok(_) => return Err(refused("a compare-and-swap on a missing key succeeded")),
        Err(e) => return Err(io(e)),
    }
    match store.head(missing).await {
        Err(StoreError::NotFound { .. }) => Ok(()),
        Ok(_) => Err(refused("a compare-and-swap on a missing key created it")),
        Err(e) => Err(io(e)),
    }
}

/// The store's own clock: writes the scratch object `key`, reads back its
/// last-modified time and deletes it (3 requests). `None` when the backend
/// keeps no timestamps.
pub async fn store_time(
    store: &dyn ObjectStore,
    key: &str,
) -> Result<Option<std::time::SystemTime>, StoreError> {
    store.put(key, Bytes::from_static(b"clock")).await?;
    let meta = store.head(key).await;
    let _ = store.delete(key).await;
    Ok(meta?.last_modified)
}
