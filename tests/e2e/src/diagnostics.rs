//! What a person needs after a failure: nodes, wasmkube's objects, `kubectl describe`, the
//! operator's and installers' logs, and recent events.
use crate::Cluster;

const SECTIONS: &[(&str, &[&str])] = &[
    ("nodes", &["get", "nodes", "--show-labels", "-o", "wide"]),
    (
        "node annotations",
        &[
            "get",
            "nodes",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}: {.metadata.annotations}{\"\\n\"}{end}",
        ],
    ),
    ("wasmapps", &["get", "wapp", "-A", "-o", "wide"]),
    (
        "wasmkube-system",
        &["-n", "wasmkube-system", "get", "all,leases", "-o", "wide"],
    ),
    (
        "describe wasmkube-system pods",
        &["-n", "wasmkube-system", "describe", "daemonsets,pods"],
    ),
    (
        "operator logs",
        &[
            "-n",
            "wasmkube-system",
            "logs",
            "-l",
            "app.kubernetes.io/name=wasmkube-operator",
            "--tail=200",
            "--prefix",
            "--all-containers",
        ],
    ),
    (
        "installer logs",
        &[
            "-n",
            "wasmkube-system",
            "logs",
            "-l",
            "app.kubernetes.io/name=wasmkube-node-installer",
            "--tail=100",
            "--prefix",
            "--all-containers",
        ],
    ),
    (
        "describe apps",
        &[
            "describe",
            "wapp,deployments,services,hpa,pods",
            "-n",
            "default",
        ],
    ),
    (
        "events",
        &["get", "events", "-A", "--sort-by=.lastTimestamp"],
    ),
];

/// Prints the cluster state (best effort: every command's failure is printed too).
pub async fn dump(cluster: &Cluster) {
    println!("\n===== e2e failure: cluster state =====");
    for (title, args) in SECTIONS {
        println!("\n----- {title}: kubectl {} -----", args.join(" "));
        match cluster.kubectl_output(args) {
            Ok((_, out, err)) => {
                let text = format!("{out}{err}");
                let lines: Vec<&str> = text.lines().collect();
                let start = lines.len().saturating_sub(150);
                for l in &lines[start..] {
                    println!("{l}");
                }
            }
            Err(e) => println!("cannot run kubectl: {e:#}"),
        }
    }
    println!("\n----- node: containerd config -----");
    match cluster.node_sh("cat /etc/containerd/config.toml") {
        Ok(s) => println!("{s}"),
        Err(e) => println!("{e:#}"),
    }
    println!("===== end of cluster state =====\n");
}
