//! `[cluster]`: several nodes sharing one gallery and one set of cameras through PostgreSQL.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The shared PostgreSQL database (a URL `postgresql://user@host:5432/db` or a libpq
    /// key=value string). Setting it turns cluster mode on: the gallery lives there, and the
    /// enabled cameras are shared out between the live nodes by leases. Unset: one node, SQLite.
    pub database: Option<String>,
    /// This node's name, unique in the cluster (default: `$FACESTREAM_NODE`, else the host name).
    pub node: Option<String>,
    /// Cameras this node runs at most (0: no limit).
    pub capacity: usize,
    /// Capacity per node name, overriding `capacity` for those nodes (one config for all nodes).
    pub nodes: BTreeMap<String, usize>,
    /// A node that has not renewed its heartbeat and leases for this long is dead: its cameras
    /// start on the other nodes.
    pub lease_s: f64,
    /// This node's HTTP address as others should see it, shown by `/api/cluster`.
    pub url: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self { database: None, node: None, capacity: 0, nodes: BTreeMap::new(), lease_s: 10.0, url: String::new() }
    }
}

fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes a NUL-terminated name.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    std::str::from_utf8(&buf[..end]).ok().filter(|s| !s.is_empty()).map(str::to_string)
}

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        self.database.is_some()
    }

    /// This node's name.
    pub fn node_name(&self) -> String {
        self.node
            .clone()
            .or_else(|| std::env::var("FACESTREAM_NODE").ok().filter(|s| !s.is_empty()))
            .or_else(host_name)
            .unwrap_or_else(|| "node".into())
    }

    /// This node's capacity (0: no limit).
    pub fn own_capacity(&self) -> usize {
        self.nodes.get(&self.node_name()).copied().unwrap_or(self.capacity)
    }

    /// Every problem as (key, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if !(1.0..=3600.0).contains(&self.lease_s) {
            p.push(("lease_s".into(), format!("must be 1..=3600 seconds, got {}", self.lease_s)));
        }
        let name = self.node_name();
        if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            p.push(("node".into(), format!("`{name}` must be 1..=64 letters, digits, '-', '_' or '.'")));
        }
        if let Some(db) = &self.database
            && let Err(e) = db.parse::<postgres::Config>()
        {
            p.push(("database".into(), format!("is not a PostgreSQL connection string ({e}); e.g. postgresql://facestream@127.0.0.1:5432/facestream")));
        }
        if self.database.is_none() && (!self.nodes.is_empty() || self.capacity > 0) {
            p.push(("database".into(), "must be set for cluster.capacity or cluster.nodes to mean anything".into()));
        }
        p
    }
}
