//! The scenarios, in the order the suite runs them (each builds on the cluster state the previous
//! one left): install wasmkube, provision the node (after a failure), run an app (and one the node
//! compiles cold, one that does not compile, one that reaches only what it is granted, and one
//! from a private registry),
//! change it, hand over leadership, survive a bad installer image and a retried install, opt the
//! node out (draining a wasm pod), roll out behind a busy slot, re-opt in mid-removal, roll out
//! over three nodes (one at a time, a broken one, one opted out under load, one switched off
//! mid-install), remove wasmkube with its uninstall script.
pub mod app_pods;
pub mod apps;
pub mod autoscaling;
pub mod config;
pub mod faults;
pub mod in_pod;
pub mod install;
pub mod installer_kills;
pub mod instance_reuse;
pub mod keyvalue;
pub mod lifecycle;
pub mod many_nodes;
pub mod node_lifecycle;
pub mod outbound;
pub mod registry;
pub mod retries;
mod serving;
pub mod spin;

use crate::Runner;

/// Every scenario, in order.
pub fn all() -> Runner {
    Runner::default()
        .scenario("operator_installs_with_kubectl_apply_k", |c| {
            Box::pin(install::operator_installs(c))
        })
        .scenario("pod_security_refusal_of_the_installer_is_reported", |c| {
            Box::pin(node_lifecycle::pod_security_rejection_is_reported(c))
        })
        .scenario("broken_containerd_config_ends_failed_with_reason", |c| {
            Box::pin(install::broken_config_fails(c))
        })
        .scenario("opt_in_provisions_the_node_ready", |c| {
            Box::pin(install::opt_in_provisions(c))
        })
        .scenario("wasm_check_passes_50_times_beside_the_kubelet", |c| {
            Box::pin(install::wasm_check_survives_the_kubelet(c))
        })
        .scenario("wasmapp_serves_http_through_its_service", |c| {
            Box::pin(apps::serves_through_service(c))
        })
        .scenario("wasmapp_ready_means_answering_on_a_cold_node", |c| {
            Box::pin(app_pods::ready_means_answering_on_a_cold_node(c))
        })
        .scenario("failed_compile_is_compiled_once_across_restarts", |c| {
            Box::pin(app_pods::failed_compile_is_compiled_once(c))
        })
        .scenario("outbound_grants_reach_the_granted_service_only", |c| {
            Box::pin(outbound::outbound_grants_reach_the_granted_service_only(c))
        })
        .scenario("config_and_volumes_reach_the_app_and_nothing_else", |c| {
            Box::pin(config::config_and_volumes_reach_the_app_and_nothing_else(c))
        })
        .scenario("kv_counter_counts_across_replicas_and_restarts", |c| {
            Box::pin(keyvalue::kv_counter_counts_across_replicas_and_restarts(c))
        })
        .scenario("private_image_pulls_with_its_pull_secret_only", |c| {
            Box::pin(registry::private_image_pulls_with_its_pull_secret_only(c))
        })
        .scenario("wasm_oci_artifact_from_wkg_serves", |c| {
            Box::pin(registry::wasm_oci_artifact_from_wkg_serves(c))
        })
        .scenario(
            "spin_app_image_serves_and_an_unsupported_one_says_why",
            |c| {
                Box::pin(spin::spin_app_image_serves_and_an_unsupported_one_says_why(
                    c,
                ))
            },
        )
        .scenario("command_jobs_run_to_completion_with_args_and_logs", |c| {
            Box::pin(in_pod::command_jobs_run_to_completion_with_args_and_logs(c))
        })
        .scenario("instance_reuse_on_and_off", |c| {
            Box::pin(instance_reuse::instance_reuse_on_and_off(c))
        })
        .scenario("reuse_turned_off_for_an_app_that_cannot_be_reused", |c| {
            Box::pin(instance_reuse::reuse_turned_off_for_an_app_that_cannot_be_reused(c))
        })
        .scenario("memory_limit_refuses_requests_without_a_restart", |c| {
            Box::pin(in_pod::memory_limit_refuses_requests_without_a_restart(c))
        })
        .scenario("containerd_restart_keeps_wasm_pods_serving", |c| {
            Box::pin(faults::containerd_restart_keeps_wasm_pods_serving(c))
        })
        .scenario("apiserver_outage_operator_recovers_without_restart", |c| {
            Box::pin(faults::apiserver_outage_recovers_without_restart(c))
        })
        .scenario("wasmapp_runs_under_restricted_pod_security", |c| {
            Box::pin(app_pods::serves_under_restricted_pod_security(c))
        })
        .scenario("kubectl_scale_wapp_changes_pods", |c| {
            Box::pin(apps::scale(c))
        })
        .scenario("apiserver_rejects_invalid_wasmapp_by_cel", |c| {
            Box::pin(apps::cel_rejects_invalid(c))
        })
        .scenario("refused_child_reaches_status_and_events", |c| {
            Box::pin(apps::refused_child_reaches_status(c))
        })
        .scenario("autoscaling_on_and_off_keeps_running_pods", |c| {
            Box::pin(autoscaling::autoscaling_on_and_off_keeps_running_pods(c))
        })
        .scenario("hpa_scales_a_wasm_app_on_cpu_load", |c| {
            Box::pin(autoscaling::hpa_scales_a_wasm_app_on_cpu_load(c))
        })
        .scenario("deleting_wasmapp_collects_children", |c| {
            Box::pin(apps::delete_collects_children(c))
        })
        .scenario("leader_handover_without_double_writes", |c| {
            Box::pin(lifecycle::leader_handover(c))
        })
        .scenario("installer_pod_that_cannot_start_is_reported", |c| {
            Box::pin(lifecycle::bad_installer_image(c))
        })
        .scenario("retried_install_stays_pending_then_ready", |c| {
            Box::pin(retries::retried_install_stays_pending_then_ready(c))
        })
        .scenario("opt_out_drains_wasm_pods_then_uninstalls_cleanly", |c| {
            Box::pin(node_lifecycle::opt_out_drains_before_uninstalling(c))
        })
        .scenario(
            "installer_killed_mid_install_and_uninstall_converges",
            |c| Box::pin(installer_kills::installer_killed_mid_run_converges(c)),
        )
        .scenario(
            "opt_in_waits_for_a_rollout_slot_and_survives_re_opt_in",
            |c| Box::pin(node_lifecycle::opt_in_waits_for_a_rollout_slot(c)),
        )
        .scenario(
            "many_nodes_two_install_one_at_a_time_the_third_gets_no_wasm_pod",
            |c| Box::pin(many_nodes::two_nodes_install_one_at_a_time(c)),
        )
        .scenario("many_nodes_opt_out_under_load_fails_no_request", |c| {
            Box::pin(many_nodes::opt_out_under_load_fails_no_request(c))
        })
        .scenario("many_nodes_a_broken_node_holds_up_no_other", |c| {
            Box::pin(many_nodes::a_broken_node_holds_up_no_other(c))
        })
        .scenario(
            "many_nodes_a_node_removed_mid_install_frees_its_slot",
            |c| Box::pin(many_nodes::a_node_removed_mid_install_frees_its_slot(c)),
        )
        .scenario("operator_logs_have_no_forbidden", |c| {
            Box::pin(lifecycle::no_forbidden(c))
        })
        .scenario("uninstall_script_opts_out_then_kubectl_delete_k", |c| {
            Box::pin(node_lifecycle::uninstall_script_leaves_nodes_clean(c))
        })
}

/// The containerd config every scenario looks at on the node.
pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";

/// sha256 of the node's containerd config before wasmkube touched it.
pub static ORIGINAL_CONFIG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
