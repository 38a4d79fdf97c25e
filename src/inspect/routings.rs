//! `verify`'s check of the routings (DESIGN section 12): each listed
//! routing object decodes and is the generation its entry says, and each
//! routed shard's head names the routing its entry does.

use std::collections::HashSet;

use super::verify::VerifyReport;
use super::Problem;
use crate::coord::index_manifest::IndexManifest;
use crate::coord::CoordError;
use crate::segment;
use crate::store::ObjectStore;

/// Every listed routing decodes (checksums) and is the generation the
/// manifest says; every routed shard's head names the routing its entry
/// does (DESIGN section 12).
pub(super) async fn verify_routings(
    store: &dyn ObjectStore,
    index: &IndexManifest,
    report: &mut VerifyReport,
    referenced: &mut HashSet<String>,
) -> Result<(), CoordError> {
    let mut problem = |key: &str, message: String| {
        report.problems.push(Problem {
            key: key.to_string(),
            message,
        })
    };
    for r in &index.routings {
        referenced.insert(r.key.clone());
        let got = match store.get(&r.key).await {
            Ok(got) => got,
            Err(e) if e.is_retryable() => return Err(e.into()),
            Err(e) => {
                problem(&r.key, format!("routing: {e}"));
                continue;
            }
        };
        if let Err(e) = crate::index::routing::Routing::decode_listed(&got.bytes, r.generation) {
            problem(&r.key, format!("routing: {e}"));
        }
    }
    for shard in &index.shards {
        let Some(g) = shard.routing else { continue };
        let len = shard.head_bytes.unwrap_or(0);
        match segment::load_routed_head(store, &shard.key, len, shard.bytes).await {
            Ok(h) if h.generation == g => {}
            Ok(h) => problem(
                &shard.key,
                format!(
                    "routed shard built with routing {} but listed under routing {g}",
                    h.generation
                ),
            ),
            Err(segment::LoadError::Store(e)) if e.is_retryable() => return Err(e.into()),
            Err(segment::LoadError::Store(_)) => {} // verify_shard reports it
            Err(e) => problem(&shard.key, format!("index shard head: {e}")),
        }
    }
    Ok(())
}
