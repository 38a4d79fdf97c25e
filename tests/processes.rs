//! Real `shoal` processes on one bucket (local directory and S3): four
//! concurrent writers with overlapping ids, and writers and compactors
//! killed with SIGKILL at random moments. Afterwards the bucket must hold
//! every acknowledged write, `verify` must be clean except for orphans, and
//! `gc` must remove the orphans.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::Value;

use common::Shoal;

fn write_jsonl(b: &Shoal, name: &str, rows: &[(String, Vec<f32>)]) -> String {
    let text: String = rows
        .iter()
        .map(|(id, v)| serde_json::json!({"id": id, "vector": v}).to_string() + "\n")
        .collect();
    b.file(name, text.as_bytes())
}

/// The stored vector of `id`, or None if the bucket does not have it.
fn get(b: &Shoal, id: &str) -> Option<Vec<f32>> {
    let out = b.run(&["--json", "get", id]);
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    Some(serde_json::from_value(v["vector"].clone()).unwrap())
}

/// A 3-d euclidean index with `partitions` partitions.
fn init(b: &Shoal, partitions: &str) {
    b.ok(&[
        "init",
        "--dimensions",
        "3",
        "--metric",
        "euclidean",
        "--partitions",
        partitions,
    ]);
}

fn four_writers(b: &Shoal) {
    init(b, "8");
    // Writer w writes ids k{w*50 .. w*50+150}: neighbours overlap by 100.
    let files: Vec<String> = (0..4)
        .map(|w| {
            let rows: Vec<(String, Vec<f32>)> = (w * 50..w * 50 + 150)
                .map(|j| (format!("k{j}"), vec![w as f32, j as f32, 1.0]))
                .collect();
            write_jsonl(b, &format!("w{w}.jsonl"), &rows)
        })
        .collect();
    let children: Vec<_> = files
        .iter()
        .map(|f| {
            b.cmd(&["ingest", f, "--batch-size", "7", "--no-compact"])
                .spawn()
                .unwrap()
        })
        .collect();
    let mut acked: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for (w, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "writer {w}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("committed 150 records"));
        for j in w * 50..w * 50 + 150 {
            acked.entry(format!("k{j}")).or_default().insert(w as u32);
        }
    }
    for (id, writers) in &acked {
        let v = get(b, id).unwrap_or_else(|| panic!("acknowledged {id} is missing"));
        let j: f32 = id[1..].parse().unwrap();
        assert_eq!(v[1], j, "{id} holds another id's vector");
        assert!(
            writers.contains(&(v[0] as u32)),
            "{id} holds a version no writer acknowledged: {v:?}"
        );
    }
    let out = b.run(&["verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn four_writer_processes_local() {
    four_writers(&Shoal::local());
}

#[tokio::test]
async fn four_writer_processes_s3() {
    let Some(b) = Shoal::s3("procs").await else {
        return;
    };
    tokio::task::spawn_blocking(move || four_writers(&b))
        .await
        .unwrap();
}

fn kill9(b: &Shoal, seed: u64) {
    init(b, "4");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut acked: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let mut kills = 0;
    for round in 0..10 {
        let rows: Vec<(String, Vec<f32>)> = (0..2000)
            .map(|j| (format!("r{round}-{j}"), vec![round as f32, j as f32, 2.0]))
            .collect();
        let file = write_jsonl(b, &format!("round{round}.jsonl"), &rows);
        let mut child = if round % 3 == 2 {
            b.cmd(&["compact", "--force"]).spawn().unwrap()
        } else {
            b.cmd(&["ingest", &file, "--batch-size", "5", "--no-compact"])
                .spawn()
                .unwrap()
        };
        std::thread::sleep(Duration::from_millis(rng.random_range(0..250)));
        let killed = unsafe { libc::kill(child.id() as i32, libc::SIGKILL) } == 0;
        let status = child.wait().unwrap();
        if status.success() && round % 3 != 2 {
            // Finished before the kill: everything is acknowledged.
            for (id, v) in rows {
                acked.insert(id, v);
            }
        } else if killed && !status.success() {
            kills += 1;
        }
    }
    assert!(
        kills >= 3,
        "too few processes were actually killed mid-run ({kills})"
    );
    for (id, v) in &acked {
        assert_eq!(
            get(b, id).as_ref(),
            Some(v),
            "acknowledged {id} lost after kill -9"
        );
    }
    let out = b.run(&["--json", "verify"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "verify after kills: {report}");
    b.ok(&["--json", "gc", "--grace-seconds", "0", "--unsafe-grace"]);
    let after: Value = serde_json::from_slice(&b.run(&["--json", "verify"]).stdout).unwrap();
    assert_eq!(
        after["orphans"],
        serde_json::json!([]),
        "gc removed the orphans"
    );
    assert_eq!(after["problems"], serde_json::json!([]));
    for (id, v) in acked.iter().step_by(37) {
        assert_eq!(get(b, id).as_ref(), Some(v), "gc removed live data {id}");
    }
}

#[test]
fn kill_9_writers_and_compactors_local() {
    kill9(&Shoal::local(), 1);
}

#[tokio::test]
async fn kill_9_writers_and_compactors_s3() {
    let Some(b) = Shoal::s3("procs").await else {
        return;
    };
    tokio::task::spawn_blocking(move || kill9(&b, 2))
        .await
        .unwrap();
}
