//! `wasmkube-node-installer install|uninstall|status|check|idle`: see the crate docs and README.
use anyhow::Context as _;
use clap::Parser as _;
use wasmkube_node_installer::{check, idle, run, Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let report = match (cli.command, cli.command.verb()) {
        (_, Some(verb)) => run(verb, &cli.options),
        (Command::Check { repeat }, None) => check::check(&cli.options, repeat, |line| {
            println!("{line}");
        }),
        _ => return idle::until_stopped().context("idle"),
    };
    // The exit code is the node's outcome; a result file that cannot be written does not change
    // it (`publish` logs that to stderr).
    std::process::exit(report.publish(&cli.options.result_file));
}
