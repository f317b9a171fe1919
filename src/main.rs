use clap::{ArgMatches, FromArgMatches};
use latchkey::cli::{Cli, Command};
use latchkey::config::{Config, ConfigInput, process_env};
use latchkey::telemetry::tracing::{self as lk_tracing, OtlpExport, Settings};
use std::collections::BTreeMap;

/// The command line: `latchkey::cli::Cli` plus the flags every command shares.
fn parse() -> (Cli, ArgMatches) {
    let command = latchkey::cli::command();
    let matches = command.clone().get_matches();
    let cli =
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut command.clone()).exit());
    (cli, matches)
}

/// The log filter: `--quiet` / `--verbose` win over `LATCHKEY_LOG`, which wins over the default.
fn log_filter(matches: &ArgMatches, env: &BTreeMap<String, String>) -> String {
    if matches.get_flag("quiet") {
        return "error".to_string();
    }
    match matches.get_count("verbose") {
        0 => env
            .get("LATCHKEY_LOG")
            .cloned()
            .unwrap_or_else(|| lk_tracing::DEFAULT_LOG_FILTER.to_string()),
        1 => "warn,latchkey=debug".to_string(),
        _ => "info,latchkey=trace".to_string(),
    }
}

/// A closed stdout (`latchkey status | head -1`) ends a one-shot command the way it ends `cat`:
/// killed by SIGPIPE, quietly, with the shell's usual status 141, instead of a panic in `println!`.
/// Servers keep ignoring SIGPIPE, so a log reader going away never stops the daemon.
#[cfg(unix)]
fn end_quietly_on_closed_stdout(command: &Command) {
    let serves = matches!(command, Command::Run(_));
    #[cfg(feature = "sim")]
    let serves = serves || matches!(command, Command::Sim(_));
    if !serves {
        // SAFETY: called before any thread is started; SIG_DFL is a valid disposition for SIGPIPE.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
}

#[cfg(not(unix))]
fn end_quietly_on_closed_stdout(_: &Command) {}

/// glibc gives each thread that allocates while another holds the heap an arena of its own, up to
/// eight per core, and returns little of a secondary arena's freed memory to the system. The
/// store's connections each run on a thread of their own (SQLite's checkpoints on one beside the
/// writer's), so the daemon's resident memory crept up by tens of MiB over repeated 100,000-person
/// feeds. Two arenas keep it flat, at a cost within the benchmarks' noise.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn bound_malloc_arenas() {
    // SAFETY: called before any thread is started; M_ARENA_MAX takes a count, and mallopt only
    // reports failure by its return value, which changes nothing here.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn bound_malloc_arenas() {}

/// `error: ...` with each cause once: an I/O error's text (and its `(os error N)`) is not repeated
/// when the message above it already says it.
fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let plain = match text.find(" (os error ") {
            Some(i) => &text[..i],
            None => text.as_str(),
        };
        if !out.is_empty() && out.contains(plain) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(plain);
    }
    out
}

fn main() -> std::process::ExitCode {
    bound_malloc_arenas();
    let (cli, matches) = parse();
    end_quietly_on_closed_stdout(&cli.command);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    runtime.block_on(run(cli, &matches))
}

async fn run(cli: Cli, matches: &ArgMatches) -> std::process::ExitCode {
    let env = process_env();
    let console_traces =
        match lk_tracing::console_exporter(env.get("OTEL_TRACES_EXPORTER").map(String::as_str)) {
            Ok(c) => c && cli.command.traced_config().is_some(),
            Err(e) => {
                eprintln!("error: {e}");
                return std::process::ExitCode::from(2);
            }
        };
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
        log_filter: log_filter(matches, &env),
        json: env.get("LATCHKEY_LOG_FORMAT").is_some_and(|v| v == "json"),
        otlp,
        ansi: lk_tracing::colour_wanted(env.get("NO_COLOR").map(String::as_str)),
        console_traces,
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
            eprintln!("error: {}", error_text(&e));
            std::process::ExitCode::from(1)
        }
    };
    // Spans still in the batch are sent before the process ends.
    guard.shutdown();
    code
}
