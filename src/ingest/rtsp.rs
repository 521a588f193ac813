//! RTSP cameras through retina: DESCRIBE / SETUP (TCP interleaved) / PLAY with
//! timeouts, digest or basic auth from the URL, H.264 and H.265 access units in
//! Annex B (parameter sets before each keyframe), in decode order,
//! capture times from RTCP sender reports (re-anchored when the camera's RTP
//! timestamps jump), and a cap on the size of one access unit.

use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use retina::client::{Credentials, Demuxed, PlayOptions, SessionOptions, SetupOptions, TcpTransportOptions, Transport};
use retina::codec::{CodecItem, FrameFormat, ParametersRef};

use super::{CameraUrl, IngestError, StreamInfo};
use crate::media::AccessUnit;

/// Timeouts of one RTSP session.
#[derive(Clone, Debug)]
pub struct RtspOptions {
    /// Limit for each of DESCRIBE, SETUP and PLAY.
    pub request_timeout: Duration,
    /// Longest wait for the next frame before the camera counts as hung.
    pub frame_timeout: Duration,
    /// Largest access unit accepted, in bytes; a larger one ends the session
    /// ([`IngestError::AccessUnitTooLarge`]). retina assembles a whole access
    /// unit before handing it over, so this bounds everything after retina
    /// (hub, decode queue, decoder); retina's own buffer is freed with the
    /// session, and `frame_timeout` bounds how long it can keep growing.
    pub max_access_unit_bytes: usize,
    /// End a session by closing its TCP connection at once, with no
    /// `TEARDOWN` sent in the background first (retina's default keeps the
    /// connection open until that answer comes). Cluster mode sets it, so a
    /// camera handed to another node is never pulled by both.
    pub close_at_once: bool,
}

impl Default for RtspOptions {
    fn default() -> Self {
        RtspOptions {
            request_timeout: Duration::from_secs(5),
            frame_timeout: Duration::from_secs(5),
            max_access_unit_bytes: crate::config::DEFAULT_MAX_ACCESS_UNIT_BYTES as usize,
            close_at_once: false,
        }
    }
}

/// A playing RTSP session on one camera's video stream.
pub struct RtspSession {
    demuxed: Pin<Box<Demuxed>>,
    stream_i: usize,
    info: StreamInfo,
    clock: CaptureClock,
    frame_timeout: Duration,
    max_access_unit_bytes: usize,
}

/// First line of a retina error: later lines hold connection context (addresses,
/// packet positions) that belong in debug logs, not in the camera's state.
fn first_line(e: &retina::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().trim().to_owned()
}

fn classify_error(e: &retina::Error) -> IngestError {
    match e.status_code() {
        Some(401) => IngestError::Unauthorized,
        Some(404) => IngestError::NotFound,
        Some(_) => IngestError::Refused(first_line(e)),
        None => IngestError::Connect(first_line(e)),
    }
}

async fn within<T>(
    camera: &CameraUrl,
    step: &'static str,
    after: Duration,
    fut: impl Future<Output = Result<T, retina::Error>>,
) -> Result<T, IngestError> {
    match tokio::time::timeout(after, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::debug!(error = %camera.scrub(&e.to_string()), step, "RTSP request failed");
            Err(classify_error(&e))
        }
        Err(_) => Err(IngestError::Timeout { step, after }),
    }
}

/// The name users know a codec by, from the SDP encoding name.
fn codec_name(encoding: &str) -> String {
    match encoding {
        "h264" => "H.264".into(),
        "h265" => "H.265".into(),
        "jpeg" => "MJPEG".into(),
        other => other.to_uppercase(),
    }
}

impl RtspSession {
    /// Connects and starts playing the first video stream. Errors: timeouts,
    /// refused or unreachable hosts, 401, 404, no video, or a codec other than
    /// H.264 or H.265.
    pub async fn connect(camera: &CameraUrl, options: &RtspOptions) -> Result<RtspSession, IngestError> {
        let creds = camera.credentials().map(|(u, p)| Credentials { username: u.to_owned(), password: p.to_owned() });
        let session_options =
            SessionOptions::default().creds(creds).user_agent(concat!("infercast/", env!("CARGO_PKG_VERSION")).into());
        let session_options = if options.close_at_once {
            session_options.teardown(retina::client::TeardownPolicy::Never)
        } else {
            session_options
        };
        let t = options.request_timeout;
        let mut session =
            within(camera, "DESCRIBE", t, retina::client::Session::describe(camera.url().clone(), session_options))
                .await?;
        let stream_i = session.streams().iter().position(|s| s.media() == "video").ok_or(IngestError::NoVideo)?;
        let stream = &session.streams()[stream_i];
        let codec = codec_name(stream.encoding_name());
        if !matches!(stream.encoding_name(), "h264" | "h265") {
            return Err(IngestError::UnsupportedCodec(codec));
        }
        let mut info = StreamInfo { codec, fps: stream.framerate(), ..StreamInfo::default() };
        if let Some(ParametersRef::Video(v)) = stream.parameters() {
            let (w, h) = v.pixel_dimensions();
            (info.width, info.height) = (Some(w), Some(h));
        }
        let setup = SetupOptions::default()
            .transport(Transport::Tcp(TcpTransportOptions::default()))
            .frame_format(FrameFormat::SIMPLE);
        within(camera, "SETUP", t, session.setup(stream_i, setup)).await?;
        let playing = within(camera, "PLAY", t, session.play(PlayOptions::default())).await?;
        let demuxed = playing.demuxed().map_err(|e| IngestError::Stream(first_line(&e)))?;
        Ok(RtspSession {
            demuxed: Box::pin(demuxed),
            stream_i,
            info,
            clock: CaptureClock::default(),
            frame_timeout: options.frame_timeout,
            max_access_unit_bytes: options.max_access_unit_bytes,
        })
    }

    pub fn info(&self) -> &StreamInfo {
        &self.info
    }

    /// The next video access unit. Errors when the camera ends the stream, sends
    /// something retina cannot parse, sends nothing for `frame_timeout`, or
    /// sends an access unit over `max_access_unit_bytes` (dropped unread).
    pub async fn next(&mut self) -> Result<AccessUnit, IngestError> {
        loop {
            let item = tokio::time::timeout(self.frame_timeout, self.demuxed.next())
                .await
                .map_err(|_| IngestError::Timeout { step: "waiting for a frame", after: self.frame_timeout })?;
            let item = match item {
                None => return Err(IngestError::Ended),
                Some(Err(e)) => return Err(IngestError::Stream(first_line(&e))),
                Some(Ok(item)) => item,
            };
            match item {
                CodecItem::VideoFrame(f) if f.stream_id() == self.stream_i => {
                    if f.data().len() > self.max_access_unit_bytes {
                        return Err(IngestError::AccessUnitTooLarge {
                            bytes: f.data().len(),
                            limit: self.max_access_unit_bytes,
                        });
                    }
                    let received_at = Instant::now();
                    let ts = f.timestamp();
                    let rate = i64::from(ts.clock_rate().get());
                    let pts_90k = ts.elapsed() * 90_000 / rate;
                    let jumps = self.clock.jumps;
                    let captured_at = self.clock.captured_at(ts.timestamp(), rate, SystemTime::now());
                    if self.clock.jumps > jumps && self.clock.jumps.is_power_of_two() {
                        tracing::warn!(
                            jumps = self.clock.jumps,
                            "the camera's RTP timestamps jumped; capture times re-anchored at arrival"
                        );
                    }
                    if f.has_new_parameters()
                        && let Some(ParametersRef::Video(v)) = self.demuxed.streams()[self.stream_i].parameters()
                    {
                        let (w, h) = v.pixel_dimensions();
                        (self.info.width, self.info.height) = (Some(w), Some(h));
                    }
                    let keyframe = f.is_random_access_point();
                    let data = Bytes::from(f.into_data());
                    return Ok(AccessUnit::new(data, pts_90k, keyframe, received_at, captured_at));
                }
                CodecItem::Rtcp(rtcp) if rtcp.stream_id() == self.stream_i => {
                    let Some(rtp_ts) = rtcp.rtp_timestamp() else { continue };
                    if let Some(Ok(Some(sr))) = rtcp.pkts().next().map(|p| p.as_sender_report()) {
                        let rate = i64::from(rtp_ts.clock_rate().get());
                        self.clock.sender_report(rtp_ts.timestamp(), ntp_to_system_time(sr.ntp_timestamp()), rate);
                    }
                }
                _ => {}
            }
        }
    }
}

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET_S: u64 = 2_208_988_800;

fn ntp_to_system_time(ntp: retina::NtpTimestamp) -> SystemTime {
    let secs = (ntp.0 >> 32).saturating_sub(NTP_UNIX_OFFSET_S);
    let nanos = ((ntp.0 & 0xFFFF_FFFF) * 1_000_000_000) >> 32;
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos)
}

/// Maps RTP timestamps to wall-clock capture times: through the latest RTCP
/// sender report (camera's clock) when there is one, else anchored at the
/// first frame's arrival.
///
/// A camera whose RTP timestamps jump (by ±2³¹ even, which retina's 32-bit
/// unwrapping reads as hours back) is re-anchored at the arrival of the first
/// frame after the jump, until a sender report on the new timeline comes; a
/// sender report from the old timeline (more than [`MAX_FRAME_GAP_S`] away from
/// the latest frame) is ignored.
#[derive(Debug, Default)]
pub struct CaptureClock {
    /// `(extended RTP timestamp, wall time)` of the reference point.
    reference: Option<(i64, SystemTime)>,
    from_sender_report: bool,
    /// Extended RTP timestamp of the latest frame.
    last_frame_ts: Option<i64>,
    /// Times the RTP timeline jumped (re-anchored).
    pub jumps: u64,
}

/// Largest step between consecutive frames' RTP timestamps, in seconds, that
/// is still one timeline; beyond it (either way) the camera's clock jumped.
pub const MAX_FRAME_GAP_S: i64 = 10;

impl CaptureClock {
    /// A sender report mapping `rtp_ts` (extended) to the camera's `wall` clock.
    /// Ignored when far from the latest frame's timestamp (sent before a jump);
    /// `clock_rate_hz` of the stream.
    pub fn sender_report(&mut self, rtp_ts: i64, wall: SystemTime, clock_rate_hz: i64) {
        if self.last_frame_ts.is_some_and(|last| (rtp_ts - last).abs() > MAX_FRAME_GAP_S * clock_rate_hz.max(1)) {
            return;
        }
        self.reference = Some((rtp_ts, wall));
        self.from_sender_report = true;
    }

    /// Capture time of a frame with extended RTP timestamp `rtp_ts` at `clock_rate_hz`
    /// that arrived at `now`.
    pub fn captured_at(&mut self, rtp_ts: i64, clock_rate_hz: i64, now: SystemTime) -> SystemTime {
        let rate = clock_rate_hz.max(1);
        let jumped = self.last_frame_ts.is_some_and(|last| (rtp_ts - last).abs() > MAX_FRAME_GAP_S * rate);
        self.last_frame_ts = Some(rtp_ts);
        if jumped {
            self.jumps += 1;
            self.reference = Some((rtp_ts, now));
            self.from_sender_report = false;
        }
        let (ref_ts, ref_wall) = *self.reference.get_or_insert((rtp_ts, now));
        let delta_ns = i128::from(rtp_ts - ref_ts) * 1_000_000_000 / i128::from(rate);
        let delta = Duration::from_nanos(u64::try_from(delta_ns.unsigned_abs()).unwrap_or(u64::MAX));
        let shifted = if delta_ns >= 0 { ref_wall.checked_add(delta) } else { ref_wall.checked_sub(delta) };
        shifted.unwrap_or(ref_wall)
    }

    /// Whether capture times come from the camera's sender reports.
    pub fn is_from_sender_report(&self) -> bool {
        self.from_sender_report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_clock_anchors_then_follows_sender_reports() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut c = CaptureClock::default();
        assert_eq!(c.captured_at(90_000, 90_000, t0), t0);
        assert_eq!(c.captured_at(135_000, 90_000, t0), t0 + Duration::from_millis(500));
        let sr_wall = t0 + Duration::from_secs(10);
        c.sender_report(180_000, sr_wall, 90_000);
        assert!(c.is_from_sender_report());
        assert_eq!(c.captured_at(171_000, 90_000, t0), sr_wall - Duration::from_millis(100));
    }

    #[test]
    fn capture_clock_reanchors_when_rtp_timestamps_jump_by_2_pow_31() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut c = CaptureClock::default();
        c.sender_report(0, t0, 90_000);
        assert_eq!(c.captured_at(3600, 90_000, t0), t0 + Duration::from_millis(40));
        // retina unwraps a jump of exactly 2^31 as 2^31 back (~6.6 h): the frame is still "now".
        let later = t0 + Duration::from_millis(80);
        let back = 7200 - (1i64 << 31);
        assert_eq!(c.captured_at(back, 90_000, later), later);
        assert_eq!(c.captured_at(back + 3600, 90_000, later), later + Duration::from_millis(40));
        // A sender report sent before the jump is stale; one on the new timeline counts.
        c.sender_report(3600, t0, 90_000);
        assert!(!c.is_from_sender_report());
        c.sender_report(back + 7200, later + Duration::from_secs(1), 90_000);
        assert!(c.is_from_sender_report());
        // Forward by just under 2^31 (+6.6 h): re-anchored too.
        let ahead = back + (1i64 << 31) - 3600;
        let t2 = later + Duration::from_secs(2);
        assert_eq!(c.captured_at(ahead, 90_000, t2), t2);
        assert_eq!(c.jumps, 2);
    }

    #[test]
    fn capture_clock_never_panics_on_extreme_timestamps() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut c = CaptureClock::default();
        c.sender_report(0, now, 1);
        assert!(c.captured_at(i64::MAX / 4, 1, now) > now, "far ahead, capped, no overflow");
        let mut c = CaptureClock::default();
        c.sender_report(i64::MAX / 2, now, 1);
        let _ = c.captured_at(i64::MIN / 2, 1, now); // far behind: no overflow either
    }

    #[test]
    fn ntp_converts_to_unix_time() {
        let ntp = retina::NtpTimestamp(((NTP_UNIX_OFFSET_S + 5) << 32) | (1 << 31));
        assert_eq!(ntp_to_system_time(ntp), SystemTime::UNIX_EPOCH + Duration::from_millis(5_500));
    }
}
