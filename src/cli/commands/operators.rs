//! `latchkey operators token|list`: bearer tokens for the admin API, and who is configured.

use crate::cli::ConfigArg;
use crate::operators::{Role, new_token, token_sha256};

#[derive(Debug, clap::Subcommand)]
pub enum OperatorsCmd {
    /// Make a new bearer token for an operator: prints the token once, and the configuration
    /// section holding only its SHA-256. Nothing is stored; paste the section into the config.
    Token {
        /// The operator's name (recorded as `operator:NAME` in the audit log).
        name: String,
        #[arg(long, value_enum)]
        role: Role,
    },
    /// The configured operators and their roles.
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
}

pub fn run(cmd: OperatorsCmd) -> anyhow::Result<i32> {
    match cmd {
        OperatorsCmd::Token { name, role } => {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
            {
                anyhow::bail!(
                    "operator name `{name}`: use letters, digits and - _ . @ (it becomes a TOML key)"
                );
            }
            let token = new_token();
            println!("token for {name} (shown once; keep it secret):");
            println!("{token}");
            println!();
            println!("add to the configuration:");
            println!("[operators.{name}]");
            println!("role = \"{role}\"");
            println!("token_sha256 = \"{}\"", token_sha256(&token));
            Ok(0)
        }
        OperatorsCmd::List { config } => {
            let config = crate::cli::load(&config)?;
            println!("operators: {}", config.operators.len());
            for (name, o) in &config.operators {
                let os = o
                    .os_user
                    .as_deref()
                    .map(|u| format!(" (os:{u})"))
                    .unwrap_or_default();
                println!("  {name:<20} {}{os}", o.role);
            }
            Ok(0)
        }
    }
}
