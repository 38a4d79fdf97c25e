//! The runtime wiring the three shoal Lambda functions share: JSON logs,
//! one [`Db`] handle per cold start, and handler errors mapped to Lambda's
//! error types (`Retryable`/`NonRetryable`, see
//! [`shoal::lambda::error_type`]). Request handling itself lives in
//! `shoal::lambda`, where the tests call it directly.

use std::future::Future;

use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use serde_json::Value;
use shoal::api::{ApiError, Role};
use shoal::Db;

/// A handler error as Lambda reports it.
#[derive(Debug)]
pub struct Failure(pub ApiError);

impl From<Failure> for Diagnostic {
    fn from(f: Failure) -> Diagnostic {
        Diagnostic {
            error_type: shoal::lambda::error_type(&f.0),
            error_message: f.0.message,
        }
    }
}

/// A Lambda function's `main`: runs [`run`] on [`shoal::runtime`].
pub fn main<F, Fut>(role: Role, handler: F) -> Result<(), lambda_runtime::Error>
where
    F: Fn(&'static Db, LambdaEvent<Value>) -> Fut,
    Fut: Future<Output = Result<Value, ApiError>>,
{
    shoal::runtime()?.block_on(run(role, handler))
}

/// Sets up JSON logs (CloudWatch adds the time), joins the bucket as
/// `role` (unless `BRAINY_ROLE` says otherwise), and answers invocations
/// with `handler` until the runtime stops the process.
pub async fn run<F, Fut>(role: Role, handler: F) -> Result<(), lambda_runtime::Error>
where
    F: Fn(&'static Db, LambdaEvent<Value>) -> Fut,
    Fut: Future<Output = Result<Value, ApiError>>,
{
    tracing_subscriber::fmt()
        .json()
        .with_env_filter("shoal=info,warn")
        .without_time()
        .init();
    // Built once per cold start and kept for the life of the process,
    // which is what `'static` says.
    let db: &'static Db = Box::leak(Box::new(shoal::lambda::db_from_env(role).await?));
    let handler = &handler;
    lambda_runtime::run(service_fn(move |e: LambdaEvent<Value>| async move {
        handler(db, e).await.map_err(Failure)
    }))
    .await
}
