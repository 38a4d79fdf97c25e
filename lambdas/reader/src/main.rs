//! shoal reader Lambda: search and get, as direct invocations or Function
//! URL / API Gateway HTTP events. All logic lives in `shoal::lambda`.

use shoal::api::Role;

fn main() -> Result<(), lambda_runtime::Error> {
    shoal_lambda_common::main(Role::Reader, |svc, e| {
        shoal::lambda::handle_reader(svc, e.payload)
    })
}
