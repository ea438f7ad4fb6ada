use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use project_vm::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = match cli.verbose {
        0 => "warn",
        1 => "project_vm=info",
        2 => "project_vm=debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)))
        .with_writer(std::io::stderr)
        // Colours for a person at a terminal; piped or logged, plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // Its fallback for a failed write is eprintln!, which panics on a closed stderr.
        .log_internal_errors(false)
        .init();
    let result = match cli.command {
        // Needs no settings nor libvirt: the page is made from the definitions alone.
        Command::Man => project_vm::man::man_page(),
        _ => project_vm::run::run(cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`project-vm list | head -1`): not a failure.
        Err(e) if project_vm::output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::from(project_vm::exit::code(&e))
        }
    }
}
