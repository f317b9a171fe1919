//! `latchkey sim VENDOR`: one vendor simulator on its own, with a fault proxy in front of it if
//! asked, to try a connector or rehearse a vendor's bad day by hand.

use crate::cli::shutdown_signal;
use anyhow::Context;
use latchkey_sim as sim;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct SimArgs {
    vendor: String,
    #[arg(long, default_value_t = 8701)]
    port: u16,
    #[arg(long, default_value = "nuki-sim-token")]
    token: String,
    /// Also serve a fault proxy in front of the simulator on this port, to rehearse a vendor's
    /// bad day: point the connector's `base_url` at it and set its rules with
    /// `POST /_proxy/rules` (docs/operations.md).
    #[arg(long)]
    fault_proxy_port: Option<u16>,
    /// Rules the fault proxy starts with: a JSON file holding a list of rules.
    #[arg(long, requires = "fault_proxy_port")]
    fault_rules: Option<PathBuf>,
}

pub async fn run(args: SimArgs) -> anyhow::Result<i32> {
    let SimArgs {
        vendor,
        port,
        token,
        fault_proxy_port,
        fault_rules,
    } = args;
    // Read the rules first: a bad file is refused before anything listens.
    let rules = match &fault_rules {
        Some(file) => Some(read_fault_rules(file)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let server = sim::start(&vendor, listener, token).await?;
    println!(
        "{vendor} simulator on {} (state: {}/_sim/stats); Ctrl-C stops it",
        server.base_url(),
        server.base_url()
    );
    let proxy = match fault_proxy_port {
        Some(p) => {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", p))
                .await
                .with_context(|| format!("fault proxy port {p}"))?;
            let proxy = sim::proxy::FaultProxy::start(listener, &server.base_url()).await?;
            if let Some(rules) = rules {
                proxy.set_rules(rules);
            }
            println!(
                "fault proxy on {} in front of it ({} rules; set them with POST {}/_proxy/rules)",
                proxy.base_url(),
                proxy.rules().len(),
                proxy.base_url()
            );
            Some(proxy)
        }
        None => None,
    };
    shutdown_signal().await;
    drop(proxy);
    server.shutdown().await;
    Ok(0)
}

/// The fault proxy's starting rules from a JSON file, with an error naming the file.
fn read_fault_rules(file: &Path) -> anyhow::Result<Vec<sim::proxy::FaultRule>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("fault rules {}", file.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("fault rules {}: not a JSON list of rules", file.display()))
}
