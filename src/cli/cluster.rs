//! `facestream cluster`: the shared database of several nodes.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use facestream::config::Config;
use facestream::gallery::postgres::{MIGRATIONS, migrate, open_client, redact};

#[derive(Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub action: ClusterAction,
}

#[derive(Subcommand)]
pub enum ClusterAction {
    /// Apply the schema migrations the database lacks (each once, under a lock; nodes do this at
    /// start too). A no-op when the schema is current.
    Migrate {
        /// The database (default: `cluster.database` of the config).
        #[arg(long)]
        database: Option<String>,
    },
    /// Measure the shared gallery: enrollments per second into the database, and how long each
    /// takes to become searchable in a second node's index (a gallery-sync follower on its own
    /// connection, in this process so both ends read one clock). Bench persons are removed after.
    Bench {
        #[arg(long)]
        database: Option<String>,
        /// Enrollments to make.
        #[arg(long, default_value_t = 500)]
        enrollments: usize,
        /// Enrollments per second (0: as fast as the database takes them).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Also write the figures as JSON to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// The nodes (heartbeat age, capacity) and which node holds each camera's lease.
    Status {
        #[arg(long)]
        database: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn database(cfg: &Config, given: Option<String>) -> Result<String> {
    match given.or_else(|| cfg.cluster.database.clone()) {
        Some(d) => Ok(d),
        None => bail!("no database: pass --database postgresql://user@host:5432/db or set cluster.database in the config"),
    }
}

pub fn cmd_cluster(cfg: &Config, a: ClusterArgs) -> Result<ExitCode> {
    match a.action {
        ClusterAction::Migrate { database: d } => {
            let url = database(cfg, d)?;
            let mut c = open_client(&url)?;
            let applied = migrate(&mut c).with_context(|| format!("migrating {}", redact(&url)))?;
            if applied.is_empty() {
                println!("{}: schema current (version {}), nothing to apply", redact(&url), MIGRATIONS.len());
            } else {
                println!("{}: applied migration(s) {:?}; schema now version {}", redact(&url), applied, MIGRATIONS.len());
            }
        }
        ClusterAction::Bench { database: d, enrollments, rate, json } => return bench(&database(cfg, d)?, enrollments, rate, json.as_deref()),
        ClusterAction::Status { database: d, json } => {
            let url = database(cfg, d)?;
            let mut c = open_client(&url)?;
            migrate(&mut c)?;
            let nodes = c.query("SELECT node, capacity, url, EXTRACT(EPOCH FROM now() - heartbeat)::float8 FROM cluster_nodes ORDER BY node", &[])?;
            let leases = c.query("SELECT camera, node, EXTRACT(EPOCH FROM expires - now())::float8 FROM camera_leases ORDER BY camera", &[])?;
            if json {
                let nodes: Vec<_> = nodes.iter().map(|r| serde_json::json!({"node": r.get::<_, String>(0), "capacity": r.get::<_, i32>(1), "url": r.get::<_, String>(2), "heartbeat_age_s": r.get::<_, f64>(3)})).collect();
                let leases: Vec<_> = leases.iter().map(|r| serde_json::json!({"camera": r.get::<_, String>(0), "node": r.get::<_, String>(1), "expires_in_s": r.get::<_, f64>(2)})).collect();
                println!("{}", serde_json::json!({"nodes": nodes, "leases": leases}));
            } else {
                println!("{:<24} {:>8} {:>14}  url", "node", "capacity", "heartbeat age");
                for r in &nodes {
                    println!("{:<24} {:>8} {:>12.1} s  {}", r.get::<_, String>(0), r.get::<_, i32>(1), r.get::<_, f64>(3), r.get::<_, String>(2));
                }
                println!("\n{:<24} {:<24} expires in", "camera", "node");
                for r in &leases {
                    let left: f64 = r.get(2);
                    println!("{:<24} {:<24} {}", r.get::<_, String>(0), r.get::<_, String>(1), if left > 0.0 { format!("{left:.1} s") } else { "expired".into() });
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn bench(url: &str, n: usize, rate: f64, json: Option<&std::path::Path>) -> Result<ExitCode> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, RwLock};
    use std::time::{Duration, Instant};

    if n == 0 {
        bail!("--enrollments must be at least 1");
    }
    const MODEL: &str = "bench-model";
    let run = std::process::id();
    let follower = Arc::new(RwLock::new(facestream::gallery::Gallery::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let from_seq = facestream::cluster::sync::current_seq(url)?;
    let sync = {
        let s = facestream::cluster::sync::SyncSetup { database: url.to_string(), gallery: follower.clone(), model_id: MODEL.into(), from_seq, stop: stop.clone() };
        std::thread::spawn(move || facestream::cluster::sync::run(s))
    };
    let mut writer = facestream::gallery::store::Store::connect(url, std::path::Path::new("bench"))?;
    std::thread::sleep(Duration::from_millis(300));
    // The follower's side: when each person became searchable (looked up by name, only the ones
    // not seen yet, so the watching costs little next to what it measures).
    let seen: Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>> = Default::default();
    let watcher = {
        let (g, seen, stop) = (follower.clone(), seen.clone(), stop.clone());
        let mut unseen: Vec<String> = (0..n).map(|i| format!("bench-{run}-{i}")).collect();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) && !unseen.is_empty() {
                if let Ok(g) = g.read() {
                    let now = Instant::now();
                    let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                    unseen.retain(|name| match g.person_id(name) {
                        Some(_) => {
                            s.insert(name.clone(), now);
                            false
                        }
                        None => true,
                    });
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ run as u64;
    let mut unit = || {
        let v: Vec<f32> = (0..facestream::embed::DIM)
            .map(|_| {
                rng = rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = rng;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                ((z >> 11) as f64 / (1u64 << 53) as f64 - 0.5) as f32
            })
            .collect();
        facestream::embed::normalized(&v)
    };
    let started = Instant::now();
    let mut committed = Vec::with_capacity(n);
    for i in 0..n {
        if rate > 0.0 {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let name = format!("bench-{run}-{i}");
        writer.add_sample(&name, &unit(), MODEL, 0.9, "bench")?;
        committed.push((name, Instant::now()));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().map(|s| s.len() < n).unwrap_or(false) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    let _ = watcher.join();
    let _ = sync.join();
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let mut delays: Vec<f64> = committed.iter().filter_map(|(name, at)| seen.get(name).map(|s| s.saturating_duration_since(*at).as_secs_f64() * 1000.0)).collect();
    delays.sort_by(f64::total_cmp);
    let missing = n - delays.len();
    let mut c = open_client(url)?;
    let removed = c.execute("DELETE FROM persons WHERE name LIKE $1", &[&format!("bench-{run}-%")])?;
    let report = serde_json::json!({
        "enrollments": n,
        "rate_asked": rate,
        "enrollments_per_s": n as f64 / elapsed,
        "propagation_ms": {"p50": percentile(&delays, 0.5), "p90": percentile(&delays, 0.9), "p99": percentile(&delays, 0.99), "max": delays.last().copied().unwrap_or(f64::NAN)},
        "not_propagated_in_30s": missing,
        "removed_after": removed,
    });
    println!("{n} enrollments in {elapsed:.2} s: {:.0} per second", n as f64 / elapsed);
    println!("searchable on the follower after (ms): p50 {:.1}, p90 {:.1}, p99 {:.1}, max {:.1}; {missing} not within 30 s", percentile(&delays, 0.5), percentile(&delays, 0.9), percentile(&delays, 0.99), delays.last().copied().unwrap_or(f64::NAN));
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if missing == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
