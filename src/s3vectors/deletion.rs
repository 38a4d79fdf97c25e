//! Deleting index incarnations (ARCHITECTURE.md, "S3 Vectors index
//! lifecycle"): finishing one deletion (seal, free, wipe, forget), and the
//! sweep that finishes the deletions other instances left unfinished.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::error::S3vError;
use super::{now_secs, Service};
use crate::api::Role;
use crate::coord::catalog::Deletion;

/// A deletion whose entry has been marked this long without being sealed
/// is taken to have died; the sweep finishes it. (Finishing one that is
/// still running is harmless, only wasted work: both touch only the
/// deleted incarnation's prefix.)
const ABANDONED_DELETE: Duration = Duration::from_secs(60);

impl Service {
    /// Finishes the deletion of one incarnation of `bucket/<name>`
    /// (marked, or already sealed): seal it, free the name, delete its
    /// objects, drop the record. Each step is idempotent and touches only
    /// that incarnation, so any instance may run it, at any time, twice.
    pub(super) async fn finish(&self, bucket: &str, d: &Deletion) -> Result<(), S3vError> {
        let prefix = d.prefix(bucket);
        let (name, inc) = (d.index_name.as_str(), d.incarnation.as_deref());
        self.forget(&prefix).await;
        self.catalog.seal(&prefix).await?;
        self.change_catalog(|c| {
            if let Some(b) = c.buckets.get_mut(bucket) {
                b.free(name, inc);
            }
            Ok(())
        })
        .await?;
        let n = self
            .catalog
            .wipe(&prefix)
            .await
            .map_err(crate::error::Error::from)?;
        self.change_catalog(|c| {
            if let Some(b) = c.buckets.get_mut(bucket) {
                b.forget_deletion(name, inc);
            }
            Ok(())
        })
        .await?;
        tracing::info!(%prefix, objects = n, "deleted an index");
        Ok(())
    }

    /// Finishes every deletion the catalog records that is sealed, or was
    /// marked more than a minute ago (its deleter died), and closes the
    /// handles of incarnations no longer live. Returns how many it
    /// finished. `shoal serve --s3vectors` runs it every minute.
    pub async fn sweep(&self) -> Result<usize, S3vError> {
        let cat = self.revalidated_catalog().await?;
        let mut finished = 0;
        for (bucket, b) in &cat.buckets {
            for d in b.deletions() {
                let marked = b.marked(&d.index_name).as_ref() == Some(&d);
                if marked && now_secs() - d.since < ABANDONED_DELETE.as_secs_f64() {
                    continue;
                }
                self.finish(bucket, &d).await?;
                finished += 1;
            }
        }
        Ok(finished)
    }

    /// Runs [`Service::sweep`] every `every` until the service is dropped
    /// (a reader instance, which writes nothing, only lets go of handles),
    /// and closes the handles idle for `idle_after`.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Service> = Arc::downgrade(self);
        let tick = every.min(super::HEARTBEAT_EVERY);
        tokio::spawn(async move {
            let mut since_sweep = Duration::ZERO;
            loop {
                tokio::time::sleep(tick).await;
                let Some(svc) = weak.upgrade() else { return };
                if let Err(e) = svc.heartbeat().await {
                    tracing::warn!(error = %e, "this server's heartbeat failed; retrying later");
                }
                since_sweep += tick;
                if since_sweep < every {
                    continue;
                }
                since_sweep = Duration::ZERO;
                let swept = if svc.opts.role == Some(Role::Reader) {
                    svc.revalidated_catalog().await.map(|_| 0)
                } else {
                    svc.sweep().await
                };
                if let Err(e) = swept {
                    tracing::warn!(error = %e.message, "finishing S3 Vectors index deletions failed; retrying later");
                }
                let closed = svc.close_idle(svc.opts.idle_after).await;
                if closed > 0 {
                    tracing::info!(closed, "closed idle S3 Vectors index handles");
                }
            }
        })
    }
}
