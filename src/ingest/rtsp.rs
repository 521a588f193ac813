//! RTSP cameras through retina: DESCRIBE / SETUP (TCP interleaved) / PLAY with
//! timeouts, digest or basic auth from the URL, H.264 and H.265 access units in
//! Annex B (parameter sets before each keyframe), in decode order,
//! and capture times from RTCP sender reports.

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
}

impl Default for RtspOptions {
    fn default() -> Self {
        RtspOptions { request_timeout: Duration::from_secs(5), frame_timeout: Duration::from_secs(5) }
    }
}

/// A playing RTSP session on one camera's video stream.
pub struct RtspSession {
    demuxed: Pin<Box<Demuxed>>,
    stream_i: usize,
    info: StreamInfo,
    clock: CaptureClock,
    frame_timeout: Duration,
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
        })
    }

    pub fn info(&self) -> &StreamInfo {
        &self.info
    }

    /// The next video access unit. Errors when the camera ends the stream, sends
    /// something retina cannot parse, or sends nothing for `frame_timeout`.
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
                    let received_at = Instant::now();
                    let ts = f.timestamp();
                    let rate = i64::from(ts.clock_rate().get());
                    let pts_90k = ts.elapsed() * 90_000 / rate;
                    let captured_at = self.clock.captured_at(ts.timestamp(), rate, SystemTime::now());
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
                        self.clock.sender_report(rtp_ts.timestamp(), ntp_to_system_time(sr.ntp_timestamp()));
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
#[derive(Debug, Default)]
pub struct CaptureClock {
    /// `(extended RTP timestamp, wall time)` of the reference point.
    reference: Option<(i64, SystemTime)>,
    from_sender_report: bool,
}

impl CaptureClock {
    pub fn sender_report(&mut self, rtp_ts: i64, wall: SystemTime) {
        self.reference = Some((rtp_ts, wall));
        self.from_sender_report = true;
    }

    /// Capture time of a frame with extended RTP timestamp `rtp_ts` at `clock_rate_hz`.
    pub fn captured_at(&mut self, rtp_ts: i64, clock_rate_hz: i64, now: SystemTime) -> SystemTime {
        let (ref_ts, ref_wall) = *self.reference.get_or_insert((rtp_ts, now));
        let delta_ns = (rtp_ts - ref_ts) as i128 * 1_000_000_000 / i128::from(clock_rate_hz.max(1));
        let delta = Duration::from_nanos(delta_ns.unsigned_abs() as u64);
        if delta_ns >= 0 { ref_wall + delta } else { ref_wall.checked_sub(delta).unwrap_or(ref_wall) }
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
        c.sender_report(180_000, sr_wall);
        assert!(c.is_from_sender_report());
        assert_eq!(c.captured_at(171_000, 90_000, t0), sr_wall - Duration::from_millis(100));
    }

    #[test]
    fn ntp_converts_to_unix_time() {
        let ntp = retina::NtpTimestamp(((NTP_UNIX_OFFSET_S + 5) << 32) | (1 << 31));
        assert_eq!(ntp_to_system_time(ntp), SystemTime::UNIX_EPOCH + Duration::from_millis(5_500));
    }
}
