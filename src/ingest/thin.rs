//! Thinning before the decoder. A camera capped below its source's frame rate used to decode every
//! frame and throw most of them away after decoding; past capacity that decoding was what took the
//! CPU from detection (16 cameras of a 30 fps clip capped at 10: 480 decodes/s for 160 kept frames).
//!
//! H.264 marks the frames no other frame refers to (`nal_ref_idc` 0 in every slice: the B-frames of
//! most encoders). Such a frame can be left out before decoding without harming any other frame.
//! While the reference frames alone arrive at least as often as the camera's cap (measured over the
//! last seconds of stream time), the others are dropped before the decoder and counted as skipped
//! by the fps cap. When the references alone are too few (a stream whose B-frames carry the rate
//! the cap wants), every frame is decoded as before. Streams without such frames (many IP cameras
//! send only I- and P-frames), and codecs other than H.264, are decoded in full.
//!
//! H.265 is left alone on purpose: its sub-layer non-reference pictures may still be referenced by
//! pictures of a higher temporal sub-layer.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;

use super::{FrameSink, Skip};

/// How an H.264 access unit is laid out in a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `stream-format=avc|avc3`: each NAL unit behind a big-endian length of this many bytes.
    Length(usize),
    /// `stream-format=byte-stream`: NAL units behind 00 00 01 start codes.
    StartCodes,
}

/// The framing of whole access units, from the decoder's input caps; None when the stream is not
/// H.264 or not aligned to access units (then nothing is thinned).
pub fn framing(caps: &gst::CapsRef) -> Option<Framing> {
    let s = caps.structure(0)?;
    if s.name() != "video/x-h264" || s.get::<&str>("alignment").ok()? != "au" {
        return None;
    }
    match s.get::<&str>("stream-format").ok()? {
        "byte-stream" => Some(Framing::StartCodes),
        "avc" | "avc3" => {
            let data = s.get::<gst::Buffer>("codec_data").ok()?;
            let map = data.map_readable().ok()?;
            // avcC: lengthSizeMinusOne in the low two bits of byte 4.
            let size = (*map.get(4)? & 3) as usize + 1;
            (size != 3).then_some(Framing::Length(size))
        }
        _ => None,
    }
}

/// The first byte of each NAL unit in an access unit.
fn nal_headers(data: &[u8], framing: Framing) -> Vec<u8> {
    let mut out = Vec::new();
    match framing {
        Framing::Length(size) => {
            let mut at = 0;
            while at + size < data.len() {
                let len = data[at..at + size].iter().fold(0usize, |n, b| (n << 8) | *b as usize);
                if len == 0 || at + size + len > data.len() {
                    break;
                }
                out.push(data[at + size]);
                at += size + len;
            }
        }
        Framing::StartCodes => {
            let mut i = 0;
            while i + 3 < data.len() {
                if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
                    out.push(data[i + 3]);
                    i += 3;
                } else {
                    i += 1;
                }
            }
        }
    }
    out
}

/// True when no other frame refers to this access unit: it holds at least one coded slice and
/// every slice has `nal_ref_idc` 0. Anything unreadable counts as needed.
pub fn disposable(data: &[u8], framing: Framing) -> bool {
    let slices: Vec<u8> = nal_headers(data, framing).into_iter().filter(|h| matches!(h & 0x1f, 1..=5)).collect();
    !slices.is_empty() && slices.iter().all(|h| (h >> 5) & 3 == 0)
}

/// The stream time of the latest reference frames; whether they alone keep up with the cap.
#[derive(Debug)]
pub struct RefRate {
    min_interval: Duration,
    pts: VecDeque<Duration>,
}

/// Stream time over which the reference frames' rate is measured.
const WINDOW: Duration = Duration::from_secs(2);
/// The least stream time and number of reference frames before the rate is trusted.
const MIN_SPAN: Duration = Duration::from_secs(1);
const MIN_REFS: usize = 4;
/// Reference frames may come this much less often than the cap and still count as enough
/// (29.97 fps thirds are 100.1 ms against a 10 fps cap's 100 ms).
const SLACK: f64 = 1.05;

impl RefRate {
    pub fn new(min_interval: Duration) -> Self {
        RefRate { min_interval, pts: VecDeque::new() }
    }

    /// Notes a reference frame's presentation time.
    pub fn reference(&mut self, pts: Duration) {
        // A file that loops (or a stream that restarts) goes back in time: start over.
        if self.pts.back().is_some_and(|last| pts + WINDOW < *last) {
            self.pts.clear();
        }
        self.pts.push_back(pts);
        while self.pts.len() > 2 && self.span() > WINDOW {
            self.pts.pop_front();
        }
    }

    fn span(&self) -> Duration {
        match (self.pts.iter().min(), self.pts.iter().max()) {
            (Some(a), Some(b)) => *b - *a,
            _ => Duration::ZERO,
        }
    }

    /// Whether the reference frames alone come at least as often as the cap; None until enough
    /// stream time has been seen.
    pub fn suffice(&self) -> Option<bool> {
        let span = self.span();
        if self.pts.len() < MIN_REFS || span < MIN_SPAN {
            return None;
        }
        let interval = span.as_secs_f64() / (self.pts.len() - 1) as f64;
        Some(interval <= self.min_interval.as_secs_f64() * SLACK)
    }
}

/// What a camera keeps between its pipeline runs: the last verdict, so a looping file or a
/// reconnected stream thins from its first frame instead of relearning for a second.
#[derive(Debug, Default)]
pub struct Verdict(AtomicBool);

/// Installs the thinning probe on an H.264 decoder's input.
pub fn install(decoder: &gst::Element, camera: &Arc<str>, sink: &Arc<dyn FrameSink>, min_interval: Duration, verdict: &Arc<Verdict>) {
    let Some(pad) = decoder.static_pad("sink") else { return };
    let (camera, sink, verdict) = (camera.clone(), sink.clone(), verdict.clone());
    let state = std::sync::Mutex::new((None::<Framing>, RefRate::new(min_interval)));
    pad.add_probe(gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(gst::PadProbeData::Event(ev)) = &info.data {
            if let gst::EventView::Caps(c) = ev.view() {
                st.0 = framing(c.caps());
            }
            return gst::PadProbeReturn::Ok;
        }
        let (Some(framing), Some(buffer)) = (st.0, info.buffer()) else { return gst::PadProbeReturn::Ok };
        let Some(pts) = buffer.pts().map(|t| Duration::from_nanos(t.nseconds())) else { return gst::PadProbeReturn::Ok };
        let Ok(map) = buffer.map_readable() else { return gst::PadProbeReturn::Ok };
        if !disposable(&map, framing) {
            st.1.reference(pts);
            if let Some(v) = st.1.suffice() {
                verdict.0.store(v, Ordering::Relaxed);
            }
            return gst::PadProbeReturn::Ok;
        }
        if !verdict.0.load(Ordering::Relaxed) {
            return gst::PadProbeReturn::Ok;
        }
        sink.skipped(&camera, Skip::FpsCapUndecoded);
        // Taken and released here, then Handled: the binding has already taken the buffer from
        // GStreamer, and returning Drop made GStreamer unref a null pointer (a CRITICAL on stderr
        // per left-out frame).
        drop(map);
        drop(st);
        drop(info.take_buffer());
        gst::PadProbeReturn::Handled
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avc(nals: &[&[u8]]) -> Vec<u8> {
        nals.iter().flat_map(|n| (n.len() as u32).to_be_bytes().into_iter().chain(n.iter().copied())).collect()
    }

    #[test]
    fn only_frames_whose_every_slice_is_unreferenced_are_disposable() {
        // nal_ref_idc in bits 5-6, type in bits 0-4.
        let (sps, pps, idr, p, b) = ([0x67u8, 1, 2][..].to_vec(), vec![0x68u8, 3], vec![0x65u8, 9, 9], vec![0x41u8, 9], vec![0x01u8, 9]);
        let sei = vec![0x06u8, 5, 5];
        let f = Framing::Length(4);
        assert!(!disposable(&avc(&[&sps, &pps, &idr]), f), "keyframe");
        assert!(!disposable(&avc(&[&p]), f), "reference P-frame");
        assert!(disposable(&avc(&[&sei, &b]), f), "unreferenced B-frame with an SEI");
        assert!(disposable(&avc(&[&b, &b]), f), "two unreferenced slices");
        assert!(!disposable(&avc(&[&b, &p]), f), "one referenced slice makes the frame needed");
        assert!(!disposable(&avc(&[&sei]), f), "no slice at all");
        assert!(!disposable(&[0, 0, 0, 9, 1], f), "a length past the end is unreadable");
        // The same frames behind start codes (3- and 4-byte).
        let bs = |nals: &[&[u8]]| nals.iter().flat_map(|n| [0u8, 0, 0, 1].into_iter().chain(n.iter().copied())).collect::<Vec<u8>>();
        assert!(disposable(&bs(&[&sei, &b]), Framing::StartCodes));
        assert!(!disposable(&bs(&[&sps, &pps, &idr]), Framing::StartCodes));
        assert!(disposable(&[0, 0, 1, 0x01, 7], Framing::StartCodes));
        // Two-byte lengths.
        assert!(disposable(&[0, 2, 0x01, 7], Framing::Length(2)));
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn references_suffice_only_when_they_come_as_often_as_the_cap() {
        // 29.97 fps with two B-frames between references: references every 100.1 ms.
        let mut r = RefRate::new(ms(100));
        for i in 0..5 {
            r.reference(Duration::from_secs_f64(i as f64 * 3.0 / 29.97));
        }
        assert_eq!(r.suffice(), None, "under a second of stream time is not enough to judge");
        for i in 5..40 {
            r.reference(Duration::from_secs_f64(i as f64 * 3.0 / 29.97));
        }
        assert_eq!(r.suffice(), Some(true));
        // The same stream against a 15 fps cap: the references (10 fps) are too few.
        let mut r15 = RefRate::new(Duration::from_secs_f64(1.0 / 15.0));
        for i in 0..40 {
            r15.reference(Duration::from_secs_f64(i as f64 * 3.0 / 29.97));
        }
        assert_eq!(r15.suffice(), Some(false));
        // A loop back to the start forgets the old times instead of measuring across the jump.
        r.reference(ms(0));
        assert_eq!(r.suffice(), None);
        for i in 1..=12 {
            r.reference(ms(i * 100));
        }
        assert_eq!(r.suffice(), Some(true));
        // References slowing to 5 fps no longer suffice for a 10 fps cap once they fill the window.
        for i in 0..12 {
            r.reference(ms(1200 + (i + 1) * 200));
        }
        assert_eq!(r.suffice(), Some(false));
    }
}
