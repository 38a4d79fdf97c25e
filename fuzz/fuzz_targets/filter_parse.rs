//! Filters on arbitrary input, in both spellings (JSON and the CLI's
//! readable expressions): a `FilterError`, or a filter that evaluates
//! against any metadata without panicking.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};
use shoal::filter::{parse_filter, parse_filter_expr};

fn samples() -> &'static [Map<String, Value>] {
    static SAMPLES: OnceLock<Vec<Map<String, Value>>> = OnceLock::new();
    SAMPLES.get_or_init(|| {
        [
            json!({}),
            json!({"domain": "web", "stars": 120, "score": 0.5, "tags": ["a", "b"]}),
            json!({"domain": null, "stars": -3, "nested": {"x": [1, {"y": 2}]}, "ok": true}),
            json!({"stars": 1e300, "name": "ключ ü \u{0}", "tags": []}),
        ]
        .into_iter()
        .map(|v| v.as_object().cloned().expect("object"))
        .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(src) = std::str::from_utf8(data) {
        if let Ok(v) = parse_filter_expr(src) {
            if let Ok(f) = parse_filter(&v) {
                for m in samples() {
                    let _ = f.matches(m);
                }
            }
        }
    }
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        if let Ok(f) = parse_filter(&v) {
            for m in samples() {
                let _ = f.matches(m);
            }
        }
    }
});
