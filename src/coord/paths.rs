//! The bucket layout, in one place (DESIGN section 1). Every key shoal
//! reads or writes is built here.

use std::time::SystemTime;

/// The shared settings object.
pub const CONFIG_KEY: &str = "_brainy/config.json";
/// Folder of per-instance heartbeat records.
pub const INSTANCES_PREFIX: &str = "_brainy/instances/";
/// Scratch folder used by the conditional-write probe.
pub(crate) const PROBE_PREFIX: &str = "_brainy/probe/";
/// Folder holding every partition.
pub(crate) const VECTORS_PREFIX: &str = "vectors/";
/// Folder of the read-optimized layout (DESIGN section 11).
pub(crate) const INDEX_PREFIX: &str = "index/";
/// Folder holding every manifest and nothing else (the partition
/// manifests and the index manifest), so one LIST page shows each one's
/// ETag: a reader's freshness check costs one request whatever the
/// partition count (see [`super::layout`]).
pub(crate) const MANIFESTS_PREFIX: &str = "_brainy/manifests/";
/// The index manifest: shards, watermarks, deletion vectors, lease.
pub(crate) const INDEX_MANIFEST_KEY: &str = "_brainy/manifests/index.json";
/// Where the index manifest lived before manifests were listed together;
/// an upgraded bucket keeps a moved marker there (see [`super::layout`]).
pub(crate) const LEGACY_INDEX_MANIFEST_KEY: &str = "index/manifest.json";
/// The S3 Vectors catalog: the vector buckets and indexes `shoal serve
/// --s3vectors` serves from this store (each index lives under
/// `<vector-bucket>/<index>/` as an index of its own).
#[cfg(feature = "s3vectors")]
pub(crate) const S3VECTORS_CATALOG_KEY: &str = "_s3vectors/catalog.json";
/// Where the compactor Lambda resumes its round over the partitions.
pub const COMPACTOR_CURSOR_KEY: &str = "_brainy/compactor-cursor.json";

/// Who made a new segment: its id says so (`c` marks compaction outputs),
/// which helps when reading a bucket by hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SegmentOrigin {
    Writer,
    Compaction,
}

/// A fresh segment key: `vectors/pNNN/<unix ms>-[c]<128 random bits>.seg`.
/// Time first, so a listing sorts roughly by age; the random bits make
/// the key unique without coordination (create-only PUTs rely on it).
pub(crate) fn new_segment_key(partition: u32, now: SystemTime, origin: SegmentOrigin) -> String {
    let marker = match origin {
        SegmentOrigin::Writer => "",
        SegmentOrigin::Compaction => COMPACTION_MARKER,
    };
    segment_key(partition, &fresh_id(now, marker))
}

/// A fresh batch object key (one write's segments for several partitions,
/// see `segment::batch`), in the folder of the first partition it holds a
/// section of: `vectors/p003/<unix ms>-b<128 random bits>.seg`. That
/// partition's manifest names it, and a manifest naming a section is
/// version 2, which older shoal versions cannot read: their GC leaves the
/// folder of a manifest it cannot read alone, so it never deletes a batch
/// object during a rolling upgrade.
pub(crate) fn new_batch_key(first_partition: u32, now: SystemTime) -> String {
    segment_key(first_partition, &fresh_id(now, BATCH_MARKER))
}

/// What follows the time in a batch object's id.
const BATCH_MARKER: &str = "b";

/// Whether `key` names a batch object (see [`new_batch_key`]).
pub(crate) fn is_batch_key(key: &str) -> bool {
    key.starts_with(VECTORS_PREFIX)
        && key
            .rsplit('/')
            .next()
            .and_then(|name| name.strip_suffix(".seg"))
            .and_then(|id| id.split_once('-'))
            .and_then(|(_, rest)| rest.strip_prefix(BATCH_MARKER))
            .is_some_and(|random| random.len() == 32)
}

/// What follows the time in a compaction output's segment id.
const COMPACTION_MARKER: &str = "c";

/// Who made the segment at `key`, read from its id (see
/// [`new_segment_key`]); `None` for a key of another shape.
pub(crate) fn segment_origin(key: &str) -> Option<SegmentOrigin> {
    let (_, rest) = key
        .rsplit('/')
        .next()?
        .strip_suffix(".seg")?
        .split_once('-')?;
    match rest.strip_prefix(COMPACTION_MARKER) {
        Some(random) if random.len() == 32 => Some(SegmentOrigin::Compaction),
        _ if rest.len() == 32 => Some(SegmentOrigin::Writer),
        _ => None,
    }
}

/// A fresh shard key: `index/shards/<unix ms>-<128 random bits>.shard`.
pub(crate) fn new_shard_key(now: SystemTime) -> String {
    format!("{INDEX_PREFIX}shards/{}.shard", fresh_id(now, ""))
}

/// A fresh deletion-vector key: `index/dv/<unix ms>-<128 random bits>.dv`.
pub(crate) fn new_deletions_key(now: SystemTime) -> String {
    format!("{INDEX_PREFIX}dv/{}.dv", fresh_id(now, ""))
}

/// A fresh routing key for generation `g`:
/// `index/routing/<g, 20 digits>-<unix ms>-<128 random bits>.routing`.
pub(crate) fn new_routing_key(g: u64, now: SystemTime) -> String {
    format!(
        "{INDEX_PREFIX}routing/{g:020}-{}.routing",
        fresh_id(now, "")
    )
}

/// `<unix ms>-<marker><128 random bits>`: time first, so a listing sorts
/// roughly by age; the random bits make the id unique without
/// coordination (create-only PUTs rely on it).
fn fresh_id(now: SystemTime, marker: &str) -> String {
    format!(
        "{:013}-{marker}{:016x}{:016x}",
        super::clock::unix_millis(now),
        super::entropy::random_u64(),
        super::entropy::random_u64()
    )
}

/// Scratch keys for one run of the conditional-write probe: one to write,
/// one that must stay missing.
pub fn probe_keys() -> (String, String) {
    let id = format!(
        "{:016x}{:016x}",
        super::entropy::random_u64(),
        super::entropy::random_u64()
    );
    (
        format!("{PROBE_PREFIX}{id}"),
        format!("{PROBE_PREFIX}{id}-missing"),
    )
}

/// `_brainy/instances/<id>.json`
pub(crate) fn instance_key(instance_id: &str) -> String {
    format!("{INSTANCES_PREFIX}{instance_id}.json")
}

/// The instance id encoded in an instance record's key, if it is one.
pub(crate) fn instance_id_from_key(key: &str) -> Option<&str> {
    key.strip_prefix(INSTANCES_PREFIX)?.strip_suffix(".json")
}

/// `vectors/p007`: `p` plus the index zero-padded to at least 3 digits.
pub(crate) fn partition_dir(partition: u32) -> String {
    format!("{VECTORS_PREFIX}p{partition:03}")
}

/// `_brainy/manifests/p007.json`
pub(crate) fn manifest_key(partition: u32) -> String {
    format!("{MANIFESTS_PREFIX}p{partition:03}.json")
}

/// `vectors/p007/manifest.json`: where partition 7's manifest lived before
/// manifests were listed together (see [`super::layout`]).
pub(crate) fn legacy_manifest_key(partition: u32) -> String {
    format!("{}/manifest.json", partition_dir(partition))
}

/// The partition whose manifest is at `key`, if it is one.
pub(crate) fn partition_of_manifest(key: &str) -> Option<u32> {
    let digits = key
        .strip_prefix(MANIFESTS_PREFIX)?
        .strip_prefix('p')?
        .strip_suffix(".json")?;
    let p: u32 = digits.parse().ok()?;
    (manifest_key(p) == key).then_some(p)
}

/// The legacy key of the manifest at `key` (a partition manifest or the
/// index manifest); `None` for any other key.
pub(crate) fn legacy_of(key: &str) -> Option<String> {
    if key == INDEX_MANIFEST_KEY {
        return Some(LEGACY_INDEX_MANIFEST_KEY.to_string());
    }
    partition_of_manifest(key).map(legacy_manifest_key)
}

/// `vectors/p007/<segment-id>.seg`
pub(crate) fn segment_key(partition: u32, segment_id: &str) -> String {
    format!("{}/{segment_id}.seg", partition_dir(partition))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_design() {
        assert_eq!(partition_dir(0), "vectors/p000");
        assert_eq!(partition_dir(99), "vectors/p099");
        assert_eq!(partition_dir(4095), "vectors/p4095");
        assert_eq!(manifest_key(7), "_brainy/manifests/p007.json");
        assert_eq!(manifest_key(4095), "_brainy/manifests/p4095.json");
        assert_eq!(
            partition_of_manifest("_brainy/manifests/p007.json"),
            Some(7)
        );
        assert_eq!(partition_of_manifest("_brainy/manifests/p7.json"), None);
        assert_eq!(partition_of_manifest(INDEX_MANIFEST_KEY), None);
        assert_eq!(legacy_manifest_key(7), "vectors/p007/manifest.json");
        assert_eq!(
            legacy_of(&manifest_key(7)).as_deref(),
            Some("vectors/p007/manifest.json")
        );
        assert_eq!(
            legacy_of(INDEX_MANIFEST_KEY).as_deref(),
            Some("index/manifest.json")
        );
        assert_eq!(legacy_of("vectors/p007/manifest.json"), None);
        assert_eq!(segment_key(12, "abc"), "vectors/p012/abc.seg");
        assert_eq!(instance_key("i-1"), "_brainy/instances/i-1.json");
        assert_eq!(
            instance_id_from_key("_brainy/instances/i-1.json"),
            Some("i-1")
        );
        assert_eq!(instance_id_from_key("_brainy/config.json"), None);
        let k = new_segment_key(3, SystemTime::UNIX_EPOCH, SegmentOrigin::Compaction);
        assert!(
            k.starts_with("vectors/p003/0000000000000-c") && k.ends_with(".seg"),
            "{k}"
        );
        assert_ne!(
            k,
            new_segment_key(3, SystemTime::UNIX_EPOCH, SegmentOrigin::Compaction)
        );
        assert_eq!(segment_origin(&k), Some(SegmentOrigin::Compaction));
        let w = new_segment_key(3, SystemTime::UNIX_EPOCH, SegmentOrigin::Writer);
        assert_eq!(segment_origin(&w), Some(SegmentOrigin::Writer));
        // Random hex that happens to start with "c" is still a writer's.
        let tricky = segment_key(3, &format!("0000000000000-c{}", "0".repeat(31)));
        assert_eq!(segment_origin(&tricky), Some(SegmentOrigin::Writer));
        assert_eq!(segment_origin("vectors/p003/manifest.json"), None);
        let s = new_shard_key(SystemTime::UNIX_EPOCH);
        assert!(
            s.starts_with("index/shards/0000000000000-") && s.ends_with(".shard"),
            "{s}"
        );
        let d = new_deletions_key(SystemTime::UNIX_EPOCH);
        assert!(
            d.starts_with("index/dv/0000000000000-") && d.ends_with(".dv"),
            "{d}"
        );
        let (a, b) = probe_keys();
        assert!(a.starts_with(PROBE_PREFIX) && b == format!("{a}-missing"));
    }
}
