//! The visitors' HTTP API: best shots (`/api/snapshots/{id}`), visitors (list, one, name,
//! ignore, forget), visits per day (`/api/visits?day=...`) and forgetting a person. Reads and
//! writes the gallery store's file like the CLI does; the running application picks changes up
//! at once.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use crate::gallery::SharedGallery;
use crate::visitors::store::{VisitorStore, VisitorStoreError, parse_visitor};
use crate::visitors::{ops, report};

#[derive(Clone)]
pub struct VisitorsHttp {
    pub places: Arc<ops::Places>,
    pub gallery: SharedGallery,
    pub timezone: String,
    pub enroll_faces: usize,
    pub min_quality: f32,
    /// Faces of a named visitor nearer than this to another person are not enrolled.
    pub threshold: f32,
}

fn err(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({"error": {"code": code, "message": message.to_string()}}))).into_response()
}

fn ops_err(e: ops::OpsError) -> Response {
    match &e {
        ops::OpsError::Visitors(VisitorStoreError::NoVisitor(_) | VisitorStoreError::NoSubject(_) | VisitorStoreError::NoTrack(_)) => err(StatusCode::NOT_FOUND, "not_found", e),
        ops::OpsError::Visitors(VisitorStoreError::Refused(_)) => err(StatusCode::CONFLICT, "refused", e),
        _ => err(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
    }
}

async fn blocking(f: impl FnOnce() -> Response + Send + 'static) -> Response {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| err(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))
}

fn open(s: &VisitorsHttp) -> Result<VisitorStore, VisitorStoreError> {
    VisitorStore::open_spec(&s.places.gallery)
}

pub fn router(state: VisitorsHttp) -> Router {
    Router::new()
        .route("/api/snapshots/{id}", get(snapshot))
        .route("/api/visitors", get(list))
        .route("/api/visitors/{id}", get(one).delete(forget_visitor))
        .route("/api/visitors/{id}/name", post(name))
        .route("/api/visitors/{id}/ignore", post(ignore))
        .route("/api/visits", get(visits))
        .route("/api/forget/{subject}", post(forget))
        .with_state(state)
}

#[derive(Deserialize)]
struct SnapshotQuery {
    /// `face` (default) or `context`.
    kind: Option<String>,
}

async fn snapshot(State(s): State<VisitorsHttp>, UrlPath(id): UrlPath<String>, Query(q): Query<SnapshotQuery>) -> Response {
    blocking(move || {
        let store = match open(&s) {
            Ok(v) => v,
            Err(e) => return err(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
        };
        let row = match store.snapshot(&id) {
            Ok(Some(r)) => r,
            Ok(None) => return err(StatusCode::NOT_FOUND, "not_found", format!("no snapshot `{id}` (it is written when the track ends, and kept snapshots.keep_days)")),
            Err(e) => return err(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
        };
        let file = match q.kind.as_deref() {
            None | Some("face") => row.face_file,
            Some("context") => match row.context_file {
                Some(f) => f,
                None => return err(StatusCode::NOT_FOUND, "not_found", format!("snapshot `{id}` has no context frame")),
            },
            Some(other) => return err(StatusCode::BAD_REQUEST, "bad_request", format!("kind `{other}`: face or context")),
        };
        match store.snapshot_image(&s.places.snapshot_dir, &file) {
            Ok(Some(bytes)) => ([(header::CONTENT_TYPE, "image/jpeg")], bytes).into_response(),
            Ok(None) => err(StatusCode::NOT_FOUND, "not_found", format!("snapshot file {file} is gone")),
            Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
        }
    })
    .await
}

#[derive(Deserialize)]
struct ListQuery {
    all: Option<bool>,
}

async fn list(State(s): State<VisitorsHttp>, Query(q): Query<ListQuery>) -> Response {
    blocking(move || match open(&s).and_then(|st| st.visitors(q.all.unwrap_or(false))) {
        Ok(v) => axum::Json(json!({"visitors": v})).into_response(),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
    })
    .await
}

async fn one(State(s): State<VisitorsHttp>, UrlPath(id): UrlPath<String>) -> Response {
    blocking(move || {
        let store = match open(&s) {
            Ok(v) => v,
            Err(e) => return err(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
        };
        let Some(n) = parse_visitor(&id) else { return err(StatusCode::BAD_REQUEST, "bad_request", format!("`{id}` is not a visitor id (visitor-<n>)")) };
        match (store.visitor(n), store.resolve(n)) {
            (Ok(Some(v)), Ok(now)) => {
                let visits: Vec<_> = store.visits(0, i64::MAX).unwrap_or_default().into_iter().filter(|x| x.visitor_id == Some(n)).collect();
                axum::Json(json!({"visitor": v, "now": now.map(|x| x.name), "visits": visits})).into_response()
            }
            (Ok(None), _) => err(StatusCode::NOT_FOUND, "not_found", format!("no visitor `{id}`")),
            (Err(e), _) | (_, Err(e)) => err(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
        }
    })
    .await
}

#[derive(Deserialize)]
struct NameBody {
    name: String,
}

async fn name(State(s): State<VisitorsHttp>, UrlPath(id): UrlPath<String>, axum::Json(body): axum::Json<NameBody>) -> Response {
    if body.name.trim().is_empty() || body.name.len() > super::api::MAX_NAME_BYTES {
        return err(StatusCode::BAD_REQUEST, "bad_request", format!("name must be 1-{} bytes", super::api::MAX_NAME_BYTES));
    }
    blocking(move || match ops::name(&s.places, &id, &body.name, s.enroll_faces, s.min_quality, s.threshold) {
        Ok(n) => {
            // The running cameras name the person at once.
            if let Ok(store) = s.places.gallery.open()
                && let Ok(samples) = store.samples(Some(n.person_id))
            {
                let mut g = s.gallery.write().unwrap_or_else(|p| p.into_inner());
                for x in samples {
                    let _ = g.add_with_id(n.person_id, &n.person, x.embedding);
                }
            }
            axum::Json(json!(n)).into_response()
        }
        Err(e) => ops_err(e),
    })
    .await
}

#[derive(Deserialize)]
struct IgnoreBody {
    ignored: Option<bool>,
}

async fn ignore(State(s): State<VisitorsHttp>, UrlPath(id): UrlPath<String>, body: Option<axum::Json<IgnoreBody>>) -> Response {
    let ignored = body.and_then(|b| b.ignored).unwrap_or(true);
    blocking(move || match ops::ignore(&s.places, &id, ignored) {
        Ok(n) => axum::Json(json!({"visitor": n, "ignored": ignored})).into_response(),
        Err(e) => ops_err(e),
    })
    .await
}

async fn forget_visitor(State(s): State<VisitorsHttp>, UrlPath(id): UrlPath<String>) -> Response {
    let subject = format!("visitor-{}", id.strip_prefix("visitor-").unwrap_or(&id));
    forget_inner(s, subject).await
}

async fn forget(State(s): State<VisitorsHttp>, UrlPath(subject): UrlPath<String>) -> Response {
    forget_inner(s, subject).await
}

async fn forget_inner(s: VisitorsHttp, subject: String) -> Response {
    blocking(move || {
        let person = s.places.gallery.open().ok().and_then(|st| st.person_by_name(&subject).ok().flatten());
        match ops::forget(&s.places, &subject) {
            Ok(f) => {
                if let Some(p) = person.filter(|_| f.kind == "person") {
                    s.gallery.write().unwrap_or_else(|p| p.into_inner()).remove(p.id);
                }
                axum::Json(json!(f)).into_response()
            }
            Err(e) => ops_err(e),
        }
    })
    .await
}

#[derive(Deserialize)]
struct VisitsQuery {
    day: Option<String>,
    site: Option<String>,
}

async fn visits(State(s): State<VisitorsHttp>, Query(q): Query<VisitsQuery>) -> Response {
    blocking(move || {
        let store = match open(&s) {
            Ok(v) => v,
            Err(e) => return err(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
        };
        let names: BTreeMap<u64, String> = s.places.gallery.open().and_then(|g| g.persons()).map(|p| p.into_iter().map(|x| (x.id, x.name)).collect()).unwrap_or_default();
        match report::day(&store, q.day.as_deref().unwrap_or("today"), &s.timezone, q.site.as_deref(), &names, std::time::SystemTime::now()) {
            Ok(r) => axum::Json(json!(r)).into_response(),
            Err(e @ (report::ReportError::Day(_) | report::ReportError::Zone(..))) => err(StatusCode::BAD_REQUEST, "bad_request", e),
            Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
        }
    })
    .await
}
