//! The web UI: a small single page (plain HTML, CSS and JavaScript, embedded in the binary, no
//! third-party asset) at `/ui/`, and the endpoints it needs besides the API: the live view's
//! frames (`/api/cameras/{id}/frame.jpg`), one event stream for the page (`/api/ui/stream`: the
//! identity events, the live boxes and the cameras' state), recent events for the timeline
//! (`/api/events/recent`), and the login.
//!
//! With `http.token` set the pages ask for the token once (`/ui/login`) and keep a session cookie
//! (HttpOnly, SameSite=Strict, random id, server-side expiry); every state-changing request of a
//! session must carry the session's CSRF token in `X-CSRF-Token` (the page reads it from its
//! `<meta name="csrf-token">`), and the login form has its own CSRF token bound to a cookie.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::{BroadcastStream, IntervalStream};

use super::AppState;
use crate::telemetry::metrics;

pub const SESSION_COOKIE: &str = "fs_session";
const LOGIN_COOKIE: &str = "fs_login";
/// Most sessions kept at once (the oldest goes first).
const MAX_SESSIONS: usize = 1024;

const INDEX_HTML: &str = include_str!("ui/index.html");
const LOGIN_HTML: &str = include_str!("ui/login.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");
const ICON_SVG: &str = include_str!("ui/icon.svg");

/// Nothing but our own assets; no inline script; frames only from ourselves.
const CSP: &str = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// What the page shows besides cameras and people (from the config).
#[derive(Clone, Debug, Default, Serialize)]
pub struct UiInfo {
    pub gates: Vec<String>,
    pub visitors: bool,
    pub snapshots: bool,
    pub login: bool,
    pub version: &'static str,
    /// Live-view frames per second (the page asks no faster).
    pub live_fps: f64,
}

struct Session {
    csrf: String,
    expires: Instant,
}

/// Web UI sessions (in memory: a restart asks for the token again).
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    ttl: Duration,
}

impl Sessions {
    pub fn new(ttl: Duration) -> Arc<Self> {
        Arc::new(Self { map: Mutex::new(HashMap::new()), ttl })
    }

    /// A new session: (id, csrf token).
    fn create(&self) -> (String, String) {
        let (id, csrf) = (random_id(), random_id());
        if let Ok(mut m) = self.map.lock() {
            let now = Instant::now();
            m.retain(|_, s| s.expires > now);
            if m.len() >= MAX_SESSIONS
                && let Some(oldest) = m.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone())
            {
                m.remove(&oldest);
            }
            m.insert(id.clone(), Session { csrf: csrf.clone(), expires: now + self.ttl });
        }
        (id, csrf)
    }

    /// The CSRF token of a live session.
    pub fn csrf_of(&self, id: &str) -> Option<String> {
        let m = self.map.lock().ok()?;
        m.get(id).filter(|s| s.expires > Instant::now()).map(|s| s.csrf.clone())
    }

    fn remove(&self, id: &str) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(id);
        }
    }
}

fn random_id() -> String {
    format!("{}{}", crate::gate::signing::nonce(), crate::gate::signing::nonce())
}

/// Compares secrets in time that does not depend on where they differ (digests of both).
pub fn same_secret(a: &str, b: &str) -> bool {
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    x.iter().zip(y.iter()).fold(0u8, |acc, (p, q)| acc | (p ^ q)) == 0
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Pages that need a login when a token is set (the login page and the assets do not).
pub fn is_page(path: &str) -> bool {
    path == "/" || path == "/ui" || (path.starts_with("/ui/") && !path.starts_with("/ui/login") && !path.starts_with("/ui/assets/"))
}

/// The outcome of the middleware's check of a request without a valid bearer token.
pub enum SessionCheck {
    /// A live session, and for a state-changing request the right CSRF token.
    Ok,
    NoSession,
    BadCsrf,
}

/// Checks the session cookie (and for methods other than GET/HEAD the `X-CSRF-Token` header).
pub fn check_session(sessions: &Sessions, headers: &HeaderMap, method: &Method) -> SessionCheck {
    let Some(csrf) = cookie(headers, SESSION_COOKIE).and_then(|id| sessions.csrf_of(&id)) else { return SessionCheck::NoSession };
    if method == Method::GET || method == Method::HEAD {
        return SessionCheck::Ok;
    }
    match headers.get("x-csrf-token").and_then(|v| v.to_str().ok()) {
        Some(given) if same_secret(given, &csrf) => SessionCheck::Ok,
        _ => SessionCheck::BadCsrf,
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(index))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/assets/{file}", get(asset))
        .route("/api/ui/info", get(info))
        .route("/api/ui/stream", get(stream))
        .route("/api/cameras/{id}/frame.jpg", get(frame))
        .route("/api/events/recent", get(recent))
        .with_state(state)
}

fn page(html: String) -> Response {
    let mut r = ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], html).into_response();
    secure_headers(r.headers_mut());
    r
}

fn secure_headers(h: &mut HeaderMap) {
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

async fn index(State(state): State<AppState>, headers: HeaderMap) -> Response {
    // The middleware let this through: without a token, or with a live session.
    let csrf = cookie(&headers, SESSION_COOKIE).and_then(|id| state.sessions.csrf_of(&id)).unwrap_or_default();
    page(INDEX_HTML.replace("{{csrf}}", &escape(&csrf)).replace("{{version}}", env!("CARGO_PKG_VERSION")))
}

fn login_form(message: &str, status: StatusCode) -> Response {
    let nonce = random_id();
    let html = LOGIN_HTML.replace("{{csrf}}", &nonce).replace("{{message}}", &escape(message));
    let mut r = page(html);
    *r.status_mut() = status;
    let c = format!("{LOGIN_COOKIE}={nonce}; Path=/ui/login; HttpOnly; SameSite=Strict; Max-Age=900");
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn login_page(State(state): State<AppState>) -> Response {
    if state.token.is_none() {
        return Redirect::to("/ui/").into_response();
    }
    login_form("", StatusCode::OK)
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    csrf: String,
}

async fn login(State(state): State<AppState>, headers: HeaderMap, axum::Form(form): axum::Form<LoginForm>) -> Response {
    let Some(token) = state.token.as_deref() else { return Redirect::to("/ui/").into_response() };
    let bound = cookie(&headers, LOGIN_COOKIE);
    if !bound.as_deref().is_some_and(|b| same_secret(b, &form.csrf)) {
        metrics().ui_logins.with_label_values(&["refused"]).inc();
        return login_form("The login form expired or came from another page: try again.", StatusCode::FORBIDDEN);
    }
    if !same_secret(form.token.trim(), token) {
        metrics().ui_logins.with_label_values(&["refused"]).inc();
        tracing::warn!("web UI login refused: wrong token");
        // Slows guessing down.
        tokio::time::sleep(Duration::from_millis(400)).await;
        return login_form("Wrong token (it is http.token in the configuration).", StatusCode::UNAUTHORIZED);
    }
    let (id, _) = state.sessions.create();
    metrics().ui_logins.with_label_values(&["ok"]).inc();
    tracing::info!("web UI login");
    let max_age = state.sessions.ttl.as_secs();
    let mut r = Redirect::to("/ui/").into_response();
    for c in [format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}"), format!("{LOGIN_COOKIE}=; Path=/ui/login; HttpOnly; SameSite=Strict; Max-Age=0")] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        let Some(csrf) = state.sessions.csrf_of(&id) else { return Redirect::to("/ui/login").into_response() };
        let given = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or("");
        if !same_secret(given, &csrf) {
            return (StatusCode::FORBIDDEN, "missing or wrong X-CSRF-Token\n").into_response();
        }
        state.sessions.remove(&id);
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_static("fs_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"));
    r
}

async fn asset(UrlPath(file): UrlPath<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "icon.svg" => (ICON_SVG, "image/svg+xml"),
        _ => return (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    };
    let mut r = ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")], body).into_response();
    secure_headers(r.headers_mut());
    r
}

async fn info(State(state): State<AppState>) -> Response {
    axum::Json(state.ui.as_ref().clone()).into_response()
}

/// One stream for the page: `event` (identity events, as `/api/events`), `boxes` (live tracks)
/// and `cameras` (state and frame counts, every second).
async fn stream(State(state): State<AppState>) -> Response {
    let events = BroadcastStream::new(state.events.subscribe()).filter_map(|item| async move { sse_item("event", item) });
    let boxes = BroadcastStream::new(state.live.subscribe()).filter_map(|item| async move { sse_item("boxes", item) });
    let st = state.clone();
    let cameras = IntervalStream::new(tokio::time::interval(Duration::from_secs(1))).map(move |_| {
        st.live.touch();
        let json = serde_json::to_string(&super::statuses(&st)).unwrap_or_else(|_| "[]".into());
        Ok::<_, std::convert::Infallible>(SseEvent::default().event("cameras").data(json))
    });
    let merged = tokio_stream::StreamExt::merge(tokio_stream::StreamExt::merge(events, boxes), cameras);
    Sse::new(merged).keep_alive(KeepAlive::default()).into_response()
}

fn sse_item(kind: &'static str, item: Result<Arc<str>, BroadcastStreamRecvError>) -> Option<Result<SseEvent, std::convert::Infallible>> {
    match item {
        Ok(json) => Some(Ok(SseEvent::default().event(kind).data(json.as_ref()))),
        Err(BroadcastStreamRecvError::Lagged(n)) => {
            metrics().events_failed.with_label_values(&["ui", "client_lagged"]).inc_by(n);
            None
        }
    }
}

async fn frame(State(state): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    let known = super::statuses(&state).iter().any(|c| c.id == id);
    if !known {
        let body = serde_json::json!({"error": {"code": "not_found", "message": format!("no camera `{id}`")}});
        return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    }
    // About 1 ms (640x480), at most live_fps times a second per camera: encoded on the runtime's
    // worker itself, so the live view starts no blocking-pool threads (each would grow memory).
    match state.live.jpeg(&id) {
        Some((seq, jpeg)) => {
            let mut r = ([(header::CONTENT_TYPE, "image/jpeg"), (header::CACHE_CONTROL, "no-store")], jpeg.to_vec()).into_response();
            if let Ok(v) = HeaderValue::from_str(&seq.to_string()) {
                r.headers_mut().insert("x-frame-seq", v);
            }
            r
        }
        None => {
            // The tap opens with this request; the next frame is kept.
            let body = serde_json::json!({"error": {"code": "no_frame", "message": format!("no frame of `{id}` yet (the live view keeps frames only while somebody watches); retry in a moment")}});
            let mut r = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
    }
}

#[derive(Deserialize)]
struct RecentQuery {
    camera: Option<String>,
    person: Option<String>,
    kind: Option<String>,
    limit: Option<usize>,
}

/// The newest events first, filtered by camera, person (or visitor) and kind.
async fn recent(State(state): State<AppState>, Query(q): Query<RecentQuery>) -> Response {
    let limit = q.limit.unwrap_or(100).clamp(1, super::RECENT_EVENTS);
    let items: Vec<Arc<str>> = state.recent.lock().map(|r| r.iter().rev().cloned().collect()).unwrap_or_default();
    let mut out = Vec::new();
    for json in items {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&json) else { continue };
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("");
        if q.camera.as_deref().is_some_and(|c| !c.is_empty() && field("camera") != c) || q.kind.as_deref().is_some_and(|k| !k.is_empty() && field("event") != k) {
            continue;
        }
        if let Some(p) = q.person.as_deref().filter(|p| !p.is_empty()) {
            let p = p.to_lowercase();
            if !field("person").to_lowercase().contains(&p) && !field("visitor").to_lowercase().contains(&p) {
                continue;
            }
        }
        out.push(v);
        if out.len() >= limit {
            break;
        }
    }
    axum::Json(serde_json::json!({"events": out})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_and_csrf() {
        let s = Sessions::new(Duration::from_secs(60));
        let (id, csrf) = s.create();
        let mut h = HeaderMap::new();
        assert!(matches!(check_session(&s, &h, &Method::GET), SessionCheck::NoSession));
        h.insert(header::COOKIE, HeaderValue::from_str(&format!("other=1; {SESSION_COOKIE}={id}")).unwrap());
        assert!(matches!(check_session(&s, &h, &Method::GET), SessionCheck::Ok));
        assert!(matches!(check_session(&s, &h, &Method::POST), SessionCheck::BadCsrf), "a POST without the CSRF token");
        h.insert("x-csrf-token", HeaderValue::from_static("wrong"));
        assert!(matches!(check_session(&s, &h, &Method::DELETE), SessionCheck::BadCsrf));
        h.insert("x-csrf-token", HeaderValue::from_str(&csrf).unwrap());
        assert!(matches!(check_session(&s, &h, &Method::POST), SessionCheck::Ok));
        s.remove(&id);
        assert!(matches!(check_session(&s, &h, &Method::GET), SessionCheck::NoSession), "logged out");
        let short = Sessions::new(Duration::from_millis(1));
        let (id, _) = short.create();
        std::thread::sleep(Duration::from_millis(5));
        assert!(short.csrf_of(&id).is_none(), "expired");
    }

    #[test]
    fn pages_and_secrets() {
        assert!(is_page("/") && is_page("/ui/") && is_page("/ui"));
        assert!(!is_page("/ui/login") && !is_page("/ui/assets/app.js") && !is_page("/metrics"));
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("abc", "abcd"));
        assert_eq!(escape("<a href=\"x\">'"), "&lt;a href=&quot;x&quot;&gt;&#39;");
    }

    #[test]
    fn assets_have_no_third_party_reference() {
        for (name, text) in [("index.html", INDEX_HTML), ("login.html", LOGIN_HTML), ("app.js", APP_JS), ("app.css", APP_CSS)] {
            assert!(!text.contains("http://") && !text.contains("https://") && !text.contains("//cdn"), "{name} refers to another host");
            assert!(!text.contains("<script>"), "{name}: inline scripts are refused by the page's CSP");
        }
    }
}
