//! shoal compactor Lambda (on a schedule): compaction and GC across
//! partitions until the invocation's time runs low, resuming from a cursor
//! kept in the bucket. All logic lives in `shoal::lambda`.

use std::time::{Duration, Instant, SystemTime};

use lambda_runtime::LambdaEvent;
use serde_json::Value;
use shoal::api::Role;

fn main() -> Result<(), lambda_runtime::Error> {
    shoal_lambda_common::main(Role::Writer, |svc, e: LambdaEvent<Value>| async move {
        // Time left in this invocation, from the context deadline (epoch
        // milliseconds). The local emulator (cargo lambda watch) sends the
        // timeout as a relative number of milliseconds instead; a value far
        // below any real epoch time is read that way. The deadline is the
        // runtime's wall-clock time, so it is compared with the host's
        // clock, not an injected one.
        #[allow(clippy::disallowed_methods)]
        let left = if e.context.deadline < 1_000_000_000_000 {
            Duration::from_millis(e.context.deadline)
        } else {
            e.context
                .deadline()
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        };
        tracing::info!(seconds_left = left.as_secs_f64(), "compactor invoked");
        let deadline = Instant::now() + left;
        // Stop with a quarter of the time (0.2 to 20 s) to spare for the
        // partition in progress and saving the cursor.
        let margin = (left / 4).clamp(Duration::from_millis(200), Duration::from_secs(20));
        let gc = shoal::api::GcOptions::default();
        shoal::lambda::handle_compactor(svc, deadline, margin, &gc).await
    })
}
