//! Store behaviour beyond the shared suite: the probe refusing a store that
//! ignores conditions, request counters, URL parsing, prefix scoping, and
//! the local backend's atomicity across processes and store roots, and its
//! lock timeout behind a stopped writer (issue 28 F12).

mod common;

use std::sync::Arc;

use bytes::Bytes;
use shoal::store::conformance::{increment, read_counter};
use shoal::store::faults::IgnoreConditions;
use shoal::store::{
    probe_conditional_writes, Counted, DynStore, ETag, ObjectStore, ProbeError, StoreError,
};

async fn assert_probe_refuses(inner: DynStore) {
    let broken = IgnoreConditions(inner);
    let err = probe_conditional_writes(&broken, shoal::coord::paths::probe_keys())
        .await
        .expect_err("probe must refuse");
    assert!(matches!(err, ProbeError::NotEnforced { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("does not enforce conditional writes"), "{msg}");
    assert!(msg.contains("create-only"), "{msg}");
    assert!(
        msg.contains("conditions ignored"),
        "message names the store: {msg}"
    );
}

#[tokio::test]
async fn probe_refuses_store_that_ignores_conditions_memory() {
    assert_probe_refuses(common::memory_store()).await;
}

#[tokio::test]
async fn probe_refuses_store_that_ignores_conditions_local() {
    let (s, _d) = common::local_store();
    assert_probe_refuses(s).await;
}

#[tokio::test]
async fn probe_refuses_store_that_ignores_conditions_s3() {
    let Some(s) = common::s3_store().await else {
        return;
    };
    assert_probe_refuses(s).await;
}

async fn check_counters(store: Arc<Counted>) {
    let base = store.counts();
    let e = store
        .put_if_absent("c/a", Bytes::from_static(b"12345"))
        .await
        .unwrap();
    store.get("c/a").await.unwrap();
    store.get_if_changed("c/a", &e).await.unwrap();
    let _ = store.get("c/missing").await;
    let _ = store.put_if_absent("c/a", Bytes::from_static(b"x")).await;
    let _ = store
        .put_if_match("c/a", Bytes::from_static(b"x"), &ETag("\"stale\"".into()))
        .await;
    store.head("c/a").await.unwrap();
    store.delete("c/a").await.unwrap();
    store.list("c/").await.unwrap();
    let d = store.counts().since(&base);
    assert_eq!(d.get, 3, "{d:?}");
    assert_eq!(d.put, 3, "{d:?}");
    assert_eq!(d.head, 1, "{d:?}");
    assert_eq!(d.delete, 1, "{d:?}");
    assert_eq!(d.list, 1, "{d:?}");
    assert_eq!(d.not_modified, 1, "{d:?}");
    assert_eq!(d.not_found, 1, "{d:?}");
    assert_eq!(d.precondition_failed, 2, "{d:?}");
    assert_eq!(d.bytes_read, 5, "only the one full read moved bytes: {d:?}");
    assert_eq!(d.total(), 9);
}

#[tokio::test]
async fn counters_count_every_kind_and_outcome_memory() {
    check_counters(common::memory_store()).await;
}

#[tokio::test]
async fn counters_count_every_kind_and_outcome_local() {
    let (s, _d) = common::local_store();
    check_counters(s).await;
}

#[tokio::test]
async fn counters_count_every_kind_and_outcome_s3() {
    let Some(s) = common::s3_store().await else {
        return;
    };
    check_counters(s).await;
}

#[tokio::test]
async fn list_counts_one_request_per_page_of_1000() {
    let s = common::memory_store();
    for i in 0..1001 {
        s.put(&format!("p/{i}"), Bytes::new()).await.unwrap();
    }
    let before = s.counts().list;
    assert_eq!(s.list("p/").await.unwrap().len(), 1001);
    assert_eq!(s.counts().list - before, 2);
}

#[tokio::test]
async fn open_parses_urls() {
    let m = shoal::store::open("memory://urltest/some/prefix")
        .await
        .unwrap();
    assert_eq!(m.describe(), "memory://urltest/some/prefix");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let f = shoal::store::open(&format!("file://{path}")).await.unwrap();
    assert!(f.describe().starts_with("file:///"), "{}", f.describe());
    let p = shoal::store::open(&format!("{path}/plain")).await.unwrap();
    p.put("k", Bytes::from_static(b"v")).await.unwrap();
    assert!(dir.path().join("plain/k").exists());
    let e = shoal::store::open("gs://bucket").await.unwrap_err();
    assert!(
        e.to_string().contains("unsupported store url scheme"),
        "{e}"
    );
    let e = shoal::store::open("s3://").await.unwrap_err();
    assert!(e.to_string().contains("needs a bucket"), "{e}");
    let e = shoal::store::open("memory://x/../y").await.unwrap_err();
    assert!(e.to_string().contains("invalid key prefix"), "{e}");
}

async fn check_invalid_keys(store: DynStore) {
    for bad in [
        "",
        "/abs",
        "a//b",
        "../escape",
        "a/../../b",
        "a/./b",
        "nul\0key",
    ] {
        let e = store.put(bad, Bytes::from_static(b"x")).await.unwrap_err();
        assert!(e.to_string().contains("invalid key"), "{bad:?}: {e}");
    }
    assert!(
        store.list("").await.unwrap().is_empty(),
        "a bad key wrote something"
    );
}

#[tokio::test]
async fn invalid_keys_are_refused_and_write_nothing() {
    check_invalid_keys(common::memory_store()).await;
    let (s, dir) = common::local_store();
    check_invalid_keys(s).await;
    // Nothing escaped the root either.
    assert!(!dir.path().parent().unwrap().join("escape").exists());
}

#[tokio::test]
async fn prefixes_scope_every_key_memory() {
    // A fresh store name, unseeded (see `common::s3_store_with_prefix`).
    #[allow(clippy::disallowed_methods)]
    let name = format!("scope-{:016x}", rand::random::<u64>());
    let a = shoal::store::open(&format!("memory://{name}/a"))
        .await
        .unwrap();
    let b = shoal::store::open(&format!("memory://{name}/b"))
        .await
        .unwrap();
    let root = shoal::store::open(&format!("memory://{name}"))
        .await
        .unwrap();
    a.put("k", Bytes::from_static(b"from a")).await.unwrap();
    assert!(matches!(b.get("k").await, Err(StoreError::NotFound { .. })));
    let keys: Vec<_> = root
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, vec!["a/k"]);
    let keys: Vec<_> = a
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, vec!["k"]);
}

#[tokio::test]
async fn prefixes_scope_every_key_s3() {
    let Some(a) = common::s3_store_with_prefix("tenant-a").await else {
        return;
    };
    let a_bucket = a.describe();
    let bucket = a_bucket
        .trim_start_matches("s3://")
        .split('/')
        .next()
        .unwrap();
    let opts = common::s3_options(&common::s3_endpoint().unwrap());
    let root = shoal::store::s3::S3Store::open(bucket, &opts)
        .await
        .unwrap();
    let b = shoal::store::s3::S3Store::open(&format!("{bucket}/tenant-b"), &opts)
        .await
        .unwrap();
    a.put("vectors/p000/manifest.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    assert!(matches!(
        b.get("vectors/p000/manifest.json").await,
        Err(StoreError::NotFound { .. })
    ));
    let keys: Vec<_> = root
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, vec!["tenant-a/vectors/p000/manifest.json"]);
    let keys: Vec<_> = a
        .list("vectors/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, vec!["vectors/p000/manifest.json"]);
}

#[tokio::test]
async fn local_etags_are_content_hashes_stable_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let e1 = shoal::store::local::LocalStore::open(path)
        .unwrap()
        .put("x/y", Bytes::from_static(b"same bytes"))
        .await
        .unwrap();
    let reopened = shoal::store::local::LocalStore::open(path).unwrap();
    assert_eq!(reopened.head("x/y").await.unwrap().etag, e1);
    let e2 = reopened
        .put("other", Bytes::from_static(b"same bytes"))
        .await
        .unwrap();
    assert_eq!(e1, e2, "equal bytes give equal etags");
    let e = reopened
        .put(".shoal-locks/x", Bytes::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("reserved"), "{e}");
}

const CHILD_ENV: &str = "SHOAL_CHILD_STORE_DIR";

/// Helper run in child processes by `local_increment_race_across_processes`.
#[tokio::test]
#[ignore = "helper: spawned as a separate process by local_increment_race_across_processes"]
async fn cross_process_increment_child() {
    let dir = std::env::var(CHILD_ENV).expect("run by the parent test");
    let store: DynStore = Arc::new(shoal::store::local::LocalStore::open(&dir).unwrap());
    for _ in 0..10 {
        increment(&store, "race/counter").await;
    }
}

#[tokio::test]
async fn local_increment_race_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_string();
    let store: DynStore = Arc::new(shoal::store::local::LocalStore::open(&path).unwrap());
    store
        .put_if_absent("race/counter", Bytes::from_static(b"0"))
        .await
        .unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..5)
        .map(|_| {
            std::process::Command::new(&exe)
                .args([
                    "--ignored",
                    "--exact",
                    "cross_process_increment_child",
                    "--nocapture",
                ])
                .env(CHILD_ENV, &path)
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("spawn child test process")
        })
        .collect();
    let pids: std::collections::BTreeSet<u32> = children.iter().map(|c| c.id()).collect();
    assert_eq!(pids.len(), 5, "five distinct OS processes");
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a child process failed");
    }
    assert_eq!(read_counter(&store, "race/counter").await, 50);
}

// Issue 28 F12: the local backend's locks. A file is reachable through
// every store rooted at one of its ancestors (the S3 Vectors service opens
// the root and each index's directory), and a process can be stopped
// inside a write.

/// Every compare-and-swap that won, with the ETag it replaced, through
/// `store` on `key`: `increments` wins of a counter.
async fn count_up(store: DynStore, key: &'static str, increments: usize) -> Vec<ETag> {
    let mut replaced = Vec::new();
    while replaced.len() < increments {
        let g = store.get(key).await.expect("get counter");
        let n: u64 = std::str::from_utf8(&g.bytes).unwrap().parse().unwrap();
        match store
            .put_if_match(key, Bytes::from((n + 1).to_string()), &g.etag)
            .await
        {
            Ok(_) => replaced.push(g.etag),
            Err(e) if e.is_conflict() => tokio::task::yield_now().await,
            Err(e) => panic!("increment through {} failed: {e}", store.describe()),
        }
    }
    replaced
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_compare_and_swap_through_a_root_and_its_subdirectory_lets_one_writer_win_each_version(
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let root: DynStore = Arc::new(shoal::store::local::LocalStore::open(path).unwrap());
    let index: DynStore =
        Arc::new(shoal::store::local::LocalStore::open(&format!("{path}/bucket/idx@1")).unwrap());
    root.put_if_absent("bucket/idx@1/counter", Bytes::from_static(b"0"))
        .await
        .unwrap();
    // Four workers through each root, on the same file. The counter only
    // grows, so each ETag (a content hash) names one version: two wins
    // that replaced one ETag are two writers that both saw that version.
    let workers: Vec<_> = (0..8)
        .map(|i| {
            let (store, key) = if i % 2 == 0 {
                (root.clone(), "bucket/idx@1/counter")
            } else {
                (index.clone(), "counter")
            };
            tokio::spawn(count_up(store, key, 25))
        })
        .collect();
    let mut wins = std::collections::HashMap::<ETag, usize>::new();
    for w in workers {
        for etag in w.await.unwrap() {
            *wins.entry(etag).or_default() += 1;
        }
    }
    let doubled = wins.values().filter(|&&n| n > 1).count();
    assert_eq!(
        doubled, 0,
        "{doubled} versions were replaced by two writers"
    );
    assert_eq!(read_counter(&index, "counter").await, 200);
}

#[tokio::test]
async fn local_listing_through_a_parent_root_shows_objects_only_and_a_wipe_deletes_only_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let index = shoal::store::local::LocalStore::open(&format!("{path}/bucket/idx@1")).unwrap();
    let e = index
        .put_if_absent("vectors/p000/manifest.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    index
        .put_if_match("vectors/p000/manifest.json", Bytes::from_static(b"[]"), &e)
        .await
        .unwrap();
    index
        .put(shoal::coord::paths::CONFIG_KEY, Bytes::from_static(b"{}"))
        .await
        .unwrap();
    let root = shoal::store::open(path).await.unwrap();
    let keys = |metas: Vec<shoal::store::ObjectMeta>| -> Vec<String> {
        metas.into_iter().map(|m| m.key).collect()
    };
    let config = format!("bucket/idx@1/{}", shoal::coord::paths::CONFIG_KEY);
    let objects = vec![
        config.clone(),
        "bucket/idx@1/vectors/p000/manifest.json".to_string(),
    ];
    assert_eq!(keys(root.list("bucket/idx@1/").await.unwrap()), objects);
    assert_eq!(keys(root.list("").await.unwrap()), objects);
    // The wipe deletes the objects but the config (the tombstone), and
    // the local store's own files, reserved at every depth, are no keys.
    let e = root
        .put("bucket/idx@1/.shoal-locks/0001.lock", Bytes::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("reserved"), "{e}");
    let catalog = shoal::coord::catalog::CatalogStore::on(root.clone(), std::time::Duration::ZERO);
    assert_eq!(catalog.wipe("bucket/idx@1/").await.unwrap(), 1);
    assert_eq!(keys(root.list("").await.unwrap()), vec![config]);
}

const HOLD_ENV: &str = "SHOAL_CHILD_HOLD_DIR";
const WRITE_ENV: &str = "SHOAL_CHILD_WRITE_DIR";

/// Helper run by `local_write_behind_a_stopped_writer_fails_after_the_lock_timeout_naming_it`:
/// takes the lock a local write of any key in `HOLD_ENV` takes (an
/// exclusive `flock` on that directory), says so, and waits to be stopped
/// and killed, as a writer stopped inside its commit would.
#[test]
#[ignore = "helper: spawned as a separate process by local_write_behind_a_stopped_writer_fails_after_the_lock_timeout_naming_it"]
fn hold_directory_lock_child() {
    use std::io::Write;
    let dir = std::env::var(HOLD_ENV).expect("run by the parent test");
    let held = std::fs::File::open(&dir).unwrap();
    held.lock().unwrap();
    println!("locked");
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::park();
    }
}

/// Helper run by the same test: one compare-and-swap on `p/manifest.json`
/// through a store opened the ordinary way, printing how it ended.
#[tokio::test]
#[ignore = "helper: spawned as a separate process by local_write_behind_a_stopped_writer_fails_after_the_lock_timeout_naming_it"]
async fn conditional_write_child() {
    let dir = std::env::var(WRITE_ENV).expect("run by the parent test");
    let store = shoal::store::local::LocalStore::open(&dir).unwrap();
    let current = store.head("p/manifest.json").await.unwrap();
    match store
        .put_if_match("p/manifest.json", Bytes::from_static(b"v2"), &current.etag)
        .await
    {
        Ok(_) => println!("outcome: written"),
        Err(e) => println!("outcome: {e}"),
    }
}

/// A child process, killed (SIGKILL works on a stopped one) and reaped
/// however the test ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn helper(name: &str, env: (&str, &str)) -> std::process::Command {
    let mut c = std::process::Command::new(std::env::current_exe().unwrap());
    c.args(["--ignored", "--exact", name, "--nocapture", "--quiet"])
        .env(env.0, env.1)
        .stdout(std::process::Stdio::piped());
    c
}

#[tokio::test]
async fn local_write_behind_a_stopped_writer_fails_after_the_lock_timeout_naming_it() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let store = shoal::store::local::LocalStore::open(path).unwrap();
    store
        .put("p/manifest.json", Bytes::from_static(b"v1"))
        .await
        .unwrap();
    let p_dir = dir.path().join("p");
    let mut holder = Killed(
        helper(
            "hold_directory_lock_child",
            (HOLD_ENV, p_dir.to_str().unwrap()),
        )
        .spawn()
        .unwrap(),
    );
    let mut lines = std::io::BufReader::new(holder.0.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.unwrap() == "locked"),
        "the holder exited without taking the lock"
    );
    let holder_pid = holder.0.id();
    // Ctrl-Z on the holder.
    assert_eq!(unsafe { libc::kill(holder_pid as i32, libc::SIGSTOP) }, 0);

    let started = std::time::Instant::now();
    let mut writer = Killed(
        helper("conditional_write_child", (WRITE_ENV, path))
            .env("SHOAL_LOCAL_LOCK_TIMEOUT_MS", "300")
            .spawn()
            .unwrap(),
    );
    while writer.0.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the write still waits after 30 s behind a stopped process (lock timeout 300 ms)"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut writer.0.stdout.take().unwrap(), &mut out).unwrap();
    let outcome = out
        .lines()
        .find_map(|l| l.strip_prefix("outcome: "))
        .unwrap_or_else(|| panic!("the writer printed no outcome: {out:?}"));
    for part in [
        "p/manifest.json",
        "timed out after 300ms",
        &format!("process {holder_pid}"),
        "stopped",
    ] {
        assert!(outcome.contains(part), "{part:?} missing from: {outcome}");
    }
    assert_eq!(store.get("p/manifest.json").await.unwrap().bytes, "v1");
    let staged = std::fs::read_dir(dir.path().join(".shoal-tmp")).unwrap();
    assert_eq!(staged.count(), 0, "the failed write left its temp file");
}
