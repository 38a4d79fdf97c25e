//! What tools measure and set up through the handle: where a URL
//! points, reading copies with their own caches (and simulated latency),
//! index settings as given, and the bytes of manifests and of what a
//! query can read (`shoal bench` uses them instead of reaching under
//! the handle).

use std::time::Duration;

use super::*;

impl Db {
    /// Where `url` points (as [`Db::describe`] says it) and the config of
    /// the index there, if it holds one, without opening a handle (one
    /// GET): for tools that choose how to open by what is there (`shoal
    /// bench` refuses a bucket that holds an index unless asked to query it).
    pub async fn peek(url: &str) -> Result<(String, Option<Config>), Error> {
        let store = crate::store::open(url).await?;
        let config = crate::coord::config::read_config(store.as_ref()).await?;
        Ok((store.describe(), config.map(|(c, _)| c)))
    }

    /// A handle on the same index that reads through a reader of its own:
    /// `reader`'s options, empty caches and, with `latency`, a simulated
    /// first-byte latency before each of its store requests (`None`: the
    /// store's own). Making it sends no request. It shares this handle's
    /// membership and writer, so close only one of the two. Benchmarks
    /// query through it (a fresh one per query measures cold queries).
    pub fn reading_copy(&self, reader: ReaderOptions, latency: Option<Duration>) -> Db {
        let store = self.inner.cluster.store();
        let store = match latency {
            Some(l) => Arc::new(store.with_latency(l)),
            None => store.clone(),
        };
        let live = self.inner.live.lock().unwrap();
        let reader = Reader::new(store, &live.config.settings, reader);
        let live = LiveConfig {
            config: live.config.clone(),
            etag: live.etag.clone(),
            checked: live.checked,
        };
        Db {
            inner: Arc::new(Inner {
                cluster: self.inner.cluster.share(),
                reader,
                writer: self.inner.writer.clone(),
                bulk: tokio::sync::Mutex::new(None),
                batch_size: self.inner.batch_size,
                background: Mutex::new(None),
                ready_at: Mutex::new(None),
                live: Mutex::new(live),
                watcher: Mutex::new(None),
                config_refresh: None,
            }),
        }
    }

    /// Puts `index` in force as the bucket's index settings, as given
    /// (compare-and-swap on the config, none of [`Db::set_settings`]'
    /// checks): a tool's override, e.g. `shoal bench --index`. Handles
    /// take it when they open or refresh their config.
    pub async fn set_index_settings(&self, index: IndexSettings) -> Result<(), Error> {
        let (store, clock) = (self.inner.cluster.store(), self.inner.cluster.clock());
        crate::coord::config::update_config(store.as_ref(), clock.as_ref(), |c| {
            c.settings.index = Some(index.clone());
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// Bytes of every partition manifest as stored now (one LIST): what
    /// keeping the commit log costs, for benchmarks.
    pub async fn manifest_bytes(&self) -> Result<u64, Error> {
        let store = self.inner.cluster.store();
        Ok(store
            .list(paths::MANIFESTS_PREFIX)
            .await?
            .iter()
            .filter(|m| paths::partition_of_manifest(&m.key).is_some())
            .map(|m| m.size)
            .sum())
    }

    /// Bytes of the index a query may read: every shard the index manifest
    /// lists and every partition's tail segment (seq above its watermark).
    /// Reads the manifests.
    pub async fn searchable_bytes(&self) -> Result<u64, Error> {
        let store = self.inner.cluster.store().as_ref();
        let n = self.settings().partition_count;
        let index = crate::coord::index_manifest::read_index_manifest(store, n).await?;
        let mut total: u64 = index
            .as_ref()
            .map_or(0, |(m, _)| m.shards.iter().map(|s| s.bytes).sum());
        for p in 0..n {
            let w = index.as_ref().map_or(0, |(m, _)| m.watermark(p));
            if let Some((m, _)) = crate::coord::manifest::read_manifest(store, p).await? {
                total += m
                    .segments
                    .iter()
                    .filter(|e| e.seq > w)
                    .map(|e| e.bytes)
                    .sum::<u64>();
            }
        }
        Ok(total)
    }
}
