//! The indexer under one routing (DESIGN section 12, issue 29): rounds
//! train a routing and write routed shards; newer versions and deletes
//! mark older rows dead through the shards' id indexes; merges keep rows
//! in their clusters and drop dead ones; shards of an older routing (or
//! with their own IVF) move to the current routing; a grown index gets a
//! new routing and the old one retires once no shard names it. Checked
//! against a model of what was written, shard by shard, and through a
//! fresh reader: searches (exact and approximate), gets, listings and
//! live counts over routed shards and the tails that shadow them.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use shoal::compact::indexer::{index_round, IndexOptions, IndexRound, MERGE_FANIN};
use shoal::coord::clock::{DynClock, SystemClock};
use shoal::coord::index_manifest::{read_index_manifest, IndexManifest};
use shoal::coord::{Metric, Settings};
use shoal::reader::{Consistency, Reader, ReaderOptions, SearchRequest};
use shoal::record::Record;
use shoal::segment::deletions::DeletionVector;
use shoal::segment::{load, Shape};
use shoal::store::{Counted, ObjectStore};

backend_tests!(
    routed_rounds_keep_every_live_row_exactly_once,
    a_budgeted_round_migrates_one_piece_and_the_next_round_sees_the_rest,
    growth_while_shards_move_trains_no_third_routing
);

const DIMS: usize = 12;

/// Rows around 40 centres, so a routing has structure to find.
fn vector(i: usize, version: usize) -> Vec<f32> {
    let mut x =
        (i as u64 * 2_654_435_761 + version as u64 * 97 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = || {
        x ^= x >> 29;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let centre = (i * 7 + version) % 40;
    (0..DIMS)
        .map(|j| if j == centre % DIMS { 4.0 + (centre / DIMS) as f32 } else { 0.0 } + 0.3 * next())
        .collect()
}

async fn round(store: &dyn ObjectStore, s: &Settings, routed: bool) -> IndexRound {
    let opts = IndexOptions {
        force: true,
        legacy: !routed,
        ..Default::default()
    };
    round_with(store, s, opts).await
}

async fn round_with(store: &dyn ObjectStore, s: &Settings, opts: IndexOptions) -> IndexRound {
    let clock: DynClock = Arc::new(SystemClock);
    index_round(store, s, "ix", &clock, opts)
        .await
        .expect("an indexer round")
}

async fn manifest(store: &dyn ObjectStore, s: &Settings) -> IndexManifest {
    read_index_manifest(store, s.partition_count)
        .await
        .unwrap()
        .unwrap()
        .0
}

/// Every live shard row (its deletion vector applied): id -> vector. An
/// id live twice fails.
async fn live_in_shards(store: &dyn ObjectStore, s: &Settings) -> BTreeMap<String, Vec<f32>> {
    let m = manifest(store, s).await;
    let shape = Shape {
        dimensions: DIMS,
        metric: s.metric(),
    };
    let mut out = BTreeMap::new();
    for shard in &m.shards {
        let seg = load(store, &shard.key, shape).await.unwrap();
        let dv = match &shard.deletions {
            Some(k) => {
                DeletionVector::decode(k, &store.get(k).await.unwrap().bytes, shard.rows).unwrap()
            }
            None => DeletionVector::new(shard.rows),
        };
        assert_eq!(dv.dead(), shard.dead, "{}", shard.key);
        for i in (0..seg.len()).filter(|i| !dv.is_dead(*i as u64)) {
            let prev = out.insert(seg.id(i).to_string(), seg.vector(i).to_vec());
            assert!(prev.is_none(), "{} live twice", seg.id(i));
        }
    }
    out
}

/// A fresh reader over the index answers as the model says: live count,
/// listing, gets (live and deleted ids), exact top-10s, and approximate
/// top-10s with recall >= 0.9.
async fn check_reader(
    store: &Arc<Counted>,
    s: &Settings,
    model: &BTreeMap<String, Vec<f32>>,
    deleted: &[String],
    when: &str,
) {
    let reader = Reader::new(
        common::dyn_store(store.clone()),
        s,
        ReaderOptions::default(),
    );
    assert_eq!(
        reader.warm().await.unwrap() as usize,
        model.len(),
        "{when}: live count"
    );
    let db = shoal::Db::open_store(store.clone(), shoal::OpenOptions::observer())
        .await
        .unwrap();
    let mut listed = Vec::new();
    for p in 0..s.partition_count {
        listed.extend(db.list_ids(p, Consistency::Strong).await.unwrap());
    }
    listed.sort();
    assert_eq!(
        listed,
        model.keys().cloned().collect::<Vec<_>>(),
        "{when}: listing"
    );
    for id in deleted.iter().take(10) {
        let got = reader.get_with(id, Consistency::Strong).await.unwrap();
        assert!(got.is_none(), "{when}: deleted {id} is back");
    }
    let (mut found, mut wanted) = (0, 0);
    for (id, v) in model.iter().step_by(model.len() / 25 + 1) {
        let got = reader.get_with(id, Consistency::Strong).await.unwrap();
        assert_eq!(got.map(|r| r.vector).as_ref(), Some(v), "{when}: get {id}");
        let q: Vec<f32> = v.iter().map(|x| x + 0.05).collect();
        let mut truth: Vec<(f32, &String)> = model
            .iter()
            .map(|(i, x)| (x.iter().zip(&q).map(|(a, b)| (a - b) * (a - b)).sum(), i))
            .collect();
        truth.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
        let truth: Vec<&String> = truth.iter().take(10).map(|t| t.1).collect();
        let mut req = SearchRequest::new(q, 10);
        req.consistency = Consistency::Strong;
        let ann = reader.search(&req).await.unwrap();
        assert!(!ann.partial, "{when}");
        found += ann
            .results
            .iter()
            .filter(|h| truth.contains(&&h.id))
            .count();
        wanted += truth.len();
        req.exact = true;
        let exact = reader.search(&req).await.unwrap();
        let ids: Vec<&String> = exact.results.iter().map(|h| &h.id).collect();
        assert_eq!(ids, truth, "{when}: exact top-10");
    }
    let recall = found as f64 / wanted as f64;
    assert!(recall >= 0.9, "{when}: recall {recall}");
}

async fn routed_rounds_keep_every_live_row_exactly_once(store: Arc<Counted>) {
    let s = common::create_index(store.as_ref(), 2, DIMS as u32, Metric::Euclidean).await;
    let w = common::writer(store.clone(), &s);
    let mut model: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let write = |recs: Vec<Record>, model: &mut BTreeMap<String, Vec<f32>>| {
        for r in &recs {
            model.insert(r.id.clone(), r.vector.clone());
        }
        recs
    };
    // A first index with shards of their own IVF (the layout before).
    let recs = write(
        (0..600)
            .map(|i| Record::new(format!("r{i}"), vector(i, 0)))
            .collect(),
        &mut model,
    );
    w.upsert(&recs).await.unwrap();
    round(store.as_ref(), &s, false).await;
    let m = manifest(store.as_ref(), &s).await;
    assert!(m.routings.is_empty() && m.shards.iter().all(|x| x.routing.is_none()));
    check_reader(&store, &s, &model, &[], "shards of their own IVF").await;

    // Routed rounds from now on: the first trains a routing, and the
    // legacy shard moves to it.
    let recs = write(
        (600..1500)
            .map(|i| Record::new(format!("r{i}"), vector(i, 0)))
            .collect(),
        &mut model,
    );
    w.upsert(&recs).await.unwrap();
    let r = round(store.as_ref(), &s, true).await;
    let m = manifest(store.as_ref(), &s).await;
    assert_eq!(m.version, 2);
    assert_eq!(m.routings.len(), 1, "{:?}", m.routings);
    let g1 = m.routings[0].generation;
    assert!(
        m.shards
            .iter()
            .all(|x| x.routing == Some(g1) && x.head_bytes.is_some()),
        "{r:?}"
    );
    assert!(!r.merged.is_empty(), "the legacy shard migrated: {r:?}");
    assert_eq!(live_in_shards(store.as_ref(), &s).await, model);
    check_reader(&store, &s, &model, &[], "routed").await;

    // Newer versions and deletes mark older rows dead through id indexes.
    let recs = write(
        (0..1500)
            .step_by(7)
            .map(|i| Record::new(format!("r{i}"), vector(i, 1)))
            .collect(),
        &mut model,
    );
    w.upsert(&recs).await.unwrap();
    let gone: Vec<String> = (3..1500)
        .step_by(11)
        .map(|i| format!("r{i}"))
        .filter(|id| !recs.iter().any(|r| &r.id == id))
        .collect();
    w.delete(&gone).await.unwrap();
    for id in &gone {
        model.remove(id);
    }
    // Not yet indexed: the tails shadow the routed rows.
    check_reader(&store, &s, &model, &gone, "tails over routed shards").await;
    let r = round(store.as_ref(), &s, true).await;
    assert_eq!(r.rows_killed as usize, recs.len() + gone.len(), "{r:?}");
    assert_eq!(live_in_shards(store.as_ref(), &s).await, model);
    check_reader(&store, &s, &model, &gone, "dead rows").await;

    // Rounds until a level holds MERGE_FANIN shards: they merge into one
    // routed shard of the same routing without the dead rows.
    let mut merged = false;
    for v in 2..2 + MERGE_FANIN {
        let recs = write(
            (0..1500)
                .step_by(13)
                .map(|i| Record::new(format!("r{i}"), vector(i, v)))
                .collect(),
            &mut model,
        );
        w.upsert(&recs).await.unwrap();
        merged |= !round(store.as_ref(), &s, true).await.merged.is_empty();
    }
    assert!(merged, "a level of {MERGE_FANIN} shards merged");
    check_reader(&store, &s, &model, &gone, "merged").await;
    let m = manifest(store.as_ref(), &s).await;
    assert!(
        m.shards
            .iter()
            .any(|x| x.level >= 1 && x.routing == Some(g1)),
        "{:?}",
        m.shards
    );
    assert_eq!(live_in_shards(store.as_ref(), &s).await, model);

    // The index outgrows its routing: a new one is trained, the shards
    // move to it, and the first retires.
    let n = 1500 + 4 * m.routings[0].trained_rows.max(1000) as usize;
    let recs = write(
        (1500..n)
            .map(|i| Record::new(format!("r{i}"), vector(i, 0)))
            .collect(),
        &mut model,
    );
    for chunk in recs.chunks(2000) {
        w.upsert(chunk).await.unwrap();
    }
    round(store.as_ref(), &s, true).await;
    let m = manifest(store.as_ref(), &s).await;
    assert_eq!(m.routings.len(), 1, "{:?}", m.routings);
    let g2 = m.routings[0].generation;
    assert!(g2 > g1);
    assert!(m.routings[0].clusters > 1);
    assert!(
        m.shards.iter().all(|x| x.routing == Some(g2)),
        "{:?}",
        m.shards
    );
    assert!(
        m.retired.iter().any(|r| r.key.contains("/routing/")),
        "{:?}",
        m.retired
    );
    assert_eq!(live_in_shards(store.as_ref(), &s).await, model);
    check_reader(&store, &s, &model, &gone, "second routing").await;

    // `verify` reads routings and routed shards: clean, then a damaged
    // routing object is named by its key.
    let v = common::verify(&store).await.unwrap();
    assert!(v.is_clean(), "{:?}", v.problems);
    assert_eq!(v.shard_rows as usize, model.len());
    let key = &m.routings[0].key;
    let mut bytes = store.get(key).await.unwrap().bytes.to_vec();
    let at = bytes.len() - 12;
    bytes[at] ^= 0x40;
    store.put(key, bytes.into()).await.unwrap();
    let v = common::verify(&store).await.unwrap();
    assert!(
        v.problems
            .iter()
            .any(|p| &p.key == key && p.message.contains("checksum")),
        "{:?}",
        v.problems
    );
}

/// Whether the shards hold exactly the model (a short message if not).
fn check_same(live: &BTreeMap<String, Vec<f32>>, model: &BTreeMap<String, Vec<f32>>, when: &str) {
    let missing = model.keys().filter(|k| !live.contains_key(*k)).count();
    let extra = live.keys().filter(|k| !model.contains_key(*k)).count();
    let differ = model
        .iter()
        .filter(|(k, v)| live.get(*k).is_some_and(|l| l != *v))
        .count();
    assert_eq!(
        (missing, extra, differ),
        (0, 0, 0),
        "{when}: missing, extra, different rows"
    );
}

/// A compactor's round has a row budget: moving shards to a new routing
/// stops once it is spent (one shard per round here), and a later round
/// that is not forced and has no tails sees the moves still due.
async fn a_budgeted_round_migrates_one_piece_and_the_next_round_sees_the_rest(store: Arc<Counted>) {
    let s = common::create_index(store.as_ref(), 2, DIMS as u32, Metric::Euclidean).await;
    let w = common::writer(store.clone(), &s);
    let mut model: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for b in 0..4 {
        let recs: Vec<Record> = (b * 300..b * 300 + 300)
            .map(|i| Record::new(format!("r{i}"), vector(i, 0)))
            .collect();
        for r in &recs {
            model.insert(r.id.clone(), r.vector.clone());
        }
        w.upsert(&recs).await.unwrap();
        if b < 3 {
            round(store.as_ref(), &s, false).await; // three shards with their own IVF
        }
    }
    let legacy = |m: &IndexManifest| m.shards.iter().filter(|x| x.routing.is_none()).count();
    assert_eq!(legacy(&manifest(store.as_ref(), &s).await), 3);
    // Two forced rounds with a budget of one row: each takes one
    // partition's tail and moves one shard to the routing.
    for left in [2, 1] {
        let opts = IndexOptions {
            force: true,
            max_rows: Some(1),
            ..Default::default()
        };
        let r = round_with(store.as_ref(), &s, opts).await;
        assert_eq!(r.merged.len(), 1, "{r:?}");
        assert_eq!(legacy(&manifest(store.as_ref(), &s).await), left);
    }
    check_same(
        &live_in_shards(store.as_ref(), &s).await,
        &model,
        "tails taken",
    );
    // Not forced, no tails: the move still due is work.
    let budget = IndexOptions {
        max_rows: Some(1),
        ..Default::default()
    };
    let r = round_with(store.as_ref(), &s, budget).await;
    assert_eq!(r.merged.len(), 1, "{r:?}");
    assert_eq!(legacy(&manifest(store.as_ref(), &s).await), 0);
    check_same(
        &live_in_shards(store.as_ref(), &s).await,
        &model,
        "all moved",
    );
    // Merges of the routed shards (a level of four now) follow, in
    // budgeted pieces too, until a round finds nothing to do.
    let mut quiet = false;
    for _ in 0..6 {
        let r = round_with(store.as_ref(), &s, budget).await;
        assert!(r.merged.len() <= 1, "{r:?}");
        if r.generation.is_none() {
            quiet = true;
            break;
        }
    }
    assert!(quiet, "rounds kept finding work");
    check_same(
        &live_in_shards(store.as_ref(), &s).await,
        &model,
        "after merges",
    );
}

/// While shards still move to the current routing (budgeted rounds move
/// one at a time), an index that doubles again keeps the current routing
/// rather than train a third: at most two routings are live, and a round
/// that listed a third could never commit.
async fn growth_while_shards_move_trains_no_third_routing(store: Arc<Counted>) {
    let s = common::create_index(store.as_ref(), 2, DIMS as u32, Metric::Euclidean).await;
    let w = common::writer(store.clone(), &s);
    let mut model: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let mut next = 0;
    let mut write = |n: usize, model: &mut BTreeMap<String, Vec<f32>>| {
        let recs: Vec<Record> = (next..next + n)
            .map(|i| Record::new(format!("r{i}"), vector(i, 0)))
            .collect();
        next += n;
        for r in &recs {
            model.insert(r.id.clone(), r.vector.clone());
        }
        recs
    };
    let budget = IndexOptions {
        force: true,
        max_rows: Some(1),
        ..Default::default()
    };
    // Two shards under a first routing.
    for n in [300, 200] {
        w.upsert(&write(n, &mut model)).await.unwrap();
        round(store.as_ref(), &s, true).await;
    }
    let m = manifest(store.as_ref(), &s).await;
    assert_eq!((m.routings.len(), m.shards.len()), (1, 2), "{m:?}");
    // The index doubles: a budgeted round trains a second routing and
    // moves one of the two shards.
    w.upsert(&write(600, &mut model)).await.unwrap();
    round_with(store.as_ref(), &s, budget).await;
    let m = manifest(store.as_ref(), &s).await;
    assert_eq!(m.routings.len(), 2, "shards still move: {m:?}");
    // It doubles again while they move: still two routings.
    for chunk in write(3000, &mut model).chunks(1000) {
        w.upsert(chunk).await.unwrap();
    }
    round_with(store.as_ref(), &s, budget).await;
    let m = manifest(store.as_ref(), &s).await;
    assert!(m.routings.len() <= 2, "{:?}", m.routings);
    // Unbudgeted rounds finish the move; then a third routing may come.
    for _ in 0..4 {
        round(store.as_ref(), &s, true).await;
    }
    check_same(
        &live_in_shards(store.as_ref(), &s).await,
        &model,
        "after the moves",
    );
    check_reader(&store, &s, &model, &[], "after the moves").await;
}
