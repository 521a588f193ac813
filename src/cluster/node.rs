//! The cluster loop of one node: every `tick_ms` it renews the leases it
//! holds, stores its member record, reads everyone's records and leases, and
//! acts on [`plan`](super::plan): claims, adoptions and the one release of a
//! rebalancing move. Cameras start and stop only here.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::plan::{self, Action, MemberInfo};
use super::{Cluster, LEASES_BUCKET, Member, NODES_BUCKET};
use crate::bus::{NatsAuth, NatsConfig};
use crate::labels::LabelStore;
use crate::pipeline::Camera;
use crate::pipeline::backoff::Backoff;
use crate::sfu::Sfu;

/// A camera claimed this recently and not yet streaming counts as a move in progress.
const STARTING_FOR: Duration = Duration::from_secs(10);

/// What the cluster loop drives.
pub struct Deps {
    /// Every configured camera (the same list on every node).
    pub cameras: Arc<BTreeMap<String, Arc<Camera>>>,
    /// Viewer sessions of a camera this node stops pulling are ended here.
    pub sfu: Arc<Sfu>,
    /// Labels of cameras other nodes pull are read back into it.
    pub labels: Arc<LabelStore>,
    pub nats: NatsConfig,
    pub auth: NatsAuth,
}

/// A lease's value in [`LEASES_BUCKET`].
#[derive(Serialize, Deserialize)]
struct LeaseValue {
    node: String,
}

/// A lease this process holds.
struct Held {
    revision: u64,
    /// When the last acknowledged renewal (or the claim) was sent: the server
    /// expires the lease no earlier than `lease_ttl` after it.
    sent_at: Instant,
    claimed_at: Instant,
}

struct Node {
    cluster: Arc<Cluster>,
    deps: Deps,
    nodes: kv::Store,
    leases: kv::Store,
    held: BTreeMap<String, Held>,
    /// When this node's record was first stored.
    joined_at: Option<Instant>,
    started_at: chrono::DateTime<chrono::Utc>,
    lease_value: Bytes,
    tick: Duration,
    lease_ttl: Duration,
}

/// Runs the cluster loop until `cancel`, then releases this node's leases
/// and record so the others take over at once. Connects in the background
/// (cameras stay in standby until then).
pub async fn run(cluster: Arc<Cluster>, deps: Deps, cancel: CancellationToken) {
    let config = cluster.config.clone();
    let tick = Duration::from_millis(config.tick_ms);
    let Some(client) = connect(&deps.nats, &deps.auth, &cancel).await else { return };
    // Every KV operation is bounded well inside a lease's lifetime.
    let op_timeout = Duration::from_millis(config.lease_ttl_ms / 4).clamp(Duration::from_millis(200), tick * 2);
    let js = jetstream::ContextBuilder::new().timeout(op_timeout).build(client);
    let Some((nodes, leases)) = buckets(&js, &config, deps.nats.replicas, &cancel).await else { return };
    tokio::spawn(super::feed::run(
        js.clone(),
        deps.nats.stream.clone(),
        deps.labels.clone(),
        deps.cameras.clone(),
        cancel.child_token(),
    ));
    tracing::info!(node = %config.node_id, advertise_url = %config.advertise_url, "cluster: joined");
    let lease_value =
        Bytes::from(serde_json::to_vec(&LeaseValue { node: config.node_id.clone() }).expect("a lease serialises"));
    let mut node = Node {
        cluster,
        deps,
        nodes,
        leases,
        held: BTreeMap::new(),
        joined_at: None,
        started_at: chrono::Utc::now(),
        lease_value,
        tick,
        lease_ttl: Duration::from_millis(config.lease_ttl_ms),
    };
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = cancel.cancelled() => break,
        }
        // A round that overruns its tick is cut short; the next starts afresh.
        if tokio::time::timeout(tick * 2, node.round()).await.is_err() {
            tracing::debug!("cluster: a round took longer than two ticks");
        }
        node.enforce_deadlines();
    }
    node.leave().await;
}

impl Node {
    fn me(&self) -> &str {
        self.cluster.node_id()
    }

    /// One round: renew, heartbeat, read, plan, act.
    async fn round(&mut self) {
        self.renew().await;
        self.enforce_deadlines();
        self.heartbeat().await;
        let (members, leases) = match (read_members(&self.nodes).await, read_leases(&self.leases).await) {
            (Ok(m), Ok(l)) => (m, l),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(error = %e, "cluster: cannot read the shared state this round");
                self.cluster.update(|v| v.connected = false);
                return;
            }
        };
        let holders: BTreeMap<String, String> = leases.iter().map(|(c, (n, _))| (c.clone(), n.clone())).collect();
        let held: BTreeSet<String> = self.held.keys().cloned().collect();
        let infos: BTreeMap<String, MemberInfo> = members
            .iter()
            .map(|(n, m)| (n.clone(), MemberInfo { ready: m.ready, starting: m.starting.clone() }))
            .collect();
        self.cluster.update(|v| {
            v.connected = true;
            v.members = members;
            v.leases = holders.clone();
            v.pulling = held.clone();
        });
        let cameras: Vec<String> = self.deps.cameras.keys().cloned().collect();
        for action in plan::plan(self.me(), &cameras, &infos, &holders, &held) {
            match action {
                Action::Claim(camera) => self.claim(&camera, None).await,
                Action::Adopt(camera) => {
                    let revision = leases.get(&camera).map(|(_, r)| *r);
                    self.claim(&camera, revision).await;
                }
                Action::Release(camera) => self.release(&camera).await,
            }
        }
    }

    /// Renews every held lease by its revision, all at once.
    async fn renew(&mut self) {
        let attempts = self.held.iter().map(|(camera, held)| {
            let (leases, value, revision) = (self.leases.clone(), self.lease_value.clone(), held.revision);
            let camera = camera.clone();
            async move {
                let sent = Instant::now();
                (camera.clone(), sent, leases.update(&camera, value, revision).await)
            }
        });
        for (camera, sent, result) in futures::future::join_all(attempts).await {
            match result {
                Ok(revision) => {
                    if let Some(h) = self.held.get_mut(&camera) {
                        h.revision = revision;
                        h.sent_at = sent;
                    }
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    tracing::warn!(camera = %camera, "cluster: the lease was lost (another node holds it); stopping at once");
                    self.stop(&camera);
                }
                // Unconfirmed: kept until its deadline (enforce_deadlines).
                Err(e) => tracing::debug!(camera = %camera, error = %e, "cluster: lease renewal not confirmed"),
            }
        }
    }

    /// Stops pulling every camera whose lease could expire before this check
    /// runs again: it runs after every round, and a round may take two ticks
    /// (its time-out) after a tick that came late, so the margin is four ticks
    /// (`lease_ttl_ms` ≥ 6 × `tick_ms` by validation). With one tick of
    /// margin a node whose renewals stalled could still pull a camera after
    /// its lease had expired and another node had taken it.
    fn enforce_deadlines(&mut self) {
        let now = Instant::now();
        let expired: Vec<String> = self
            .held
            .iter()
            .filter(|(_, h)| now + self.tick * 4 >= h.sent_at + self.lease_ttl)
            .map(|(c, _)| c.clone())
            .collect();
        for camera in expired {
            tracing::warn!(camera = %camera, "cluster: the lease could not be renewed in time; stopping the camera");
            self.stop(&camera);
        }
    }

    /// Stores this node's record: ready after a grace of two ticks past the
    /// first stored record (so nodes started together see each other first).
    async fn heartbeat(&mut self) {
        let now = Instant::now();
        let ready = self.joined_at.is_some_and(|t| now.duration_since(t) >= self.tick * 2);
        let mut cameras = BTreeMap::new();
        let mut starting = BTreeSet::new();
        for (name, held) in &self.held {
            let Some(camera) = self.deps.cameras.get(name) else { continue };
            let view = camera.view();
            let receiving = view.status.state.is_receiving();
            if !receiving && now.duration_since(held.claimed_at) < STARTING_FOR {
                starting.insert(name.clone());
            }
            if let Ok(json) = serde_json::to_value(&view) {
                cameras.insert(name.clone(), json);
            }
        }
        let member = Member {
            node_id: self.me().to_owned(),
            advertise_url: self.cluster.config.advertise_url.clone(),
            ready,
            started_at: self.started_at,
            starting,
            cameras,
        };
        let Ok(value) = serde_json::to_vec(&member) else { return };
        match self.nodes.put(self.me(), Bytes::from(value)).await {
            Ok(_) => {
                self.joined_at.get_or_insert(now);
            }
            Err(e) => tracing::debug!(error = %e, "cluster: membership record not stored"),
        }
    }

    /// Creates the lease (`revision` None) or takes over this node's own by
    /// its revision, then starts pulling the camera.
    async fn claim(&mut self, camera: &str, revision: Option<u64>) {
        let sent = Instant::now();
        let result = match revision {
            None => self.leases.create(camera, self.lease_value.clone()).await.map_err(|e| e.to_string()),
            Some(r) => self.leases.update(camera, self.lease_value.clone(), r).await.map_err(|e| e.to_string()),
        };
        match result {
            Ok(revision) => {
                tracing::info!(camera, "cluster: lease taken; pulling the camera");
                self.held.insert(camera.to_owned(), Held { revision, sent_at: sent, claimed_at: sent });
                if let Some(c) = self.deps.cameras.get(camera) {
                    c.set_active(true);
                }
            }
            Err(e) => tracing::debug!(camera, error = %e, "cluster: lease not taken"),
        }
    }

    /// Hands `camera` to its owner: stops pulling first, then deletes the lease.
    async fn release(&mut self, camera: &str) {
        let Some(revision) = self.held.get(camera).map(|h| h.revision) else { return };
        tracing::info!(camera, "cluster: moving the camera to its owner");
        self.stop(camera);
        // The lease goes only once this node's connection to the camera is closed.
        let stopped = match self.deps.cameras.get(camera) {
            Some(c) => c.stood_by(self.tick).await,
            None => true,
        };
        if !stopped {
            tracing::warn!(camera, "cluster: the camera did not stop within a tick; its lease is left to expire");
            return;
        }
        if let Err(e) = self.leases.delete_expect_revision(camera, Some(revision)).await {
            tracing::debug!(camera, error = %e, "cluster: lease not deleted; it expires by itself");
        }
    }

    /// Stops pulling `camera` now and ends its viewer sessions here (their
    /// players reconnect through any node to the new owner).
    fn stop(&mut self, camera: &str) {
        self.held.remove(camera);
        if let Some(c) = self.deps.cameras.get(camera) {
            c.set_active(false);
        }
        let (sfu, camera) = (self.deps.sfu.clone(), camera.to_owned());
        tokio::spawn(async move { sfu.close_camera(&camera).await });
        let pulling: BTreeSet<String> = self.held.keys().cloned().collect();
        self.cluster.update(|v| v.pulling = pulling);
    }

    /// Shutdown: stops every camera, deletes its leases and record (bounded).
    async fn leave(&mut self) {
        let held: Vec<(String, u64)> = self.held.iter().map(|(c, h)| (c.clone(), h.revision)).collect();
        for (camera, _) in &held {
            self.stop(camera);
        }
        for (camera, _) in &held {
            if let Some(c) = self.deps.cameras.get(camera) {
                c.stood_by(Duration::from_millis(300)).await;
            }
        }
        let (leases, nodes, me) = (self.leases.clone(), self.nodes.clone(), self.me().to_owned());
        let cleanup = async move {
            for (camera, revision) in held {
                let _ = leases.delete_expect_revision(&camera, Some(revision)).await;
            }
            let _ = nodes.delete(&me).await;
        };
        if tokio::time::timeout(Duration::from_secs(1), cleanup).await.is_err() {
            tracing::warn!("cluster: leases not released within 1 s; they expire by themselves");
        } else {
            tracing::info!("cluster: left (leases released)");
        }
    }
}

/// Live members by id (a record that does not parse is skipped and logged once a round).
async fn read_members(nodes: &kv::Store) -> Result<BTreeMap<String, Member>, String> {
    let mut members = BTreeMap::new();
    for (key, value, _) in read_all(nodes).await? {
        match serde_json::from_slice::<Member>(&value) {
            Ok(m) if m.node_id == key => {
                members.insert(key, m);
            }
            _ => tracing::warn!(key = %key, "cluster: a membership record does not parse; ignored"),
        }
    }
    Ok(members)
}

/// Leases: camera → (node, revision).
async fn read_leases(leases: &kv::Store) -> Result<BTreeMap<String, (String, u64)>, String> {
    let mut out = BTreeMap::new();
    for (key, value, revision) in read_all(leases).await? {
        if let Ok(v) = serde_json::from_slice::<LeaseValue>(&value) {
            out.insert(key, (v.node, revision));
        }
    }
    Ok(out)
}

/// Every live key of a bucket with its value and revision.
async fn read_all(store: &kv::Store) -> Result<Vec<(String, Bytes, u64)>, String> {
    let keys: Vec<String> =
        store.keys().await.map_err(|e| e.to_string())?.try_collect().await.map_err(|e| e.to_string())?;
    let entries = futures::stream::iter(keys).map(|k| async move { store.entry(k).await }).buffer_unordered(16);
    let mut out = Vec::new();
    let all: Vec<_> = entries.collect().await;
    for entry in all {
        match entry.map_err(|e| e.to_string())? {
            Some(e) if e.operation == kv::Operation::Put => out.push((e.key, e.value, e.revision)),
            _ => {}
        }
    }
    Ok(out)
}

/// Connects with capped backoff until it works or `cancel`.
async fn connect(config: &NatsConfig, auth: &NatsAuth, cancel: &CancellationToken) -> Option<async_nats::Client> {
    let urls = config.urls.join(",");
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    let mut logged = false;
    loop {
        let options = match crate::bus::publisher::client_options(config, auth, "infercast-cluster") {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(%urls, error = %e, "cluster: cannot use the NATS credentials; every camera stays in standby");
                return None;
            }
        };
        let attempt = tokio::select! {
            r = options.connect(config.urls.as_slice()) => r,
            () = cancel.cancelled() => return None,
        };
        match attempt {
            Ok(client) => return Some(client),
            Err(e) => {
                if !std::mem::replace(&mut logged, true) {
                    tracing::warn!(%urls, error = %e, "cluster: cannot reach NATS yet; cameras stay in standby until it answers");
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                    () = cancel.cancelled() => return None,
                }
            }
        }
    }
}

/// The two buckets, created if missing (every node asks for the same
/// configuration, so creating them concurrently is fine).
async fn buckets(
    js: &jetstream::Context,
    config: &super::ClusterConfig,
    replicas: usize,
    cancel: &CancellationToken,
) -> Option<(kv::Store, kv::Store)> {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    loop {
        let nodes = bucket(js, NODES_BUCKET, config.node_ttl_ms, replicas).await;
        let leases = bucket(js, LEASES_BUCKET, config.lease_ttl_ms, replicas).await;
        match (nodes, leases) {
            (Ok(n), Ok(l)) => return Some((n, l)),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cluster: cannot open the KV buckets; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                    () = cancel.cancelled() => return None,
                }
            }
        }
    }
}

async fn bucket(js: &jetstream::Context, name: &str, ttl_ms: u64, replicas: usize) -> Result<kv::Store, String> {
    if let Ok(store) = js.get_key_value(name).await {
        if let Ok(status) = store.status().await
            && status.max_age() != Duration::from_millis(ttl_ms)
        {
            tracing::warn!(
                bucket = name,
                existing_ms = status.max_age().as_millis() as u64,
                configured_ms = ttl_ms,
                "cluster: the bucket exists with another TTL; the existing one is used (all nodes must agree)"
            );
        }
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: name.into(),
        description: "infercast cluster (see docs/config.md [cluster])".into(),
        history: 1,
        max_age: Duration::from_millis(ttl_ms),
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("bucket {name}: {e}"))
}
