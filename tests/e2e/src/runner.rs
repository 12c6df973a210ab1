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
        // `WASMKUBE_E2E_ONLY=a,b`: only the scenarios whose names contain `a` or `b` (they build
        // on each other: include what yours needs, e.g. `operator_installs,provisions`).
        let filter: Option<Vec<String>> = std::env::var("WASMKUBE_E2E_ONLY").ok().map(|only| {
            only.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        });
        let total = Instant::now();
        let (mut passed, mut failed, mut not_run) = (0, 0, 0);
        for (name, f) in self.scenarios {
            if filter
                .as_ref()
                .is_some_and(|only| !only.iter().any(|o| name.contains(o.as_str())))
            {
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
        if let Some(only) = filter.as_ref().filter(|_| passed + failed + not_run == 0) {
            // A filter that selects nothing would pass a run that tested nothing.
            println!(
                "e2e: WASMKUBE_E2E_ONLY={} matches no scenario",
                only.join(",")
            );
            println!("0 passed, 1 failed");
            return false;
        }
        println!("{passed} passed, {} failed", failed + not_run);
        failed == 0 && not_run == 0
    }
}
