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

/// One line a child printed: stdout (`true`) or stderr.
type Line = (usize, bool, String);

/// Spawns `cmd` with its output read line by line into `tx`, tagged `n`.
fn spawn_reading(
    mut cmd: std::process::Command,
    n: usize,
    tx: &std::sync::mpsc::Sender<Line>,
) -> std::process::Child {
    use std::io::BufRead;
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    for (pipe, is_out) in [
        (Box::new(out) as Box<dyn std::io::Read + Send>, true),
        (Box::new(err), false),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send((n, is_out, line));
            }
        });
    }
    child
}

fn sigkill(child: &std::process::Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
}

/// Writers that all write the *same* ids, killed with SIGKILL at random
/// instants (after their first acknowledgement) and, through a test hook,
/// exactly between a segment PUT and its manifest commit; compactors
/// killed at random. `ingest --json` prints one line per durable commit
/// naming its ids: that is the acknowledged set. Every round it must be
/// non-empty, every acknowledged id must hold the newest acknowledged
/// version (or a newer one its writer was killed before acknowledging),
/// and no value may appear that was never sent.
fn kill9_acknowledged(b: &Shoal, seed: u64) {
    const IDS: usize = 400;
    const ROUNDS: usize = 6;
    const WRITERS: usize = 3;
    init(b, "4");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // id -> (seq, value) of its newest acknowledged version
    let mut newest: BTreeMap<String, (u64, Vec<f32>)> = BTreeMap::new();
    // (round, writer) -> ids it acknowledged (with seq)
    let mut acks: BTreeMap<(usize, usize), BTreeMap<String, u64>> = BTreeMap::new();
    let mut hooked = 0;
    for round in 0..ROUNDS {
        let (tx, rx) = std::sync::mpsc::channel::<Line>();
        let hook_round = round % 2 == 1;
        let mut children = Vec::new();
        for w in 0..WRITERS {
            let rows: Vec<(String, Vec<f32>)> = (0..IDS)
                .map(|j| (format!("k{j}"), vec![round as f32, w as f32, j as f32]))
                .collect();
            let file = write_jsonl(b, &format!("r{round}w{w}.jsonl"), &rows);
            let mut cmd = b.cmd(&[
                "--json",
                "ingest",
                &file,
                "--batch-size",
                "2",
                "--no-compact",
            ]);
            if hook_round && w == 0 {
                cmd.env("SHOAL_TEST_HOOK", "stop-before-commit");
            }
            children.push(spawn_reading(cmd, w, &tx));
        }
        let compactor = (round % 3 == 2).then(|| {
            let c = spawn_reading(b.cmd(&["compact", "--force"]), WRITERS, &tx);
            std::thread::sleep(Duration::from_millis(rng.random_range(0..200)));
            sigkill(&c);
            c
        });
        drop(tx);
        // Kill each writer after its first acknowledgement (plus a random
        // delay), or, for the hooked one, the moment it stops before a commit.
        let mut killed = [false; WRITERS];
        let mut lines: Vec<Line> = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while killed.iter().any(|k| !k) && std::time::Instant::now() < deadline {
            let Ok((w, is_out, line)) = rx.recv_timeout(Duration::from_millis(50)) else {
                continue;
            };
            if w < WRITERS && !killed[w] {
                let hook = !is_out && line.starts_with("HOOK stopped-before-commit");
                let acked = is_out && line.starts_with("{\"durable\"");
                if hook {
                    hooked += 1;
                }
                if hook || (acked && !(hook_round && w == 0)) {
                    if acked {
                        std::thread::sleep(Duration::from_millis(rng.random_range(0..30)));
                    }
                    sigkill(&children[w]);
                    killed[w] = true;
                }
            }
            lines.push((w, is_out, line));
        }
        for c in &mut children {
            sigkill(c);
            c.wait().unwrap();
        }
        if let Some(mut c) = compactor {
            c.wait().unwrap();
        }
        lines.extend(rx.iter());
        let mut round_acked = 0;
        for (w, is_out, line) in &lines {
            if !is_out || !line.starts_with("{\"durable\"") {
                continue;
            }
            let d: Value = serde_json::from_str(line).unwrap();
            let seq = d["durable"]["seq"].as_u64().unwrap();
            for id in d["durable"]["ids"].as_array().unwrap() {
                let id = id.as_str().unwrap().to_string();
                let j: f32 = id[1..].parse().unwrap();
                let v = vec![round as f32, *w as f32, j];
                round_acked += 1;
                acks.entry((round, *w)).or_default().insert(id.clone(), seq);
                if newest.get(&id).is_none_or(|(s, _)| seq > *s) {
                    newest.insert(id, (seq, v));
                }
            }
        }
        assert!(round_acked > 0, "round {round}: nothing was acknowledged");
        eprintln!(
            "round {round}: {round_acked} acknowledgements, {} ids acknowledged so far",
            newest.len()
        );
        if hook_round {
            assert_eq!(
                acks.get(&(round, 0)).map_or(0, |a| a.len()),
                0,
                "round {round}: the hooked writer stopped before its first commit"
            );
        }
        check_acknowledged(b, round, &newest, &acks);
    }
    assert!(hooked >= ROUNDS / 2, "the hook stopped {hooked} writers");
    let out = b.run(&["--json", "verify"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "verify after kills: {report}");
    assert!(
        !report["orphans"].as_array().unwrap().is_empty(),
        "a writer killed between PUT and commit leaves an orphan: {report}"
    );
    b.ok(&["--json", "gc", "--grace-seconds", "0", "--unsafe-grace"]);
    let after: Value = serde_json::from_slice(&b.run(&["--json", "verify"]).stdout).unwrap();
    assert_eq!(
        after["orphans"],
        serde_json::json!([]),
        "gc removed the orphans"
    );
    assert_eq!(after["problems"], serde_json::json!([]));
    check_acknowledged(b, ROUNDS, &newest, &acks);
}

/// Every acknowledged id holds its newest acknowledged version, or a
/// version its writer committed and was killed before acknowledging; no
/// value appears that was never sent. Read in-process, strongly.
fn check_acknowledged(
    b: &Shoal,
    round: usize,
    newest: &BTreeMap<String, (u64, Vec<f32>)>,
    acks: &BTreeMap<(usize, usize), BTreeMap<String, u64>>,
) {
    let read = async {
        let store = b.open_store().await;
        let db = shoal::Db::open_store(store, shoal::OpenOptions::observer())
            .await
            .unwrap();
        let mut got = BTreeMap::new();
        for id in newest.keys() {
            let r = db.get(id, shoal::api::Consistency::Strong).await.unwrap();
            got.insert(id.clone(), r.map(|r| r.vector));
        }
        got
    };
    let got = std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(read)
        })
        .join()
        .unwrap()
    });
    for (id, (seq, want)) in newest {
        let v = got[id]
            .clone()
            .unwrap_or_else(|| panic!("after round {round}: acknowledged {id} is missing"));
        if &v == want {
            continue;
        }
        let (r, w, j) = (v[0] as usize, v[1] as usize, v[2]);
        let sent = r <= round && w < 3 && j == id[1..].parse::<f32>().unwrap();
        assert!(
            sent,
            "after round {round}: {id} holds {v:?}, which was never sent"
        );
        match acks.get(&(r, w)).and_then(|a| a.get(id)) {
            None => {} // committed, then killed before it could say so
            Some(s) => panic!(
                "after round {round}: {id} holds {v:?} (acknowledged at seq {s}), but {want:?} \
                 was acknowledged later at seq {seq}"
            ),
        }
    }
}

#[test]
fn kill_9_writers_and_compactors_local() {
    kill9_acknowledged(&Shoal::local(), 1);
}

#[tokio::test]
async fn kill_9_writers_and_compactors_s3() {
    let Some(b) = Shoal::s3("procs").await else {
        return;
    };
    tokio::task::spawn_blocking(move || kill9_acknowledged(&b, 2))
        .await
        .unwrap();
}
