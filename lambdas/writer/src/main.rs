//! shoal writer Lambda: upsert and delete, answering only after commit, as
//! direct invocations or HTTP events. All logic lives in `shoal::lambda`.

use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use serde_json::Value;
use shoal::coord::Role;

#[derive(Debug)]
struct Failure(shoal::api::ApiError);

impl From<Failure> for Diagnostic {
    fn from(f: Failure) -> Diagnostic {
        Diagnostic {
            error_type: shoal::lambda::error_type(&f.0),
            error_message: f.0.message,
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter("shoal=info,warn")
        .without_time()
        .init();
    // Built once per cold start, reused by every invocation.
    let svc = shoal::lambda::service_from_env(Role::Writer).await?;
    let svc = &svc;
    lambda_runtime::run(service_fn(move |e: LambdaEvent<Value>| async move {
        shoal::lambda::handle_writer(svc, e.payload)
            .await
            .map_err(Failure)
    }))
    .await
}
