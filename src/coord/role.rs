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

    /// Cache settings for this role.
    pub fn preset(&self) -> CachePreset {
        match self {
            Role::Reader => CachePreset {
                segment_cache_fraction: 0.8,
                aggressive_prefetch: true,
                cache_ttl: Duration::from_secs(3600),
            },
            Role::Writer => CachePreset {
                segment_cache_fraction: 0.2,
                aggressive_prefetch: false,
                cache_ttl: Duration::from_secs(60),
            },
            Role::Both => CachePreset {
                segment_cache_fraction: 0.5,
                aggressive_prefetch: false,
                cache_ttl: Duration::from_secs(3600),
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
    pub(crate) fn from_process() -> Self {
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
pub(crate) fn detect_role(
    explicit: Option<Role>,
    env: &RoleEnv,
    live: &[InstanceRecord],
    embedded_store: bool,
) -> Result<Role, CoordError> {
    if let Some(role) = preferred_role(explicit, env, embedded_store)? {
        return Ok(role);
    }
    if live.iter().any(|r| r.role.writes()) {
        Ok(Role::Reader)
    } else {
        Ok(Role::Writer)
    }
}

/// The rules of [`detect_role`] that do not need the live instances;
/// `None` means "look at who is alive". Lets a joiner skip listing
/// instances when the answer does not depend on them.
pub(crate) fn preferred_role(
    explicit: Option<Role>,
    env: &RoleEnv,
    embedded_store: bool,
) -> Result<Option<Role>, CoordError> {
    if let Some(r) = explicit {
        return Ok(Some(r));
    }
    if let Some(v) = &env.brainy_role {
        return v.parse().map(Some);
    }
    if env.lambda_function.is_some() {
        return Ok(Some(Role::Reader));
    }
    if embedded_store {
        return Ok(Some(Role::Both));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coord::instance::{InstanceRecord, MetricsSnapshot};

    fn rec(id: &str, role: Role) -> InstanceRecord {
        InstanceRecord {
            instance_id: id.into(),
            role,
            status: "active".into(),
            host: "h".into(),
            pid: 1,
            version: "0".into(),
            started_at: "2026-11-21T10:00:00Z".into(),
            last_heartbeat: "2026-11-21T10:00:00Z".into(),
            heartbeat_seq: 1,
            metrics: MetricsSnapshot::default(),
            extra: Default::default(),
        }
    }

    fn env(role: Option<&str>, lambda: Option<&str>) -> RoleEnv {
        RoleEnv {
            brainy_role: role.map(String::from),
            lambda_function: lambda.map(String::from),
        }
    }

    #[test]
    fn explicit_option_wins_over_env_lambda_and_live_writers() {
        let live = [rec("w", Role::Writer)];
        let r = detect_role(
            Some(Role::Writer),
            &env(Some("reader"), Some("fn")),
            &live,
            true,
        );
        assert_eq!(r.unwrap(), Role::Writer);
    }

    #[test]
    fn brainy_role_env_wins_without_an_option() {
        let r = detect_role(None, &env(Some("Writer"), Some("fn")), &[], true);
        assert_eq!(r.unwrap(), Role::Writer);
        let r = detect_role(
            None,
            &env(Some("both"), None),
            &[rec("w", Role::Writer)],
            false,
        );
        assert_eq!(r.unwrap(), Role::Both);
    }

    #[test]
    fn invalid_brainy_role_names_the_allowed_values() {
        let e = detect_role(None, &env(Some("leader"), None), &[], false).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("\"leader\""), "{msg}");
        assert!(msg.contains("reader, writer, both"), "{msg}");
    }

    #[test]
    fn inside_lambda_is_a_reader_even_with_no_writer() {
        let r = detect_role(None, &env(None, Some("shoal-reader")), &[], false);
        assert_eq!(r.unwrap(), Role::Reader);
    }

    #[test]
    fn local_directory_without_explicit_role_is_both() {
        let r = detect_role(None, &env(None, None), &[rec("w", Role::Writer)], true);
        assert_eq!(r.unwrap(), Role::Both);
    }

    #[test]
    fn no_live_writer_makes_a_writer() {
        let live = [rec("r1", Role::Reader), rec("r2", Role::Reader)];
        assert_eq!(
            detect_role(None, &env(None, None), &live, false).unwrap(),
            Role::Writer
        );
        assert_eq!(
            detect_role(None, &env(None, None), &[], false).unwrap(),
            Role::Writer
        );
    }

    #[test]
    fn a_live_writer_or_both_makes_a_reader() {
        let live = [rec("r", Role::Reader), rec("w", Role::Writer)];
        assert_eq!(
            detect_role(None, &env(None, None), &live, false).unwrap(),
            Role::Reader
        );
        let live = [rec("b", Role::Both)];
        assert_eq!(
            detect_role(None, &env(None, None), &live, false).unwrap(),
            Role::Reader
        );
    }

    /// Two instances that look at the registry before either has
    /// registered both see no writer and both become writers. Allowed:
    /// commits are compare-and-swaps on partition manifests, so concurrent
    /// writers never lose or duplicate records (see the module docs).
    #[test]
    fn racing_joiners_may_both_become_writers() {
        let seen_by_a: Vec<InstanceRecord> = vec![];
        let seen_by_b: Vec<InstanceRecord> = vec![];
        let a = detect_role(None, &env(None, None), &seen_by_a, false).unwrap();
        let b = detect_role(None, &env(None, None), &seen_by_b, false).unwrap();
        assert_eq!((a, b), (Role::Writer, Role::Writer));
    }

    #[test]
    fn presets_follow_the_role() {
        assert_eq!(Role::Reader.preset().segment_cache_fraction, 0.8);
        assert!(Role::Reader.preset().aggressive_prefetch);
        assert_eq!(Role::Reader.preset().cache_ttl, Duration::from_secs(3600));
        assert_eq!(Role::Writer.preset().segment_cache_fraction, 0.2);
        assert_eq!(Role::Writer.preset().cache_ttl, Duration::from_secs(60));
    }
}
