//! Deterministic simulation (the SlateDB way): seeded scenarios over the
//! in-memory store behind a seeded fault injector, on a paused clock.
//! Every source of randomness comes from the seed: the workload, the
//! faults, CAS backoff jitter and segment keys (`coord::entropy`), and the
//! wall clock (simulated, starting at a fixed instant; objects are stamped
//! with it so GC judges ages in simulated time).
//!
//! Each step runs concurrently: up to three writers upserting or deleting
//! *overlapping* ids, a compaction, an indexer round (index shards,
//! DESIGN section 11), a GC (soon, or after up to 20 minutes of simulated
//! time) and eventual reads. The store injects transient
//! errors, conflicts, ambiguous writes (applied, answer lost) and long
//! pauses (a writer frozen for 20 minutes right after a segment PUT, while
//! GC runs). A write that fails is retried by the "client" until
//! acknowledged; the model keeps, per id, the acknowledged version with
//! the highest commit seq (from the write receipts). After every step:
//!
//! - `strong` exact search equals brute force over the model;
//! - `strong` gets return the newest acknowledged version, nothing deleted
//!   or never sent;
//! - every manifest names each segment once (live or retired) and every
//!   live segment exists; so does every shard and deletion vector the
//!   index manifest lists.
//!
//! At the end every id is checked. Same seed, same run: the determinism
//! test compares the full trace of store operations. The mutation checks
//! run the simulation against deliberately broken builds
//! (`shoal::mutation`) and fail unless each is caught within the seed
//! budget.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal::compact::gc::{gc, GcOptions};
use shoal::compact::indexer::{index_round, IndexOptions};
use shoal::compact::{compact_partition, CompactOptions};
use shoal::coord::cas::Backoff;
use shoal::coord::clock::{Clock, DynClock, TokioClock};
use shoal::coord::config::{initialize_partitions, load_or_create, update_config, IndexSettings};
use shoal::coord::index_manifest::read_index_manifest;
use shoal::coord::manifest::read_manifest;
use shoal::coord::{entropy, partition_of, Metric, RequestedSettings, Settings};
use shoal::index::distance;
use shoal::mutation::Mutation;
use shoal::reader::{Consistency, Reader, ReaderOptions, SearchRequest};
use shoal::record::Record;
use shoal::store::faults::{FaultConfig, Faulty};
use shoal::store::memory::MemoryStore;
use shoal::store::{Counted, DynStore};
use shoal::writer::{WriteReceipt, Writer, WriterOptions};

const DIMS: usize = 4;
const IDS: usize = 24;
const STEPS: usize = 60;
const PARTITIONS: u32 = 3;
/// Seeds every CI run checks (and the budget each mutation gets).
const SEEDS: u64 = 200;

/// Per id: the commit seq of the newest acknowledged version, and its
/// vector (`None`: deleted).
type Model = BTreeMap<String, (u64, Option<Vec<f32>>)>;

struct Sim {
    rng: StdRng,
    model: Model,
    /// Every vector ever sent, per id (acknowledged or not).
    sent: BTreeMap<String, Vec<Vec<f32>>>,
    writers: Vec<Writer>,
    readers: Vec<Reader>,
    store: DynStore,
    faulty: Arc<Faulty>,
    mem: DynStore,
    settings: Settings,
    clock: DynClock,
    trace: Vec<String>,
}

fn faults() -> FaultConfig {
    FaultConfig {
        transient: 0.05,
        conflict: 0.03,
        ambiguous: 0.03,
        max_latency_ms: 4,
        ignore_conditions: false,
        pause_after_segment_put: 0.03,
        pause: Duration::from_secs(20 * 60),
        record: true,
    }
}

async fn setup(seed: u64) -> Sim {
    entropy::seed_this_thread(Some(seed));
    let mem: DynStore = Arc::new(MemoryStore::unique());
    let start = UNIX_EPOCH + Duration::from_secs(1_790_000_000);
    let tokio_clock = Arc::new(TokioClock::starting_at(start));
    let clock: DynClock = tokio_clock.clone();
    let req = RequestedSettings {
        partition_count: Some(PARTITIONS),
        dimensions: Some(DIMS as u32),
        distance_metric: Some(Metric::Euclidean),
        ..Default::default()
    };
    let cfg = load_or_create(mem.as_ref(), &req, clock.as_ref())
        .await
        .unwrap();
    initialize_partitions(mem.as_ref(), clock.as_ref(), cfg)
        .await
        .unwrap();
    let cfg = update_config(mem.as_ref(), clock.as_ref(), |c| {
        c.settings.index = Some(IndexSettings {
            kind: shoal::vocab::AnnKind::Ivf,
            min_records: 8,
            compact_min_segments: 3,
            ..Default::default()
        });
        Ok(())
    })
    .await
    .unwrap();
    let stamp = tokio_clock.clone();
    let faulty = Arc::new(
        Faulty::new(mem.clone(), seed, faults()).with_clock(Arc::new(move || stamp.now())),
    );
    let store: Arc<Counted> = Arc::new(Counted::new(faulty.clone()));
    let opts = WriterOptions {
        backoff: Backoff {
            base: Duration::from_millis(1),
            max: Duration::from_millis(20),
            max_attempts: 8,
        },
        ..Default::default()
    };
    let writers = (0..3)
        .map(|i| {
            Writer::new(
                store.clone(),
                &cfg.settings,
                format!("w{i}"),
                clock.clone(),
                opts.clone(),
            )
        })
        .collect();
    let readers = (0..2)
        .map(|_| {
            Reader::new(
                store.clone(),
                &cfg.settings,
                ReaderOptions {
                    cache_bytes: 64 << 20,
                    // The caches' idle expiry runs on real time, which
                    // the paused clock does not hold: never let it fire
                    // mid-run, or two runs of one seed may differ.
                    cache_ttl: Duration::from_secs(365 * 24 * 3600),
                    ..Default::default()
                },
            )
        })
        .collect();
    Sim {
        rng: StdRng::seed_from_u64(seed),
        model: Model::new(),
        sent: BTreeMap::new(),
        writers,
        readers,
        store,
        faulty,
        mem,
        settings: cfg.settings,
        clock,
        trace: Vec::new(),
    }
}

/// Retries an operation the way a client would, until it is acknowledged.
async fn until_ok<T, E: std::fmt::Display, F, Fut>(what: &str, mut f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut last = String::new();
    for _ in 0..60 {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("{what} never succeeded: {last}"))
}

/// One client's batch: upserts (id, vector) or deletes (id, None).
type Batch = Vec<(String, Option<Vec<f32>>)>;

impl Sim {
    fn rand_vec(&mut self) -> Vec<f32> {
        (0..DIMS)
            .map(|_| self.rng.random_range(-1.0f32..1.0))
            .collect()
    }

    fn id(&mut self) -> String {
        format!("id{}", self.rng.random_range(0..IDS))
    }

    /// A batch of distinct ids (ids may overlap other clients' batches).
    fn batch(&mut self) -> Batch {
        let delete = self.rng.random_bool(0.25);
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for _ in 0..self.rng.random_range(1..=5) {
            let id = self.id();
            if seen.insert(id.clone()) {
                let v = (!delete).then(|| self.rand_vec());
                out.push((id, v));
            }
        }
        out
    }

    /// Records an acknowledged batch in the model: each id takes the
    /// version committed at the highest seq.
    fn acknowledge(&mut self, batch: &Batch, receipt: &WriteReceipt) -> Result<(), String> {
        for (id, v) in batch {
            let p = partition_of(id, PARTITIONS);
            let seq = receipt
                .segments
                .iter()
                .find(|c| c.partition == p)
                .ok_or_else(|| format!("receipt without partition {p}: {receipt:?}"))?
                .seq;
            let newer = self.model.get(id).is_none_or(|(s, _)| seq > *s);
            if newer {
                self.model.insert(id.clone(), (seq, v.clone()));
            }
        }
        Ok(())
    }

    /// One step: concurrent writers (overlapping ids), maybe a compaction,
    /// maybe a GC (soon or after a long while), maybe eventual reads.
    async fn step(&mut self) -> Result<(), String> {
        let n = self.rng.random_range(1..=3);
        let batches: Vec<Batch> = (0..n).map(|_| self.batch()).collect();
        for b in &batches {
            for (id, v) in b {
                if let Some(v) = v {
                    self.sent.entry(id.clone()).or_default().push(v.clone());
                }
            }
        }
        let compact = self.rng.random_bool(0.3).then(|| {
            (
                self.rng.random_range(0..PARTITIONS),
                self.rng.random_bool(0.5),
            )
        });
        let gc_after = self.rng.random_bool(0.3).then(|| {
            if self.rng.random_bool(0.5) {
                Duration::from_millis(self.rng.random_range(0..10))
            } else {
                Duration::from_secs(self.rng.random_range(0..20 * 60))
            }
        });
        let index = self.rng.random_bool(0.3);
        // Rounds that train a new routing move every shard to it (within
        // a row budget, one shard a round, or all at once).
        let retrain = self.rng.random_bool(0.5);
        let budget = self.rng.random_bool(0.3).then_some(1);
        // Unbudgeted rounds of a few records each, sometimes: several
        // commits, then their shards rewritten by cluster range.
        let round_rows = self
            .rng
            .random_bool(0.5)
            .then(|| self.rng.random_range(2..20));
        let reads = self.rng.random_bool(0.3);
        let fresh_reads = self.rng.random_bool(0.5);
        let query = self.rand_vec();
        self.trace.push(format!(
            "step {:?} compact={compact:?} index={index} retrain={retrain} budget={budget:?} gc_after={gc_after:?} reads={reads}",
            batches
                .iter()
                .map(|b| b.iter().map(|(id, v)| (id.clone(), v.is_some())).collect())
                .collect::<Vec<Vec<_>>>()
        ));
        let writes = batches.iter().zip(&self.writers).map(|(b, w)| async move {
            let upserts: Vec<Record> = b
                .iter()
                .filter_map(|(id, v)| Some(Record::new(id.clone(), v.clone()?)))
                .collect();
            let deletes: Vec<String> = b
                .iter()
                .filter(|(_, v)| v.is_none())
                .map(|(id, _)| id.clone())
                .collect();
            if deletes.is_empty() {
                until_ok("upsert", || w.upsert(&upserts)).await
            } else {
                until_ok("delete", || w.delete(&deletes)).await
            }
        });
        let (store, settings, clock) = (&self.store, &self.settings, &self.clock);
        let compaction = async move {
            if let Some((p, force)) = compact {
                // A failed compaction acknowledges nothing; it may be garbage.
                let opts = CompactOptions {
                    force,
                    upto_seq: None,
                };
                let _ =
                    compact_partition(store.as_ref(), settings, p, "compactor", clock, &opts).await;
            }
        };
        let indexing_done = std::cell::Cell::new(false);
        let indexing = async {
            if index {
                // A failed round may stop anywhere; the next one finishes
                // what it committed.
                let opts = IndexOptions {
                    force: true,
                    retrain,
                    max_rows: budget,
                    round_rows,
                    ..Default::default()
                };
                let _ = index_round(store.as_ref(), settings, "indexer", clock, opts).await;
            }
            indexing_done.set(true);
        };
        // DESIGN section 11, commit order, watched while the indexer runs:
        // read every partition manifest, then the index manifest; no
        // partition may have retired past the index's watermark. (Readers
        // heal such a window by reading the index manifest again, so only
        // an observer of the bare protocol sees it.)
        let mem = self.mem.clone();
        let observing = async {
            while index && !indexing_done.get() {
                let mut through = Vec::with_capacity(PARTITIONS as usize);
                for p in 0..PARTITIONS {
                    let m = read_manifest(mem.as_ref(), p)
                        .await
                        .map_err(|e| e.to_string())?;
                    through.push(m.map_or(0, |(m, _)| m.indexed_through));
                }
                let index = read_index_manifest(mem.as_ref(), PARTITIONS)
                    .await
                    .map_err(|e| e.to_string())?;
                if let Some((ix, _)) = index {
                    for (p, &t) in through.iter().enumerate() {
                        if t > ix.watermark(p as u32) {
                            return Err(format!(
                                "partition {p} retired through seq {t} while the index \
                                 manifest's watermark is {}",
                                ix.watermark(p as u32)
                            ));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok::<(), String>(())
        };
        let collection = async move {
            if let Some(after) = gc_after {
                tokio::time::sleep(after).await;
                // GC may hit an injected fault and give up; that deletes
                // nothing needed.
                let _ = gc(store.as_ref(), settings, clock, &GcOptions::default()).await;
            }
        };
        let reader = self.readers[0].clone();
        let reading = async move {
            if reads {
                let req = SearchRequest {
                    consistency: if fresh_reads {
                        Consistency::Bounded
                    } else {
                        Consistency::Eventual
                    },
                    max_staleness_ms: fresh_reads.then_some(0),
                    ..SearchRequest::new(query, 5)
                };
                // Concurrent reads must not fail for good or duplicate ids;
                // only transient errors are retried.
                let resp = until_ok("concurrent search", || async {
                    match reader.search(&req).await {
                        Err(e) if !e.is_retryable() => Ok(Err(e.to_string())),
                        other => other.map(Ok),
                    }
                })
                .await??;
                let ids: HashSet<&String> = resp.results.iter().map(|h| &h.id).collect();
                if ids.len() != resp.results.len() {
                    return Err(format!("duplicate ids in {:?}", resp.results));
                }
            }
            Ok(())
        };
        let (receipts, (), (), (), read, observed) = tokio::join!(
            futures::future::join_all(writes),
            compaction,
            indexing,
            collection,
            reading,
            observing
        );
        read?;
        observed?;
        for (b, r) in batches.iter().zip(receipts) {
            self.acknowledge(b, &r?)?;
        }
        Ok(())
    }

    /// Manifests name each segment once, and every live segment exists
    /// (read from the bare store, outside the fault injector and the trace).
    async fn check_structure(&self, step: usize) -> Result<(), String> {
        for p in 0..PARTITIONS {
            let (m, _) = read_manifest(self.mem.as_ref(), p)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("step {step}: partition {p} lost its manifest"))?;
            let mut seen = HashSet::new();
            let keys = m
                .segments
                .iter()
                .map(|s| &s.key)
                .chain(m.retired.iter().map(|r| &r.key));
            for key in keys {
                if !seen.insert(key) {
                    return Err(format!("step {step}: {key} is committed twice in p{p}"));
                }
            }
            for s in &m.segments {
                if self.mem.head(&s.key).await.is_err() {
                    return Err(format!("step {step}: {} is committed but gone", s.key));
                }
            }
        }
        let (index, _) = read_index_manifest(self.mem.as_ref(), PARTITIONS)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("step {step}: the index manifest is gone"))?;
        for key in index
            .shards
            .iter()
            .flat_map(|s| std::iter::once(&s.key).chain(s.deletions.as_ref()))
        {
            if self.mem.head(key).await.is_err() {
                return Err(format!("step {step}: {key} is in the index but gone"));
            }
        }
        Ok(())
    }

    async fn check_id(&self, reader: &Reader, id: &str, step: usize) -> Result<(), String> {
        let rec = until_ok("get", || reader.get_with(id, Consistency::Strong)).await?;
        let want = self.model.get(id).and_then(|(_, v)| v.as_ref());
        match (rec, want) {
            (None, None) => Ok(()),
            (Some(r), Some(v)) if &r.vector == v => Ok(()),
            (Some(r), None) => {
                let sent = self.sent.get(id).is_some_and(|s| s.contains(&r.vector));
                Err(format!(
                    "step {step}: {id} is {:?}, but it was deleted or never written ({})",
                    r.vector,
                    if sent {
                        "a value once sent"
                    } else {
                        "a value never sent"
                    }
                ))
            }
            (None, Some(_)) => Err(format!("step {step}: acknowledged {id} is missing")),
            (Some(r), Some(v)) => Err(format!(
                "step {step}: {id} is {:?}, newest acknowledged is {v:?}",
                r.vector
            )),
        }
    }

    /// Checks every invariant against the model.
    async fn check(&mut self, step: usize) -> Result<(), String> {
        self.check_structure(step).await?;
        let r = self.rng.random_range(0..self.readers.len());
        let q = self.rand_vec();
        let k = self.rng.random_range(1..=8);
        let reader = self.readers[r].clone();
        let req = SearchRequest {
            exact: true,
            consistency: Consistency::Strong,
            ..SearchRequest::new(q.clone(), k)
        };
        let resp = until_ok("search", || reader.search(&req)).await?;
        let got: Vec<String> = resp.results.iter().map(|h| h.id.clone()).collect();
        let mut want: Vec<(f32, &String)> = self
            .model
            .iter()
            .filter_map(|(id, (_, v))| Some((distance(Metric::Euclidean, &q, v.as_ref()?), id)))
            .collect();
        want.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        let want: Vec<String> = want.into_iter().take(k).map(|(_, id)| id.clone()).collect();
        if got != want {
            return Err(format!(
                "step {step}: search {got:?} != brute force {want:?}"
            ));
        }
        for _ in 0..3 {
            let id = self.id();
            self.check_id(&reader, &id, step).await?;
        }
        self.trace.push(format!("check {got:?}"));
        Ok(())
    }
}

/// What one seed did: the simulation's trace and the store's.
struct Run {
    steps: Vec<String>,
    store_ops: Vec<String>,
    pauses: u64,
}

/// Runs one seed; returns the traces, or the first invariant violation.
async fn run(seed: u64) -> Result<Run, String> {
    let mut sim = setup(seed).await;
    let result = async {
        for step in 0..STEPS {
            sim.step().await?;
            sim.check(step).await?;
        }
        let reader = sim.readers[1].clone();
        for i in 0..IDS {
            sim.check_id(&reader, &format!("id{i}"), STEPS).await?;
        }
        Ok::<_, String>(())
    }
    .await;
    entropy::seed_this_thread(None);
    if let Err(e) = result {
        if std::env::var("SHOAL_SIM_VERBOSE").is_ok() {
            for t in &sim.trace {
                eprintln!("  {t}");
            }
        }
        return Err(e);
    }
    let pauses = sim.faulty.injected.lock().unwrap().get("pause").copied();
    Ok(Run {
        steps: sim.trace,
        store_ops: sim.faulty.trace(),
        pauses: pauses.unwrap_or(0),
    })
}

fn replay_hint(seed: u64) -> String {
    format!(
        "replay with: SHOAL_SIM_SEED={seed} cargo test --test simulation replay_one_seed -- \
         --ignored --nocapture (add SHOAL_MUTATION=<name> for a broken build)"
    )
}

/// The simulation's tests take turns: each compares runs whose caches
/// expire on real time, and they would compete for the machine's cores
/// (`every_mutation_is_caught` runs eight processes).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `f` on a current-thread runtime with tokio's clock paused, once no
/// other simulation test is running.
fn one_at_a_time<F: std::future::Future>(f: F) -> F::Output {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn two_hundred_seeds_hold_every_invariant() {
    one_at_a_time(two_hundred_seeds())
}

async fn two_hundred_seeds() {
    let mut failures = Vec::new();
    let mut pauses = 0;
    for seed in 0..SEEDS {
        match run(seed).await {
            Ok(r) => pauses += r.pauses,
            Err(v) => failures.push(format!("seed {seed}: {v}\n  {}", replay_hint(seed))),
        }
    }
    assert!(
        failures.is_empty(),
        "invariant violations:\n{}",
        failures.join("\n")
    );
    assert!(pauses > 0, "the workload must freeze writers sometimes");
}

#[test]
fn the_same_seed_gives_the_same_run() {
    one_at_a_time(same_seed_same_run())
}

async fn same_seed_same_run() {
    for seed in [3, 17] {
        let a = run(seed).await.unwrap();
        let b = run(seed).await.unwrap();
        assert!(a.steps.len() > STEPS, "the trace records every step");
        assert!(
            a.store_ops.len() > 1000,
            "the store trace records every operation ({})",
            a.store_ops.len()
        );
        let first_difference = |x: &[String], y: &[String]| {
            let i = x.iter().zip(y).take_while(|(a, b)| a == b).count();
            format!("at {i}: {:?} vs {:?}", x.get(i), y.get(i))
        };
        assert!(
            a.steps == b.steps,
            "seed {seed}: the workload differs {}",
            first_difference(&a.steps, &b.steps)
        );
        // As a multiset: work on the CPU pools (decoding, scoring) finishes
        // in real time, so reads issued concurrently after it may reach
        // the store in another order; which operations, on which keys
        // (segment ids come from the seeded entropy), must not differ.
        let sorted = |ops: &[String]| {
            let mut v = ops.to_vec();
            v.sort();
            v
        };
        let (sa, sb) = (sorted(&a.store_ops), sorted(&b.store_ops));
        assert!(
            sa == sb,
            "seed {seed}: the store operations differ {}",
            first_difference(&sa, &sb)
        );
        assert_eq!(a.pauses, b.pauses);
    }
}

/// Each broken build must be caught within the seed budget: proof that the
/// simulation's checks can fail. Each runs in its own process (the switch
/// is process-wide) through the ignored `mutant_hunt` test.
#[test]
fn every_mutation_is_caught() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let exe = std::env::current_exe().unwrap();
    let mut missed = Vec::new();
    for m in Mutation::ALL {
        let out = std::process::Command::new(&exe)
            .args(["mutant_hunt", "--exact", "--ignored", "--nocapture"])
            .env("SHOAL_MUTATION", m.name())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        match text.lines().find(|l| l.starts_with("CAUGHT")) {
            Some(line) if out.status.success() => eprintln!("{}: {line}", m.name()),
            _ => missed.push(format!("{}:\n{text}", m.name())),
        }
    }
    assert!(
        missed.is_empty(),
        "broken builds the simulation did not catch:\n{}",
        missed.join("\n")
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
#[ignore = "run by every_mutation_is_caught with SHOAL_MUTATION set"]
async fn mutant_hunt() {
    let name = std::env::var("SHOAL_MUTATION").expect("set SHOAL_MUTATION");
    for seed in 0..SEEDS {
        if let Err(v) = run(seed).await {
            println!("CAUGHT {name} at seed {seed}: {v}");
            return;
        }
    }
    panic!("{SEEDS} seeds found no violation with {name}: the checks are blind to it");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
#[ignore = "replays one seed: SHOAL_SIM_SEED=N [SHOAL_MUTATION=name]"]
async fn replay_one_seed() {
    let seed: u64 = std::env::var("SHOAL_SIM_SEED")
        .expect("set SHOAL_SIM_SEED")
        .parse()
        .unwrap();
    match run(seed).await {
        Ok(r) => {
            for t in r.steps {
                println!("{t}");
            }
        }
        Err(v) => panic!("seed {seed}: {v}"),
    }
}
