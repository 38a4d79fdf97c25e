//! Role detection (DESIGN section 4): a preference, never a lock.
//!
//! Two instances may both decide to be writers (each saw no live writer
//! before the other registered). That is safe by design: every commit is a
//! compare-and-swap on a partition manifest, so any number of writers can
//! commit concurrently without losing or duplicating a record (DESIGN
//! section 6). Roles only tune caches and background work.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::CoordError;
use super::instance::InstanceRecord;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Reader,
    Writer,
    /// One process doing everything: the default for a local directory.
    Both,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Both => "both",
        }
    }

    /// Whether this role commits writes (and so cleans stale instances).
    pub fn writes(&self) -> bool {
        matches!(self, Role::Writer | Role::Both)
    }

    /// Whether this role serves queries.
    pub fn reads(&self) -> bool {
        matches!(self, Role::Reader | Role::Both)
    }

    /// Cache and buffer settings for this role.
    pub fn preset(&self) -> CachePreset {
        match self {
            Role::Reader => CachePreset {
                segment_cache_fraction: 0.8,
                aggressive_prefetch: true,
                cache_ttl: Duration::from_secs(3600),
                write_buffer_records: 0,
            },
            Role::Writer => CachePreset {
                segment_cache_fraction: 0.2,
                aggressive_prefetch: false,
                cache_ttl: Duration::from_secs(60),
                write_buffer_records: 10_000,
            },
            Role::Both => CachePreset {
                segment_cache_fraction: 0.5,
                aggressive_prefetch: false,
                cache_ttl: Duration::from_secs(3600),
                write_buffer_records: 10_000,
            },
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = CoordError;
    fn from_str(s: &str) -> Result<Self, CoordError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "reader" => Ok(Role::Reader),
            "writer" => Ok(Role::Writer),
            "both" => Ok(Role::Both),
            _ => Err(CoordError::InvalidRole { value: s.into() }),
        }
    }
}

/// How a role spends memory; later layers size their caches from this.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CachePreset {
    /// Share of the memory budget given to the segment cache.
    pub segment_cache_fraction: f64,
    /// Load every partition up front so the first query is warm.
    pub aggressive_prefetch: bool,
    /// How long idle cache entries live.
    pub cache_ttl: Duration,
    /// Records buffered per writer before a flush.
    pub write_buffer_records: usize,
}

/// The environment role detection looks at.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoleEnv {
    /// `BRAINY_ROLE`.
    pub brainy_role: Option<String>,
    /// `AWS_LAMBDA_FUNCTION_NAME`: set inside AWS Lambda.
    pub lambda_function: Option<String>,
}

impl RoleEnv {
    pub fn from_process() -> Self {
        let var = |k| std::env::var(k).ok().filter(|v: &String| !v.is_empty());
        RoleEnv {
            brainy_role: var("BRAINY_ROLE"),
            lambda_function: var("AWS_LAMBDA_FUNCTION_NAME"),
        }
    }
}

/// Picks a role. In order: the explicit option; `BRAINY_ROLE`; inside
/// Lambda → reader (writer Lambdas pass their role explicitly); an
/// embedded store (local directory, memory) → both; no live writer among
/// `live` → writer; otherwise reader.
pub fn detect_role(
    explicit: Option<Role>,
    env: &RoleEnv,
    live: &[InstanceRecord],
    embedded_store: bool,
) -> Result<Role, CoordError> {
    if let Some(r) = explicit {
        return Ok(r);
    }
    if let Some(v) = &env.brainy_role {
        return v.parse();
    }
    if env.lambda_function.is_some() {
        return Ok(Role::Reader);
    }
    if embedded_store {
        return Ok(Role::Both);
    }
    if live.iter().any(|r| r.role.writes()) {
        Ok(Role::Reader)
    } else {
        Ok(Role::Writer)
    }
}
