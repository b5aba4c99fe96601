//! Access-control gates, an application on the decisions bus: per gate a zone of a camera, who
//! may pass when, a strict identity rule (see [`engine`]), optional liveness (a passive
//! anti-spoofing model and a motion check over the track), `gate_decision` events, signed
//! commands to a webhook and an MQTT topic (see [`signing`]), an audit log in the store and
//! metrics. The gate's camera is observed: its frames and embeddings are served before the
//! monitoring cameras' and embedded at the gate's own interval.

pub mod antispoof;
pub mod audit;
pub mod config;
pub mod engine;
pub mod liveness;
pub mod schedule;
pub mod signing;
pub mod zone;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub use config::{GateConfig, GateLogConfig};
pub use engine::{GateDecision, GateEngine, Outcome, Reason};

use crate::events::{Event, EventBody};
use crate::identify::TrackUpdate;
use crate::queue::{Tx, WhenFull, bounded};
use crate::telemetry::metrics;
use crate::track::stage::ObservePolicy;

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Infer(#[from] crate::infer::InferError),
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    #[error("gate `{gate}`: cannot start its MQTT command client: {reason}")]
    Mqtt { gate: String, reason: String },
    #[error("cannot start the gate thread: {0}")]
    Thread(std::io::Error),
}

impl engine::SpoofScorer for antispoof::AntiSpoof {
    fn score(&mut self, frame: &crate::image::RgbImage, bbox: &crate::detect::BBox) -> Option<f32> {
        match antispoof::AntiSpoof::score(self, frame, bbox) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "anti-spoofing model failed on a face");
                None
            }
        }
    }
}

/// The command a granted decision sends (the signed envelope's payload).
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub struct Command {
    pub command: String,
    pub gate: String,
    pub person: String,
    pub track_id: String,
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_id: Option<i64>,
}

/// Sends a gate's signed commands from a thread of its own (a slow receiver never delays a
/// decision); when its queue is full the command is dropped and counted.
struct Actuator {
    tx: Tx<Command>,
}

impl Actuator {
    fn start(gate: &GateConfig, key: String) -> Result<Option<Self>, GateError> {
        if gate.webhook.is_none() && gate.mqtt.is_none() {
            return Ok(None);
        }
        let id = gate.id.clone();
        let (tx, rx) = bounded::<Command>(64, WhenFull::DropNewest, metrics().gate_commands.with_label_values(&[&id, "queue", "dropped"]));
        let mqtt = match &gate.mqtt {
            Some(m) => {
                let mut opts = rumqttc::MqttOptions::new(format!("facestream-gate-{id}-{}", std::process::id()), m.host.clone(), m.port);
                opts.set_keep_alive(Duration::from_secs(15));
                if let (Some(u), Some(p)) = (&m.username, &m.password) {
                    opts.set_credentials(u.clone(), p.clone());
                }
                let (client, mut connection) = rumqttc::Client::new(opts, 64);
                let gid = id.clone();
                std::thread::Builder::new()
                    .name(format!("gate-{id}-mqtt"))
                    .spawn(move || {
                        for n in connection.iter() {
                            if let Err(e) = n {
                                tracing::warn!(gate = %gid, error = %e, "gate MQTT connection error; retrying");
                                std::thread::sleep(Duration::from_secs(1));
                            }
                        }
                    })
                    .map_err(|e| GateError::Mqtt { gate: id.clone(), reason: e.to_string() })?;
                Some((client, gate.command_topic().unwrap_or_default()))
            }
            None => None,
        };
        let webhook = gate.webhook.clone();
        std::thread::Builder::new()
            .name(format!("gate-{id}-commands"))
            .spawn(move || {
                let m = metrics();
                let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(3))).build().into();
                for cmd in rx {
                    let payload = serde_json::to_string(&cmd).unwrap_or_default();
                    let ts = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
                    let env = signing::sign(key.as_bytes(), &cmd.gate, ts, signing::nonce(), payload);
                    let body = serde_json::to_string(&env).unwrap_or_default();
                    if let Some((client, topic)) = &mqtt {
                        let r = client.try_publish(topic.clone(), rumqttc::QoS::AtLeastOnce, false, body.clone());
                        m.gate_commands.with_label_values(&[cmd.gate.as_str(), "mqtt", if r.is_ok() { "sent" } else { "failed" }]).inc();
                    }
                    if let Some(url) = &webhook {
                        let r = agent.post(url).header("Content-Type", "application/json").send(body.as_bytes());
                        let ok = matches!(&r, Ok(resp) if resp.status().is_success());
                        if !ok {
                            tracing::warn!(gate = %cmd.gate, url = %url, result = ?r.as_ref().map(|x| x.status()), "gate webhook command failed");
                        }
                        m.gate_commands.with_label_values(&[cmd.gate.as_str(), "webhook", if ok { "sent" } else { "failed" }]).inc();
                    }
                }
            })
            .map_err(GateError::Thread)?;
        Ok(Some(Self { tx }))
    }
}

/// What the gates need from the rest of the configuration.
pub struct GateSetup<'a> {
    pub gates: &'a [GateConfig],
    pub log: &'a GateLogConfig,
    pub infer: &'a crate::infer::InferConfig,
    pub identify: &'a crate::identify::IdentifyConfig,
    /// Folder relative paths (secret files) resolve against.
    pub base_dir: &'a std::path::Path,
    /// The gallery (the SQLite store or the cluster's database): persons' groups are looked up
    /// there, and the audit log is a table beside it.
    pub gallery: crate::gallery::store::StoreSpec,
    /// Groups of the config's `[[gallery.people]]`.
    pub people_groups: HashMap<String, Vec<String>>,
    pub gallery_size: usize,
    /// The embedder's model card (`Config::embed_card`): thresholds come from its calibration.
    pub embed_card: std::path::PathBuf,
}

/// The groups of persons: the config's `[[gallery.people]]` groups, then the store's metadata
/// (`{"groups": [...]}`), looked up when a gate decides (so an edit applies at once).
fn group_lookup(from_config: HashMap<String, Vec<String>>, spec: crate::gallery::store::StoreSpec) -> engine::Groups {
    let mut store: Option<crate::gallery::store::Store> = None;
    Box::new(move |_id, name| {
        let mut groups = from_config.get(name).cloned().unwrap_or_default();
        if store.is_none() {
            store = spec.open().ok();
        }
        if let Some(row) = store.as_ref().and_then(|s| s.person_by_name(name).ok().flatten()) {
            groups.extend(crate::gallery::store::groups_of(&row.metadata));
        }
        groups
    })
}

/// Encodes a face crop as JPEG (for the audit log).
pub fn crop_jpeg(crop: &crate::identify::decision::FaceCrop) -> Option<Vec<u8>> {
    crate::image::jpeg(&crop.rgb, crop.side, crop.side, 85)
}

/// Everything the gates application needs, resolved before the pipeline starts.
pub struct Gates {
    engines: Vec<GateEngine>,
    /// Command senders by gate id (gates without a webhook or MQTT have none).
    actuators: HashMap<String, Actuator>,
    audit: Option<audit::AuditLog>,
    log_cfg: GateLogConfig,
    scorer: Option<antispoof::AntiSpoof>,
}

impl Gates {
    /// Builds the gates (None without `[[gates]]`): thresholds from the calibration at each
    /// gate's FAR target for a gallery of `gallery_size`, the anti-spoofing model when a gate
    /// wants it, the audit log in the gallery store, the command senders.
    pub fn new(setup: GateSetup) -> Result<Option<Self>, GateError> {
        let GateSetup { gates, log, infer, identify, base_dir, gallery, people_groups, gallery_size, embed_card } = setup;
        if gates.is_empty() {
            return Ok(None);
        }
        let rt = crate::infer::Runtime::get(infer)?;
        let mut engines = Vec::new();
        let mut actuators = HashMap::new();
        for g in gates {
            let threshold = match g.threshold {
                Some(t) => t,
                None => {
                    let icfg = crate::identify::IdentifyConfig { threshold: None, target_far: Some(g.target_far), ..identify.clone() };
                    crate::identify::OperatingPoint::for_card(&icfg, None, &embed_card, gallery_size)?.threshold
                }
            };
            tracing::info!(gate = %g.id, camera = %g.camera, threshold, target_far = g.target_far, votes = g.votes, window_s = g.window_s, liveness = g.liveness.is_some(), "gate ready");
            let key = g.secret(base_dir).map_err(GateError::Config)?;
            if let Some(a) = key.map(|k| Actuator::start(g, k)).transpose()?.flatten() {
                actuators.insert(g.id.clone(), a);
            }
            engines.push(GateEngine::new(g.clone(), threshold, group_lookup(people_groups.clone(), gallery.clone())));
        }
        let scorer = if gates.iter().any(|g| g.liveness.as_ref().is_some_and(|l| l.model)) { Some(antispoof::AntiSpoof::new(&rt)?) } else { None };
        let audit = audit::AuditLog::open_spec(&gallery)?;
        let keep = Duration::from_secs_f64(log.keep_days * 86_400.0);
        match audit.purge(keep, SystemTime::now()) {
            Ok(n) if n > 0 => tracing::info!(removed = n, "gate audit log: old decisions purged"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "gate audit log: purge failed"),
        }
        for g in gates {
            let m = metrics();
            for (o, r) in [("granted", "none"), ("denied", "unknown"), ("denied", "not_allowed"), ("denied", "schedule"), ("denied", "liveness"), ("denied", "tailgating"), ("suppressed", "cooldown")] {
                m.gate_decisions.with_label_values(&[&g.id, o, r]);
            }
            m.gate_latency.with_label_values(&[&g.id]);
            m.gate_commands.with_label_values(&[&g.id, "queue", "dropped"]);
            for (on, channel) in [(g.webhook.is_some(), "webhook"), (g.mqtt.is_some(), "mqtt")] {
                if on {
                    for result in ["sent", "failed"] {
                        m.gate_commands.with_label_values(&[&g.id, channel, result]);
                    }
                }
            }
        }
        Ok(Some(Self { engines, actuators, audit: Some(audit), log_cfg: log.clone(), scorer }))
    }

    /// The cameras the gates watch, and how they are to be served.
    pub fn observe(&self) -> Vec<(String, ObservePolicy)> {
        self.engines
            .iter()
            .map(|e| (e.cfg.camera.clone(), ObservePolicy { embed_interval: Duration::from_secs_f32(e.cfg.embed_interval_s), max_embeddings: e.cfg.max_embeddings }))
            .collect()
    }

    /// The gates application: runs until the decisions bus closes; its decisions go to `events`.
    pub fn run(mut self, updates: crossbeam_channel::Receiver<TrackUpdate>, events: Tx<Event>) {
        let mut sizes: HashMap<Arc<str>, (u32, u32)> = HashMap::new();
        let mut last_purge = Instant::now();
        for update in updates {
            let mut decided = Vec::new();
            match &update {
                TrackUpdate::Seen(s) => {
                    sizes.insert(s.camera.clone(), (s.frame.width, s.frame.height));
                    for e in self.engines.iter_mut().filter(|e| *e.cfg.camera == *s.camera) {
                        let scorer = self.scorer.as_mut().map(|s| s as &mut dyn engine::SpoofScorer);
                        decided.extend(e.on_seen(s, scorer));
                    }
                }
                TrackUpdate::Matched(m) => {
                    let (w, h) = sizes.get(&m.camera).copied().unwrap_or((0, 0));
                    for e in self.engines.iter_mut().filter(|e| *e.cfg.camera == *m.camera) {
                        decided.extend(e.on_matched(m, w, h, SystemTime::now()));
                    }
                }
                TrackUpdate::Ended(t) => {
                    for e in self.engines.iter_mut().filter(|e| *e.cfg.camera == *t.camera) {
                        decided.extend(e.on_ended(&t.camera, t.track, t.last_seen));
                    }
                }
                _ => {}
            }
            for d in decided {
                self.publish(d, &events);
            }
            if last_purge.elapsed() > Duration::from_secs(3600) {
                last_purge = Instant::now();
                if let Some(a) = &self.audit {
                    let _ = a.purge(Duration::from_secs_f64(self.log_cfg.keep_days * 86_400.0), SystemTime::now());
                }
            }
        }
    }

    /// Logs (audit first: an actuated door always has its record), counts, actuates and emits.
    fn publish(&mut self, d: GateDecision, events: &Tx<Event>) {
        let m = metrics();
        let track_id = format!("{}-{}", d.camera, d.track);
        let evidence = serde_json::to_value(&d.evidence).unwrap_or(serde_json::Value::Null);
        let reason = d.reason.map(|r| r.as_str());
        let person = d.person.as_ref().map(|p| p.1.clone());
        let log_id = self.audit.as_ref().and_then(|a| {
            let jpeg = if self.log_cfg.crops { d.crop.as_deref().and_then(crop_jpeg) } else { None };
            match a.append(&d.gate, &d.camera, d.at, d.outcome.as_str(), reason, person.as_deref(), &track_id, d.latency_s, &evidence, jpeg.as_deref()) {
                Ok(id) => id,
                Err(e) => {
                    tracing::error!(gate = %d.gate, error = %e, "gate audit log write failed");
                    None
                }
            }
        });
        m.gate_decisions.with_label_values(&[&d.gate, d.outcome.as_str(), reason.unwrap_or("none")]).inc();
        m.gate_latency.with_label_values(&[&d.gate]).observe(d.latency_s);
        tracing::info!(gate = %d.gate, outcome = d.outcome.as_str(), reason = reason.unwrap_or(""), person = person.as_deref().unwrap_or(""), latency_ms = (d.latency_s * 1000.0).round(), tailgating = d.tailgating, "gate decision");
        if d.outcome == Outcome::Granted
            && let Some(a) = self.actuators.get(&d.gate)
        {
            let cmd = Command { command: "open".into(), gate: d.gate.clone(), person: person.clone().unwrap_or_default(), track_id: track_id.clone(), time: crate::events::rfc3339(d.at), log_id };
            let _ = a.tx.push(cmd);
        }
        let body = EventBody::GateDecision {
            gate: d.gate.clone(),
            track_id,
            outcome: d.outcome.as_str().into(),
            reason: reason.map(str::to_string),
            person,
            person_id: d.person.as_ref().map(|p| p.0),
            tailgating: d.tailgating,
            latency_s: d.latency_s,
            evidence,
            log_id,
        };
        let _ = events.push(Event::new(&d.camera, d.at, body));
    }
}
