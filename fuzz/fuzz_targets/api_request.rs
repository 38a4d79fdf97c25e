//! Request bodies as the HTTP API and the Lambda functions receive them,
//! against a real (in-memory) index: the first byte picks the endpoint,
//! the rest is the JSON body. Every input must end in a clear error or a
//! well-formed answer (at most `k` results, no id twice, ranked), never a
//! panic; upserts and deletes are validated but not committed, so every
//! input meets the same index.
#![no_main]

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use shoal::api::{parse_body, DeleteRequest, UpsertRequest};
use shoal::coord::clock::{DynClock, SystemClock};
use shoal::coord::config::load_or_create;
use shoal::coord::{Metric, RequestedSettings};
use shoal::reader::{Reader, ReaderOptions, SearchRequest};
use shoal::record::{prepare_batch, prepare_deletes, Schema};
use shoal::store::{memory::MemoryStore, Counted};
use shoal::writer::{Writer, WriterOptions};

struct Index {
    rt: tokio::runtime::Runtime,
    reader: Reader,
    schema: Schema,
}

fn index() -> &'static Index {
    static INDEX: OnceLock<Index> = OnceLock::new();
    INDEX.get_or_init(|| {
        let rt = shoal_fuzz::runtime();
        let store = Arc::new(Counted::new(Arc::new(MemoryStore::unique())));
        let clock: DynClock = Arc::new(SystemClock);
        let req = RequestedSettings {
            partition_count: Some(3),
            dimensions: Some(3),
            distance_metric: Some(Metric::Cosine),
            ..Default::default()
        };
        let (reader, schema) = rt.block_on(async {
            let cfg = load_or_create(store.as_ref(), &req, clock.as_ref())
                .await
                .expect("config");
            let w = Writer::new(
                store.clone(),
                &cfg.settings,
                "w",
                clock,
                WriterOptions::default(),
            );
            w.upsert(&shoal_fuzz::sample_records(40))
                .await
                .expect("seed records");
            w.delete(&["r3".to_string(), "r4".to_string()])
                .await
                .expect("seed deletes");
            let reader = Reader::new(store.clone(), &cfg.settings, ReaderOptions::default());
            (reader, (*w.schema()).clone())
        });
        Index { rt, reader, schema }
    })
}

fuzz_target!(|data: &[u8]| {
    let [endpoint, body @ ..] = data else {
        return;
    };
    let ix = index();
    match endpoint % 4 {
        0 => {
            if let Ok(req) = parse_body::<UpsertRequest>(body) {
                if let Ok(batch) = prepare_batch(&req.records, &ix.schema) {
                    assert!(batch
                        .iter()
                        .all(|r| r.vector.len() == 3 && !r.id.is_empty()));
                }
            }
        }
        1 => {
            if let Ok(req) = parse_body::<DeleteRequest>(body) {
                let _ = prepare_deletes(&req.ids, &ix.schema);
            }
        }
        2 => {
            if let Ok(req) = parse_body::<SearchRequest>(body) {
                if let Ok(resp) = ix.rt.block_on(ix.reader.search(&req)) {
                    assert!(resp.results.len() <= req.k);
                    let ids: HashSet<&str> = resp.results.iter().map(|r| r.id.as_str()).collect();
                    assert_eq!(ids.len(), resp.results.len(), "an id twice");
                    assert!(!ids.contains("r3") && !ids.contains("r4"), "a deleted id");
                    assert!(resp
                        .results
                        .windows(2)
                        .all(|w| w[0].distance <= w[1].distance));
                }
            }
        }
        _ => {
            if let Ok(id) = std::str::from_utf8(body) {
                if let Ok(Some(rec)) = ix.rt.block_on(ix.reader.get(id)) {
                    assert_eq!(rec.id, id);
                }
            }
        }
    }
});
