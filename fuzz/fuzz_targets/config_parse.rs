//! Config parsing on arbitrary bytes: a `CoordError` naming the key, or a
//! config whose derived settings all work and which survives a write and
//! re-read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal::coord::config::parse_config;
use shoal::coord::{Metric, RequestedSettings};

fuzz_target!(|data: &[u8]| {
    let Ok(config) = parse_config("config.json", data) else {
        return;
    };
    let s = &config.settings;
    s.validate().expect("a parsed config is valid");
    s.index()
        .validate()
        .expect("parsed index settings are valid");
    let _ = (s.metric(), s.domain_rules(), s.text_fields());
    let asked = RequestedSettings {
        partition_count: Some(8),
        dimensions: Some(384),
        distance_metric: Some(Metric::Cosine),
        embedding_model: Some("all-MiniLM-L6-v2".into()),
        instance_timeout_seconds: Some(30),
        text_fields: None,
    };
    let _ = asked.contradiction(s);
    let written = serde_json::to_vec(&config).expect("a config serializes");
    let again = parse_config("config.json", &written).expect("a written config re-parses");
    assert_eq!(again.settings.dimensions, s.dimensions);
    assert_eq!(again.settings.partition_count, s.partition_count);
    assert_eq!(again.settings.distance_metric, s.distance_metric);
    assert_eq!(again.settings.index, s.index);
    assert_eq!(again.settings.domain_rules, s.domain_rules);
});
