//! One query over the shards of one routing (a [`RoutedUnit`]): route
//! once (the clusters nearest the query, from the routing's top level
//! and the groups it points to), then fetch from every shard only the
//! probed clusters' probe blocks (and, to filter, metadata) in one
//! round, estimate every allowed row from its code against one bar
//! across all the shards, and fetch the row chunks of the candidates the
//! bounds cannot rule out in a second. The estimate and rerank are the
//! shard index's own (`index::shard`), over clusters instead of lists.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;

use super::{row_slot, Centroid, RoutedShard, RoutingView};
use crate::filter::Filter;
use crate::index::shard::{estimate_lists, every_row, rerank_lists, ProbedList, ShardQuery};
use crate::index::{ivf::probe_metric, route, QueryParams, Route, ScanStats};
use crate::reader::ranged::{Block, Part};
use crate::reader::shards::index_error;
use crate::reader::text::{TextQuery, TextSearched};
use crate::reader::unit::{excludes, Found, Io, SearchUnit, Searched, Source, UnitQuery};
use crate::reader::{PartitionError, ReadError, ShardFailure};

/// Groups a query routes among per probed cluster, as a share of a
/// group's clusters: probing `p` clusters looks among the clusters of
/// the `SPREAD × p / (clusters per group)` nearest groups (at least
/// [`MIN_BEAM`]): about `SPREAD × p` centroids compared (10,240 at the
/// default 128 probes), however big the routing. The clusters nearest a
/// query spread over many groups: on the 1M noisy-copy set (4,000
/// clusters in 63 groups) recall@10 was 0.910 with 6 groups, 0.941 with
/// 12, 0.966 with 20; on the 4M set (12,504 clusters in 112 groups)
/// 0.9235 with a spread of 20 (23 groups), 0.9490 with 40, 0.9640 with
/// 80 (92 groups). The distances cost what reading the centroids costs:
/// at 4M (16,006 clusters in 126 groups) a spread of 80 took ~0.8 ms of
/// a 3.5 ms query over f32 centroids, ~0.4 ms over the `u8` codes a
/// reader ranks by now (`RankCodes`); only the nearest `p` become
/// handles and are sorted (`RoutingView::nearest_of`).
const SPREAD: f64 = 80.0;
const MIN_BEAM: usize = 4;

/// The shards of one routing, as one query's unit.
pub(in crate::reader) struct RoutedUnit {
    pub routing: Arc<RoutingView>,
    pub shards: Vec<Arc<RoutedShard>>,
    /// The ids the tails hold: their shard rows are hidden.
    pub hidden: Arc<HashSet<String>>,
    /// Partitions a partial result leaves out.
    pub excluded: Arc<[u32]>,
}

/// A probed cluster of one shard: (shard, position in its head,
/// index in the route).
#[derive(Clone, Copy)]
pub(super) struct Probed {
    pub shard: usize,
    pub pos: u32,
    route: usize,
}

pub(super) type Got = Vec<HashMap<Part, Arc<Block>>>;

#[async_trait]
impl SearchUnit for RoutedUnit {
    async fn search(&self, q: &Arc<UnitQuery>, io: &Io<'_>) -> Result<Searched, ReadError> {
        let d = self.routing.head.dimensions;
        if q.vector.len() != d {
            return Err(index_error(&super::corrupt(
                &self.routing.key,
                format!(
                    "the routing has {d} dimensions, the index {}",
                    q.vector.len()
                ),
            )));
        }
        let mut run = Run {
            unit: self,
            q,
            io,
            got: vec![HashMap::new(); self.shards.len()],
            failed: Vec::new(),
        };
        let mut stats = ScanStats::default();
        let found = run.search(&mut stats).await?;
        let touched = run.got.iter().filter(|g| !g.is_empty()).count() as u64;
        Ok(Searched {
            found,
            stats,
            shards: touched,
            failed_shards: run.failed,
        })
    }

    async fn text(&self, q: &Arc<TextQuery>, io: &Io<'_>) -> Result<TextSearched, ReadError> {
        self.text_query(q, io).await
    }
}

/// One query's pass over a [`RoutedUnit`]: the parts fetched per shard
/// and the shards a partial result left out.
pub(super) struct Run<'a> {
    pub unit: &'a RoutedUnit,
    pub q: &'a UnitQuery,
    pub io: &'a Io<'a>,
    pub got: Got,
    pub failed: Vec<ShardFailure>,
}

impl Run<'_> {
    async fn search(&mut self, stats: &mut ScanStats) -> Result<Vec<Found>, ReadError> {
        let (q, unit) = (self.q, self.unit);
        let mut exact = q.params.exact;
        let mut probes = scaled_probes(q.params.nprobe, &unit.routing, &unit.shards);
        let mut route = Vec::new();
        loop {
            if !exact {
                route = self.route(probes).await?;
                probes = probes.min(route.len());
            }
            let probed = self.probed(&route[..probes.min(route.len())], exact);
            let mut wants: Vec<Vec<Part>> = vec![Vec::new(); unit.shards.len()];
            for p in &probed {
                wants[p.shard].push(Part::Probe(p.pos));
                if q.filter.is_some() {
                    wants[p.shard].push(Part::Meta(p.pos));
                }
            }
            self.fetch(wants).await?;
            let Some(f) = &q.filter else { break };
            let probed = self.probed(&route[..probes.min(route.len())], exact);
            if exact || probes >= unit.routing.head.clusters as usize {
                break;
            }
            let (mut live, mut matching) = (0usize, 0usize);
            for p in &probed {
                for i in 0..unit.shards[p.shard].head.clusters[p.pos as usize].rows {
                    if self.allowed(p, i) {
                        live += 1;
                        matching += usize::from(self.matches(f, p, i));
                    }
                }
            }
            let params = QueryParams {
                nprobe: probes,
                ..q.params
            };
            match route_filtered(&params, live, matching) {
                Route::Exact => exact = true,
                Route::Ann(p) if p.nprobe > probes => probes = p.nprobe,
                Route::Ann(_) => break,
            }
        }
        let probed = self.probed(&route[..probes.min(route.len())], exact);
        let sq = ShardQuery {
            metric: q.params.metric,
            k: q.params.k,
            probes,
            exact,
            vector: &q.vector,
        };
        let keep = |l: u32, i: usize| {
            let p = &probed[l as usize];
            self.allowed(p, i as u32)
                && q.filter
                    .as_ref()
                    .is_none_or(|f| self.matches(f, p, i as u32))
        };
        let codes = |p: &Probed| self.got[p.shard][&Part::Probe(p.pos)].codes();
        let cands = if exact {
            let lists = probed.iter().enumerate().map(|(l, p)| (l as u32, codes(p)));
            every_row(lists, keep, stats)
        } else {
            let d = unit.routing.head.dimensions;
            let lists = probed.iter().enumerate().map(|(l, p)| {
                let (centroid, rotated) = route[p.route].vectors(d);
                ProbedList {
                    list: l as u32,
                    codes: codes(p),
                    rotated,
                    centroid,
                }
            });
            estimate_lists(&sq, &unit.routing.rotation, lists, keep, stats)
        };
        if cands.is_empty() {
            return Ok(Vec::new());
        }
        let mut wants: Vec<Vec<Part>> = vec![Vec::new(); unit.shards.len()];
        for c in &cands {
            let p = &probed[c.list as usize];
            wants[p.shard].push(row_slot(p.pos, c.i).0);
            if q.include_metadata {
                wants[p.shard].push(Part::Meta(p.pos));
            }
        }
        self.fetch(wants).await?;
        // Candidates of a shard left out of a partial result are dropped.
        let cands: Vec<_> = cands
            .into_iter()
            .filter(|c| self.has_row(&probed[c.list as usize], c.i))
            .collect();
        let d = unit.routing.head.dimensions;
        let row = |l: u32, i: u32| {
            let p = &probed[l as usize];
            let (part, at) = row_slot(p.pos, i);
            &self.got[p.shard][&part].rows()[at * d..(at + 1) * d]
        };
        let id = |l: u32, i: u32| self.id(&probed[l as usize], i);
        let best = rerank_lists(&sq, exact, &cands, row, id, stats);
        Ok(best
            .into_iter()
            .map(|(distance, l, i)| {
                let p = &probed[l as usize];
                let id = self.id(p, i).to_string();
                let metadata = q.include_metadata.then(|| {
                    self.got[p.shard][&Part::Meta(p.pos)].row_metadata(i as usize)
                });
                Found {
                    distance,
                    partition: crate::coord::partition_of(&id, q.partitions),
                    id,
                    source: Source::Row {
                        vector: row(l, i).to_vec(),
                        metadata,
                    },
                }
            })
            .collect())
    }

    /// The `probes` clusters nearest the query, nearest first, with their
    /// centroids, from the clusters of enough of the nearest groups.
    async fn route(&self, probes: usize) -> Result<Vec<Centroid>, ReadError> {
        let routing = &self.unit.routing;
        let head = &routing.head;
        let per_group = head.clusters as f64 / head.groups() as f64;
        let beam = ((SPREAD * probes as f64 / per_group).ceil() as usize)
            .max(MIN_BEAM)
            .min(head.groups());
        let mut groups = head.nearest_groups(&self.q.vector);
        groups.truncate(beam);
        let io = self.io;
        let metric = probe_metric(head.metric);
        routing
            .nearest_of(
                &io.shared.blocks,
                io.store,
                io.tally,
                &groups,
                &self.q.vector,
                metric,
                probes,
            )
            .await
            .map_err(|e| index_error(&e))
    }

    /// The probed clusters each shard holds (every cluster of every
    /// shard when exact), nearest first, shards left out skipped.
    pub(super) fn probed(&self, route: &[Centroid], exact: bool) -> Vec<Probed> {
        let mut out = Vec::new();
        let live = |s: usize| {
            !self
                .failed
                .iter()
                .any(|f| *f.shard == *self.unit.shards[s].key)
        };
        if exact {
            for (s, shard) in self
                .unit
                .shards
                .iter()
                .enumerate()
                .filter(|(s, _)| live(*s))
            {
                out.extend((0..shard.head.clusters.len() as u32).map(|pos| Probed {
                    shard: s,
                    pos,
                    route: 0,
                }));
            }
            return out;
        }
        for (j, c) in route.iter().enumerate() {
            for (s, shard) in self
                .unit
                .shards
                .iter()
                .enumerate()
                .filter(|(s, _)| live(*s))
            {
                if let Some(pos) = shard.head.position(c.cluster) {
                    out.push(Probed {
                        shard: s,
                        pos: pos as u32,
                        route: j,
                    });
                }
            }
        }
        out
    }

    /// Row `i`'s id, from the cluster's probe part or its ids part.
    fn id(&self, p: &Probed, i: u32) -> &str {
        let got = &self.got[p.shard];
        let ids = got
            .get(&Part::Probe(p.pos))
            .or_else(|| got.get(&Part::ClusterIds(p.pos)))
            .expect("a cluster's ids are fetched before its rows are read");
        ids.cluster_ids().get(i as usize)
    }

    /// Whether row `i` of a probed cluster may be returned: live, not
    /// hidden by a tail, not of a partition left out.
    pub(super) fn allowed(&self, p: &Probed, i: u32) -> bool {
        let shard = &self.unit.shards[p.shard];
        if !shard.is_live(shard.head.clusters[p.pos as usize].start + u64::from(i)) {
            return false;
        }
        let (hidden, excluded) = (&self.unit.hidden, &self.unit.excluded);
        if hidden.is_empty() && excluded.is_empty() {
            return true;
        }
        let id = self.id(p, i);
        !hidden.contains(id) && !excludes(excluded, id, self.q.partitions)
    }

    fn matches(&self, f: &Filter, p: &Probed, i: u32) -> bool {
        f.matches(self.got[p.shard][&Part::Meta(p.pos)].metadata(i as usize))
    }

    /// Whether candidate row `i`'s chunk was fetched (its shard was not
    /// left out of a partial result).
    fn has_row(&self, p: &Probed, i: u32) -> bool {
        self.got[p.shard].contains_key(&row_slot(p.pos, i).0)
    }

    /// Fetches each shard's `wants` (not yet got) at once; a shard whose
    /// parts are damaged fails the query, or with `allow_partial` is
    /// left out and named.
    pub(super) async fn fetch(&mut self, wants: Vec<Vec<Part>>) -> Result<(), ReadError> {
        let io = self.io;
        let runs = wants.into_iter().enumerate().filter_map(|(s, mut parts)| {
            parts.retain(|p| !self.got[s].contains_key(p));
            let shard = &self.unit.shards[s];
            (!parts.is_empty()).then_some(async move {
                let got = io
                    .shared
                    .blocks
                    .get(io.store, shard, &parts, io.tally)
                    .await;
                (s, got)
            })
        });
        let results = futures::future::join_all(runs.collect::<Vec<_>>()).await;
        for (s, result) in results {
            match result {
                Ok(got) => self.got[s].extend(got),
                Err(e) => self.leave_out(s, e)?,
            }
        }
        Ok(())
    }

    fn leave_out(&mut self, s: usize, e: PartitionError) -> Result<(), ReadError> {
        let shard = &self.unit.shards[s];
        let corrupt = e.kind() == crate::vocab::ErrorKind::Corrupt;
        if !(self.q.allow_partial && corrupt) {
            return Err(index_error(&e));
        }
        tracing::error!(shard = %shard.key, error = %e, "a shard part is unreadable: left out of a partial result");
        self.failed.push(ShardFailure {
            shard: shard.key.to_string(),
            rows: shard.live,
            error: index_error(&e).to_string(),
        });
        self.got[s].clear();
        Ok(())
    }
}

/// Clusters to probe ([`crate::index::routing::RoutingHead::probes`] over the shards' live
/// rows).
fn scaled_probes(nprobe: usize, routing: &RoutingView, shards: &[Arc<RoutedShard>]) -> usize {
    routing.head.probes(nprobe, shards.iter().map(|s| s.live).sum())
}

/// The shared filter policy over the probed rows' count (`live` allowed,
/// `matching` passing the filter): a query asking for `k` gets `k` when
/// `k` rows match.
fn route_filtered(params: &QueryParams, live: usize, matching: usize) -> Route {
    let selectivity = matching as f64 / live.max(1) as f64;
    match route(params, selectivity) {
        Route::Ann(p) if matching < params.k => Route::Ann(QueryParams {
            nprobe: p.nprobe.max(params.nprobe * 2),
            ..p
        }),
        r => r,
    }
}
