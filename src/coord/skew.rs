//! The store's clock, as this host reads it (issue 28 F11): the
//! retirement stamps in manifests (`retiredAt`) and the ages they are
//! judged by must come from one clock, and hosts' clocks disagree. The
//! one clock every party shares is the store's, which stamps every object
//! it writes: [`store_now`] is this host's wall clock moved by how far the
//! store's runs ahead of it (or behind), measured by writing a scratch
//! object under `_brainy/probe/` and reading its timestamp back (three
//! requests, at most once per [`SKEW_TTL`] per store and process).
//!
//! A clock a test or a simulation injects (`Clock::is_host_clock` false)
//! stands for the time every party agrees on and is taken as it is.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use super::clock::Clock;
use super::error::CoordError;
use super::paths::probe_keys;
use crate::store::{store_time, ObjectStore};

/// How long a measured skew is reused.
pub(crate) const SKEW_TTL: Duration = Duration::from_secs(10 * 60);

/// Skews this small are taken as none: S3 stamps whole seconds, and the
/// probe's own round trip is in the measurement.
const TOLERANCE: Duration = Duration::from_secs(5);

/// How far the store's clock is from this host's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Skew {
    #[default]
    None,
    /// The store's clock runs ahead of this host's by this much.
    StoreAhead(Duration),
    /// The store's clock runs behind this host's by this much.
    StoreBehind(Duration),
}

impl Skew {
    /// `host` moved to the store's clock.
    pub(crate) fn apply(self, host: SystemTime) -> SystemTime {
        match self {
            Skew::None => host,
            Skew::StoreAhead(d) => host + d,
            Skew::StoreBehind(d) => host - d,
        }
    }

    /// The skew between `host` (read just before the probe) and the
    /// store's time `store` read back from it.
    fn between(host: SystemTime, store: SystemTime) -> Skew {
        match store.duration_since(host) {
            Ok(ahead) if ahead > TOLERANCE => Skew::StoreAhead(ahead),
            Ok(_) => Skew::None,
            Err(e) if e.duration() > TOLERANCE => Skew::StoreBehind(e.duration()),
            Err(_) => Skew::None,
        }
    }
}

/// Measures the skew now (no cache): GC, which deletes by it, measures on
/// every run. `Skew::None` when `clock` is not the host's, or when the
/// store reports no timestamps.
pub(crate) async fn measure(
    store: &dyn ObjectStore,
    clock: &dyn Clock,
) -> Result<Skew, CoordError> {
    if !clock.is_host_clock() {
        return Ok(Skew::None);
    }
    let host = clock.now();
    let Some(at) = store_time(store, &probe_keys().0).await? else {
        return Ok(Skew::None);
    };
    let skew = Skew::between(host, at);
    if skew != Skew::None {
        tracing::warn!(
            ?skew,
            store = %store.describe(),
            "this host's clock disagrees with the store's; retirements are stamped and judged \
             by the store's clock (fix the host's clock: NTP)"
        );
    }
    Ok(skew)
}

/// The store's "now" as this host reads it: [`measure`]d at most once per
/// [`SKEW_TTL`] per store.
pub(crate) async fn store_now(
    store: &dyn ObjectStore,
    clock: &dyn Clock,
) -> Result<SystemTime, CoordError> {
    if !clock.is_host_clock() {
        return Ok(clock.now());
    }
    static MEASURED: Mutex<Option<HashMap<String, (Skew, Instant)>>> = Mutex::new(None);
    let name = store.describe();
    let cached = MEASURED
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .get(&name)
        .filter(|(_, at)| at.elapsed() < SKEW_TTL)
        .map(|(s, _)| *s);
    let skew = match cached {
        Some(s) => s,
        None => {
            let s = measure(store, clock).await?;
            MEASURED
                .lock()
                .unwrap()
                .get_or_insert_with(HashMap::new)
                .insert(name, (s, Instant::now()));
            s
        }
    };
    Ok(skew.apply(clock.now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skews_within_the_tolerance_are_none_and_others_apply_both_ways() {
        let host = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = Duration::from_secs(3600);
        assert_eq!(
            Skew::between(host, host + Duration::from_secs(3)),
            Skew::None
        );
        assert_eq!(
            Skew::between(host, host - Duration::from_secs(3)),
            Skew::None
        );
        let ahead = Skew::between(host, host + hour);
        assert_eq!(ahead.apply(host), host + hour);
        let behind = Skew::between(host, host - hour);
        assert_eq!(behind.apply(host), host - hour);
    }
}
