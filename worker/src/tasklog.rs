//! Per-task worker logs: every event logged inside a lease's span is also
//! appended to that attempt's log file (the coordinator hands out its path
//! and serves it on the dashboard), whatever the console's log level.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The span field naming the file a span's events go to.
pub const LOG_PATH_FIELD: &str = "log_path";

/// A tracing layer that copies events of spans carrying `log_path` into that file.
#[derive(Debug, Default, Clone, Copy)]
pub struct TaskLogLayer;

struct TaskLog(Arc<Mutex<std::fs::File>>);

#[derive(Default)]
struct PathField(Option<String>);

impl Visit for PathField {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == LOG_PATH_FIELD {
            self.0 = Some(value.to_string());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == LOG_PATH_FIELD {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

/// One log line: the message first, then the other fields as key=value.
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

fn open(path: &str) -> Option<std::fs::File> {
    let path = std::path::Path::new(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).ok()?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .ok()
}

impl<S> Layer<S> for TaskLogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut p = PathField::default();
        attrs.record(&mut p);
        let (Some(path), Some(span)) = (p.0, ctx.span(id)) else {
            return;
        };
        // A log that cannot be written must not stop the work: the console still has it.
        if let Some(f) = open(&path) {
            span.extensions_mut()
                .insert(TaskLog(Arc::new(Mutex::new(f))));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        for span in scope.from_root() {
            let ext = span.extensions();
            let Some(TaskLog(file)) = ext.get::<TaskLog>() else {
                continue;
            };
            let mut line = Line::default();
            event.record(&mut line);
            let meta = event.metadata();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let text = format!(
                "{}.{:03} {:>5} {}: {}{}\n",
                now.as_secs(),
                now.subsec_millis(),
                meta.level(),
                meta.target(),
                line.message,
                line.fields
            );
            if let Ok(mut f) = file.lock() {
                let _ = f.write_all(text.as_bytes());
            }
            return;
        }
    }
}

/// 64-bit FNV-1a: a stable hash (unlike std's, fixed across Rust releases and processes).
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(seed, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3))
}

/// Makes `span` part of its job's trace: every worker derives the same trace id from the job id,
/// so all leases of a job (on any machine) show up under one trace. A no-op unless traces are
/// exported.
pub fn join_job_trace(span: &tracing::Span, job_id: &str) {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let hi = fnv1a(0xcbf2_9ce4_8422_2325, job_id.as_bytes());
    let lo = fnv1a(hi ^ 0x9e37_79b9_7f4a_7c15, job_id.as_bytes());
    let trace = TraceId::from_bytes(((hi as u128) << 64 | lo as u128).to_be_bytes());
    let job_span = SpanId::from_bytes(fnv1a(lo, b"job").max(1).to_be_bytes());
    let parent = SpanContext::new(
        trace,
        job_span,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::prelude::*;

    #[test]
    fn events_in_a_task_span_land_in_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job-x").join("task-3-e1.log");
        let subscriber = tracing_subscriber::registry().with(TaskLogLayer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside every task");
            let span = tracing::info_span!("lease", job_id = "job-x", log_path = %path.display());
            span.in_scope(|| {
                tracing::info!(frames = 7, "segment stages");
                tracing::warn!("heartbeat failed");
            });
        });
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("INFO"), "{text}");
        assert!(text.contains("segment stages frames=7"), "{text}");
        assert!(
            text.contains("WARN") && text.contains("heartbeat failed"),
            "{text}"
        );
        assert!(!text.contains("outside every task"), "{text}");
    }
}
