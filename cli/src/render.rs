//! `wasmkube render`: the Kubernetes objects the operator would apply for WasmApps, built by the
//! operator's own builder code (wasmkube-api) (so the output cannot drift from what runs in the cluster).

use serde::Deserialize;
use wasmkube_api::{builders::app::build, crd::WasmApp};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("document {index}: not YAML: {source}")]
    Yaml {
        index: usize,
        source: serde_yaml::Error,
    },
    #[error("document {index}: not a wasmkube.dev/v1alpha1 WasmApp: {source}")]
    NotWasmApp {
        index: usize,
        source: serde_yaml::Error,
    },
    #[error("document {index} ({name}): {source}")]
    Invalid {
        index: usize,
        name: String,
        source: wasmkube_api::BuildError,
    },
    #[error("no WasmApp found in the input")]
    Empty,
}

fn is_wasmapp(v: &serde_yaml::Value) -> bool {
    v.get("apiVersion").and_then(|a| a.as_str()) == Some("wasmkube.dev/v1alpha1")
        && v.get("kind").and_then(|k| k.as_str()) == Some("WasmApp")
}

/// Renders every WasmApp in `input` (a multi-document YAML stream) as `---`-separated YAML:
/// Deployment, Service (unless `service.type: None`) and HPA (with `autoscaling`) per app.
/// Documents that are not WasmApps are skipped.
pub fn render(input: &str) -> Result<String, RenderError> {
    let mut docs = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(input).enumerate() {
        let value = serde_yaml::Value::deserialize(doc)
            .map_err(|source| RenderError::Yaml { index, source })?;
        if value.is_null() || !is_wasmapp(&value) {
            continue;
        }
        let app: WasmApp = serde_yaml::from_value(value)
            .map_err(|source| RenderError::NotWasmApp { index, source })?;
        let objects = build(&app).map_err(|source| RenderError::Invalid {
            index,
            name: app.metadata.name.clone().unwrap_or_default(),
            source,
        })?;
        let yaml = |v: &dyn erased::Yaml| {
            v.to_yaml()
                .map_err(|source| RenderError::Yaml { index, source })
        };
        docs.push(yaml(&objects.deployment)?);
        if let Some(svc) = &objects.service {
            docs.push(yaml(svc)?);
        }
        if let Some(hpa) = &objects.autoscaler {
            docs.push(yaml(hpa)?);
        }
    }
    if docs.is_empty() {
        return Err(RenderError::Empty);
    }
    Ok(docs.join("---\n"))
}

mod erased {
    /// Object-safe YAML serialisation.
    pub trait Yaml {
        fn to_yaml(&self) -> Result<String, serde_yaml::Error>;
    }

    impl<T: serde::Serialize> Yaml for T {
        fn to_yaml(&self) -> Result<String, serde_yaml::Error> {
            serde_yaml::to_string(self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "\
apiVersion: wasmkube.dev/v1alpha1
kind: WasmApp
metadata:
  name: hello
  namespace: demo
spec:
  image: docker.io/wasmkube/hello-http:latest
  replicas: 2
";

    #[test]
    fn renders_deployment_and_service() {
        let out = render(APP).expect("render");
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&out)
            .map(|d| serde_yaml::Value::deserialize(d).expect("yaml"))
            .collect();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["kind"], "Deployment");
        assert_eq!(docs[0]["spec"]["replicas"], 2);
        assert_eq!(
            docs[0]["spec"]["template"]["spec"]["runtimeClassName"],
            "wasmkube"
        );
        // The operator's default readiness probe: render shows what will be applied.
        assert_eq!(
            docs[0]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["tcpSocket"]
                ["port"],
            8080
        );
        assert_eq!(docs[1]["kind"], "Service");
        assert_eq!(docs[1]["metadata"]["namespace"], "demo");
        assert!(docs[0]["metadata"].get("ownerReferences").is_none());
    }

    #[test]
    fn skips_other_documents_and_reports_invalid_apps() {
        let input = format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n---\n{APP}");
        assert!(render(&input).is_ok());
        assert!(matches!(
            render("apiVersion: v1\nkind: ConfigMap\n"),
            Err(RenderError::Empty)
        ));
        let bad = APP.replace("name: hello", "name: hello.v1");
        let err = render(&bad).expect_err("dotted name");
        assert!(err.to_string().contains("DNS-1035"), "{err}");
    }
}
