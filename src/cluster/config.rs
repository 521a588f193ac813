//! `[cluster]` in the config: this node's id and the URL others reach it at,
//! and the membership and lease timings. Needs `[nats]` (the shared store).

use serde::{Deserialize, Serialize};

/// `[cluster]`: nodes sharing one JetStream and one camera list divide the
/// cameras so that each camera is pulled by exactly one node. Absent: this
/// node pulls every camera itself.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's name, unique in the cluster: 1-64 letters, digits, `-`
    /// or `_` (env `INFERCAST_NODE_ID` overrides it, e.g. the pod name).
    pub node_id: String,
    /// The URL browsers and the other nodes use to reach this node's HTTP
    /// API, e.g. `http://10.0.0.5:8080` (env `INFERCAST_ADVERTISE_URL`
    /// overrides it). WHEP requests for a camera another node pulls are
    /// redirected there.
    pub advertise_url: String,
    /// A node that has not renewed its membership key for this long is gone,
    /// in ms (default 3000; renewed every `tick_ms`).
    pub node_ttl_ms: u64,
    /// A camera lease not renewed for this long expires and another node may
    /// take the camera, in ms (default 5000; at least 6 × `tick_ms`). The
    /// holder stops pulling four ticks before then if it cannot renew.
    pub lease_ttl_ms: u64,
    /// How often a node renews its keys, reads the others' and rebalances, in
    /// ms (default 500).
    pub tick_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: String::new(),
            advertise_url: String::new(),
            node_ttl_ms: 3000,
            lease_ttl_ms: 5000,
            tick_ms: 500,
        }
    }
}

/// Env variables that override `node_id` and `advertise_url`.
pub const NODE_ID_ENV: &str = "INFERCAST_NODE_ID";
pub const ADVERTISE_URL_ENV: &str = "INFERCAST_ADVERTISE_URL";

impl ClusterConfig {
    /// Takes `node_id` and `advertise_url` from the environment where set.
    pub fn apply_env(&mut self) {
        if let Ok(id) = std::env::var(NODE_ID_ENV)
            && !id.trim().is_empty()
        {
            self.node_id = id.trim().to_owned();
        }
        if let Ok(url) = std::env::var(ADVERTISE_URL_ENV)
            && !url.trim().is_empty()
        {
            self.advertise_url = url.trim().to_owned();
        }
    }

    /// Checks the id, the URL and the timings; errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        let valid_id = !self.node_id.is_empty()
            && self.node_id.len() <= 64
            && self.node_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_id {
            return Err(format!(
                "cluster.node_id = {:?}: use 1-64 letters, digits, '-' or '_' (or set {NODE_ID_ENV})",
                self.node_id
            ));
        }
        let url = url::Url::parse(&self.advertise_url).map_err(|e| {
            format!("cluster.advertise_url = {:?} is not a URL ({e}); e.g. http://10.0.0.5:8080", self.advertise_url)
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "cluster.advertise_url = {:?}: use http:// or https://HOST[:PORT]",
                self.advertise_url
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("cluster.advertise_url must not carry credentials".into());
        }
        if url.path() != "/" || url.query().is_some() {
            return Err(format!("cluster.advertise_url = {:?}: give no path or query", self.advertise_url));
        }
        for (key, value, lo, hi) in [
            ("cluster.tick_ms", self.tick_ms, 50, 10_000),
            ("cluster.node_ttl_ms", self.node_ttl_ms, 1000, 600_000),
            ("cluster.lease_ttl_ms", self.lease_ttl_ms, 1000, 600_000),
        ] {
            if !(lo..=hi).contains(&value) {
                return Err(format!("{key} = {value} is out of range {lo}..={hi}"));
            }
        }
        if self.node_ttl_ms < 2 * self.tick_ms {
            return Err("cluster.node_ttl_ms must be at least twice cluster.tick_ms".into());
        }
        // A holder stops four ticks before its lease could expire (node.rs).
        if self.lease_ttl_ms < 6 * self.tick_ms {
            return Err("cluster.lease_ttl_ms must be at least 6 × cluster.tick_ms".into());
        }
        Ok(())
    }

    /// `advertise_url` without a trailing `/`, to append paths to.
    pub fn base_url(&self) -> String {
        self.advertise_url.trim_end_matches('/').to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, url: &str) -> ClusterConfig {
        ClusterConfig { node_id: id.into(), advertise_url: url.into(), ..ClusterConfig::default() }
    }

    #[test]
    fn ids_urls_and_timings_are_checked() {
        node("node-a", "http://10.0.0.5:8080").validate().expect("valid");
        node("node-a", "https://cams.example.org/").validate().expect("valid with a trailing slash");
        for (c, want) in [
            (node("", "http://h:1"), "cluster.node_id"),
            (node("a.b", "http://h:1"), "cluster.node_id"),
            (node("a", "h:1"), "use http://"),
            (node("a", "ftp://h"), "use http://"),
            (node("a", "http://u:p@h"), "credentials"),
            (node("a", "http://h/x"), "no path"),
            (ClusterConfig { tick_ms: 10, ..node("a", "http://h") }, "cluster.tick_ms"),
            (ClusterConfig { node_ttl_ms: 1000, tick_ms: 800, ..node("a", "http://h") }, "twice"),
            (ClusterConfig { lease_ttl_ms: 2900, tick_ms: 500, ..node("a", "http://h") }, "6 ×"),
        ] {
            let err = c.validate().expect_err(want);
            assert!(err.contains(want), "{err}");
            assert!(!err.contains(":p@"), "no password echoed: {err}");
        }
        assert_eq!(node("a", "http://h:8080/").base_url(), "http://h:8080");
    }
}
