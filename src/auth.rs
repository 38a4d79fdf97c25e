//! API keys for the HTTP API: a read key, a write key, or one key for
//! both, compared in constant time over their SHA-256 digests (so
//! neither the content nor the length of a key leaks through timing).
//!
//! | variable | grants |
//! |---|---|
//! | `SHOAL_API_KEY_READ` | search, get, status, warm-up, metrics |
//! | `SHOAL_API_KEY_WRITE` | upsert and delete, and everything a read key grants |
//! | `SHOAL_API_KEY` | both (the single-key setup) |
//!
//! With any key configured every protected route needs one; health
//! probes stay open.

use sha2::{Digest, Sha256};

use crate::api::ApiError;

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    Read,
    Write,
}

/// The configured keys, as digests.
#[derive(Clone, Default)]
pub struct ApiKeys {
    read: Option<[u8; 32]>,
    write: Option<[u8; 32]>,
    both: Option<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a key, not even its digest.
        f.debug_struct("ApiKeys")
            .field("read", &self.read.is_some())
            .field("write", &self.write.is_some())
            .field("both", &self.both.is_some())
            .finish()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Compares two digests in time independent of where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl ApiKeys {
    /// Keys from `SHOAL_API_KEY`, `SHOAL_API_KEY_READ` and
    /// `SHOAL_API_KEY_WRITE` (empty values count as unset).
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|k| !k.is_empty());
        ApiKeys::new(
            var("SHOAL_API_KEY_READ").as_deref(),
            var("SHOAL_API_KEY_WRITE").as_deref(),
            var("SHOAL_API_KEY").as_deref(),
        )
    }

    pub fn new(read: Option<&str>, write: Option<&str>, both: Option<&str>) -> Self {
        ApiKeys {
            read: read.map(digest),
            write: write.map(digest),
            both: both.map(digest),
        }
    }

    /// One key for both reads and writes.
    pub fn single(key: &str) -> Self {
        ApiKeys::new(None, None, Some(key))
    }

    /// No key configured: every route is open.
    pub fn is_open(&self) -> bool {
        self.read.is_none() && self.write.is_none() && self.both.is_none()
    }

    /// Whether `given` (the bearer token, if any) grants `need`: 401 for
    /// a missing or unknown key, 403 for a read key on a write route.
    pub fn check(&self, need: Grant, given: Option<&str>) -> Result<(), ApiError> {
        if self.is_open() {
            return Ok(());
        }
        let unauthorized = || {
            ApiError::new(
                401,
                "unauthorized",
                "missing or wrong API key: send Authorization: Bearer <key> \
                 (SHOAL_API_KEY, or SHOAL_API_KEY_READ / SHOAL_API_KEY_WRITE)",
            )
        };
        let Some(given) = given else {
            return Err(unauthorized());
        };
        let g = digest(given);
        // Every comparison runs whatever matches, so the time taken does
        // not say which key (if any) was close.
        let is = |k: &Option<[u8; 32]>| k.as_ref().is_some_and(|k| same(k, &g));
        let (read, write, both) = (is(&self.read), is(&self.write), is(&self.both));
        match need {
            _ if both || write => Ok(()),
            Grant::Read if read => Ok(()),
            Grant::Write if read => Err(ApiError::new(
                403,
                "forbidden",
                "this key may only read; upsert and delete need SHOAL_API_KEY_WRITE (or SHOAL_API_KEY)",
            )),
            _ => Err(unauthorized()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_grant_what_they_name_and_nothing_else() {
        let k = ApiKeys::new(Some("r-key"), Some("w-key"), None);
        assert!(k.check(Grant::Read, Some("r-key")).is_ok());
        assert!(k.check(Grant::Read, Some("w-key")).is_ok());
        assert!(k.check(Grant::Write, Some("w-key")).is_ok());
        assert_eq!(
            k.check(Grant::Write, Some("r-key")).unwrap_err().status,
            403
        );
        for bad in [None, Some(""), Some("r-ke"), Some("r-key "), Some("W-KEY")] {
            assert_eq!(
                k.check(Grant::Read, bad).unwrap_err().status,
                401,
                "{bad:?}"
            );
            assert_eq!(
                k.check(Grant::Write, bad).unwrap_err().status,
                401,
                "{bad:?}"
            );
        }
        let one = ApiKeys::single("s");
        assert!(one.check(Grant::Read, Some("s")).is_ok());
        assert!(one.check(Grant::Write, Some("s")).is_ok());
        assert_eq!(one.check(Grant::Write, Some("t")).unwrap_err().status, 401);
        // Only a write key: reads need it too (a configured key closes
        // every protected route).
        let w = ApiKeys::new(None, Some("w"), None);
        assert_eq!(w.check(Grant::Read, None).unwrap_err().status, 401);
        assert!(ApiKeys::default().check(Grant::Write, None).is_ok());
        assert!(!format!("{k:?}").contains("key\""), "{k:?}");
    }
}
