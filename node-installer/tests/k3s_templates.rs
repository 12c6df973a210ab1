//! k3s/rke2 templates are the user's: through the whole installer against temp host roots, a
//! template we created is rewritten only where our block differs, and one the user edited after
//! install is never deleted or regenerated — uninstall takes out only our block.
#[path = "support/host.rs"]
mod host;

use host::TestHost;
use wasmkube_node_installer::k3s_template::{BEGIN, OWNED_HEADER};
use wasmkube_node_installer::{run, State, Verb};

const RENDERED: &str = "/var/lib/rancher/k3s/agent/etc/containerd/config.toml";
const TEMPLATE: &str = "/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl";
const RENDERED_TEXT: &str = include_str!("configs/k3s-rendered-config.toml");

#[test]
fn an_unedited_template_of_ours_comes_and_goes() {
    let host = TestHost::new(&[(RENDERED, RENDERED_TEXT)]);
    let o = host.options(&host.shim("1.0.0"), None);
    assert_eq!(run(Verb::Install, &o).state, State::Installed);
    let t = std::fs::read_to_string(host.path(TEMPLATE)).expect("template");
    assert!(t.starts_with(OWNED_HEADER) && t.contains(BEGIN), "{t}");
    assert_eq!(run(Verb::Install, &o).state, State::Unchanged);
    assert_eq!(run(Verb::Uninstall, &o).state, State::Uninstalled);
    assert!(!host.path(TEMPLATE).exists());
    assert_eq!(
        std::fs::read_to_string(host.path(RENDERED)).expect("rendered"),
        RENDERED_TEXT
    );
}

#[test]
fn a_template_edited_after_install_is_kept_and_loses_only_our_block() {
    let host = TestHost::new(&[(RENDERED, RENDERED_TEXT)]);
    let o = host.options(&host.shim("1.0.0"), None);
    assert_eq!(run(Verb::Install, &o).state, State::Installed);
    let edit = "\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n";
    let mut t = std::fs::read_to_string(host.path(TEMPLATE)).expect("template");
    t.push_str(edit);
    std::fs::write(host.path(TEMPLATE), &t).expect("edit");
    let mtime = std::fs::metadata(host.path(TEMPLATE))
        .and_then(|m| m.modified())
        .expect("mtime");
    // Re-install: our block is right, so not a byte is written.
    let r = run(Verb::Install, &o);
    assert_eq!(r.state, State::Unchanged, "{r:?}");
    assert_eq!(std::fs::read_to_string(host.path(TEMPLATE)).expect("t"), t);
    assert_eq!(
        std::fs::metadata(host.path(TEMPLATE))
            .and_then(|m| m.modified())
            .expect("mtime"),
        mtime
    );
    // Uninstall: the file stays with k3s' base and the user's edit; our block and header go.
    let r = run(Verb::Uninstall, &o);
    assert_eq!(r.state, State::Uninstalled, "{r:?}");
    let left = std::fs::read_to_string(host.path(TEMPLATE)).expect("template kept");
    assert_eq!(left, format!("{{{{ template \"base\" . }}}}\n{edit}"));
    // A later install treats it as the user's template and appends the block again.
    assert_eq!(run(Verb::Install, &o).state, State::Installed);
    let again = std::fs::read_to_string(host.path(TEMPLATE)).expect("template");
    assert!(again.starts_with(&left) && again.contains(BEGIN), "{again}");
}
