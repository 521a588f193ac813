//! H.264 byte-stream framing: split Annex B buffers into NAL units, tell
//! keyframes, convert AVCC (RTSP/MP4 length-prefixed) data and `avcC` extra data
//! to Annex B, and read an SPS's picture size and profile-level-id.
//!
//! Pure functions over byte slices. Nothing here decodes pictures or allocates
//! per NAL unit (except [`sps_resolution`], which unescapes one small SPS).

use super::CodecError;

/// NAL unit types (ITU-T H.264 Table 7-1) that infercast looks at.
pub mod nal_type {
    /// Coded slice of a non-IDR picture (P-frames from our encoder and cameras).
    pub const NON_IDR_SLICE: u8 = 1;
    /// Coded slice of an IDR picture: a keyframe.
    pub const IDR_SLICE: u8 = 5;
    /// Supplemental enhancement information.
    pub const SEI: u8 = 6;
    /// Sequence parameter set.
    pub const SPS: u8 = 7;
    /// Picture parameter set.
    pub const PPS: u8 = 8;
    /// Access unit delimiter.
    pub const AUD: u8 = 9;
}

/// The start code written in front of every NAL unit infercast produces.
pub const START_CODE: [u8; 4] = [0, 0, 0, 1];

/// Iterator over the NAL units of an Annex B buffer; see [`nal_units`].
#[derive(Clone, Debug)]
pub struct NalUnits<'a> {
    data: &'a [u8],
    /// Index of the first byte after the next start code, if there is one.
    next: Option<usize>,
}

/// The NAL units of an Annex B buffer, without their start codes (each item
/// starts with the NAL header byte).
///
/// Accepts 3-byte (`00 00 01`) and 4-byte (`00 00 00 01`) start codes, ignores
/// bytes before the first start code, drops trailing zero bytes and empty units.
pub fn nal_units(data: &[u8]) -> NalUnits<'_> {
    NalUnits { data, next: find_start_code(data, 0).map(|(_, after)| after) }
}

impl<'a> Iterator for NalUnits<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            let start = self.next?;
            let (end, next) = match find_start_code(self.data, start) {
                Some((at, after)) => (at, Some(after)),
                None => (self.data.len(), None),
            };
            self.next = next;
            let nal = trim_trailing_zeros(&self.data[start..end]);
            if !nal.is_empty() {
                return Some(nal);
            }
        }
    }
}

/// The next `00 00 01` at or after `from`: (index of its first byte, index after it).
fn find_start_code(data: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from + 2;
    while i < data.len() {
        match data[i] {
            0 => i += 1,
            1 if data[i - 1] == 0 && data[i - 2] == 0 => return Some((i - 2, i + 1)),
            // No start code can end at i+1 or i+2 when data[i] is not zero.
            _ => i += 3,
        }
    }
    None
}

fn trim_trailing_zeros(nal: &[u8]) -> &[u8] {
    let end = nal.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    &nal[..end]
}

/// The type (low 5 bits of the header byte) of a NAL unit without start code.
pub fn nal_type(nal: &[u8]) -> Option<u8> {
    nal.first().map(|b| b & 0x1f)
}

/// True when the Annex B buffer holds an IDR slice (NAL type 5).
pub fn is_keyframe(annexb: &[u8]) -> bool {
    nal_units(annexb).any(|n| nal_type(n) == Some(nal_type::IDR_SLICE))
}

/// True when the Annex B buffer holds any coded slice (NAL types 1–5), i.e. a
/// picture rather than only parameter sets or SEI.
pub fn contains_slice(annexb: &[u8]) -> bool {
    nal_units(annexb).any(|n| matches!(nal_type(n), Some(1..=5)))
}

/// Appends AVCC data (NAL units each behind a big-endian length of
/// `length_size` bytes: 1, 2 or 4) to `out` as Annex B with 4-byte start codes.
///
/// On error `out` is left as it was. Zero-length units are skipped.
pub fn avcc_to_annexb(avcc: &[u8], length_size: usize, out: &mut Vec<u8>) -> Result<(), CodecError> {
    if !matches!(length_size, 1 | 2 | 4) {
        return Err(CodecError::AvccLengthSize(length_size));
    }
    let mark = out.len();
    out.reserve(avcc.len() + avcc.len() / 64 + 16);
    let mut pos = 0;
    while pos < avcc.len() {
        let Some(len_bytes) = avcc.get(pos..pos + length_size) else {
            out.truncate(mark);
            return Err(CodecError::AvccTruncated { offset: pos, declared: length_size, available: avcc.len() - pos });
        };
        let available = avcc.len() - pos - length_size;
        let len = len_bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        let Some(nal) = avcc.get(pos + length_size..).and_then(|rest| rest.get(..len)) else {
            out.truncate(mark);
            return Err(CodecError::AvccTruncated { offset: pos, declared: len, available });
        };
        if !nal.is_empty() {
            out.extend_from_slice(&START_CODE);
            out.extend_from_slice(nal);
        }
        pos += length_size + len;
    }
    Ok(())
}

/// Appends Annex B data to `out` as AVCC with 4-byte big-endian lengths (the
/// inverse of [`avcc_to_annexb`] with `length_size` 4).
pub fn annexb_to_avcc(annexb: &[u8], out: &mut Vec<u8>) {
    for nal in nal_units(annexb) {
        let len = u32::try_from(nal.len()).expect("a NAL unit inside a byte slice is smaller than 4 GiB");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(nal);
    }
}

/// The AVCC NAL length size (1, 2 or 4 bytes) from `avcC` extra data.
pub fn nal_length_size_from_avcc_config(extra_data: &[u8]) -> Result<usize, CodecError> {
    let byte = extra_data
        .get(4)
        .ok_or_else(|| CodecError::AvcConfig(format!("{} bytes, a record has at least 7", extra_data.len())))?;
    match usize::from(byte & 0x03) + 1 {
        3 => Err(CodecError::AvccLengthSize(3)),
        n => Ok(n),
    }
}

/// SPS NAL units and PPS NAL units, each without start code.
pub type ParameterSets = (Vec<Vec<u8>>, Vec<Vec<u8>>);

/// Parses an AVCDecoderConfigurationRecord (`avcC` extra data, ISO 14496-15
/// 5.3.3.1) into its SPS and PPS NAL units (each without start code).
pub fn parameter_sets_from_avcc_config(extra_data: &[u8]) -> Result<ParameterSets, CodecError> {
    let bad = |what: String| CodecError::AvcConfig(what);
    if extra_data.len() < 7 {
        return Err(bad(format!("{} bytes, a record has at least 7", extra_data.len())));
    }
    if extra_data[0] != 1 {
        return Err(bad(format!("configurationVersion is {}, expected 1", extra_data[0])));
    }
    let mut pos = 5;
    let sps_count = usize::from(extra_data[pos] & 0x1f);
    pos += 1;
    let sps = read_parameter_sets(extra_data, &mut pos, sps_count, nal_type::SPS)?;
    let pps_count = usize::from(
        *extra_data.get(pos).ok_or_else(|| bad(format!("ends at byte {pos}, before numOfPictureParameterSets")))?,
    );
    pos += 1;
    let pps = read_parameter_sets(extra_data, &mut pos, pps_count, nal_type::PPS)?;
    if sps.is_empty() || pps.is_empty() {
        return Err(bad(format!("holds {} SPS and {} PPS, need at least one of each", sps.len(), pps.len())));
    }
    Ok((sps, pps))
}

fn read_parameter_sets(data: &[u8], pos: &mut usize, count: usize, want: u8) -> Result<Vec<Vec<u8>>, CodecError> {
    let name = if want == nal_type::SPS { "SPS" } else { "PPS" };
    let mut sets = Vec::with_capacity(count);
    for i in 0..count {
        let len = data
            .get(*pos..*pos + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            .ok_or_else(|| CodecError::AvcConfig(format!("ends inside the length of {name} #{i}")))?;
        let set = data.get(*pos + 2..*pos + 2 + len).ok_or_else(|| {
            CodecError::AvcConfig(format!("{name} #{i} declares {len} bytes, only {} remain", data.len() - *pos - 2))
        })?;
        if nal_type(set) != Some(want) {
            return Err(CodecError::AvcConfig(format!("{name} #{i} has NAL type {:?}", nal_type(set))));
        }
        sets.push(set.to_vec());
        *pos += 2 + len;
    }
    Ok(sets)
}

/// The three bytes `profile_idc`, constraint flags, `level_idc` of an SPS NAL
/// unit (with its header byte): the SDP `profile-level-id`, e.g. `42c01f`.
pub fn profile_level_id(sps: &[u8]) -> Option<[u8; 3]> {
    match sps {
        [h, p, c, l, ..] if h & 0x1f == nal_type::SPS => Some([*p, *c, *l]),
        _ => None,
    }
}

/// The displayed picture size (after cropping) from an SPS NAL unit (with its
/// header byte, without start code), or `None` when it cannot be parsed.
pub fn sps_resolution(sps: &[u8]) -> Option<(u32, u32)> {
    let rbsp = unescape(sps);
    let mut r = BitReader { data: &rbsp, pos: 0 };
    if r.bits(8)? & 0x1f != u32::from(nal_type::SPS) {
        return None;
    }
    let profile_idc = r.bits(8)?;
    r.bits(16)?; // constraint flags, level_idc
    r.ue()?; // seq_parameter_set_id
    let (mut chroma_format_idc, mut separate_colour_plane) = (1, false);
    if matches!(profile_idc, 100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc == 3 {
            separate_colour_plane = r.bit()? == 1;
        }
        r.ue()?; // bit_depth_luma_minus8
        r.ue()?; // bit_depth_chroma_minus8
        r.bit()?; // qpprime_y_zero_transform_bypass_flag
        if r.bit()? == 1 {
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? == 1 {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            r.bit()?;
            r.se()?;
            r.se()?;
            let cycle = r.ue()?;
            if cycle > 255 {
                return None;
            }
            for _ in 0..cycle {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bit()?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = u64::from(r.ue()?) + 1;
    let height_map_units = u64::from(r.ue()?) + 1;
    let frame_mbs_only = u64::from(r.bit()?);
    if frame_mbs_only == 0 {
        r.bit()?; // mb_adaptive_frame_field_flag
    }
    r.bit()?; // direct_8x8_inference_flag
    let mut crop = [0u64; 4]; // left, right, top, bottom
    if r.bit()? == 1 {
        for c in &mut crop {
            *c = u64::from(r.ue()?);
        }
    }
    let chroma_array_type = if separate_colour_plane { 0 } else { chroma_format_idc };
    let (crop_x, crop_y) = match chroma_array_type {
        0 => (1, 2 - frame_mbs_only),
        1 => (2, 2 * (2 - frame_mbs_only)),
        2 => (2, 2 - frame_mbs_only),
        _ => (1, 2 - frame_mbs_only),
    };
    let width = (width_mbs * 16).checked_sub(crop_x * (crop[0] + crop[1]))?;
    let height = ((2 - frame_mbs_only) * height_map_units * 16).checked_sub(crop_y * (crop[2] + crop[3]))?;
    match (u32::try_from(width).ok()?, u32::try_from(height).ok()?) {
        (0, _) | (_, 0) => None,
        size => Some(size),
    }
}

/// Removes emulation-prevention bytes (`00 00 03` → `00 00`).
fn unescape(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> Option<()> {
    let (mut last, mut next) = (8i64, 8i64);
    for _ in 0..size {
        if next != 0 {
            next = (last + i64::from(r.se()?) + 256).rem_euclid(256);
        }
        if next != 0 {
            last = next;
        }
    }
    Some(())
}

/// Reads bits MSB first, with Exp-Golomb codes; `None` past the end.
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn bit(&mut self) -> Option<u32> {
        let byte = self.data.get(self.pos / 8)?;
        let bit = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(u32::from(bit))
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        (0..n).try_fold(0u32, |acc, _| Some((acc << 1) | self.bit()?))
    }

    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let value = (1u64 << zeros) - 1 + u64::from(self.bits(zeros)?);
        u32::try_from(value).ok()
    }

    fn se(&mut self) -> Option<i32> {
        let k = i64::from(self.ue()?);
        i32::try_from(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) }).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn splits_three_and_four_byte_start_codes() {
        let data = [
            0xff, 0xee, // junk before the first start code is ignored
            0, 0, 0, 1, 0x67, 1, 2, // SPS, 4-byte start code
            0, 0, 1, 0x68, 3, // PPS, 3-byte start code
            0, 0, 1, 0, 0, 1, // an empty unit is skipped
            0, 0, 0, 1, 0x65, 0, 0, 3, 0, 4, 0, 0, // IDR with an escape and trailing zeros
        ];
        let nals: Vec<&[u8]> = nal_units(&data).collect();
        assert_eq!(nals, vec![&[0x67, 1, 2][..], &[0x68, 3], &[0x65, 0, 0, 3, 0, 4]]);
        assert_eq!(nals.iter().map(|n| nal_type(n).unwrap()).collect::<Vec<_>>(), [7, 8, 5]);
        assert!(is_keyframe(&data) && contains_slice(&data));
        assert!(!is_keyframe(&[0, 0, 1, 0x41, 9]) && contains_slice(&[0, 0, 1, 0x41, 9]));
        assert!(!contains_slice(&[0, 0, 0, 1, 0x67, 1, 0, 0, 1, 0x68, 2]));
        assert_eq!(nal_units(&[]).count(), 0);
        assert_eq!(nal_units(&[0, 0]).count(), 0);
        assert_eq!(nal_units(&[1, 2, 3, 0, 0]).count(), 0);
        assert_eq!(nal_units(&[0, 0, 1]).count(), 0);
        assert_eq!(nal_units(&[0, 0, 1, 0x09]).collect::<Vec<_>>(), [&[0x09][..]]);
    }

    #[test]
    fn avcc_round_trips_with_every_length_size() {
        let annexb = [0, 0, 0, 1, 0x67, 1, 2, 0, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 4, 5, 6];
        let mut avcc = Vec::new();
        annexb_to_avcc(&annexb, &mut avcc);
        assert_eq!(&avcc[..7], &[0, 0, 0, 3, 0x67, 1, 2]);
        let mut back = vec![0xaa]; // appends, keeps what was there
        avcc_to_annexb(&avcc, 4, &mut back).unwrap();
        assert_eq!(&back[1..], &annexb[..]);
        for size in [1usize, 2] {
            let mut short = Vec::new();
            for nal in nal_units(&annexb) {
                short.extend_from_slice(&nal.len().to_be_bytes()[8 - size..]);
                short.extend_from_slice(nal);
            }
            let mut out = Vec::new();
            avcc_to_annexb(&short, size, &mut out).unwrap();
            assert_eq!(out, annexb, "length size {size}");
        }
    }

    #[test]
    fn avcc_errors_name_the_problem_and_leave_output_alone() {
        let mut out = vec![7];
        let e = avcc_to_annexb(&[0, 0, 0, 9, 0x65, 1], 4, &mut out).unwrap_err();
        assert!(matches!(e, CodecError::AvccTruncated { offset: 0, declared: 9, available: 2 }), "{e}");
        assert_eq!(out, [7]);
        let e = avcc_to_annexb(&[0, 0, 0, 1, 0x65, 0, 0], 4, &mut out).unwrap_err();
        assert!(matches!(e, CodecError::AvccTruncated { offset: 5, .. }), "{e}");
        assert_eq!(out, [7]);
        assert!(matches!(avcc_to_annexb(&[], 3, &mut out), Err(CodecError::AvccLengthSize(3))));
        assert!(e.to_string().contains("byte 5"), "{e}");
    }

    /// x264 constrained-baseline SPS and PPS from `assets/demo/bikes-640x272.h264`.
    const SPS_640X272: &str = "6742c015d900a023b011000003000100000300320f162e48";
    const PPS: &str = "68cb8cb2";

    #[test]
    fn parses_an_avcc_config_record() {
        let (sps, pps) = (hex(SPS_640X272), hex(PPS));
        let mut record = vec![1, sps[1], sps[2], sps[3], 0xff, 0xe1];
        record.extend_from_slice(&(sps.len() as u16).to_be_bytes());
        record.extend_from_slice(&sps);
        record.push(1);
        record.extend_from_slice(&(pps.len() as u16).to_be_bytes());
        record.extend_from_slice(&pps);
        assert_eq!(parameter_sets_from_avcc_config(&record).unwrap(), (vec![sps.clone()], vec![pps.clone()]));
        assert_eq!(nal_length_size_from_avcc_config(&record).unwrap(), 4);

        assert!(parameter_sets_from_avcc_config(&record[..record.len() - 1]).is_err());
        assert!(parameter_sets_from_avcc_config(&record[..8]).is_err());
        assert!(parameter_sets_from_avcc_config(&[1, 2, 3]).is_err());
        let mut v0 = record.clone();
        v0[0] = 0;
        assert!(parameter_sets_from_avcc_config(&v0).unwrap_err().to_string().contains("configurationVersion"));
        let mut swapped = record.clone();
        swapped[8] = 0x68; // the "SPS" is a PPS
        assert!(parameter_sets_from_avcc_config(&swapped).is_err());
    }

    #[test]
    fn reads_sps_size_profile_and_level() {
        let cases = [
            (SPS_640X272, (640, 272)),
            // x264 constrained baseline 720p (assets/demo/bikes-1280x720.h264)
            ("6742c01fd9005005bb011000000300100000030320f1832480", (1280, 720)),
            // x264 High 1080p: 1088 coded rows cropped to 1080
            ("67640028acd940780227e5c044000003000400000300c83c60c658", (1920, 1080)),
            // x264 High 1918x1078: odd crops left and bottom of 4:2:0
            ("67640028acd940780227a9b011000003000100000300320f183196", (1918, 1078)),
            // x264 Main interlaced 352x288 (frame_mbs_only_flag = 0)
            ("674d4015eca0b096c044000003000800000300c87c50a658", (352, 288)),
        ];
        for (sps, size) in cases {
            assert_eq!(sps_resolution(&hex(sps)), Some(size), "{sps}");
        }
        assert_eq!(profile_level_id(&hex(SPS_640X272)), Some([0x42, 0xc0, 0x15]));
        assert_eq!(profile_level_id(&hex(PPS)), None);
        assert_eq!(sps_resolution(&hex(PPS)), None);
        assert_eq!(sps_resolution(&hex(&SPS_640X272[..12])), None, "truncated SPS");
        assert_eq!(sps_resolution(&[0x67, 0, 0, 0, 0, 0, 0, 0]), None, "endless Exp-Golomb zeros");
    }
}
