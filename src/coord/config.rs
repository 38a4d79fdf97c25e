//! The shared config `_brainy/config.json` (DESIGN section 3).
//!
//! The Brainy schema, camelCase, extended with shoal's own settings:
//!
//! ```json
//! {
//!   "version": 1,
//!   "updated": "2026-11-21T10:30:00.000Z",
//!   "settings": {
//!     "partitionStrategy": "hash",
//!     "partitionCount": 100,
//!     "embeddingModel": "all-MiniLM-L6-v2",
//!     "dimensions": 384,
//!     "distanceMetric": "cosine",
//!     "instanceTimeoutSeconds": 60
//!   }
//! }
//! ```
//!
//! Fields this version does not know are kept when the config is rewritten
//! (forward compatibility). The first instance creates the object with a
//! create-only put; a racing loser re-reads and adopts the winner's
//! settings. Every later change is a compare-and-swap.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::cas::{self, Backoff, Step};
use super::clock::{format_time, Clock};
use super::error::{excerpt, CoordError};
use super::paths::{CONFIG_KEY, VECTORS_PREFIX};
use crate::store::{ETag, ObjectStore, StoreError};
use crate::text::TextFields;
pub use crate::vocab::{DomainRule, IndexSettings, Metric, TextField};

/// Current config format version.
pub(crate) const CONFIG_VERSION: u32 = 2;
/// The config version from which every manifest lives under
/// `_brainy/manifests/` (see `layout`): older shoal versions refuse it,
/// so none of them commits where nobody reads.
pub(crate) const LISTED_MANIFESTS_VERSION: u32 = 2;
/// The version a deleted index's config (its tombstone, see
/// [`tombstone`]) says it has: far above any real one, so shoal versions
/// that predate tombstones refuse it as "newer than this shoal
/// understands" instead of opening the deleted index.
pub(crate) const TOMBSTONE_VERSION: u32 = 1 << 20;
/// Hash partitions of a new index. Measured (`benches/partitions.rs`,
/// docs/benchmarks.md): every partition a batch touches costs a manifest
/// commit, and batches of random ids touch them all, so fewer is cheaper
/// (a 500-record batch: 2 PUTs at 1 partition, 9 at 8, 100 at 100); more
/// partitions let concurrent single-record writers commit side by side
/// (16 writers: 28 commits/s at 1 partition, 147 at 8, 238 at 100). 8
/// keeps a batch at a few requests and most of the small-write
/// concurrency.
pub const DEFAULT_PARTITION_COUNT: u32 = 8;
pub(crate) const DEFAULT_INSTANCE_TIMEOUT_SECONDS: u64 = 60;
pub(crate) const DEFAULT_EMBEDDING_MODEL: &str = "unspecified";
pub(crate) const MAX_PARTITION_COUNT: u32 = 4096;
/// The most partitions a *new* index may have: its manifests and the index
/// manifest then fit two LIST pages (1,000 keys each), so a reader's
/// freshness check is at most two requests. Indexes made earlier with more
/// (up to [`MAX_PARTITION_COUNT`]) still open; their check lists one page
/// per 1,000 manifests.
pub(crate) const MAX_NEW_PARTITION_COUNT: u32 = 1999;
pub(crate) use crate::vocab::MAX_DIMENSIONS;
/// Default GC grace period: how long a retired or unreferenced object is
/// kept before GC may delete it.
pub(crate) const DEFAULT_GC_GRACE_SECONDS: u64 = 15 * 60;
/// The shortest grace period a config may set (see `gcGraceSeconds`).
pub(crate) const MIN_GC_GRACE_SECONDS: u64 = 5 * 60;
/// The longest grace period a config may set (a week).
pub(crate) const MAX_GC_GRACE_SECONDS: u64 = 7 * 24 * 3600;

/// The whole config object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    pub version: u32,
    pub updated: String,
    pub settings: Settings,
    /// Top-level fields written by newer versions; preserved.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `config.settings`. Strings are kept as found so that validation can
/// name a bad value instead of failing inside the JSON parser.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    pub partition_strategy: String,
    pub partition_count: u32,
    pub embedding_model: String,
    pub dimensions: u32,
    pub distance_metric: String,
    /// Seconds after its last heartbeat that an instance counts as gone.
    #[serde(default = "default_instance_timeout")]
    pub instance_timeout_seconds: u64,
    /// Rules that detect a record's domain from its metadata fields;
    /// absent means the defaults (see `record::default_domain_rules`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_rules: Option<Vec<DomainRule>>,
    /// ANN index and compaction settings; absent means the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<IndexSettings>,
    /// GC's grace period. Writers bound their commits by it too: a segment
    /// whose PUT is older than half of it is never committed (GC may be
    /// about to delete it as an orphan), so GC must never use less.
    #[serde(default = "default_gc_grace")]
    pub gc_grace_seconds: u64,
    /// Every partition manifest was created (empty) when the index was
    /// initialized, so a missing manifest is corruption, never "empty".
    /// Absent in indexes made before shoal recorded it; the first writer
    /// to join upgrades them (see `coord::manifest::create_missing`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partitions_initialized: bool,
    /// Metadata keys searchable as full text, each with its analyzer
    /// (`text::TextFields`); absent means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_fields: Option<BTreeMap<String, TextField>>,
    /// Settings written by newer versions; preserved.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn default_instance_timeout() -> u64 {
    DEFAULT_INSTANCE_TIMEOUT_SECONDS
}

fn default_gc_grace() -> u64 {
    DEFAULT_GC_GRACE_SECONDS
}

impl Settings {
    /// The index settings in force (the config's, else the defaults).
    pub fn index(&self) -> IndexSettings {
        self.index.clone().unwrap_or_default()
    }

    /// The domain rules in force (the config's, else the defaults).
    pub fn domain_rules(&self) -> Vec<DomainRule> {
        self.domain_rules
            .clone()
            .unwrap_or_else(crate::vocab::default_domain_rules)
    }

    /// GC's grace period.
    pub fn gc_grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.gc_grace_seconds)
    }

    /// The oldest a segment may be (since its PUT, by the writer's wall
    /// clock) when its manifest entry is committed: half the grace period,
    /// so that GC, which deletes unreferenced objects only once they are a
    /// whole grace period old by the store's clock, never deletes a segment
    /// a writer is about to commit, with the other half as margin for
    /// clock skew and the commit's own round trips.
    pub(crate) fn commit_age_bound(&self) -> std::time::Duration {
        self.gc_grace() / 2
    }

    /// The full-text searchable keys. Only call on validated settings.
    pub fn text_fields(&self) -> TextFields {
        self.text_fields
            .as_ref()
            .map(|f| TextFields::from_settings(f).expect("settings were validated when loaded"))
            .unwrap_or_default()
    }

    /// The validated metric. Only call on validated settings.
    pub fn metric(&self) -> Metric {
        self.distance_metric
            .parse()
            .expect("settings were validated when loaded")
    }

    /// Checks every field; the error names the setting and the value.
    pub fn validate(&self) -> Result<(), CoordError> {
        if self.partition_strategy != "hash" {
            return Err(CoordError::InvalidSetting {
                setting: "partitionStrategy",
                value: format!("{:?}", self.partition_strategy),
                expected: "only \"hash\" is supported".into(),
            });
        }
        check_partition_count(self.partition_count)?;
        check_dimensions(self.dimensions)?;
        Metric::from_str(&self.distance_metric)?;
        if let Some(ix) = &self.index {
            ix.validate()?;
        }
        if let Some(f) = &self.text_fields {
            TextFields::from_settings(f)?;
        }
        if self.instance_timeout_seconds == 0 {
            return Err(CoordError::InvalidSetting {
                setting: "instanceTimeoutSeconds",
                value: "0".into(),
                expected: "at least 1".into(),
            });
        }
        check_gc_grace(self.gc_grace_seconds)
    }
}

fn check_gc_grace(n: u64) -> Result<(), CoordError> {
    if !(MIN_GC_GRACE_SECONDS..=MAX_GC_GRACE_SECONDS).contains(&n) {
        return Err(CoordError::InvalidSetting {
            setting: "gcGraceSeconds",
            value: n.to_string(),
            expected: format!(
                "between {MIN_GC_GRACE_SECONDS} and {MAX_GC_GRACE_SECONDS}: writers commit \
                 within half of it and GC deletes nothing younger"
            ),
        });
    }
    Ok(())
}

fn check_partition_count(n: u32) -> Result<(), CoordError> {
    if !(1..=MAX_PARTITION_COUNT).contains(&n) {
        return Err(CoordError::InvalidSetting {
            setting: "partitionCount",
            value: n.to_string(),
            expected: format!("between 1 and {MAX_PARTITION_COUNT}"),
        });
    }
    Ok(())
}

fn check_dimensions(n: u32) -> Result<(), CoordError> {
    if !(1..=MAX_DIMENSIONS).contains(&n) {
        return Err(CoordError::InvalidSetting {
            setting: "dimensions",
            value: n.to_string(),
            expected: format!("between 1 and {MAX_DIMENSIONS}"),
        });
    }
    Ok(())
}

/// What an instance asks for. `None` means "whatever the bucket has" (or
/// the default, when this instance creates the config).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestedSettings {
    pub partition_count: Option<u32>,
    pub dimensions: Option<u32>,
    pub distance_metric: Option<Metric>,
    pub embedding_model: Option<String>,
    pub instance_timeout_seconds: Option<u64>,
    /// Full-text searchable keys of a new index (`None`: none). Only a
    /// new index takes them: they are a setting that changes later
    /// (`textFields`, `update_config`), never a contradiction.
    pub text_fields: Option<BTreeMap<String, TextField>>,
}

impl RequestedSettings {
    /// Validates the requested values before anything is written.
    pub fn validate(&self) -> Result<(), CoordError> {
        if let Some(n) = self.partition_count {
            check_partition_count(n)?;
        }
        if let Some(n) = self.dimensions {
            check_dimensions(n)?;
        }
        if self.instance_timeout_seconds == Some(0) {
            return Err(CoordError::InvalidSetting {
                setting: "instanceTimeoutSeconds",
                value: "0".into(),
                expected: "at least 1".into(),
            });
        }
        if let Some(f) = &self.text_fields {
            TextFields::from_settings(f)?;
        }
        Ok(())
    }

    /// The first contradiction between these and the bucket's settings.
    pub fn contradiction(&self, bucket: &Settings) -> Option<CoordError> {
        let c = |setting, bucket: String, requested: String| CoordError::Contradiction {
            setting,
            bucket,
            requested,
        };
        if let Some(n) = self.dimensions.filter(|&n| n != bucket.dimensions) {
            return Some(c(
                "dimensions",
                bucket.dimensions.to_string(),
                n.to_string(),
            ));
        }
        if let Some(m) = self
            .distance_metric
            .filter(|m| m.as_str() != bucket.distance_metric)
        {
            return Some(c(
                "distanceMetric",
                bucket.distance_metric.clone(),
                m.to_string(),
            ));
        }
        if let Some(n) = self
            .partition_count
            .filter(|&n| n != bucket.partition_count)
        {
            return Some(c(
                "partitionCount",
                bucket.partition_count.to_string(),
                n.to_string(),
            ));
        }
        if let Some(m) = self
            .embedding_model
            .as_ref()
            .filter(|m| **m != bucket.embedding_model)
        {
            return Some(c(
                "embeddingModel",
                bucket.embedding_model.clone(),
                m.clone(),
            ));
        }
        None
    }

    /// A fresh config from these settings plus defaults.
    fn to_config(&self, now: String) -> Result<Config, CoordError> {
        let dimensions = self.dimensions.ok_or_else(|| {
            CoordError::MissingSetting(format!(
                "the bucket has no {CONFIG_KEY} yet and no dimensions were given: pass the \
                 vector dimensions (e.g. `shoal init --dimensions 384`) to create the index"
            ))
        })?;
        let partition_count = self.partition_count.unwrap_or(DEFAULT_PARTITION_COUNT);
        if partition_count > MAX_NEW_PARTITION_COUNT {
            return Err(CoordError::InvalidSetting {
                setting: "partitionCount",
                value: partition_count.to_string(),
                expected: format!(
                    "between 1 and {MAX_NEW_PARTITION_COUNT} for a new index (a reader's \
                     freshness check lists every manifest: at most two LIST pages)"
                ),
            });
        }
        Ok(Config {
            version: CONFIG_VERSION,
            updated: now,
            settings: Settings {
                partition_strategy: "hash".into(),
                partition_count,
                embedding_model: self
                    .embedding_model
                    .clone()
                    .unwrap_or_else(|| DEFAULT_EMBEDDING_MODEL.into()),
                dimensions,
                distance_metric: self.distance_metric.unwrap_or(Metric::Cosine).to_string(),
                instance_timeout_seconds: self
                    .instance_timeout_seconds
                    .unwrap_or(DEFAULT_INSTANCE_TIMEOUT_SECONDS),
                domain_rules: None,
                index: None,
                gc_grace_seconds: DEFAULT_GC_GRACE_SECONDS,
                partitions_initialized: false,
                text_fields: self.text_fields.clone().filter(|f| !f.is_empty()),
                extra: Map::new(),
            },
            extra: Map::new(),
        })
    }
}

/// The config a deleted index keeps in place of its own, for good: its
/// presence makes every open of the index fail ([`CoordError::Deleted`])
/// and every running handle stop at its next config check, and since
/// configs are created only with create-only PUTs, nothing can create the
/// index anew at this prefix. `partition_count` (if known) tells a
/// resumed deletion which manifests to delete.
pub(crate) fn tombstone(partition_count: Option<u32>, at: &str) -> Vec<u8> {
    let body = serde_json::json!({
        "version": TOMBSTONE_VERSION,
        "deleted": {"at": at, "partitionCount": partition_count},
    });
    serde_json::to_vec(&body).expect("serializable")
}

/// Parses and validates config bytes read from `key`; a tombstone
/// ([`tombstone`]) is [`CoordError::Deleted`].
pub fn parse_config(key: &str, bytes: &[u8]) -> Result<Config, CoordError> {
    if let Ok(Value::Object(top)) = serde_json::from_slice::<Value>(bytes) {
        if let Some(d) = top.get("deleted") {
            return Err(CoordError::Deleted {
                key: key.into(),
                at: d["at"].as_str().unwrap_or("?").to_string(),
                partition_count: d["partitionCount"].as_u64().map(|n| n as u32),
            });
        }
    }
    let config: Config = cas::parse_json(key, bytes)?;
    if config.version > CONFIG_VERSION {
        return Err(CoordError::Corrupt {
            key: key.into(),
            reason: format!(
                "config version {} is newer than this shoal understands ({CONFIG_VERSION}); \
                 upgrade shoal",
                config.version
            ),
            found: excerpt(bytes),
        });
    }
    config
        .settings
        .validate()
        .map_err(|e| CoordError::Corrupt {
            key: key.into(),
            reason: e.to_string(),
            found: excerpt(bytes),
        })?;
    Ok(config)
}

/// Reads the bucket's config, if there is one.
pub async fn read_config(store: &dyn ObjectStore) -> Result<Option<(Config, ETag)>, CoordError> {
    match store.get(CONFIG_KEY).await {
        Ok(got) => Ok(Some((parse_config(CONFIG_KEY, &got.bytes)?, got.etag))),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Loads the bucket's config, creating it from `requested` if missing.
/// Refuses (naming the setting and both values) if `requested`
/// contradicts what the bucket has. Writes nothing when it refuses.
pub async fn load_or_create(
    store: &dyn ObjectStore,
    requested: &RequestedSettings,
    clock: &dyn Clock,
) -> Result<Config, CoordError> {
    requested.validate()?;
    loop {
        if let Some((config, _)) = read_config(store).await? {
            if let Some(err) = requested.contradiction(&config.settings) {
                return Err(err);
            }
            return Ok(config);
        }
        let fresh = requested.to_config(format_time(clock.now()))?;
        let bytes = serde_json::to_vec_pretty(&fresh).expect("serializable");
        match store.put_if_absent(CONFIG_KEY, bytes.into()).await {
            Ok(_) => return Ok(fresh),
            // Another instance created it first: loop to re-read and adopt it.
            Err(StoreError::AlreadyExists { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Read-modify-write of the config with compare-and-swap, retried on
/// conflict; `updated` is refreshed. `change` may run several times.
pub async fn update_config<F>(
    store: &dyn ObjectStore,
    clock: &dyn Clock,
    mut change: F,
) -> Result<Config, CoordError>
where
    F: FnMut(&mut Config) -> Result<(), CoordError>,
{
    let config = cas::update_json::<Value, _>(store, CONFIG_KEY, Backoff::default(), |cur| {
        let cur = cur.ok_or_else(|| {
            CoordError::MissingSetting(format!("cannot update {CONFIG_KEY}: it does not exist"))
        })?;
        let bytes = serde_json::to_vec(&cur).expect("serializable");
        let mut config = parse_config(CONFIG_KEY, &bytes)?;
        change(&mut config)?;
        config.settings.validate()?;
        config.updated = format_time(clock.now());
        Ok(Step::Write(
            serde_json::to_value(&config).expect("serializable"),
        ))
    })
    .await?
    .value;
    let bytes = serde_json::to_vec(&config).expect("serializable");
    parse_config(CONFIG_KEY, &bytes)
}

/// Makes sure every partition manifest (and the index manifest, DESIGN
/// section 11) exists and the config says so (`partitionsInitialized`). For a fresh index this creates the empty
/// manifests; for one made before shoal created them at init it is the
/// one-time upgrade: only partitions holding no objects get an empty
/// manifest, and one holding segments without a manifest is reported in
/// the result (and from then on reads, writes and GC treat it as the
/// corruption it is until `shoal repair`). A bucket made before the
/// manifests moved under `_brainy/manifests/` (config version 1) has them
/// moved first (`layout::upgrade`) and its config raised to version 2.
/// Idempotent, safe to race. Returns the config as now stored.
pub async fn initialize_partitions(
    store: &dyn ObjectStore,
    clock: &dyn Clock,
    config: Config,
) -> Result<(Config, super::manifest::Initialized), CoordError> {
    if config.settings.partitions_initialized && config.version >= LISTED_MANIFESTS_VERSION {
        return Ok((config, Default::default()));
    }
    if config.version < LISTED_MANIFESTS_VERSION {
        // The one-time move of the manifests under `_brainy/manifests/`.
        super::layout::upgrade(store, config.settings.partition_count).await?;
    }
    let done = super::manifest::create_missing(store, config.settings.partition_count).await?;
    super::index_manifest::create_index_manifest(store, config.settings.partition_count).await?;
    for s in &done.stranded {
        tracing::error!(
            manifest = %s.key,
            objects = s.objects,
            "partition {} holds objects but has no manifest; run `shoal repair {}`",
            s.partition,
            s.partition
        );
    }
    let config = update_config(store, clock, |c| {
        c.settings.partitions_initialized = true;
        c.version = c.version.max(LISTED_MANIFESTS_VERSION);
        Ok(())
    })
    .await?;
    Ok((config, done))
}

/// Changes settings. `partitionCount`, `dimensions` and `distanceMetric`
/// decide how stored data is laid out and compared, so they are refused
/// once anything exists under `vectors/` (checked with one LIST; this is an
/// administrative call, never on the query path).
pub async fn change_settings(
    store: &dyn ObjectStore,
    clock: &dyn Clock,
    requested: &RequestedSettings,
) -> Result<Config, CoordError> {
    requested.validate()?;
    // Data is any object but a manifest (every partition has one from init).
    let has_data = store
        .list(VECTORS_PREFIX)
        .await?
        .iter()
        .any(|o| !o.key.ends_with("/manifest.json"));
    let before = read_config(store)
        .await?
        .map(|(c, _)| c.settings.partition_count);
    let config = update_config(store, clock, |config| {
        let s = &mut config.settings;
        if has_data {
            if let Some(CoordError::Contradiction {
                setting,
                bucket,
                requested,
            }) = requested.contradiction(s)
            {
                if setting != "embeddingModel" {
                    return Err(CoordError::Immutable {
                        setting,
                        from: bucket,
                        to: requested,
                    });
                }
            }
        }
        if let Some(n) = requested.partition_count {
            s.partition_count = n;
        }
        if let Some(n) = requested.dimensions {
            s.dimensions = n;
        }
        if let Some(m) = requested.distance_metric {
            s.distance_metric = m.to_string();
        }
        if let Some(m) = &requested.embedding_model {
            s.embedding_model = m.clone();
        }
        if let Some(t) = requested.instance_timeout_seconds {
            s.instance_timeout_seconds = t;
        }
        Ok(())
    })
    .await?;
    // A new partition count on an index without data: the manifests follow.
    let now = config.settings.partition_count;
    if let Some(old) = before.filter(|&old| old != now) {
        for p in now..old {
            store.delete(&super::paths::manifest_key(p)).await?;
        }
        if config.settings.partitions_initialized {
            super::manifest::create_missing(store, now).await?;
            // Nothing is indexed yet: a fresh index manifest of the new size.
            store.delete(super::paths::INDEX_MANIFEST_KEY).await?;
            super::index_manifest::create_index_manifest(store, now).await?;
        }
    }
    Ok(config)
}

/// Settings no one sets by hand.
const FIXED_SETTINGS: [&str; 2] = ["partitionStrategy", "partitionsInitialized"];

/// Changes settings named by their JSON paths (`gcGraceSeconds`,
/// `embeddingModel`,
/// `index.nprobe`, ...) to JSON values, with compare-and-swap: an unknown
/// setting, a value of the wrong type or out of range, and a layout
/// setting (`partitionCount`, `dimensions`, `distanceMetric`) once data
/// exists are refused, naming the setting, and nothing is written.
pub async fn set_settings(
    store: &dyn ObjectStore,
    clock: &dyn Clock,
    changes: &[(String, Value)],
) -> Result<Config, CoordError> {
    let bad = |m: String| Err(CoordError::BadChange(m));
    if changes.is_empty() {
        return bad("no settings to change".into());
    }
    let (layout, other) = split_changes(changes)?;
    let has_layout = layout.dimensions.is_some()
        || layout.partition_count.is_some()
        || layout.distance_metric.is_some();
    // Check every other change against the stored config before writing
    // anything, layout changes included.
    let apply = |config: &mut Config| apply_changes(config, &other);
    let Some((mut probe, _)) = read_config(store).await? else {
        return bad(format!(
            "cannot change settings: {CONFIG_KEY} does not exist"
        ));
    };
    apply(&mut probe)?;
    if has_layout {
        change_settings(store, clock, &layout).await?;
    }
    if other.is_empty() {
        return read_config(store)
            .await?
            .map(|(c, _)| c)
            .ok_or_else(|| CoordError::MissingSetting(format!("{CONFIG_KEY} vanished")));
    }
    update_config(store, clock, apply).await
}

/// Sorts the changes into layout settings (typed, for [`change_settings`])
/// and all others (JSON paths); refuses fixed settings and ill-typed layout
/// values.
fn split_changes(
    changes: &[(String, Value)],
) -> Result<(RequestedSettings, Vec<(String, Value)>), CoordError> {
    let bad = |m: String| Err(CoordError::BadChange(m));
    let mut layout = RequestedSettings::default();
    let mut other = Vec::new();
    for (key, value) in changes {
        if FIXED_SETTINGS.contains(&key.as_str()) {
            return bad(format!("{key} is managed by shoal and cannot be set"));
        }
        match key.as_str() {
            "partitionCount" | "dimensions" => {
                let Some(n) = value.as_u64().and_then(|n| u32::try_from(n).ok()) else {
                    return bad(format!("{key} must be a positive integer, not {value}"));
                };
                if key == "dimensions" {
                    layout.dimensions = Some(n);
                } else {
                    layout.partition_count = Some(n);
                }
            }
            "distanceMetric" => {
                let m = value
                    .as_str()
                    .and_then(|m| m.parse::<crate::vocab::Metric>().ok());
                let Some(m) = m else {
                    return bad(format!(
                        "distanceMetric must be cosine, euclidean or dot, not {value}"
                    ));
                };
                layout.distance_metric = Some(m);
            }
            _ => other.push((key.clone(), value.clone())),
        }
    }
    Ok((layout, other))
}

/// Applies the non-layout changes to `config`'s settings and validates the
/// result.
fn apply_changes(config: &mut Config, changes: &[(String, Value)]) -> Result<(), CoordError> {
    let mut v = serde_json::to_value(&config.settings).expect("serializable");
    let obj = v.as_object_mut().expect("settings are an object");
    for (key, value) in changes {
        set_path(obj, key, value)?;
    }
    config.settings = serde_json::from_value(v)
        .map_err(|e| CoordError::BadChange(format!("cannot apply {changes:?}: {e}")))?;
    config.settings.validate()?;
    if let Some(ix) = &config.settings.index {
        ix.validate()?;
    }
    Ok(())
}

/// Top-level settings a stored config may lack (their defaults are in
/// force) that a change may set.
const OPTIONAL_SETTINGS: [&str; 2] = ["domainRules", "textFields"];

/// Sets one setting, named by its JSON path (`name` or `group.name`), in
/// the settings object; refuses a path the settings do not have.
fn set_path(obj: &mut Map<String, Value>, key: &str, value: &Value) -> Result<(), CoordError> {
    let unknown = |keys: Vec<&String>| {
        CoordError::BadChange(format!("unknown setting {key}; settings here: {keys:?}"))
    };
    match key.split_once('.') {
        None => {
            // Optional settings absent from the stored config
            // (their defaults are in force) may be set too.
            if !obj.contains_key(key) && !OPTIONAL_SETTINGS.contains(&key) {
                return Err(unknown(obj.keys().collect()));
            }
            obj.insert(key.to_string(), value.clone());
        }
        Some((head, tail)) => {
            if head == "index" && !obj.contains_key("index") {
                let defaults = serde_json::to_value(IndexSettings::default());
                obj.insert("index".into(), defaults.expect("serializable"));
            }
            let keys: Vec<String> = obj.keys().cloned().collect();
            let Some(inner) = obj.get_mut(head).and_then(Value::as_object_mut) else {
                return Err(unknown(keys.iter().collect()));
            };
            if tail.contains('.') || !inner.contains_key(tail) {
                return Err(unknown(inner.keys().collect()));
            }
            inner.insert(tail.to_string(), value.clone());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
      "version": 1,
      "updated": "2026-11-21T10:30:00Z",
      "settings": {
        "partitionStrategy": "hash",
        "partitionCount": 100,
        "embeddingModel": "text-embedding-ada-002",
        "dimensions": 1536,
        "distanceMetric": "cosine",
        "futureSetting": {"x": 1}
      },
      "futureTopLevel": [1, 2]
    }"#;

    #[test]
    fn parses_the_brainy_schema_and_keeps_unknown_fields() {
        let c = parse_config(CONFIG_KEY, GOOD.as_bytes()).unwrap();
        assert_eq!(c.settings.dimensions, 1536);
        assert_eq!(c.settings.metric(), Metric::Cosine);
        assert_eq!(
            c.settings.instance_timeout_seconds, 60,
            "default when absent"
        );
        let out = serde_json::to_value(&c).unwrap();
        assert_eq!(out["settings"]["futureSetting"]["x"], 1);
        assert_eq!(out["futureTopLevel"][1], 2);
        assert_eq!(out["settings"]["partitionStrategy"], "hash");
        assert_eq!(out["settings"]["distanceMetric"], "cosine");
    }

    fn bad(field: &str, value: &str) -> String {
        let v: Value = serde_json::from_str(GOOD).unwrap();
        let mut v = v;
        v["settings"][field] = serde_json::from_str(value).unwrap();
        parse_config(CONFIG_KEY, v.to_string().as_bytes())
            .unwrap_err()
            .to_string()
    }

    /// A new index gets at most 1,999 partitions (two LIST pages of
    /// manifests); an existing config with more still parses.
    #[test]
    fn a_new_index_is_capped_at_two_list_pages_of_manifests() {
        let ask = |n: u32| RequestedSettings {
            partition_count: Some(n),
            dimensions: Some(4),
            ..Default::default()
        };
        assert!(ask(MAX_NEW_PARTITION_COUNT).to_config("t".into()).is_ok());
        let e = ask(MAX_NEW_PARTITION_COUNT + 1)
            .to_config("t".into())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("partitionCount = 2000") && e.contains("1999"),
            "{e}"
        );
        let v: Value = serde_json::from_str(GOOD).unwrap();
        let mut v = v;
        v["settings"]["partitionCount"] = 4096.into();
        parse_config(CONFIG_KEY, v.to_string().as_bytes()).expect("an older index opens");
    }

    #[test]
    fn invalid_settings_are_named() {
        let m = bad("partitionStrategy", "\"range\"");
        assert!(
            m.contains("partitionStrategy") && m.contains("\"range\""),
            "{m}"
        );
        assert!(m.contains(CONFIG_KEY), "{m}");
        let m = bad("partitionCount", "0");
        assert!(
            m.contains("partitionCount = 0") && m.contains("between 1 and 4096"),
            "{m}"
        );
        let m = bad("partitionCount", "4097");
        assert!(m.contains("partitionCount = 4097"), "{m}");
        let m = bad("dimensions", "0");
        assert!(m.contains("dimensions = 0") && m.contains("65536"), "{m}");
        let m = bad("dimensions", "70000");
        assert!(m.contains("dimensions = 70000"), "{m}");
        let m = bad("distanceMetric", "\"manhattan\"");
        assert!(
            m.contains("distanceMetric") && m.contains("cosine, euclidean, dot"),
            "{m}"
        );
    }

    #[test]
    fn corrupt_config_names_the_key_and_shows_what_was_found() {
        let m = parse_config(CONFIG_KEY, b"<html>oops</html>")
            .unwrap_err()
            .to_string();
        assert!(
            m.contains(CONFIG_KEY) && m.contains("<html>oops</html>"),
            "{m}"
        );
        let m = parse_config(CONFIG_KEY, b"{\"version\": 1}")
            .unwrap_err()
            .to_string();
        assert!(m.contains(CONFIG_KEY) && m.contains("missing field"), "{m}");
        let m = parse_config(CONFIG_KEY, &[0xff, 0xfe, 0, 1])
            .unwrap_err()
            .to_string();
        assert!(m.contains(CONFIG_KEY), "{m}");
    }

    #[test]
    fn newer_config_versions_are_refused() {
        let v = GOOD.replace("\"version\": 1", "\"version\": 99");
        let m = parse_config(CONFIG_KEY, v.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("version 99") && m.contains("upgrade shoal"),
            "{m}"
        );
    }

    #[test]
    fn requested_settings_are_validated() {
        let r = RequestedSettings {
            partition_count: Some(0),
            ..Default::default()
        };
        assert!(r
            .validate()
            .unwrap_err()
            .to_string()
            .contains("partitionCount = 0"));
        let r = RequestedSettings {
            dimensions: Some(65537),
            ..Default::default()
        };
        assert!(r
            .validate()
            .unwrap_err()
            .to_string()
            .contains("dimensions = 65537"));
        assert!("l1"
            .parse::<Metric>()
            .unwrap_err()
            .to_string()
            .contains("\"l1\""));
    }
}
