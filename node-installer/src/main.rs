//! `wasmkube-node-installer install|uninstall|status|idle`: see the crate docs and README.
use anyhow::Context as _;
use clap::Parser as _;
use wasmkube_node_installer::{idle, run, Cli, State};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let Some(verb) = cli.command.verb() else {
        return idle::until_stopped().context("idle");
    };
    let report = run(verb, &cli.options);
    println!("{}", report.to_json());
    if report.state != State::DryRun {
        report
            .write_result_file(&cli.options.result_file)
            .with_context(|| {
                format!(
                    "writing the result to {}",
                    cli.options.result_file.display()
                )
            })?;
    }
    std::process::exit(report.exit_code());
}
