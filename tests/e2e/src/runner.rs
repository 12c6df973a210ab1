//! Runs the scenarios in order (they share one cluster and one node), timing each, and prints
//! `N passed, M failed` at the end. After the first failure the cluster state is dumped and the
//! remaining scenarios are reported as not run: they build on each other.
use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use anyhow::Result;

use crate::{diagnostics, Cluster};

type ScenarioFn = for<'a> fn(&'a Cluster) -> Pin<Box<dyn Future<Output = Result<()>> + 'a>>;

/// The ordered list of scenarios.
#[derive(Default)]
pub struct Runner {
    scenarios: Vec<(&'static str, ScenarioFn)>,
}

impl Runner {
    pub fn scenario(mut self, name: &'static str, f: ScenarioFn) -> Self {
        self.scenarios.push((name, f));
        self
    }

    /// Runs everything; returns whether all passed.
    pub async fn run(self, cluster: &Cluster) -> bool {
        let filter = std::env::var("WASMKUBE_E2E_ONLY").ok();
        let total = Instant::now();
        let (mut passed, mut failed, mut not_run) = (0, 0, 0);
        for (name, f) in self.scenarios {
            if filter.as_deref().is_some_and(|only| !name.contains(only)) {
                continue;
            }
            if failed > 0 {
                println!("e2e {name} ... not run (an earlier scenario failed)");
                not_run += 1;
                continue;
            }
            println!("e2e {name} ...");
            let t = Instant::now();
            match f(cluster).await {
                Ok(()) => {
                    println!("e2e {name} ... ok ({:.1} s)", t.elapsed().as_secs_f64());
                    passed += 1;
                }
                Err(e) => {
                    println!(
                        "e2e {name} ... FAILED ({:.1} s)\n{e:?}",
                        t.elapsed().as_secs_f64()
                    );
                    failed += 1;
                    diagnostics::dump(cluster).await;
                }
            }
        }
        println!("e2e total {:.1} s", total.elapsed().as_secs_f64());
        if not_run > 0 {
            println!("{not_run} scenarios not run");
        }
        println!("{passed} passed, {} failed", failed + not_run);
        failed == 0 && not_run == 0
    }
}
