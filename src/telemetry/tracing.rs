//! Logs and traces: the process-wide `tracing` subscriber, with OpenTelemetry export over OTLP when
//! `[telemetry.otlp]` is configured.
//!
//! One identity change is one trace. The engine plans a change in one task, inside a database
//! transaction, and a dispatcher worker delivers its commands later, possibly in another process. So
//! the change's span context travels with each command as a W3C `traceparent` stored on the outbox
//! row ([`current_traceparent`]), and the dispatcher starts the command's span under it
//! ([`command_span`]). The spans, in order: `source.change` (or `schedule.change`),
//! `identity.reevaluate`, `policy.evaluate`, `plan.apply`, `dispatch.command`, `vendor.call`.
//!
//! Span fields carry the identity key, connector and operation names, never person attributes,
//! request bodies or headers (credentials).

use crate::config::{Config, ConfigError, OtlpProtocol};
use crate::store::CommandRow;
use opentelemetry::KeyValue;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::{BTreeMap, HashMap};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// The default log filter when `LATCHKEY_LOG` is not set.
pub const DEFAULT_LOG_FILTER: &str = "warn,latchkey=info";

#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    #[error("OTLP exporter for {endpoint}: {message}")]
    Exporter { endpoint: String, message: String },
    #[error("a tracing subscriber is already installed in this process: {0}")]
    AlreadyInstalled(String),
}

/// Resolved OTLP export settings: header values are secrets, so Debug shows only their names.
#[derive(Clone)]
pub struct OtlpExport {
    /// Full URL of the traces endpoint (`.../v1/traces`).
    pub url: String,
    pub protocol: OtlpProtocol,
    pub headers: BTreeMap<String, String>,
    /// `service.instance.id` of the exported resource: the replica name.
    pub instance: String,
}

impl std::fmt::Debug for OtlpExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpExport")
            .field("url", &self.url)
            .field("protocol", &self.protocol)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("instance", &self.instance)
            .finish()
    }
}

impl OtlpExport {
    /// The configuration's `[telemetry.otlp]`, with header secrets resolved; None when absent.
    pub fn from_config(config: &Config) -> Result<Option<Self>, ConfigError> {
        let Some(otlp) = &config.telemetry.otlp else {
            return Ok(None);
        };
        let mut headers = BTreeMap::new();
        for (name, secret) in &otlp.headers {
            let value = config.secret(&format!("telemetry.otlp.headers.{name}"), secret)?;
            headers.insert(name.clone(), value);
        }
        Ok(Some(Self {
            url: traces_url(&otlp.endpoint),
            protocol: otlp.protocol,
            headers,
            instance: config.instance.clone(),
        }))
    }
}

/// The collector base URL as `OTEL_EXPORTER_OTLP_ENDPOINT` means it, turned into the traces URL the
/// exporter posts to (it uses a configured endpoint verbatim).
fn traces_url(endpoint: &str) -> String {
    if endpoint.trim_end_matches('/').ends_with("/v1/traces") {
        endpoint.to_string()
    } else {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    }
}

/// How the process logs and traces.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `tracing_subscriber` filter directives for the log output (`LATCHKEY_LOG`).
    pub log_filter: String,
    /// JSON lines instead of human-readable text (`LATCHKEY_LOG_FORMAT=json`).
    pub json: bool,
    pub otlp: Option<OtlpExport>,
}

/// Keeps the trace exporter alive; dropping it (or [`TracingGuard::shutdown`]) flushes the spans
/// not yet sent.
#[must_use = "dropping the guard stops trace export"]
#[derive(Debug, Default)]
pub struct TracingGuard {
    provider: Option<SdkTracerProvider>,
}

impl TracingGuard {
    /// Send every finished span now (tests, and before a planned exit).
    pub fn flush(&self) {
        if let Some(p) = &self.provider
            && let Err(e) = p.force_flush()
        {
            tracing::warn!(error = %e, "flushing traces failed");
        }
    }

    /// Flush and stop the exporter.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            tracing::warn!(error = %e, "stopping the trace exporter failed");
        }
    }
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

fn provider(otlp: &OtlpExport) -> Result<SdkTracerProvider, TracingError> {
    let protocol = match otlp.protocol {
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::Protocol::HttpBinary,
        OtlpProtocol::HttpJson => opentelemetry_otlp::Protocol::HttpJson,
    };
    // The blocking HTTP client: the batch processor exports from its own thread, where the async
    // client would find no runtime.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(otlp.url.clone())
        .with_protocol(protocol)
        .with_headers(otlp.headers.clone().into_iter().collect::<HashMap<_, _>>())
        .build()
        .map_err(|e| TracingError::Exporter {
            endpoint: otlp.url.clone(),
            message: e.to_string(),
        })?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("latchkey")
        .with_attribute(KeyValue::new("service.instance.id", otlp.instance.clone()))
        .with_attribute(KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION").to_string(),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Install the process-wide subscriber: logs to stderr (filtered by `log_filter`), and spans of
/// latchkey's own modules to the OTLP collector when configured. The trace filter is separate from
/// the log filter, so quieter logs do not cut traces short.
pub fn init(settings: &Settings) -> Result<TracingGuard, TracingError> {
    // A mistyped filter must not cost the logs: fall back to the default and say so once installed.
    let (filter, bad_filter) = match EnvFilter::try_new(&settings.log_filter) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new(DEFAULT_LOG_FILTER), Some(e.to_string())),
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![if settings.json {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    }];
    let mut guard = TracingGuard::default();
    if let Some(otlp) = &settings.otlp {
        let provider = provider(otlp)?;
        let tracer = provider.tracer("latchkey");
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(Targets::new().with_target("latchkey", tracing::Level::INFO))
                .boxed(),
        );
        guard.provider = Some(provider);
    }
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(|e| TracingError::AlreadyInstalled(e.to_string()))?;
    if let Some(error) = bad_filter {
        tracing::warn!(filter = %settings.log_filter, %error, "invalid log filter; using the default");
    }
    Ok(guard)
}

/// The W3C `traceparent` of the current span, when traces are exported and the span is recorded.
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// The remote parent a stored `traceparent` stands for; None when it does not parse.
pub fn remote_parent(traceparent: &str) -> Option<opentelemetry::Context> {
    let carrier: HashMap<String, String> =
        [("traceparent".to_string(), traceparent.to_string())].into();
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// The trace id (32 hex digits) of a stored `traceparent`.
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    remote_parent(traceparent).map(|cx| cx.span().span_context().trace_id().to_string())
}

/// The span one delivery attempt of a command runs in: a child of the change that enqueued the
/// command, whatever task or process delivers it.
pub fn command_span(cmd: &CommandRow) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "dispatch.command",
        command = cmd.id,
        connector = %cmd.connector,
        action = cmd.action.as_str(),
        source = %cmd.source,
        identity = %cmd.identity_key,
        attempt = cmd.attempts,
    );
    if let Some(parent) = cmd.traceparent.as_deref().and_then(remote_parent) {
        // Fails only when no OpenTelemetry layer is installed, and then there is no trace to join.
        let _ = span.set_parent(parent);
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_url_appends_the_signal_path_once() {
        assert_eq!(
            traces_url("http://c:4318"),
            "http://c:4318/v1/traces".to_string()
        );
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }

    #[test]
    fn traceparent_round_trips_and_garbage_is_ignored() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id_of(tp).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert!(trace_id_of("not a traceparent").is_none());
        // No OpenTelemetry layer in unit tests: nothing to propagate.
        assert!(current_traceparent().is_none());
    }
}
