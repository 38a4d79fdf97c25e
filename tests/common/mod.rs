//! Helpers shared by the integration tests: a fresh store per test on each
//! backend. S3 tests need `SHOAL_TEST_S3_ENDPOINT` (the README's test
//! command starts moto and sets it); without it they are skipped loudly.
#![allow(dead_code, unused_macros, unreachable_pub)]

use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use shoal::coord::clock::{DynClock, SystemClock};
use shoal::coord::config::{initialize_partitions, load_or_create};
use shoal::coord::{Metric, RequestedSettings, Settings};
use shoal::store::s3::{S3Options, S3Store};
use shoal::store::{local::LocalStore, memory::MemoryStore, Counted, DynStore, ObjectStore};
use shoal::writer::{Writer, WriterOptions};

pub fn memory_store() -> Arc<Counted> {
    Arc::new(Counted::new(Arc::new(MemoryStore::unique())))
}

/// A local store in a fresh temp directory (kept alive by the returned guard).
pub fn local_store() -> (Arc<Counted>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalStore::open(dir.path().to_str().unwrap()).expect("open local store");
    (Arc::new(Counted::new(Arc::new(store))), dir)
}

/// The S3 test server, or None (the test skips). An endpoint that is set
/// but does not answer fails the test: S3 tests never pass by not running.
/// Every skip is also appended to the file named by
/// `SHOAL_TEST_SKIP_LOG`, which the test command checks (cargo hides the
/// output of passing tests).
pub fn s3_endpoint() -> Option<String> {
    match std::env::var("SHOAL_TEST_S3_ENDPOINT") {
        Ok(e) if !e.is_empty() => {
            let addr = e
                .trim_start_matches("http://")
                .trim_start_matches("https://")
                .trim_end_matches('/')
                .to_string();
            let reachable = std::net::ToSocketAddrs::to_socket_addrs(&addr)
                .ok()
                .and_then(|mut a| a.next())
                .is_some_and(|a| {
                    std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(5))
                        .is_ok()
                });
            assert!(
                reachable,
                "SHOAL_TEST_S3_ENDPOINT={e} is set but nothing answers there: start the S3 test \
                 server (the README's test command does) or unset it"
            );
            Some(e)
        }
        _ => {
            eprintln!(
                "\n*** SKIPPED: SHOAL_TEST_S3_ENDPOINT is not set, so this S3 test did not run. \
                 Use the test command from README.md, which starts moto and sets it. ***\n"
            );
            if let Ok(log) = std::env::var("SHOAL_TEST_SKIP_LOG") {
                use std::io::Write;
                let test = std::thread::current().name().unwrap_or("?").to_string();
                if let Ok(mut f) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                {
                    let _ = writeln!(f, "{test}");
                }
            }
            None
        }
    }
}

pub fn s3_options(endpoint: &str) -> S3Options {
    S3Options {
        endpoint: Some(endpoint.to_string()),
        region: Some("us-east-1".into()),
        path_style: Some(true),
        credentials: Some(("test".into(), "test".into())),
    }
}

/// A fresh bucket on the test S3 server, or None (skip) without one.
pub async fn s3_store() -> Option<Arc<Counted>> {
    s3_store_with_prefix("").await
}

/// A fresh bucket, with every key under `prefix` (may be empty). Its
/// name must differ from run to run, so it is not drawn from the entropy
/// seam (which a simulation may seed).
#[allow(clippy::disallowed_methods)]
pub async fn s3_store_with_prefix(prefix: &str) -> Option<Arc<Counted>> {
    let endpoint = s3_endpoint()?;
    let bucket = format!("shoal-test-{:016x}", rand::random::<u64>());
    let opts = s3_options(&endpoint);
    let bare = S3Store::open(&bucket, &opts).await.expect("open s3");
    bare.create_bucket().await.expect("create test bucket");
    let spec = if prefix.is_empty() {
        bucket
    } else {
        format!("{bucket}/{prefix}")
    };
    let store = S3Store::open(&spec, &opts)
        .await
        .expect("open s3 with prefix");
    Some(Arc::new(Counted::new(Arc::new(store))))
}

pub fn dyn_store(s: Arc<Counted>) -> DynStore {
    s
}

/// Instantiates `async fn name(store: Arc<Counted>)` scenarios once per
/// backend: `memory::name`, `local::name`, `s3::name`.
macro_rules! backend_tests {
    ($($name:ident),+ $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(crate::common::memory_store()).await;
                }
            )+
        }
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let (store, _dir) = crate::common::local_store();
                    super::$name(store).await;
                }
            )+
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(store) = crate::common::s3_store().await else { return };
                    super::$name(store).await;
                }
            )+
        }
    };
}

/// Creates the index's config in `store` (if it has none) with these
/// settings and defaults for the rest, and every partition's manifest, as
/// `shoal init` does; returns the settings in effect.
pub async fn create_index(
    store: &dyn ObjectStore,
    partitions: u32,
    dims: u32,
    metric: Metric,
) -> Settings {
    let req = RequestedSettings {
        partition_count: Some(partitions),
        dimensions: Some(dims),
        distance_metric: Some(metric),
        ..Default::default()
    };
    let config = load_or_create(store, &req, &SystemClock)
        .await
        .expect("create the index config");
    initialize_partitions(store, &SystemClock, config)
        .await
        .expect("create the partition manifests")
        .0
        .settings
}

/// A writer named `w` on `store` with default options and the system
/// clock, without joining the cluster (no probe, no instance record).
pub fn writer(store: DynStore, settings: &Settings) -> Writer {
    let clock: DynClock = Arc::new(SystemClock);
    Writer::new(store, settings, "w", clock, WriterOptions::default())
}

/// One forced indexer round as `ix` on the system clock: whatever the
/// tails hold moves into the index shards now (and due merges run).
#[allow(dead_code)] // not every test file indexes
pub async fn index_now(
    store: &dyn ObjectStore,
    settings: &Settings,
) -> shoal::compact::indexer::IndexRound {
    let clock: DynClock = Arc::new(SystemClock);
    let force = shoal::compact::indexer::IndexOptions {
        force: true,
        ..Default::default()
    };
    shoal::compact::indexer::index_round(store, settings, "ix", &clock, force)
        .await
        .expect("an indexer round")
}

/// `verify` through the handle, as `shoal verify` runs it: an observer
/// that registers nothing.
pub async fn verify(store: &Arc<Counted>) -> Result<shoal::api::VerifyReport, shoal::Error> {
    let db = shoal::Db::open_store(store.clone(), shoal::OpenOptions::observer()).await?;
    db.verify().await
}

/// The newest live version of `id` in the index `w` writes to, read the
/// way every front end reads it: a reader, strongly consistent.
pub async fn get(
    w: &Writer,
    id: &str,
) -> Result<Option<shoal::record::StoredRecord>, shoal::reader::ReadError> {
    let reader = shoal::reader::Reader::new(
        w.store().clone(),
        &w.settings(),
        shoal::reader::ReaderOptions::default(),
    );
    reader
        .get_with(id, shoal::reader::Consistency::Strong)
        .await
}

/// The real `shoal` binary pointed at one bucket: a local directory, or a
/// fresh bucket on the S3 test server (with its endpoint and credentials
/// in the environment). `dir` is a scratch folder for input files and the
/// commands' working directory.
pub struct Shoal {
    pub bucket: String,
    pub env: Vec<(String, String)>,
    pub dir: tempfile::TempDir,
}

impl Shoal {
    pub fn local() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Shoal {
            bucket: dir.path().join("index").to_str().unwrap().to_string(),
            env: vec![],
            dir,
        }
    }

    /// `prefix` inside a fresh bucket, or None (skip) without a server.
    pub async fn s3(prefix: &str) -> Option<Self> {
        let endpoint = s3_endpoint()?;
        let store = s3_store().await?;
        let bucket = format!(
            "{}/{prefix}",
            shoal::store::ObjectStore::describe(store.as_ref())
        );
        let env = [
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Some(Shoal {
            bucket,
            env,
            dir: tempfile::tempdir().unwrap(),
        })
    }

    /// `shoal --bucket <bucket> <args>`, output captured, not yet started.
    /// The bucket opened in this process (to check it with the library).
    pub async fn open_store(&self) -> Arc<Counted> {
        match self.bucket.strip_prefix("s3://") {
            Some(spec) => {
                let endpoint = s3_endpoint().expect("an S3 bucket implies a server");
                let store = S3Store::open(spec, &s3_options(&endpoint))
                    .await
                    .expect("open s3");
                Arc::new(Counted::new(Arc::new(store)))
            }
            None => {
                let store = LocalStore::open(&self.bucket).expect("open local store");
                Arc::new(Counted::new(Arc::new(store)))
            }
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shoal"));
        cmd.arg("--bucket").arg(&self.bucket).args(args);
        cmd.env_remove("BRAINY_ROLE").env_remove("SHOAL_BUCKET");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.current_dir(self.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run shoal")
    }

    /// Runs a command that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "shoal {args:?} failed ({:?}):\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command that must fail with `code`; returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "shoal {args:?}: stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// `shoal --json <args>`, parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).expect("valid JSON output")
    }

    /// Writes a file into the scratch folder; returns its path.
    pub fn file(&self, name: &str, contents: &[u8]) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, contents).unwrap();
        p.to_str().unwrap().to_string()
    }
}

/// The address a `shoal serve` child prints on its first line
/// ("listening on http://ADDR ..."), read from its piped stdout.
#[allow(dead_code)] // only the HTTP tests start servers
pub fn listening_addr(child: &mut std::process::Child) -> String {
    use std::io::{BufRead, BufReader};
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout piped"))
        .read_line(&mut line)
        .unwrap();
    line.split("http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string()
}
