//! `PATCH` of a viewer session (WHEP, as RFC 9725 §4.3 defines it for WHIP):
//! trickle ICE adds the viewer's candidates; an ICE restart (`If-Match: "*"`
//! with new credentials) renews the offer with them and answers with our new
//! credentials and candidates. Entity-tags guard both.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use webrtc::peer_connection::{PeerConnection, RTCIceCandidateInit, RTCSessionDescription};

use super::sdpfrag::{self, SdpFragment};
use super::{Sfu, SfuError, candidates};
use crate::hub::TrackKind;

/// What a `PATCH` did.
#[derive(Debug)]
pub enum Patched {
    /// Trickle ICE: the candidates were added (HTTP 204).
    Trickled { candidates: usize },
    /// ICE restart: our new fragment (HTTP 200, `application/trickle-ice-sdpfrag`)
    /// and the session's new entity-tag.
    Restarted { fragment: String, etag: String },
}

/// A session's ICE state as `PATCH` needs it; the lock serialises the
/// `PATCH`es of one session.
pub(super) struct SessionControl {
    id: String,
    pc: Arc<dyn PeerConnection>,
    gathered: watch::Receiver<bool>,
    ice: tokio::sync::Mutex<IceGeneration>,
    /// The entity-tag now (quoted), readable without waiting for `ice`.
    etag: std::sync::Mutex<String>,
}

struct IceGeneration {
    /// The offer as last applied (renewed by each restart).
    offer: String,
    /// The viewer's ICE username fragment now.
    remote_ufrag: Option<String>,
    /// Restarts so far (0: the entity-tag is the session id).
    restarts: u32,
}

/// What a valid `PATCH` asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PatchPlan {
    Trickle,
    Restart { ufrag: String, pwd: String },
}

/// Checks a parsed fragment against `If-Match` and the session's entity-tag
/// (`current`) and ICE ufrag: a restart (`"*"` with new credentials), a
/// trickle (an entity-tag that matches, or none), or the error (412, 422).
pub(super) fn plan(
    fragment: &SdpFragment,
    if_match: Option<&str>,
    current: &str,
    remote_ufrag: Option<&str>,
) -> Result<PatchPlan, SfuError> {
    let restart = match if_match.map(str::trim) {
        Some("*") => true,
        Some(tags) => {
            if !tags.split(',').map(str::trim).any(|t| t == current || t.strip_prefix("W/") == Some(current)) {
                return Err(SfuError::PreconditionFailed { given: tags.to_owned(), current: current.to_owned() });
            }
            false
        }
        None => false,
    };
    let new_credentials = fragment.ice_ufrag.is_some() && fragment.ice_ufrag.as_deref() != remote_ufrag;
    if !restart {
        if new_credentials {
            return Err(SfuError::Unprocessable(
                "the fragment's a=ice-ufrag is not the session's: an ICE restart needs If-Match: \"*\"".into(),
            ));
        }
        return Ok(PatchPlan::Trickle);
    }
    let (Some(ufrag), Some(pwd)) = (&fragment.ice_ufrag, &fragment.ice_pwd) else {
        return Err(SfuError::Unprocessable(
            "an ICE restart (If-Match: \"*\") needs a=ice-ufrag and a=ice-pwd in the fragment".into(),
        ));
    };
    if !new_credentials {
        return Err(SfuError::Unprocessable(
            "an ICE restart needs new ICE credentials: a=ice-ufrag is the current one".into(),
        ));
    }
    Ok(PatchPlan::Restart { ufrag: ufrag.clone(), pwd: pwd.clone() })
}

pub(super) fn etag_for(id: &str, restarts: u32) -> String {
    if restarts == 0 { format!("\"{id}\"") } else { format!("\"{id}.{restarts}\"") }
}

impl SessionControl {
    pub(super) fn new(
        id: &str,
        pc: Arc<dyn PeerConnection>,
        gathered: watch::Receiver<bool>,
        offer: &str,
    ) -> SessionControl {
        let remote_ufrag = sdpfrag::ice_ufrag(offer).map(str::to_owned);
        SessionControl {
            id: id.to_owned(),
            pc,
            gathered,
            ice: tokio::sync::Mutex::new(IceGeneration { offer: offer.to_owned(), remote_ufrag, restarts: 0 }),
            etag: std::sync::Mutex::new(etag_for(id, 0)),
        }
    }

    /// The entity-tag now, quoted (`ETag`).
    pub(super) fn etag_now(&self) -> String {
        self.etag.lock().expect("etag lock is never poisoned").clone()
    }
}

impl Sfu {
    /// Applies a `PATCH` body (`application/trickle-ice-sdpfrag`) to session
    /// `id`. `if_match` is the raw `If-Match` value: `"*"` asks for an ICE
    /// restart (the fragment must carry new `ice-ufrag`/`ice-pwd`), an
    /// entity-tag must be the session's (else [`SfuError::PreconditionFailed`]),
    /// none means trickle only. Errors: no such session (404), a malformed
    /// fragment (400), new credentials without `"*"` or a restart without
    /// them (422), the WebRTC stack refusing (500).
    pub async fn patch_session(
        &self,
        camera: &str,
        kind: TrackKind,
        id: &str,
        if_match: Option<&str>,
        body: &str,
    ) -> Result<Patched, SfuError> {
        if let Some(o) = &self.one_port {
            return o.patch_session(camera, kind, id, if_match, body).await;
        }
        let control = {
            let sessions = self.sessions.lock().expect("sfu lock is never poisoned");
            match sessions.get(id) {
                Some(e) if e.camera == camera && e.kind == kind => e.control.clone(),
                _ => return Err(SfuError::SessionNotFound(id.to_owned())),
            }
        };
        let fragment = SdpFragment::parse(body).map_err(|e| SfuError::MalformedFragment(e.to_string()))?;
        let mut ice = control.ice.lock().await;
        let current = etag_for(&control.id, ice.restarts);
        if let PatchPlan::Restart { ufrag, pwd } = plan(&fragment, if_match, &current, ice.remote_ufrag.as_deref())? {
            let offer = sdpfrag::renewed_offer(&ice.offer, &ufrag, &pwd);
            let answer = self.restart(&control, &offer, &fragment).await?;
            let answer = candidates::rewrite_candidates(&answer, &self.config.public_ips);
            let ours = sdpfrag::answer_fragment(&answer)
                .ok_or_else(|| SfuError::WebRtc("the restarted answer lacks ICE credentials".into()))?;
            ice.offer = offer;
            ice.remote_ufrag = Some(ufrag);
            ice.restarts += 1;
            let etag = etag_for(&control.id, ice.restarts);
            *control.etag.lock().expect("etag lock is never poisoned") = etag.clone();
            tracing::info!(camera, track = kind.as_str(), session = id, "ICE restarted (PATCH)");
            return Ok(Patched::Restarted { fragment: ours, etag });
        }
        let n = fragment.candidates.len();
        add_candidates(control.pc.as_ref(), &fragment, ice.remote_ufrag.as_deref()).await?;
        tracing::debug!(camera, session = id, candidates = n, "trickle ICE candidates added (PATCH)");
        Ok(Patched::Trickled { candidates: n })
    }

    /// Renews the remote offer (new viewer credentials: the answerer restarts
    /// ICE), adds the fragment's candidates and returns the new local answer
    /// once gathering is complete (or after the gathering time-out).
    async fn restart(&self, control: &SessionControl, offer: &str, fragment: &SdpFragment) -> Result<String, SfuError> {
        let pc = control.pc.as_ref();
        let offer = RTCSessionDescription::offer(offer.to_owned())
            .map_err(|e| SfuError::Unprocessable(format!("the renewed offer is refused: {e}")))?;
        pc.set_remote_description(offer)
            .await
            .map_err(|e| SfuError::Unprocessable(format!("the ICE restart is refused: {e}")))?;
        let answer = pc.create_answer(None).await.map_err(super::webrtc_err)?;
        pc.set_local_description(answer).await.map_err(super::webrtc_err)?;
        add_candidates(pc, fragment, fragment.ice_ufrag.as_deref()).await?;
        let mut gathered = control.gathered.clone();
        let within = self.config.gather_timeout.max(Duration::from_millis(100));
        if tokio::time::timeout(within, gathered.wait_for(|g| *g)).await.is_err() {
            tracing::warn!(session = %control.id, "ICE gathering after the restart not complete; answering with what there is");
        }
        Ok(pc.local_description().await.ok_or_else(|| super::webrtc_err("no local description"))?.sdp)
    }
}

async fn add_candidates(pc: &dyn PeerConnection, f: &SdpFragment, ufrag: Option<&str>) -> Result<(), SfuError> {
    for candidate in &f.candidates {
        let init = RTCIceCandidateInit {
            candidate: candidate.clone(),
            sdp_mid: f.mid.clone(),
            sdp_mline_index: Some(0),
            username_fragment: ufrag.map(str::to_owned),
            ..Default::default()
        };
        pc.add_ice_candidate(init)
            .await
            .map_err(|e| SfuError::MalformedFragment(format!("candidate {candidate:?} refused: {e}")))?;
    }
    Ok(())
}
