//! The compactor's cursor `_brainy/compactor-cursor.json`: where a
//! scheduled compactor (the Lambda function) resumes its round over the
//! partitions, and how many full rounds it finished.

use serde::{Deserialize, Serialize};

use super::cas::{self, Backoff, Step};
use super::error::CoordError;
use super::paths::COMPACTOR_CURSOR_KEY;
use crate::store::ObjectStore;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cursor {
    pub next_partition: u32,
    /// Full passes completed (GC runs after each).
    pub passes: u64,
    /// Partitions whose compaction outran an invocation's time, and how
    /// many times in a row: the round skips past them (so one slow
    /// partition never stalls the others) and retries them next pass.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub deferred: std::collections::BTreeMap<u32, u32>,
    /// Tail records an indexer round may take (`None`: all): set when a
    /// round outran an invocation, halved each time it does again and
    /// doubled each time one fits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_rows: Option<u64>,
}

/// Where an indexer round's row budget starts after its first timeout.
pub(crate) const FIRST_INDEX_BUDGET: u64 = 100_000;
/// The smallest budget (a round always takes at least one partition).
pub(crate) const MIN_INDEX_BUDGET: u64 = 1_000;

impl Cursor {
    /// The budget after a round that outran the time left (`timed_out`)
    /// or fit.
    pub(crate) fn next_index_budget(&mut self, timed_out: bool) {
        self.index_rows = match (self.index_rows, timed_out) {
            (None, false) => None,
            (None, true) => Some(FIRST_INDEX_BUDGET),
            (Some(b), true) => Some((b / 2).max(MIN_INDEX_BUDGET)),
            // Large enough to take anything: back to no budget.
            (Some(b), false) if b >= u64::MAX / 4 => None,
            (Some(b), false) => Some(b * 2),
        };
    }
}

/// The saved cursor, or the start when none is saved.
pub async fn read_cursor(store: &dyn ObjectStore) -> Result<Cursor, CoordError> {
    Ok(cas::read_json::<Cursor>(store, COMPACTOR_CURSOR_KEY)
        .await?
        .map(|(c, _)| c)
        .unwrap_or_default())
}

/// Saves `cursor` (last writer wins: racing compactors at worst redo a
/// partition, which compaction's own compare-and-swap makes harmless).
pub(crate) async fn save_cursor(
    store: &dyn ObjectStore,
    cursor: &Cursor,
) -> Result<(), CoordError> {
    cas::update_json::<Cursor, _>(store, COMPACTOR_CURSOR_KEY, Backoff::default(), |_| {
        Ok(Step::Write(cursor.clone()))
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_budget_halves_on_timeouts_and_doubles_when_rounds_fit() {
        let mut c = Cursor::default();
        c.next_index_budget(false);
        assert_eq!(c.index_rows, None, "no timeout, no budget");
        c.next_index_budget(true);
        assert_eq!(c.index_rows, Some(FIRST_INDEX_BUDGET));
        c.next_index_budget(true);
        assert_eq!(c.index_rows, Some(FIRST_INDEX_BUDGET / 2));
        for _ in 0..20 {
            c.next_index_budget(true);
        }
        assert_eq!(c.index_rows, Some(MIN_INDEX_BUDGET));
        c.next_index_budget(false);
        assert_eq!(c.index_rows, Some(2 * MIN_INDEX_BUDGET));
        let json = serde_json::to_string(&c).unwrap();
        let back: Cursor = serde_json::from_str(&json).unwrap();
        assert_eq!(back.index_rows, c.index_rows);
        let old: Cursor = serde_json::from_str(r#"{"nextPartition": 3, "passes": 1}"#).unwrap();
        assert_eq!(
            old.index_rows, None,
            "cursors saved before the budget read as none"
        );
    }
}
