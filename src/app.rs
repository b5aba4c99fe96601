//! The application runner that `run`, `bench` and the tests share: loads the gallery (the store
//! and the config's people), starts the HTTP server with the gallery API, the pipeline and the
//! housekeeping loop (swaps in gallery indexes rebuilt in the background, keeps
//! `facestream_gallery_persons` current), and stops them in order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::cluster::sync::SyncSetup;
use crate::cluster::{self, ClusterState, Leases, NodeSetup};
use crate::config::Config;
use crate::events::EventSink;
use crate::gallery::store::{Store, StoreError};
use crate::gallery::{Gallery, SharedGallery};
use crate::http::{self, AppState, HttpError, Server};
use crate::identify::OperatingPoint;
use crate::ingest::CameraState;
use crate::photo::{Analyzer, EnrollError, PhotoError, enroll_photos};
use crate::telemetry::metrics;
use crate::topology::{self, Running, Subscription, TopologyError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Photo(#[from] PhotoError),
    #[error(transparent)]
    Enroll(#[from] EnrollError),
    #[error(transparent)]
    Gallery(#[from] crate::gallery::GalleryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    Gate(#[from] crate::gate::GateError),
    #[error(transparent)]
    Visitors(#[from] crate::visitors::VisitorsError),
    #[error("cannot start the housekeeping thread: {0}")]
    Thread(std::io::Error),
}

/// What to start besides the pipeline.
#[derive(Default)]
pub struct AppOptions {
    /// Start the HTTP server (when the config enables it) with the gallery API.
    pub http: bool,
    /// Sinks besides the configured ones.
    pub extra_sinks: Vec<Box<dyn EventSink>>,
    /// Applications on the decisions bus.
    pub apps: Vec<Subscription>,
    /// Shifts the visitors application's clock (tests replay clips on "the next day").
    pub clock_offset: std::time::Duration,
    /// In a cluster: the gallery change log's position when the gallery was loaded (the sync
    /// applies everything after it).
    pub gallery_seq: i64,
}

/// The gallery `run` starts with (the store's persons, then the config's people, in memory) and
/// what the gallery API needs: the store and an analyzer.
pub struct LoadedGallery {
    pub gallery: Gallery,
    pub store: Store,
    pub analyzer: Analyzer,
    /// The shared database's change log position before the load (0 with SQLite).
    pub seq: i64,
}

/// Opens the store, loads it and enrolls the config's people.
pub fn load_gallery(cfg: &Config) -> Result<LoadedGallery, AppError> {
    let photos = cfg.gallery.photos(&cfg.base_dir)?;
    let mut gallery = cfg.gallery.new_gallery();
    let mut analyzer = Analyzer::new(cfg)?;
    let spec = cfg.store_spec();
    // Read the change log's position first: a change made during the load is applied again by
    // the sync (harmless), never missed.
    let seq = match &spec.database {
        Some(db) => crate::cluster::sync::current_seq(db)?,
        None => 0,
    };
    let store = spec.open()?;
    let n = store.load_into(&mut gallery, analyzer.embedder.model_id())?;
    tracing::info!(store = %store.location, samples = n, persons = gallery.len(), "gallery store loaded");
    let n = enroll_photos(&mut analyzer, &photos, &mut gallery)?;
    tracing::info!(persons = gallery.len(), photos = n, "gallery ready");
    Ok(LoadedGallery { gallery, store, analyzer, seq })
}

/// A running application.
pub struct App {
    pub running: Running,
    pub server: Option<Server>,
    pub gallery: SharedGallery,
    pub state: AppState,
    /// This node's view of the cluster (with `[cluster]`).
    pub cluster: Option<Arc<ClusterState>>,
    housekeeping_stop: Arc<AtomicBool>,
    housekeeping: Option<JoinHandle<()>>,
    cluster_threads: Vec<JoinHandle<()>>,
}

impl App {
    /// Starts everything on a gallery from [`load_gallery`] (with the gallery API when HTTP is
    /// on); the config must have been validated for running.
    pub fn start(cfg: &Config, loaded: LoadedGallery, opts: AppOptions) -> Result<App, AppError> {
        let LoadedGallery { gallery, store, analyzer, seq } = loaded;
        let opts = AppOptions { gallery_seq: seq, ..opts };
        Self::start_on(cfg, Arc::new(RwLock::new(gallery)), Some((store, analyzer)), opts)
    }

    /// Starts on a shared gallery; `api` (the store and an analyzer) serves the gallery API.
    pub fn start_on(cfg: &Config, gallery: SharedGallery, api: Option<(Store, Analyzer)>, mut opts: AppOptions) -> Result<App, AppError> {
        let persons = gallery.read().map(|g| g.len()).unwrap_or(0);
        let setup = crate::gate::GateSetup {
            gates: &cfg.gates,
            log: &cfg.gate_log,
            infer: &cfg.infer,
            identify: &cfg.identify,
            base_dir: &cfg.base_dir,
            gallery: cfg.store_spec(),
            people_groups: cfg.gallery.people.iter().map(|p| (p.name.clone(), p.groups.clone())).collect(),
            gallery_size: persons,
            embed_card: cfg.embed_card(),
        };
        if let Some(gates) = crate::gate::Gates::new(setup)? {
            let observe = gates.observe();
            opts.apps.push(Subscription { name: "gates", capacity: 4096, observe, run: Box::new(move |io| gates.run(io.updates, io.events)) });
        }
        let vsetup = crate::visitors::VisitorsSetup {
            snapshots: &cfg.snapshots,
            visitors: &cfg.visitors,
            visits: &cfg.visits,
            identify: &cfg.identify,
            embed_card: cfg.embed_card(),
            base_dir: &cfg.base_dir,
            store: cfg.store_spec(),
            clock_offset: opts.clock_offset,
        };
        if let Some(v) = crate::visitors::Visitors::new(vsetup)? {
            crate::visitors::precreate_series(&cfg.cameras.iter().filter(|c| c.enabled).map(|c| c.id.as_str()).collect::<Vec<_>>());
            opts.apps.push(Subscription { name: "visitors", capacity: 4096, observe: Vec::new(), run: Box::new(move |io| v.run(io.updates, io.events)) });
        }
        let info = http::ui::UiInfo { gates: cfg.gates.iter().map(|g| g.id.clone()).collect(), visitors: cfg.visitors.enabled, snapshots: cfg.snapshots.enabled, ..Default::default() };
        let state = AppState::new(gallery.clone(), cfg.http.sse_buffer).configured(&cfg.http, info);
        let housekeeping_stop = Arc::new(AtomicBool::new(false));
        let model_id = api.as_ref().map(|(_, a)| a.embedder.model_id().to_string());
        let cluster = cluster_start(cfg, &gallery, (opts.gallery_seq, model_id), &housekeeping_stop)?;
        let server = if opts.http && cfg.http.enabled {
            // The API shares the gallery with the cameras: an enrollment is searchable at once.
            let api = api.map(|(store, analyzer)| {
                let persons = gallery.read().map(|g| g.len()).unwrap_or(0);
                let point = OperatingPoint::for_embedder(&cfg.identify, cfg.embed.threshold, &analyzer.embedder, persons);
                http::api::router_with(
                http::api::ApiState {
                    gallery: gallery.clone(),
                    store: Arc::new(Mutex::new(store)),
                    analyzer: Arc::new(Mutex::new(analyzer)),
                    token: cfg.http.token.clone(),
                    threshold: point.threshold,
                    margin: point.margin,
                },
                &cfg.http,
            )
            });
            let api = match (api, visitors_http(cfg, &gallery)) {
                (Some(a), Some(v)) => Some(a.merge(v)),
                (a, v) => a.or(v),
            };
            let api = match (api, cluster.as_ref().map(|c| cluster_http(c.state.clone()))) {
                (Some(a), Some(c)) => Some(a.merge(c)),
                (a, c) => a.or(c),
            };
            Some(http::serve(&cfg.http, state.clone(), api)?)
        } else {
            None
        };
        let mut sinks: Vec<Box<dyn EventSink>> = vec![Box::new(state.event_sink())];
        sinks.extend(opts.extra_sinks);
        let live = (server.is_some() && cfg.http.ui).then(|| state.live.clone());
        let leases = cluster.as_ref().map(|c| c.leases.clone());
        let running = topology::start_with(cfg, gallery.clone(), sinks, opts.apps, live, leases)?;
        if let Ok(mut c) = state.cameras.lock() {
            *c = running.cameras.clone();
        }
        state.models_loaded.store(true, Ordering::SeqCst);
        let housekeeping = {
            let (g, stop) = (gallery.clone(), housekeeping_stop.clone());
            std::thread::Builder::new().name("housekeeping".into()).spawn(move || housekeeping_loop(&g, &stop)).map_err(AppError::Thread)?
        };
        let (cluster, cluster_threads) = match cluster {
            Some(c) => (Some(c.state.clone()), c.spawn()?),
            None => (None, Vec::new()),
        };
        Ok(App { running, server, gallery, state, cluster, housekeeping_stop, housekeeping: Some(housekeeping), cluster_threads })
    }

    /// Runs until every camera has ended, `limit` has passed or `signalled` is set; then drains
    /// the pipeline (at most `drain`). False when the pipeline did not drain in time.
    pub fn run_until(&self, limit: Option<Duration>, signalled: &AtomicBool, drain: Duration) -> bool {
        let started = Instant::now();
        loop {
            if self.running.is_finished() {
                return true;
            }
            if signalled.load(Ordering::SeqCst) || limit.is_some_and(|l| started.elapsed() >= l) {
                tracing::info!("stopping: draining the pipeline");
                self.running.stop();
                let deadline = Instant::now() + drain;
                while !self.running.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return self.running.is_finished();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Cameras that ended failed, with their last error.
    pub fn failed_cameras(&self) -> Vec<String> {
        self.running
            .camera_statuses()
            .into_iter()
            .filter(|c| c.state == CameraState::Failed)
            .map(|c| format!("{} ({})", c.id, c.last_error.unwrap_or_default()))
            .collect()
    }

    /// Waits for the pipeline, then stops housekeeping and the HTTP server.
    pub fn finish(mut self) {
        self.running.join();
        self.housekeeping_stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.housekeeping.take() {
            let _ = h.join();
        }
        for h in self.cluster_threads.drain(..) {
            let _ = h.join();
        }
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
    }
}

/// A node joining its cluster: registered (the database reached, migrations applied) before any
/// camera starts; the node and sync threads start once the pipeline runs.
struct ClusterStart {
    node: NodeSetup,
    client: postgres::Client,
    sync: SyncSetup,
    leases: Arc<Leases>,
    state: Arc<ClusterState>,
}

impl ClusterStart {
    fn spawn(self) -> Result<Vec<JoinHandle<()>>, AppError> {
        let Self { node, client, sync, .. } = self;
        let a = std::thread::Builder::new().name("cluster-node".into()).spawn(move || cluster::run_node(node, client)).map_err(AppError::Thread)?;
        let b = std::thread::Builder::new().name("gallery-sync".into()).spawn(move || cluster::sync::run(sync)).map_err(AppError::Thread)?;
        Ok(vec![a, b])
    }
}

fn cluster_start(cfg: &Config, gallery: &SharedGallery, (seq, model_id): (i64, Option<String>), stop: &Arc<AtomicBool>) -> Result<Option<ClusterStart>, AppError> {
    let Some(database) = cfg.cluster.database.clone() else { return Ok(None) };
    let leases = Arc::new(Leases::new(cfg.cameras.iter().filter(|c| c.enabled).map(|c| c.id.as_str())));
    let state = Arc::new(ClusterState::default());
    let node = NodeSetup {
        database: database.clone(),
        node: cfg.cluster.node_name(),
        capacity: cfg.cluster.own_capacity(),
        url: cfg.cluster.url.clone(),
        lease: Duration::from_secs_f64(cfg.cluster.lease_s),
        leases: leases.clone(),
        state: state.clone(),
        stop: stop.clone(),
    };
    let client = cluster::join(&node)?;
    tracing::info!(node = %node.node, capacity = node.capacity, cameras = leases.cameras.len(), lease_s = cfg.cluster.lease_s, "joined the cluster");
    // The running embedder's id (with its head): only its samples are searchable here.
    let model_id = model_id.unwrap_or_else(|| crate::infer::ModelCard::read(&cfg.embed_card()).map(|c| c.id).unwrap_or_default());
    let sync = SyncSetup { database, gallery: gallery.clone(), model_id, from_seq: seq, stop: stop.clone() };
    Ok(Some(ClusterStart { node, client, sync, leases, state }))
}

/// `GET /api/cluster`: the nodes, their heartbeats and cameras, who runs what.
fn cluster_http(state: Arc<ClusterState>) -> axum::Router {
    axum::Router::new().route(
        "/api/cluster",
        axum::routing::get(move || {
            let s = state.clone();
            async move { axum::Json(s.view()) }
        }),
    )
}

/// The visitors' API routes when snapshots, visitors or visits are on.
fn visitors_http(cfg: &Config, gallery: &SharedGallery) -> Option<axum::Router> {
    if !cfg.snapshots.enabled && !cfg.visitors.enabled && !cfg.visits.enabled {
        return None;
    }
    let model_id = crate::infer::ModelCard::read(&cfg.embed_card()).ok()?.id;
    let threshold = OperatingPoint::for_card(&cfg.identify, cfg.embed.threshold, &cfg.embed_card(), 1).ok()?.threshold;
    Some(http::visitors::router(http::visitors::VisitorsHttp {
        places: Arc::new(crate::visitors::ops::places(&cfg.snapshots, &cfg.visits, &cfg.base_dir, &cfg.store_spec(), model_id)),
        gallery: gallery.clone(),
        timezone: cfg.visits.timezone.clone(),
        enroll_faces: cfg.visitors.enroll_faces,
        min_quality: cfg.visitors.min_quality,
        threshold,
    }))
}

/// Swaps in finished background index rebuilds and keeps the gallery gauge current.
fn housekeeping_loop(gallery: &SharedGallery, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        if gallery.read().is_ok_and(|g| g.rebuild_ready())
            && let Ok(mut g) = gallery.write() {
                g.maintain();
            }
        if let Ok(g) = gallery.read() {
            metrics().gallery_size.set(g.len() as i64);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
