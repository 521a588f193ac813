//! The cameras of this node, changed while it runs: `POST` and `DELETE
//! /api/cameras` start and stop one camera, `PATCH` tunes one without a
//! restart, SIGHUP reads the config file again and applies the difference
//! (added, removed and changed cameras, tuned where only tunable settings
//! changed; the others are not touched). Changes made through the API persist in the
//! state file beside the config ([`state`]) and are applied over the
//! config's cameras at start and on every reload. In cluster mode the camera
//! list is the shared config's alone: changes are refused.

pub mod patch;
pub mod state;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use self::patch::CameraPatch;
use self::state::State;
use crate::config::{CameraConfig, Config};
use crate::pipeline::tuning::CameraTuning;
use crate::pipeline::{Camera, Services};

/// Longest wait for a removed camera's source session to close.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error(
        "cameras cannot be changed at run time in cluster mode: every node reads the same config; edit it and restart the nodes"
    )]
    Clustered,
    #[error("{0}")]
    Invalid(String),
    #[error("camera {0:?} exists already (DELETE it first, or pick another name)")]
    Exists(String),
    #[error("no camera named {0:?}")]
    NotFound(String),
    #[error("{max} cameras run already ([limits] cameras)")]
    TooMany { max: usize },
    /// The change was made but could not be saved (it is lost at restart).
    #[error("{0}")]
    Persist(String),
    #[error("cannot start camera {name:?}: {reason}")]
    Start { name: String, reason: String },
}

/// What a reload changed, by camera name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Restarted with their new settings.
    pub changed: Vec<String>,
    /// Only tunable settings changed: applied without a restart.
    pub tuned: Vec<String>,
    pub unchanged: usize,
}

struct Running {
    camera: Arc<Camera>,
    config: CameraConfig,
    cancel: CancellationToken,
    /// Started by a WHIP publisher ([`Cameras::add_published`]): not saved,
    /// not in the config, left alone by a reload.
    published: bool,
}

/// The changes' own state, held across one change at a time.
struct Changes {
    /// The config's cameras (file and command line).
    base: Vec<CameraConfig>,
    state: State,
}

/// Every camera of this node, by name.
pub struct Cameras {
    running: RwLock<BTreeMap<String, Running>>,
    changes: tokio::sync::Mutex<Changes>,
    services: Services,
    sfu: Arc<crate::sfu::Sfu>,
    cancel: CancellationToken,
    /// `[cluster]`: cameras start in standby and changes are refused.
    clustered: bool,
    max: usize,
    /// The config file (reloaded on SIGHUP) and the cameras from the command line.
    file: Option<PathBuf>,
    arg_cameras: Vec<CameraConfig>,
    state_file: Option<PathBuf>,
}

impl Cameras {
    /// Starts `config`'s cameras with the state file's changes applied.
    /// Errors: a state file that cannot be read or names too many cameras,
    /// a camera that cannot start.
    pub fn start(
        config: &Config,
        services: Services,
        sfu: Arc<crate::sfu::Sfu>,
        cancel: CancellationToken,
    ) -> Result<Arc<Cameras>, String> {
        let clustered = config.cluster.is_some();
        let state_file = config.file.as_deref().map(state::path_for).filter(|_| !clustered);
        let state = match &state_file {
            Some(path) => State::load(path)?,
            None => State::default(),
        };
        let base = config.cameras.clone();
        let cameras = Arc::new(Cameras {
            running: RwLock::default(),
            changes: tokio::sync::Mutex::new(Changes { base: base.clone(), state: state.clone() }),
            services,
            sfu,
            cancel,
            clustered,
            max: config.limits.cameras,
            file: config.file.clone(),
            arg_cameras: config.arg_cameras.clone(),
            state_file,
        });
        let wanted = state.apply(&base);
        if wanted.len() > cameras.max {
            return Err(format!(
                "{} cameras with the state file's changes; limits.cameras = {} allows no more",
                wanted.len(),
                cameras.max
            ));
        }
        for cam in wanted {
            cameras.spawn(cam).map_err(|e| e.to_string())?;
        }
        Ok(cameras)
    }

    /// The publishers of `whip:` cameras.
    pub fn whip(&self) -> &Arc<crate::ingest::whip::WhipFeeds> {
        &self.services.whip
    }

    pub fn get(&self, name: &str) -> Option<Arc<Camera>> {
        self.read().get(name).map(|r| r.camera.clone())
    }

    /// Every camera, by name.
    pub fn list(&self) -> Vec<Arc<Camera>> {
        self.read().values().map(|r| r.camera.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// The cameras now, as a map (cluster mode, whose list never changes).
    pub fn snapshot(&self) -> Arc<BTreeMap<String, Arc<Camera>>> {
        Arc::new(self.read().iter().map(|(n, r)| (n.clone(), r.camera.clone())).collect())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Running>> {
        self.running.read().expect("cameras lock is never poisoned")
    }

    /// Starts `config`'s camera now and saves the change. A camera given
    /// through the API is taken as is: no `${VAR}` expansion.
    pub async fn add(&self, config: CameraConfig) -> Result<Arc<Camera>, ManageError> {
        if self.clustered {
            return Err(ManageError::Clustered);
        }
        config.validate().map_err(ManageError::Invalid)?;
        crate::ingest::CameraUrl::parse(&config.url)
            .map_err(|e| ManageError::Invalid(format!("camera {:?}: url: {e}", config.name)))?;
        let mut changes = self.changes.lock().await;
        if self.read().contains_key(&config.name) {
            return Err(ManageError::Exists(config.name));
        }
        if self.len() >= self.max {
            return Err(ManageError::TooMany { max: self.max });
        }
        let camera = self.spawn(config.clone())?;
        tracing::info!(camera = %config.name, "camera added");
        changes.state.add(config);
        self.save(&changes.state)?;
        Ok(camera)
    }

    /// Starts `whip:` camera `name` for a publisher (`POST /whip/{name}` of a
    /// camera that does not exist), with the default settings. Not saved: it
    /// goes with [`Cameras::remove_published`] (its publisher's `DELETE`) or
    /// a restart. Errors: cluster mode, an invalid name, too many cameras.
    pub async fn add_published(&self, name: &str) -> Result<Arc<Camera>, ManageError> {
        if self.clustered {
            return Err(ManageError::Clustered);
        }
        let config = CameraConfig::new(name, "whip:");
        config.validate().map_err(ManageError::Invalid)?;
        let _changes = self.changes.lock().await;
        if let Some(camera) = self.get(name) {
            return Ok(camera);
        }
        if self.len() >= self.max {
            return Err(ManageError::TooMany { max: self.max });
        }
        let camera = self.spawn_as(config, true)?;
        tracing::info!(camera = name, "camera added for a WHIP publisher");
        Ok(camera)
    }

    /// Whether `name` was started by [`Cameras::add_published`].
    pub fn is_published(&self, name: &str) -> bool {
        self.read().get(name).is_some_and(|r| r.published)
    }

    /// Stops camera `name` if [`Cameras::add_published`] started it; false otherwise.
    pub async fn remove_published(&self, name: &str) -> bool {
        let _changes = self.changes.lock().await;
        if !self.is_published(name) {
            return false;
        }
        tracing::info!(camera = name, "camera of a WHIP publisher removed");
        self.stop(name).await
    }

    /// Stops camera `name` (its viewer sessions end first) and saves the change.
    pub async fn remove(&self, name: &str) -> Result<(), ManageError> {
        if self.clustered {
            return Err(ManageError::Clustered);
        }
        let mut changes = self.changes.lock().await;
        if !self.stop(name).await {
            return Err(ManageError::NotFound(name.to_owned()));
        }
        tracing::info!(camera = name, "camera removed");
        let configured = changes.base.iter().any(|c| c.name == name);
        changes.state.remove(name, configured);
        self.save(&changes.state)?;
        Ok(())
    }

    /// Changes camera `name`'s tunable settings without a restart (see
    /// [`Camera::tune`]; its viewers stay) and saves the change. Errors: cluster
    /// mode, no such camera, a value out of range (nothing changed then).
    pub async fn patch(&self, name: &str, patch: &CameraPatch) -> Result<Arc<Camera>, ManageError> {
        if self.clustered {
            return Err(ManageError::Clustered);
        }
        let mut changes = self.changes.lock().await;
        let (camera, mut config) = {
            let running = self.read();
            let r = running.get(name).ok_or_else(|| ManageError::NotFound(name.to_owned()))?;
            (r.camera.clone(), r.config.clone())
        };
        patch.apply(&mut config);
        config.validate().map_err(ManageError::Invalid)?;
        camera.tune(CameraTuning::of(&config));
        if let Some(r) = self.running.write().expect("cameras lock is never poisoned").get_mut(name) {
            r.config = config;
        }
        tracing::info!(camera = name, ?patch, "camera tuned");
        changes.state.tune(name, patch);
        self.save(&changes.state)?;
        Ok(camera)
    }

    /// Reads the config file again and applies its camera list (with the
    /// state file's changes): starts added cameras, stops removed ones,
    /// restarts changed ones (tunes those whose only changes are tunable);
    /// the others run on untouched. Only cameras are
    /// applied; other settings need a restart. Errors: no config file,
    /// cluster mode, a file that does not load (nothing is changed then).
    pub async fn reload(&self) -> Result<Reloaded, String> {
        let Some(file) = &self.file else {
            return Err("no config file to read again (started without --config)".into());
        };
        if self.clustered {
            return Err(ManageError::Clustered.to_string());
        }
        let config = Config::load(file).map_err(|e| e.to_string())?;
        let mut base = config.cameras;
        base.extend(self.arg_cameras.iter().cloned());
        let mut changes = self.changes.lock().await;
        let mut state = changes.state.clone();
        state.prune(&base);
        let wanted = state.apply(&base);
        let mut names = std::collections::HashSet::new();
        if let Some(twice) = wanted.iter().find(|c| !names.insert(c.name.as_str())) {
            return Err(format!("camera {:?} is configured twice (the file and the command line)", twice.name));
        }
        if wanted.len() > self.max {
            return Err(format!("{} cameras; limits.cameras = {} allows no more", wanted.len(), self.max));
        }
        let current: BTreeMap<String, CameraConfig> =
            self.read().iter().map(|(n, r)| (n.clone(), r.config.clone())).collect();
        let mut done = Reloaded::default();
        let published: Vec<String> = self.read().iter().filter(|(_, r)| r.published).map(|(n, _)| n.clone()).collect();
        let stays = |n: &String| published.contains(n) || wanted.iter().any(|c| &c.name == n);
        for name in current.keys().filter(|n| !stays(n)) {
            self.stop(name).await;
            done.removed.push(name.clone());
        }
        for cam in wanted {
            match current.get(&cam.name) {
                Some(old) if *old == cam => done.unchanged += 1,
                Some(old) if CameraTuning::only_tuning_differs(old, &cam) => {
                    if let Some(r) = self.running.write().expect("cameras lock is never poisoned").get_mut(&cam.name) {
                        r.camera.tune(CameraTuning::of(&cam));
                        r.config = cam.clone();
                    }
                    done.tuned.push(cam.name.clone());
                }
                Some(_) => {
                    self.stop(&cam.name).await;
                    done.changed.push(cam.name.clone());
                    self.spawn(cam).map_err(|e| e.to_string())?;
                }
                None => {
                    done.added.push(cam.name.clone());
                    self.spawn(cam).map_err(|e| e.to_string())?;
                }
            }
        }
        changes.base = base;
        if state != changes.state {
            changes.state = state;
            self.save(&changes.state).map_err(|e| e.to_string())?;
        }
        Ok(done)
    }

    fn spawn(&self, config: CameraConfig) -> Result<Arc<Camera>, ManageError> {
        self.spawn_as(config, false)
    }

    fn spawn_as(&self, config: CameraConfig, published: bool) -> Result<Arc<Camera>, ManageError> {
        let name = config.name.clone();
        let cancel = self.cancel.child_token();
        let camera = Camera::spawn_with(config.clone(), &self.services, !self.clustered, cancel.clone())
            .map_err(|e| ManageError::Start { name: name.clone(), reason: e.to_string() })?;
        let running = Running { camera: camera.clone(), config, cancel, published };
        self.running.write().expect("cameras lock is never poisoned").insert(name, running);
        Ok(camera)
    }

    /// Takes `name` out of the list (new requests get 404), ends its viewer
    /// sessions, stops its source and forgets its labels. False if no such camera.
    async fn stop(&self, name: &str) -> bool {
        let Some(running) = self.running.write().expect("cameras lock is never poisoned").remove(name) else {
            return false;
        };
        self.sfu.close_camera(name).await;
        running.cancel.cancel();
        if !running.camera.stood_by(STOP_TIMEOUT).await {
            tracing::warn!(camera = name, "camera did not stop within {} s", STOP_TIMEOUT.as_secs());
        }
        self.services.hub.remove(name);
        self.services.labels.forget(name);
        self.services.whip.forget(name);
        true
    }

    fn save(&self, state: &State) -> Result<(), ManageError> {
        let Some(path) = &self.state_file else { return Ok(()) };
        state.save(path).map_err(|e| {
            tracing::error!(error = %e, "run-time camera change not saved");
            ManageError::Persist(format!("done, but not saved (lost at restart): {e}"))
        })
    }
}
