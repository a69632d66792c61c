//! The HTTP side of the coordinator (actix-web): the dashboard and its assets
//! (embedded in the binary), the JSON API under /api/v1 with a live
//! Server-Sent Events stream, Prometheus /metrics, and health probes.
//! Handlers are thin: they ask the JobManager actor and serialize its views.

use crate::auth::Role;
use crate::manager::{self, CoordError, JobManager};
use crate::metrics::Metrics;
use actix::{Addr, MailboxError};
use actix_web::http::header;
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_stream::StreamExt;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");
const OPENAPI_JSON: &str = include_str!("../assets/openapi.json");

/// What every handler needs.
#[derive(Clone)]
pub struct WebState {
    pub manager: Addr<JobManager>,
    pub metrics: Metrics,
    /// Subscribed per SSE client (the JobManager builds overviews only while someone listens).
    pub overview: Arc<watch::Sender<Arc<str>>>,
    /// The viewer token; None = open (only allowed on loopback addresses).
    pub token: Option<Arc<str>>,
    /// Where task logs are (file:// or az://), read through `blobs`.
    pub logs_url: String,
    pub blobs: framewise_common::storage::Store,
    /// The autoscaler, when enabled, and its config (shown when it is not).
    pub autoscaler: Option<Addr<crate::autoscaler::Autoscaler>>,
    pub autoscaler_config: framewise_common::config::AutoscalerConfig,
    /// Role tokens (`coordinator.tokens_file`); viewers and admins read, admins cancel.
    pub tokens: crate::auth::Tokens,
    /// The blob trigger's status (`enabled: false` when it is off).
    pub trigger: Arc<std::sync::Mutex<crate::trigger::TriggerStatus>>,
}

/// Compares without an early exit, so response time does not reveal how much of a guess matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token a request presents: `Authorization: Bearer …` or `?token=…` (EventSource cannot set headers).
pub fn presented_token(req: &HttpRequest) -> Option<String> {
    if let Some(h) = req.headers().get(header::AUTHORIZATION) {
        if let Some(t) = h.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) {
            return Some(t.trim().to_string());
        }
    }
    web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.get("token").cloned())
}

fn error(status: actix_web::http::StatusCode, msg: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({ "error": msg.into() }))
}

/// None when the request may proceed; otherwise the 401 or 403 to send.
fn check(state: &WebState, req: &HttpRequest) -> Option<HttpResponse> {
    check_roles(state, req, &[Role::Viewer, Role::Admin])
}

/// Like `check`, for a role-token holder of one of `roles` (the viewer token, when set, passes
/// as before; it is the dashboard's own token).
fn check_roles(state: &WebState, req: &HttpRequest, roles: &[Role]) -> Option<HttpResponse> {
    if state.tokens.enabled() {
        let presented = presented_token(req);
        let viewer_ok = match (&state.token, &presented) {
            (Some(want), Some(t)) => constant_time_eq(t.as_bytes(), want.as_bytes()),
            _ => false,
        };
        if viewer_ok {
            return None;
        }
        return match state.tokens.identify(presented.as_deref()) {
            Ok(id) if roles.contains(&id.role) => None,
            Ok(id) => Some(error(
                actix_web::http::StatusCode::FORBIDDEN,
                format!(
                    "{} has role {:?}; this needs one of {roles:?}",
                    id.name, id.role
                ),
            )),
            Err(e) => Some(error(
                actix_web::http::StatusCode::UNAUTHORIZED,
                e.message().to_string(),
            )),
        };
    }
    let want = state.token.as_ref()?;
    match presented_token(req) {
        Some(t) if constant_time_eq(t.as_bytes(), want.as_bytes()) => None,
        Some(_) => Some(error(
            actix_web::http::StatusCode::UNAUTHORIZED,
            "the viewer token does not match",
        )),
        None => Some(
            HttpResponse::Unauthorized()
                .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
                .json(serde_json::json!({
                    "error": "a viewer token is required: send Authorization: Bearer TOKEN or ?token=TOKEN"
                })),
        ),
    }
}

fn unavailable(e: MailboxError) -> HttpResponse {
    error(
        actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
        format!("coordinator is shutting down ({e})"),
    )
}

fn coord_error(e: CoordError) -> HttpResponse {
    use actix_web::http::StatusCode;
    match e {
        CoordError::NotFound(_) => error(StatusCode::NOT_FOUND, e.to_string()),
        CoordError::Invalid(_) => error(StatusCode::BAD_REQUEST, e.to_string()),
        CoordError::Exhausted(_) => error(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
        CoordError::Store(_) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Runs `f` after the token check, answering 503 if the actor is gone.
macro_rules! guarded {
    ($state:expr, $req:expr, $body:expr) => {{
        if let Some(denied) = check(&$state, &$req) {
            return denied;
        }
        match $body.await {
            Ok(v) => v,
            Err(e) => return unavailable(e),
        }
    }};
}

async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(INDEX_HTML)
}

async fn app_js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .body(APP_JS)
}

async fn style_css() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .body(STYLE_CSS)
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI_JSON)
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

async fn readyz(state: web::Data<WebState>) -> HttpResponse {
    let ping = state.manager.send(manager::Ping);
    match tokio::time::timeout(Duration::from_secs(2), ping).await {
        Ok(Ok(())) => HttpResponse::Ok().content_type("text/plain").body("ok"),
        Ok(Err(e)) => HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body(format!("not ready: job manager stopped ({e})")),
        Err(_) => HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("not ready: job manager did not answer within 2 s"),
    }
}

async fn metrics(state: web::Data<WebState>, req: HttpRequest) -> HttpResponse {
    guarded!(state, req, state.manager.send(manager::RefreshGauges));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

async fn overview(state: web::Data<WebState>, req: HttpRequest) -> HttpResponse {
    let v = guarded!(state, req, state.manager.send(manager::GetOverview));
    HttpResponse::Ok().json(v)
}

async fn jobs(state: web::Data<WebState>, req: HttpRequest) -> HttpResponse {
    let v = guarded!(state, req, state.manager.send(manager::ListSummaries));
    HttpResponse::Ok().json(v)
}

async fn job(state: web::Data<WebState>, req: HttpRequest, id: web::Path<String>) -> HttpResponse {
    let r = guarded!(
        state,
        req,
        state.manager.send(manager::GetDetail(id.into_inner()))
    );
    match r {
        Ok(d) => HttpResponse::Ok().json(d),
        Err(e) => coord_error(e),
    }
}

async fn tasks(
    state: web::Data<WebState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    let r = guarded!(
        state,
        req,
        state.manager.send(manager::GetDetail(id.into_inner()))
    );
    match r {
        Ok(d) => HttpResponse::Ok().json(d.tasks),
        Err(e) => coord_error(e),
    }
}

async fn cancel(
    state: web::Data<WebState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    let id = id.into_inner();
    if let Some(denied) = check_roles(&state, &req, &[Role::Admin]) {
        return denied;
    }
    let before = guarded!(
        state,
        req,
        state.manager.send(manager::GetDetail(id.clone()))
    );
    match before {
        Err(e) => return coord_error(e),
        Ok(d) if matches!(d.summary.state, "succeeded" | "failed" | "cancelled") => {
            return error(
                actix_web::http::StatusCode::CONFLICT,
                format!("job {id} already finished ({})", d.summary.state),
            )
        }
        Ok(_) => {}
    }
    if let Err(e) = guarded!(
        state,
        req,
        manager::ask(&state.manager, manager::Cancel(id.clone()))
    ) {
        return coord_error(e);
    }
    match guarded!(state, req, state.manager.send(manager::GetDetail(id))) {
        Ok(d) => HttpResponse::Ok().json(d.summary),
        Err(e) => coord_error(e),
    }
}

/// Every attempt's worker log of one task, oldest first, as plain text.
async fn task_log(
    state: web::Data<WebState>,
    req: HttpRequest,
    path: web::Path<(String, u32)>,
) -> HttpResponse {
    let (id, index) = path.into_inner();
    let detail = guarded!(
        state,
        req,
        state.manager.send(manager::GetDetail(id.clone()))
    );
    let detail = match detail {
        Ok(d) => d,
        Err(e) => return coord_error(e),
    };
    if !detail.tasks.iter().any(|t| t.index == index) {
        return error(
            actix_web::http::StatusCode::NOT_FOUND,
            format!("job {id} has no task {index}"),
        );
    }
    let dir = framewise_common::storage::join(&state.logs_url, &format!("{id}/"));
    let mut logs: Vec<(u64, String)> = match state.blobs.list(&dir).await {
        Ok(entries) => entries
            .into_iter()
            .filter_map(|e| Some((crate::scheduler::task_log_epoch(&e.name, index)?, e.url)))
            .collect(),
        Err(e) => {
            return error(
                actix_web::http::StatusCode::BAD_GATEWAY,
                format!("listing the task logs of job {id}: {e}"),
            )
        }
    };
    logs.sort();
    if logs.is_empty() {
        return error(
            actix_web::http::StatusCode::NOT_FOUND,
            format!("no log for task {index} of job {id} yet (it has not been leased, or its worker keeps no log)"),
        );
    }
    let mut text = String::new();
    for (epoch, url) in logs {
        text.push_str(&format!("==> attempt epoch {epoch} ({url}) <==\n"));
        match state.blobs.get(&url).await {
            Ok(t) => text.push_str(&String::from_utf8_lossy(&t)),
            Err(e) => text.push_str(&format!("(cannot read: {e})\n")),
        }
    }
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(text)
}

async fn workers(state: web::Data<WebState>, req: HttpRequest) -> HttpResponse {
    let v = guarded!(state, req, state.manager.send(manager::ListWorkers));
    HttpResponse::Ok().json(v)
}

/// The blob trigger: what it watches, what it submitted, what it rejected and why.
async fn trigger(state: web::Data<WebState>, req: HttpRequest) -> HttpResponse {
    if let Some(denied) = check(&state, &req) {
        return denied;
    }
    let v = state.trigger.lock().map(|s| s.clone()).unwrap_or_default();
    HttpResponse::Ok().json(v)
}

/// The autoscaler: its settings, its workers and its last decisions with their reasons.
async fn autoscaler(state: web::Data<WebState>, req: HttpRequest) -> HttpResponse {
    let v = match &state.autoscaler {
        Some(a) => guarded!(state, req, a.send(crate::autoscaler::GetStatus)),
        None => {
            if let Some(denied) = check(&state, &req) {
                return denied;
            }
            crate::autoscaler::AutoscalerView::disabled(&state.autoscaler_config)
        }
    };
    HttpResponse::Ok().json(v)
}

fn sse(json: &str) -> Bytes {
    Bytes::from(format!("event: overview\ndata: {json}\n\n"))
}

/// The live stream: the current overview at once, then each new one (about once a second).
async fn events(state: web::Data<WebState>, req: HttpRequest) -> HttpResponse {
    // Subscribe first so the JobManager starts publishing before we ask for the first one.
    let rx = state.overview.subscribe();
    let first = guarded!(state, req, state.manager.send(manager::GetOverview));
    let first = match serde_json::to_string(&first) {
        Ok(j) => j,
        Err(e) => {
            return error(
                actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
                e.to_string(),
            )
        }
    };
    let head = tokio_stream::once(sse(&first));
    let rest = tokio_stream::wrappers::WatchStream::from_changes(rx).map(|j| sse(&j));
    let stream = head.chain(rest).map(Ok::<_, actix_web::Error>);
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream)
}

/// Every route, for the server and for tests.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index))
        .route("/assets/app.js", web::get().to(app_js))
        .route("/assets/style.css", web::get().to(style_css))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/api/v1/openapi.json", web::get().to(openapi))
        .route("/api/v1/overview", web::get().to(overview))
        .route("/api/v1/events", web::get().to(events))
        .route("/api/v1/jobs", web::get().to(jobs))
        .route("/api/v1/jobs/{id}", web::get().to(job))
        .route("/api/v1/jobs/{id}/tasks", web::get().to(tasks))
        .route(
            "/api/v1/jobs/{id}/tasks/{index}/log",
            web::get().to(task_log),
        )
        .route("/api/v1/jobs/{id}/cancel", web::post().to(cancel))
        .route("/api/v1/workers", web::get().to(workers))
        .route("/api/v1/autoscaler", web::get().to(autoscaler))
        .route("/api/v1/trigger", web::get().to(trigger));
}

/// Answers unknown paths with a JSON 404 naming the path.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    error(
        actix_web::http::StatusCode::NOT_FOUND,
        format!("no such endpoint: {} {}", req.method(), req.path()),
    )
}

/// Starts the HTTP server on an already bound listener (call inside an actix System).
pub fn serve(
    listener: std::net::TcpListener,
    state: WebState,
    tls: Option<rustls::ServerConfig>,
) -> std::io::Result<actix_web::dev::Server> {
    let data = web::Data::new(state);
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(data.clone())
            .configure(routes)
            .default_service(web::to(not_found))
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(1);
    Ok(match tls {
        Some(t) => server.listen_rustls_0_23(listener, t)?,
        None => server.listen(listener)?,
    }
    .run())
}

/// Whether an address only this machine can reach.
pub fn is_loopback(addr: &std::net::SocketAddr) -> bool {
    addr.ip().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn openapi_documents_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).expect("valid JSON");
        let paths = doc["paths"].as_object().expect("paths");
        for p in [
            "/api/v1/overview",
            "/api/v1/events",
            "/api/v1/jobs",
            "/api/v1/jobs/{id}",
            "/api/v1/jobs/{id}/tasks",
            "/api/v1/jobs/{id}/tasks/{index}/log",
            "/api/v1/jobs/{id}/cancel",
            "/api/v1/workers",
            "/api/v1/autoscaler",
            "/api/v1/openapi.json",
            "/metrics",
            "/healthz",
            "/readyz",
        ] {
            assert!(paths.contains_key(p), "{p} is not in openapi.json");
        }
    }
}
