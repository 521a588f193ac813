//! Who should pull which camera, decided the same way on every node from the
//! same shared state: rendezvous (highest-random-weight) hashing of camera
//! names over the ready nodes, and the one move at a time that brings the
//! cluster closer to it. Pure functions; the KV side is `node.rs`.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

/// What one node's record says, as far as planning needs it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemberInfo {
    /// Past its join grace: cameras may be assigned to it.
    pub ready: bool,
    /// Cameras it claimed recently that do not stream yet (a move in progress).
    pub starting: BTreeSet<String>,
}

/// What this node should do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// No lease exists and this node is the camera's rendezvous owner: create it.
    Claim(String),
    /// The lease names this node but this process does not hold it (a restart
    /// within the lease's lifetime): take it over by its revision.
    Adopt(String),
    /// This node holds the camera but another ready node is its owner, and it
    /// is this camera's turn to move: stop pulling, then delete the lease.
    Release(String),
}

/// The rendezvous weight of `node` for `camera` (first 8 bytes of
/// SHA-256 over both names): the same on every node and every platform.
pub fn weight(node: &str, camera: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(node.as_bytes());
    h.update([0]);
    h.update(camera.as_bytes());
    let digest = h.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("a SHA-256 digest has 32 bytes"))
}

/// The ready node with the highest weight for `camera` (ties by name), or
/// `None` when no node is ready.
pub fn owner<'a>(camera: &str, members: &'a BTreeMap<String, MemberInfo>) -> Option<&'a str> {
    members
        .iter()
        .filter(|(_, m)| m.ready)
        .max_by_key(|(n, _)| (weight(n, camera), std::cmp::Reverse(n.as_str())))
        .map(|(n, _)| n.as_str())
}

/// This node's actions, given the live `members` (this node among them once
/// its record is stored), the `leases` (camera → holder) and the leases this
/// process holds.
///
/// Moves are one at a time across the whole cluster: nothing is released
/// while any camera is without a lease (and has an owner to take it) or any
/// node is still starting a camera; then only the first camera by name that
/// sits on the wrong node moves, and only its holder acts.
pub fn plan(
    me: &str,
    cameras: &[String],
    members: &BTreeMap<String, MemberInfo>,
    leases: &BTreeMap<String, String>,
    held: &BTreeSet<String>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut in_transit = members.values().any(|m| !m.starting.is_empty());
    for camera in cameras {
        let owner = owner(camera, members);
        match leases.get(camera) {
            None if owner == Some(me) => actions.push(Action::Claim(camera.clone())),
            None => in_transit |= owner.is_some(),
            Some(holder) if holder == me && !held.contains(camera) => actions.push(Action::Adopt(camera.clone())),
            Some(_) => {}
        }
    }
    if in_transit || !actions.is_empty() {
        return actions;
    }
    let mut names: Vec<&String> = cameras
        .iter()
        .filter(|c| {
            let holder = leases.get(*c).map(String::as_str);
            let owner = owner(c, members);
            holder.is_some_and(|h| members.contains_key(h)) && owner.is_some() && holder != owner
        })
        .collect();
    names.sort();
    if let Some(first) = names.first()
        && leases.get(*first).map(String::as_str) == Some(me)
        && held.contains(*first)
    {
        actions.push(Action::Release((*first).clone()));
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(names: &[&str]) -> BTreeMap<String, MemberInfo> {
        names.iter().map(|n| (n.to_string(), MemberInfo { ready: true, starting: BTreeSet::new() })).collect()
    }

    fn cams(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("cam{i}")).collect()
    }

    #[test]
    fn weights_are_stable_and_differ_by_node() {
        assert_eq!(weight("a", "cam1"), weight("a", "cam1"));
        assert_ne!(weight("a", "cam1"), weight("b", "cam1"));
        assert_ne!(weight("ab", "c"), weight("a", "bc"), "the separator keeps names apart");
    }

    #[test]
    fn losing_a_node_moves_only_its_cameras() {
        let all = members(&["a", "b", "c"]);
        let cameras = cams(60);
        let before: Vec<&str> = cameras.iter().map(|c| owner(c, &all).expect("a ready node")).collect();
        for n in ["a", "b", "c"] {
            assert!(before.iter().filter(|o| **o == n).count() >= 10, "each node gets a share: {before:?}");
        }
        let without_b = members(&["a", "c"]);
        for (c, was) in cameras.iter().zip(&before) {
            let now = owner(c, &without_b).expect("a ready node");
            if *was != "b" {
                assert_eq!(now, *was, "{c} stayed where it was");
            }
        }
    }

    #[test]
    fn unready_nodes_get_nothing() {
        let mut m = members(&["a", "b"]);
        m.get_mut("b").expect("b").ready = false;
        assert!(cams(20).iter().all(|c| owner(c, &m) == Some("a")));
        assert_eq!(owner("cam1", &BTreeMap::new()), None);
    }

    #[test]
    fn free_cameras_are_claimed_by_their_owner_only() {
        let m = members(&["a", "b", "c"]);
        let cameras = cams(6);
        let mut claimed = BTreeMap::new();
        for me in ["a", "b", "c"] {
            for action in plan(me, &cameras, &m, &BTreeMap::new(), &BTreeSet::new()) {
                let Action::Claim(c) = action else { panic!("only claims: {action:?}") };
                assert!(claimed.insert(c.clone(), me).is_none(), "{c} claimed twice");
                assert_eq!(owner(&c, &m), Some(me));
            }
        }
        assert_eq!(claimed.len(), 6, "every camera claimed once");
    }

    #[test]
    fn a_joining_node_gets_one_camera_at_a_time() {
        // a and b hold everything; c joins and owns some of it.
        let m = members(&["a", "b", "c"]);
        let cameras = cams(12);
        let two = members(&["a", "b"]);
        let mut leases: BTreeMap<String, String> =
            cameras.iter().map(|c| (c.clone(), owner(c, &two).expect("owner").to_owned())).collect();
        let held = |n: &str, l: &BTreeMap<String, String>| -> BTreeSet<String> {
            l.iter().filter(|(_, h)| h.as_str() == n).map(|(c, _)| c.clone()).collect()
        };
        let mut moves = 0;
        loop {
            let releases: Vec<(String, String)> = ["a", "b", "c"]
                .iter()
                .flat_map(|n| {
                    plan(n, &cameras, &m, &leases, &held(n, &leases)).into_iter().map(move |a| (n.to_string(), a))
                })
                .map(|(n, a)| match a {
                    Action::Release(c) => (n, c),
                    other => panic!("{n}: unexpected {other:?}"),
                })
                .collect();
            assert!(releases.len() <= 1, "one move at a time: {releases:?}");
            let Some((_, camera)) = releases.into_iter().next() else { break };
            leases.remove(&camera);
            // While it has no lease, nobody else releases.
            for n in ["a", "b"] {
                assert!(
                    !plan(n, &cameras, &m, &leases, &held(n, &leases)).iter().any(|a| matches!(a, Action::Release(_))),
                    "no second move while {camera} is in transit"
                );
            }
            let claims = plan("c", &cameras, &m, &leases, &held("c", &leases));
            assert_eq!(claims, [Action::Claim(camera.clone())]);
            leases.insert(camera, "c".into());
            moves += 1;
            assert!(moves <= 12, "bounded");
        }
        assert!(moves >= 1, "c took its share");
        for c in &cameras {
            assert_eq!(leases.get(c).map(String::as_str), owner(c, &m), "{c} ends on its owner");
        }
    }

    #[test]
    fn a_starting_camera_holds_back_the_next_move() {
        let mut m = members(&["a", "b"]);
        let cameras = cams(8);
        let leases: BTreeMap<String, String> = cameras.iter().map(|c| (c.clone(), "a".to_owned())).collect();
        let held: BTreeSet<String> = cameras.iter().cloned().collect();
        assert_eq!(plan("a", &cameras, &m, &leases, &held).len(), 1, "one release while b is idle");
        m.get_mut("b").expect("b").starting.insert("cam1".into());
        assert!(plan("a", &cameras, &m, &leases, &held).is_empty(), "nothing while b starts a camera");
    }

    #[test]
    fn a_restarted_node_adopts_its_own_leases_and_dead_holders_are_waited_out() {
        let m = members(&["a", "b"]);
        let cameras = cams(4);
        let mut leases = BTreeMap::new();
        leases.insert("cam1".to_owned(), "a".to_owned());
        leases.insert("cam2".to_owned(), "gone".to_owned());
        let actions = plan("a", &cameras, &m, &leases, &BTreeSet::new());
        assert!(actions.contains(&Action::Adopt("cam1".into())), "{actions:?}");
        for n in ["a", "b"] {
            let actions = plan(n, &cameras, &m, &leases, &BTreeSet::new());
            assert!(!actions.iter().any(|a| matches!(a, Action::Claim(c) | Action::Release(c) if c == "cam2")));
        }
    }
}
