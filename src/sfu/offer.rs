//! Checks on a viewer's SDP offer before any peer connection exists: it must
//! parse, offer video, and offer H.264 in packetization-mode 1. Picks the
//! offered H.264 format that fits the stream best.

use rtc::peer_connection::sdp::RTCSessionDescription;

use super::SfuError;

/// Most media sections (`m=` lines) an offer may carry (a viewer needs one or two).
pub const MAX_MEDIA_SECTIONS: usize = 16;
/// Most formats an offer may list, in all its `m=` lines and `a=rtpmap` lines
/// each (Chromium offers about 40 video formats).
pub const MAX_FORMATS: usize = 256;

/// The H.264 format the answer will use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChosenCodec {
    pub payload_type: u8,
    /// `a=fmtp` line for the answer.
    pub fmtp: String,
}

/// Parses `offer_sdp` and picks the H.264 format to answer with. `stream_plid`
/// is the stream's `profile-level-id` (from its SPS) when known.
pub fn check_offer(
    offer_sdp: &str,
    stream_plid: Option<[u8; 3]>,
) -> Result<(RTCSessionDescription, ChosenCodec), SfuError> {
    if !offer_sdp.trim_start().starts_with("v=") {
        return Err(SfuError::MalformedOffer("body is not an SDP description (no leading v= line)".into()));
    }
    // One linear pass bounds what the SDP parser and the codec search below see.
    let (mut sections, mut listed, mut rtpmaps) = (0usize, 0usize, 0usize);
    for line in offer_sdp.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            sections += 1;
            listed += m.split_whitespace().count().saturating_sub(3);
        } else if line.starts_with("a=rtpmap:") {
            rtpmaps += 1;
        }
    }
    if sections > MAX_MEDIA_SECTIONS {
        return Err(SfuError::MalformedOffer(format!(
            "the offer has {sections} media sections; at most {MAX_MEDIA_SECTIONS} are accepted"
        )));
    }
    if listed.max(rtpmaps) > MAX_FORMATS {
        return Err(SfuError::MalformedOffer(format!(
            "the offer lists {} formats; at most {MAX_FORMATS} are accepted",
            listed.max(rtpmaps)
        )));
    }
    let offer =
        RTCSessionDescription::offer(offer_sdp.to_owned()).map_err(|e| SfuError::MalformedOffer(e.to_string()))?;
    let parsed = offer.unmarshal().map_err(|e| SfuError::MalformedOffer(e.to_string()))?;
    let video: Vec<_> = parsed.media_descriptions.iter().filter(|m| m.media_name.media == "video").collect();
    if video.is_empty() {
        return Err(SfuError::NotAcceptable("the offer has no video section".into()));
    }
    let mut offered_names = std::collections::BTreeSet::new();
    let mut h264 = Vec::new();
    for m in &video {
        let mut codecs: Vec<_> = m.codecs().into_values().collect();
        codecs.sort_by_key(|c| c.payload_type);
        for c in codecs {
            if c.name.eq_ignore_ascii_case("H264") && c.clock_rate == 90000 {
                h264.push(c);
            } else {
                offered_names.insert(c.name.clone());
            }
        }
    }
    if h264.is_empty() {
        return Err(SfuError::NotAcceptable(format!(
            "the offer has no H.264 video (offered: {}); this server forwards H.264 only",
            if offered_names.is_empty() {
                "nothing".to_owned()
            } else {
                offered_names.into_iter().collect::<Vec<_>>().join(", ")
            }
        )));
    }
    let mode1: Vec<_> = h264.iter().filter(|c| fmtp_param(&c.fmtp, "packetization-mode") == Some("1")).collect();
    if mode1.is_empty() {
        return Err(SfuError::NotAcceptable("the offer's H.264 formats all lack packetization-mode=1".into()));
    }
    let plid_of = |c: &rtc::sdp::util::Codec| fmtp_param(&c.fmtp, "profile-level-id").and_then(parse_plid);
    let stream = stream_plid.unwrap_or([0x42, 0xe0, 0x1f]);
    // Same profile and constraints (what the H.264 fmtp match requires), else same
    // profile, else constrained baseline, else the first.
    let exact = mode1.iter().find(|c| plid_of(c).is_some_and(|p| p[..2] == stream[..2]));
    let chosen = exact
        .or_else(|| mode1.iter().find(|c| plid_of(c).is_some_and(|p| p[0] == stream[0])))
        .or_else(|| mode1.iter().find(|c| plid_of(c).is_some_and(|p| p[..2] == [0x42, 0xe0])))
        .unwrap_or(&mode1[0]);
    let fmtp = if exact.is_some() && stream_plid.is_some() {
        format!(
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={:02x}{:02x}{:02x}",
            stream[0], stream[1], stream[2]
        )
    } else {
        chosen.fmtp.clone()
    };
    Ok((offer, ChosenCodec { payload_type: chosen.payload_type, fmtp }))
}

fn fmtp_param<'a>(fmtp: &'a str, key: &str) -> Option<&'a str> {
    fmtp.split(';').filter_map(|kv| kv.trim().split_once('=')).find(|(k, _)| k.trim() == key).map(|(_, v)| v.trim())
}

fn parse_plid(s: &str) -> Option<[u8; 3]> {
    if s.len() != 6 {
        return None;
    }
    let v = u32::from_str_radix(s, 16).ok()?;
    Some([(v >> 16) as u8, (v >> 8) as u8, v as u8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(video_codecs: &[(u8, &str, &str)]) -> String {
        let pts: Vec<String> = video_codecs.iter().map(|c| c.0.to_string()).collect();
        let mut s = format!(
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
             m=video 9 UDP/TLS/RTP/SAVPF {}\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\na=rtcp-mux\r\n\
             a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
             a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
             a=setup:actpass\r\n",
            pts.join(" ")
        );
        for (pt, name, fmtp) in video_codecs {
            s.push_str(&format!("a=rtpmap:{pt} {name}/90000\r\n"));
            if !fmtp.is_empty() {
                s.push_str(&format!("a=fmtp:{pt} {fmtp}\r\n"));
            }
        }
        s
    }

    #[test]
    fn too_many_sections_or_formats_are_refused_before_parsing() {
        let one = offer(&[(102, "H264", "packetization-mode=1;profile-level-id=42e01f")]);
        let (head, section) = one.split_at(one.find("m=video").expect("has video"));
        let sections = format!("{head}{}", section.repeat(MAX_MEDIA_SECTIONS + 1));
        let e = check_offer(&sections, None).expect_err("too many sections");
        assert!(e.to_string().contains("17 media sections"), "{e}");
        let formats: Vec<(u8, &str, &str)> = (0..=255u8).map(|pt| (pt, "VP8", "")).collect();
        let mut many = offer(&formats);
        many.push_str("a=rtpmap:96 VP8/90000\r\n");
        let e = check_offer(&many, None).expect_err("too many formats");
        assert!(e.to_string().contains("257 formats"), "{e}");
    }

    #[test]
    fn picks_the_offered_h264_matching_the_stream_profile() {
        let sdp = offer(&[
            (96, "VP8", ""),
            (102, "H264", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f"),
            (106, "H264", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"),
            (112, "H264", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f"),
        ]);
        let (_, c) = check_offer(&sdp, Some([0x64, 0x00, 0x1e])).expect("acceptable");
        assert_eq!(c.payload_type, 112);
        assert_eq!(c.fmtp, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001e");
        let (_, c) = check_offer(&sdp, None).expect("acceptable");
        assert_eq!(c.payload_type, 106);
    }

    #[test]
    fn rejects_offers_without_usable_h264() {
        let vp8 = offer(&[(96, "VP8", "")]);
        assert!(matches!(check_offer(&vp8, None), Err(SfuError::NotAcceptable(m)) if m.contains("VP8")));
        let mode0 = offer(&[(97, "H264", "packetization-mode=0;profile-level-id=42e01f")]);
        assert!(matches!(check_offer(&mode0, None), Err(SfuError::NotAcceptable(_))));
        assert!(matches!(check_offer("hello", None), Err(SfuError::MalformedOffer(_))));
        assert!(matches!(check_offer("v=0\r\nm=video\r\n", None), Err(SfuError::MalformedOffer(_))));
    }
}
