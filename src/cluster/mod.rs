//! Several facestream nodes, one gallery, one set of cameras: built on PostgreSQL, not on a
//! home-made consensus. Each node
//! - keeps its own in-memory gallery index and follows every change made anywhere through
//!   `LISTEN/NOTIFY` plus a catch-up from the change log ([`sync`]);
//! - heartbeats in `cluster_nodes` and runs the cameras it holds a lease on in `camera_leases`
//!   ([`run_node`]). Who should run a camera is decided by rendezvous hashing over the live nodes
//!   (highest hash of node and camera, within each node's capacity), so a node joining or
//!   leaving moves only the cameras it gains or loses. A lease is taken only when it is free or
//!   expired, renewed every third of `lease_s`, and given up (after the camera stopped) when
//!   another live node should run it; a node that dies loses its leases after `lease_s`.
//!
//! While the database is unreachable a node keeps running what it holds (nobody can take a
//! camera without the database either); after it comes back the node first renews what it
//! holds for one lease period before it takes anything new, so a cluster-wide outage moves
//! nothing.

pub mod config;
pub mod sync;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::Client;
use serde::Serialize;

pub use config::ClusterConfig;

use crate::gallery::postgres::{blocking, migrate, open_client};
use crate::gallery::store::StoreError;
use crate::telemetry::metrics;

/// One camera's lease as the camera thread sees it: run while `active`.
#[derive(Default)]
pub struct CameraLease {
    active: AtomicBool,
    /// Set by the camera thread while its pipeline runs (a lease is released only once false).
    running: AtomicBool,
}

impl CameraLease {
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    pub fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::SeqCst);
    }

    fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }
}

/// The leases of every enabled camera of this node's config.
#[derive(Default)]
pub struct Leases {
    pub cameras: BTreeMap<String, Arc<CameraLease>>,
}

impl Leases {
    pub fn new<'a>(cameras: impl IntoIterator<Item = &'a str>) -> Self {
        Self { cameras: cameras.into_iter().map(|c| (c.to_string(), Arc::new(CameraLease::default()))).collect() }
    }

    pub fn get(&self, camera: &str) -> Option<Arc<CameraLease>> {
        self.cameras.get(camera).cloned()
    }
}

/// A node as the cluster sees it.
#[derive(Clone, Debug, Serialize)]
pub struct NodeInfo {
    pub node: String,
    pub capacity: usize,
    pub url: String,
    pub alive: bool,
    pub heartbeat_age_s: f64,
    pub cameras: Vec<String>,
}

/// What `/api/cluster` shows: this node, every node, who runs what.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClusterView {
    pub node: String,
    pub database_up: bool,
    pub lease_s: f64,
    pub nodes: Vec<NodeInfo>,
    /// camera -> node holding a valid lease.
    pub cameras: BTreeMap<String, Option<String>>,
    /// Cameras this node runs now.
    pub running_here: Vec<String>,
    pub updated_ms_ago: u64,
}

/// The live state shared with the HTTP side.
#[derive(Default)]
pub struct ClusterState {
    view: Mutex<(ClusterView, Option<Instant>)>,
}

impl ClusterState {
    pub fn view(&self) -> ClusterView {
        let g = self.view.lock().unwrap_or_else(|p| p.into_inner());
        let mut v = g.0.clone();
        v.updated_ms_ago = g.1.map(|t| t.elapsed().as_millis() as u64).unwrap_or(u64::MAX);
        v
    }

    fn set(&self, f: impl FnOnce(&mut ClusterView)) {
        let mut g = self.view.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g.0);
        g.1 = Some(Instant::now());
    }
}

/// A 64-bit FNV-1a hash of node and camera: the rendezvous score.
fn score(node: &str, camera: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes().chain([0u8]).chain(camera.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV's low bits mix poorly for short keys; one avalanche round (splitmix64's finaliser).
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A live node as the plan sees it: name, capacity (0 = no limit), the cameras its config has.
pub struct Candidate {
    pub node: String,
    pub capacity: usize,
    pub cameras: std::collections::BTreeSet<String>,
}

/// [`plan_for`] with every node able to run every camera.
pub fn plan(cameras: &[String], nodes: &[(String, usize)]) -> BTreeMap<String, Option<String>> {
    let all: std::collections::BTreeSet<String> = cameras.iter().cloned().collect();
    plan_for(cameras, &nodes.iter().map(|(n, c)| Candidate { node: n.clone(), capacity: *c, cameras: all.clone() }).collect::<Vec<_>>())
}

/// Who should run each camera: rendezvous hashing over the nodes whose config has the camera,
/// cameras taken in name order, each to its highest-scoring node with room. Cameras no node has
/// room for map to None.
pub fn plan_for(cameras: &[String], nodes: &[Candidate]) -> BTreeMap<String, Option<String>> {
    let mut load: HashMap<&str, usize> = HashMap::new();
    let mut cams: Vec<&String> = cameras.iter().collect();
    cams.sort();
    let mut out = BTreeMap::new();
    for cam in cams {
        let mut ranked: Vec<&Candidate> = nodes.iter().filter(|n| n.cameras.contains(cam)).collect();
        ranked.sort_by(|a, b| score(&b.node, cam).cmp(&score(&a.node, cam)).then(a.node.cmp(&b.node)));
        let owner = ranked.into_iter().find(|n| n.capacity == 0 || load.get(n.node.as_str()).copied().unwrap_or(0) < n.capacity).map(|n| n.node.as_str());
        if let Some(o) = owner {
            *load.entry(o).or_default() += 1;
        }
        let owner = owner.map(str::to_string);
        out.insert(cam.clone(), owner);
    }
    out
}

/// What a node needs to take part.
pub struct NodeSetup {
    pub database: String,
    pub node: String,
    pub capacity: usize,
    pub url: String,
    pub lease: Duration,
    pub leases: Arc<Leases>,
    pub state: Arc<ClusterState>,
    pub stop: Arc<AtomicBool>,
}

/// Registers the node (migrations applied first, so a fresh database works); the error names the
/// database when it cannot be reached at start.
pub fn join(setup: &NodeSetup) -> Result<Client, StoreError> {
    let mut c = open_client(&setup.database)?;
    migrate(&mut c)?;
    heartbeat(&mut c, setup).map_err(crate::gallery::postgres::pg_err)?;
    Ok(c)
}

fn heartbeat(c: &mut Client, s: &NodeSetup) -> Result<(), postgres::Error> {
    blocking(|| {
        c.execute(
            "INSERT INTO cluster_nodes (node, capacity, url, cameras, started, heartbeat) VALUES ($1, $2, $3, $4, now(), now())
             ON CONFLICT (node) DO UPDATE SET capacity = EXCLUDED.capacity, url = EXCLUDED.url, cameras = EXCLUDED.cameras, heartbeat = now()",
            &[&s.node, &(s.capacity as i32), &s.url, &serde_json::to_string(&s.leases.cameras.keys().collect::<Vec<_>>()).unwrap_or_default()],
        )
        .map(|_| ())
    })
}

/// One round: heartbeat, read the cluster, take, renew and give up leases. `grace`: renew only
/// (just reconnected).
fn round(c: &mut Client, s: &NodeSetup, grace: bool) -> Result<(), postgres::Error> {
    heartbeat(c, s)?;
    let lease_s = s.lease.as_secs_f64();
    let rows = c.query("SELECT node, capacity, url, EXTRACT(EPOCH FROM now() - heartbeat)::float8, cameras FROM cluster_nodes ORDER BY node", &[])?;
    let nodes: Vec<(String, usize, String, f64)> = rows.iter().map(|r| (r.get(0), r.get::<_, i32>(1).max(0) as usize, r.get(2), r.get(3))).collect();
    let live: Vec<Candidate> = rows
        .iter()
        .filter(|r| r.get::<_, f64>(3) < lease_s)
        .map(|r| Candidate { node: r.get(0), capacity: r.get::<_, i32>(1).max(0) as usize, cameras: serde_json::from_str(r.get::<_, &str>(4)).unwrap_or_default() })
        .collect();
    let cameras: Vec<String> = s.leases.cameras.keys().cloned().collect();
    let want = plan_for(&cameras, &live);
    let mut mine = 0;
    for (cam, lease) in &s.leases.cameras {
        let ours = want.get(cam).and_then(|o| o.as_deref()) == Some(s.node.as_str());
        let held = lease.is_active();
        if ours && (held || !grace) || held && lease.is_running() {
            // Take (free or expired) or renew; a valid lease of another node stays theirs.
            let got = c.query_opt(
                "INSERT INTO camera_leases (camera, node, since, expires) VALUES ($1, $2, now(), now() + make_interval(secs => $3))
                 ON CONFLICT (camera) DO UPDATE SET node = EXCLUDED.node, expires = EXCLUDED.expires,
                     since = CASE WHEN camera_leases.node = EXCLUDED.node THEN camera_leases.since ELSE now() END
                 WHERE camera_leases.node = EXCLUDED.node OR camera_leases.expires < now()
                 RETURNING camera",
                &[cam, &s.node, &lease_s],
            )?;
            match (got.is_some(), held) {
                (true, false) => {
                    tracing::info!(camera = %cam, node = %s.node, "camera lease taken: starting it here");
                    metrics().cluster_lease_changes.with_label_values(&["acquired"]).inc();
                    lease.active.store(true, Ordering::SeqCst);
                }
                (false, true) => {
                    tracing::warn!(camera = %cam, "camera lease lost to another node (not renewed in time): stopping it here");
                    metrics().cluster_lease_changes.with_label_values(&["lost"]).inc();
                    lease.active.store(false, Ordering::SeqCst);
                }
                _ => {}
            }
            if got.is_some() && !ours && held {
                // Another node should run it: stop first, release once stopped (next rounds).
                tracing::info!(camera = %cam, "camera moves to another node: stopping it here");
                lease.active.store(false, Ordering::SeqCst);
            }
        } else if held {
            lease.active.store(false, Ordering::SeqCst);
        }
        if !lease.is_active() && !lease.is_running() {
            let n = c.execute("DELETE FROM camera_leases WHERE camera = $1 AND node = $2", &[cam, &s.node])?;
            if n > 0 {
                tracing::info!(camera = %cam, "camera lease released");
                metrics().cluster_lease_changes.with_label_values(&["released"]).inc();
            }
        }
        mine += lease.is_active() as i64;
    }
    metrics().cluster_leases.set(mine);
    metrics().cluster_nodes.set(live.len() as i64);
    let holders = c.query("SELECT camera, node FROM camera_leases WHERE expires > now() ORDER BY camera", &[])?;
    let holders: BTreeMap<String, String> = holders.iter().map(|r| (r.get(0), r.get(1))).collect();
    s.state.set(|v| {
        v.node = s.node.clone();
        v.database_up = true;
        v.lease_s = lease_s;
        v.nodes = nodes
            .iter()
            .map(|(n, cap, url, age)| NodeInfo {
                node: n.clone(),
                capacity: *cap,
                url: url.clone(),
                alive: *age < lease_s,
                heartbeat_age_s: *age,
                cameras: holders.iter().filter(|(_, h)| *h == n).map(|(c, _)| c.clone()).collect(),
            })
            .collect();
        v.cameras = cameras.iter().map(|c| (c.clone(), holders.get(c).cloned())).collect();
        v.running_here = s.leases.cameras.iter().filter(|(_, l)| l.is_active()).map(|(c, _)| c.clone()).collect();
    });
    Ok(())
}

/// The node's loop until `stop`: a round every third of the lease; reconnects with backoff.
/// On stop the node gives up its leases, so its cameras move at once instead of after `lease_s`.
pub fn run_node(setup: NodeSetup, first: Client) {
    let tick = (setup.lease / 3).max(Duration::from_millis(200));
    let mut client = Some(first);
    let mut grace_until: Option<Instant> = None;
    let mut delay = Duration::from_millis(250);
    while !setup.stop.load(Ordering::SeqCst) {
        let c = match client.as_mut() {
            Some(c) if !c.is_closed() => c,
            _ => match open_client(&setup.database) {
                Ok(c) => {
                    tracing::info!(node = %setup.node, "cluster database reconnected: renewing leases before taking new cameras");
                    grace_until = Some(Instant::now() + setup.lease);
                    delay = Duration::from_millis(250);
                    client.insert(c)
                }
                Err(e) => {
                    down(&setup, &e.to_string(), delay);
                    crate::ingest::sleep_unless_stopped(delay, &setup.stop);
                    delay = (delay * 2).min(setup.lease.max(Duration::from_secs(1)));
                    continue;
                }
            },
        };
        let grace = grace_until.is_some_and(|t| Instant::now() < t);
        if let Err(e) = blocking(|| round(c, &setup, grace)) {
            down(&setup, &e.to_string(), tick);
            client = None;
        } else {
            metrics().cluster_database_up.set(1);
        }
        crate::ingest::sleep_unless_stopped(tick, &setup.stop);
    }
    for lease in setup.leases.cameras.values() {
        lease.active.store(false, Ordering::SeqCst);
    }
    // Give the cameras a moment to stop, then hand the leases back.
    let deadline = Instant::now() + Duration::from_secs(5);
    while setup.leases.cameras.values().any(|l| l.is_running()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(c) = client.as_mut().filter(|c| !c.is_closed()) {
        let _ = blocking(|| {
            c.execute("DELETE FROM camera_leases WHERE node = $1", &[&setup.node])?;
            c.execute("UPDATE cluster_nodes SET heartbeat = now() - interval '1 day' WHERE node = $1", &[&setup.node])
        });
        tracing::info!(node = %setup.node, "left the cluster: leases handed back");
    }
}

fn down(setup: &NodeSetup, error: &str, retry: Duration) {
    metrics().cluster_database_up.set(0);
    setup.state.set(|v| v.database_up = false);
    tracing::warn!(node = %setup.node, error, retry_in_ms = retry.as_millis() as u64, "cluster database unreachable: keeping the cameras this node runs");
}


#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize, prefix: &str) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    #[test]
    fn every_camera_gets_one_node_and_the_load_spreads() {
        let cams = names(100, "cam-");
        let nodes: Vec<(String, usize)> = names(4, "node-").into_iter().map(|n| (n, 0)).collect();
        let p = plan(&cams, &nodes);
        assert_eq!(p.len(), 100);
        let mut per: HashMap<String, usize> = HashMap::new();
        for o in p.values() {
            *per.entry(o.clone().expect("an owner")).or_default() += 1;
        }
        assert_eq!(per.len(), 4, "{per:?}");
        assert!(per.values().all(|&n| (12..=40).contains(&n)), "{per:?}");
    }

    #[test]
    fn a_node_leaving_moves_only_its_own_cameras_and_capacity_is_kept() {
        let cams = names(60, "cam-");
        let nodes: Vec<(String, usize)> = names(3, "n").into_iter().map(|n| (n, 0)).collect();
        let before = plan(&cams, &nodes);
        let after = plan(&cams, &nodes[..2]);
        for c in &cams {
            if before[c].as_deref() != Some("n2") {
                assert_eq!(before[c], after[c], "{c} moved although its node stayed");
            }
        }
        let capped = plan(&cams, &[("a".into(), 5), ("b".into(), 10)]);
        assert_eq!(capped.values().filter(|o| o.as_deref() == Some("a")).count(), 5);
        assert_eq!(capped.values().filter(|o| o.as_deref() == Some("b")).count(), 10);
        assert_eq!(capped.values().filter(|o| o.is_none()).count(), 45, "no room: unassigned, never over capacity");
        assert!(plan(&cams, &[]).values().all(Option::is_none));
    }

    #[test]
    fn a_camera_goes_only_to_nodes_whose_config_has_it() {
        let cams: Vec<String> = vec!["usb-desk".into(), "shared".into()];
        let nodes = [
            Candidate { node: "a".into(), capacity: 0, cameras: ["shared".to_string()].into() },
            Candidate { node: "b".into(), capacity: 0, cameras: ["shared".to_string(), "usb-desk".to_string()].into() },
        ];
        let p = plan_for(&cams, &nodes);
        assert_eq!(p["usb-desk"].as_deref(), Some("b"));
        assert!(p["shared"].is_some());
        assert_eq!(plan_for(&cams, &nodes[..1])["usb-desk"], None, "nobody else may run it");
    }
}
