//! The HTTP side (tokio + axum): `/metrics`, `/healthz`, `/readyz`, `/api/cameras` and
//! `/api/events` (Server-Sent Events). It reads shared handles and never reaches into stage
//! internals; a slow event-stream client loses events (counted) and never slows the pipeline.

use std::net::SocketAddr;
use std::time::Duration;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub mod api;
pub mod ui;
pub mod visitors;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::events::{Event, EventSink, SendError};
use crate::gallery::SharedGallery;
use crate::ingest::{CameraState, CameraStatus};
use crate::telemetry::metrics;

pub use crate::config::http::HttpConfig;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr}: {error}")]
    Bind { addr: String, error: std::io::Error },
    #[error("HTTP runtime: {0}")]
    Runtime(std::io::Error),
}

/// Events kept for the web UI's timeline (`/api/events/recent`).
pub const RECENT_EVENTS: usize = 500;

/// Marks a request whose web UI session (and CSRF token) the middleware has checked.
#[derive(Clone, Copy, Debug)]
pub struct Authorized;

/// What the HTTP side can see.
#[derive(Clone)]
pub struct AppState {
    pub cameras: Arc<Mutex<Vec<Arc<Mutex<CameraStatus>>>>>,
    pub gallery: SharedGallery,
    pub events: broadcast::Sender<Arc<str>>,
    pub models_loaded: Arc<AtomicBool>,
    pub started: std::time::Instant,
    /// The live view's frames and boxes (fed by the track stage while somebody watches).
    pub live: Arc<crate::live::LiveHub>,
    /// The newest events, oldest first (at most [`RECENT_EVENTS`]).
    pub recent: Arc<Mutex<std::collections::VecDeque<Arc<str>>>>,
    pub sessions: Arc<ui::Sessions>,
    pub ui: Arc<ui::UiInfo>,
    /// `http.token`, for the web UI's login.
    pub token: Option<Arc<str>>,
}

impl AppState {
    pub fn new(gallery: SharedGallery, sse_buffer: usize) -> Self {
        let (events, _) = broadcast::channel(sse_buffer.max(1));
        let http = HttpConfig::default();
        Self {
            cameras: Arc::new(Mutex::new(Vec::new())),
            gallery,
            events,
            models_loaded: Arc::new(AtomicBool::new(false)),
            started: std::time::Instant::now(),
            live: crate::live::LiveHub::new(http.live_fps, http.live_width),
            recent: Arc::new(Mutex::new(std::collections::VecDeque::with_capacity(RECENT_EVENTS))),
            sessions: ui::Sessions::new(Duration::from_secs_f64(http.session_hours * 3600.0)),
            ui: Arc::new(ui::UiInfo::default()),
            token: None,
        }
    }

    /// The state for a server with `[http]` settings: the token, live-view rate and session
    /// length, and what the UI shows.
    pub fn configured(mut self, http: &HttpConfig, info: ui::UiInfo) -> Self {
        self.live = crate::live::LiveHub::new(http.live_fps, http.live_width);
        self.sessions = ui::Sessions::new(Duration::from_secs_f64(http.session_hours * 3600.0));
        self.token = http.token.as_deref().map(Arc::from);
        self.ui = Arc::new(ui::UiInfo { login: http.token.is_some(), version: env!("CARGO_PKG_VERSION"), live_fps: http.live_fps, ..info });
        self
    }

    /// A pipeline sink that feeds the event stream.
    pub fn event_sink(&self) -> BroadcastSink {
        BroadcastSink { tx: self.events.clone(), recent: self.recent.clone() }
    }
}

/// Feeds `/api/events` and the recent events; never blocks (the broadcast ring overwrites what
/// slow clients missed).
pub struct BroadcastSink {
    tx: broadcast::Sender<Arc<str>>,
    recent: Arc<Mutex<std::collections::VecDeque<Arc<str>>>>,
}

impl EventSink for BroadcastSink {
    fn name(&self) -> &'static str {
        "sse"
    }
    fn send(&mut self, event: &Event) -> Result<(), SendError> {
        let json: Arc<str> = Arc::from(event.to_json());
        if let Ok(mut r) = self.recent.lock() {
            if r.len() >= RECENT_EVENTS {
                r.pop_front();
            }
            r.push_back(json.clone());
        }
        // No subscriber is not a failure: nobody asked for the events.
        let _ = self.tx.send(json);
        Ok(())
    }
}

/// A running server; dropping it does not stop it, `shutdown` does.
pub struct Server {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .route("/api/cameras", get(cameras_handler))
        .route("/api/events", get(events_handler))
        .with_state(state)
}

/// Binds (errors here stop start-up) and serves on a thread of its own. Every connection has a
/// header-read timeout (also the idle limit between requests); beyond `max_connections` a new
/// connection gets one second to send its request, so idle or slow clients cannot keep others
/// out; request bodies have their own timeout; with a token every `/api/*` route needs it.
pub fn serve(cfg: &HttpConfig, state: AppState, extra: Option<Router>) -> Result<Server, HttpError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("http")
        .enable_all()
        .build()
        .map_err(HttpError::Runtime)?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(&cfg.bind))
        .map_err(|error| HttpError::Bind { addr: cfg.bind.clone(), error })?;
    let addr = listener.local_addr().map_err(HttpError::Runtime)?;
    let auth = Auth { token: cfg.token.clone().map(Arc::<str>::from), sessions: state.sessions.clone() };
    let mut app = router(state.clone());
    if cfg.ui {
        app = app.merge(ui::router(state));
    }
    if let Some(extra) = extra {
        app = app.merge(extra);
    }
    let app = app
        .layer(axum::middleware::from_fn_with_state(auth, require_token))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(Duration::from_secs_f64(cfg.body_timeout_s)));
    let limits = ConnLimits { max: cfg.max_connections, header_timeout: Duration::from_secs_f64(cfg.header_timeout_s) };
    let (tx, rx) = tokio::sync::watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("http-server".into())
        .spawn(move || {
            rt.block_on(accept_loop(listener, app, limits, rx));
            rt.shutdown_timeout(Duration::from_millis(200));
        })
        .map_err(HttpError::Runtime)?;
    tracing::info!(%addr, "HTTP server listening (/metrics, /healthz, /readyz, /api/...)");
    Ok(Server { addr, shutdown: Some(tx), thread: Some(thread) })
}

#[derive(Clone, Copy)]
struct ConnLimits {
    max: usize,
    header_timeout: Duration,
}

#[derive(Clone)]
struct Auth {
    token: Option<Arc<str>>,
    sessions: Arc<ui::Sessions>,
}

/// With a token configured, every `/api/*` request must carry it, or come from a web UI session
/// (with the session's CSRF token when it changes something); the UI's pages redirect to the
/// login without a session.
async fn require_token(State(auth): State<Auth>, mut req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let Some(token) = auth.token.as_deref() else { return next.run(req).await };
    let path = req.uri().path();
    let (api, page) = (path.starts_with("/api/"), ui::is_page(path));
    if !api && !page {
        return next.run(req).await;
    }
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| ui::same_secret(g, token)) {
        return next.run(req).await;
    }
    match ui::check_session(&auth.sessions, req.headers(), req.method()) {
        ui::SessionCheck::Ok => {
            req.extensions_mut().insert(Authorized);
            next.run(req).await
        }
        _ if page => axum::response::Redirect::to("/ui/login").into_response(),
        ui::SessionCheck::BadCsrf => {
            let body = serde_json::json!({"error": {"code": "csrf", "message": "a web UI session must send its CSRF token in X-CSRF-Token with every change"}});
            (StatusCode::FORBIDDEN, axum::Json(body)).into_response()
        }
        ui::SessionCheck::NoSession => {
            let body = serde_json::json!({"error": {"code": "unauthorized", "message": "this endpoint needs Authorization: Bearer <token>"}});
            (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
        }
    }
}

/// Accepts connections until stopped; each is served by hyper with the header timeout.
async fn accept_loop(listener: tokio::net::TcpListener, app: Router, limits: ConnLimits, stop: tokio::sync::watch::Receiver<bool>) {
    let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut stopping = stop.clone();
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors: wait for connections to close instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    metrics().http_connections.with_label_values(&["accept_error"]).inc();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = async { let _ = stopping.wait_for(|s| *s).await; } => break,
        };
        let n = active.fetch_add(1, Ordering::SeqCst) + 1;
        let over = n > limits.max;
        metrics().http_connections.with_label_values(&[if over { "over_limit" } else { "accepted" }]).inc();
        let header_timeout = if over { Duration::from_secs(1).min(limits.header_timeout) } else { limits.header_timeout };
        let (app, active, mut stop) = (app.clone(), active.clone(), stop.clone());
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_timeout);
            let conn = builder.serve_connection_with_upgrades(io, svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                    // Event-stream clients never hang up by themselves: a moment, then dropped.
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_millis(300), conn).await;
                }
            }
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

async fn metrics_handler() -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics().render()).into_response()
}

pub(crate) fn statuses(state: &AppState) -> Vec<CameraStatus> {
    state
        .cameras
        .lock()
        .map(|c| c.iter().filter_map(|s| s.lock().ok().map(|s| s.clone())).collect())
        .unwrap_or_default()
}

async fn ready_handler(State(state): State<AppState>) -> Response {
    let cams = statuses(&state);
    let models = state.models_loaded.load(Ordering::SeqCst);
    let gallery = state.gallery.read().map(|g| g.len()).ok();
    let streaming: Vec<_> = cams.iter().filter(|c| c.state == CameraState::Streaming).map(|c| c.id.clone()).collect();
    let not_streaming: Vec<_> = cams.iter().filter(|c| c.state != CameraState::Streaming).map(|c| serde_json::json!({"id": c.id, "state": c.state})).collect();
    let ready = models && gallery.is_some();
    let body = serde_json::json!({
        "ready": ready,
        "models_loaded": models,
        "gallery_loaded": gallery.is_some(),
        "gallery_persons": gallery.unwrap_or(0),
        "cameras_streaming": streaming,
        "cameras_not_streaming": not_streaming,
    });
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(body)).into_response()
}

async fn cameras_handler(State(state): State<AppState>) -> Response {
    axum::Json(statuses(&state)).into_response()
}

async fn events_handler(State(state): State<AppState>) -> Response {
    let stream = BroadcastStream::new(state.events.subscribe()).filter_map(|item| async move {
        match item {
            Ok(json) => Some(Ok::<_, std::convert::Infallible>(SseEvent::default().data(json.as_ref()))),
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                metrics().events_failed.with_label_values(&["sse", "client_lagged"]).inc_by(n);
                None
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}
