//! Deliberately broken variants of the protocol, for proving that the
//! deterministic simulation can fail (`tests/simulation.rs`, "mutation
//! checks"). Each [`Mutation`] names one safety mechanism; with the
//! `test-util` feature a test process can switch one off through the
//! `SHOAL_MUTATION` environment variable. Without the feature (every
//! shipped build) [`active`] is a constant `false` and the checks compile
//! away. A leaf: it knows nothing of the modules that consult it.

/// One safety mechanism switched off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// A retried manifest append no longer recognises its own segment
    /// (live or retired), so it commits it twice.
    NoDuplicateCheck,
    /// GC deletes unreferenced and retired objects of any age.
    GcIgnoresGrace,
    /// Compaction merges a range that does not start at the oldest
    /// segment, and drops tombstones.
    CompactionBeyondPrefix,
    /// The oldest version of an id wins instead of the newest.
    OldestWins,
    /// Manifest and config commits overwrite instead of compare-and-swap.
    NoCompareAndSwap,
    /// Writers commit segments of any age (no age bound, no check after a
    /// slow commit).
    NoAgeBound,
    /// The indexer retires covered segments from the partitions before it
    /// commits the index manifest that covers them.
    RetireBeforeIndexCommit,
    /// Readers keep shard rows that a newer tail record (an upsert or a
    /// delete) supersedes.
    NoShadowing,
    /// Moving shards to another routing keeps the rows their deletion
    /// vectors mark dead (superseded or deleted rows come back).
    MigrationResurrects,
    /// A reader's freshness check (one LIST of the manifests) counts every
    /// copy it holds as current, whatever ETag the listing shows.
    ListingTrustsAll,
    /// An indexer round over a prefix of a tail cuts it between segments
    /// sharing a seq (a compaction output and the segment it ended at),
    /// so the watermark covers a segment no round took.
    WatermarkSplitsSeq,
}

impl Mutation {
    #[cfg(any(test, feature = "test-util"))]
    pub const ALL: [Mutation; 11] = [
        Mutation::NoDuplicateCheck,
        Mutation::GcIgnoresGrace,
        Mutation::CompactionBeyondPrefix,
        Mutation::OldestWins,
        Mutation::NoCompareAndSwap,
        Mutation::NoAgeBound,
        Mutation::RetireBeforeIndexCommit,
        Mutation::NoShadowing,
        Mutation::MigrationResurrects,
        Mutation::ListingTrustsAll,
        Mutation::WatermarkSplitsSeq,
    ];

    /// The name `SHOAL_MUTATION` takes.
    #[cfg(any(test, feature = "test-util"))]
    pub fn name(self) -> &'static str {
        match self {
            Mutation::NoDuplicateCheck => "no-duplicate-check",
            Mutation::GcIgnoresGrace => "gc-ignores-grace",
            Mutation::CompactionBeyondPrefix => "compaction-beyond-prefix",
            Mutation::OldestWins => "oldest-wins",
            Mutation::NoCompareAndSwap => "no-compare-and-swap",
            Mutation::NoAgeBound => "no-age-bound",
            Mutation::RetireBeforeIndexCommit => "retire-before-index-commit",
            Mutation::NoShadowing => "no-shadowing",
            Mutation::MigrationResurrects => "migration-resurrects",
            Mutation::ListingTrustsAll => "listing-trusts-all",
            Mutation::WatermarkSplitsSeq => "watermark-splits-seq",
        }
    }
}

/// Whether `m` is switched on in this process (`SHOAL_MUTATION`, read
/// once; test builds only).
#[cfg(feature = "test-util")]
pub(crate) fn active(m: Mutation) -> bool {
    static ON: std::sync::OnceLock<Option<Mutation>> = std::sync::OnceLock::new();
    let on = ON.get_or_init(|| {
        let name = std::env::var("SHOAL_MUTATION").ok()?;
        let m = Mutation::ALL.into_iter().find(|m| m.name() == name);
        assert!(m.is_some(), "unknown SHOAL_MUTATION {name:?}");
        m
    });
    *on == Some(m)
}

/// Whether `m` is switched on: never, in a build without `test-util`.
#[cfg(not(feature = "test-util"))]
#[inline(always)]
pub(crate) fn active(_m: Mutation) -> bool {
    false
}

/// Test hook: with `SHOAL_TEST_HOOK=stop-before-commit` (test builds
/// only), a writer that has PUT a segment says so on stderr
/// (`HOOK stopped-before-commit <key>`) and stops there for good, before
/// its manifest commit, so a test can kill the process exactly between
/// the two.
pub(crate) async fn before_commit(segment: &str) {
    #[cfg(feature = "test-util")]
    if std::env::var("SHOAL_TEST_HOOK").is_ok_and(|h| h == "stop-before-commit") {
        eprintln!("HOOK stopped-before-commit {segment}");
        std::future::pending::<()>().await;
    }
    let _ = segment;
}
