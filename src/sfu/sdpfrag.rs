//! SDP fragments of trickle ICE and ICE restarts (RFC 8840, as WHIP/WHEP
//! carry them in `PATCH` bodies of type `application/trickle-ice-sdpfrag`):
//! parsing the viewer's, writing ours, and the renewed offer of a restart.

/// Most candidates one fragment may carry (a browser gathers a handful).
pub const MAX_CANDIDATES: usize = 64;

/// What a viewer's fragment says.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SdpFragment {
    /// `a=ice-ufrag` (session or media level), if given.
    pub ice_ufrag: Option<String>,
    /// `a=ice-pwd`, if given.
    pub ice_pwd: Option<String>,
    /// `a=mid` of the media section the candidates belong to.
    pub mid: Option<String>,
    /// `candidate:…` attribute values (RFC 8839 §5.1), in order.
    pub candidates: Vec<String>,
    /// `a=end-of-candidates` was present.
    pub end_of_candidates: bool,
}

/// Why a fragment was refused (a `400` for the viewer).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FragmentError {
    #[error("line {0} is not an SDP line (`x=value`)")]
    NotSdp(usize),
    #[error("line {0}: an empty {1}")]
    Empty(usize, &'static str),
    #[error("more than {MAX_CANDIDATES} candidates")]
    TooManyCandidates,
    #[error("more than one media section: with BUNDLE only the first carries candidates")]
    TwoMediaSections,
}

impl SdpFragment {
    /// Parses `body` (CRLF or LF lines). Unknown attributes (`ice-options`,
    /// `group`) are ignored; an `m=` line only marks the media section.
    pub fn parse(body: &str) -> Result<SdpFragment, FragmentError> {
        let mut f = SdpFragment::default();
        let mut media_sections = 0;
        for (i, line) in body.lines().map(str::trim_end).enumerate().filter(|(_, l)| !l.is_empty()) {
            let n = i + 1;
            let bytes = line.as_bytes();
            if bytes.len() < 2 || bytes[1] != b'=' || !bytes[0].is_ascii_lowercase() {
                return Err(FragmentError::NotSdp(n));
            }
            if line.starts_with("m=") {
                media_sections += 1;
                if media_sections > 1 {
                    return Err(FragmentError::TwoMediaSections);
                }
                continue;
            }
            let Some(attr) = line.strip_prefix("a=") else { continue };
            let (name, value) = attr.split_once(':').map_or((attr, ""), |(n, v)| (n, v.trim()));
            let non_empty = |what: &'static str| {
                if value.is_empty() { Err(FragmentError::Empty(n, what)) } else { Ok(value.to_owned()) }
            };
            match name {
                "ice-ufrag" => f.ice_ufrag = Some(non_empty("ice-ufrag")?),
                "ice-pwd" => f.ice_pwd = Some(non_empty("ice-pwd")?),
                "mid" => f.mid = Some(non_empty("mid")?),
                "candidate" => {
                    if f.candidates.len() == MAX_CANDIDATES {
                        return Err(FragmentError::TooManyCandidates);
                    }
                    f.candidates.push(format!("candidate:{}", non_empty("candidate")?));
                }
                "end-of-candidates" => f.end_of_candidates = true,
                _ => {}
            }
        }
        Ok(f)
    }
}

/// `offer` with its ICE credentials replaced by `ufrag`/`pwd` and its
/// candidates removed: the offer an ICE restart renews (WHEP keeps every
/// other negotiated parameter; the new candidates are added one by one).
pub fn renewed_offer(offer: &str, ufrag: &str, pwd: &str) -> String {
    let mut out = String::with_capacity(offer.len());
    for line in offer.lines().map(str::trim_end) {
        let line = if line.starts_with("a=ice-ufrag:") {
            format!("a=ice-ufrag:{ufrag}")
        } else if line.starts_with("a=ice-pwd:") {
            format!("a=ice-pwd:{pwd}")
        } else if line.starts_with("a=candidate:") || line == "a=end-of-candidates" {
            continue;
        } else {
            line.to_owned()
        };
        out.push_str(&line);
        out.push_str("\r\n");
    }
    out
}

/// Our side of a restart as a fragment: the first media section's `m=` and
/// `a=mid` lines, the new credentials and every candidate of `answer`
/// (already rewritten for `public_ips`), then `a=end-of-candidates`.
pub fn answer_fragment(answer: &str) -> Option<String> {
    let mut ufrag = None;
    let mut pwd = None;
    let (mut m_line, mut mid) = (None, None);
    let mut candidates = Vec::new();
    for line in answer.lines().map(str::trim_end) {
        if line.starts_with("m=") {
            if m_line.is_some() {
                break; // BUNDLE: the first section carries the transport
            }
            m_line = Some(line);
        } else if let Some(v) = line.strip_prefix("a=ice-ufrag:") {
            ufrag.get_or_insert(v);
        } else if let Some(v) = line.strip_prefix("a=ice-pwd:") {
            pwd.get_or_insert(v);
        } else if let Some(v) = line.strip_prefix("a=mid:") {
            mid.get_or_insert(v);
        } else if line.starts_with("a=candidate:") {
            candidates.push(line);
        }
    }
    let mut out = format!("a=ice-ufrag:{}\r\na=ice-pwd:{}\r\n", ufrag?, pwd?);
    out += &format!("{}\r\n", m_line?);
    if let Some(mid) = mid {
        out += &format!("a=mid:{mid}\r\n");
    }
    for c in candidates {
        out += &format!("{c}\r\n");
    }
    out += "a=end-of-candidates\r\n";
    Some(out)
}

/// The `a=ice-ufrag` of an SDP (the first one: BUNDLE shares it).
pub fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines().find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAGMENT: &str = "a=ice-options:trickle ice2\r\na=group:BUNDLE 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\n\
        a=mid:0\r\na=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n\
        a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 ufrag EsAw\r\n\
        a=end-of-candidates\r\n";

    #[test]
    fn a_browser_style_fragment_parses() {
        let f = SdpFragment::parse(FRAGMENT).expect("parses");
        assert_eq!(f.ice_ufrag.as_deref(), Some("EsAw"));
        assert_eq!(f.ice_pwd.as_deref(), Some("P2uYro0UCOQ4zxjKXaWCBui1"));
        assert_eq!(f.mid.as_deref(), Some("0"));
        assert_eq!(
            f.candidates,
            ["candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 ufrag EsAw"]
        );
        assert!(f.end_of_candidates);
        assert_eq!(SdpFragment::parse("").expect("empty is fine"), SdpFragment::default());
    }

    #[test]
    fn malformed_fragments_are_refused_with_the_line() {
        assert_eq!(SdpFragment::parse("a=mid:0\nhello"), Err(FragmentError::NotSdp(2)));
        assert_eq!(SdpFragment::parse("a=ice-ufrag:\n"), Err(FragmentError::Empty(1, "ice-ufrag")));
        assert_eq!(SdpFragment::parse("m=video 9 X 1\nm=audio 9 X 0\n"), Err(FragmentError::TwoMediaSections));
        let many = "a=candidate:1 1 udp 1 192.0.2.1 1 typ host\n".repeat(MAX_CANDIDATES + 1);
        assert_eq!(SdpFragment::parse(&many), Err(FragmentError::TooManyCandidates));
    }

    #[test]
    fn a_renewed_offer_has_the_new_credentials_and_no_candidates() {
        let offer = "v=0\r\na=ice-ufrag:old\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=ice-ufrag:old\r\n\
            a=ice-pwd:oldpwd\r\na=candidate:1 1 udp 1 127.0.0.1 5000 typ host\r\na=end-of-candidates\r\na=mid:0\r\n";
        let renewed = renewed_offer(offer, "new", "newpwd");
        assert_eq!(
            renewed,
            "v=0\r\na=ice-ufrag:new\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=ice-ufrag:new\r\na=ice-pwd:newpwd\r\na=mid:0\r\n"
        );
        assert_eq!(ice_ufrag(&renewed), Some("new"));
    }

    #[test]
    fn our_fragment_carries_credentials_the_first_section_and_its_candidates() {
        let answer = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=mid:0\r\na=ice-ufrag:u1\r\na=ice-pwd:p1\r\n\
            a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
            a=mid:1\r\na=candidate:2 1 udp 1 10.0.0.1 1 typ host\r\n";
        assert_eq!(
            answer_fragment(answer).expect("complete"),
            "a=ice-ufrag:u1\r\na=ice-pwd:p1\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=mid:0\r\n\
             a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\na=end-of-candidates\r\n"
        );
        assert_eq!(answer_fragment("v=0\r\n"), None);
    }
}
