//! The state file: the camera changes made at run time (`POST`/`DELETE
//! /api/cameras`), kept beside the config file as `<config>.state.json`
//! (mode 0600: camera URLs may carry credentials) and applied over the
//! config's cameras at start and on every reload.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::patch::CameraPatch;
use crate::config::CameraConfig;

/// What the API changed: cameras added (or replaced), configured cameras
/// removed, and configured cameras tuned (`PATCH`, over the config's values), by name.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct State {
    #[serde(default)]
    pub added: Vec<CameraConfig>,
    #[serde(default)]
    pub removed: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tuned: BTreeMap<String, CameraPatch>,
}

/// `dir/infercast.toml` → `dir/infercast.state.json`.
pub fn path_for(config_file: &Path) -> PathBuf {
    let stem = config_file.file_stem().map_or_else(|| "infercast".into(), |s| s.to_string_lossy().into_owned());
    config_file.with_file_name(format!("{stem}.state.json"))
}

impl State {
    /// Reads `path`; no file is an empty state. Errors name the file and
    /// what is wrong (never a camera URL).
    pub fn load(path: &Path) -> Result<State, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(format!("state file {}: {e}", path.display())),
        };
        let state: State = serde_json::from_str(&text).map_err(|e| {
            // serde's own message may quote a value (a URL with its password): only its kind.
            let kind = match e.classify() {
                serde_json::error::Category::Io => "unreadable",
                serde_json::error::Category::Syntax => "not JSON",
                serde_json::error::Category::Data => {
                    "not {\"added\": [cameras], \"removed\": [names], \"tuned\": {name: changes}}"
                }
                serde_json::error::Category::Eof => "cut short",
            };
            format!(
                "state file {}: line {} column {}: {kind} (delete it to drop the run-time camera changes)",
                path.display(),
                e.line(),
                e.column(),
            )
        })?;
        for cam in &state.added {
            cam.validate().map_err(|e| format!("state file {}: {e}", path.display()))?;
        }
        for (name, patch) in &state.tuned {
            let mut cam = CameraConfig::new(name, "rtsp://check/only");
            patch.apply(&mut cam);
            cam.validate().map_err(|e| format!("state file {}: tuned: {e}", path.display()))?;
        }
        Ok(state)
    }

    /// Writes `path` whole (a temporary file renamed over it), mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let json = serde_json::to_vec_pretty(self).map_err(|e| format!("cannot encode the state: {e}"))?;
        let tmp = path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| format!("cannot write state file {}: {e}", path.display()))
    }

    /// The cameras to run: `base` (the config's) less the removed ones, tuned
    /// as recorded, with the added ones replacing those of the same name or appended.
    pub fn apply(&self, base: &[CameraConfig]) -> Vec<CameraConfig> {
        let added: BTreeSet<&str> = self.added.iter().map(|c| c.name.as_str()).collect();
        let configured = base.iter().filter(|c| !self.removed.contains(&c.name) && !added.contains(c.name.as_str()));
        configured
            .map(|c| {
                let mut c = c.clone();
                if let Some(patch) = self.tuned.get(&c.name) {
                    patch.apply(&mut c);
                }
                c
            })
            .chain(self.added.iter().cloned())
            .collect()
    }

    /// Records `patch` for camera `name`: into its config if it was added
    /// through the API, else over the config file's values.
    pub fn tune(&mut self, name: &str, patch: &CameraPatch) {
        if let Some(cam) = self.added.iter_mut().find(|c| c.name == name) {
            patch.apply(cam);
        } else {
            self.tuned.entry(name.to_owned()).or_default().merge(patch);
        }
    }

    /// Records `camera` as added (replacing an earlier one of its name).
    pub fn add(&mut self, camera: CameraConfig) {
        self.tuned.remove(&camera.name);
        self.removed.remove(&camera.name);
        self.added.retain(|c| c.name != camera.name);
        self.added.push(camera);
    }

    /// Records `name` as removed; `configured`: the config has a camera of that name.
    pub fn remove(&mut self, name: &str, configured: bool) {
        self.added.retain(|c| c.name != name);
        self.tuned.remove(name);
        if configured {
            self.removed.insert(name.to_owned());
        }
    }

    /// Forgets removals and tunings of cameras the config no longer has.
    pub fn prune(&mut self, base: &[CameraConfig]) {
        self.removed.retain(|n| base.iter().any(|c| &c.name == n));
        self.tuned.retain(|n, _| base.iter().any(|c| &c.name == n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cam(name: &str, url: &str) -> CameraConfig {
        CameraConfig::new(name, url)
    }

    #[test]
    fn added_and_removed_cameras_apply_over_the_config() {
        let base = [cam("door", "rtsp://h/door"), cam("yard", "rtsp://h/yard")];
        let mut s = State::default();
        s.add(cam("gate", "rtsp://h/gate"));
        s.remove("yard", true);
        s.add(cam("door", "rtsp://h/door2"));
        let names: Vec<(String, String)> = s.apply(&base).into_iter().map(|c| (c.name, c.url)).collect();
        assert_eq!(
            names,
            [("gate".into(), "rtsp://h/gate".into()), ("door".into(), "rtsp://h/door2".into())]
                as [(String, String); 2]
        );
        // Removing an added camera leaves no trace unless the config has it.
        s.remove("gate", false);
        assert!(s.added.iter().all(|c| c.name != "gate") && !s.removed.contains("gate"));
        // Adding back a removed one clears its removal.
        s.add(cam("yard", "rtsp://h/yard"));
        assert!(!s.removed.contains("yard"));
        s.remove("yard", true);
        s.prune(&base[..1]);
        assert!(s.removed.is_empty(), "the config no longer has yard: {s:?}");
    }

    #[test]
    fn tunings_apply_over_the_config_and_go_with_their_camera() {
        let base = [cam("door", "rtsp://h/door")];
        let mut s = State::default();
        let patch = |json: &str| serde_json::from_str::<CameraPatch>(json).expect("valid patch");
        s.tune("door", &patch(r#"{"annotated_bitrate_bps": 300000}"#));
        s.tune("door", &patch(r#"{"annotated_fps": 10}"#));
        let door = &s.apply(&base)[0];
        assert_eq!((door.annotated_bitrate_bps, door.annotated_fps), (300_000, Some(10.0)), "both patches");
        // The config's other fields still come from the file.
        let edited = [cam("door", "rtsp://h/door2")];
        assert_eq!(s.apply(&edited)[0].url, "rtsp://h/door2");
        // An API-added camera is tuned in its own record.
        s.add(cam("gate", "rtsp://h/gate"));
        s.tune("gate", &patch(r#"{"classify_fps": 1}"#));
        assert_eq!(s.added[0].classify_fps, 1.0);
        assert!(!s.tuned.contains_key("gate"));
        s.remove("door", true);
        assert!(s.tuned.is_empty(), "removed with its camera");
    }

    #[test]
    fn the_file_round_trips_with_mode_0600_and_bad_files_are_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("infercast-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = path_for(&dir.join("site.toml"));
        assert_eq!(path.file_name().unwrap(), "site.state.json");
        assert_eq!(State::load(&path).unwrap(), State::default(), "no file: empty");
        let mut s = State::default();
        s.add(cam("gate", "rtsp://user:secret@h/gate"));
        s.remove("yard", true);
        s.tuned.insert("door".into(), CameraPatch { annotated_fps: Some(None), ..Default::default() });
        s.save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap(), s);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&path, r#"{"added": [{"name": "x", "url": "rtsp://user:secret@h/"}], "extra": 1}"#).unwrap();
        let err = State::load(&path).unwrap_err();
        assert!(err.contains("site.state.json") && err.contains("line 1") && !err.contains("secret"), "{err}");
        std::fs::write(&path, r#"{"added": [{"name": "bad name", "url": "rtsp://h/"}]}"#).unwrap();
        assert!(State::load(&path).unwrap_err().contains("bad name"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
