//! Traces over OTLP: a real `framewise run` exports its spans to a collector
//! (a gRPC TraceService started by the test) when OTEL_EXPORTER_OTLP_ENDPOINT
//! is set: the job's leases in one trace, each with its segment and chunks.

mod common;
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Starts the collector on a free loopback port; returns its endpoint.
fn start_collector(c: Collector) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(c))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
                .await
                .unwrap();
        });
    });
    format!("http://{addr}")
}

fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            Value::StringValue(s) => s.clone(),
            Value::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

#[test]
fn a_run_exports_job_lease_segment_and_chunk_spans() {
    let collector = Collector::default();
    let endpoint = start_collector(collector.clone());
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in.mp4");
    let out = d.path().join("out.mp4");
    make_clip(&input, 64, 48, 50, false);
    let o = framewise_run(
        &input,
        &out,
        &["--segment-seconds", "1"],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let spans = collector.0.lock().unwrap().clone();
    let named = |n: &str| {
        spans
            .iter()
            .filter(|s| s.name == n)
            .cloned()
            .collect::<Vec<_>>()
    };
    let (leases, segments, chunks) = (named("lease"), named("segment"), named("chunk"));
    // Probe, two 1 s segments and the assembly: four leases, all in the job's one trace.
    assert_eq!(leases.len(), 4, "lease spans: {leases:?}");
    let job = attr(&leases[0], "job_id").expect("job_id on the lease span");
    assert!(job.starts_with("job-"), "{job}");
    assert!(leases.iter().all(|l| l.trace_id == leases[0].trace_id));
    assert!(leases
        .iter()
        .all(|l| attr(l, "job_id").as_deref() == Some(job.as_str())));
    assert_eq!(segments.len(), 2, "segment spans: {segments:?}");
    for s in &segments {
        assert!(
            leases.iter().any(|l| l.span_id == s.parent_span_id),
            "a segment's parent is its lease"
        );
        assert!(
            attr(s, "infer_ms").is_some(),
            "stage totals recorded: {s:?}"
        );
    }
    assert!(chunks.len() >= 2, "chunk spans: {chunks:?}");
    for c in &chunks {
        assert!(
            segments.iter().any(|s| s.span_id == c.parent_span_id),
            "a chunk's parent is its segment"
        );
        assert!(c.end_time_unix_nano > c.start_time_unix_nano);
    }
}
