//! `latchkey run`: the daemon, until Ctrl-C / SIGTERM (in-flight work drains first).

use crate::cli::{ConfigArg, open_app, shutdown_signal};
use tokio::sync::watch;

pub async fn run(c: ConfigArg) -> anyhow::Result<i32> {
    let app = open_app(&c).await?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight commands");
        let _ = tx.send(true);
    });
    tracing::info!(config = %c.config.display(), "latchkey running");
    app.run(rx).await?;
    Ok(0)
}
