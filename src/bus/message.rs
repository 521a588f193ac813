//! What goes on the bus: subjects, `Nats-Msg-Id`s and payloads of labels
//! (`labels.<camera>`, the JSON `/api/labels` shows) and camera state changes
//! (`events.<camera>`).

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::labels::Label;
use crate::pipeline::CameraState;

/// A camera name as one subject token: config names are already letters,
/// digits, `-` and `_`; anything else (`.`, `*`, `>`, spaces) becomes `_`.
pub fn subject_token(camera: &str) -> String {
    let token: String =
        camera.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if token.is_empty() { "_".into() } else { token }
}

/// Subject, `Nats-Msg-Id` and JSON of a label. The id is the camera and the
/// label's capture time (unique per camera: the label store never lets it
/// repeat or go back) and frame pts.
pub fn label_message(label: &Label) -> Result<(String, String, Bytes), serde_json::Error> {
    let camera = subject_token(&label.camera);
    let id = format!("label.{camera}.{}.{}", label.captured_at.timestamp_micros(), label.frame_pts);
    Ok((format!("labels.{camera}"), id, Bytes::from(serde_json::to_vec(label)?)))
}

/// A camera's state change as published on `events.<camera>`.
#[derive(Clone, Debug, Serialize)]
pub struct CameraEvent<'a> {
    pub camera: &'a str,
    /// `connecting`, `streaming`, `degraded`, `reconnecting`, `failed` or `stopped`.
    pub state: CameraState,
    /// Why (the camera's `last_error` as `/api/cameras` shows it, without credentials).
    pub reason: Option<&'a str>,
    /// When the change happened (RFC 3339).
    pub at: DateTime<Utc>,
}

/// Subject, `Nats-Msg-Id` and JSON of a camera event.
pub fn event_message(event: &CameraEvent<'_>) -> Result<(String, String, Bytes), serde_json::Error> {
    let camera = subject_token(event.camera);
    let nanos = event.at.timestamp_nanos_opt().unwrap_or_else(|| event.at.timestamp_micros().saturating_mul(1000));
    let id = format!("event.{camera}.{nanos}");
    Ok((format!("events.{camera}"), id, Bytes::from(serde_json::to_vec(event)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_one_subject_token() {
        assert_eq!(subject_token("door-1_a"), "door-1_a");
        assert_eq!(subject_token("a.b *>"), "a_b___");
        assert_eq!(subject_token(""), "_");
    }

    #[test]
    fn label_json_is_the_api_json() {
        let label = Label {
            camera: "door".into(),
            label: std::sync::Arc::from("espresso"),
            class_id: 967,
            score: 0.5,
            top5: Vec::new(),
            frame_pts: 9000,
            captured_at: DateTime::from_timestamp(1_700_000_000, 5000).expect("valid time"),
            latency_ms: 12.0,
        };
        let (subject, id, payload) = label_message(&label).expect("serialises");
        assert_eq!(subject, "labels.door");
        assert_eq!(id, "label.door.1700000000000005.9000");
        assert_eq!(payload, serde_json::to_vec(&label).expect("serialises"));
    }
}
