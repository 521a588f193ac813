//! Cluster mode against real peers, all on loopback in a network namespace of
//! the test's own: 3 clustered `nats-server`s (JetStream, R3), 6 real RTSP
//! cameras (one GStreamer server each, so the test can count who pulls what
//! from the servers' own TCP connections), 3 infercast nodes.
//!
//! Checked: every camera pulled by exactly one node (sampled every 100 ms
//! from `/proc/net/tcp` for the whole test), every node answers for all six,
//! a WHEP POST to a non-owner is redirected (307) and a Rust viewer plays
//! through it, `kill -9` of a node → its cameras stream elsewhere within 10 s
//! (printed) and their labels go on, the node's return takes its cameras back
//! one at a time, and `kill -9` of a NATS server leaves the cluster working.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, NODES, established_by_port, lease_bucket_leader};
use common::netns;
use common::service::Infercast;
use common::whep_client::{Offer, Viewer};

const CAMERAS: usize = 6;

fn latest_capture(node: &Infercast, camera: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let labels = node.get_json(&format!("/api/labels/{camera}?limit=1"));
    let at = labels.as_array()?.last()?["captured_at"].as_str()?.to_owned();
    chrono::DateTime::parse_from_rfc3339(&at).ok().map(|t| t.with_timezone(&chrono::Utc))
}

/// A POST that does not follow redirects: status and `Location`.
fn post_no_redirect(url: &str, body: &str) -> (u16, Option<String>, String) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(15)))
        .build()
        .new_agent();
    let mut resp = agent.post(url).header("content-type", "application/sdp").send(body).expect("HTTP POST");
    let location = resp.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    (resp.status().as_u16(), location, body)
}

/// The client side of one connection to a camera: (local port, pid).
type Client = (u16, u32);

/// What the 100 ms sampler saw.
#[derive(Default)]
struct Samples {
    taken: usize,
    /// (time since start, camera index, clients, their (local port, pid)) of every sample with two or more.
    doubles: Vec<(Duration, usize, usize, Vec<Client>)>,
}

#[test]
fn cameras_are_shared_failed_over_and_taken_back() {
    if !netns::isolated("cameras_are_shared_failed_over_and_taken_back") {
        return;
    }
    let mut cluster = Cluster::new("cluster", CAMERAS, "classify_fps = 1");

    // The sampler counts real clients: two connections of the test's own to
    // camera 1 read as two (and each once), none as zero.
    {
        let port = cluster.cameras[0].port;
        let before = established_by_port().get(&port).copied().unwrap_or(0);
        let held: Vec<_> = (0..2).map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
        let count = || established_by_port().get(&port).copied().unwrap_or(0);
        let seen = common::wait_until(Duration::from_secs(2), || count() == before + 2);
        assert!(seen.is_some(), "the sampler did not count two test clients on port {port}");
        drop(held);
        let gone = common::wait_until(Duration::from_secs(2), || count() == before);
        assert!(gone.is_some(), "the test's clients on port {port} did not close");
    }

    // The sampler: no camera may ever have two clients.
    let samples = Arc::new(Mutex::new(Samples::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (samples, stop) = (samples.clone(), stop.clone());
        let camera_ports: Vec<u16> = cluster.cameras.iter().map(|c| c.port).collect();
        let start = Instant::now();
        std::thread::spawn(move || {
            // Bounded: the test ends it; 20 minutes at most in any case.
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(1200) {
                let counts = established_by_port();
                let mut s = samples.lock().unwrap();
                s.taken += 1;
                for (i, port) in camera_ports.iter().enumerate() {
                    let n = counts.get(port).copied().unwrap_or(0);
                    if n > 1 {
                        s.doubles.push((start.elapsed(), i + 1, n, common::cluster::clients_of(*port)));
                    }
                }
                drop(s);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    for i in 0..NODES.len() {
        cluster.start_node(i);
    }
    let (owners, took) = cluster.wait_settled(Duration::from_secs(90), "start-up");
    println!("cluster: 3 nodes settled in {took:.1?}: {owners:?}");

    // Every node answers for the whole cluster: members and labels of all six cameras.
    for (i, node) in cluster.live() {
        let info = node.get_json("/api/cluster");
        assert_eq!(info["node_id"], NODES[i]);
        let members: BTreeSet<&str> =
            info["members"].as_array().unwrap().iter().map(|m| m["node_id"].as_str().unwrap()).collect();
        assert_eq!(members, NODES.iter().copied().collect(), "{info:#}");
        let all = common::wait_until(Duration::from_secs(20), || {
            node.get_json("/api/labels").as_array().unwrap().len() == CAMERAS
        });
        assert!(all.is_some(), "{}: /api/labels lacks cameras: {}", NODES[i], node.get_json("/api/labels"));
    }
    // History of a camera another node pulls comes from the stream.
    let (camera, owner) = owners.iter().next().unwrap();
    let other = (0..3).find(|&i| NODES[i] != owner.as_str()).unwrap();
    let owner_i = NODES.iter().position(|n| n == owner).unwrap();
    let history = cluster.nodes[other].as_ref().unwrap().get_json(&format!("/api/labels/{camera}?limit=100"));
    assert!(!history.as_array().unwrap().is_empty(), "no history of {camera} on {}", NODES[other]);

    // WHEP through a non-owner: 307 to the owner, and a Rust viewer plays.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let viewer = rt.block_on(Viewer::new(Offer::H264));
    let non_owner = cluster.nodes[other].as_ref().unwrap();
    let (status, location, _) = post_no_redirect(&format!("{}/whep/{camera}/raw", non_owner.base), &viewer.offer_sdp);
    assert_eq!(status, 307, "a non-owner redirects");
    let location = location.expect("a Location");
    let owner_node = cluster.nodes[owner_i].as_ref().unwrap();
    assert_eq!(location, format!("{}/whep/{camera}/raw", owner_node.base));
    let (status, session, answer) = post_no_redirect(&location, &viewer.offer_sdp);
    assert_eq!(status, 201, "{answer}");
    rt.block_on(viewer.apply_answer(&answer));
    assert!(rt.block_on(viewer.connected(Duration::from_secs(10))), "viewer connected through the redirect");
    let played = common::wait_until(Duration::from_secs(10), || {
        let p = viewer.packets();
        p.len() > 50 && p.iter().any(|p| p.nal_types.contains(&5))
    });
    assert!(played.is_some(), "{} packets through the redirect", viewer.packets().len());
    let session = session.unwrap_or_default();
    let deleted = common::whep_client::delete(&owner_node.base, &session);
    assert!(deleted.status == 200 || deleted.status == 204, "DELETE {session}: {}", deleted.status);
    rt.block_on(viewer.close());

    // kill -9 the node with the most cameras: they stream elsewhere within 10 s.
    let victim = (0..3).max_by_key(|&i| owners.values().filter(|o| *o == NODES[i]).count()).unwrap();
    let moved: Vec<String> = owners.iter().filter(|(_, o)| *o == NODES[victim]).map(|(c, _)| c.clone()).collect();
    assert!(!moved.is_empty());
    let killed_at = chrono::Utc::now();
    let failover = cluster.kill_and_time_failover(victim, &moved, Duration::from_secs(30));
    let worst = failover.values().max().copied().unwrap_or(Duration::MAX);
    println!(
        "cluster: kill -9 {} → its cameras streaming elsewhere after {failover:?} (max {worst:.1?})",
        NODES[victim]
    );
    assert_eq!(failover.len(), moved.len(), "every camera of the killed node came back: {failover:?}");
    assert!(worst <= Duration::from_secs(10), "failover took {worst:?}");
    // Their labels go on, in the stream: a label captured after the kill, seen
    // on a surviving node that does not pull the camera (it reads the stream).
    for cam in &moved {
        let (_, survivor) = cluster
            .live()
            .find(|(i, n)| n.get_json(&format!("/api/cameras/{cam}"))["node"] != NODES[*i])
            .expect("a surviving node that does not pull the camera");
        let fresh = common::wait_until(Duration::from_secs(10), || {
            latest_capture(survivor, cam).is_some_and(|t| t > killed_at)
        });
        assert!(fresh.is_some(), "no label of {cam} after the failover");
    }
    cluster.wait_settled(Duration::from_secs(20), "after the kill");

    // The node comes back and takes its cameras back, one at a time.
    cluster.start_node(victim);
    let mut taken_at: BTreeMap<String, Duration> = BTreeMap::new();
    let t1 = Instant::now();
    while taken_at.len() < moved.len() && t1.elapsed() < Duration::from_secs(60) {
        let node = cluster.nodes[victim].as_ref().unwrap();
        let info = node.get_json("/api/cluster");
        for cam in info["pulling"].as_array().unwrap() {
            taken_at.entry(cam.as_str().unwrap().to_owned()).or_insert_with(|| t1.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("cluster: {} back; took its cameras at {taken_at:?}", NODES[victim]);
    assert_eq!(taken_at.keys().cloned().collect::<Vec<_>>(), moved, "the returning node takes its own cameras back");
    let mut times: Vec<Duration> = taken_at.values().copied().collect();
    times.sort();
    for pair in times.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_millis(200), "cameras moved together: {taken_at:?}");
    }
    let (back, _) = cluster.wait_settled(Duration::from_secs(30), "after the return");
    assert_eq!(back, owners, "every camera back on its rendezvous owner");

    // kill -9 one NATS server, the one leading the lease bucket (the worst
    // one to lose: a leader election while leases are due): the nodes carry on.
    let leader = lease_bucket_leader(&cluster.nats);
    println!("cluster: killing nats-server n{leader} (leader of the lease bucket)");
    let nats_killed_at = chrono::Utc::now();
    let t2 = Instant::now();
    cluster.nats[leader].kill();
    std::thread::sleep(Duration::from_secs(1));
    let (_, took) = cluster.wait_settled(Duration::from_secs(40), "after a NATS server was killed");
    for c in 1..=CAMERAS {
        let (_, node) = cluster.live().next().unwrap();
        let fresh = common::wait_until(Duration::from_secs(30), || {
            latest_capture(node, &format!("cam{c}")).is_some_and(|t| t > nats_killed_at)
        });
        if fresh.is_none() {
            let seen: Vec<String> = cluster
                .live()
                .map(|(i, n)| {
                    format!(
                        "{}: latest {:?}, connected {}, buffered {}, acked {}",
                        NODES[i],
                        latest_capture(n, &format!("cam{c}")),
                        n.metric("infercast_nats_connected"),
                        n.metric("infercast_nats_buffered"),
                        n.metric("infercast_nats_acked_total")
                    )
                })
                .collect();
            let logs: Vec<String> = cluster.live().map(|(i, n)| format!("--- {}\n{}", NODES[i], n.log())).collect();
            panic!(
                "no label of cam{c} after the NATS server died ({nats_killed_at}):\n{}\n{}",
                seen.join("\n"),
                logs.join("\n")
            );
        }
    }
    println!(
        "cluster: kill -9 of a NATS server: settled after {:.1?}, labels of all cameras after {:.1?}",
        took + Duration::from_secs(1),
        t2.elapsed()
    );

    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let s = samples.lock().unwrap();
    println!("cluster: {} samples of the cameras' connections, {} with two clients", s.taken, s.doubles.len());
    assert!(s.taken > 100, "the sampler ran");
    if !s.doubles.is_empty() {
        let pids: Vec<String> = cluster.live().map(|(i, n)| format!("{}={}", NODES[i], n.pid())).collect();
        let cluster_lines = |log: &str| -> String {
            log.lines()
                .filter(|l| l.contains("cluster:") || l.contains("pulls the camera") || l.contains("standing by"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let mut logs: Vec<String> =
            cluster.dead_logs.iter().map(|(n, l)| format!("--- {n} (killed)\n{}", cluster_lines(l))).collect();
        logs.extend(cluster.live().map(|(i, n)| format!("--- {}\n{}", NODES[i], cluster_lines(&n.log()))));
        panic!("a camera had two clients: {:?}; live pids {pids:?}\n{}", s.doubles, logs.join("\n"));
    }
}

/// The page of node-a in Chromium (`tests/browser/cluster.mjs`): all six
/// cameras play (four or so from other nodes, through their advertised
/// URLs), each tile names its node, and after `kill -9` of another node its
/// cameras' tiles play again from their new node by themselves.
#[test]
fn the_page_of_one_node_plays_every_camera_and_follows_a_move() {
    if !netns::isolated("the_page_of_one_node_plays_every_camera_and_follows_a_move") {
        return;
    }
    use std::io::{BufRead, BufReader, Write};
    let dir = common::repo().join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core/package.json").is_file() && Path::new("/usr/bin/chromium").is_file(),
        "chromium or the node modules are missing: run scripts/setup --tests"
    );
    let mut cluster = Cluster::new("cluster-browser", CAMERAS, "classify_fps = 1");
    for i in 0..NODES.len() {
        cluster.start_node(i);
    }
    let (owners, _) = cluster.wait_settled(Duration::from_secs(90), "start-up");
    let artifacts = common::repo().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let base = cluster.nodes[0].as_ref().unwrap().base.clone();
    let mut script = Command::new("node")
        .arg(dir.join("cluster.mjs"))
        .arg(&base)
        .arg(&artifacts)
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node starts");
    let mut stdin = script.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = script.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_event = |want: &str| -> serde_json::Value {
        let line = rx.recv_timeout(Duration::from_secs(150)).expect("cluster.mjs answers within 150 s");
        println!("cluster.mjs: {line}");
        let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert_eq!(event["event"], want, "{event}");
        event
    };
    let playing = next_event("playing");
    for (camera, node) in &owners {
        assert_eq!(playing["nodes"][camera], node.as_str(), "the tile of {camera} names its node");
    }
    // Kill a node other than the page's own, one that pulls cameras.
    let victim = (1..3).find(|&i| owners.values().any(|o| o == NODES[i])).expect("node-b or node-c pulls a camera");
    cluster.nodes[victim] = None; // SIGKILL
    writeln!(stdin, "{}", NODES[victim]).and_then(|()| stdin.flush()).unwrap();
    let followed = next_event("followed");
    for (camera, node) in followed["nodes"].as_object().unwrap() {
        assert_ne!(node, NODES[victim], "{camera} still shown on the dead node");
    }
    println!("cluster: the page followed {}'s cameras to their new nodes in {} ms", NODES[victim], followed["ms"]);
    drop(stdin);
    let status = script.wait().unwrap();
    assert!(status.success(), "cluster.mjs failed");
}
