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
