//! The e2e suite's entry point (`harness = false`): connect, or skip loudly, then run every
//! scenario in order. See `src/scenarios/mod.rs` for the list.
use std::process::ExitCode;

use wasmkube_e2e::{scenarios, Cluster};

#[tokio::main]
async fn main() -> ExitCode {
    let required = std::env::var("WASMKUBE_REQUIRE_CLUSTER").as_deref() == Ok("1");
    let cluster = match Cluster::connect().await {
        Ok(c) => c,
        Err(why) if required => {
            println!(
                "e2e: WASMKUBE_REQUIRE_CLUSTER=1 but there is no cluster: {}",
                why.0
            );
            println!("0 passed, 1 failed");
            return ExitCode::FAILURE;
        }
        Err(why) => {
            println!("SKIP e2e (every scenario): {}", why.0);
            return ExitCode::SUCCESS;
        }
    };
    println!(
        "e2e against node {} (repo {})",
        cluster.node,
        cluster.repo.display()
    );
    if scenarios::all().run(&cluster).await {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
