//! `wasmkube-node-installer install|uninstall|status|idle`: see the crate docs and README.
use anyhow::Context as _;
use clap::Parser as _;
use wasmkube_node_installer::{idle, run, Cli};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let Some(verb) = cli.command.verb() else {
        return idle::until_stopped().context("idle");
    };
    let report = run(verb, &cli.options);
    // The exit code is the node's outcome; a result file that cannot be written does not change
    // it (`publish` logs that to stderr).
    std::process::exit(report.publish(&cli.options.result_file));
}
