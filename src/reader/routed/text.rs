//! Text queries over a routed unit's shards (`reader::text`). A shard
//! with a text index of every queried key (format version 4, its
//! deletion vector recording what dead rows held) answers from it: its
//! statistics from the head, less its dead rows and the rows the tails
//! hide (found through the id index, which carries their field
//! lengths); the documents from the query terms' postings, one term
//! block per term. Such a document is known by its shard row until the
//! query has ranked it: only the ones a list keeps are resolved to ids
//! and metadata ([`resolve`]). Any other shard (no text index yet, a
//! key added since it was built, partitions left out of a partial
//! result) is scanned: every allowed row's metadata analyzed.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::search::{Probed, Run, RoutedUnit};
use super::RoutedShard;
use crate::index::QueryParams;
use crate::reader::ranged::{Block, Part};
use crate::reader::shards::index_error;
use crate::reader::text::{DocLists, TextDoc, TextQuery, TextSearched};
use crate::reader::unit::{on_pool, Io, Source, UnitQuery};
use crate::reader::ReadError;
use crate::text::bm25::FieldStats;

impl RoutedUnit {
    /// The unit's answer to a text query: shards with a text index of
    /// every queried key from it, the others scanned, at once.
    pub(super) async fn text_query(
        &self,
        q: &Arc<TextQuery>,
        io: &Io<'_>,
    ) -> Result<TextSearched, ReadError> {
        let (mut indexed, mut scanned) = (Vec::new(), Vec::new());
        for s in 0..self.shards.len() {
            match self.text_fields(s, q) {
                Some(fields) => indexed.push((s, fields)),
                None => scanned.push(s),
            }
        }
        let (a, b) = futures::future::join(
            self.text_scan(q, io, &scanned),
            self.text_postings(q, io, &indexed),
        )
        .await;
        let mut out = a?;
        out.merge(b?);
        Ok(out)
    }

    /// Per list, the field of shard `s`'s text index that answers it,
    /// when the shard can answer them all from its index.
    fn text_fields(&self, s: usize, q: &TextQuery) -> Option<Vec<usize>> {
        let shard = &self.shards[s];
        // A deletion vector must record what its dead rows held, field by
        // field of this shard's index (an older shoal's does not).
        let fields = shard.head.text.len();
        let recorded = |d: &crate::segment::deletions::DeletionVector| {
            d.text_dead().is_some_and(|t| t.len() == fields)
        };
        if !self.excluded.is_empty() || shard.dv.as_ref().is_some_and(|d| !recorded(d)) {
            return None;
        }
        q.lists
            .iter()
            .map(|l| shard.head.text_field(&l.key, l.analyzer))
            .collect()
    }

    /// A pass over this unit's shards for a text query (no vector).
    fn text_run<'a>(&'a self, uq: &'a UnitQuery, io: &'a Io<'a>) -> Run<'a> {
        Run {
            unit: self,
            q: uq,
            io,
            got: vec![HashMap::new(); self.shards.len()],
            failed: Vec::new(),
        }
    }

    /// The text query over `shards` (indexes into the unit's) from their
    /// text indexes: `fields` per shard as [`Self::text_fields`] gives.
    async fn text_postings(
        &self,
        q: &Arc<TextQuery>,
        io: &Io<'_>,
        shards: &[(usize, Vec<usize>)],
    ) -> Result<TextSearched, ReadError> {
        let mut out = TextSearched::new(q);
        if shards.is_empty() {
            return Ok(out);
        }
        let uq = text_unit_query(self, q);
        let mut run = self.text_run(&uq, io);
        // One round: the id blocks that may hold a hidden id, the term
        // blocks that may hold a query term.
        let mut wants: Vec<Vec<Part>> = vec![Vec::new(); self.shards.len()];
        for (s, fields) in shards {
            let head = &self.shards[*s].head;
            let mut parts = BTreeSet::new();
            for id in self.hidden.iter() {
                if let Some(b) = head.fence_for(id) {
                    parts.insert(Part::Ids(b as u32));
                }
            }
            for (l, list) in q.lists.iter().enumerate() {
                for t in &list.distinct {
                    if let Some(b) = head.term_fence(fields[l], t) {
                        parts.insert(Part::Terms {
                            field: fields[l] as u32,
                            block: b as u32,
                        });
                    }
                }
            }
            wants[*s] = parts.into_iter().collect();
        }
        run.fetch(wants).await?;
        let mut found: Vec<(usize, u32, DocLists)> = Vec::new();
        for (s, fields) in shards {
            if run.failed.iter().any(|f| *f.shard == *self.shards[*s].key) {
                continue;
            }
            out.shards += 1;
            let docs = self.shard_postings(q, &run.got[*s], *s, fields, &mut out);
            found.extend(docs.into_iter().map(|(row, lists)| (*s, row, lists)));
        }
        // A filter is checked on the candidates' metadata (one more round).
        if let Some(f) = &q.filter {
            let mut wants: Vec<Vec<Part>> = vec![Vec::new(); self.shards.len()];
            for (s, row, _) in &found {
                let (pos, _) = self.shards[*s].head.locate(u64::from(*row));
                wants[*s].push(Part::Meta(pos as u32));
            }
            for w in &mut wants {
                w.sort_unstable();
                w.dedup();
            }
            run.fetch(wants).await?;
            found.retain(|(s, row, _)| {
                let (pos, i) = self.shards[*s].head.locate(u64::from(*row));
                run.got[*s]
                    .get(&Part::Meta(pos as u32))
                    .is_some_and(|m| f.matches(m.metadata(i as usize)))
            });
        }
        out.docs.extend(found.into_iter().map(|(s, row, lists)| TextDoc {
            id: String::new(),
            partition: 0,
            source: Source::Pending {
                shard: self.shards[s].clone(),
                row,
            },
            lists,
        }));
        out.failed_shards = run.failed;
        Ok(out)
    }

    /// Shard `s`'s statistics (into `out`) and its documents holding a
    /// query term: (row, per list its length and term frequencies).
    fn shard_postings(
        &self,
        q: &TextQuery,
        got: &HashMap<Part, Arc<Block>>,
        s: usize,
        fields: &[usize],
        out: &mut TextSearched,
    ) -> Vec<(u32, DocLists)> {
        let shard = &self.shards[s];
        let head = &shard.head;
        // Live rows the tails hide, with their field lengths.
        let mut hidden: HashMap<u32, Vec<u32>> = HashMap::new();
        for id in self.hidden.iter() {
            let Some(b) = head.fence_for(id) else { continue };
            let block = got[&Part::Ids(b as u32)].id_block();
            if let Some(i) = block.find(id) {
                let row = block.rows[i];
                if shard.is_live(u64::from(row)) {
                    hidden.insert(row, block.lengths_of(i).collect());
                }
            }
        }
        let dead = shard.dv.as_ref().and_then(|d| d.text_dead());
        let mut docs: HashMap<u32, DocLists> = HashMap::new();
        for (l, list) in q.lists.iter().enumerate() {
            let f = fields[l];
            let dir = &head.text[f];
            let (mut n, mut terms) = (dir.docs, dir.total_len);
            if let Some(d) = dead {
                n = n.saturating_sub(d[f].0);
                terms = terms.saturating_sub(d[f].1);
            }
            for lens in hidden.values() {
                if lens[f] > 0 {
                    n = n.saturating_sub(1);
                    terms = terms.saturating_sub(u64::from(lens[f]));
                }
            }
            out.stats[l].field.add(FieldStats { docs: n, terms });
            for (j, t) in list.distinct.iter().enumerate() {
                let Some(b) = head.term_fence(f, t) else { continue };
                let part = Part::Terms {
                    field: f as u32,
                    block: b as u32,
                };
                let block = got[&part].terms();
                for i in block.postings(t) {
                    let row = block.rows[i];
                    if !shard.is_live(u64::from(row)) || hidden.contains_key(&row) {
                        continue;
                    }
                    out.stats[l].df[j] += 1;
                    let lists = docs.entry(row).or_insert_with(|| vec![None; q.lists.len()]);
                    let (_, tf) = lists[l].get_or_insert_with(|| (block.lens[i], vec![0; list.distinct.len()]));
                    tf[j] = block.tfs[i];
                }
            }
        }
        docs.into_iter().collect()
    }

    /// A text query over every allowed row of `shards` (indexes into the
    /// unit's): each cluster's ids and metadata, fetched at once.
    async fn text_scan(
        &self,
        q: &Arc<TextQuery>,
        io: &Io<'_>,
        shards: &[usize],
    ) -> Result<TextSearched, ReadError> {
        if shards.is_empty() {
            return Ok(TextSearched::new(q));
        }
        let uq = text_unit_query(self, q);
        let mut run = self.text_run(&uq, io);
        let scanned = |p: &Probed| shards.contains(&p.shard);
        let mut wants: Vec<Vec<Part>> = vec![Vec::new(); self.shards.len()];
        for p in run.probed(&[], true).into_iter().filter(scanned) {
            wants[p.shard].extend([Part::ClusterIds(p.pos), Part::Meta(p.pos)]);
        }
        run.fetch(wants).await?;
        // Which rows each cluster may return (cheap), then their
        // analysis on the CPU pool (not on the async runtime).
        let clusters: Vec<ScanCluster> = run
            .probed(&[], true)
            .into_iter()
            .filter(scanned)
            .map(|p| {
                let rows = self.shards[p.shard].head.clusters[p.pos as usize].rows;
                ScanCluster {
                    ids: run.got[p.shard][&Part::ClusterIds(p.pos)].clone(),
                    meta: run.got[p.shard][&Part::Meta(p.pos)].clone(),
                    rows: (0..rows).filter(|&i| run.allowed(&p, i)).collect(),
                }
            })
            .collect();
        let mut out = on_pool(Arc::new(clusters), q, scan_text).await?;
        out.shards = run.got.iter().filter(|g| !g.is_empty()).count() as u64;
        out.failed_shards = run.failed;
        Ok(out)
    }
}

/// What a text query asks of a unit's rows (no vector, every cluster).
fn text_unit_query(unit: &RoutedUnit, q: &TextQuery) -> UnitQuery {
    UnitQuery {
        params: QueryParams {
            metric: unit.routing.head.metric,
            k: 1,
            nprobe: 1,
            exact: true,
        },
        vector: Vec::new(),
        filter: None,
        include_metadata: true,
        partitions: q.partitions,
        allow_partial: q.allow_partial,
    }
}

/// One cluster of a text scan: its ids, its metadata, the rows it may
/// return.
struct ScanCluster {
    ids: Arc<Block>,
    meta: Arc<Block>,
    rows: Vec<u32>,
}

fn scan_text(clusters: &Vec<ScanCluster>, q: &TextQuery) -> TextSearched {
    let mut out = TextSearched::new(q);
    for c in clusters {
        let ids = c.ids.cluster_ids();
        for &i in &c.rows {
            let i = i as usize;
            out.observe(q, ids.get(i), Some(c.meta.metadata(i)), || Source::Block {
                block: c.meta.clone(),
                row: i,
            });
        }
    }
    out
}

/// Gives the documents at `which` that a text index found (known by
/// shard row) their ids and metadata: each one's cluster's ids and
/// metadata parts, every shard at once.
pub(in crate::reader) async fn resolve(
    docs: &mut [TextDoc],
    which: &[usize],
    io: &Io<'_>,
    partitions: u32,
) -> Result<(), ReadError> {
    // Per shard: the documents (index, shard row) and the parts they need.
    type Rows = Vec<(usize, u32)>;
    let mut by_shard: HashMap<&str, (Arc<RoutedShard>, Rows)> = HashMap::new();
    for &d in which {
        if let Source::Pending { shard, row } = &docs[d].source {
            by_shard
                .entry(&*shard.key)
                .or_insert_with(|| (shard.clone(), Vec::new()))
                .1
                .push((d, *row));
        }
    }
    let plans: Vec<(Arc<RoutedShard>, Rows, Vec<Part>)> = by_shard
        .into_values()
        .map(|(shard, ds)| {
            let mut parts = BTreeSet::new();
            for (_, row) in &ds {
                let (pos, _) = shard.head.locate(u64::from(*row));
                parts.extend([Part::ClusterIds(pos as u32), Part::Meta(pos as u32)]);
            }
            (shard, ds, parts.into_iter().collect())
        })
        .collect();
    let fetched = futures::future::join_all(plans.iter().map(|(shard, _, parts)| {
        io.shared.blocks.get(io.store, shard, parts, io.tally)
    }))
    .await;
    for ((shard, ds, _), got) in plans.iter().zip(fetched) {
        let got = got.map_err(|e| index_error(&e))?;
        for &(d, row) in ds {
            let (pos, i) = shard.head.locate(u64::from(row));
            let id = got[&Part::ClusterIds(pos as u32)].cluster_ids().get(i as usize).to_string();
            docs[d].partition = crate::coord::partition_of(&id, partitions);
            docs[d].id = id;
            docs[d].source = Source::Block {
                block: got[&Part::Meta(pos as u32)].clone(),
                row: i as usize,
            };
        }
    }
    Ok(())
}
