//! Helpers the reader's unit tests share.

use std::sync::Arc;

use crate::coord::clock::{DynClock, SystemClock};
use crate::coord::config::{initialize_partitions, load_or_create};
use crate::coord::{RequestedSettings, Settings};
use crate::store::DynStore;
use crate::vocab::Metric;
use crate::writer::{Writer, WriterOptions};

/// A new Euclidean index of `partitions` partitions and `dims`
/// dimensions in `store`, and a writer to it.
pub(crate) async fn index_with_writer(
    store: &DynStore,
    partitions: u32,
    dims: usize,
) -> (Settings, Writer) {
    let req = RequestedSettings {
        partition_count: Some(partitions),
        dimensions: Some(dims as u32),
        distance_metric: Some(Metric::Euclidean),
        ..Default::default()
    };
    let config = load_or_create(store.as_ref(), &req, &SystemClock)
        .await
        .unwrap();
    let settings = initialize_partitions(store.as_ref(), &SystemClock, config)
        .await
        .unwrap()
        .0
        .settings;
    let clock: DynClock = Arc::new(SystemClock);
    let w = Writer::new(
        store.clone(),
        &settings,
        "w",
        clock,
        WriterOptions::default(),
    );
    (settings, w)
}
