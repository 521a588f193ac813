//! Cluster mode (`[cluster]`): nodes that share a NATS JetStream and one
//! camera list divide the cameras so that each is pulled by exactly one node.
//!
//! - Membership: each node keeps `<node_id>` alive in the KV bucket
//!   `infercast_nodes` (entries expire after `node_ttl_ms`) with its
//!   `advertise_url` and the status of the cameras it pulls.
//! - Ownership: rendezvous hashing of camera names over the ready nodes
//!   ([`plan`]); the owner creates `<camera>` in `infercast_cameras` (entries
//!   expire after `lease_ttl_ms`), renews it by revision, and stops pulling
//!   at once when a renewal is refused or cannot be confirmed in time.
//! - Labels of cameras other nodes pull are read back from the stream
//!   ([`feed`]), so every node answers for every camera.
//!
//! The only module that knows other nodes exist; `api` asks it who owns a
//! camera, `pipeline` starts and stops cameras on its word.

pub mod config;
mod feed;
mod node;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use self::config::ClusterConfig;
pub use self::node::{Deps, run};

/// KV bucket of live nodes (key: node id).
pub const NODES_BUCKET: &str = "infercast_nodes";
/// KV bucket of camera leases (key: camera name).
pub const LEASES_BUCKET: &str = "infercast_cameras";

/// One node's record in [`NODES_BUCKET`], renewed every tick.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Member {
    pub node_id: String,
    /// Where browsers and other nodes reach its HTTP API.
    pub advertise_url: String,
    /// Past its join grace: cameras may be assigned to it.
    pub ready: bool,
    pub started_at: DateTime<Utc>,
    /// Cameras it claimed in the last seconds that do not stream yet.
    pub starting: BTreeSet<String>,
    /// Cameras it pulls now, as its `/api/cameras` shows them.
    #[schema(value_type = Object)]
    pub cameras: BTreeMap<String, serde_json::Value>,
}

/// What `GET /api/cluster` shows.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ClusterInfo {
    /// This node.
    pub node_id: String,
    pub advertise_url: String,
    /// The shared store answered the last round.
    pub connected: bool,
    /// Live nodes (this one included once its record is stored), by id.
    pub members: Vec<MemberSummary>,
    /// Camera → node holding its lease.
    pub owners: BTreeMap<String, String>,
    /// Cameras this node pulls right now.
    pub pulling: Vec<String>,
}

/// A live node as `/api/cluster` lists it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct MemberSummary {
    pub node_id: String,
    pub advertise_url: String,
    pub ready: bool,
    pub started_at: DateTime<Utc>,
    /// Cameras it pulls now.
    pub cameras: Vec<String>,
}

/// This node's view of the cluster, shared with the API; cheap to read.
#[derive(Debug)]
pub struct Cluster {
    config: ClusterConfig,
    view: RwLock<View>,
}

#[derive(Debug, Default)]
struct View {
    connected: bool,
    members: BTreeMap<String, Member>,
    leases: BTreeMap<String, String>,
    pulling: BTreeSet<String>,
}

impl Cluster {
    pub fn new(config: ClusterConfig) -> Arc<Cluster> {
        Arc::new(Cluster { config, view: RwLock::default() })
    }

    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// The node holding `camera`'s lease and its `advertise_url` (without a
    /// trailing `/`), if known.
    pub fn owner(&self, camera: &str) -> Option<(String, String)> {
        let view = self.view.read().expect("cluster lock is never poisoned");
        let node = view.leases.get(camera)?;
        if node == &self.config.node_id {
            return Some((node.clone(), self.config.base_url()));
        }
        let url = view.members.get(node)?.advertise_url.trim_end_matches('/').to_owned();
        Some((node.clone(), url))
    }

    /// The owner's published status of `camera` (its `/api/cameras` entry),
    /// when another node pulls it.
    pub fn remote_view(&self, camera: &str) -> Option<serde_json::Value> {
        let view = self.view.read().expect("cluster lock is never poisoned");
        let node = view.leases.get(camera)?;
        if node == &self.config.node_id {
            return None;
        }
        view.members.get(node)?.cameras.get(camera).cloned()
    }

    /// Whether `origin` (e.g. `http://10.0.0.6:8080`) is a live node's
    /// advertised origin: the page of one node may call another (CORS).
    pub fn is_member_origin(&self, origin: &str) -> bool {
        let view = self.view.read().expect("cluster lock is never poisoned");
        view.members.values().any(|m| same_origin(&m.advertise_url, origin))
    }

    pub fn info(&self) -> ClusterInfo {
        let view = self.view.read().expect("cluster lock is never poisoned");
        ClusterInfo {
            node_id: self.config.node_id.clone(),
            advertise_url: self.config.advertise_url.clone(),
            connected: view.connected,
            members: view
                .members
                .values()
                .map(|m| MemberSummary {
                    node_id: m.node_id.clone(),
                    advertise_url: m.advertise_url.clone(),
                    ready: m.ready,
                    started_at: m.started_at,
                    cameras: m.cameras.keys().cloned().collect(),
                })
                .collect(),
            owners: view.leases.clone(),
            pulling: view.pulling.iter().cloned().collect(),
        }
    }

    fn update(&self, f: impl FnOnce(&mut View)) {
        f(&mut self.view.write().expect("cluster lock is never poisoned"));
    }
}

/// Scheme, host and port of `url` equal `origin`'s (an `Origin` header).
fn same_origin(url: &str, origin: &str) -> bool {
    match (url::Url::parse(url), url::Url::parse(origin)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_scheme_host_and_port() {
        assert!(same_origin("http://127.0.0.1:8081/", "http://127.0.0.1:8081"));
        assert!(same_origin("https://cams.example.org", "https://cams.example.org:443"));
        assert!(!same_origin("http://127.0.0.1:8081", "http://127.0.0.1:8082"));
        assert!(!same_origin("http://h", "https://h"));
        assert!(!same_origin("http://h", "null"));
    }
}
