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
pub async fn save_cursor(store: &dyn ObjectStore, cursor: &Cursor) -> Result<(), CoordError> {
    cas::update_json::<Cursor, _>(store, COMPACTOR_CURSOR_KEY, Backoff::default(), |_| {
        Ok(Step::Write(cursor.clone()))
    })
    .await?;
    Ok(())
}
