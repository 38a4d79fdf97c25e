//! Coordination on every backend: config creation races, contradictions,
//! heartbeats, stale-instance cleanup, clean shutdown.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shoal::coord::clock::{Clock, DynClock, ManualClock, SystemClock};
use shoal::coord::config::{change_settings, read_config, update_config};
use shoal::coord::instance::list_records;
use shoal::coord::paths::{CONFIG_KEY, INSTANCES_PREFIX};
use shoal::coord::role::RoleEnv;
use shoal::coord::{Cluster, CoordError, JoinOptions, Metric, RequestedSettings, Role};
use shoal::store::{Counted, ObjectStore};

backend_tests!(
    eight_concurrent_joins_create_one_config,
    joiner_with_other_dimensions_is_refused_and_writes_nothing,
    joiner_without_settings_adopts_the_buckets,
    heartbeats_advance_and_writers_remove_silent_instances,
    fifty_instances_heartbeating_lose_no_updates,
    leave_removes_the_record,
    corrupt_config_is_reported_with_its_key,
    concurrent_config_updates_all_apply_and_keep_unknown_fields,
    shape_settings_cannot_change_once_data_exists,
    invalid_role_env_is_refused_before_anything_is_written,
    a_writer_creates_every_manifest_and_upgrades_an_older_index_once,
    an_index_from_before_the_manifests_moved_reads_the_same_and_moves_once,
);

fn settings(dims: u32) -> RequestedSettings {
    RequestedSettings {
        partition_count: Some(16),
        dimensions: Some(dims),
        distance_metric: Some(Metric::Cosine),
        embedding_model: Some("all-MiniLM-L6-v2".into()),
        instance_timeout_seconds: None,
        text_fields: None,
    }
}

fn opts(clock: &Arc<ManualClock>, role: Option<Role>, settings: RequestedSettings) -> JoinOptions {
    JoinOptions {
        settings,
        role,
        instance_id: None,
        background_heartbeat: false,
        clock: clock.clone() as DynClock,
        env: RoleEnv::default(),
        ..Default::default()
    }
}

fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(SystemClock.now()))
}

async fn instance_keys(store: &Counted) -> Vec<String> {
    store
        .list(INSTANCES_PREFIX)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect()
}

async fn eight_concurrent_joins_create_one_config(store: Arc<Counted>) {
    let clock = manual_clock();
    let joins: Vec<_> = (0..8)
        .map(|_| {
            let (s, o) = (store.clone(), opts(&clock, None, settings(384)));
            tokio::spawn(async move { Cluster::join(s, o).await })
        })
        .collect();
    let mut clusters = Vec::new();
    for j in joins {
        clusters.push(j.await.unwrap().expect("join"));
    }
    let configs = store.list("_brainy/config").await.unwrap();
    assert_eq!(configs.len(), 1, "exactly one config object: {configs:?}");
    let (stored, _) = read_config(store.as_ref()).await.unwrap().unwrap();
    for c in &clusters {
        assert_eq!(
            c.config().settings,
            stored.settings,
            "every instance agrees"
        );
    }
    assert_eq!(stored.settings.dimensions, 384);
    assert_eq!(stored.settings.partition_count, 16);
    assert_eq!(
        instance_keys(&store).await.len(),
        8,
        "one record per instance"
    );
    let mut ids: Vec<String> = Vec::new();
    for c in &clusters {
        ids.push(c.instance_id().to_string());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 8, "instance ids are unique");
}

async fn joiner_with_other_dimensions_is_refused_and_writes_nothing(store: Arc<Counted>) {
    let clock = manual_clock();
    let _first = Cluster::join(store.clone(), opts(&clock, None, settings(384)))
        .await
        .unwrap();
    let before = instance_keys(&store).await;
    let puts = store.counts().put;
    let err = Cluster::join(store.clone(), opts(&clock, None, settings(768)))
        .await
        .err()
        .expect("a joiner with 768 dimensions must be refused");
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            CoordError::Contradiction {
                setting: "dimensions",
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("384") && msg.contains("768"),
        "names both values: {msg}"
    );
    assert_eq!(
        instance_keys(&store).await,
        before,
        "no instance record written"
    );
    let (cfg, _) = read_config(store.as_ref()).await.unwrap().unwrap();
    assert_eq!(cfg.settings.dimensions, 384);
    assert_eq!(store.counts().put, puts, "a refused joiner writes nothing");
}

async fn joiner_without_settings_adopts_the_buckets(store: Arc<Counted>) {
    let clock = manual_clock();
    let mut first = settings(128);
    first.partition_count = Some(8);
    first.distance_metric = Some(Metric::Dot);
    Cluster::join(store.clone(), opts(&clock, None, first))
        .await
        .unwrap();
    let c = Cluster::join(
        store.clone(),
        opts(&clock, None, RequestedSettings::default()),
    )
    .await
    .unwrap();
    assert_eq!(c.config().settings.partition_count, 8);
    assert_eq!(c.config().settings.dimensions, 128);
    assert_eq!(c.config().settings.metric(), Metric::Dot);
}

async fn heartbeats_advance_and_writers_remove_silent_instances(store: Arc<Counted>) {
    let clock = manual_clock();
    let writer = Cluster::join(store.clone(), opts(&clock, Some(Role::Writer), settings(8)))
        .await
        .unwrap();
    let reader = Cluster::join(store.clone(), opts(&clock, Some(Role::Reader), settings(8)))
        .await
        .unwrap();
    let reader_id = reader.instance_id().to_string();
    let first = reader.record().await.last_heartbeat;
    clock.advance(Duration::from_secs(10));
    reader.heartbeat_now().await.unwrap();
    let recs = list_records(store.as_ref()).await.unwrap();
    let stored = recs.iter().find(|r| r.instance_id == reader_id).unwrap();
    assert!(
        stored.last_heartbeat > first,
        "heartbeat advanced lastHeartbeat"
    );
    assert_eq!(stored.heartbeat_seq, 2);
    assert_eq!(writer.live_instances().await.unwrap().len(), 2);

    // The reader goes silent (crash: no leave). The writer keeps beating.
    for _ in 0..6 {
        clock.advance(Duration::from_secs(10));
        writer.heartbeat_now().await.unwrap();
    }
    // 60 s after its last heartbeat: no longer alive ...
    let live: Vec<String> = writer
        .live_instances()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.instance_id)
        .collect();
    assert!(
        !live.contains(&reader_id),
        "silent instance still alive: {live:?}"
    );
    // ... and the writer's cleanup (due every half timeout) removes it.
    clock.advance(Duration::from_secs(30));
    writer.heartbeat_now().await.unwrap();
    let keys = instance_keys(&store).await;
    assert_eq!(keys.len(), 1, "stale record removed: {keys:?}");
    assert!(keys[0].contains(&writer.instance_id().to_string()));
}

async fn fifty_instances_heartbeating_lose_no_updates(store: Arc<Counted>) {
    let clock = manual_clock();
    let mut clusters = Vec::new();
    for i in 0..50 {
        let role = if i == 0 { Role::Writer } else { Role::Reader };
        let mut o = opts(&clock, Some(role), settings(8));
        o.probe = i == 0; // one probe is enough for one store
        clusters.push(Arc::new(Cluster::join(store.clone(), o).await.unwrap()));
    }
    let tasks: Vec<_> = clusters
        .iter()
        .cloned()
        .map(|c| {
            tokio::spawn(async move {
                for _ in 0..20 {
                    c.heartbeat_now().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let recs = list_records(store.as_ref()).await.unwrap();
    assert_eq!(recs.len(), 50, "every record present");
    for c in &clusters {
        let mine = c.record().await;
        let stored = recs
            .iter()
            .find(|r| r.instance_id == mine.instance_id)
            .unwrap();
        assert_eq!(stored.heartbeat_seq, 21, "registration + 20 heartbeats");
        assert_eq!(stored, &mine, "stored record is the latest one written");
    }
}

async fn leave_removes_the_record(store: Arc<Counted>) {
    let clock = manual_clock();
    let a = Cluster::join(store.clone(), opts(&clock, None, settings(8)))
        .await
        .unwrap();
    let b = Cluster::join(store.clone(), opts(&clock, None, settings(8)))
        .await
        .unwrap();
    let b_id = b.instance_id().to_string();
    assert_eq!(instance_keys(&store).await.len(), 2);
    a.leave().await.unwrap();
    let keys = instance_keys(&store).await;
    assert_eq!(keys.len(), 1);
    assert!(keys[0].contains(&b_id));
}

async fn corrupt_config_is_reported_with_its_key(store: Arc<Counted>) {
    let clock = manual_clock();
    store
        .put(CONFIG_KEY, Bytes::from_static(b"not json at all"))
        .await
        .unwrap();
    let err = Cluster::join(store.clone(), opts(&clock, None, settings(8)))
        .await
        .err()
        .expect("corrupt config must fail the join");
    let msg = err.to_string();
    assert!(
        msg.contains(CONFIG_KEY) && msg.contains("not json at all"),
        "{msg}"
    );
    assert!(instance_keys(&store).await.is_empty());
}

async fn concurrent_config_updates_all_apply_and_keep_unknown_fields(store: Arc<Counted>) {
    let clock = manual_clock();
    Cluster::join(store.clone(), opts(&clock, None, settings(8)))
        .await
        .unwrap();
    // A newer shoal added fields this version does not know.
    let mut raw: serde_json::Value =
        serde_json::from_slice(&store.get(CONFIG_KEY).await.unwrap().bytes).unwrap();
    raw["settings"]["newerSetting"] = serde_json::json!("keep me");
    raw["newerTopLevel"] = serde_json::json!({"a": 1});
    store
        .put(CONFIG_KEY, Bytes::from(serde_json::to_vec(&raw).unwrap()))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (s, c) = (store.clone(), clock.clone());
            tokio::spawn(async move {
                update_config(s.as_ref(), c.as_ref(), |cfg| {
                    cfg.settings
                        .extra
                        .insert(format!("writer{i}"), serde_json::json!(i));
                    Ok(())
                })
                .await
                .unwrap()
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let raw: serde_json::Value =
        serde_json::from_slice(&store.get(CONFIG_KEY).await.unwrap().bytes).unwrap();
    for i in 0..8 {
        assert_eq!(
            raw["settings"][format!("writer{i}")],
            i,
            "update {i} was lost"
        );
    }
    assert_eq!(raw["settings"]["newerSetting"], "keep me");
    assert_eq!(raw["newerTopLevel"]["a"], 1);
}

async fn shape_settings_cannot_change_once_data_exists(store: Arc<Counted>) {
    let clock = manual_clock();
    Cluster::join(store.clone(), opts(&clock, None, settings(8)))
        .await
        .unwrap();
    let change = RequestedSettings {
        dimensions: Some(16),
        ..Default::default()
    };
    // No data yet: allowed.
    let cfg = change_settings(store.as_ref(), clock.as_ref(), &change)
        .await
        .unwrap();
    assert_eq!(cfg.settings.dimensions, 16);
    store
        .put("vectors/p000/1-a.seg", Bytes::from_static(b"data"))
        .await
        .unwrap();
    let back = RequestedSettings {
        dimensions: Some(8),
        ..Default::default()
    };
    let err = change_settings(store.as_ref(), clock.as_ref(), &back)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("dimensions") && msg.contains("16") && msg.contains('8'),
        "{msg}"
    );
    assert!(msg.contains("already holds data"), "{msg}");
    // Settings that do not shape data may still change.
    let timeout = RequestedSettings {
        instance_timeout_seconds: Some(120),
        ..Default::default()
    };
    let cfg = change_settings(store.as_ref(), clock.as_ref(), &timeout)
        .await
        .unwrap();
    assert_eq!(cfg.settings.instance_timeout_seconds, 120);
    assert_eq!(cfg.settings.dimensions, 16);
}

async fn invalid_role_env_is_refused_before_anything_is_written(store: Arc<Counted>) {
    let clock = manual_clock();
    let mut o = opts(&clock, None, settings(8));
    o.env.brainy_role = Some("primary".into());
    let err = Cluster::join(store.clone(), o)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("reader, writer, both"), "{err}");
    assert_eq!(store.counts().put, 0, "nothing written");
}

// ---- memory only: the background heartbeat under tokio's paused clock ----

#[tokio::test(start_paused = true)]
async fn background_heartbeat_ticks_and_stops() {
    let store = common::memory_store();
    let o = JoinOptions {
        settings: settings(8),
        background_heartbeat: true,
        clock: Arc::new(shoal::coord::clock::TokioClock::new()),
        env: RoleEnv::default(),
        ..Default::default()
    };
    let c = Cluster::join(store.clone(), o).await.unwrap();
    tokio::time::sleep(Duration::from_secs(35)).await;
    assert_eq!(c.record().await.heartbeat_seq, 4, "beats at 10, 20, 30 s");
    c.stop_heartbeat().await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(c.record().await.heartbeat_seq, 4, "no beats after stop");
    let stored = list_records(store.as_ref()).await.unwrap();
    assert_eq!(stored[0].heartbeat_seq, 4);
}

#[tokio::test(start_paused = true)]
async fn failed_heartbeats_are_retried_and_not_fatal() {
    use shoal::store::faults::{FailNext, Op};
    let faulty = Arc::new(FailNext::new(common::memory_store(), Op::Put, 0));
    let store = Arc::new(Counted::new(faulty.clone()));
    let o = JoinOptions {
        settings: settings(8),
        background_heartbeat: true,
        clock: Arc::new(shoal::coord::clock::TokioClock::new()),
        env: RoleEnv::default(),
        ..Default::default()
    };
    let c = Cluster::join(store.clone(), o).await.unwrap();
    faulty.fail_next(3);
    // Beats at 10 s, 11 s (+1 s) and 13 s (+2 s) fail; the one at 17 s (+4 s) works.
    tokio::time::sleep(Duration::from_millis(16_500)).await;
    assert_eq!(
        c.record().await.heartbeat_seq,
        1,
        "still failing before 17 s"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        c.record().await.heartbeat_seq,
        2,
        "recovered after 3 failures"
    );
    let stored = list_records(store.as_ref()).await.unwrap();
    assert_eq!(stored[0].heartbeat_seq, 2);
    // And it keeps its normal interval afterwards.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(c.record().await.heartbeat_seq, 3);
}

#[tokio::test]
async fn join_refuses_a_store_that_ignores_conditional_writes() {
    use shoal::store::faults::IgnoreConditions;
    let store = Arc::new(Counted::new(Arc::new(IgnoreConditions(
        common::memory_store(),
    ))));
    let err = Cluster::join(
        store.clone(),
        JoinOptions {
            settings: settings(8),
            env: RoleEnv::default(),
            ..Default::default()
        },
    )
    .await
    .err()
    .expect("refused");
    assert!(
        err.to_string()
            .contains("does not enforce conditional writes"),
        "{err}"
    );
    assert!(
        store.list("").await.unwrap().is_empty(),
        "no config, no record"
    );
}

#[tokio::test]
async fn role_follows_live_writers_on_a_shared_bucket() {
    // Role detection consults live instances only on non-embedded stores,
    // so use S3 when available.
    let Some(store) = common::s3_store().await else {
        return;
    };
    let clock = manual_clock();
    let a = Cluster::join(store.clone(), opts(&clock, None, settings(8)))
        .await
        .unwrap();
    assert_eq!(a.role(), Role::Writer, "first instance: no live writer");
    let b = Cluster::join(store.clone(), opts(&clock, None, settings(8)))
        .await
        .unwrap();
    assert_eq!(b.role(), Role::Reader, "a live writer exists");
    // The writer dies silently; after the timeout the next joiner writes.
    clock.advance(Duration::from_secs(61));
    b.heartbeat_now().await.unwrap();
    let c = Cluster::join(store.clone(), opts(&clock, None, settings(8)))
        .await
        .unwrap();
    assert_eq!(c.role(), Role::Writer);
}

#[tokio::test]
async fn embedded_stores_default_to_both() {
    let (store, _d) = common::local_store();
    let c = Cluster::join(store, opts(&manual_clock(), None, settings(8)))
        .await
        .unwrap();
    assert_eq!(c.role(), Role::Both);
}

/// A new index gets every partition manifest when its first writer joins,
/// and the config records it. An index made before that is upgraded once:
/// empty manifests only for partitions holding nothing; a partition with
/// segments but no manifest is left alone and reported, never papered over.
async fn a_writer_creates_every_manifest_and_upgrades_an_older_index_once(store: Arc<Counted>) {
    use shoal::coord::config::load_or_create;
    use shoal::coord::manifest::read_manifest;
    use shoal::coord::partition_of;
    let clock = manual_clock();
    // An older index: config without the flag, data in partitions 0 and 1.
    let mut req = settings(2);
    req.partition_count = Some(4);
    let old = load_or_create(store.as_ref(), &req, clock.as_ref())
        .await
        .unwrap();
    assert!(!old.settings.partitions_initialized);
    let w = common::writer(store.clone(), &old.settings);
    let ids: Vec<String> = (0..200)
        .map(|i| format!("id{i}"))
        .filter(|id| partition_of(id, 4) < 2)
        .take(20)
        .collect();
    let recs: Vec<_> = ids
        .iter()
        .map(|id| shoal::record::Record::new(id.clone(), vec![1.0, 0.5]))
        .collect();
    w.upsert(&recs).await.unwrap();
    // Partition 1 lost its manifest before the upgrade.
    store.delete("_brainy/manifests/p001.json").await.unwrap();
    assert!(read_manifest(store.as_ref(), 2).await.unwrap().is_none());

    let c = Cluster::join(store.clone(), opts(&clock, Some(Role::Writer), req.clone()))
        .await
        .unwrap();
    assert!(c.config().settings.partitions_initialized);
    let (stored, _) = read_config(store.as_ref()).await.unwrap().unwrap();
    assert!(
        stored.settings.partitions_initialized,
        "recorded in the bucket"
    );
    for p in [0, 2, 3] {
        let (m, _) = read_manifest(store.as_ref(), p).await.unwrap().unwrap();
        assert_eq!(m.segments.is_empty(), p != 0, "partition {p}");
    }
    assert!(
        read_manifest(store.as_ref(), 1).await.unwrap().is_none(),
        "a partition with segments and no manifest is not papered over"
    );
    let report = common::verify(&store).await.unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].key, "_brainy/manifests/p001.json");
    c.leave().await.unwrap();

    // A brand-new index: every manifest exists once a writer joined.
    let fresh = common::memory_store();
    let c = Cluster::join(fresh.clone(), opts(&clock, Some(Role::Writer), req))
        .await
        .unwrap();
    assert!(c.config().settings.partitions_initialized);
    for p in 0..4 {
        assert!(
            read_manifest(fresh.as_ref(), p).await.unwrap().is_some(),
            "{p}"
        );
    }
}

/// An index made before the manifests moved under `_brainy/manifests/`
/// (config version 1, manifests at `vectors/pNNN/manifest.json` and
/// `index/manifest.json`): a reader of this version reads it as it is,
/// writing nothing; the first writer to join moves every manifest once
/// (the config goes to version 2), leaving markers an older shoal refuses;
/// nothing is lost, and a strong check is one LIST from then on.
async fn an_index_from_before_the_manifests_moved_reads_the_same_and_moves_once(
    store: Arc<Counted>,
) {
    use shoal::coord::manifest::parse_manifest;
    use shoal::reader::{Consistency, Reader, ReaderOptions};
    let settings = common::create_index(store.as_ref(), 4, 2, Metric::Euclidean).await;
    let w = common::writer(store.clone(), &settings);
    let recs: Vec<_> = (0..40)
        .map(|i| shoal::record::Record::new(format!("id{i}"), vec![i as f32, 1.0]))
        .collect();
    w.upsert(&recs[..30]).await.unwrap();
    common::index_now(store.as_ref(), &settings).await;
    w.upsert(&recs[30..]).await.unwrap();
    let orphans = common::verify(&store).await.unwrap().orphans; // retired by the indexer
                                                                 // Back to the older layout, by hand.
    let moved = store.list("_brainy/manifests/").await.unwrap();
    assert_eq!(
        moved.len(),
        5,
        "4 partition manifests and the index manifest"
    );
    for o in &moved {
        let bytes = store.get(&o.key).await.unwrap().bytes;
        let legacy = match o.key.as_str() {
            "_brainy/manifests/index.json" => "index/manifest.json".to_string(),
            k => format!("vectors/{}/manifest.json", &k[18..22]),
        };
        store.put(&legacy, bytes).await.unwrap();
        store.delete(&o.key).await.unwrap();
    }
    update_config(store.as_ref(), &SystemClock, |c| {
        c.version = 1;
        Ok(())
    })
    .await
    .unwrap();
    let before = store.list("").await.unwrap();

    async fn all_there(r: Reader, recs: &[shoal::record::Record]) {
        for rec in recs {
            let got = r.get_with(&rec.id, Consistency::Strong).await.unwrap();
            assert_eq!(
                got.map(|g| g.vector),
                Some(rec.vector.clone()),
                "{}",
                rec.id
            );
        }
    }
    let reader = || Reader::new(store.clone(), &settings, ReaderOptions::default());
    all_there(reader(), &recs).await;
    assert_eq!(
        store.list("").await.unwrap(),
        before,
        "a reader writes nothing"
    );

    let c = Cluster::join(
        store.clone(),
        JoinOptions {
            settings: RequestedSettings::default(),
            role: Some(Role::Writer),
            background_heartbeat: false,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        read_config(store.as_ref())
            .await
            .unwrap()
            .unwrap()
            .0
            .version,
        2
    );
    assert_eq!(store.list("_brainy/manifests/").await.unwrap().len(), 5);
    for p in 0..4 {
        let marker = store
            .get(&format!("vectors/p00{p}/manifest.json"))
            .await
            .unwrap();
        let e = parse_manifest(p, &marker.bytes).unwrap_err().to_string();
        assert!(e.contains("newer than this shoal understands"), "{e}");
    }
    let marker = store.get("index/manifest.json").await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&marker.bytes).unwrap();
    assert!(
        v["version"].as_u64().unwrap() > 2,
        "an older shoal refuses it: {v}"
    );
    c.leave().await.unwrap();
    let r = reader();
    all_there(r.clone(), &recs).await;
    let before = r.stats().requests;
    r.get_with("id0", Consistency::Strong).await.unwrap();
    assert_eq!(r.stats().requests.since(&before).total(), 1, "one LIST");
    let report = common::verify(&store).await.unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    assert_eq!(report.orphans, orphans, "the markers are no orphans");
}
