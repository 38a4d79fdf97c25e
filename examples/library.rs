//! shoal as a library: open a handle on a bucket URL, write, search, close.
//!
//!     cargo run --example library            # a local directory under /tmp
//!     cargo run --example library -- s3://bucket/prefix
//!
//! The same `Db` handle is what the CLI, `shoal serve` and the Lambda
//! functions use.

use serde_json::json;
use shoal::api::{Consistency, JoinOptions, Metric, Record, RequestedSettings, SearchRequest};
use shoal::{Db, OpenOptions};

#[tokio::main]
async fn main() -> Result<(), shoal::Error> {
    let url = std::env::args().nth(1).unwrap_or_else(|| {
        std::env::temp_dir()
            .join("shoal-library-example")
            .display()
            .to_string()
    });
    let db = Db::open(
        &url,
        OpenOptions {
            cluster: JoinOptions {
                // Used to create the index if the bucket has none; must
                // agree with the bucket's settings otherwise.
                settings: RequestedSettings {
                    dimensions: Some(3),
                    distance_metric: Some(Metric::Cosine),
                    ..Default::default()
                },
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await?;
    db.upsert(&[
        Record::new("apple", vec![0.9, 0.1, 0.0]).with_metadata(json!({"price": 3})),
        Record::new("pear", vec![0.8, 0.2, 0.0]).with_metadata(json!({"price": 2})),
        Record::new("kale", vec![0.0, 0.1, 0.9]),
    ])
    .await?;
    let found = db
        .search(&SearchRequest {
            filter: Some(json!({"price": {"$lt": 3}})),
            consistency: Consistency::Strong,
            ..SearchRequest::new(vec![1.0, 0.0, 0.0], 2)
        })
        .await?;
    for hit in &found.results {
        println!("{} {:.3}", hit.id, hit.score);
    }
    db.close().await
}
