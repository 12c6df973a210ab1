//! manifests/rbac.yaml gives a reason for every verb: in the comments above each rule, lines
//! `# <verb>, <verb>: <file>.rs::<function>, …` naming the operator code that makes the call.
//! A verb without a reason, a reason for a verb the rule does not grant, and a reason naming a
//! function that no longer exists all fail, so a trimmed call site shows up as a stale grant.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_yaml::Value;

const RBAC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/rbac.yaml");
const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

const VERBS: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "*",
];

/// One rule of a Role or ClusterRole, with the comment lines right above it.
#[derive(Debug)]
struct Rule {
    kind: String,
    comments: Vec<String>,
    text: String,
}

/// The rules, read from the text (serde_yaml drops comments).
fn rules(yaml: &str) -> Vec<Rule> {
    let mut out: Vec<Rule> = Vec::new();
    let mut kind = String::new();
    let mut comments: Vec<String> = Vec::new();
    let mut in_rule = false;
    for line in yaml.lines() {
        if let Some(k) = line.strip_prefix("kind: ") {
            kind = k.trim().to_string();
        }
        if line == "---" || !line.starts_with(' ') {
            in_rule = false;
        }
        if let Some(c) = line.trim_start().strip_prefix('#') {
            comments.push(c.trim().to_string());
            in_rule = false;
            continue;
        }
        if line.starts_with("  - apiGroups:") && kind.ends_with("Role") {
            out.push(Rule {
                kind: kind.clone(),
                comments: std::mem::take(&mut comments),
                text: format!("{}\n", line.trim_start_matches("  - ")),
            });
            in_rule = true;
            continue;
        }
        comments.clear();
        if in_rule {
            if let Some(rule) = out.last_mut() {
                rule.text.push_str(line.trim_start_matches("    "));
                rule.text.push('\n');
            }
        }
    }
    out
}

/// `(verbs, code references)` of a reason line, or `None` for other comment text.
fn reason(line: &str) -> Option<(Vec<String>, Vec<String>)> {
    let (head, rest) = line.split_once(": ")?;
    let verbs: Vec<String> = head.split(',').map(|v| v.trim().to_string()).collect();
    if !verbs.iter().all(|v| VERBS.contains(&v.as_str())) {
        return None;
    }
    let refs = rest
        .split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')')
        .filter(|t| t.contains(".rs::"))
        .map(String::from)
        .collect();
    Some((verbs, refs))
}

/// Whether `reference` (`path/file.rs::[Type::]function`) names a function in operator/src.
fn exists(reference: &str) -> bool {
    let Some((file, path)) = reference.split_once("::") else {
        return false;
    };
    let function = path.rsplit("::").next().unwrap_or(path);
    let source = std::fs::read_to_string(format!("{SRC}/{file}")).unwrap_or_default();
    [format!("fn {function}("), format!("fn {function}<")]
        .iter()
        .any(|f| source.contains(f.as_str()))
}

/// Everything wrong with the reasons in `yaml`.
fn problems(yaml: &str) -> Vec<String> {
    let found = rules(yaml);

    // The text reading saw every rule the YAML has.
    let mut parsed_rules = 0;
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let doc = Value::deserialize(doc).expect("yaml");
        let kind = doc["kind"].as_str().unwrap_or_default();
        if kind.ends_with("Role") {
            parsed_rules += doc["rules"].as_sequence().map_or(0, Vec::len);
        }
    }
    assert!(parsed_rules > 0, "no Role or ClusterRole rules");
    assert_eq!(
        found.len(),
        parsed_rules,
        "rules read from the text: {found:#?}"
    );

    let mut problems = Vec::new();
    for rule in &found {
        let parsed: Value = serde_yaml::from_str(&rule.text).expect("rule yaml");
        let resources = format!("{} {:?}", rule.kind, parsed["resources"]);
        let granted: BTreeSet<String> = parsed["verbs"]
            .as_sequence()
            .map(|v| {
                v.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let mut explained = BTreeSet::new();
        for (verbs, refs) in rule.comments.iter().filter_map(|c| reason(c)) {
            if refs.is_empty() {
                problems.push(format!("{resources}: `{}` names no code", verbs.join(", ")));
            }
            for r in refs.iter().filter(|r| !exists(r)) {
                problems.push(format!(
                    "{resources}: {r} does not exist under operator/src"
                ));
            }
            for v in verbs {
                if !granted.contains(&v) {
                    problems.push(format!(
                        "{resources}: a reason for `{v}`, which is not granted"
                    ));
                }
                explained.insert(v);
            }
        }
        for v in granted.difference(&explained) {
            problems.push(format!("{resources}: `{v}` has no reason"));
        }
    }
    problems
}

#[test]
fn every_verb_has_a_reason_in_the_code() {
    let yaml = std::fs::read_to_string(RBAC).expect("manifests/rbac.yaml");
    let problems = problems(&yaml);
    assert!(
        problems.is_empty(),
        "manifests/rbac.yaml:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_checker_catches_what_it_should() {
    let yaml = r#"kind: ClusterRole
rules:
  # Some text: not a reason.
  # get: app_controller.rs::no_such_fn
  # list, delete: nowhere
  # watch: app_controller.rs::run, leader.rs::Leadership::start
  - apiGroups: [""]
    resources: ["pods"]
    verbs: ["get", "list", "watch", "patch"]
"#;
    assert_eq!(
        problems(yaml),
        [
            r#"ClusterRole Sequence [String("pods")]: app_controller.rs::no_such_fn does not exist under operator/src"#,
            r#"ClusterRole Sequence [String("pods")]: `list, delete` names no code"#,
            r#"ClusterRole Sequence [String("pods")]: a reason for `delete`, which is not granted"#,
            r#"ClusterRole Sequence [String("pods")]: `patch` has no reason"#,
        ]
    );
}
