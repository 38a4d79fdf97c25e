//! The indexer (DESIGN section 11, index shards): coverage (every record
//! of partition p at seq <= W[p] accounted for in the shards exactly once:
//! the newest version live in one shard row, everything else dead), the
//! watermark only moving forward, and racing indexers (one commit wins,
//! the other's shard is an orphan).

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use shoal::compact::indexer::{index_round, IndexOptions};
use shoal::coord::clock::{Clock, DynClock, ManualClock, SystemClock};
use shoal::coord::index_manifest::{read_index_manifest, IndexManifest};
use shoal::coord::manifest::read_manifest;
use shoal::coord::{Metric, Settings};
use shoal::record::Record;
use shoal::segment::deletions::DeletionVector;
use shoal::segment::{self, Shape};
use shoal::store::faults::WriteFaults;
use shoal::store::{Counted, ObjectStore};

backend_tests!(
    shards_cover_every_record_below_the_watermarks_exactly_once,
    racing_indexers_commit_once
);

const DIMS: u32 = 4;

/// The index manifest, which must exist.
async fn index_manifest(store: &dyn ObjectStore, partitions: u32) -> IndexManifest {
    read_index_manifest(store, partitions)
        .await
        .unwrap()
        .expect("the index manifest exists from init")
        .0
}

fn shape() -> Shape {
    Shape {
        dimensions: DIMS as usize,
        metric: Metric::Euclidean,
    }
}

fn vector(i: usize, version: usize) -> Vec<f32> {
    vec![i as f32, version as f32, 1.0, 0.5]
}

/// Live shard rows: id -> the vectors of its live rows (across shards).
async fn shard_rows(store: &dyn ObjectStore, s: &Settings) -> BTreeMap<String, Vec<Vec<f32>>> {
    let m = index_manifest(store, s.partition_count).await;
    let mut rows: BTreeMap<String, Vec<Vec<f32>>> = BTreeMap::new();
    for shard in &m.shards {
        let seg = segment::load(store, &shard.key, shape()).await.unwrap();
        assert_eq!(seg.len() as u64, shard.rows, "{}", shard.key);
        let dv = match &shard.deletions {
            Some(k) => {
                let bytes = store.get(k).await.unwrap().bytes;
                DeletionVector::decode(k, &bytes, shard.rows).unwrap()
            }
            None => DeletionVector::new(shard.rows),
        };
        assert_eq!(dv.dead(), shard.dead, "the manifest's dead count");
        for (i, id) in seg.ids().iter().enumerate() {
            if !dv.is_dead(i as u64) {
                rows.entry(id.clone())
                    .or_default()
                    .push(seg.vector(i).to_vec());
            }
        }
    }
    rows
}

/// Checks the shards against `model` (id -> newest live vector of every
/// record written, all of it indexed): every id live in exactly one shard
/// row, with its newest vector; deleted ids nowhere. And the partitions
/// retired what the shards cover: no segment at or below a watermark
/// remains, and each records the watermark it retired through.
async fn assert_covered(
    store: &dyn ObjectStore,
    s: &Settings,
    model: &BTreeMap<String, Vec<f32>>,
    when: &str,
) {
    let rows = shard_rows(store, s).await;
    for (id, vectors) in &rows {
        assert_eq!(
            vectors.len(),
            1,
            "{when}: {id} is live in {} shard rows",
            vectors.len()
        );
    }
    let got: BTreeMap<String, Vec<f32>> = rows
        .into_iter()
        .map(|(id, mut v)| (id, v.remove(0)))
        .collect();
    assert!(!model.is_empty());
    assert_eq!(
        &got, model,
        "{when}: the shards disagree with what was written"
    );
    let m = index_manifest(store, s.partition_count).await;
    for p in 0..s.partition_count {
        let (pm, _) = read_manifest(store, p).await.unwrap().unwrap();
        assert_eq!(pm.indexed_through, m.watermark(p), "{when}: p{p}");
        assert!(
            pm.segments.iter().all(|e| e.seq > m.watermark(p)),
            "{when}: p{p} still lists indexed segments: {:?}",
            pm.segments
        );
    }
}

/// The writes of a test, applied to a map as the index must see them.
#[derive(Default)]
struct Model(BTreeMap<String, Vec<f32>>);

impl Model {
    fn upsert(&mut self, recs: &[Record]) {
        for r in recs {
            self.0.insert(r.id.clone(), r.vector.clone());
        }
    }
    fn delete(&mut self, ids: &[String]) {
        for id in ids {
            self.0.remove(id);
        }
    }
}

async fn shards_cover_every_record_below_the_watermarks_exactly_once(store: Arc<Counted>) {
    let s = common::create_index(store.as_ref(), 4, DIMS, Metric::Euclidean).await;
    let w = common::writer(store.clone(), &s);
    let mut model = Model::default();
    let recs = |range: std::ops::Range<usize>, version: usize| -> Vec<Record> {
        range
            .map(|i| Record::new(format!("r{i}"), vector(i, version)))
            .collect()
    };
    let ids = |v: &[usize]| -> Vec<String> { v.iter().map(|i| format!("r{i}")).collect() };
    // Nothing to index yet: no commit.
    let r = common::index_now(store.as_ref(), &s).await;
    assert_eq!(r.generation, None, "{r:?}");

    for batch in [recs(0..120, 1), recs(100..130, 2)] {
        w.upsert(&batch).await.unwrap(); // newer versions of 100..119
        model.upsert(&batch);
    }
    w.delete(&ids(&[5, 6])).await.unwrap();
    model.delete(&ids(&[5, 6]));
    let written: Vec<(u32, u64)> = {
        let mut v = Vec::new();
        for p in 0..4 {
            let (pm, _) = read_manifest(store.as_ref(), p).await.unwrap().unwrap();
            v.push((p, pm.segments.last().map_or(0, |e| e.seq)));
        }
        v
    };
    let r = common::index_now(store.as_ref(), &s).await;
    assert_eq!(r.generation, Some(1), "{r:?}");
    assert_eq!(r.rows_out, 128, "130 ids, 2 deleted: {r:?}");
    assert_eq!(r.rows_killed, 0);
    assert_eq!(r.retired_partitions, 4, "{r:?}");
    assert_covered(store.as_ref(), &s, &model.0, "after the first round").await;
    let m = index_manifest(store.as_ref(), 4).await;
    for (p, last) in written {
        assert_eq!(
            m.watermark(p),
            last,
            "the watermark sits on p{p}'s last segment"
        );
    }

    // Newer versions and deletes of indexed ids, a re-added deleted id and
    // new ids: the older shard rows die.
    w.upsert(&recs(0..10, 3)).await.unwrap();
    model.upsert(&recs(0..10, 3));
    w.delete(&ids(&[50, 51, 52])).await.unwrap();
    model.delete(&ids(&[50, 51, 52]));
    let r5 = [Record::new("r5", vector(5, 4))];
    w.upsert(&r5).await.unwrap();
    model.upsert(&r5);
    w.upsert(&recs(200..220, 1)).await.unwrap();
    model.upsert(&recs(200..220, 1));
    let before = index_manifest(store.as_ref(), 4).await;
    let r = common::index_now(store.as_ref(), &s).await;
    assert_eq!(r.generation, Some(2), "{r:?}");
    // r0..r9 (r5, r6 were already dead) lose 8 rows, r50..r52 three.
    assert_eq!(r.rows_killed, 8 + 3, "{r:?}");
    assert_covered(store.as_ref(), &s, &model.0, "after the second round").await;
    let after = index_manifest(store.as_ref(), 4).await;
    for p in 0..4 {
        assert!(
            after.watermark(p) >= before.watermark(p),
            "watermarks only move forward"
        );
    }
    // r5 and r6 come back (version 3, r5 then 4), r50..r52 go, 20 are new.
    assert_eq!(after.live_rows(), 128 + 2 - 3 + 20);

    // A third round with deletes only writes deletion vectors, replacing
    // (and retiring) the previous ones.
    // (r0..r9 live in the second shard, r60..r64 in the first, which
    // already has a deletion vector.)
    let gone: Vec<String> = (0..10).chain(60..65).map(|i| format!("r{i}")).collect();
    w.delete(&gone).await.unwrap();
    model.delete(&gone);
    let r = common::index_now(store.as_ref(), &s).await;
    assert_eq!((r.rows_out, r.rows_killed), (0, 15), "{r:?}");
    assert_covered(store.as_ref(), &s, &model.0, "after deletes only").await;
    let m = index_manifest(store.as_ref(), 4).await;
    assert!(
        !m.retired.is_empty(),
        "replaced deletion vectors wait for GC"
    );
    assert!(m.lease.is_none(), "the lease is released");
}

/// Two indexers: the lease keeps the second out; one whose lease expired
/// while it worked loses the commit to the one that took over, and its
/// shard is an orphan, not a second copy of the rows.
async fn racing_indexers_commit_once(store: Arc<Counted>) {
    use std::sync::atomic::Ordering::SeqCst;
    let s = common::create_index(store.as_ref(), 2, DIMS, Metric::Euclidean).await;
    let w = common::writer(store.clone(), &s);
    let recs: Vec<Record> = (0..40)
        .map(|i| Record::new(format!("r{i}"), vector(i, 1)))
        .collect();
    w.upsert(&recs).await.unwrap();
    let mut model = Model::default();
    model.upsert(&recs);
    let gated = Arc::new(WriteFaults::new(store.clone(), "index/shards/"));
    gated.close_gate();
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let slow = tokio::spawn({
        let (gated, s, clock) = (gated.clone(), s.clone(), clock.clone() as DynClock);
        async move {
            index_round(
                gated.as_ref(),
                &s,
                "slow",
                &clock,
                IndexOptions {
                    force: true,
                    ..Default::default()
                },
            )
            .await
        }
    });
    while gated.waiting.load(SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // While "slow" holds the lease, another indexer stays out.
    let now: DynClock = clock.clone();
    let out = index_round(
        store.as_ref(),
        &s,
        "fast",
        &now,
        IndexOptions {
            force: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(out.lease_held_by.as_deref(), Some("slow"), "{out:?}");
    // Its lease expires; the other takes over and commits.
    clock.advance(Duration::from_secs(11 * 60));
    let fast = index_round(
        store.as_ref(),
        &s,
        "fast",
        &now,
        IndexOptions {
            force: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(fast.generation, Some(1), "{fast:?}");
    gated.open_gate(100);
    let slow = slow.await.unwrap().unwrap();
    assert!(slow.superseded && slow.generation.is_none(), "{slow:?}");
    let m = index_manifest(store.as_ref(), 2).await;
    assert_eq!(m.shards.len(), fast.shards_written.len());
    assert!(m
        .shards
        .iter()
        .all(|sh| !slow.shards_written.contains(&sh.key)));
    assert_covered(store.as_ref(), &s, &model.0, "after the race").await;
}

/// Tail compaction stays above the watermark: it merges the tail (the
/// segments above `W[p]`) and keeps its tombstones, which still hide the
/// shard rows of deleted ids. (Segments the index covers that the
/// partition has not retired yet: see
/// `a_compactor_finishes_a_dead_indexers_retirement_and_compacts_the_tail`.)
#[tokio::test]
async fn tail_compaction_stays_above_the_watermark_and_keeps_tombstones() {
    use shoal::compact::{compact_partition, CompactOptions, Outcome};
    use shoal::coord::manifest::{retire_indexed, CommitRules};
    let store = common::memory_store();
    let s = common::create_index(store.as_ref(), 1, DIMS, Metric::Euclidean).await;
    let w = common::writer(store.clone(), &s);
    let clock: DynClock = Arc::new(SystemClock);
    let recs: Vec<Record> = (0..10)
        .map(|i| Record::new(format!("r{i}"), vector(i, 1)))
        .collect();
    w.upsert(&recs).await.unwrap(); // seq 1
    w.upsert(&recs[..3]).await.unwrap(); // seq 2
    common::index_now(store.as_ref(), &s).await; // W = 2, retired
    w.delete(&["r4".into()]).await.unwrap(); // seq 3: hides a shard row
    w.upsert(&[Record::new("r20", vector(20, 1))])
        .await
        .unwrap(); // seq 4
                   // Retiring through a committed watermark again changes nothing.
    let rules = CommitRules::new(&s, SystemClock.now(), clock.as_ref(), Default::default());
    assert!(
        !retire_indexed(store.as_ref(), 0, 2, "2026-01-01T00:00:00Z", rules)
            .await
            .unwrap()
    );
    let opts = CompactOptions {
        force: true,
        upto_seq: None,
    };
    let out = compact_partition(store.as_ref(), &s, 0, "c", &clock, &opts)
        .await
        .unwrap();
    let Outcome::Compacted(r) = out else {
        panic!("{out:?}")
    };
    assert_eq!(
        (r.records_in, r.records_out),
        (2, 2),
        "r20 and r4's tombstone"
    );
    let (m, _) = read_manifest(store.as_ref(), 0).await.unwrap().unwrap();
    assert!(
        m.segments.iter().any(|e| e.tombstones == 1),
        "{:?}",
        m.segments
    );
    let got = common::get(&w, "r4").await.unwrap();
    assert!(
        got.is_none(),
        "the kept tombstone hides r4's shard row: {got:?}"
    );
    assert!(common::get(&w, "r5").await.unwrap().is_some());
}

/// An indexer running round after round in one process reads each
/// shard's ids once: a later round that supersedes rows fetches only the
/// small objects (manifests, the tail, a deletion vector), not the shards.
#[tokio::test]
async fn later_rounds_do_not_read_the_shards_again() {
    let store = common::memory_store();
    // Vectors large enough that the shards outweigh the manifests.
    let s = common::create_index(store.as_ref(), 2, 128, Metric::Euclidean).await;
    let vector = |i: usize, v: usize| -> Vec<f32> {
        (0..128)
            .map(|j| ((i * 7919 + v * 104_729 + j * 31) % 1000) as f32 / 1000.0)
            .collect()
    };
    let w = common::writer(store.clone(), &s);
    for round in 0..2 {
        let recs: Vec<Record> = (round * 300..round * 300 + 300)
            .map(|i| Record::new(format!("r{i}"), vector(i, 1)))
            .collect();
        w.upsert(&recs).await.unwrap();
        common::index_now(store.as_ref(), &s).await;
    }
    // Round 2 read shard 1 for its ids; round 3 (deletes only: no new
    // shard) reads shard 2's.
    w.delete(&["r1".into(), "r301".into()]).await.unwrap();
    common::index_now(store.as_ref(), &s).await;
    w.delete(&["r2".into(), "r302".into()]).await.unwrap();
    let m = index_manifest(store.as_ref(), 2).await;
    let shard_bytes: u64 = m.shards.iter().map(|s| s.bytes).sum();
    let counted = Arc::new(Counted::new(store.clone()));
    let r = common::index_now(counted.as_ref(), &s).await;
    assert_eq!(r.rows_killed, 2, "{r:?}");
    let read = counted.counts().bytes_read;
    assert!(
        read < shard_bytes / 2,
        "the round read {read} bytes; the shards hold {shard_bytes}"
    );
}

/// Three shards of 100 rows (fewer than a merge takes), each with a
/// deletion vector.
async fn three_shards_with_deletions() -> (Arc<dyn ObjectStore>, Settings) {
    let store: Arc<dyn ObjectStore> = common::memory_store();
    let s = common::create_index(store.as_ref(), 2, DIMS, Metric::Euclidean).await;
    let w = common::writer(store.clone(), &s);
    for shard in 0..3 {
        let recs: Vec<Record> = (shard * 100..shard * 100 + 100)
            .map(|i| Record::new(format!("r{i}"), vector(i, 1)))
            .collect();
        w.upsert(&recs).await.unwrap();
        common::index_now(store.as_ref(), &s).await;
    }
    w.delete(&["r0".into(), "r100".into(), "r200".into()])
        .await
        .unwrap();
    common::index_now(store.as_ref(), &s).await;
    let m = index_manifest(store.as_ref(), 2).await;
    assert_eq!(m.shards.len(), 3, "{:?}", m.shards);
    assert!(
        m.shards.iter().all(|s| s.deletions.is_some()),
        "{:?}",
        m.shards
    );
    (store, s)
}

/// Rewrites `ids` and indexes them through a counting store with a
/// latency: the rounds of requests that took, and the shard rows it
/// marked dead.
async fn supersede(store: Arc<dyn ObjectStore>, s: &Settings, ids: &[usize]) -> (u64, u64) {
    let recs: Vec<Record> = ids
        .iter()
        .map(|&i| Record::new(format!("r{i}"), vector(i, 2)))
        .collect();
    common::writer(store.clone(), s)
        .upsert(&recs)
        .await
        .unwrap();
    // A latency per request, so requests in flight together overlap (an
    // in-memory store would answer each before the next is sent).
    let counted = Counted::new(store).with_latency(Duration::from_millis(2));
    let r = common::index_now(&counted, s).await;
    (counted.rounds(), r.rows_killed)
}

/// A round whose batch supersedes rows in several shards searches their
/// id indexes, reads their deletion vectors and writes the new ones for
/// several shards at once: it takes no more rounds of requests (each a
/// round trip on S3) than one that supersedes a row of a single shard.
#[tokio::test]
async fn superseding_rows_in_many_shards_takes_no_more_rounds_than_in_one() {
    // Ids of one partition, so both rounds retire the same tails.
    let p = shoal::coord::partition_of("r1", 2);
    let in_shard = |shard: usize| {
        (shard * 100 + 1..shard * 100 + 100)
            .find(|i| shoal::coord::partition_of(&format!("r{i}"), 2) == p)
            .expect("an id of the partition")
    };
    let (one, s) = three_shards_with_deletions().await;
    let (rounds_one, killed) = supersede(one, &s, &[1]).await;
    assert_eq!(killed, 1);
    let (many, s) = three_shards_with_deletions().await;
    let (rounds_many, killed) = supersede(many, &s, &[1, in_shard(1), in_shard(2)]).await;
    assert_eq!(killed, 3, "a row in each shard");
    assert!(
        rounds_many <= rounds_one,
        "three shards took {rounds_many} rounds, one took {rounds_one}"
    );
}

/// A round with a row budget takes the tails of some partitions only,
/// starting where the index generation points, so rounds too small for
/// every tail still reach every partition in turn; the shards end up
/// covering everything exactly once, as one unbounded round would.
#[tokio::test]
async fn rounds_with_a_row_budget_reach_every_partition_in_turn() {
    let store = common::memory_store();
    let s = common::create_index(store.as_ref(), 4, DIMS, Metric::Euclidean).await;
    let w = common::writer(store.clone(), &s);
    let mut model = Model::default();
    let recs: Vec<Record> = (0..80)
        .map(|i| Record::new(format!("r{i}"), vector(i, 1)))
        .collect();
    w.upsert(&recs).await.unwrap();
    model.upsert(&recs);
    let clock: DynClock = Arc::new(SystemClock);
    let budget = IndexOptions {
        force: true,
        max_rows: Some(1),
        ..Default::default()
    };
    // Every partition keeps getting writes, so a walk that always started
    // at partition 0 would never leave it.
    let per_partition: Vec<String> = (0..4u32)
        .map(|p| {
            (0..)
                .map(|i| format!("k{i}"))
                .find(|id| shoal::coord::partition_of(id, 4) == p)
                .unwrap()
        })
        .collect();
    let mut rounds = Vec::new();
    for round in 0..4 {
        let more: Vec<Record> = per_partition
            .iter()
            .map(|id| Record::new(id.clone(), vector(round, 2)))
            .collect();
        w.upsert(&more).await.unwrap();
        model.upsert(&more);
        let r = index_round(store.as_ref(), &s, "ix", &clock, budget)
            .await
            .unwrap();
        assert_eq!(r.advanced.len(), 1, "one partition's tail per round: {r:?}");
        assert!(r.records_in < 80, "{r:?}");
        rounds.push(*r.advanced.keys().next().unwrap());
    }
    rounds.sort();
    assert_eq!(rounds, vec![0, 1, 2, 3], "every partition in turn");
    // A round takes a prefix of one tail up to the budget (a segment at
    // least); more rounds take the rest, until a round finds nothing.
    let mut more_rounds = 0;
    loop {
        let r = index_round(store.as_ref(), &s, "ix", &clock, budget)
            .await
            .unwrap();
        if r.advanced.is_empty() {
            break;
        }
        assert_eq!(r.advanced.len(), 1, "{r:?}");
        more_rounds += 1;
        assert!(more_rounds < 40, "the budgeted rounds never finish");
    }
    assert_covered(store.as_ref(), &s, &model.0, "after the budgeted rounds").await;
}

/// Issue 28 F6 (a): an indexer killed between its index-manifest commit
/// and retiring the covered segments. The committed watermark says what
/// the shards cover, and retiring through it is idempotent, so any
/// compactor finishes the retirement without the indexer lease and then
/// compacts the tail. (Before, compaction refused the partition, its
/// oldest segments being at or below `W[p]`, until an indexer could run
/// again, and the manifest grew with every write meanwhile.)
#[tokio::test]
async fn a_compactor_finishes_a_dead_indexers_retirement_and_compacts_the_tail() {
    use shoal::compact::{compact_partition, CompactOptions, Outcome};
    use std::sync::atomic::Ordering::SeqCst;
    let store = common::memory_store();
    let s = common::create_index(store.as_ref(), 1, DIMS, Metric::Euclidean).await;
    let w = common::writer(store.clone(), &s);
    let mut model = Model::default();
    let recs = |n: usize, version: usize| -> Vec<Record> {
        (0..n)
            .map(|i| Record::new(format!("r{i}"), vector(i, version)))
            .collect()
    };
    for v in 1..=3 {
        w.upsert(&recs(10, v)).await.unwrap(); // seq 1..3
        model.upsert(&recs(10, v));
    }
    // The indexer's partition-manifest writes wait at a gate: it commits
    // the index manifest, reaches the retirement and is killed there.
    let gated = Arc::new(WriteFaults::new(store.clone(), "_brainy/manifests/p"));
    gated.close_gate();
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let dyn_clock: DynClock = clock.clone();
    let force = IndexOptions {
        force: true,
        ..Default::default()
    };
    let dead = tokio::spawn({
        let (gated, s, clock) = (gated.clone(), s.clone(), dyn_clock.clone());
        async move { index_round(gated.as_ref(), &s, "dead", &clock, force).await }
    });
    while gated.waiting.load(SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    dead.abort();
    assert!(dead.await.unwrap_err().is_cancelled());
    let m = index_manifest(store.as_ref(), 1).await;
    assert_eq!(m.watermark(0), 3, "the index manifest was committed");
    let (pm, _) = read_manifest(store.as_ref(), 0).await.unwrap().unwrap();
    assert_eq!(
        (pm.indexed_through, pm.segments.len()),
        (0, 3),
        "not retired"
    );
    // Writes go on: eight tail segments, one of them a delete that hides
    // a shard row. Eleven segments: the policy wants a compaction.
    for v in 4..=10 {
        w.upsert(&recs(5, v)).await.unwrap();
        model.upsert(&recs(5, v));
    }
    w.delete(&["r7".into()]).await.unwrap();
    model.delete(&["r7".into()]);
    // A compactor (no lease; the dead indexer's has not expired) on the
    // policy's say.
    let out = compact_partition(
        store.as_ref(),
        &s,
        0,
        "compactor",
        &dyn_clock,
        &CompactOptions::default(),
    )
    .await
    .unwrap();
    let Outcome::Compacted(r) = out else {
        panic!("compaction refused a partition the index covers but has not retired: {out:?}")
    };
    assert_eq!(r.inputs, 8, "the whole tail, nothing at or below W: {r:?}");
    let (pm, _) = read_manifest(store.as_ref(), 0).await.unwrap().unwrap();
    assert_eq!(pm.indexed_through, 3, "retired through the watermark");
    assert!(
        pm.segments.iter().all(|e| e.seq > 3) && pm.segments.len() <= 2,
        "{:?}",
        pm.segments
    );
    for (id, v) in &model.0 {
        let got = common::get(&w, id).await.unwrap();
        assert_eq!(got.map(|g| g.vector).as_ref(), Some(v), "{id}");
    }
    assert!(common::get(&w, "r7").await.unwrap().is_none());
    assert!(common::verify(&store).await.unwrap().is_clean());
    // The next indexer round, once the dead one's lease has expired,
    // covers everything exactly once.
    clock.advance(Duration::from_secs(11 * 60));
    let r = index_round(store.as_ref(), &s, "ix", &dyn_clock, force)
        .await
        .unwrap();
    assert!(r.generation.is_some(), "{r:?}");
    assert_covered(store.as_ref(), &s, &model.0, "after the next round").await;
}

/// Issue 28 F6 (b): the indexer lease is short and renewed by its
/// holder while it works. A holder that is alive (here held at a gate
/// for eleven minutes, longer than any lease) keeps it; one killed
/// mid-round stops renewing, and another indexer takes over within about
/// a minute. (Before, the lease ran ten minutes unrenewed: a live holder
/// lost it after ten minutes, a dead one blocked every indexer that
/// long.)
#[tokio::test(start_paused = true)]
async fn a_live_indexer_keeps_its_lease_and_a_killed_ones_expires_within_a_minute() {
    use shoal::coord::clock::TokioClock;
    use std::sync::atomic::Ordering::SeqCst;
    let store = common::memory_store();
    let s = common::create_index(store.as_ref(), 2, DIMS, Metric::Euclidean).await;
    let w = common::writer(store.clone(), &s);
    let recs: Vec<Record> = (0..40)
        .map(|i| Record::new(format!("r{i}"), vector(i, 1)))
        .collect();
    w.upsert(&recs).await.unwrap();
    let mut model = Model::default();
    model.upsert(&recs);
    let gated = Arc::new(WriteFaults::new(store.clone(), "index/shards/"));
    gated.close_gate();
    let clock: DynClock = Arc::new(TokioClock::new());
    let force = IndexOptions {
        force: true,
        ..Default::default()
    };
    let slow = tokio::spawn({
        let (gated, s, clock) = (gated.clone(), s.clone(), clock.clone());
        async move { index_round(gated.as_ref(), &s, "slow", &clock, force).await }
    });
    while gated.waiting.load(SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Alive and working (its shard PUT is slow): eleven minutes on, it
    // still holds the lease.
    tokio::time::sleep(Duration::from_secs(11 * 60)).await;
    let out = index_round(store.as_ref(), &s, "fast", &clock, force)
        .await
        .unwrap();
    assert_eq!(
        out.lease_held_by.as_deref(),
        Some("slow"),
        "a live holder lost its lease: {out:?}"
    );
    // Killed: nobody renews or releases its lease. A minute later another
    // indexer takes over and commits.
    slow.abort();
    assert!(slow.await.unwrap_err().is_cancelled());
    tokio::time::sleep(Duration::from_secs(61)).await;
    let fast = index_round(store.as_ref(), &s, "fast", &clock, force)
        .await
        .unwrap();
    assert_eq!(fast.lease_held_by, None, "{fast:?}");
    assert_eq!(fast.generation, Some(1), "{fast:?}");
    assert_covered(store.as_ref(), &s, &model.0, "after the takeover").await;
    let m = index_manifest(store.as_ref(), 2).await;
    assert!(m.lease.is_none(), "released when the round ended");
}

/// Issue 28 F4/F5: a damaged object stops indexing only where it is. A
/// corrupt tail segment keeps its partition's tail (and watermark) whole,
/// an unparsable manifest its partition's, a shard whose ids cannot be
/// read gets no deletions; every other partition is indexed as usual and
/// the round names what it could not read.
#[tokio::test]
async fn a_damaged_segment_manifest_or_shard_stops_indexing_only_where_it_is() {
    let store = common::memory_store();
    let s = common::create_index(store.as_ref(), 4, DIMS, Metric::Euclidean).await;
    let w = common::writer(store.clone(), &s);
    let first: Vec<Record> = (0..40)
        .map(|i| Record::new(format!("r{i}"), vector(i, 1)))
        .collect();
    w.upsert(&first).await.unwrap();
    let r = common::index_now(store.as_ref(), &s).await;
    let shard = r.shards_written[0].clone();
    // New tails in every partition; then damage one tail segment, one
    // partition manifest and the shard.
    let next: Vec<Record> = (0..40)
        .map(|i| Record::new(format!("r{i}"), vector(i, 2)))
        .collect();
    w.upsert(&next).await.unwrap();
    let (m1, _) = read_manifest(store.as_ref(), 1).await.unwrap().unwrap();
    let tail = m1.segments.last().unwrap().clone();
    let seg = tail.key.clone();
    // The middle of partition 1's own section (the write is one batch
    // object holding every partition's section).
    let section = tail.section.expect("a batch write");
    let middle = (section.offset + section.length / 2) as usize;
    let flip = |key: String, at: Result<usize, usize>| {
        let store = store.clone();
        async move {
            let mut b = store.get(&key).await.unwrap().bytes.to_vec();
            let at = at.unwrap_or_else(|from_end| b.len() - from_end);
            b[at] ^= 0xff;
            store.put(&key, b.into()).await.unwrap();
        }
    };
    flip(seg.clone(), Ok(middle)).await;
    // A shard's id index is its last part, before the 8-byte end magic.
    flip(shard.clone(), Err(12)).await;
    let bad_manifest = "_brainy/manifests/p002.json";
    store
        .put(bad_manifest, bytes::Bytes::from_static(b"{oops"))
        .await
        .unwrap();
    let before = index_manifest(store.as_ref(), 4).await;
    let r = common::index_now(store.as_ref(), &s).await;
    let named = |k: &str| r.unreadable.iter().any(|u| u.contains(k));
    assert!(named(&seg), "{r:?}");
    assert!(named(bad_manifest), "{r:?}");
    assert!(named(&shard), "{r:?}");
    let after = index_manifest(store.as_ref(), 4).await;
    for p in [1, 2] {
        assert_eq!(
            after.watermark(p),
            before.watermark(p),
            "partition {p} stays put"
        );
    }
    for p in [0, 3] {
        assert!(
            after.watermark(p) > before.watermark(p),
            "partition {p} is indexed: {r:?}"
        );
    }
}

/// Issue 29, item 5 (the indexer's memory): a call without a row budget
/// (a forced round) runs as rounds of at most `round_rows` records, each
/// its own commit, until the tails are empty; the routing is sized for
/// every tail at the first, so the whole build stays on one routing; and
/// newest-wins holds across the rounds (versions and deletes landing in
/// later rounds than the rows they supersede).
#[tokio::test]
async fn a_round_without_a_budget_runs_as_bounded_rounds_on_one_routing() {
    let store = common::memory_store();
    let s = common::create_index(store.as_ref(), 4, DIMS, Metric::Euclidean).await;
    let w = common::writer(store.clone(), &s);
    let mut model = Model::default();
    for batch in 0..10 {
        let recs: Vec<Record> = (0..200)
            .map(|i| {
                // Later batches rewrite some earlier ids.
                let id = if i % 5 == 0 && batch > 0 {
                    (batch - 1) * 200 + i
                } else {
                    batch * 200 + i
                };
                Record::new(format!("r{id}"), vector(id, batch))
            })
            .collect();
        w.upsert(&recs).await.unwrap();
        model.upsert(&recs);
        if batch % 3 == 2 {
            let gone: Vec<String> = (0..20)
                .map(|i| format!("r{}", batch * 200 + i * 7 + 1))
                .collect();
            w.delete(&gone).await.unwrap();
            model.delete(&gone);
        }
    }
    let clock: DynClock = Arc::new(SystemClock);
    let opts = IndexOptions {
        force: true,
        round_rows: Some(300),
        ..Default::default()
    };
    let r = index_round(store.as_ref(), &s, "ix", &clock, opts)
        .await
        .unwrap();
    assert!(r.records_in >= 2000, "{r:?}");
    let m = index_manifest(store.as_ref(), s.partition_count).await;
    assert!(
        m.generation >= 6,
        "about 2,060 records in rounds of at most 300 (and a segment): generation {}",
        m.generation
    );
    assert_eq!(m.routings.len(), 1, "one routing, sized for every tail");
    // The rounds' shards (each with rows of every cluster) are rewritten
    // as shards of disjoint cluster ranges: here, all fit one.
    assert_eq!(m.shards.len(), 1, "{:?}", m.shards);
    let mut seen = std::collections::BTreeSet::new();
    for shard in &m.shards {
        let bytes = store.get(&shard.key).await.unwrap().bytes;
        for c in segment::routed_clusters(&shard.key, &bytes).unwrap() {
            assert!(seen.insert(c), "cluster {c} in two shards");
        }
    }
    assert_covered(
        store.as_ref(),
        &s,
        &model.0,
        "after one call without a budget",
    )
    .await;
}
