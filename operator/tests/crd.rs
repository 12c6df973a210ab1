//! The checked-in CRD matches the Rust types, is structural, and keeps its key parts.

use serde_json::{json, Value};
use wasmkube_operator::crd::{crd, crd_yaml, ImagePullPolicy};

const CRD_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/wasmapp.yaml");

#[test]
fn checked_in_crd_matches_the_types() {
    let generated = crd_yaml().expect("crd yaml");
    let on_disk = std::fs::read_to_string(CRD_FILE).unwrap_or_default();
    assert!(
        on_disk == generated,
        "crds/wasmapp.yaml is out of date with api/src/crd.rs.\n\
         Regenerate it with:\n    cargo run -p wasmkube-operator -- crd > crds/wasmapp.yaml"
    );
}

fn schema() -> Value {
    let crd = serde_json::to_value(crd()).expect("json");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// Kubernetes' structural-schema rules, as far as our generator can break them.
fn assert_structural(path: &str, s: &Value) {
    let obj = s
        .as_object()
        .unwrap_or_else(|| panic!("{path}: schema is not an object"));
    for bad in [
        "$ref",
        "anyOf",
        "oneOf",
        "allOf",
        "not",
        "definitions",
        "$defs",
    ] {
        assert!(
            !obj.contains_key(bad),
            "{path}: `{bad}` is not structural: {s}"
        );
    }
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&json!(true));
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    assert!(
        obj.contains_key("type") || int_or_string || preserve,
        "{path}: every node needs a type: {s}"
    );
    assert!(
        !(obj.contains_key("properties") && obj.contains_key("additionalProperties")),
        "{path}: properties and additionalProperties are exclusive"
    );
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            assert_structural(&format!("{path}.{k}"), v);
        }
    }
    if let Some(items) = obj.get("items") {
        assert_structural(&format!("{path}[]"), items);
    }
    if let Some(ap) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        assert_structural(&format!("{path}{{}}"), ap);
    }
}

#[test]
fn schema_is_structural() {
    assert_structural("", &schema());
}

#[test]
fn kubernetes_types_render_structurally() {
    let s = schema();
    let spec = &s["properties"]["spec"]["properties"];
    // Quantity → int-or-string inside a map.
    assert_eq!(
        spec["resources"]["properties"]["limits"]["additionalProperties"]
            ["x-kubernetes-int-or-string"],
        true
    );
    // EnvVar, Toleration, Affinity, LocalObjectReference: plain objects.
    assert_eq!(spec["env"]["items"]["type"], "object");
    assert_eq!(spec["env"]["items"]["required"], json!(["name"]));
    assert_eq!(spec["tolerations"]["items"]["type"], "object");
    assert_eq!(spec["affinity"]["type"], "object");
    assert_eq!(
        spec["imagePullSecrets"]["items"]["required"],
        json!(["name"])
    );
}

/// Pins the parts a change must be deliberate about.
#[test]
fn schema_pin() {
    let crd = serde_json::to_value(crd()).expect("json");
    let names = &crd["spec"]["names"];
    assert_eq!(crd["metadata"]["name"], "wasmapps.wasmkube.dev");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(names["kind"], "WasmApp");
    assert_eq!(names["shortNames"], json!(["wapp"]));
    let v = &crd["spec"]["versions"][0];
    assert_eq!(v["name"], "v1alpha1");
    assert_eq!(
        v["subresources"],
        json!({"status": {}, "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector"
        }})
    );
    let columns: Vec<&str> = v["additionalPrinterColumns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(columns, ["Ready", "Replicas", "Image", "Age"]);

    let s = schema();
    let spec = &s["properties"]["spec"];
    assert_eq!(spec["required"], json!(["image"]));
    let p = &spec["properties"];
    let keys: Vec<&String> = p.as_object().expect("props").keys().collect();
    assert_eq!(
        keys,
        [
            "affinity",
            "args",
            "autoscaling",
            "config",
            "env",
            "http",
            "image",
            "imagePullPolicy",
            "imagePullSecrets",
            "keyValue",
            "nodeSelector",
            "outbound",
            "probes",
            "replicas",
            "resources",
            "runtimeClassName",
            "service",
            "tolerations",
            "volumes"
        ]
    );
    assert_eq!(p["image"]["minLength"], 1);
    assert_eq!(
        p["imagePullPolicy"]["enum"],
        json!(["Always", "IfNotPresent", "Never"])
    );
    assert_eq!(p["imagePullPolicy"]["type"], "string");
    for value in p["imagePullPolicy"]["enum"].as_array().expect("enum") {
        let policy: ImagePullPolicy =
            serde_json::from_value(value.clone()).expect("every schema value parses");
        assert_eq!(policy.as_str(), value, "and is what the container gets");
    }
    assert!(
        p["imagePullPolicy"].get("default").is_none(),
        "no schema default: unset means Kubernetes' rule for the image's tag"
    );
    assert_eq!(p["replicas"]["minimum"], 0.0);
    assert_eq!(p["replicas"]["maximum"], 10000.0);
    let reuse = &p["http"]["properties"]["instanceReuse"]["properties"];
    assert_eq!(reuse["maxRequests"]["minimum"], 1.0);
    assert_eq!(reuse["maxRequests"]["maximum"], 1_000_000.0);
    assert_eq!(reuse["maxConcurrent"]["minimum"], 1.0);
    assert_eq!(reuse["maxConcurrent"]["maximum"], 1000.0);
    assert_eq!(reuse["idleTimeout"]["pattern"], "^[1-9][0-9]{0,6}(ms|s)$");
    assert_eq!(
        p["service"]["properties"]["type"]["enum"],
        json!(["ClusterIP", "NodePort", "LoadBalancer", "None"])
    );
    assert_eq!(p["service"]["properties"]["type"]["default"], "ClusterIP");
    assert_eq!(p["service"]["properties"]["targetPort"]["default"], 8080);
    assert_eq!(p["service"]["properties"]["nodePort"]["minimum"], 30000.0);
    assert_eq!(p["autoscaling"]["required"], json!(["maxReplicas"]));
    assert_eq!(
        p["autoscaling"]["properties"]["targetCPUUtilizationPercentage"]["maximum"],
        100.0
    );
    assert_eq!(
        p["probes"]["properties"]["readiness"]["properties"]["path"]["pattern"],
        "^/"
    );

    let rules = |v: &Value| -> Vec<String> {
        v["x-kubernetes-validations"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r["rule"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        rules(spec),
        [
            "!has(self.autoscaling) || !has(self.replicas) || (self.replicas >= self.autoscaling.minReplicas && self.replicas <= self.autoscaling.maxReplicas)",
            "!has(self.keyValue) || !self.keyValue.exists(s, has(s.file)) || (!has(self.autoscaling) && (!has(self.replicas) || self.replicas <= 1))",
            "!has(self.autoscaling) || (has(self.resources) && ((has(self.resources.requests) && 'cpu' in self.resources.requests) || (has(self.resources.limits) && 'cpu' in self.resources.limits)))",
        ]
    );
    assert_eq!(
        rules(&p["autoscaling"]),
        ["self.minReplicas <= self.maxReplicas"]
    );
    assert_eq!(
        rules(&p["service"]),
        ["!has(self.nodePort) || self.type == 'NodePort' || self.type == 'LoadBalancer'"]
    );

    let status = &s["properties"]["status"]["properties"];
    let keys: Vec<&String> = status.as_object().expect("status").keys().collect();
    assert_eq!(
        keys,
        [
            "autoscalerName",
            "conditions",
            "observedGeneration",
            "readyReplicas",
            "replicas",
            "selector",
            "serviceName",
            "url"
        ]
    );
    assert_eq!(status["conditions"]["x-kubernetes-list-type"], "map");
    assert_eq!(
        status["conditions"]["x-kubernetes-list-map-keys"],
        json!(["type"])
    );
}

#[test]
fn outbound_entries_are_checked_by_the_schema() {
    let s = schema();
    let outbound = &s["properties"]["spec"]["properties"]["outbound"]["properties"];
    let pattern = |field: &str| {
        let p = outbound[field]["items"]["pattern"]
            .as_str()
            .unwrap_or_else(|| panic!("{field}: no pattern: {outbound}"));
        regex::Regex::new(p).expect("the pattern is a regex")
    };
    let hosts = pattern("allowedHosts");
    for ok in [
        "*",
        "https://api.example.com",
        "http://*.default.svc.cluster.local:8080",
        "*://db.internal:5432",
        "redis://cache:6379",
        "*://10.0.0.0/8:*",
        "*://[fd00::/8]:80-89",
        "http://127.0.0.1:8080",
    ] {
        assert!(hosts.is_match(ok), "{ok} refused");
        wasmkube_contract::HostGrant::parse(ok).unwrap_or_else(|e| panic!("{e}"));
    }
    for bad in [
        "ht!tp://x",
        "api.example.com",
        "https://x/path",
        "http://x:port",
    ] {
        assert!(!hosts.is_match(bad), "{bad} accepted");
    }
    let nets = pattern("blockedNetworks");
    assert!(nets.is_match("10.0.0.0/8") && nets.is_match("fd00::/8") && nets.is_match("192.0.2.1"));
    assert!(!nets.is_match("ten/8"));
}
