//! The demo camera: an H.264 Annex B file played at real-time pace in a loop,
//! as if it were a camera (the built-in default when no camera is given).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};

use super::{IngestError, StreamInfo};
use crate::codec::annexb::nal_type::{
    AUD as NAL_AUD, IDR_SLICE as NAL_IDR, NON_IDR_SLICE as NAL_SLICE, PPS as NAL_PPS, SEI as NAL_SEI, SPS as NAL_SPS,
};
use crate::codec::annexb::{START_CODE, nal_units};
use crate::media::AccessUnit;

/// Splits an Annex B stream into access units (one picture each), starting at
/// the first IDR; keyframes get the latest SPS/PPS in front. Each unit is
/// `(Annex B bytes, keyframe)`.
pub fn split_access_units(data: &[u8]) -> Vec<(Bytes, bool)> {
    let mut units = Vec::new();
    let (mut sps, mut pps): (Option<&[u8]>, Option<&[u8]>) = (None, None);
    let mut current: Vec<&[u8]> = Vec::new();
    let mut has_vcl = false;
    let flush = |current: &mut Vec<&[u8]>, sps: Option<&[u8]>, pps: Option<&[u8]>, units: &mut Vec<(Bytes, bool)>| {
        let keyframe = current.iter().any(|n| n[0] & 0x1f == NAL_IDR);
        if keyframe || !units.is_empty() {
            let mut out = BytesMut::new();
            let has_ps = current.iter().any(|n| n[0] & 0x1f == NAL_SPS);
            if keyframe && !has_ps {
                for ps in [sps, pps].into_iter().flatten() {
                    out.put_slice(&START_CODE);
                    out.put_slice(ps);
                }
            }
            for n in current.iter() {
                out.put_slice(&START_CODE);
                out.put_slice(n);
            }
            units.push((out.freeze(), keyframe));
        }
        current.clear();
    };
    for nal in nal_units(data).filter(|n| !n.is_empty()) {
        let kind = nal[0] & 0x1f;
        let is_vcl = kind == NAL_SLICE || kind == NAL_IDR;
        // first_mb_in_slice == 0 (ue(v) "1") marks the first slice of a new picture.
        let new_picture = is_vcl && nal.get(1).is_some_and(|b| b & 0x80 != 0);
        let starts_unit = matches!(kind, NAL_AUD | NAL_SPS | NAL_PPS | NAL_SEI) || new_picture;
        if has_vcl && starts_unit {
            flush(&mut current, sps, pps, &mut units);
            has_vcl = false;
        }
        match kind {
            NAL_SPS => sps = Some(nal),
            NAL_PPS => pps = Some(nal),
            _ => {}
        }
        has_vcl |= is_vcl;
        current.push(nal);
    }
    if has_vcl {
        flush(&mut current, sps, pps, &mut units);
    }
    units
}

/// A looping replay of one file.
pub struct ReplaySession {
    units: Arc<Vec<(Bytes, bool)>>,
    next: usize,
    frame_interval: Duration,
    next_due: tokio::time::Instant,
    pts_90k: i64,
    info: StreamInfo,
}

impl ReplaySession {
    /// Reads and splits `path` (H.264 Annex B, e.g. `assets/demo/bikes-640x272.h264`),
    /// to be played at `fps` frames per second.
    pub fn open(path: &Path, fps: f32) -> Result<ReplaySession, IngestError> {
        let file_err = |reason: String| IngestError::File { path: path.display().to_string(), reason };
        let data =
            std::fs::read(path).map_err(|e| file_err(format!("{e} (run scripts/setup to make the demo clip)")))?;
        let units = split_access_units(&data);
        if units.is_empty() {
            return Err(file_err("no H.264 keyframe found; expected an Annex B .h264 file".into()));
        }
        let fps = if fps.is_finite() && fps > 0.0 { fps } else { 25.0 };
        Ok(ReplaySession {
            units: Arc::new(units),
            next: 0,
            frame_interval: Duration::from_secs_f32(1.0 / fps),
            next_due: tokio::time::Instant::now(),
            pts_90k: 0,
            info: StreamInfo { codec: "H.264".into(), width: None, height: None, fps: Some(fps) },
        })
    }

    pub fn info(&self) -> &StreamInfo {
        &self.info
    }

    /// The next access unit, at its real-time moment.
    pub async fn next(&mut self) -> Result<AccessUnit, IngestError> {
        tokio::time::sleep_until(self.next_due).await;
        let now = tokio::time::Instant::now();
        // After a stall (machine suspended, debugger) do not burst to catch up.
        self.next_due = (self.next_due + self.frame_interval).max(now);
        let (data, keyframe) = self.units[self.next].clone();
        self.next = (self.next + 1) % self.units.len();
        let au = AccessUnit::new(data, self.pts_90k, keyframe, now.into_std(), SystemTime::now());
        self.pts_90k += (self.frame_interval.as_secs_f64() * 90_000.0).round() as i64;
        Ok(au)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nal(kind: u8, first_slice: bool) -> Vec<u8> {
        let mut v = vec![0, 0, 0, 1, 0x60 | kind];
        v.push(if first_slice { 0x88 } else { 0x08 });
        v.extend([0x11, 0x22]);
        v
    }

    #[test]
    fn splits_pictures_and_puts_parameter_sets_before_every_idr() {
        let mut stream = Vec::new();
        stream.extend(nal(NAL_SLICE, true)); // before the first IDR: dropped
        stream.extend(nal(NAL_SPS, true));
        stream.extend(nal(NAL_PPS, true));
        stream.extend(nal(NAL_IDR, true));
        stream.extend(nal(NAL_IDR, false)); // second slice of the same picture
        stream.extend(nal(NAL_SLICE, true));
        stream.extend(&[0, 0, 1]); // 3-byte start code
        stream.extend(&nal(NAL_IDR, true)[4..]);
        let units = split_access_units(&stream);
        assert_eq!(units.iter().map(|u| u.1).collect::<Vec<_>>(), [true, false, true]);
        let kinds = |b: &Bytes| nal_units(b).map(|n| n[0] & 0x1f).collect::<Vec<_>>();
        assert_eq!(kinds(&units[0].0), [NAL_SPS, NAL_PPS, NAL_IDR, NAL_IDR]);
        assert_eq!(kinds(&units[1].0), [NAL_SLICE]);
        assert_eq!(kinds(&units[2].0), [NAL_SPS, NAL_PPS, NAL_IDR], "SPS/PPS repeated");
    }

    #[test]
    fn a_file_without_keyframes_is_refused() {
        let dir = std::env::temp_dir().join("infercast-replay-test");
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("nokey.h264");
        std::fs::write(&p, nal(NAL_SLICE, true)).unwrap();
        let err = ReplaySession::open(&p, 25.0).err().expect("refused").to_string();
        assert!(err.contains("no H.264 keyframe"), "{err}");
        assert!(ReplaySession::open(&dir.join("missing.h264"), 25.0).is_err());
    }
}
