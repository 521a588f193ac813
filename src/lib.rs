//! infercast: an edge video-analytics broadcaster. RTSP cameras in, ImageNet
//! labels (REST) and live WebRTC video out, in one process.
//!
//! Module map (see `shared/design.md`): [`config`] the TOML schema,
//! [`media`] plain frame types, [`infer`] the ONNX Runtime classifier,
//! [`classify`] the still-photo command, [`telemetry`] logging.

pub mod api;
pub mod app;
pub mod auth;
pub mod bus;
pub mod classify;
pub mod cluster;
pub mod codec;
pub mod config;
#[cfg(test)]
mod fuzz;
pub mod hub;
pub mod infer;
pub mod ingest;
pub mod labels;
pub mod manage;
pub mod media;
pub mod overlay;
pub mod pipeline;
pub mod rooms;
pub mod sched;
pub mod sfu;
pub mod telemetry;
