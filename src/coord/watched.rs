//! Objects held with their ETag and revalidated by conditional GET: the
//! config, partition manifests, the index manifest and the S3 Vectors
//! catalog are all read this way (DESIGN section 8: no LIST on the read
//! path, a 304 costs no bytes). [`revalidate`] is the one mechanism;
//! what a caller builds from the object, and how fresh it must be, stay
//! the caller's. Transient errors retry through [`retrying`].

use std::future::Future;

use tokio::time::Instant;

use super::cas::Backoff;
use crate::store::{Conditional, ETag, GetResult, ObjectStore, StoreError};

/// What revalidating a held object found.
#[derive(Debug)]
pub enum Revalidated {
    /// The copy held (its ETag) is current.
    Unchanged,
    /// The object changed, or none was held: its bytes and ETag.
    Changed(GetResult),
    /// No object at the key.
    Missing,
}

/// Revalidates `key`: a conditional GET against `held` when a copy is
/// held, else a plain GET. Transient store errors are retried until
/// `deadline` (`None`: not retried); other errors are returned.
pub async fn revalidate(
    store: &dyn ObjectStore,
    key: &str,
    held: Option<&ETag>,
    deadline: Option<Instant>,
) -> Result<Revalidated, StoreError> {
    let once = || async move {
        match held {
            Some(etag) => store.get_if_changed(key, etag).await.map(|c| match c {
                Conditional::NotModified => Revalidated::Unchanged,
                Conditional::Modified(got) => Revalidated::Changed(got),
            }),
            None => store.get(key).await.map(Revalidated::Changed),
        }
    };
    let got = match deadline {
        Some(deadline) => retrying(deadline, StoreError::is_retryable, once).await,
        None => once().await,
    };
    match got {
        // A manifest of a bucket whose manifests are not all moved yet
        // (see `layout`): read where it still is, writing nothing.
        Err(StoreError::NotFound { .. }) if super::paths::legacy_of(key).is_some() => {
            match super::layout::through_legacy(store, key).await {
                Ok(Some(c)) if Some(&c.got.etag) == held => Ok(Revalidated::Unchanged),
                Ok(Some(c)) => Ok(Revalidated::Changed(c.got)),
                Ok(None) => Ok(Revalidated::Missing),
                Err(super::CoordError::Store(e)) => Err(e),
                Err(e) => Err(StoreError::other(key, e)),
            }
        }
        Err(StoreError::NotFound { .. }) => Ok(Revalidated::Missing),
        other => other,
    }
}

/// Runs `f` again on a transient error, with jittered exponential backoff
/// (10 ms doubling to 2 s), as long as the next attempt starts before
/// `deadline`; then returns the last error, which names the key.
pub(crate) async fn retrying<T, E, F, Fut>(
    deadline: Instant,
    retryable: fn(&E) -> bool,
    mut f: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let backoff = Backoff::default();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match f().await {
            Err(e) if retryable(&e) => {
                let delay = backoff.delay(attempt);
                if Instant::now() + delay >= deadline {
                    return Err(e);
                }
                tokio::time::sleep(delay).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn revalidation_sees_unchanged_changed_and_missing_objects() {
        let store = MemoryStore::unique();
        let key = "watched.json";
        assert!(matches!(
            revalidate(&store, key, None, None).await.unwrap(),
            Revalidated::Missing
        ));
        store
            .put(key, bytes::Bytes::from_static(b"1"))
            .await
            .unwrap();
        let Revalidated::Changed(first) = revalidate(&store, key, None, None).await.unwrap() else {
            panic!("a plain read returns the object");
        };
        assert_eq!(&first.bytes[..], b"1");
        assert!(matches!(
            revalidate(&store, key, Some(&first.etag), None)
                .await
                .unwrap(),
            Revalidated::Unchanged
        ));
        store
            .put(key, bytes::Bytes::from_static(b"2"))
            .await
            .unwrap();
        match revalidate(&store, key, Some(&first.etag), None)
            .await
            .unwrap()
        {
            Revalidated::Changed(got) => {
                assert_eq!(&got.bytes[..], b"2");
                assert_ne!(got.etag, first.etag);
            }
            other => panic!("a changed object must be returned, got {other:?}"),
        }
        store.delete(key).await.unwrap();
        assert!(matches!(
            revalidate(&store, key, Some(&first.etag), None)
                .await
                .unwrap(),
            Revalidated::Missing
        ));
    }
}
