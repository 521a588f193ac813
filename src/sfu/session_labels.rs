//! The per-session SFU's `labels` data channel (webrtc 0.21): noticing when
//! the viewer's channel opens or closes, and sending one label on it.

use std::sync::Arc;

use tokio::sync::watch;
use webrtc::data_channel::{DataChannel, DataChannelEvent};

use super::label_channel::{LABELS_CHANNEL, MAX_LABEL_BACKLOG_BYTES, label_message};
use super::rtp_state::RtpState;
use crate::labels::Label;

/// The viewer's open `labels` channel, `None` while there is none.
pub(super) type OpenChannel = watch::Sender<Option<Arc<dyn DataChannel>>>;

/// Watches a data channel the viewer opened: if it is the `labels` channel,
/// `open` holds it from its `OnOpen` until it closes. Runs in a task of its
/// own (its label is a round trip to the connection's driver, which calls
/// the handler that calls this). Whatever the viewer sends on it is dropped:
/// the channel goes one way.
pub(super) fn watch_channel(dc: Arc<dyn DataChannel>, open: Arc<OpenChannel>) {
    tokio::spawn(async move {
        if dc.label().await.ok().as_deref() != Some(LABELS_CHANNEL) {
            return;
        }
        while let Some(event) = dc.poll().await {
            match event {
                DataChannelEvent::OnOpen => {
                    open.send_replace(Some(dc.clone()));
                }
                DataChannelEvent::OnClose => break,
                _ => {}
            }
        }
        open.send_replace(None);
    });
}

/// Sends `label` on `dc`, keyed to the RTP timestamp `rtp` gave its frame;
/// true if it went out. Skipped before the first frame, for a frame of
/// another pts timeline ([`RtpState::timestamp_of`]) and while the channel
/// has more than [`MAX_LABEL_BACKLOG_BYTES`] queued.
pub(super) async fn send_label(dc: &dyn DataChannel, rtp: &RtpState, label: &Label) -> bool {
    let Some(rtp_timestamp) = rtp.timestamp_of(label.frame_pts) else { return false };
    if dc.outstanding_bytes().await.map_or(true, |queued| queued > MAX_LABEL_BACKLOG_BYTES) {
        return false;
    }
    match dc.send_text(&label_message(label, rtp_timestamp)).await {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!("label not sent: {e}");
            false
        }
    }
}
