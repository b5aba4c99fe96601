//! Between full detections the pipeline only re-detects known faces (`Mtcnn::refine`, O-Net on
//! the previous boxes). Measured here on real frames of a real clip against the full cascade.

use std::path::Path;
use std::time::{Duration, Instant};

use facestream::config::Config;
use facestream::detect::{Face, Mtcnn};
use facestream::image::RgbImage;
use facestream::infer::Runtime;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

/// Decodes `clip` to RGB frames at 10 frames/s through a real GStreamer pipeline.
fn frames(clip: &Path, limit: usize) -> Vec<RgbImage> {
    gst::init().unwrap();
    let line = format!(
        "filesrc location=\"{}\" ! decodebin ! videoconvert ! videorate ! video/x-raw,format=RGB,framerate=10/1 ! appsink name=sink sync=false",
        clip.display()
    );
    let pipeline = gst::parse::launch(&line).unwrap().downcast::<gst::Pipeline>().unwrap();
    let sink = pipeline.by_name("sink").unwrap().downcast::<gst_app::AppSink>().unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut out = Vec::new();
    while out.len() < limit {
        let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_seconds(10)) else { break };
        let caps = sample.caps().unwrap();
        let info = gstreamer_video::VideoInfo::from_caps(caps).unwrap();
        let buf = sample.buffer().unwrap().map_readable().unwrap();
        out.push(RgbImage::from_strided(info.width(), info.height(), info.stride()[0] as usize, &buf).unwrap());
    }
    pipeline.set_state(gst::State::Null).unwrap();
    out
}

/// Faces of `found` matching a face of `truth` with IoU >= 0.5, and the mean landmark offset of
/// the matches relative to the face width.
fn matched(truth: &[Face], found: &[Face]) -> (usize, f32) {
    let mut n = 0;
    let mut drift = 0.0;
    for t in truth {
        if let Some(f) = found.iter().max_by(|a, b| a.bbox.iou(&t.bbox).total_cmp(&b.bbox.iou(&t.bbox)))
            && f.bbox.iou(&t.bbox) >= 0.5 {
                n += 1;
                let d: f32 = (0..5).map(|k| (f.landmarks[k][0] - t.landmarks[k][0]).hypot(f.landmarks[k][1] - t.landmarks[k][1])).sum::<f32>() / 5.0;
                drift += d / t.bbox.width().max(1.0);
            }
    }
    (n, if n > 0 { drift / n as f32 } else { 0.0 })
}

#[test]
fn refine_keeps_the_faces_the_full_cascade_finds_between_full_detections() {
    let clip = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/video_01.mp4");
    let frames = frames(&clip, 60);
    assert!(frames.len() >= 25, "decoded only {} frames", frames.len());
    let cfg = Config::embedded().unwrap();
    let rt = Runtime::get(&cfg.infer).expect("runtime (run `make setup`)");
    let mut det = Mtcnn::new(&rt, cfg.detect.clone()).unwrap();

    let every = 3;
    let (mut truth_faces, mut kept, mut drift_sum, mut refined_frames) = (0usize, 0usize, 0.0f32, 0usize);
    let (mut extra, mut reported) = (0usize, 0usize);
    let (mut t_full, mut t_refine) = (Duration::ZERO, Duration::ZERO);
    let mut prior: Vec<Face> = Vec::new();
    for (i, img) in frames.iter().enumerate() {
        let t = Instant::now();
        let full = det.detect(img).unwrap();
        t_full += t.elapsed();
        if i % every == 0 {
            prior = full;
            continue;
        }
        let boxes: Vec<_> = prior.iter().map(|f| f.bbox).collect();
        let t = Instant::now();
        let refined = det.refine(img, &boxes).unwrap();
        t_refine += t.elapsed();
        refined_frames += 1;
        // Only faces that existed at the last full detection can be kept.
        let known: Vec<Face> = full.iter().filter(|f| prior.iter().any(|p| p.bbox.iou(&f.bbox) > 0.2)).cloned().collect();
        let (n, drift) = matched(&known, &refined);
        truth_faces += known.len();
        kept += n;
        drift_sum += drift * n as f32;
        // Faces the full cascade does not see on this frame (it misses some; refine may too).
        let (real, _) = matched(&refined, &full);
        extra += refined.len() - real;
        reported += refined.len();
        prior = refined;
    }
    let recall = kept as f32 / truth_faces.max(1) as f32;
    let drift = drift_sum / kept.max(1) as f32;
    eprintln!(
        "refine over {refined_frames} frames: kept {kept}/{truth_faces} known faces (recall {recall:.3}), landmark offset {:.1}% of face width; \
         full cascade {:.1} ms/frame, refine {:.1} ms/frame; {extra}/{reported} refined faces not seen by the full cascade",
        drift * 100.0,
        t_full.as_secs_f64() * 1e3 / frames.len() as f64,
        t_refine.as_secs_f64() * 1e3 / refined_frames.max(1) as f64
    );
    assert!(truth_faces >= 50, "the clip should show faces on most frames, saw {truth_faces}");
    assert!(recall >= 0.9, "refine kept only {kept} of {truth_faces} faces");
    assert!(extra * 10 <= reported, "{extra} of {reported} refined faces are not seen by the full cascade");
    assert!(drift < 0.05, "landmarks moved {:.1}% of the face width from the full cascade's", drift * 100.0);
}
