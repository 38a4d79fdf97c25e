use super::*;

const DIMS: usize = 8;
/// Code bytes per row (opaque to the format).
const CODE_ROW: usize = 12;

fn row(id: &str, x: f32, meta: &str) -> Prepared {
    Prepared {
        id: id.to_string(),
        vector: (0..DIMS).map(|j| x + j as f32 * 0.01).collect(),
        metadata: meta.as_bytes().to_vec(),
        tombstone: false,
    }
}

/// Three clusters (ids 2, 5, 9) with 3, 1500 and 2 rows: the middle one
/// spans two id-index blocks.
fn clusters() -> Vec<(u32, Vec<Prepared>)> {
    vec![
        (
            2,
            vec![
                row("b", 0.1, r#"{"n":1}"#),
                row("a", 0.2, ""),
                row("c", 0.3, r#"{"n":3}"#),
            ],
        ),
        (
            5,
            (0..1500)
                .map(|i| row(&format!("m{i:05}"), i as f32, ""))
                .collect(),
        ),
        (9, vec![row("z", -1.0, r#"{"z":true}"#), row("0", -2.0, "")]),
    ]
}

fn encode(cs: &[(u32, Vec<Prepared>)]) -> (EncodedRouted, Vec<Vec<u8>>) {
    encode_with(cs, &[])
}

fn encode_with(
    cs: &[(u32, Vec<Prepared>)],
    text: &[(String, Analyzer)],
) -> (EncodedRouted, Vec<Vec<u8>>) {
    let codes: Vec<Vec<u8>> = cs
        .iter()
        .map(|(c, rows)| {
            (0..rows.len() * CODE_ROW)
                .map(|i| (i as u32 * 7 + c) as u8)
                .collect()
        })
        .collect();
    let input: Vec<ClusterRows<'_>> = cs
        .iter()
        .zip(&codes)
        .map(|((c, rows), codes)| ClusterRows {
            cluster: *c,
            rows,
            codes: codes.clone(),
        })
        .collect();
    (
        encode_routed(
            &RoutedMeta {
                dims: DIMS,
                metric: Metric::Cosine,
                created_at_ms: 1234,
                writer_id: "w1",
                generation: 7,
                code_bits: 3,
                code_row_bytes: CODE_ROW,
                text,
            },
            &input,
        ),
        codes,
    )
}

#[test]
fn a_routed_shard_round_trips_whole() {
    let cs = clusters();
    let (enc, codes) = encode(&cs);
    let (head, seg, got_codes) = decode_routed("k", &enc.bytes).unwrap();
    assert_eq!(head.rows, 1505);
    assert_eq!((head.generation, head.code_bits), (7, 3));
    assert_eq!(head.writer_id, "w1");
    assert_eq!(
        head.clusters.iter().map(|c| c.cluster).collect::<Vec<_>>(),
        [2, 5, 9]
    );
    assert_eq!(got_codes, codes);
    let want: Vec<&Prepared> = cs.iter().flat_map(|(_, r)| r.iter()).collect();
    assert_eq!(
        seg.ids,
        want.iter().map(|r| r.id.clone()).collect::<Vec<_>>()
    );
    assert_eq!(
        seg.vectors,
        want.iter()
            .flat_map(|r| r.vector.clone())
            .collect::<Vec<_>>()
    );
    for (i, r) in want.iter().enumerate() {
        let m = &seg.meta_bytes[seg.meta_offsets[i] as usize..seg.meta_offsets[i + 1] as usize];
        assert_eq!(m, r.metadata.as_slice(), "row {i}");
    }
    assert!(seg.tombstones.iter().all(|t| !t));
}

#[test]
fn a_reader_plans_from_the_head_and_reads_parts_by_range() {
    let cs = clusters();
    let (enc, codes) = encode(&cs);
    let b = &enc.bytes;
    let slice = |r: std::ops::Range<u64>| &b[r.start as usize..r.end as usize];
    // The head region alone is enough to plan.
    let head = RoutedHead::parse("k", &b[..enc.head_bytes as usize], b.len() as u64).unwrap();
    assert_eq!(head.region_len(), enc.head_bytes);
    assert_eq!(head.position(5), Some(1));
    assert_eq!(head.position(4), None);
    // A probe block: codes and ids in one range.
    let (code, ids) = head.open_probe("k", 1, slice(head.probe_range(1))).unwrap();
    assert_eq!(code, codes[1].as_slice());
    assert_eq!(ids.ids[..2], ["m00000".to_string(), "m00001".to_string()]);
    // Adjacent clusters' probe blocks are adjacent.
    assert_eq!(head.probe_range(0).end, head.probe_range(1).start);
    // Rows by range, one at a time or several.
    let r = head
        .cluster_rows("k", 1, 10, slice(head.rows_range(1, 10, 2)))
        .unwrap();
    assert_eq!(r[..DIMS], cs[1].1[10].vector[..]);
    assert_eq!(r[DIMS..], cs[1].1[11].vector[..]);
    let (offs, bytes) = head
        .cluster_metadata("k", 2, slice(head.clusters[2].metadata.range()))
        .unwrap();
    assert_eq!(&bytes[offs[0] as usize..offs[1] as usize], br#"{"z":true}"#);
    // Every id is found through its fence and block, at its shard row;
    // ids the shard does not hold are not.
    assert!(head.fences.len() >= 2, "{} id blocks", head.fences.len());
    let all: Vec<&Prepared> = cs.iter().flat_map(|(_, r)| r.iter()).collect();
    for (shard_row, r) in all.iter().enumerate() {
        let f = head.fence_for(&r.id).expect("a fence");
        let block = head
            .id_block("k", f, slice(head.fences[f].block.range()))
            .unwrap();
        assert_eq!(block.get(&r.id), Some(shard_row as u32), "{}", r.id);
        let (i, j) = head.locate(shard_row as u64);
        assert_eq!(cs[i].1[j as usize].id, r.id);
    }
    for absent in ["", "aa", "m00000x", "zz"] {
        let found = head.fence_for(absent).and_then(|f| {
            head.id_block("k", f, slice(head.fences[f].block.range()))
                .unwrap()
                .get(absent)
        });
        assert_eq!(found, None, "{absent:?}");
    }
}

#[test]
fn damage_is_refused_naming_the_part() {
    let (enc, _) = encode(&clusters());
    let b = enc.bytes.to_vec();
    let head = RoutedHead::parse("k", &b, b.len() as u64).unwrap();
    let flip = |at: u64| {
        let mut d = b.clone();
        d[at as usize] ^= 0x10;
        d
    };
    let err = |d: &[u8]| decode_routed("k", d).unwrap_err().to_string();
    assert!(
        err(&flip(40)).contains("head checksum"),
        "{}",
        err(&flip(40))
    );
    let codes_at = head.clusters[1].probe_offset + 3;
    assert!(
        err(&flip(codes_at)).contains("codes of cluster 5"),
        "{}",
        err(&flip(codes_at))
    );
    let ids_at = head.clusters[2].ids.offset + 2;
    assert!(
        err(&flip(ids_at)).contains("ids of cluster 9"),
        "{}",
        err(&flip(ids_at))
    );
    let row_at = head.rows_range(1, 7, 1).start + 1;
    assert!(
        err(&flip(row_at)).contains("row 7 of cluster 5"),
        "{}",
        err(&flip(row_at))
    );
    let meta_at = head.clusters[0].metadata.offset + 1;
    assert!(
        err(&flip(meta_at)).contains("metadata of cluster 2"),
        "{}",
        err(&flip(meta_at))
    );
    let fence_at = head.fences[1].block.offset + 1;
    assert!(
        err(&flip(fence_at)).contains("id-index block 1"),
        "{}",
        err(&flip(fence_at))
    );
    assert!(err(&b[..b.len() - 1]).contains("truncated"));
    // A head region cut short, and a shard of another format version.
    assert!(RoutedHead::parse("k", &b[..enc.head_bytes as usize - 1], b.len() as u64).is_err());
    let mut v1 = b.clone();
    v1[8] = 1;
    assert!(matches!(
        RoutedHead::parse("k", &v1, b.len() as u64),
        Err(SegmentError::UnsupportedVersion { found: 1, .. })
    ));
}

#[test]
fn a_text_index_holds_each_terms_postings_and_each_rows_lengths() {
    let mut cs = clusters();
    cs[0].1[0].metadata = br#"{"t":"red apple red"}"#.to_vec();
    cs[0].1[2].metadata = br#"{"t":"green apple","u":"red"}"#.to_vec();
    cs[2].1[0].metadata = br#"{"t":""}"#.to_vec();
    for (i, r) in cs[1].1.iter_mut().enumerate() {
        r.metadata = format!(r#"{{"t":"word{} red"}}"#, i % 3000).into_bytes();
    }
    let text = vec![
        ("t".to_string(), Analyzer::Standard),
        ("u".to_string(), Analyzer::En),
    ];
    let (enc, _) = encode_with(&cs, &text);
    assert_eq!(&enc.bytes[8..10], &TEXT_VERSION.to_le_bytes());
    let head = RoutedHead::parse("k", &enc.bytes, enc.bytes.len() as u64).unwrap();
    assert_eq!(head.text.len(), 2);
    let t = &head.text[0];
    assert_eq!((t.key.as_str(), t.analyzer), ("t", Analyzer::Standard));
    // Rows b, c and the 1,500 "m" rows hold terms at "t" (z's is empty).
    assert_eq!(t.docs, 1502);
    assert_eq!(t.total_len, 3 + 2 + 1500 * 2);
    assert!(t.blocks.len() > 1, "{} term blocks", t.blocks.len());
    let slice = |r: std::ops::Range<u64>| &enc.bytes[r.start as usize..r.end as usize];
    let postings = |f: usize, term: &str| {
        let Some(b) = head.term_fence(f, term) else {
            return Vec::new();
        };
        let block = head
            .term_block("k", f, b, slice(head.text[f].blocks[b].block.range()))
            .unwrap();
        let r = block.postings(term);
        (r.clone())
            .map(|i| (block.rows[i], block.tfs[i], block.lens[i]))
            .collect::<Vec<_>>()
    };
    // Shard rows: b 0, a 1, c 2, m 3..1503, z 1503, 0 1504.
    let red = postings(0, "red");
    assert_eq!(red.len(), 1501);
    assert_eq!(red[0], (0, 2, 3));
    assert_eq!(red[1], (3, 1, 2));
    assert_eq!(postings(0, "apple"), vec![(0, 1, 3), (2, 1, 2)]);
    assert_eq!(postings(0, "word1499"), vec![(1502, 1, 2)]);
    assert_eq!(postings(1, "red"), vec![(2, 1, 1)]);
    assert!(postings(0, "absent").is_empty());
    assert!(postings(0, "blue").is_empty());
    // Id-index blocks carry each row's field lengths.
    let b = head.fence_for("c").unwrap();
    let block = head.id_block("k", b, slice(head.fences[b].block.range())).unwrap();
    let i = block.find("c").unwrap();
    assert_eq!(block.lengths_of(i).collect::<Vec<_>>(), vec![2, 1]);
    let i = block.find("a").unwrap();
    assert_eq!(block.lengths_of(i).collect::<Vec<_>>(), vec![0, 0]);
    let b = head.fence_for("z").unwrap();
    let block = head.id_block("k", b, slice(head.fences[b].block.range())).unwrap();
    assert_eq!(block.lengths_of(block.find("z").unwrap()).collect::<Vec<_>>(), vec![0, 0]);
    // The whole object still decodes, rows and metadata as written.
    let (_, seg, _) = decode_routed("k", &enc.bytes).unwrap();
    assert_eq!(seg.len(), 1505);
    assert_eq!(seg.prepared(0).metadata, cs[0].1[0].metadata);
    // A damaged term block is reported by key, never a panic.
    let f = &head.text[0].blocks[0].block;
    let mut bad = enc.bytes.to_vec();
    bad[f.offset as usize + 3] ^= 0xff;
    let err = head
        .term_block("k", 0, 0, &bad[f.offset as usize..(f.offset + u64::from(f.stored)) as usize])
        .unwrap_err();
    assert!(err.to_string().contains("k"), "{err}");
}
