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
//! index under `<vector-bucket>/<index>/` of the store shoal serves, with
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

pub mod sigv4;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::coord::catalog::{self, Catalog, CatalogCache, CatalogError, IndexEntry, VectorBucket};
use crate::coord::clock::{Clock, SystemClock};
use crate::coord::{JoinOptions, Metric, RequestedSettings, Role};
use crate::db::{Db, OpenOptions};
use crate::error::{Error, ErrorKind};
use crate::reader::{Consistency, SearchRequest};
use crate::record::Record;
use crate::store::{Counted, ObjectStore};

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
/// Names that would collide with an index at the root of the store.
const RESERVED_BUCKET_NAMES: [&str; 2] = ["vectors", "index"];
/// A deletion that has not finished after this long is taken to have
/// died: a `CreateIndex` of the same name then finishes it.
const STALE_DELETE: Duration = Duration::from_secs(10 * 60);

/// An error as S3 Vectors clients see it.
#[derive(Clone, Debug, PartialEq)]
pub struct S3vError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl S3vError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        S3vError {
            status,
            code,
            message: message.into(),
        }
    }

    fn validation(message: impl Into<String>) -> Self {
        S3vError::new(400, "ValidationException", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        S3vError::new(404, "NotFoundException", message)
    }

    fn conflict(message: impl Into<String>) -> Self {
        S3vError::new(409, "ConflictException", message)
    }

    /// The JSON body of the error answer.
    pub fn body(&self) -> Value {
        json!({"__type": self.code, "message": self.message})
    }
}

impl std::fmt::Display for S3vError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl From<Error> for S3vError {
    fn from(e: Error) -> Self {
        let (status, code) = match e.kind() {
            ErrorKind::InvalidInput if e.is_too_large() => (413, "ValidationException"),
            ErrorKind::InvalidInput => (400, "ValidationException"),
            ErrorKind::NotFound => (404, "NotFoundException"),
            ErrorKind::Conflict => (409, "ConflictException"),
            ErrorKind::Unavailable => (503, "ServiceUnavailableException"),
            ErrorKind::Corrupt | ErrorKind::Internal => (500, "InternalServerException"),
        };
        S3vError::new(status, code, e.to_string())
    }
}

impl From<crate::coord::CoordError> for S3vError {
    fn from(e: crate::coord::CoordError) -> Self {
        Error::from(e).into()
    }
}

/// The operations served, in the service model's spelling.
pub const OPERATIONS: [&str; 13] = [
    "CreateVectorBucket",
    "GetVectorBucket",
    "ListVectorBuckets",
    "DeleteVectorBucket",
    "CreateIndex",
    "GetIndex",
    "ListIndexes",
    "DeleteIndex",
    "PutVectors",
    "GetVectors",
    "DeleteVectors",
    "ListVectors",
    "QueryVectors",
];

/// Operations of the service model shoal does not implement.
const NOT_IMPLEMENTED: [&str; 9] = [
    "DeleteVectorBucketPolicy",
    "GetVectorBucketPolicy",
    "PutVectorBucketPolicy",
    "PutVectorBucketDefaultIndexMode",
    "UpdateIndexMode",
    "UpdateMetadataConfiguration",
    "ListTagsForResource",
    "TagResource",
    "UntagResource",
];

/// Whether `op` changes anything (a reader instance refuses those).
fn writes(op: &str) -> bool {
    matches!(
        op,
        "CreateVectorBucket"
            | "DeleteVectorBucket"
            | "CreateIndex"
            | "DeleteIndex"
            | "PutVectors"
            | "DeleteVectors"
    )
}

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
    /// How stale the catalog may be on the query path.
    pub catalog_max_age: Duration,
    /// The 12-digit account id in ARNs.
    pub account: String,
    /// Region in ARNs when requests are not signed.
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
            catalog_max_age: Duration::from_secs(1),
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
    root: Arc<Counted>,
    catalog: CatalogCache,
    /// Index handles by `bucket/index`, each opened once on first use
    /// (opening one never holds up requests to the others).
    indexes: std::sync::Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Db>>>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("root", &self.opts.root)
            .field("authenticates", &self.authenticates())
            .finish()
    }
}

fn now_secs() -> f64 {
    SystemClock
        .now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| (d.as_millis() as f64) / 1000.0)
}

impl Service {
    pub async fn open(opts: S3VectorsOptions) -> Result<Service, Error> {
        let root = crate::store::open(&opts.root).await?;
        Ok(Service {
            catalog: CatalogCache::new(opts.catalog_max_age),
            opts,
            root,
            indexes: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Whether signatures are checked.
    pub fn authenticates(&self) -> bool {
        self.opts.credentials.is_some()
    }

    /// Requests this service made to the root store (the catalog).
    pub fn store(&self) -> &Counted {
        &self.root
    }

    /// Closes every open index handle (instance records removed).
    pub async fn close(&self) {
        let open: Vec<_> = self.indexes.lock().unwrap().drain().collect();
        for (name, cell) in open {
            if let Some(db) = cell.get() {
                if let Err(e) = db.close().await {
                    tracing::warn!(index = %name, error = %e, "closing an S3 Vectors index failed");
                }
            }
        }
    }

    /// Checks the signature, runs the operation, and answers JSON.
    pub async fn handle(&self, req: Request<'_>) -> Result<Value, S3vError> {
        let region = match &self.opts.credentials {
            None => self.opts.region.clone(),
            Some(creds) => {
                let signed = sigv4::SignedRequest {
                    method: req.method,
                    path: req.path,
                    query: req.query,
                    headers: req.headers.clone(),
                    body: req.body,
                };
                sigv4::verify(&signed, creds, SystemClock.now())
                    .map_err(|r| S3vError::new(403, r.code, r.message))?
                    .region
            }
        };
        let op = req.operation;
        if !OPERATIONS.contains(&op) {
            return Err(if NOT_IMPLEMENTED.contains(&op) {
                S3vError::new(
                    501,
                    "NotImplemented",
                    format!("shoal does not implement the S3 Vectors operation {op}"),
                )
            } else {
                S3vError::new(
                    404,
                    "UnknownOperationException",
                    format!("{op} is not an S3 Vectors operation"),
                )
            });
        }
        if writes(op) && self.opts.role == Some(Role::Reader) {
            return Err(read_only());
        }
        let body: Value = if req.body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            serde_json::from_slice(req.body).map_err(|e| {
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
        let cx = Call {
            svc: self,
            input: &input,
            region,
        };
        match op {
            "CreateVectorBucket" => cx.create_bucket().await,
            "GetVectorBucket" => cx.get_bucket().await,
            "ListVectorBuckets" => cx.list_buckets().await,
            "DeleteVectorBucket" => cx.delete_bucket().await,
            "CreateIndex" => cx.create_index().await,
            "GetIndex" => cx.get_index().await,
            "ListIndexes" => cx.list_indexes().await,
            "DeleteIndex" => cx.delete_index().await,
            "PutVectors" => cx.put_vectors().await,
            "GetVectors" => cx.get_vectors().await,
            "DeleteVectors" => cx.delete_vectors().await,
            "ListVectors" => cx.list_vectors().await,
            "QueryVectors" => cx.query_vectors().await,
            _ => unreachable!("checked against OPERATIONS"),
        }
    }

    fn index_url(&self, bucket: &str, index: &str) -> String {
        format!("{}/{bucket}/{index}", self.opts.root.trim_end_matches('/'))
    }

    async fn fresh_catalog(&self) -> Result<Catalog, S3vError> {
        let cat = self.catalog.get(self.root.as_ref()).await?;
        self.forget_gone(&cat).await;
        Ok(cat)
    }

    /// Closes the handles of indexes `cat` no longer lists as live (deleted
    /// by any instance), so their heartbeats and background work stop.
    async fn forget_gone(&self, cat: &Catalog) {
        let gone: Vec<String> = self
            .indexes
            .lock()
            .unwrap()
            .keys()
            .filter(|name| {
                let (b, i) = name.split_once('/').unwrap_or((name, ""));
                live_index(cat, b, i).is_err()
            })
            .cloned()
            .collect();
        for name in gone {
            self.forget(&name).await;
        }
    }

    /// The catalog, revalidated first if the cached copy fails `has`
    /// (a name another instance may have just created is never answered
    /// NotFound from a stale copy).
    async fn catalog_with(&self, has: impl Fn(&Catalog) -> bool) -> Result<Catalog, S3vError> {
        let cat = self.fresh_catalog().await?;
        if has(&cat) {
            return Ok(cat);
        }
        let cat = self.catalog.revalidate(self.root.as_ref()).await?;
        self.forget_gone(&cat).await;
        Ok(cat)
    }

    async fn change_catalog<F>(&self, change: F) -> Result<Catalog, S3vError>
    where
        F: FnMut(&mut Catalog) -> Result<(), S3vError>,
    {
        match catalog::update(self.root.as_ref(), change).await {
            Ok(c) => {
                self.catalog.set(c.clone());
                Ok(c)
            }
            Err(CatalogError::Refused(e)) => Err(e),
            Err(CatalogError::Coord(e)) => Err(e.into()),
        }
    }

    /// The open handle on an index the catalog holds, opened (and its
    /// config created, if a crash left it missing) on first use.
    async fn index(&self, bucket: &str, index: &str) -> Result<(Db, IndexEntry), S3vError> {
        let cat = self
            .catalog_with(|c| live_index(c, bucket, index).is_ok())
            .await?;
        let name = format!("{bucket}/{index}");
        let entry = match live_index(&cat, bucket, index) {
            Ok(e) => e.clone(),
            Err(e) => {
                // Gone (maybe deleted by another instance): let go of it.
                self.forget(&name).await;
                return Err(e);
            }
        };
        let cell = self
            .indexes
            .lock()
            .unwrap()
            .entry(name)
            .or_default()
            .clone();
        let db = cell
            .get_or_try_init(|| self.open_index(bucket, index, &entry))
            .await?
            .clone();
        Ok((db, entry))
    }

    /// Closes and drops this instance's handle on an index, if it has one.
    async fn forget(&self, name: &str) {
        let cell = self.indexes.lock().unwrap().remove(name);
        if let Some(db) = cell.as_ref().and_then(|c| c.get()) {
            let _ = db.close().await;
        }
    }

    async fn open_index(&self, bucket: &str, index: &str, e: &IndexEntry) -> Result<Db, S3vError> {
        let metric = if e.distance_metric == "euclidean" {
            Metric::Euclidean
        } else {
            Metric::Cosine
        };
        let opts = OpenOptions {
            cluster: JoinOptions {
                settings: RequestedSettings {
                    dimensions: Some(e.dimension),
                    distance_metric: Some(metric),
                    partition_count: self.opts.partitions,
                    ..Default::default()
                },
                role: self.opts.role,
                create: self.opts.role != Some(Role::Reader),
                ..Default::default()
            },
            compact_every: self.opts.compact_every,
            gc_every: self.opts.gc_every,
            ..Default::default()
        };
        Ok(Db::open(&self.index_url(bucket, index), opts).await?)
    }

    /// Deletes every object under an index's prefix.
    async fn wipe(&self, bucket: &str, index: &str) -> Result<usize, S3vError> {
        let prefix = format!("{bucket}/{index}/");
        let objects = self
            .root
            .list(&prefix)
            .await
            .map_err(|e| S3vError::from(Error::from(e)))?;
        let n = objects.len();
        for o in objects {
            self.root
                .delete(&o.key)
                .await
                .map_err(|e| S3vError::from(Error::from(e)))?;
        }
        Ok(n)
    }

    fn bucket_arn(&self, region: &str, bucket: &str) -> String {
        format!(
            "arn:aws:s3vectors:{region}:{}:bucket/{bucket}",
            self.opts.account
        )
    }

    fn index_arn(&self, region: &str, bucket: &str, index: &str) -> String {
        format!("{}/index/{index}", self.bucket_arn(region, bucket))
    }
}

fn quota(message: String) -> S3vError {
    S3vError::new(402, "ServiceQuotaExceededException", message)
}

fn read_only() -> S3vError {
    S3vError::new(
        403,
        "AccessDeniedException",
        "this instance runs as a reader and serves reads only; send writes to a writer \
         (or both) instance, or start this one with --role writer (BRAINY_ROLE=writer)",
    )
}

/// The vector bucket `bucket`, or NotFound.
fn bucket_of<'c>(cat: &'c Catalog, bucket: &str) -> Result<&'c VectorBucket, S3vError> {
    cat.buckets
        .get(bucket)
        .ok_or_else(|| S3vError::not_found(format!("vector bucket {bucket} does not exist")))
}

/// The index `bucket/index`, unless it is missing or being deleted.
fn live_index<'c>(cat: &'c Catalog, bucket: &str, index: &str) -> Result<&'c IndexEntry, S3vError> {
    match bucket_of(cat, bucket)?.indexes.get(index) {
        Some(e) if e.deleting_since.is_none() => Ok(e),
        _ => Err(S3vError::not_found(format!(
            "index {index} does not exist in vector bucket {bucket}"
        ))),
    }
}

/// One request's input and context.
struct Call<'a> {
    svc: &'a Service,
    input: &'a Map<String, Value>,
    region: String,
}

/// A bucket or index name: 3 to 63 of `a-z 0-9 - .`, starting and ending
/// with a letter or digit.
fn check_name(what: &str, name: &str) -> Result<(), S3vError> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !(3..=63).contains(&name.len())
        || !name.chars().all(ok_char)
        || !edge(name.chars().next())
        || !edge(name.chars().last())
    {
        return Err(S3vError::validation(format!(
            "{what} {name:?} is invalid: use 3 to 63 lowercase letters, digits, hyphens and \
             dots, starting and ending with a letter or digit"
        )));
    }
    Ok(())
}

impl Call<'_> {
    fn str_field(&self, name: &str) -> Result<Option<&str>, S3vError> {
        match self.input.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(S3vError::validation(format!(
                "{name} must be a string, not {other}"
            ))),
        }
    }

    fn bool_field(&self, name: &str) -> Result<bool, S3vError> {
        match self.input.get(name) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(S3vError::validation(format!(
                "{name} must be true or false, not {other}"
            ))),
        }
    }

    fn int_field(&self, name: &str, min: u64, max: u64) -> Result<Option<u64>, S3vError> {
        match self.input.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(S3vError::validation(format!(
                    "{name} must be an integer from {min} to {max}, not {v}"
                ))),
            },
        }
    }

    fn list_field(&self, name: &str, min: usize, max: usize) -> Result<&Vec<Value>, S3vError> {
        match self.input.get(name) {
            Some(Value::Array(items)) if (min..=max).contains(&items.len()) => Ok(items),
            Some(Value::Array(items)) => Err(S3vError::validation(format!(
                "{name} holds {} items; from {min} to {max} are allowed",
                items.len()
            ))),
            None | Some(Value::Null) => Err(S3vError::validation(format!("{name} is required"))),
            Some(other) => Err(S3vError::validation(format!(
                "{name} must be a list, not {other}"
            ))),
        }
    }

    /// The vector bucket named by `vectorBucketName` or `vectorBucketArn`.
    fn bucket_name(&self) -> Result<String, S3vError> {
        match (
            self.str_field("vectorBucketName")?,
            self.str_field("vectorBucketArn")?,
        ) {
            (Some(name), None) => {
                check_name("vectorBucketName", name)?;
                Ok(name.to_string())
            }
            (None, Some(arn)) => {
                let name = arn
                    .split_once(":bucket/")
                    .map(|(_, rest)| rest)
                    .filter(|rest| arn.starts_with("arn:") && !rest.contains('/'))
                    .ok_or_else(|| {
                        S3vError::validation(format!("{arn:?} is not a vector bucket ARN"))
                    })?;
                check_name("vector bucket", name)?;
                Ok(name.to_string())
            }
            (Some(_), Some(_)) => Err(S3vError::validation(
                "give vectorBucketName or vectorBucketArn, not both",
            )),
            (None, None) => Err(S3vError::validation(
                "vectorBucketName or vectorBucketArn is required",
            )),
        }
    }

    /// The index named by bucket and `indexName`, or by `indexArn`.
    fn index_name(&self) -> Result<(String, String), S3vError> {
        if let Some(arn) = self.str_field("indexArn")? {
            if self.input.contains_key("indexName") || self.input.contains_key("vectorBucketName") {
                return Err(S3vError::validation(
                    "give indexArn, or vectorBucketName and indexName, not both",
                ));
            }
            let parsed = arn
                .split_once(":bucket/")
                .and_then(|(_, rest)| rest.split_once("/index/"))
                .filter(|(_, i)| arn.starts_with("arn:") && !i.contains('/'));
            let Some((bucket, index)) = parsed else {
                return Err(S3vError::validation(format!(
                    "{arn:?} is not a vector index ARN"
                )));
            };
            check_name("vector bucket", bucket)?;
            check_name("index", index)?;
            return Ok((bucket.to_string(), index.to_string()));
        }
        let bucket = self.bucket_name()?;
        let index = self
            .str_field("indexName")?
            .ok_or_else(|| S3vError::validation("indexName or indexArn is required"))?;
        check_name("indexName", index)?;
        Ok((bucket, index.to_string()))
    }

    fn consistency(&self) -> Result<Consistency, S3vError> {
        match self.input.get("consistency") {
            None | Some(Value::Null) => Ok(Consistency::Strong),
            Some(v) => serde_json::from_value(v.clone()).map_err(|_| {
                S3vError::validation(format!(
                    "consistency must be strong, bounded or eventual, not {v}"
                ))
            }),
        }
    }

    async fn create_bucket(&self) -> Result<Value, S3vError> {
        let name = self
            .str_field("vectorBucketName")?
            .ok_or_else(|| S3vError::validation("vectorBucketName is required"))?
            .to_string();
        check_name("vectorBucketName", &name)?;
        if RESERVED_BUCKET_NAMES.contains(&name.as_str()) {
            return Err(S3vError::validation(format!(
                "vector bucket name {name:?} is reserved by shoal's layout; pick another"
            )));
        }
        let encryption = match self.input.get("encryptionConfiguration") {
            None | Some(Value::Null) => None,
            Some(v) => match v.get("sseType").and_then(Value::as_str) {
                None | Some("AES256") => Some(v.clone()),
                Some(other) => {
                    return Err(S3vError::validation(format!(
                        "sseType {other} is not supported by shoal; objects are encrypted as \
                         the underlying bucket is (AES256)"
                    )))
                }
            },
        };
        let created = now_secs();
        self.svc
            .change_catalog(|c| {
                if c.buckets.contains_key(&name) {
                    return Err(S3vError::conflict(format!(
                        "a vector bucket named {name} already exists"
                    )));
                }
                if c.buckets.len() >= MAX_BUCKETS {
                    return Err(quota(format!(
                        "this store already holds {MAX_BUCKETS} vector buckets"
                    )));
                }
                c.buckets.insert(
                    name.clone(),
                    VectorBucket {
                        creation_time: created,
                        encryption_configuration: encryption.clone(),
                        indexes: Default::default(),
                    },
                );
                Ok(())
            })
            .await?;
        Ok(json!({"vectorBucketArn": self.svc.bucket_arn(&self.region, &name)}))
    }

    fn bucket_summary(&self, name: &str, b: &VectorBucket, full: bool) -> Value {
        let mut v = json!({
            "vectorBucketName": name,
            "vectorBucketArn": self.svc.bucket_arn(&self.region, name),
            "creationTime": b.creation_time,
        });
        if full {
            if let Some(e) = &b.encryption_configuration {
                v["encryptionConfiguration"] = e.clone();
            }
        }
        v
    }

    async fn get_bucket(&self) -> Result<Value, S3vError> {
        let name = self.bucket_name()?;
        let cat = self
            .svc
            .catalog_with(|c| c.buckets.contains_key(&name))
            .await?;
        let b = bucket_of(&cat, &name)?;
        Ok(json!({"vectorBucket": self.bucket_summary(&name, b, true)}))
    }

    /// A page of names from `names` (sorted): after `nextToken`, starting
    /// with `prefix`, at most `maxResults`.
    fn page<'n>(
        &self,
        names: impl Iterator<Item = &'n String>,
    ) -> Result<(Vec<&'n String>, Option<String>), S3vError> {
        let max = self
            .int_field("maxResults", 1, MAX_LIST_NAMES as u64)?
            .unwrap_or(MAX_LIST_NAMES as u64) as usize;
        let prefix = self.str_field("prefix")?.unwrap_or("");
        let after = self.str_field("nextToken")?.unwrap_or("");
        let mut out: Vec<&String> = names
            .filter(|n| n.starts_with(prefix) && n.as_str() > after)
            .take(max + 1)
            .collect();
        let next = if out.len() > max {
            out.truncate(max);
            out.last().map(|n| n.to_string())
        } else {
            None
        };
        Ok((out, next))
    }

    async fn list_buckets(&self) -> Result<Value, S3vError> {
        let cat = self.svc.fresh_catalog().await?;
        let (names, next) = self.page(cat.buckets.keys())?;
        let list: Vec<Value> = names
            .iter()
            .map(|n| self.bucket_summary(n, &cat.buckets[*n], false))
            .collect();
        let mut out = json!({"vectorBuckets": list});
        if let Some(t) = next {
            out["nextToken"] = json!(t);
        }
        Ok(out)
    }

    async fn delete_bucket(&self) -> Result<Value, S3vError> {
        let name = self.bucket_name()?;
        self.svc
            .change_catalog(|c| {
                let b = bucket_of(c, &name)?;
                if !b.indexes.is_empty() {
                    return Err(S3vError::conflict(format!(
                        "vector bucket {name} still holds {} indexes; delete them first",
                        b.indexes.len()
                    )));
                }
                c.buckets.remove(&name);
                Ok(())
            })
            .await?;
        Ok(json!({}))
    }

    async fn create_index(&self) -> Result<Value, S3vError> {
        let bucket = self.bucket_name()?;
        let index = self
            .str_field("indexName")?
            .ok_or_else(|| S3vError::validation("indexName is required"))?
            .to_string();
        check_name("indexName", &index)?;
        match self.str_field("dataType")? {
            Some("float32") => {}
            Some(other) => {
                return Err(S3vError::validation(format!(
                    "dataType {other} is not supported; use float32"
                )))
            }
            None => return Err(S3vError::validation("dataType is required (float32)")),
        }
        let dimension = self
            .int_field("dimension", 1, MAX_DIMENSION)?
            .ok_or_else(|| S3vError::validation("dimension is required (1 to 4096)"))?
            as u32;
        let metric = match self.str_field("distanceMetric")? {
            Some(m @ ("cosine" | "euclidean")) => m.to_string(),
            Some(other) => {
                return Err(S3vError::validation(format!(
                    "distanceMetric {other} is not supported; use cosine or euclidean"
                )))
            }
            None => {
                return Err(S3vError::validation(
                    "distanceMetric is required (cosine or euclidean)",
                ))
            }
        };
        let mut non_filterable = Vec::new();
        if let Some(cfg) = self.input.get("metadataConfiguration") {
            if let Some(keys) = cfg.get("nonFilterableMetadataKeys") {
                let keys = keys.as_array().ok_or_else(|| {
                    S3vError::validation("nonFilterableMetadataKeys must be a list of strings")
                })?;
                if keys.len() > 10 {
                    return Err(S3vError::validation(format!(
                        "nonFilterableMetadataKeys holds {} keys; at most 10 are allowed",
                        keys.len()
                    )));
                }
                for k in keys {
                    match k.as_str() {
                        Some(s) if (1..=63).contains(&s.len()) => non_filterable.push(s.into()),
                        _ => {
                            return Err(S3vError::validation(format!(
                                "non-filterable metadata key {k} must be a string of 1 to 63 \
                                 characters"
                            )))
                        }
                    }
                }
            }
            if cfg.get("textSearchConfigurations").is_some() {
                return Err(S3vError::validation(
                    "textSearchConfigurations are not supported by shoal",
                ));
            }
        }
        let created = now_secs();
        let entry = IndexEntry {
            creation_time: created,
            data_type: "float32".into(),
            dimension,
            distance_metric: metric,
            non_filterable_metadata_keys: non_filterable,
            deleting_since: None,
        };
        // A deletion that died half-way left objects behind: finish it
        // before the name is reused (only after STALE_DELETE, so a
        // deletion still running on another instance is never raced).
        let cat = self.svc.fresh_catalog().await?;
        let stale = cat
            .buckets
            .get(&bucket)
            .and_then(|b| b.indexes.get(&index))
            .and_then(|e| e.deleting_since)
            .is_some_and(|since| now_secs() - since > STALE_DELETE.as_secs_f64());
        if stale {
            self.svc.wipe(&bucket, &index).await?;
        }
        self.svc
            .change_catalog(|c| {
                let Some(b) = c.buckets.get_mut(&bucket) else {
                    return Err(S3vError::not_found(format!(
                        "vector bucket {bucket} does not exist"
                    )));
                };
                match b.indexes.get(&index) {
                    Some(e) if e.deleting_since.is_none() => {
                        return Err(S3vError::conflict(format!(
                            "an index named {index} already exists in vector bucket \
                             {bucket}"
                        )))
                    }
                    Some(e) if !stale => {
                        return Err(S3vError::conflict(format!(
                            "index {index} in vector bucket {bucket} is being deleted \
                             (since {:.0}); retry shortly",
                            e.deleting_since.unwrap_or_default()
                        )))
                    }
                    _ => {}
                }
                if b.indexes.len() >= MAX_INDEXES {
                    return Err(quota(format!(
                        "vector bucket {bucket} already holds {MAX_INDEXES} indexes"
                    )));
                }
                b.indexes.insert(index.clone(), entry.clone());
                Ok(())
            })
            .await?;
        // Create the index's config now, so a bad store fails here.
        self.svc.index(&bucket, &index).await?;
        Ok(json!({"indexArn": self.svc.index_arn(&self.region, &bucket, &index)}))
    }

    fn index_summary(&self, bucket: &str, index: &str, e: &IndexEntry, full: bool) -> Value {
        let mut v = json!({
            "vectorBucketName": bucket,
            "indexName": index,
            "indexArn": self.svc.index_arn(&self.region, bucket, index),
            "creationTime": e.creation_time,
        });
        if full {
            v["dataType"] = json!(e.data_type);
            v["dimension"] = json!(e.dimension);
            v["distanceMetric"] = json!(e.distance_metric);
            if !e.non_filterable_metadata_keys.is_empty() {
                v["metadataConfiguration"] =
                    json!({"nonFilterableMetadataKeys": e.non_filterable_metadata_keys});
            }
        }
        v
    }

    async fn get_index(&self) -> Result<Value, S3vError> {
        let (bucket, index) = self.index_name()?;
        let cat = self
            .svc
            .catalog_with(|c| live_index(c, &bucket, &index).is_ok())
            .await?;
        let e = live_index(&cat, &bucket, &index)?;
        Ok(json!({"index": self.index_summary(&bucket, &index, e, true)}))
    }

    async fn list_indexes(&self) -> Result<Value, S3vError> {
        let bucket = self.bucket_name()?;
        let cat = self
            .svc
            .catalog_with(|c| c.buckets.contains_key(&bucket))
            .await?;
        let b = bucket_of(&cat, &bucket)?;
        let live = b
            .indexes
            .iter()
            .filter(|(_, e)| e.deleting_since.is_none())
            .map(|(n, _)| n);
        let (names, next) = self.page(live)?;
        let list: Vec<Value> = names
            .iter()
            .map(|n| self.index_summary(&bucket, n, &b.indexes[*n], false))
            .collect();
        let mut out = json!({"indexes": list});
        if let Some(t) = next {
            out["nextToken"] = json!(t);
        }
        Ok(out)
    }

    async fn delete_index(&self) -> Result<Value, S3vError> {
        let (bucket, index) = self.index_name()?;
        let since = now_secs();
        // 1. Hide it: from now on no call finds it.
        self.svc
            .change_catalog(|c| {
                let live = c
                    .buckets
                    .get_mut(&bucket)
                    .and_then(|b| b.indexes.get_mut(&index))
                    .filter(|e| e.deleting_since.is_none());
                let Some(e) = live else {
                    return Err(S3vError::not_found(format!(
                        "index {index} does not exist in vector bucket {bucket}"
                    )));
                };
                e.deleting_since = Some(since);
                Ok(())
            })
            .await?;
        // 2. Let go of our handle, 3. delete its objects, 4. forget the name.
        self.svc.forget(&format!("{bucket}/{index}")).await;
        self.svc.wipe(&bucket, &index).await?;
        self.svc
            .change_catalog(|c| {
                if let Some(b) = c.buckets.get_mut(&bucket) {
                    if b.indexes.get(&index).and_then(|e| e.deleting_since) == Some(since) {
                        b.indexes.remove(&index);
                    }
                }
                Ok(())
            })
            .await?;
        Ok(json!({}))
    }

    async fn put_vectors(&self) -> Result<Value, S3vError> {
        let (bucket, index) = self.index_name()?;
        let items = self.list_field("vectors", 1, MAX_PUT)?;
        let (db, entry) = self.svc.index(&bucket, &index).await?;
        if db.role() == Role::Reader {
            return Err(read_only());
        }
        let mut records = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            records.push(to_record(i, item, &entry)?);
        }
        db.upsert(&records).await?;
        Ok(json!({}))
    }

    fn keys(&self, max: usize) -> Result<Vec<String>, S3vError> {
        self.list_field("keys", 1, max)?
            .iter()
            .enumerate()
            .map(|(i, k)| match k.as_str() {
                Some(s) => check_key(i, s).map(|()| s.to_string()),
                None => Err(S3vError::validation(format!("keys[{i}] must be a string"))),
            })
            .collect()
    }

    /// The answer for stored records: key, and data and metadata if asked.
    async fn fetch(
        &self,
        db: &Db,
        keys: Vec<String>,
        data: bool,
        metadata: bool,
        consistency: Consistency,
    ) -> Result<Vec<Value>, S3vError> {
        // One batch: each partition's freshness is checked once, not per key.
        let wanted: Vec<&str> = keys.iter().map(String::as_str).collect();
        let found = db.get_many(&wanted, consistency).await?;
        let vectors = keys
            .iter()
            .zip(found)
            .filter_map(|(key, rec)| {
                let rec = rec?;
                let mut v = json!({"key": key});
                if data {
                    v["data"] = json!({"float32": rec.vector});
                }
                if metadata {
                    v["metadata"] = Value::Object(from_stored(rec.metadata));
                }
                Some(v)
            })
            .collect();
        Ok(vectors)
    }

    async fn get_vectors(&self) -> Result<Value, S3vError> {
        let (bucket, index) = self.index_name()?;
        let keys = self.keys(MAX_GET)?;
        let (data, metadata) = (
            self.bool_field("returnData")?,
            self.bool_field("returnMetadata")?,
        );
        let consistency = self.consistency()?;
        let (db, _) = self.svc.index(&bucket, &index).await?;
        let vectors = self.fetch(&db, keys, data, metadata, consistency).await?;
        Ok(json!({"vectors": vectors}))
    }

    async fn delete_vectors(&self) -> Result<Value, S3vError> {
        let (bucket, index) = self.index_name()?;
        let keys = self.keys(MAX_PUT)?;
        let (db, _) = self.svc.index(&bucket, &index).await?;
        if db.role() == Role::Reader {
            return Err(read_only());
        }
        db.delete(&keys).await?;
        Ok(json!({}))
    }

    async fn list_vectors(&self) -> Result<Value, S3vError> {
        let (bucket, index) = self.index_name()?;
        let max = self
            .int_field("maxResults", 1, MAX_LIST_VECTORS as u64)?
            .unwrap_or(500) as usize;
        let count = self.int_field("segmentCount", 1, 16)?;
        let segment = self.int_field("segmentIndex", 0, 15)?;
        let (count, segment) = match (count, segment) {
            (None, None) => (1u32, 0u32),
            (Some(c), Some(s)) if s < c => (c as u32, s as u32),
            (Some(c), Some(s)) => {
                return Err(S3vError::validation(format!(
                    "segmentIndex {s} must be less than segmentCount {c}"
                )))
            }
            _ => {
                return Err(S3vError::validation(
                    "segmentCount and segmentIndex go together: give both or neither",
                ))
            }
        };
        let (data, metadata) = (
            self.bool_field("returnData")?,
            self.bool_field("returnMetadata")?,
        );
        let consistency = self.consistency()?;
        let (db, _) = self.svc.index(&bucket, &index).await?;
        let partitions = db.settings().partition_count;
        let (mut p, mut after) = match self.str_field("nextToken")? {
            None => (segment, None),
            Some(t) => decode_token(t, count, segment, partitions)?,
        };
        // Partitions p ≡ segment (mod count) hold this segment's vectors,
        // each listed in id order; the token says where the page stopped.
        let mut keys: Vec<String> = Vec::new();
        let mut next = None;
        while p < partitions {
            let ids = db.list_ids(p, consistency).await?;
            let start = match &after {
                Some(a) => ids.partition_point(|id| id <= a),
                None => 0,
            };
            for id in &ids[start..] {
                if keys.len() == max {
                    // Resume in this partition after the last key taken
                    // from it (none: from its start).
                    next = Some(encode_token(p, after.as_deref()));
                    break;
                }
                keys.push(id.clone());
                after = Some(id.clone());
            }
            if next.is_some() {
                break;
            }
            p += count;
            after = None;
        }
        let vectors = if data || metadata {
            self.fetch(&db, keys, data, metadata, consistency).await?
        } else {
            keys.into_iter().map(|k| json!({"key": k})).collect()
        };
        let mut out = json!({"vectors": vectors});
        if let Some(t) = next {
            out["nextToken"] = json!(t);
        }
        Ok(out)
    }

    async fn query_vectors(&self) -> Result<Value, S3vError> {
        let (bucket, index) = self.index_name()?;
        let k = self
            .int_field("topK", 1, MAX_TOP_K as u64)?
            .ok_or_else(|| S3vError::validation("topK is required (1 to 100)"))?
            as usize;
        if self.input.contains_key("queryTexts") {
            return Err(S3vError::validation(
                "queryTexts are not supported by shoal",
            ));
        }
        let vector = self
            .input
            .get("queryVector")
            .ok_or_else(|| S3vError::validation("queryVector is required"))
            .and_then(|v| floats("queryVector", v))?;
        let (db, entry) = self.svc.index(&bucket, &index).await?;
        if vector.len() != entry.dimension as usize {
            return Err(S3vError::validation(format!(
                "queryVector has {} dimensions; index {index} has {}",
                vector.len(),
                entry.dimension
            )));
        }
        let metadata = self.bool_field("returnMetadata")?;
        let distance = self.bool_field("returnDistance")?;
        let mut req = SearchRequest::new(vector, k);
        req.include_metadata = metadata;
        req.consistency = self.consistency()?;
        req.exact = self.bool_field("exact")?;
        req.nprobe = self.int_field("nprobe", 1, 1 << 20)?.map(|n| n as usize);
        if let Some(f) = self.input.get("filter").filter(|f| !f.is_null()) {
            req.filter = Some(to_stored_filter(f, &entry.non_filterable_metadata_keys)?);
        }
        let found = db.search(&req).await?;
        let vectors: Vec<Value> = found
            .results
            .into_iter()
            .map(|hit| {
                let mut v = json!({"key": hit.id});
                if distance {
                    v["distance"] = json!(hit.distance);
                }
                if metadata {
                    v["metadata"] = Value::Object(from_stored(hit.metadata.unwrap_or_default()));
                }
                v
            })
            .collect();
        Ok(json!({"vectors": vectors, "distanceMetric": entry.distance_metric}))
    }
}

fn check_key(i: usize, key: &str) -> Result<(), S3vError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(S3vError::validation(format!(
            "key {i} is {} bytes; keys are 1 to {MAX_KEY_BYTES} bytes",
            key.len()
        )));
    }
    Ok(())
}

fn floats(what: &str, v: &Value) -> Result<Vec<f32>, S3vError> {
    let list = v.get("float32").and_then(Value::as_array).ok_or_else(|| {
        S3vError::validation(format!("{what} must be {{\"float32\": [numbers]}}"))
    })?;
    list.iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_f64()
                .map(|f| f as f32)
                .filter(|f| f.is_finite())
                .ok_or_else(|| {
                    S3vError::validation(format!("{what} element {i} is {x}, not a finite float32"))
                })
        })
        .collect()
}

/// Metadata keys as shoal stores them: shoal keeps a `domain` field of its
/// own, so a user key `domain` (and, to stay reversible, any key starting
/// with `~`) gets one more leading `~`.
fn escape_key(k: &str) -> String {
    if k == "domain" || k.starts_with('~') {
        format!("~{k}")
    } else {
        k.to_string()
    }
}

/// Stored metadata as the user sent it: shoal's `domain` dropped, keys
/// unescaped.
fn from_stored(mut meta: Map<String, Value>) -> Map<String, Value> {
    meta.remove("domain");
    meta.into_iter()
        .map(|(k, v)| match k.strip_prefix('~') {
            Some(rest) => (rest.to_string(), v),
            None => (k, v),
        })
        .collect()
}

/// One `PutVectors` item as a shoal record, checked against S3 Vectors'
/// limits (which are tighter than shoal's own).
fn to_record(i: usize, item: &Value, entry: &IndexEntry) -> Result<Record, S3vError> {
    let key = item
        .get("key")
        .and_then(Value::as_str)
        .ok_or_else(|| S3vError::validation(format!("vectors[{i}].key is required (a string)")))?;
    check_key(i, key)?;
    let data = item
        .get("data")
        .ok_or_else(|| S3vError::validation(format!("vectors[{i}] (key {key:?}) has no data")))?;
    let vector = floats(&format!("vectors[{i}].data"), data)?;
    if vector.len() != entry.dimension as usize {
        return Err(S3vError::validation(format!(
            "vectors[{i}] (key {key:?}) has {} dimensions; the index has {}",
            vector.len(),
            entry.dimension
        )));
    }
    let mut stored = Map::new();
    match item.get("metadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(meta)) => {
            if meta.len() > MAX_METADATA_KEYS {
                return Err(S3vError::validation(format!(
                    "vectors[{i}] (key {key:?}) has {} metadata keys; at most \
                     {MAX_METADATA_KEYS} are allowed",
                    meta.len()
                )));
            }
            let mut filterable = Map::new();
            for (k, v) in meta {
                let ok = match v {
                    Value::String(_) | Value::Number(_) | Value::Bool(_) => true,
                    Value::Array(items) => items
                        .iter()
                        .all(|x| matches!(x, Value::String(_) | Value::Number(_) | Value::Bool(_))),
                    _ => false,
                };
                if !ok {
                    return Err(S3vError::validation(format!(
                        "vectors[{i}] (key {key:?}) metadata {k:?} is {v}: values are strings, \
                         numbers, booleans or lists of them"
                    )));
                }
                if !entry.non_filterable_metadata_keys.contains(k) {
                    filterable.insert(k.clone(), v.clone());
                }
                stored.insert(escape_key(k), v.clone());
            }
            let total = serde_json::to_vec(meta).map_or(0, |b| b.len());
            let part = serde_json::to_vec(&filterable).map_or(0, |b| b.len());
            if total > MAX_METADATA_BYTES || part > MAX_FILTERABLE_BYTES {
                return Err(S3vError::validation(format!(
                    "vectors[{i}] (key {key:?}) metadata is {total} bytes ({part} filterable); \
                     at most {MAX_METADATA_BYTES} ({MAX_FILTERABLE_BYTES} filterable) are allowed"
                )));
            }
        }
        Some(other) => {
            return Err(S3vError::validation(format!(
                "vectors[{i}] (key {key:?}) metadata must be an object, not {other}"
            )))
        }
    }
    Ok(Record::new(key, vector).with_metadata(Value::Object(stored)))
}

/// An S3 Vectors filter (the same operators as shoal's) with its field
/// names escaped like stored keys; a filter on a non-filterable key is
/// refused.
fn to_stored_filter(f: &Value, non_filterable: &[String]) -> Result<Value, S3vError> {
    fn walk(f: &Value, nf: &[String], depth: usize) -> Result<Value, S3vError> {
        if depth > crate::filter::MAX_DEPTH {
            return Err(S3vError::validation("the filter is nested too deeply"));
        }
        let Value::Object(obj) = f else {
            return Err(S3vError::validation(format!(
                "a filter must be a JSON object, found {f}"
            )));
        };
        let mut out = Map::new();
        for (k, v) in obj {
            if k == "$and" || k == "$or" {
                let items = v
                    .as_array()
                    .ok_or_else(|| S3vError::validation(format!("{k} needs a list of filters")))?;
                let mapped: Result<Vec<Value>, S3vError> =
                    items.iter().map(|x| walk(x, nf, depth + 1)).collect();
                out.insert(k.clone(), Value::Array(mapped?));
            } else {
                if nf.contains(k) {
                    return Err(S3vError::validation(format!(
                        "metadata key {k:?} is non-filterable in this index and cannot be used \
                         in a filter"
                    )));
                }
                out.insert(escape_key(k), v.clone());
            }
        }
        Ok(Value::Object(out))
    }
    let stored = walk(f, non_filterable, 0)?;
    crate::filter::parse_filter(&stored).map_err(|e| S3vError::validation(e.to_string()))?;
    Ok(stored)
}

/// `ListVectors` tokens: the partition to resume in and the last key
/// already listed from it (`None`: resume at its start).
fn encode_token(p: u32, after: Option<&str>) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&json!({"p": p, "after": after})).expect("json"))
}

fn decode_token(
    t: &str,
    count: u32,
    segment: u32,
    partitions: u32,
) -> Result<(u32, Option<String>), S3vError> {
    use base64::Engine;
    let bad = || S3vError::validation("nextToken is not a token this index's ListVectors gave");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let p = v.get("p").and_then(Value::as_u64).ok_or_else(bad)? as u32;
    let after = match v.get("after") {
        Some(Value::String(a)) => Some(a.clone()),
        Some(Value::Null) => None,
        _ => return Err(bad()),
    };
    if p >= partitions || p % count != segment {
        return Err(bad());
    }
    Ok((p, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(nf: &[&str]) -> IndexEntry {
        IndexEntry {
            creation_time: 0.0,
            data_type: "float32".into(),
            dimension: 2,
            distance_metric: "cosine".into(),
            non_filterable_metadata_keys: nf.iter().map(|s| s.to_string()).collect(),
            deleting_since: None,
        }
    }

    #[test]
    fn metadata_round_trips_through_shoals_domain_field() {
        let meta = json!({"domain": 7, "~x": "tilde", "genre": ["a", "b"], "n": 1.5});
        let rec = to_record(
            0,
            &json!({"key": "k", "data": {"float32": [1, 0]}, "metadata": meta}),
            &entry(&[]),
        )
        .unwrap();
        let stored = rec.metadata.clone().unwrap();
        assert_eq!(stored["~domain"], json!(7));
        assert_eq!(stored["~~x"], json!("tilde"));
        // What shoal adds (its own domain) disappears on the way out.
        let mut back = stored.as_object().unwrap().clone();
        back.insert("domain".into(), json!("general"));
        assert_eq!(Value::Object(from_stored(back)), meta);
    }

    #[test]
    fn filters_are_escaped_like_keys_and_non_filterable_keys_refused() {
        let f = json!({"$and": [{"domain": "x"}, {"genre": {"$in": ["a"]}}]});
        assert_eq!(
            to_stored_filter(&f, &[]).unwrap(),
            json!({"$and": [{"~domain": "x"}, {"genre": {"$in": ["a"]}}]})
        );
        let e = to_stored_filter(&json!({"$or": [{"body": "x"}]}), &["body".into()]).unwrap_err();
        assert_eq!(e.code, "ValidationException");
        assert!(e.message.contains("non-filterable"), "{}", e.message);
        let e = to_stored_filter(&json!({"a": {"$regex": "x"}}), &[]).unwrap_err();
        assert!(e.message.contains("$regex"), "{}", e.message);
    }

    #[test]
    fn vectors_and_metadata_outside_the_limits_are_refused() {
        let e = entry(&["body"]);
        let put = |v: Value| to_record(3, &v, &e).unwrap_err().message;
        assert!(put(json!({"key": "k", "data": {"float32": [1, 0, 0]}})).contains("3 dimensions"));
        assert!(put(json!({"data": {"float32": [1, 0]}})).contains("key is required"));
        assert!(put(json!({"key": "", "data": {"float32": [1, 0]}})).contains("1 to 1024"));
        let big = "x".repeat(MAX_FILTERABLE_BYTES);
        assert!(
            put(json!({"key": "k", "data": {"float32": [1, 0]}, "metadata": {"t": big}}))
                .contains("filterable")
        );
        // The same text under a non-filterable key fits.
        to_record(
            0,
            &json!({"key": "k", "data": {"float32": [1, 0]}, "metadata": {"body": big}}),
            &e,
        )
        .unwrap();
        assert!(
            put(json!({"key": "k", "data": {"float32": [1, 0]}, "metadata": {"o": {"a": 1}}}))
                .contains("values are strings")
        );
        let many: Map<String, Value> = (0..51).map(|i| (format!("k{i}"), json!(i))).collect();
        assert!(
            put(json!({"key": "k", "data": {"float32": [1, 0]}, "metadata": many}))
                .contains("51 metadata keys")
        );
    }

    #[test]
    fn names_follow_the_aws_rules() {
        for ok in ["abc", "my-bucket.v2", "a1b"] {
            check_name("n", ok).unwrap();
        }
        for bad in ["ab", "Abc", "-abc", "abc-", "a_bc", &"a".repeat(64), "a/b"] {
            assert!(check_name("n", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn list_tokens_round_trip_and_foreign_tokens_are_refused() {
        let t = encode_token(6, Some("key-9"));
        assert_eq!(
            decode_token(&t, 3, 0, 100).unwrap(),
            (6, Some("key-9".into()))
        );
        let start = encode_token(9, None);
        assert_eq!(decode_token(&start, 3, 0, 100).unwrap(), (9, None));
        assert!(
            decode_token(&t, 4, 1, 100).is_err(),
            "another segment's token"
        );
        assert!(decode_token(&t, 3, 0, 5).is_err(), "past the partitions");
        assert!(decode_token("garbage!", 1, 0, 100).is_err());
    }
}
