//! Logs and traces: the process-wide `tracing` subscriber, with OpenTelemetry export over OTLP when
//! `[telemetry.otlp]` is configured, or as JSON lines on stdout (`OTEL_TRACES_EXPORTER=console`).
//!
//! Logs are for machines as much as for people: no colour unless stderr is a terminal (and
//! `NO_COLOR` is unset), and, while a trace is recorded, every log line inside a span carries the
//! span's `trace_id` and `span_id`, so a log search leads to the trace and back.
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
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::sync::{Arc, OnceLock};
use tracing::dispatcher::WeakDispatch;
use tracing::{Dispatch, Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, JsonFields, Writer};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
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
    /// Colour escapes in the log output: only for a terminal (see [`colour_wanted`]).
    pub ansi: bool,
    /// Every finished span as one JSON line on stdout (`OTEL_TRACES_EXPORTER=console`): traces
    /// without a collector.
    pub console_traces: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            log_filter: DEFAULT_LOG_FILTER.to_string(),
            json: false,
            otlp: None,
            ansi: false,
            console_traces: false,
        }
    }
}

/// Colour only where a person reads it: stderr is a terminal and `NO_COLOR` (no-color.org) is
/// unset or empty. Files, pipes and log collectors get plain text.
pub fn colour_wanted(no_color: Option<&str>) -> bool {
    use std::io::IsTerminal;
    no_color.is_none_or(str::is_empty) && std::io::stderr().is_terminal()
}

/// Whether `OTEL_TRACES_EXPORTER` (the OpenTelemetry SDK variable) asks for the console exporter;
/// `otlp` or unset leaves export to `[telemetry.otlp]`. Other values are refused by name.
pub fn console_exporter(value: Option<&str>) -> Result<bool, String> {
    match value.map(str::trim) {
        None | Some("") | Some("otlp") | Some("none") => Ok(false),
        Some("console") | Some("stdout") => Ok(true),
        Some(other) => Err(format!(
            "OTEL_TRACES_EXPORTER={other}: expected `console` (spans as JSON lines on stdout) or `otlp`"
        )),
    }
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

fn resource(instance: &str) -> opentelemetry_sdk::Resource {
    opentelemetry_sdk::Resource::builder()
        .with_service_name("latchkey")
        .with_attribute(KeyValue::new("service.instance.id", instance.to_string()))
        .with_attribute(KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION").to_string(),
        ))
        .build()
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
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource(&otlp.instance))
        .build())
}

/// The console exporter: one JSON object per finished span on stdout, for `jq` or a log shipper.
#[derive(Debug, Default)]
struct ConsoleExporter {
    instance: String,
}

impl ConsoleExporter {
    fn line(&self, span: &SpanData) -> serde_json::Value {
        let micros = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64)
        };
        let parent = (span.parent_span_id != opentelemetry::trace::SpanId::INVALID)
            .then(|| span.parent_span_id.to_string());
        let attributes: serde_json::Map<String, serde_json::Value> = span
            .attributes
            .iter()
            .map(|kv| (kv.key.to_string(), kv.value.to_string().into()))
            .collect();
        serde_json::json!({
            "trace_id": span.span_context.trace_id().to_string(),
            "span_id": span.span_context.span_id().to_string(),
            "parent_span_id": parent,
            "name": span.name,
            "start_unix_micros": micros(span.start_time),
            "end_unix_micros": micros(span.end_time),
            "status": format!("{:?}", span.status),
            "attributes": attributes,
            "service.instance.id": self.instance,
        })
    }
}

impl SpanExporter for ConsoleExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut out = String::new();
        for span in &batch {
            out.push_str(&self.line(span).to_string());
            out.push('\n');
        }
        // A closed stdout loses the spans, never the process.
        let _ = std::io::stdout().lock().write_all(out.as_bytes());
        Ok(())
    }
}

fn console_provider(instance: &str) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_batch_exporter(ConsoleExporter {
            instance: instance.to_string(),
        })
        .with_resource(resource(instance))
        .build()
}

/// Where the formatter finds the subscriber it runs in (to read a span's OpenTelemetry context):
/// filled when the subscriber is installed.
#[derive(Debug, Clone, Default)]
struct DispatchSlot(Arc<OnceLock<WeakDispatch>>);

impl<S: Subscriber> Layer<S> for DispatchSlot {
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.0.set(subscriber.downgrade());
    }
}

/// An event format that adds the trace and span ids of the innermost recorded span around the
/// event to what `inner` writes: as fields of the JSON object, or as `trace_id=... span_id=...` at
/// the end of a plain text line. Coloured lines (a person at a terminal) are left as they are.
struct WithTraceIds<F> {
    inner: F,
    slot: DispatchSlot,
}

impl<F> WithTraceIds<F> {
    fn ids<S, N>(&self, ctx: &FmtContext<'_, S, N>) -> Option<(String, String)>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        let dispatch = self.slot.0.get()?.upgrade()?;
        for span in ctx.event_scope()? {
            let Some(cx) = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch) else {
                continue;
            };
            let sc = cx.span().span_context().clone();
            if sc.is_valid() {
                return Some((sc.trace_id().to_string(), sc.span_id().to_string()));
            }
        }
        None
    }
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let ids = if writer.has_ansi_escapes() {
            None
        } else {
            self.ids(ctx)
        };
        let Some((trace, span)) = ids else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&with_ids(line, &trace, &span))
    }
}

/// `line` (one formatted event) with the ids added.
fn with_ids(mut line: String, trace: &str, span: &str) -> String {
    if line.starts_with('{') {
        line.insert_str(
            1,
            &format!("\"trace_id\":\"{trace}\",\"span_id\":\"{span}\","),
        );
    } else {
        let end = line.trim_end_matches('\n').len();
        line.insert_str(end, &format!(" trace_id={trace} span_id={span}"));
    }
    line
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
    let slot = DispatchSlot::default();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(settings.ansi);
    let log_layer = if settings.json {
        fmt.fmt_fields(JsonFields::new())
            .event_format(WithTraceIds {
                inner: format::format().json(),
                slot: slot.clone(),
            })
            .with_filter(filter)
            .boxed()
    } else {
        fmt.event_format(WithTraceIds {
            inner: format::format().with_ansi(settings.ansi),
            slot: slot.clone(),
        })
        .with_filter(filter)
        .boxed()
    };
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![log_layer];
    let mut guard = TracingGuard::default();
    let provider = match (&settings.otlp, settings.console_traces) {
        (_, true) => Some(console_provider(
            settings
                .otlp
                .as_ref()
                .map_or("latchkey", |o| o.instance.as_str()),
        )),
        (Some(otlp), false) => Some(provider(otlp)?),
        (None, false) => None,
    };
    if let Some(provider) = provider {
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
        // Outside the Vec, which does not pass the dispatcher on to its layers. It sees no span or
        // event (so enables none): it only learns the dispatcher.
        .with(slot.with_filter(LevelFilter::OFF))
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
        command = cmd.id.0,
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
