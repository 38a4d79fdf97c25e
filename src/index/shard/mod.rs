//! The shard index: the IVF + RaBitQ index of the read-optimized layer
//! (DESIGN section 11), in one room.
//!
//! A shard's rows are grouped into IVF lists; each list stores RaBitQ
//! codes ([`super::rabitq`]; one bit per dimension, more in low
//! dimensions), full-precision rows and metadata,
//! laid out range-readably by [`crate::segment::shard`]. This module
//! builds that index ([`build`]) and searches it without doing any I/O
//! ([`ShardSearch`]): the search names the lists whose codes it needs,
//! estimates from the code blocks it is handed, and reranks the rows it
//! is handed. The reader fetches and caches the parts (compare lance's
//! `IvfQuantizationStorage`, which hands out partitions while the
//! searcher asks, and tantivy's `Collector`, which never does I/O).

mod build;
pub(crate) mod routed;
mod search;

pub(crate) use build::build;
#[cfg(test)]
pub(crate) use build::build_with_bits;
pub(crate) use search::{
    estimate_lists, every_row, rerank_lists, ProbedList, ShardQuery, ShardRouting, ShardSearch,
};

/// A shard search probes this many IVF lists per `nprobe` of the query:
/// estimating from a code costs a few instructions where a
/// full-precision distance costs hundreds, so it can afford to look much
/// wider (on the shared dataset 8 × 16 = 128 of 250 lists).
pub(crate) const PROBES_PER_NPROBE: usize = 16;

#[cfg(test)]
mod tests;
