//! Logs and traces for the binary: the console (filtered by `FRAMEWISE_LOG`),
//! per-task log files on workers, and — only when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set — every span exported over OTLP/gRPC to a collector (Azure Monitor's
//! OpenTelemetry collector, Jaeger, …). Off by default: no exporter, no layer.

use anyhow::{Context as _, Result};
use opentelemetry::trace::TracerProvider as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;

/// Keeps the exporter alive; flushes the spans still buffered when dropped.
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    // The tonic exporter needs a running Tokio runtime of its own.
    _runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("framewise: flushing traces failed: {e}");
            }
        }
    }
}

/// The collector endpoint, if traces are to be exported.
fn endpoint() -> Option<String> {
    std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .ok()
        .filter(|e| !e.trim().is_empty())
}

fn exporter(
    service: &str,
) -> Result<(
    opentelemetry_sdk::trace::SdkTracerProvider,
    tokio::runtime::Runtime,
)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("fw-otlp")
        .enable_all()
        .build()
        .context("starting the OTLP exporter's runtime")?;
    let exporter = rt
        .block_on(async {
            // Reads OTEL_EXPORTER_OTLP_ENDPOINT / _TRACES_ENDPOINT, headers and timeout from the env.
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()
        })
        .context("building the OTLP span exporter")?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_string());
    }
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_batch_exporter(exporter)
        .build();
    Ok((provider, rt))
}

/// Installs the console layer, the task-log layer (workers) and, if configured, the OTLP layer.
pub fn init(default_filter: &str, service: &str) -> Telemetry {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FRAMEWISE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let console = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let (provider, runtime, problem) = match endpoint().map(|_| exporter(service)) {
        Some(Ok((p, rt))) => (Some(p), Some(rt), None),
        Some(Err(e)) => (None, None, Some(e)),
        None => (None, None, None),
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("framewise"))
            .with_filter(LevelFilter::INFO)
    });
    let registry = tracing_subscriber::registry().with(console).with(otel);
    // Task logs keep info and above whatever the console shows.
    #[cfg(feature = "worker")]
    let registry =
        registry.with(framewise_worker::tasklog::TaskLogLayer.with_filter(LevelFilter::INFO));
    registry.init();
    if let Some(e) = problem {
        tracing::warn!(error = %format!("{e:#}"), "traces will not be exported");
    }
    Telemetry {
        provider,
        _runtime: runtime,
    }
}
