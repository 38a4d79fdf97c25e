//! Shared vocabulary: the words both the protocol (`coord`) and the data
//! path (`record`, `segment`, `index`) speak: the distance [`Metric`], the
//! ANN [`IndexSettings`], the [`DomainRule`]s, and the [`ErrorKind`] every
//! layer sorts its errors into. A leaf: it imports nothing of shoal, so
//! every other module may use it without a cycle.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The most dimensions an index may have.
pub(crate) const MAX_DIMENSIONS: u32 = 65536;

/// What went wrong, as far as a caller needs to know to react.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request is wrong (bad vector, filter, setting, JSON): fix it;
    /// retrying as is will fail again. Nothing was written.
    InvalidInput,
    /// What was asked for does not exist (no index at the URL, no record).
    NotFound,
    /// Someone else changed shared state first and shoal gave up (a
    /// contradicting config); re-read before trying again.
    Conflict,
    /// The store is unavailable or throttling, or contention did not settle:
    /// the same request may succeed later.
    Unavailable,
    /// An object in the bucket is damaged, foreign or missing although
    /// referenced; the error names its key. Run `shoal verify`.
    Corrupt,
    /// A bug or an environment problem (a panicked worker, bad
    /// credentials, a store that ignores conditional writes).
    Internal,
}

impl ErrorKind {
    /// Whether the same request may succeed later.
    pub fn is_retryable(self) -> bool {
        self == ErrorKind::Unavailable
    }
}

/// A setting with a value shoal does not accept; names the setting, the
/// value and what was expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting {setting} = {value}: {expected}")]
pub struct InvalidSetting {
    pub setting: &'static str,
    pub value: String,
    pub expected: String,
}

/// How vectors are compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Cosine similarity; vectors are normalized on write.
    Cosine,
    /// Euclidean (L2) distance.
    Euclidean,
    /// Inner product.
    Dot,
}

impl Metric {
    pub fn as_str(&self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::Euclidean => "euclidean",
            Metric::Dot => "dot",
        }
    }

    /// The metric's byte in binary formats (segments, shards, routings).
    pub(crate) fn code(self) -> u8 {
        match self {
            Metric::Cosine => 1,
            Metric::Euclidean => 2,
            Metric::Dot => 3,
        }
    }

    /// The metric a format byte names.
    pub(crate) fn from_code(code: u8) -> Option<Metric> {
        match code {
            1 => Some(Metric::Cosine),
            2 => Some(Metric::Euclidean),
            3 => Some(Metric::Dot),
            _ => None,
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Metric {
    type Err = InvalidSetting;
    fn from_str(s: &str) -> Result<Self, InvalidSetting> {
        match s {
            "cosine" => Ok(Metric::Cosine),
            "euclidean" => Ok(Metric::Euclidean),
            "dot" => Ok(Metric::Dot),
            other => Err(InvalidSetting {
                setting: "distanceMetric",
                value: format!("{other:?}"),
                expected: "one of cosine, euclidean, dot".into(),
            }),
        }
    }
}

/// The ANN index kind compacted segments and shards are built with
/// (`settings.index.kind`), parsed once when the config is read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnnKind {
    /// IVF: per-segment lists; shards are range-read with RaBitQ codes.
    #[default]
    Ivf,
    /// HNSW graphs (warm-only deployments); shards are read whole.
    Hnsw,
    /// No ANN index: exact scans.
    None,
}

impl AnnKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            AnnKind::Ivf => "ivf",
            AnnKind::Hnsw => "hnsw",
            AnnKind::None => "none",
        }
    }
}

impl fmt::Display for AnnKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AnnKind {
    type Err = InvalidSetting;

    fn from_str(s: &str) -> Result<Self, InvalidSetting> {
        match s {
            "ivf" => Ok(AnnKind::Ivf),
            "hnsw" => Ok(AnnKind::Hnsw),
            "none" => Ok(AnnKind::None),
            other => Err(InvalidSetting {
                setting: "index.kind",
                value: format!("{other:?}"),
                expected: "one of ivf, hnsw, none".into(),
            }),
        }
    }
}

/// `settings.index.nprobe` unless a config sets it.
pub const DEFAULT_NPROBE: u32 = 8;

/// `settings.index`: which ANN index compaction builds, and when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct IndexSettings {
    /// `ivf` (default), `hnsw` or `none`.
    pub kind: AnnKind,
    /// Segments with fewer records stay exact-scan.
    pub min_records: u64,
    /// IVF clusters per segment; default √n.
    pub nlist: Option<u32>,
    /// IVF clusters probed per segment per query (overridable per query).
    pub nprobe: u32,
    pub ef_construction: u32,
    /// HNSW candidates per query; fixed when the graph is built.
    pub ef_search: u32,
    /// Largest compacted segment.
    pub max_segment_records: u64,
    /// Largest HNSW segment (builds grow superlinearly).
    pub hnsw_max_segment_records: u64,
    /// Compact a partition once it has this many segments ...
    pub compact_min_segments: u32,
    /// ... or this share of dead records (shadowed versions, tombstones).
    pub compact_dead_fraction: f64,
}

impl Default for IndexSettings {
    fn default() -> Self {
        IndexSettings {
            kind: AnnKind::Ivf,
            min_records: 5_000,
            nlist: None,
            nprobe: DEFAULT_NPROBE,
            ef_construction: 100,
            ef_search: 64,
            max_segment_records: 200_000,
            hnsw_max_segment_records: 20_000,
            compact_min_segments: 8,
            compact_dead_fraction: 0.2,
        }
    }
}

impl IndexSettings {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let bad = |setting, value: String, expected: &str| InvalidSetting {
            setting,
            value,
            expected: expected.into(),
        };
        if self.nprobe == 0 || self.ef_search == 0 || self.ef_construction == 0 {
            return Err(bad(
                "index.nprobe/efSearch/efConstruction",
                "0".into(),
                "at least 1",
            ));
        }
        if self.max_segment_records == 0 || self.hnsw_max_segment_records == 0 {
            return Err(bad("index.maxSegmentRecords", "0".into(), "at least 1"));
        }
        if !(0.0..=1.0).contains(&self.compact_dead_fraction) {
            return Err(bad(
                "index.compactDeadFraction",
                self.compact_dead_fraction.to_string(),
                "between 0 and 1",
            ));
        }
        Ok(())
    }
}

/// How a full-text searchable key's text becomes terms
/// (`settings.textFields.<key>.analyzer`): `standard` (split on what is
/// not a letter or digit, lowercase), a language (`en`, `fr`, `es`, `pt`,
/// `it`, `de`, `nl`: also drops that language's stop words and stems), or
/// `zh`, `ja`, `ko` (CJK text as overlapping character bigrams).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Analyzer {
    Standard,
    En,
    Fr,
    Es,
    Pt,
    It,
    De,
    Nl,
    Zh,
    Ja,
    Ko,
}

impl Analyzer {
    pub const ALL: [Analyzer; 11] = [
        Analyzer::Standard,
        Analyzer::En,
        Analyzer::Fr,
        Analyzer::Es,
        Analyzer::Pt,
        Analyzer::It,
        Analyzer::De,
        Analyzer::Nl,
        Analyzer::Zh,
        Analyzer::Ja,
        Analyzer::Ko,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Analyzer::Standard => "standard",
            Analyzer::En => "en",
            Analyzer::Fr => "fr",
            Analyzer::Es => "es",
            Analyzer::Pt => "pt",
            Analyzer::It => "it",
            Analyzer::De => "de",
            Analyzer::Nl => "nl",
            Analyzer::Zh => "zh",
            Analyzer::Ja => "ja",
            Analyzer::Ko => "ko",
        }
    }

    /// Chinese, Japanese, Korean: written without spaces between words.
    pub fn is_cjk(&self) -> bool {
        matches!(self, Analyzer::Zh | Analyzer::Ja | Analyzer::Ko)
    }
}

impl fmt::Display for Analyzer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Analyzer {
    type Err = InvalidSetting;

    fn from_str(s: &str) -> Result<Self, InvalidSetting> {
        Analyzer::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| InvalidSetting {
                setting: "textFields.analyzer",
                value: format!("{s:?}"),
                expected: format!("one of {}", Analyzer::ALL.map(|a| a.as_str()).join(", ")),
            })
    }
}

/// One full-text searchable metadata key's settings
/// (`settings.textFields.<key>`). The analyzer is kept as written so
/// validation can name a bad one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TextField {
    pub analyzer: String,
}

/// One domain rule: any of `fields` present in the metadata → `domain`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DomainRule {
    pub fields: Vec<String>,
    pub domain: String,
}

/// The default rules: symptoms/diagnosis → medical, contract/clause →
/// legal, price/sku → product; anything else → general.
pub fn default_domain_rules() -> Vec<DomainRule> {
    let rule = |fields: &[&str], domain: &str| DomainRule {
        fields: fields.iter().map(|s| s.to_string()).collect(),
        domain: domain.into(),
    };
    vec![
        rule(&["symptoms", "diagnosis"], "medical"),
        rule(&["contract", "clause"], "legal"),
        rule(&["price", "sku"], "product"),
    ]
}

/// A byte count as people write it: `256MiB`, `1GiB`, `500MB`, `64k`,
/// `1048576`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)
        .ok_or_else(|| format!("{s:?} is not a size like 256MiB, 1GiB or 1048576"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {s:?}; use KiB, MiB, GiB, KB, MB or GB"
            ))
        }
    };
    Ok((n * mult) as u64)
}

#[cfg(test)]
mod size_tests {
    #[test]
    fn sizes_parse_with_binary_and_decimal_units_and_refuse_junk() {
        use super::parse_bytes;
        assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("500MB"), Ok(500_000_000));
        assert_eq!(parse_bytes(" 1048576 "), Ok(1 << 20));
        assert_eq!(parse_bytes("1.5k"), Ok(1536));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("").is_err());
    }
}
