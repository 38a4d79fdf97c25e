//! Manifest parsing on arbitrary bytes: a `CoordError` naming the key, or
//! a manifest that passes validation and survives a write and re-read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal::coord::manifest::parse_manifest;

fuzz_target!(|data: &[u8]| {
    // The partition the bytes claim, so valid manifests get through.
    let partition = serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v.get("partition")?.as_u64())
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or(0);
    let Ok(m) = parse_manifest(partition, data) else {
        return;
    };
    m.validate(partition).expect("a parsed manifest is valid");
    let _ = m.total_records();
    for s in &m.segments {
        assert!(m.find(&s.key).is_some());
    }
    let written = serde_json::to_vec(&m).expect("a manifest serializes");
    let again = parse_manifest(partition, &written).expect("a written manifest re-parses");
    assert_eq!(again.segments, m.segments);
    assert_eq!(again.retired, m.retired);
    assert_eq!(again.next_seq, m.next_seq);
});
