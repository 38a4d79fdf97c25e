//! shoal writer Lambda: upsert and delete, answering only after commit, as
//! direct invocations or HTTP events. All logic lives in `shoal::lambda`.

use shoal::api::Role;

fn main() -> Result<(), lambda_runtime::Error> {
    shoal_lambda_common::main(Role::Writer, |svc, e| {
        shoal::lambda::handle_writer(svc, e.payload)
    })
}
