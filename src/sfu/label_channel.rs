//! The `labels` data channel of a viewer session: its name, and the message
//! that carries one label keyed to the RTP timestamp of the frame it was
//! computed from (the player draws it on exactly that frame).

use serde::Serialize;

use crate::infer::ClassScore;
use crate::labels::Label;

/// The data channel a viewer opens (in its WHEP offer) to get labels.
pub const LABELS_CHANNEL: &str = "labels";

/// Most bytes a `labels` channel may have queued before a label is skipped
/// (a viewer that stops reading costs this much, no more).
pub const MAX_LABEL_BACKLOG_BYTES: usize = 64 * 1024;

/// One label as the `labels` channel sends it (one JSON text message):
/// `{"rtp_timestamp": u32, "label": str, "class_id": u32, "score": f32, "top5": [...]}`.
/// `rtp_timestamp` is the 90 kHz RTP timestamp this session's video track
/// gave the labelled frame (the same number `requestVideoFrameCallback`
/// reports as `rtpTimestamp`); `score` is the top-1 softmax probability in
/// `0.0..=1.0`; `top5` the five most probable classes, best first.
#[derive(Serialize)]
pub struct LabelMessage<'a> {
    pub rtp_timestamp: u32,
    pub label: &'a str,
    pub class_id: u32,
    pub score: f32,
    pub top5: &'a [ClassScore],
}

/// `label`'s message for a session that sent its frame with RTP timestamp
/// `rtp_timestamp`.
pub fn label_message(label: &Label, rtp_timestamp: u32) -> String {
    let m = LabelMessage {
        rtp_timestamp,
        label: &label.label,
        class_id: label.class_id,
        score: label.score,
        top5: &label.top5,
    };
    serde_json::to_string(&m).expect("a label always serialises (no maps with non-string keys)")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn message_has_the_documented_fields_and_nothing_else() {
        let top = |id: u32, name: &str, score: f32| ClassScore { label: Arc::from(name), class_id: id, score };
        let label = Label {
            camera: "door".into(),
            label: Arc::from("tabby"),
            class_id: 281,
            score: 0.75,
            top5: vec![top(281, "tabby", 0.75), top(282, "tiger cat", 0.125)],
            frame_pts: 9000,
            captured_at: chrono::Utc::now(),
            latency_ms: 12.0,
        };
        let v: serde_json::Value = serde_json::from_str(&label_message(&label, u32::MAX)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "rtp_timestamp": 4_294_967_295_u32,
                "label": "tabby",
                "class_id": 281,
                "score": 0.75,
                "top5": [
                    {"label": "tabby", "class_id": 281, "score": 0.75},
                    {"label": "tiger cat", "class_id": 282, "score": 0.125},
                ],
            })
        );
    }
}
