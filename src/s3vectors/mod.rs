//! The Amazon S3 Vectors API over shoal (`shoal serve --s3vectors`), so
//! boto3's `s3vectors` client, the AWS SDKs and the tools built on them
//! work against any bucket shoal can use.
//!
//! Requests are JSON over HTTP, `POST /<Operation>`, signed with AWS
//! Signature Version 4 ([`sigv4`]); answers and errors have the shapes of
//! the service model botocore ships (`s3vectors/2025-07-15`): an error is
//! `{"__type": code, "message"}` with the header `x-amzn-ErrorType` and
//! the HTTP status AWS uses, so SDKs raise the exceptions their users
//! catch.
//!
//! Mapping: the vector buckets and their indexes are named in one catalog
//! object ([`crate::coord::catalog`]); each index is an ordinary shoal
//! index under `<vector-bucket>/<index>@<incarnation>/` of the store shoal serves, with
//! its own config (dimension, metric), partitions and instances. Vector
//! keys are record ids; metadata is stored as given (a key named `domain`
//! or starting with `~` is stored with one more leading `~`, since shoal
//! keeps its own `domain` field, and comes back as it was sent).
//!
//! Reads (`GetVectors`, `ListVectors`, `QueryVectors`) are strongly
//! consistent by default, as S3 Vectors is: a vector is found as soon as
//! `PutVectors` returned. Extensions AWS clients never send:
//! `consistency` (`strong`, `bounded`, `eventual`), `exact` and `nprobe`
//! on `QueryVectors`.
//!
//! Layout: this file holds the service, its options and [`OPERATIONS`],
//! the one table of operations (name, whether it writes, handler);
//! `buckets`, `indexes` (with the catalog as this instance sees it and
//! the registry of open index handles), `vectors` and `text` (full-text
//! configuration and index modes) hold the handlers; `deletion` finishes index deletions (and the sweep that finishes other
//! instances'); `wire` reads requests and translates records, metadata, filters and
//! page tokens; `error` is [`S3vError`].

pub mod sigv4;

mod buckets;
mod deletion;
mod error;
mod indexes;
mod text;
mod vectors;
mod wire;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::api::{RequestCounts, Role};
use crate::coord::catalog::CatalogStore;
use crate::coord::clock::{Clock, SystemClock};
use crate::db::Db;
use crate::error::Error;

pub use error::S3vError;
pub use sigv4::Credentials;

/// Vector buckets one store may hold, and indexes per vector bucket (AWS's quotas).
pub const MAX_BUCKETS: usize = 10_000;
pub const MAX_INDEXES: usize = 10_000;
/// Vectors per `PutVectors` / `DeleteVectors`, keys per `GetVectors`.
pub const MAX_PUT: usize = 500;
pub const MAX_GET: usize = 100;
/// Results per `QueryVectors`.
pub const MAX_TOP_K: usize = 100;
/// Largest page of `ListVectors`, and of the bucket and index listings.
pub const MAX_LIST_VECTORS: usize = 1000;
pub const MAX_LIST_NAMES: usize = 500;
/// Metadata limits per vector: all of it, the filterable part, keys.
pub const MAX_METADATA_BYTES: usize = 40 * 1024;
pub const MAX_FILTERABLE_BYTES: usize = 2 * 1024;
pub const MAX_METADATA_KEYS: usize = 50;
pub const MAX_DIMENSION: u64 = 4096;
pub const MAX_KEY_BYTES: usize = 1024;
/// How often `shoal serve --s3vectors` finishes index deletions left
/// unfinished (see [`Service::sweep`]).
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How often a `serve --s3vectors` process refreshes its one instance
/// record (at the root, `_s3vectors/instances/`), and how long a silent
/// one is kept.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(20);
pub const SERVER_TIMEOUT: Duration = Duration::from_secs(60);

/// What an operation does when called: its handler, borrowing the call.
type Run = for<'a> fn(&'a Call<'a>) -> Pin<Box<dyn Future<Output = Answer> + Send + 'a>>;
type Answer = Result<Value, S3vError>;

/// One operation of the service model (`s3vectors/2025-07-15`).
pub struct Operation {
    /// As the service model spells it (the request path, `POST /<name>`).
    pub name: &'static str,
    /// Whether it changes anything (a reader instance refuses those).
    pub writes: bool,
    /// `None`: shoal does not implement it (answered 501).
    run: Option<Run>,
}

const fn op(name: &'static str, writes: bool, run: Run) -> Operation {
    let run = Some(run);
    Operation { name, writes, run }
}

const fn not_implemented(name: &'static str, writes: bool) -> Operation {
    Operation {
        name,
        writes,
        run: None,
    }
}

/// Every operation of the service model: the one list of what is served,
/// what writes, and which handler answers.
pub static OPERATIONS: [Operation; 22] = [
    op("CreateVectorBucket", true, |c| Box::pin(c.create_bucket())),
    op("GetVectorBucket", false, |c| Box::pin(c.get_bucket())),
    op("ListVectorBuckets", false, |c| Box::pin(c.list_buckets())),
    op("DeleteVectorBucket", true, |c| Box::pin(c.delete_bucket())),
    op("CreateIndex", true, |c| Box::pin(c.create_index())),
    op("GetIndex", false, |c| Box::pin(c.get_index())),
    op("ListIndexes", false, |c| Box::pin(c.list_indexes())),
    op("DeleteIndex", true, |c| Box::pin(c.delete_index())),
    op("PutVectors", true, |c| Box::pin(c.put_vectors())),
    op("GetVectors", false, |c| Box::pin(c.get_vectors())),
    op("DeleteVectors", true, |c| Box::pin(c.delete_vectors())),
    op("ListVectors", false, |c| Box::pin(c.list_vectors())),
    op("QueryVectors", false, |c| Box::pin(c.query_vectors())),
    not_implemented("DeleteVectorBucketPolicy", true),
    not_implemented("GetVectorBucketPolicy", false),
    not_implemented("PutVectorBucketPolicy", true),
    op("PutVectorBucketDefaultIndexMode", true, |c| {
        Box::pin(c.put_default_index_mode())
    }),
    op("UpdateIndexMode", true, |c| Box::pin(c.update_index_mode())),
    op("UpdateMetadataConfiguration", true, |c| {
        Box::pin(c.update_metadata_configuration())
    }),
    not_implemented("ListTagsForResource", false),
    not_implemented("TagResource", true),
    not_implemented("UntagResource", true),
];

/// How the service opens the index handles.
#[derive(Clone)]
pub struct S3VectorsOptions {
    /// Store URL whose prefixes hold the vector buckets.
    pub root: String,
    /// Who may call; `None` turns signature checks off (`--insecure-no-auth`).
    pub credentials: Option<Credentials>,
    /// Role of the index handles (`None`: detected as for `shoal serve`).
    pub role: Option<Role>,
    /// Partitions of new indexes (`None`: shoal's default).
    pub partitions: Option<u32>,
    pub compact_every: Option<Duration>,
    pub gc_every: Option<Duration>,
    /// How fresh `GetVectors`, `ListVectors` and `QueryVectors` read when
    /// the request names no `consistency` (AWS's requests have no such
    /// field, so this decides what every client pays). `Strong` (the
    /// default): every write acknowledged before the call is seen, for one
    /// LIST per call; `Bounded`: at most the reader's `max_staleness` (2 s)
    /// old, checked in the background, no request of its own under load.
    pub default_consistency: crate::api::Consistency,
    /// How stale the catalog may be on the query path.
    pub catalog_max_age: Duration,
    /// An index handle nobody used for this long is closed by the sweeper
    /// (default 5 min): an idle index costs no requests.
    pub idle_after: Duration,
    /// The 12-digit account id in ARNs.
    pub account: String,
    /// The region this endpoint serves (`AWS_REGION`, else us-east-1):
    /// signed requests must be scoped to it; ARNs name it.
    pub region: String,
}

impl S3VectorsOptions {
    pub fn new(root: impl Into<String>) -> Self {
        S3VectorsOptions {
            root: root.into(),
            credentials: None,
            role: None,
            partitions: None,
            compact_every: None,
            gc_every: None,
            default_consistency: crate::api::Consistency::Strong,
            catalog_max_age: Duration::from_secs(1),
            idle_after: Duration::from_secs(300),
            account: "000000000000".into(),
            region: std::env::var("AWS_REGION")
                .ok()
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "us-east-1".into()),
        }
    }
}

/// One request as it arrived.
pub struct Request<'a> {
    pub operation: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: Vec<(&'a str, &'a str)>,
    pub body: &'a [u8],
}

/// The S3 Vectors service over one store.
pub struct Service {
    opts: S3VectorsOptions,
    /// The root of the store: the catalog (each index is reached through
    /// its own handle in `indexes`).
    catalog: CatalogStore,
    /// Index handles by `bucket/index`, each opened once on first use
    /// (opening one never holds up requests to the others), and when each
    /// was last asked for: idle ones are closed ([`Service::close_idle`]).
    indexes: std::sync::Mutex<HashMap<String, Handle>>,
    /// This process's one instance record (see [`Service::heartbeat`]).
    me: Me,
}

/// What this process publishes about itself.
struct Me {
    id: String,
    started_at: String,
    beats: std::sync::atomic::AtomicU64,
    /// When stale records of other processes were last removed.
    cleaned: std::sync::Mutex<Option<std::time::Instant>>,
}

/// One index handle slot.
#[derive(Clone, Default)]
pub(super) struct Handle {
    pub cell: Arc<tokio::sync::OnceCell<Db>>,
    pub used: Option<std::time::Instant>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("root", &self.opts.root)
            .field("authenticates", &self.authenticates())
            .finish()
    }
}

pub(super) fn now_secs() -> f64 {
    SystemClock
        .now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| (d.as_millis() as f64) / 1000.0)
}

impl Service {
    pub async fn open(opts: S3VectorsOptions) -> Result<Service, Error> {
        let catalog = CatalogStore::open(&opts.root, opts.catalog_max_age).await?;
        let svc = Service::open_on(catalog, opts)?;
        svc.heartbeat().await?;
        Ok(svc)
    }

    /// The service over the catalog of an already opened root store
    /// (`opts.root` must name the same store: index handles are opened
    /// from it).
    pub fn open_on(catalog: CatalogStore, opts: S3VectorsOptions) -> Result<Service, Error> {
        let me = Me {
            id: crate::coord::catalog::server_instance_id()?,
            started_at: crate::coord::clock::format_time(SystemClock.now()),
            beats: Default::default(),
            cleaned: Default::default(),
        };
        Ok(Service {
            catalog,
            opts,
            indexes: std::sync::Mutex::new(HashMap::new()),
            me,
        })
    }

    /// This process's instance id (its record is
    /// `_s3vectors/instances/<id>.json`).
    pub fn instance_id(&self) -> &str {
        &self.me.id
    }

    /// Writes this process's one instance record at the root of the store
    /// (listing the indexes it holds open); the indexes hold no records of
    /// their own, so an index costs no heartbeats (issue 30, item 3).
    /// Writers also remove records silent for longer than
    /// [`SERVER_TIMEOUT`], at most every half of it. The sweeper calls it
    /// every [`HEARTBEAT_EVERY`].
    pub async fn heartbeat(&self) -> Result<(), crate::coord::CoordError> {
        use std::sync::atomic::Ordering;
        let seq = self.me.beats.fetch_add(1, Ordering::Relaxed) + 1;
        let mut indexes: Vec<String> = self.indexes.lock().unwrap().keys().cloned().collect();
        indexes.sort();
        let record = crate::coord::catalog::ServerRecord {
            instance_id: &self.me.id,
            role: self.opts.role.unwrap_or(Role::Both),
            started_at: &self.me.started_at,
            seq,
            indexes: &indexes,
        };
        self.catalog.publish_server(&record).await?;
        let due = {
            let mut cleaned = self.me.cleaned.lock().unwrap();
            let due = cleaned.is_none_or(|t| t.elapsed() >= SERVER_TIMEOUT / 2);
            if due {
                *cleaned = Some(std::time::Instant::now());
            }
            due
        };
        if due && self.opts.role != Some(Role::Reader) {
            let gone = self
                .catalog
                .remove_stale_servers(SERVER_TIMEOUT, &self.me.id)
                .await?;
            if !gone.is_empty() {
                tracing::info!(?gone, "removed records of silent S3 Vectors servers");
            }
        }
        Ok(())
    }

    /// Whether signatures are checked.
    pub fn authenticates(&self) -> bool {
        self.opts.credentials.is_some()
    }

    /// Requests this service made to the root store (the catalog, and
    /// deleting indexes' objects).
    pub fn store_counts(&self) -> RequestCounts {
        self.catalog.counts()
    }

    /// Closes every open index handle and removes this process's record.
    pub async fn close(&self) {
        let open: Vec<_> = self.indexes.lock().unwrap().drain().collect();
        for (name, h) in open {
            if let Some(db) = h.cell.get() {
                if let Err(e) = db.close().await {
                    tracing::warn!(index = %name, error = %e, "closing an S3 Vectors index failed");
                }
            }
        }
        if let Err(e) = self.catalog.withdraw_server(&self.me.id).await {
            tracing::warn!(error = %e, "removing this server's instance record failed");
        }
    }

    /// Closes the handles of indexes nobody asked for in `idle` (their
    /// instance records, heartbeats, compaction and GC stop; the next call
    /// opens them again), skipping any a call still holds. Returns how
    /// many it closed.
    pub async fn close_idle(&self, idle: Duration) -> usize {
        let closing: Vec<(String, Db)> = {
            let mut map = self.indexes.lock().unwrap();
            let idle_keys: Vec<String> = map
                .iter()
                .filter(|(_, h)| {
                    h.used.is_none_or(|t| t.elapsed() >= idle)
                        // Nobody between taking the slot and cloning the
                        // handle, nobody holding a clone.
                        && Arc::strong_count(&h.cell) == 1
                        && h.cell.get().is_none_or(Db::is_unshared)
                })
                .map(|(k, _)| k.clone())
                .collect();
            idle_keys
                .into_iter()
                .filter_map(|k| {
                    let h = map.remove(&k)?;
                    h.cell.get().cloned().map(|db| (k, db))
                })
                .collect()
        };
        let n = closing.len();
        for (name, db) in closing {
            if let Err(e) = db.close().await {
                tracing::warn!(index = %name, error = %e, "closing an idle S3 Vectors index failed");
            }
        }
        n
    }

    /// Checks the signature, runs the operation, and answers JSON.
    pub async fn handle(&self, req: Request<'_>) -> Result<Value, S3vError> {
        let region = self.region_of(&req)?;
        let op = req.operation;
        let run = match OPERATIONS.iter().find(|o| o.name == op) {
            Some(Operation {
                run: Some(run),
                writes,
                ..
            }) => {
                if *writes && self.opts.role == Some(Role::Reader) {
                    return Err(error::read_only());
                }
                *run
            }
            Some(Operation { run: None, .. }) => {
                return Err(S3vError::new(
                    501,
                    "NotImplemented",
                    format!("shoal does not implement the S3 Vectors operation {op}"),
                ))
            }
            None => {
                return Err(S3vError::new(
                    404,
                    "UnknownOperationException",
                    format!("{op} is not an S3 Vectors operation"),
                ))
            }
        };
        let input = parse_body(req.body)?;
        let cx = Call {
            svc: self,
            input: &input,
            region,
        };
        run(&cx).await
    }

    /// Refuses, before its body is read, a request whose signature headers
    /// already fail (unsigned, malformed, unknown key, another region, out
    /// of the time window); the body's hash and the signature are checked
    /// by [`Service::handle`].
    pub fn precheck(&self, req: &Request<'_>) -> Result<(), S3vError> {
        let Some(creds) = &self.opts.credentials else {
            return Ok(());
        };
        let signed = sigv4::SignedRequest {
            method: req.method,
            path: req.path,
            query: req.query,
            headers: req.headers.clone(),
            body: &[],
        };
        sigv4::precheck(&signed, creds, SystemClock.now(), &self.opts.region)
            .map_err(|r| S3vError::new(403, r.code, r.message))
    }

    /// The region the request was signed for (checking the signature), or
    /// the configured one when signatures are not checked.
    fn region_of(&self, req: &Request<'_>) -> Result<String, S3vError> {
        let Some(creds) = &self.opts.credentials else {
            return Ok(self.opts.region.clone());
        };
        let signed = sigv4::SignedRequest {
            method: req.method,
            path: req.path,
            query: req.query,
            headers: req.headers.clone(),
            body: req.body,
        };
        Ok(
            sigv4::verify(&signed, creds, SystemClock.now(), &self.opts.region)
                .map_err(|r| S3vError::new(403, r.code, r.message))?
                .region,
        )
    }

    pub(super) fn bucket_arn(&self, region: &str, bucket: &str) -> String {
        format!(
            "arn:aws:s3vectors:{region}:{}:bucket/{bucket}",
            self.opts.account
        )
    }

    pub(super) fn index_arn(&self, region: &str, bucket: &str, index: &str) -> String {
        format!("{}/index/{index}", self.bucket_arn(region, bucket))
    }
}

/// The request body: a JSON object (an empty body reads as `{}`).
fn parse_body(body: &[u8]) -> Result<Map<String, Value>, S3vError> {
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| {
            S3vError::new(
                400,
                "ValidationException",
                format!("the request body is not valid JSON: {e}"),
            )
        })?
    };
    let Value::Object(input) = body else {
        return Err(S3vError::validation(
            "the request body must be a JSON object",
        ));
    };
    Ok(input)
}

/// One request's input and context.
struct Call<'a> {
    svc: &'a Service,
    input: &'a Map<String, Value>,
    region: String,
}
