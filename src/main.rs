use clap::Parser;
use latchkey::config::{Config, ConfigInput, process_env};
use latchkey::telemetry::tracing::{self as lk_tracing, OtlpExport, Settings};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = latchkey::cli::Cli::parse();
    let env = process_env();
    // Trace export is configured in the daemon's file, so read it before the subscriber goes in. A
    // file that does not load is reported by the command itself; here it only means no export.
    let otlp = match cli
        .command
        .traced_config()
        .and_then(|path| ConfigInput::from_file(path, env.clone()).ok())
        .and_then(|input| Config::load(&input).ok())
        .map(|config| OtlpExport::from_config(&config))
        .transpose()
    {
        Ok(otlp) => otlp.flatten(),
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let settings = Settings {
        log_filter: env
            .get("LATCHKEY_LOG")
            .cloned()
            .unwrap_or_else(|| lk_tracing::DEFAULT_LOG_FILTER.to_string()),
        json: env.get("LATCHKEY_LOG_FORMAT").is_some_and(|v| v == "json"),
        otlp,
    };
    let guard = match lk_tracing::init(&settings) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let code = match latchkey::cli::run(cli).await {
        Ok(code) => std::process::ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    };
    // Spans still in the batch are sent before the process ends.
    guard.shutdown();
    code
}
