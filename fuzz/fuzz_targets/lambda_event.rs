//! Events as the reader Lambda receives them (direct invocations and
//! Function URL / API Gateway HTTP events, which come from the internet),
//! against a real in-memory index: every input must end in a clear error
//! or a well-formed answer, and an HTTP event always in an HTTP response
//! with a status code and a JSON body. Never a panic.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use shoal::api::{JoinOptions, RequestedSettings, Role};
use shoal::coord::role::RoleEnv;
use shoal::lambda::handle_reader;
use shoal::store::{memory::MemoryStore, Counted};
use shoal::{Db, OpenOptions};

struct Reader {
    rt: tokio::runtime::Runtime,
    svc: Db,
}

async fn join(store: &Arc<Counted>, role: Role) -> Db {
    Db::open_store(
        store.clone(),
        OpenOptions {
            cluster: JoinOptions {
                settings: RequestedSettings {
                    dimensions: Some(3),
                    partition_count: Some(3),
                    ..Default::default()
                },
                role: Some(role),
                background_heartbeat: false,
                env: RoleEnv::default(),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .expect("join")
}

fn reader() -> &'static Reader {
    static READER: OnceLock<Reader> = OnceLock::new();
    READER.get_or_init(|| {
        let rt = shoal_fuzz::runtime();
        let store = Arc::new(Counted::new(Arc::new(MemoryStore::unique())));
        let svc = rt.block_on(async {
            let writer = join(&store, Role::Writer).await;
            writer
                .upsert(&shoal_fuzz::sample_records(30))
                .await
                .expect("seed records");
            join(&store, Role::Reader).await
        });
        Reader { rt, svc }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(event) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let r = reader();
    let http = event.get("requestContext").is_some();
    match r.rt.block_on(handle_reader(&r.svc, event)) {
        Ok(resp) if http => {
            let status = resp["statusCode"]
                .as_u64()
                .expect("an HTTP response has a status");
            assert!((200..600).contains(&status), "{status}");
            let body = resp["body"].as_str().expect("an HTTP response has a body");
            let body: Value = serde_json::from_str(body).expect("the body is JSON");
            if status != 200 {
                assert!(body["error"]["message"].is_string(), "{body}");
            }
        }
        Ok(_) => {}
        Err(e) => assert!(!e.message.is_empty() && (400..600).contains(&e.status)),
    }
});
