//! `shoal serve` over real HTTP on an ephemeral loopback port: every
//! endpoint, 400/401/404/413 cases, `/metrics`, graceful SIGTERM.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

struct Server {
    child: Child,
    addr: String,
    bucket: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(env: &[(&str, &str)], max_body: &str) -> Server {
        Server::start_with(env, max_body, &[])
    }

    /// `extra`: more `serve` arguments.
    fn start_with(env: &[(&str, &str)], max_body: &str, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let bucket = dir.path().join("idx").to_str().unwrap().to_string();
        let shoal = env!("CARGO_BIN_EXE_shoal");
        let init = Command::new(shoal)
            .args([
                "--bucket",
                &bucket,
                "init",
                "--dimensions",
                "3",
                "--partitions",
                "4",
                "--text-field",
                "text=en",
            ])
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "{}",
            String::from_utf8_lossy(&init.stderr)
        );
        let mut cmd = Command::new(shoal);
        cmd.args([
            "--bucket",
            &bucket,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--max-body-bytes",
            max_body,
        ])
        .args(extra)
        .env_remove("SHOAL_API_KEY")
        .env_remove("SHOAL_API_KEY_READ")
        .env_remove("SHOAL_API_KEY_WRITE")
        .env_remove("SHOAL_S3V_CREDENTIALS")
        .env_remove("SHOAL_S3V_CREDENTIALS_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let addr = common::listening_addr(&mut child);
        Server {
            child,
            addr,
            bucket,
            _dir: dir,
        }
    }

    /// One HTTP/1.1 request; returns (status, body).
    fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        let (st, _, body) = self.call_full(method, path, headers, body);
        (st, body)
    }

    /// One HTTP/1.1 request; returns (status, head, body).
    fn call_full(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String, String) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let _ = s.write_all(body); // the server may answer 413 before reading it all
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw).to_string();
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .unwrap_or("0")
            .parse()
            .unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_string()
        };
        (status, head.to_string(), body)
    }

    fn json(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let (st, b) = self.call(
            method,
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        );
        (
            st,
            serde_json::from_str(&b).unwrap_or_else(|_| panic!("not JSON ({st}): {b}")),
        )
    }

    fn stop(&mut self) -> (bool, String) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let out = self.child.wait().unwrap();
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (out.success(), err)
    }
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((len, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {v}"))
}

#[test]
fn every_endpoint_and_error_case() {
    let mut s = Server::start(&[], "20000");
    let (st, v) = s.json("GET", "/healthz", json!(null));
    assert_eq!((st, v), (200, json!({"status": "ok"})));
    assert_eq!(s.json("GET", "/readyz", json!(null)).0, 200);

    let recs = json!({"records": [
        {"id": "a", "vector": [1, 0, 0], "metadata": {"price": 3, "text": "apple"}},
        {"id": "b", "vector": [0, 1, 0], "metadata": {"symptoms": "cough"}}
    ]});
    let (st, v) = s.json("POST", "/v1/upsert", recs);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["records"], 2);

    let (st, v) = s.json(
        "POST",
        "/v1/search",
        json!({"vector": [1, 0.1, 0], "k": 2, "consistency": "strong"}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["results"][0]["id"], "a");
    assert_eq!(v["results"][0]["metadata"]["domain"], "product");
    assert!(v["stats"]["partitions_searched"].as_u64().unwrap() == 4);
    let (_, v) = s.json(
        "POST",
        "/v1/search",
        json!({"vector": [1, 0, 0], "k": 5, "filter": {"domain": "medical"}}),
    );
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
    assert_eq!(v["results"][0]["id"], "b");
    // Full-text (the index's one searchable key, `text`) and hybrid.
    let (st, v) = s.json(
        "POST",
        "/v1/search",
        json!({"text": [{"text": "apples"}], "k": 5, "consistency": "strong"}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["results"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["results"][0]["id"], "a");
    assert_eq!(v["results"][0]["scores"]["bm25"][0]["key"], "text");
    assert!(v["results"][0].get("distance").is_none(), "{v}");
    let (st, v) = s.json(
        "POST",
        "/v1/search",
        json!({"vector": [0, 1, 0], "text": [{"key": "text", "text": "apple"}], "k": 2}),
    );
    assert_eq!(st, 200, "{v}");
    assert!(
        v["results"][0]["scores"]["fused"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    let (st, v) = s.json(
        "POST",
        "/v1/search",
        json!({"text": [{"key": "title", "text": "apple"}]}),
    );
    assert_eq!((st, error_code(&v)), (400, "invalid_request"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("searchable keys: text"),
        "{v}"
    );

    let (st, v) = s.json("GET", "/v1/records/b", json!(null));
    assert_eq!(st, 200);
    assert_eq!(v["metadata"]["symptoms"], "cough");
    let (st, v) = s.json("GET", "/v1/records/nope", json!(null));
    assert_eq!((st, error_code(&v)), (404, "not_found"));

    let (st, v) = s.json("POST", "/v1/delete", json!({"ids": ["b"]}));
    assert_eq!((st, v["records"].clone()), (200, json!(1)));
    assert_eq!(s.json("GET", "/v1/records/b", json!(null)).0, 404);

    let (st, v) = s.json("GET", "/v1/status", json!(null));
    assert_eq!(st, 200);
    assert_eq!(v["config"]["settings"]["dimensions"], 3);
    assert_eq!(
        v["instances"].as_array().unwrap().len(),
        1,
        "the server registered itself"
    );

    // 400s with the stable error shape.
    let (st, body) = s.call("POST", "/v1/upsert", &[], b"{not json");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((st, error_code(&v)), (400, "invalid_request"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad JSON body"),
        "{v}"
    );
    let cases = [
        (
            "/v1/upsert",
            json!({"records": [{"id": "x", "vector": "abc"}]}),
            "invalid type",
        ),
        (
            "/v1/upsert",
            json!({"records": [{"id": "x", "vector": [1, 2]}]}),
            "vector has 2 dimensions; the index has 3",
        ),
        (
            "/v1/upsert",
            json!({"records": [{"id": "", "vector": [1, 2, 3]}]}),
            "id is empty",
        ),
        ("/v1/upsert", json!({"rows": []}), "unknown field `rows`"),
        (
            "/v1/search",
            json!({"vector": [1, 0, 0], "k": 0}),
            "k must be between 1 and 1000",
        ),
        (
            "/v1/search",
            json!({"vector": [1, 0, 0], "filter": {"p": {"$bogus": 1}}}),
            "unknown operator `$bogus`",
        ),
        ("/v1/delete", json!({"ids": "a"}), "invalid type"),
    ];
    for (path, body, want) in cases {
        let (st, v) = s.json("POST", path, body.clone());
        assert_eq!(
            (st, error_code(&v)),
            (400, "invalid_request"),
            "{path} {body}: {v}"
        );
        assert!(
            v["error"]["message"].as_str().unwrap().contains(want),
            "{path}: {v}"
        );
    }
    let (st, body) = s.call("POST", "/v1/search", &[], b"{\"vector\": [NaN, 1, 2]}");
    assert_eq!(st, 400, "{body}");
    // 413: body over the limit, and a batch over the record limit.
    let big = vec![b' '; 30_000];
    let (st, body) = s.call("POST", "/v1/upsert", &[], &big);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((st, error_code(&v)), (413, "payload_too_large"));
    // Unknown endpoints.
    let (st, v) = s.json("GET", "/v2/nothing", json!(null));
    assert_eq!((st, error_code(&v)), (404, "not_found"));

    // Metrics reflect the traffic.
    let (st, text) = s.call("GET", "/metrics", &[], b"");
    assert_eq!(st, 200);
    for want in [
        "shoal_http_requests_total{endpoint=\"upsert\",status=\"200\"} 1",
        "shoal_http_requests_total{endpoint=\"upsert\",status=\"400\"}",
        "shoal_http_requests_total{endpoint=\"upsert\",status=\"413\"} 1",
        "shoal_http_request_duration_seconds_bucket{endpoint=\"search\",le=\"+Inf\"}",
        "shoal_http_request_duration_seconds_count{endpoint=\"search\"}",
        "shoal_cache_hit_rate ",
        "shoal_store_requests_total{kind=\"put\"}",
        "shoal_store_outcomes_total{code=\"404\"}",
        "shoal_records ",
        "shoal_segments ",
    ] {
        assert!(text.contains(want), "metrics lack {want}:\n{text}");
    }

    // Graceful shutdown on SIGTERM removes the instance record.
    let bucket = s.bucket.clone();
    let (ok, err) = s.stop();
    assert!(ok && err.contains("stopped cleanly"), "{err}");
    let left = std::fs::read_dir(format!("{bucket}/_brainy/instances"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "the instance record is removed on shutdown");
}

#[test]
fn batches_over_the_record_limit_are_413() {
    let mut s = Server::start(&[], "4000000");
    let recs: Vec<Value> = (0..10_001)
        .map(|i| json!({"id": format!("r{i}"), "vector": [1, 0, 0]}))
        .collect();
    let (st, v) = s.json("POST", "/v1/upsert", json!({"records": recs}));
    assert_eq!((st, error_code(&v)), (413, "payload_too_large"), "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("10001 records; at most 10000"));
    s.stop();
}

#[test]
fn api_key_is_required_when_set() {
    let mut s = Server::start(&[("SHOAL_API_KEY", "s3cret-key")], "20000");
    let (st, v) = s.json("POST", "/v1/search", json!({"vector": [1, 0, 0]}));
    assert_eq!((st, error_code(&v)), (401, "unauthorized"));
    let (st, body) = s.call(
        "GET",
        "/v1/status",
        &[("Authorization", "Bearer wrong-key!")],
        b"",
    );
    assert_eq!(st, 401, "{body}");
    assert!(!body.contains("s3cret"), "the key is never echoed");
    let (st, _) = s.call("GET", "/metrics", &[], b"");
    assert_eq!(st, 401);
    let (st, body) = s.call(
        "GET",
        "/v1/status",
        &[("Authorization", "Bearer s3cret-key")],
        b"",
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        s.call("GET", "/healthz", &[], b"").0,
        200,
        "health stays open"
    );
    let (ok, err) = s.stop();
    assert!(ok, "{err}");
    assert!(!err.contains("s3cret"), "the key is never logged");
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

#[test]
fn read_and_write_keys_grant_what_they_name() {
    let mut s = Server::start(
        &[
            ("SHOAL_API_KEY_READ", "read-key"),
            ("SHOAL_API_KEY_WRITE", "write-key"),
        ],
        "20000",
    );
    let call = |method: &str, path: &str, key: Option<&str>, body: Value| {
        let auth = key.map(bearer);
        let mut h = vec![("Content-Type", "application/json")];
        if let Some(a) = &auth {
            h.push(("Authorization", a.as_str()));
        }
        let (st, b) = s.call(method, path, &h, body.to_string().as_bytes());
        (st, serde_json::from_str::<Value>(&b).unwrap_or(Value::Null))
    };
    let rec = json!({"records": [{"id": "a", "vector": [1, 0, 0]}]});
    // A read key cannot write, and nothing is written.
    let (st, v) = call("POST", "/v1/upsert", Some("read-key"), rec.clone());
    assert_eq!((st, error_code(&v)), (403, "forbidden"), "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("SHOAL_API_KEY_WRITE"));
    let (st, v) = call(
        "POST",
        "/v1/delete",
        Some("read-key"),
        json!({"ids": ["a"]}),
    );
    assert_eq!((st, error_code(&v)), (403, "forbidden"));
    assert_eq!(
        call("GET", "/v1/records/a", Some("read-key"), json!(null)).0,
        404
    );
    // No key, or a wrong one: 401 on reads and writes alike.
    for key in [None, Some("write-ke"), Some("read-key2")] {
        assert_eq!(
            call("POST", "/v1/upsert", key, rec.clone()).0,
            401,
            "{key:?}"
        );
        assert_eq!(
            call("GET", "/v1/status", key, json!(null)).0,
            401,
            "{key:?}"
        );
    }
    // The write key writes; both keys read.
    assert_eq!(call("POST", "/v1/upsert", Some("write-key"), rec).0, 200);
    for key in ["read-key", "write-key"] {
        let (st, v) = call("GET", "/v1/records/a", Some(key), json!(null));
        assert_eq!((st, v["id"].as_str()), (200, Some("a")), "{key}");
        let (st, v) = call(
            "POST",
            "/v1/search",
            Some(key),
            json!({"vector": [1, 0, 0], "k": 1, "consistency": "strong"}),
        );
        assert_eq!(st, 200, "{v}");
    }
    // An oversized filter is a 400 naming its size, before any work.
    let ors: Vec<Value> = (0..1100).map(|i| json!({"a": i})).collect();
    let (st, v) = call(
        "POST",
        "/v1/search",
        Some("read-key"),
        json!({"vector": [1, 0, 0], "filter": {"$or": ors}}),
    );
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1101 terms"),
        "{v}"
    );
    let (ok, err) = s.stop();
    assert!(ok, "{err}");
    assert!(!err.contains("read-key") && !err.contains("write-key"));
}

#[test]
fn a_reader_instance_refuses_writes_and_names_its_role() {
    let mut s = Server::start(&[("BRAINY_ROLE", "reader")], "20000");
    let (st, v) = s.json(
        "POST",
        "/v1/upsert",
        json!({"records": [{"id": "a", "vector": [1, 0, 0]}]}),
    );
    assert_eq!((st, error_code(&v)), (403, "read_only_instance"), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("reader"));
    let (st, v) = s.json("POST", "/v1/delete", json!({"ids": ["a"]}));
    assert_eq!((st, error_code(&v)), (403, "read_only_instance"), "{v}");
    // Nothing reached the bucket: no segment was written.
    let segments = walkdir(&s.bucket)
        .into_iter()
        .filter(|p| p.contains("/segments/") || p.ends_with(".seg"))
        .count();
    assert_eq!(segments, 0);
    let (st, _) = s.json("POST", "/v1/search", json!({"vector": [1, 0, 0]}));
    assert_eq!(st, 200, "a reader still searches");
    s.stop();
}

fn walkdir(dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![std::path::PathBuf::from(dir)];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.to_string_lossy().to_string());
            }
        }
    }
    out
}

#[test]
fn searches_over_the_limit_get_429_and_slow_ones_503() {
    // Every store request takes 400 ms, so cold searches overlap.
    let mut s = Server::start_with(
        &[("SHOAL_STORE_LATENCY_MS", "400")],
        "20000",
        &["--max-concurrent-searches", "1", "--query-timeout", "30s"],
    );
    let addr = s.addr.clone();
    let results: Vec<(u16, String)> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let s = &s;
                sc.spawn(move || {
                    let (st, head, _) = s.call_full(
                        "POST",
                        "/v1/search",
                        &[("Content-Type", "application/json")],
                        br#"{"vector": [1, 0, 0]}"#,
                    );
                    (st, head)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let limited: Vec<&(u16, String)> = results.iter().filter(|r| r.0 == 429).collect();
    assert!(ok >= 1, "{addr}: {results:?}");
    assert!(
        !limited.is_empty(),
        "one slot, four overlapping searches: {results:?}"
    );
    assert!(
        limited
            .iter()
            .all(|r| r.1.to_ascii_lowercase().contains("retry-after: 1")),
        "{limited:?}"
    );
    s.stop();
    let mut s = Server::start_with(
        &[("SHOAL_STORE_LATENCY_MS", "400")],
        "20000",
        &["--query-timeout", "100ms", "--max-concurrent-searches", "1"],
    );
    let search = |s: &Server| {
        s.json(
            "POST",
            "/v1/search",
            json!({"vector": [1, 0, 0], "consistency": "strong"}),
        )
    };
    let (st, v) = search(&s);
    assert_eq!((st, error_code(&v)), (503, "deadline_exceeded"), "{v}");
    // The abandoned search still works and still holds the one slot: a
    // client cannot pile abandoned searches onto the cores.
    let (st, v) = search(&s);
    assert_eq!((st, error_code(&v)), (429, "too_many_requests"), "{v}");
    // Once its work ends the slot is free again.
    let started = std::time::Instant::now();
    loop {
        let (st, v) = search(&s);
        if st != 429 {
            assert_eq!((st, error_code(&v)), (503, "deadline_exceeded"), "{v}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the slot never came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    s.stop();
}

#[test]
fn serving_beyond_loopback_needs_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("idx").to_str().unwrap().to_string();
    let shoal = env!("CARGO_BIN_EXE_shoal");
    let init = Command::new(shoal)
        .args(["--bucket", &bucket, "init", "--dimensions", "3"])
        .output()
        .unwrap();
    assert!(init.status.success());
    // Refused before binding: the port is never opened.
    let out = Command::new(shoal)
        .args(["--bucket", &bucket, "serve", "--listen", "0.0.0.0:0"])
        .env_remove("SHOAL_API_KEY")
        .env_remove("SHOAL_API_KEY_READ")
        .env_remove("SHOAL_API_KEY_WRITE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to serve 0.0.0.0:0 without an API key"),
        "{err}"
    );
    assert!(err.contains("--insecure-no-auth"), "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "never listened"
    );
}

/// `--s3vectors` checks signatures: without credentials it does not start
/// unless told `--insecure-no-auth`; with credentials an unsigned request
/// gets AWS's 403. The index at the root keeps its `/v1` API alongside.
#[test]
fn s3vectors_needs_credentials_or_an_explicit_insecure_flag() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("s3v").to_str().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args([
            "--bucket",
            &bucket,
            "serve",
            "--s3vectors",
            "--listen",
            "127.0.0.1:0",
        ])
        .env_remove("SHOAL_S3V_CREDENTIALS")
        .env_remove("SHOAL_S3V_CREDENTIALS_FILE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SHOAL_S3V_CREDENTIALS"), "{err}");
    assert!(err.contains("--insecure-no-auth"), "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "never listened"
    );

    let mut open = Server::start_with(&[], "1000000", &["--s3vectors", "--insecure-no-auth"]);
    let (st, v) = open.json(
        "POST",
        "/CreateVectorBucket",
        json!({"vectorBucketName": "open-vb"}),
    );
    assert_eq!(st, 200, "{v}");
    assert!(
        v["vectorBucketArn"]
            .as_str()
            .unwrap()
            .ends_with(":bucket/open-vb"),
        "{v}"
    );
    let (st, v) = open.json("POST", "/ListVectorBuckets", json!({}));
    assert_eq!(
        (st, v["vectorBuckets"][0]["vectorBucketName"].as_str()),
        (200, Some("open-vb"))
    );
    let (st, v) = open.json(
        "POST",
        "/v1/search",
        json!({"vector": [1.0, 0.0, 0.0], "k": 1}),
    );
    assert_eq!(st, 200, "the root index still answers /v1: {v}");
    open.stop();

    let mut signed = Server::start_with(
        &[("SHOAL_S3V_CREDENTIALS", "key:secret")],
        "1000000",
        &["--s3vectors"],
    );
    let (st, head, body) = signed.call_full(
        "POST",
        "/CreateVectorBucket",
        &[("Content-Type", "application/json")],
        br#"{"vectorBucketName": "nope"}"#,
    );
    assert_eq!(st, 403, "{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-amzn-errortype: missingauthenticationtokenexception"),
        "{head}"
    );
    assert!(!std::path::Path::new(&signed.bucket).join("nope").exists());
    assert!(
        !std::path::Path::new(&signed.bucket)
            .join("_s3vectors/catalog.json")
            .exists(),
        "nothing written (but the server's own instance record)"
    );
    signed.stop();
}

/// A fresh bucket: a writer given the settings creates the config and
/// serves; a reader never creates it and says what to run.
#[test]
fn a_writer_creates_the_config_on_a_fresh_bucket_a_reader_says_what_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("fresh").to_str().unwrap().to_string();
    let shoal = env!("CARGO_BIN_EXE_shoal");
    let out = Command::new(shoal)
        .args([
            "--bucket",
            &bucket,
            "--role",
            "reader",
            "serve",
            "--listen",
            "127.0.0.1:0",
        ])
        .env("SHOAL_DIMENSIONS", "3")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("shoal --bucket {bucket} init --dimensions N"))
            && err.contains("serve --dimensions N")
            && err.contains("readers never create it"),
        "{err}"
    );
    assert!(
        !std::path::Path::new(&bucket)
            .join("_brainy/config.json")
            .exists(),
        "a reader wrote the config"
    );
    // The writer, from the environment as the Lambda functions and the
    // container examples give it.
    let mut child = Command::new(shoal)
        .args([
            "--bucket",
            &bucket,
            "--role",
            "writer",
            "serve",
            "--listen",
            "127.0.0.1:0",
        ])
        .env("SHOAL_DIMENSIONS", "3")
        .env("SHOAL_METRIC", "euclidean")
        .env("SHOAL_PARTITIONS", "4")
        .env_remove("SHOAL_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening on"), "{line}");
    let config: Value = serde_json::from_slice(
        &std::fs::read(std::path::Path::new(&bucket).join("_brainy/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["settings"]["dimensions"], 3);
    assert_eq!(config["settings"]["distanceMetric"], "euclidean");
    assert_eq!(config["settings"]["partitionCount"], 4);
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());
    // A second starter with other settings is refused, not obeyed.
    let out = Command::new(shoal)
        .args([
            "--bucket",
            &bucket,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--dimensions",
            "5",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("dimensions"));
}

/// The Lambda template lets a function write only instance records named
/// `<stack>-<role>-*`; `BRAINY_INSTANCE_PREFIX` names them so.
#[test]
fn instance_records_carry_the_configured_prefix() {
    let mut s = Server::start(&[("BRAINY_INSTANCE_PREFIX", "mystack-writer")], "20000");
    let records: Vec<String> = walkdir(&s.bucket)
        .into_iter()
        .filter(|p| p.contains("/_brainy/instances/"))
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    let name = records[0].rsplit('/').next().unwrap();
    assert!(name.starts_with("mystack-writer-"), "{name}");
    s.stop();
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("idx").to_str().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["--bucket", &bucket, "init", "--dimensions", "3"])
        .env("BRAINY_INSTANCE_PREFIX", "no/slashes")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("BRAINY_INSTANCE_PREFIX"));
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// `/metrics` after known operations: exact counts, a hit rate of 0
/// before any lookup (it was 50 %), and cache bytes that are not 0 with
/// segments cached.
#[test]
fn metrics_report_exactly_what_was_done() {
    let mut s = Server::start(&[], "20000");
    let (st, m) = s.call("GET", "/metrics", &[], b"");
    assert_eq!(st, 200);
    assert_eq!(metric(&m, "shoal_cache_hit_rate"), 0.0);
    assert_eq!(metric(&m, "shoal_cache_hits_total"), 0.0);
    assert_eq!(metric(&m, "shoal_queries_total"), 0.0);
    for n in 1..=3 {
        let records: Vec<Value> = (0..n)
            .map(|i| json!({"id": format!("r{n}-{i}"), "vector": [1, i, 0]}))
            .collect();
        assert_eq!(
            s.json("POST", "/v1/upsert", json!({ "records": records }))
                .0,
            200
        );
    }
    assert_eq!(
        s.json("POST", "/v1/delete", json!({"ids": ["r1-0"]})).0,
        200
    );
    let mut per_query = Vec::new();
    for _ in 0..4 {
        let (st, v) = s.json(
            "POST",
            "/v1/search",
            json!({"vector": [1, 0, 0], "k": 3, "consistency": "strong"}),
        );
        assert_eq!(st, 200);
        let r = &v["stats"]["requests"];
        per_query.push(
            ["get", "put", "list", "head", "delete"]
                .iter()
                .map(|k| r[*k].as_u64().unwrap())
                .sum::<u64>(),
        );
    }
    let (_, m) = s.call("GET", "/metrics", &[], b"");
    // Store requests per search: each search's own count, exactly.
    assert!(
        per_query.iter().all(|&n| n > 0),
        "strong reads revalidate: {per_query:?}"
    );
    assert_eq!(metric(&m, "shoal_query_store_requests_count"), 4.0);
    assert_eq!(
        metric(&m, "shoal_query_store_requests_sum"),
        per_query.iter().sum::<u64>() as f64
    );
    let within = |le: u64| per_query.iter().filter(|&&n| n <= le).count() as f64;
    for le in [2u64, 5, 10, 20] {
        assert_eq!(
            metric(
                &m,
                &format!("shoal_query_store_requests_bucket{{le=\"{le}\"}}")
            ),
            within(le),
            "{per_query:?}"
        );
    }
    // Indexing lag: every write's segments (one per partition a write
    // touched), none indexed yet; 6 records upserted, 1 deleted.
    let part = |id: &str| shoal::coord::partition_of(id, 4);
    let mut segments = 1; // the delete of r1-0
    for n in 1..=3 {
        let touched: std::collections::BTreeSet<u32> =
            (0..n).map(|i| part(&format!("r{n}-{i}"))).collect();
        segments += touched.len();
    }
    assert_eq!(
        metric(&m, "shoal_unindexed_segments"),
        segments as f64,
        "{m}"
    );
    assert_eq!(metric(&m, "shoal_unindexed_records"), 7.0, "{m}");
    let lag = metric(&m, "shoal_index_lag_seconds");
    assert!(lag > 0.0 && lag < 120.0, "{lag}");
    assert_eq!(
        metric(&m, "shoal_write_records_total"),
        7.0,
        "1 + 2 + 3 upserted, 1 deleted"
    );
    assert_eq!(metric(&m, "shoal_queries_total"), 4.0);
    assert_eq!(
        metric(
            &m,
            "shoal_http_requests_total{endpoint=\"search\",status=\"200\"}"
        ),
        4.0
    );
    assert_eq!(metric(&m, "shoal_cas_conflicts_total"), 0.0, "one writer");
    let (hits, misses) = (
        metric(&m, "shoal_cache_hits_total"),
        metric(&m, "shoal_cache_misses_total"),
    );
    assert!(misses > 0.0, "{m}");
    assert!(hits > 0.0, "four searches of the same segments: {m}");
    assert!((metric(&m, "shoal_cache_hit_rate") - hits / (hits + misses)).abs() < 1e-9);
    assert!(
        metric(&m, "shoal_cache_bytes") > 0.0,
        "segments are cached: {m}"
    );
    s.stop();
}

/// Issue 28 F10: the S3 Vectors front end checks the signature's headers
/// before it reads a body: an unsigned request declaring a 15 MB body it
/// never sends is answered 403 at once (before, the server waited for the
/// body, and buffered up to the body limit per request before refusing).
#[test]
fn an_unsigned_s3vectors_request_is_refused_before_its_body_is_read() {
    let mut signed = Server::start_with(
        &[("SHOAL_S3V_CREDENTIALS", "key:secret")],
        "16000000",
        &["--s3vectors"],
    );
    let mut s = TcpStream::connect(&signed.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let head = "POST /PutVectors HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
                Content-Type: application/json\r\nContent-Length: 15000000\r\n\r\n";
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(b"{\"vectors\":").unwrap();
    let started = std::time::Instant::now();
    let mut got = [0u8; 512];
    let n = s.read(&mut got).unwrap_or(0);
    let answer = String::from_utf8_lossy(&got[..n]).to_string();
    assert!(
        answer.starts_with("HTTP/1.1 403"),
        "no answer before the body ({:?} waited): {answer:?}",
        started.elapsed()
    );
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("x-amzn-errortype: missingauthenticationtokenexception"),
        "{answer}"
    );
    signed.stop();
}
