//! "Read latest, mutate, conditional write; on conflict re-read and retry."
//!
//! The one compare-and-swap loop behind the config, the partition manifests
//! and every other shared JSON object. It knows nothing about what the
//! object means (compare slatedb's `slatedb-txn-obj`): callers pass a
//! function from the current value to the next one.

use std::time::Duration;

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use super::error::{excerpt, CoordError};
use crate::store::{ETag, ObjectStore, StoreError};

/// Jittered exponential backoff for lost races and transient errors.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    pub max_attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_secs(2),
            max_attempts: 40,
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (1-based): full jitter over an
    /// exponentially growing cap.
    pub fn delay(&self, attempt: u32) -> Duration {
        let cap = self
            .base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max);
        let cap_ms = cap.as_millis().max(1) as u64;
        Duration::from_millis(super::entropy::random_u64() % cap_ms + 1)
    }
}

/// Reads and parses a JSON object; `None` if it does not exist. Unparsable
/// bytes are reported as [`CoordError::Corrupt`] naming the key.
/// A manifest key is read through [`super::layout::read_current`], so a
/// bucket whose manifests are not moved yet reads the same.
pub(crate) async fn read_json<T: DeserializeOwned>(
    store: &dyn ObjectStore,
    key: &str,
) -> Result<Option<(T, ETag)>, CoordError> {
    Ok(read_tracked(store, key).await?.map(|(v, e, _)| (v, e)))
}

/// [`read_json`], also saying whether a manifest came from its legacy key.
async fn read_tracked<T: DeserializeOwned>(
    store: &dyn ObjectStore,
    key: &str,
) -> Result<Option<(T, ETag, bool)>, CoordError> {
    if super::paths::legacy_of(key).is_some() {
        return match super::layout::read_current(store, key).await? {
            Some(c) => Ok(Some((parse_json(key, &c.got.bytes)?, c.got.etag, c.legacy))),
            None => Ok(None),
        };
    }
    match store.get(key).await {
        Ok(got) => Ok(Some((parse_json(key, &got.bytes)?, got.etag, false))),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Parses JSON bytes from `key`, or a [`CoordError::Corrupt`] naming it.
pub(crate) fn parse_json<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, CoordError> {
    serde_json::from_slice(bytes).map_err(|e| CoordError::Corrupt {
        key: key.to_string(),
        reason: format!("not valid shoal json: {e}"),
        found: excerpt(bytes),
    })
}

/// What the mutate function decided.
pub(crate) enum Step<T> {
    /// Write this value (create-only if the object is missing, else
    /// compare-and-swap against the ETag that was read).
    Write(T),
    /// Nothing to change; return the current value as it is.
    Keep(T),
}

/// The outcome of [`update_json`].
#[derive(Debug)]
pub(crate) struct Updated<T> {
    /// The value now stored.
    pub value: T,
    /// The stored object's ETag (what a caller holding the value would
    /// revalidate against; unused by shoal's callers today).
    #[allow(dead_code)]
    pub etag: ETag,
    /// Read-mutate-write rounds, including the final one.
    pub attempts: u32,
    /// Rounds lost to a concurrent writer (412/409/404-on-If-Match).
    pub conflicts: u32,
    /// Rounds that failed with a transient error and were retried.
    pub retries: u32,
    /// Whether the final round wrote (false: `mutate` said `Keep`).
    pub wrote: bool,
}

/// Runs the compare-and-swap loop on `key`. `mutate` sees the current
/// value (`None` if missing) and may be called several times, so it must
/// be a pure function of its input. A write whose response was lost (a
/// transient error after the store applied it) is retried like any other;
/// `mutate` sees the applied value on the next round and can recognise it.
pub(crate) async fn update_json<T, F>(
    store: &dyn ObjectStore,
    key: &str,
    backoff: Backoff,
    mut mutate: F,
) -> Result<Updated<T>, CoordError>
where
    T: Serialize + DeserializeOwned,
    F: FnMut(Option<T>) -> Result<Step<T>, CoordError>,
{
    let (mut attempt, mut conflicts, mut retries) = (0, 0, 0);
    let mut marked = false;
    loop {
        attempt += 1;
        let current = read_tracked::<T>(store, key).await;
        let current = match current {
            // A manifest still at its legacy key: move it, then commit
            // to where it now lives (see `layout`).
            Ok(Some((_, _, true))) => {
                super::layout::migrate(store, key).await?;
                continue;
            }
            Ok(c) => c.map(|(v, e, _)| (v, e)),
            Err(CoordError::Store(e)) if e.is_retryable() && attempt < backoff.max_attempts => {
                retries += 1;
                tokio::time::sleep(backoff.delay(attempt)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let (value, etag) = match current {
            Some((v, e)) => (Some(v), Some(e)),
            None => (None, None),
        };
        let next = match mutate(value)? {
            Step::Keep(v) => {
                return match etag {
                    Some(etag) => Ok(Updated {
                        value: v,
                        etag,
                        attempts: attempt,
                        conflicts,
                        retries,
                        wrote: false,
                    }),
                    None => Err(CoordError::Store(StoreError::NotFound {
                        key: key.to_string(),
                    })),
                };
            }
            Step::Write(v) => v,
        };
        // Creating a manifest missing at both keys: a marker goes to the
        // legacy key first, so no older writer creates one there that
        // nobody would read (see `layout`).
        if etag.is_none() && !marked && super::paths::legacy_of(key).is_some() {
            marked = true;
            super::layout::migrate(store, key).await?;
            continue;
        }
        // Compact: manifests are rewritten on every commit. The config,
        // which people read (and used to edit) by hand, stays indented.
        let bytes = if key == super::paths::CONFIG_KEY {
            serde_json::to_vec_pretty(&next)
        } else {
            serde_json::to_vec(&next)
        };
        let bytes = Bytes::from(bytes.expect("serializable"));
        let written = match &etag {
            _ if crate::mutation::active(crate::mutation::Mutation::NoCompareAndSwap) => {
                store.put(key, bytes).await
            }
            None => store.put_if_absent(key, bytes).await,
            Some(e) => store.put_if_match(key, bytes, e).await,
        };
        match written {
            Ok(etag) => {
                return Ok(Updated {
                    value: next,
                    etag,
                    attempts: attempt,
                    conflicts,
                    retries,
                    wrote: true,
                })
            }
            Err(e) if (e.is_conflict() || e.is_retryable()) && attempt < backoff.max_attempts => {
                if e.is_conflict() {
                    conflicts += 1;
                } else {
                    retries += 1;
                }
                tracing::debug!(key, attempt, error = %e, "compare-and-swap retry");
                tokio::time::sleep(backoff.delay(attempt)).await;
            }
            Err(e) if e.is_conflict() => {
                return Err(CoordError::Contention {
                    key: key.to_string(),
                    attempts: attempt,
                })
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Create-only PUT of a new immutable object (a segment, a shard),
/// retrying transient errors with `backoff`. A retry that finds the key
/// taken means an earlier attempt landed: keys of new objects carry 128
/// random bits (see [`super::paths::new_segment_key`]), so nobody else
/// picked it. Returns how many attempts were retried.
pub(crate) async fn put_new_object(
    store: &dyn ObjectStore,
    key: &str,
    bytes: Bytes,
    backoff: Backoff,
) -> Result<u32, CoordError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match store.put_if_absent(key, bytes.clone()).await {
            Ok(_) => return Ok(attempt - 1),
            Err(StoreError::AlreadyExists { .. }) if attempt > 1 => return Ok(attempt - 1),
            Err(e) if e.is_retryable() && attempt < backoff.max_attempts => {
                tokio::time::sleep(backoff.delay(attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
