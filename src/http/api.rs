//! The gallery HTTP API: persons (create, list, get, delete), adding a face image to a person, and
//! `POST /api/recognize` (an image in, every face with its identity out). Changes go to the store
//! and to the shared gallery at once, so running cameras see them. Errors have one stable shape:
//! `{"error": {"code": "...", "message": "..."}}`. Mutating endpoints require `Authorization:
//! Bearer <token>` when a token is configured.

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path as UrlPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use crate::gallery::SharedGallery;
use crate::gallery::store::Store;
use crate::photo::{Analyzer, EnrollError, enrollable_image};

#[derive(Clone)]
pub struct ApiState {
    pub gallery: SharedGallery,
    pub store: Arc<Mutex<Store>>,
    pub analyzer: Arc<Mutex<Analyzer>>,
    pub token: Option<String>,
    pub threshold: f32,
    pub margin: f32,
}

pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }
    fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    }
    fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(json!({"error": {"code": self.code, "message": self.message}}))).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, s.into());
        }
        r
    }
}

type ApiResult = Result<Response, ApiError>;

/// Limits of the API's image requests (from `[http]`).
#[derive(Clone)]
pub struct Limits {
    pub max_pixels: f64,
    pub downscale_pixels: f64,
    /// Image requests analysed at once; when all are taken the request gets 503.
    pub image_slots: Arc<tokio::sync::Semaphore>,
}

/// Longest person name, and largest metadata (serialised JSON), accepted.
pub const MAX_NAME_BYTES: usize = 200;
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

/// The API with the default limits and this upload size.
pub fn router(state: ApiState, max_upload_bytes: usize) -> Router {
    let cfg = crate::config::http::HttpConfig { max_upload_mb: (max_upload_bytes >> 20).max(1), ..Default::default() };
    router_with(state, &cfg)
}

/// The API with the limits of `[http]`.
pub fn router_with(state: ApiState, cfg: &crate::config::http::HttpConfig) -> Router {
    let limits = Limits {
        max_pixels: cfg.max_image_mpix * 1e6,
        downscale_pixels: cfg.downscale_mpix * 1e6,
        image_slots: Arc::new(tokio::sync::Semaphore::new(cfg.max_image_requests)),
    };
    let max_upload_bytes = cfg.max_upload_mb << 20;
    Router::new()
        .route("/api/persons", get(list_persons).post(create_person))
        .route("/api/persons/{id}", get(get_person).delete(delete_person).patch(rename_person))
        .route("/api/persons/{id}/faces", post(add_face).get(list_faces))
        .route("/api/faces/{sample}", axum::routing::delete(delete_face))
        .route("/api/faces/{sample}/crop", get(face_crop))
        .route("/api/persons/{id}/groups", axum::routing::put(set_groups))
        .route("/api/gates/{gate}/log", get(gate_log))
        .route("/api/gates/{gate}/log/{entry}/crop", get(gate_log_crop))
        .route("/api/recognize", post(recognize))
        .route("/api/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .layer(DefaultBodyLimit::max(max_upload_bytes))
        .layer(axum::Extension(limits))
        .with_state(state)
}

/// A slot for one image analysis, or 503 with Retry-After when all are busy.
fn image_slot(limits: &Limits) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    limits.image_slots.clone().try_acquire_owned().map_err(|_| {
        crate::telemetry::metrics().http_rejected.with_label_values(&["busy"]).inc();
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", "all image analysis slots are busy; retry in a second").retry_after(1)
    })
}

/// Decodes an uploaded image within the pixel budget: refused above `max_pixels` (from the
/// header, before decoding), shrunk to `downscale_pixels` before detection; returns the image
/// and the factor from original to analysed coordinates.
fn budgeted_image(bytes: &[u8], limits: &Limits) -> Result<(crate::image::RgbImage, f32), ApiError> {
    let name = Path::new("upload");
    let (w, h) = crate::image::dimensions(bytes, name).map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_image", e.to_string()))?;
    if w as f64 * h as f64 > limits.max_pixels {
        crate::telemetry::metrics().http_rejected.with_label_values(&["too_large"]).inc();
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the image is {w}x{h} ({:.1} megapixels); at most {:.1} megapixels (http.max_image_mpix)", w as f64 * h as f64 / 1e6, limits.max_pixels / 1e6),
        ));
    }
    let img = crate::image::decode(bytes, name).map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_image", e.to_string()))?;
    Ok(crate::image::downscaled(img, limits.downscale_pixels))
}

/// Mutating endpoints: the bearer token, or a web UI session that the server's middleware has
/// checked (with its CSRF token) and marked with [`super::Authorized`].
fn authorize(state: &ApiState, headers: &HeaderMap, session: Option<&super::Authorized>) -> Result<(), ApiError> {
    let Some(token) = &state.token else { return Ok(()) };
    if session.is_some() {
        return Ok(());
    }
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if g == token => Ok(()),
        _ => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "this endpoint needs Authorization: Bearer <token>")),
    }
}

fn store(state: &ApiState) -> std::sync::MutexGuard<'_, Store> {
    state.store.lock().unwrap_or_else(|p| p.into_inner())
}

async fn list_persons(State(state): State<ApiState>) -> ApiResult {
    let persons = store(&state).persons().map_err(ApiError::internal)?;
    Ok(axum::Json(json!({"persons": persons})).into_response())
}

#[derive(Deserialize)]
struct NewPerson {
    name: String,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
}

async fn create_person(State(state): State<ApiState>, session: Option<axum::Extension<super::Authorized>>, headers: HeaderMap, body: Bytes) -> ApiResult {
    authorize(&state, &headers, session.as_deref())?;
    let p: NewPerson = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("expected {{\"name\": ..., \"metadata\": {{...}}}}: {e}")))?;
    if p.name.trim().is_empty() || p.name.len() > MAX_NAME_BYTES || p.name.chars().any(char::is_control) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("name must be 1 to {MAX_NAME_BYTES} bytes without control characters")));
    }
    if p.metadata.as_ref().is_some_and(|m| m.to_string().len() > MAX_METADATA_BYTES) {
        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("metadata must be at most {MAX_METADATA_BYTES} bytes of JSON")));
    }
    let mut st = store(&state);
    // A name taken in the store, or by a person of the config's gallery (in memory only).
    let in_gallery = state.gallery.read().map(|g| g.person_id(&p.name).is_some()).unwrap_or(false);
    if in_gallery || st.person_by_name(&p.name).map_err(ApiError::internal)?.is_some() {
        return Err(ApiError::new(StatusCode::CONFLICT, "conflict", format!("a person named `{}` exists", p.name)));
    }
    let id = st.ensure_person(&p.name, p.metadata.as_ref()).map_err(ApiError::internal)?;
    let row = st.person(id).map_err(ApiError::internal)?;
    Ok((StatusCode::CREATED, axum::Json(json!({"person": row}))).into_response())
}

fn parse_id(id: &str) -> Result<u64, ApiError> {
    id.parse().map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("`{id}` is not a person id")))
}

async fn get_person(State(state): State<ApiState>, UrlPath(id): UrlPath<String>) -> ApiResult {
    let id = parse_id(&id)?;
    let row = store(&state).person(id).map_err(ApiError::internal)?;
    match row {
        Some(p) => Ok(axum::Json(json!({"person": p})).into_response()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no person {id}"))),
    }
}

async fn delete_person(State(state): State<ApiState>, session: Option<axum::Extension<super::Authorized>>, headers: HeaderMap, UrlPath(id): UrlPath<String>) -> ApiResult {
    authorize(&state, &headers, session.as_deref())?;
    let id = parse_id(&id)?;
    // The store lock is held until the gallery has forgotten the person too, so an upload for
    // this person (which takes the same lock for its store and gallery writes) lands wholly
    // before the delete or finds the person gone.
    tokio::task::spawn_blocking(move || {
        let mut st = store(&state);
        if !st.remove_person(id).map_err(ApiError::internal)? {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no person {id}")));
        }
        state.gallery.write().unwrap_or_else(|p| p.into_inner()).remove(id);
        Ok(StatusCode::NO_CONTENT.into_response())
    })
    .await
    .map_err(ApiError::internal)?
}

#[derive(Deserialize)]
struct GroupsBody {
    groups: Vec<String>,
}

/// Most groups per person, and longest group name.
pub const MAX_GROUPS: usize = 32;
pub const MAX_GROUP_BYTES: usize = 64;

async fn set_groups(State(state): State<ApiState>, session: Option<axum::Extension<super::Authorized>>, headers: HeaderMap, UrlPath(id): UrlPath<String>, body: Bytes) -> ApiResult {
    authorize(&state, &headers, session.as_deref())?;
    let id = parse_id(&id)?;
    let body: GroupsBody = serde_json::from_slice(&body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("expected {{\"groups\": [\"name\", ...]}}: {e}")))?;
    if body.groups.len() > MAX_GROUPS || body.groups.iter().any(|g| g.is_empty() || g.len() > MAX_GROUP_BYTES) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("at most {MAX_GROUPS} groups of 1..={MAX_GROUP_BYTES} bytes each")));
    }
    tokio::task::spawn_blocking(move || {
        let mut st = store(&state);
        if !st.set_groups(id, &body.groups).map_err(ApiError::internal)? {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no person {id}")));
        }
        let row = st.person(id).map_err(ApiError::internal)?;
        Ok(axum::Json(json!({"person": row})).into_response())
    })
    .await
    .map_err(ApiError::internal)?
}

#[derive(Deserialize)]
struct LogQuery {
    /// RFC 3339 time, or an age such as `2h`.
    since: Option<String>,
    limit: Option<usize>,
}

fn audit_log(state: &ApiState) -> Result<crate::gate::audit::AuditLog, ApiError> {
    let spec = store(state).spec();
    crate::gate::audit::AuditLog::open_spec(&spec).map_err(ApiError::internal)
}

async fn gate_log(State(state): State<ApiState>, UrlPath(gate): UrlPath<String>, axum::extract::Query(q): axum::extract::Query<LogQuery>) -> ApiResult {
    let since = match q.since.as_deref() {
        None => None,
        Some(s) => Some(
            humantime::parse_rfc3339_weak(s)
                .or_else(|_| humantime::parse_duration(s).map(|d| std::time::SystemTime::now() - d))
                .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("since `{s}`: an RFC 3339 time or an age (30min, 2h, 7days)")))?,
        ),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    tokio::task::spawn_blocking(move || {
        let entries = audit_log(&state)?.entries(Some(&gate), since, limit).map_err(ApiError::internal)?;
        Ok(axum::Json(json!({"gate": gate, "entries": entries})).into_response())
    })
    .await
    .map_err(ApiError::internal)?
}

async fn gate_log_crop(State(state): State<ApiState>, UrlPath((gate, entry)): UrlPath<(String, String)>) -> ApiResult {
    let entry: i64 = entry.parse().map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("`{entry}` is not a log entry id")))?;
    tokio::task::spawn_blocking(move || match audit_log(&state)?.crop(&gate, entry).map_err(ApiError::internal)? {
        Some(jpeg) => Ok(([(header::CONTENT_TYPE, "image/jpeg")], jpeg).into_response()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no face crop for entry {entry} of gate {gate}"))),
    })
    .await
    .map_err(ApiError::internal)?
}

/// The image of a request: a multipart field named `image` (or the first file), or the raw body.
async fn image_bytes(req: Request) -> Result<Bytes, ApiError> {
    let is_multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let too_large = |e: String| {
        if e.contains("length limit") || e.contains("too large") {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "the image is larger than http.max_upload_mb")
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e)
        }
    };
    if is_multipart {
        let mut mp = Multipart::from_request(req, &()).await.map_err(|e| too_large(e.body_text()))?;
        while let Some(field) = mp.next_field().await.map_err(|e| too_large(e.body_text()))? {
            if field.name() == Some("image") || field.file_name().is_some() {
                return field.bytes().await.map_err(|e| too_large(e.body_text()));
            }
        }
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "multipart body has no `image` field"));
    }
    let body = Bytes::from_request(req, &()).await.map_err(|e| too_large(e.body_text()))?;
    if body.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "send an image as the body or as multipart field `image`"));
    }
    Ok(body)
}

async fn add_face(State(state): State<ApiState>, axum::Extension(limits): axum::Extension<Limits>, UrlPath(id): UrlPath<String>, req: Request) -> ApiResult {
    authorize(&state, req.headers(), req.extensions().get::<super::Authorized>())?;
    let id = parse_id(&id)?;
    let _slot = image_slot(&limits)?;
    let person = store(&state)
        .person(id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no person {id}")))?;
    let bytes = image_bytes(req).await?;
    let analyzer = state.analyzer.clone();
    let enrolled = tokio::task::spawn_blocking(move || {
        use sha2::Digest;
        let (img, _) = budgeted_image(&bytes, &limits)?;
        let mut a = analyzer.lock().unwrap_or_else(|p| p.into_inner());
        let model = a.embedder.model_id().to_string();
        let sha = format!("{:x}", sha2::Sha256::digest(&bytes));
        Ok::<_, ApiError>(enrollable_image(&mut a, &img, Path::new("upload"), None, sha).map(|e| {
            let crop = e.crop_jpeg.clone();
            (e, model, crop)
        }))
    })
    .await
    .map_err(ApiError::internal)??;
    let (e, model, crop) = enrolled.map_err(|e| match e {
        EnrollError::Image(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_image", e.to_string()),
        EnrollError::NoFace { .. } => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "no_face", "no face found in the image"),
        EnrollError::SeveralFaces { count, .. } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "several_faces", format!("{count} faces found and none clearly dominates; send a photo with one face ({e})"))
        }
        EnrollError::TooSmall { .. } => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "face_too_small", e.to_string()),
        EnrollError::Blurred { .. } => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "face_blurred", e.to_string()),
        EnrollError::Profile { .. } => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "face_turned", e.to_string()),
        other => ApiError::internal(other),
    })?;
    // Store and gallery change under one lock (see delete_person), off the async workers: a
    // person deleted while the image was analysed stays deleted and the upload gets 404.
    let (st, name) = (state.clone(), person.name.clone());
    let first_face = person.samples == 0;
    let (e, warnings) = tokio::task::spawn_blocking(move || {
        let mut store = store(&st);
        let mut warnings = Vec::new();
        if first_face {
            // A new person that lies within the threshold of someone else: the same person twice,
            // or a look-alike. Enrolled, with a warning.
            let g = st.gallery.read().unwrap_or_else(|p| p.into_inner());
            if let Some(m) = g.search(&e.embedding, 2).into_iter().find(|m| m.person_id != id && m.distance <= st.threshold) {
                warnings.push(format!("{name} lies within the threshold of {} (distance {:.3} <= {:.3}): the same person twice, or a look-alike", m.name, m.distance, st.threshold));
            }
        }
        store.add_face(id, &e.embedding, &model, e.quality, &e.image_sha256, crop.as_deref()).map_err(|err| match err {
            crate::gallery::store::StoreError::NoPerson(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no person {id} (deleted while the image was analysed)")),
            other => ApiError::internal(other),
        })?;
        st.gallery.write().unwrap_or_else(|p| p.into_inner()).add_with_id(id, &name, e.embedding.clone()).map_err(ApiError::internal)?;
        Ok::<_, ApiError>((e, warnings))
    })
    .await
    .map_err(ApiError::internal)??;
    let f = &e.face;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"person_id": id, "bbox": [f.bbox.x1, f.bbox.y1, f.bbox.x2, f.bbox.y2], "score": f.score, "quality": e.quality, "warnings": warnings})),
    )
        .into_response())
}

/// Puts a person's samples from the store back into the shared gallery (after a face was
/// removed or the person renamed). Called with the store locked.
fn reload_person(st: &Store, gallery: &SharedGallery, id: u64) -> Result<(), ApiError> {
    let person = st.person(id).map_err(ApiError::internal)?;
    let samples = st.samples(Some(id)).map_err(ApiError::internal)?;
    let mut g = gallery.write().unwrap_or_else(|p| p.into_inner());
    g.remove(id);
    if let Some(p) = person {
        for s in samples {
            g.add_with_id(id, &p.name, s.embedding).map_err(ApiError::internal)?;
        }
    }
    Ok(())
}

async fn list_faces(State(state): State<ApiState>, UrlPath(id): UrlPath<String>) -> ApiResult {
    let id = parse_id(&id)?;
    let st = store(&state);
    if st.person(id).map_err(ApiError::internal)?.is_none() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no person {id}")));
    }
    let crops = st.samples_with_crops(id).map_err(ApiError::internal)?;
    let faces: Vec<_> = st
        .samples(Some(id))
        .map_err(ApiError::internal)?
        .into_iter()
        .map(|s| json!({"id": s.id, "quality": s.quality, "created": s.created, "model_id": s.model_id, "source": s.image_sha256, "crop": crops.contains(&s.id)}))
        .collect();
    Ok(axum::Json(json!({"person_id": id, "faces": faces})).into_response())
}

async fn face_crop(State(state): State<ApiState>, UrlPath(sample): UrlPath<String>) -> ApiResult {
    let sample = parse_id(&sample)?;
    match store(&state).sample_crop(sample).map_err(ApiError::internal)? {
        Some(jpeg) => Ok(([(header::CONTENT_TYPE, "image/jpeg"), (header::CACHE_CONTROL, "private, max-age=3600")], jpeg).into_response()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no crop kept for face {sample} (enrolled before crops were kept, or from the command line)"))),
    }
}

async fn delete_face(State(state): State<ApiState>, session: Option<axum::Extension<super::Authorized>>, headers: HeaderMap, UrlPath(sample): UrlPath<String>) -> ApiResult {
    authorize(&state, &headers, session.as_deref())?;
    let sample = parse_id(&sample)?;
    tokio::task::spawn_blocking(move || {
        let mut st = store(&state);
        let Some(person) = st.remove_sample(sample).map_err(ApiError::internal)? else {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no face {sample}")));
        };
        reload_person(&st, &state.gallery, person)?;
        Ok(StatusCode::NO_CONTENT.into_response())
    })
    .await
    .map_err(ApiError::internal)?
}

#[derive(Deserialize)]
struct RenameBody {
    name: String,
}

async fn rename_person(State(state): State<ApiState>, session: Option<axum::Extension<super::Authorized>>, headers: HeaderMap, UrlPath(id): UrlPath<String>, body: Bytes) -> ApiResult {
    authorize(&state, &headers, session.as_deref())?;
    let id = parse_id(&id)?;
    let body: RenameBody = serde_json::from_slice(&body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("expected {{\"name\": \"...\"}}: {e}")))?;
    let name = body.name.trim().to_string();
    if name.is_empty() || name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("name must be 1 to {MAX_NAME_BYTES} bytes without control characters")));
    }
    tokio::task::spawn_blocking(move || {
        let mut st = store(&state);
        let holder = state.gallery.read().map(|g| g.person_id(&name)).unwrap_or(None);
        if holder.is_some_and(|h| h != id) {
            return Err(ApiError::new(StatusCode::CONFLICT, "conflict", format!("a person named `{name}` exists")));
        }
        match st.rename_person(id, &name) {
            Ok(true) => {}
            Ok(false) => return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no person {id}"))),
            Err(crate::gallery::store::StoreError::NameTaken(n)) => return Err(ApiError::new(StatusCode::CONFLICT, "conflict", format!("a person named `{n}` exists"))),
            Err(e) => return Err(ApiError::internal(e)),
        }
        reload_person(&st, &state.gallery, id)?;
        let row = st.person(id).map_err(ApiError::internal)?;
        Ok(axum::Json(json!({"person": row})).into_response())
    })
    .await
    .map_err(ApiError::internal)?
}

async fn recognize(State(state): State<ApiState>, axum::Extension(limits): axum::Extension<Limits>, req: Request) -> ApiResult {
    let _slot = image_slot(&limits)?;
    let bytes = image_bytes(req).await?;
    let analyzer = state.analyzer.clone();
    let analyzed = tokio::task::spawn_blocking(move || {
        let (w, h) = crate::image::dimensions(&bytes, Path::new("upload")).unwrap_or((0, 0));
        let (img, scale) = budgeted_image(&bytes, &limits)?;
        let mut a = analyzer.lock().unwrap_or_else(|p| p.into_inner());
        let mut faces = a.analyze(&img).map_err(ApiError::internal)?;
        // Back to the coordinates of the image as sent.
        for (f, _) in faces.iter_mut() {
            let k = 1.0 / scale;
            f.bbox = crate::detect::BBox { x1: f.bbox.x1 * k, y1: f.bbox.y1 * k, x2: f.bbox.x2 * k, y2: f.bbox.y2 * k };
            for l in f.landmarks.iter_mut() {
                l[0] *= k;
                l[1] *= k;
            }
        }
        Ok::<_, ApiError>((w, h, faces))
    })
    .await
    .map_err(ApiError::internal)??;
    let (width, height, faces) = analyzed;
    let g = state.gallery.read().map_err(|_| ApiError::internal("gallery lock poisoned"))?;
    let out: Vec<_> = faces
        .iter()
        .map(|(f, e)| {
            let matches = e.as_ref().map(|e| g.search(e, 2)).unwrap_or_default();
            let (person, distance) = crate::identify::decide(&matches, state.threshold, state.margin);
            let mut v = json!({
                "bbox": [f.bbox.x1, f.bbox.y1, f.bbox.x2, f.bbox.y2],
                "score": f.score,
                "landmarks": f.landmarks,
                "person": person.as_ref().map(|p| p.1.clone()).unwrap_or_else(|| crate::events::UNKNOWN.to_string()),
                "person_id": person.as_ref().map(|p| p.0),
                "distance": distance,
            });
            if let (None, Some(m)) = (&person, matches.first()) {
                // The nearest person, for tuning: not a name given to this face.
                v["nearest_person"] = json!(m.name);
                v["nearest_distance"] = json!(m.distance);
            }
            v
        })
        .collect();
    Ok(axum::Json(json!({"width": width, "height": height, "threshold": state.threshold, "faces": out})).into_response())
}

const OPENAPI: &str = r##"{
  "openapi": "3.0.3",
  "info": {"title": "facestream", "version": "1", "description": "Gallery management and recognition. Mutating endpoints need `Authorization: Bearer <token>` when http.token is set. Errors: {\"error\": {\"code\", \"message\"}}."},
  "components": {
    "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    "schemas": {
      "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {"code": {"type": "string"}, "message": {"type": "string"}}, "required": ["code", "message"]}}},
      "Person": {"type": "object", "properties": {"id": {"type": "integer"}, "name": {"type": "string"}, "metadata": {"type": "object"}, "created": {"type": "integer"}, "updated": {"type": "integer"}, "samples": {"type": "integer"}}},
      "Face": {"type": "object", "properties": {"bbox": {"type": "array", "items": {"type": "number"}}, "score": {"type": "number"}, "landmarks": {"type": "array"}, "person": {"type": "string"}, "person_id": {"type": "integer", "nullable": true}, "distance": {"type": "number", "nullable": true}, "nearest_person": {"type": "string", "description": "unknown faces only: the nearest enrolled person (NOT a name given to the face)"}, "nearest_distance": {"type": "number"}}}
    }
  },
  "paths": {
    "/api/persons": {
      "get": {"summary": "List persons", "responses": {"200": {"description": "persons", "content": {"application/json": {"schema": {"type": "object", "properties": {"persons": {"type": "array", "items": {"$ref": "#/components/schemas/Person"}}}}}}}}},
      "post": {"summary": "Create a person", "security": [{"bearer": []}], "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "properties": {"name": {"type": "string"}, "metadata": {"type": "object"}}, "required": ["name"]}}}},
               "responses": {"201": {"description": "created"}, "400": {"description": "bad request", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "401": {"description": "no or wrong token"}, "409": {"description": "name taken"}}}
    },
    "/api/persons/{id}": {
      "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
      "get": {"summary": "Get a person", "responses": {"200": {"description": "the person"}, "404": {"description": "no such person"}}},
      "delete": {"summary": "Delete a person and all their faces", "security": [{"bearer": []}], "responses": {"204": {"description": "deleted"}, "401": {"description": "no or wrong token"}, "404": {"description": "no such person"}}},
      "patch": {"summary": "Rename a person", "security": [{"bearer": []}], "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}}},
                "responses": {"200": {"description": "the renamed person"}, "400": {"description": "bad name"}, "404": {"description": "no such person"}, "409": {"description": "name taken"}}}
    },
    "/api/faces/{id}": {
      "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
      "delete": {"summary": "Remove one face sample (cameras stop matching it at once)", "security": [{"bearer": []}], "responses": {"204": {"description": "removed"}, "404": {"description": "no such face"}}}
    },
    "/api/faces/{id}/crop": {
      "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
      "get": {"summary": "The aligned face crop kept at enrollment (JPEG)", "responses": {"200": {"description": "image/jpeg"}, "404": {"description": "no crop kept"}}}
    },
    "/api/cameras/{id}/frame.jpg": {
      "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
      "get": {"summary": "The camera's newest frame for the live view (at most http.live_width wide; kept only while somebody watches)", "responses": {"200": {"description": "image/jpeg, header X-Frame-Seq"}, "404": {"description": "no such camera"}, "503": {"description": "no frame yet; retry (Retry-After)"}}}
    },
    "/api/ui/stream": {
      "get": {"summary": "Server-Sent Events for the web UI: `event` (identity events), `boxes` (live track boxes), `cameras` (states, every second)", "responses": {"200": {"description": "text/event-stream"}}}
    },
    "/api/events/recent": {
      "parameters": [{"name": "camera", "in": "query", "schema": {"type": "string"}}, {"name": "person", "in": "query", "schema": {"type": "string"}, "description": "part of a person's or visitor's name"}, {"name": "kind", "in": "query", "schema": {"type": "string"}}, {"name": "limit", "in": "query", "schema": {"type": "integer"}}],
      "get": {"summary": "The newest events (up to 500 kept in memory), newest first", "responses": {"200": {"description": "{\"events\": [...]}"}}}
    },
    "/api/persons/{id}/faces": {
      "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
      "get": {"summary": "A person's face samples (id, quality, created, model, whether a crop is kept)", "responses": {"200": {"description": "faces"}, "404": {"description": "no such person"}}},
      "post": {"summary": "Add a face image (exactly one face) to a person", "security": [{"bearer": []}],
               "requestBody": {"required": true, "content": {"multipart/form-data": {"schema": {"type": "object", "properties": {"image": {"type": "string", "format": "binary"}}}}, "image/jpeg": {"schema": {"type": "string", "format": "binary"}}, "image/png": {"schema": {"type": "string", "format": "binary"}}}},
               "responses": {"201": {"description": "enrolled"}, "404": {"description": "no such person"}, "413": {"description": "image too large"}, "422": {"description": "bad image, no face or several faces", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    },
    "/api/persons/{id}/groups": {
      "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
      "put": {"summary": "Replace a person's groups (gates' allow_groups)", "security": [{"bearer": []}],
              "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "properties": {"groups": {"type": "array", "items": {"type": "string"}}}, "required": ["groups"]}}}},
              "responses": {"200": {"description": "the person with its metadata"}, "400": {"description": "bad body"}, "404": {"description": "no such person"}}}
    },
    "/api/gates/{gate}/log": {
      "parameters": [{"name": "gate", "in": "path", "required": true, "schema": {"type": "string"}}, {"name": "since", "in": "query", "schema": {"type": "string"}, "description": "RFC 3339 time or an age (2h)"}, {"name": "limit", "in": "query", "schema": {"type": "integer"}}],
      "get": {"summary": "The gate's decisions, newest first (outcome, reason, person, evidence, latency)", "responses": {"200": {"description": "entries"}}}
    },
    "/api/gates/{gate}/log/{entry}/crop": {
      "parameters": [{"name": "gate", "in": "path", "required": true, "schema": {"type": "string"}}, {"name": "entry", "in": "path", "required": true, "schema": {"type": "integer"}}],
      "get": {"summary": "The face crop (JPEG) a decision rests on", "responses": {"200": {"description": "image/jpeg"}, "404": {"description": "no crop"}}}
    },
    "/api/snapshots/{id}": {
      "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}, {"name": "kind", "in": "query", "schema": {"type": "string", "enum": ["face", "context"]}}],
      "get": {"summary": "A track's best shot (JPEG): the face crop, or the context frame", "responses": {"200": {"description": "image/jpeg"}, "404": {"description": "no such snapshot"}}}
    },
    "/api/visitors": {
      "parameters": [{"name": "all", "in": "query", "schema": {"type": "boolean"}, "description": "also merged and named visitors"}],
      "get": {"summary": "Visitors (unknown faces grouped), oldest first", "responses": {"200": {"description": "visitors"}}}
    },
    "/api/visitors/{id}": {
      "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}, "description": "visitor-<n>"}],
      "get": {"summary": "One visitor with its visits and what it is now (after merges)", "responses": {"200": {"description": "visitor"}, "404": {"description": "no such visitor"}}},
      "delete": {"summary": "Forget a visitor: faces, best shots, sightings, visits", "responses": {"200": {"description": "forgotten"}, "404": {"description": "no such visitor"}}}
    },
    "/api/visitors/{id}/name": {
      "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
      "post": {"summary": "Make a visitor a person: its best faces are enrolled under the name", "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}}}, "responses": {"200": {"description": "named"}, "404": {"description": "no such visitor"}, "409": {"description": "refused (no good face, already named)"}}}
    },
    "/api/visitors/{id}/ignore": {
      "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
      "post": {"summary": "Never count or name this visitor (a poster, a TV); {\"ignored\": false} reverts", "responses": {"200": {"description": "done"}, "404": {"description": "no such visitor"}}}
    },
    "/api/visits": {
      "parameters": [{"name": "day", "in": "query", "schema": {"type": "string"}, "description": "YYYY-MM-DD, today, yesterday"}, {"name": "site", "in": "query", "schema": {"type": "string"}}],
      "get": {"summary": "The day's visits: unique known people and visitors, returning ones, per camera and hour", "responses": {"200": {"description": "report"}, "400": {"description": "bad day"}}}
    },
    "/api/forget/{subject}": {
      "parameters": [{"name": "subject", "in": "path", "required": true, "schema": {"type": "string"}, "description": "a person's name or visitor-<n>"}],
      "post": {"summary": "Forget a person or visitor entirely (faces, samples, best shots, sightings, visits, gate log)", "responses": {"200": {"description": "forgotten"}, "404": {"description": "no such person or visitor"}}}
    },
    "/api/recognize": {
      "post": {"summary": "Every face of an image with its identity",
               "requestBody": {"required": true, "content": {"multipart/form-data": {"schema": {"type": "object", "properties": {"image": {"type": "string", "format": "binary"}}}}, "image/jpeg": {"schema": {"type": "string", "format": "binary"}}}},
               "responses": {"200": {"description": "faces", "content": {"application/json": {"schema": {"type": "object", "properties": {"width": {"type": "integer"}, "height": {"type": "integer"}, "threshold": {"type": "number"}, "faces": {"type": "array", "items": {"$ref": "#/components/schemas/Face"}}}}}}}, "422": {"description": "not an image"}}}
    }
  }
}"##;
