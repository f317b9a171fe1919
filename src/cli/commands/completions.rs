//! `latchkey completions SHELL`: a completion script generated from the command line's own
//! definition, so it never lags behind a new command or flag.

use clap_complete::Shell;

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, powershell or elvish.
    pub shell: Shell,
}

/// Writes the script for `shell` to stdout, from the full command line (shared flags included).
pub fn run(args: &CompletionsArgs) -> anyhow::Result<i32> {
    let mut command = crate::cli::command();
    clap_complete::generate(args.shell, &mut command, "latchkey", &mut std::io::stdout());
    Ok(0)
}
