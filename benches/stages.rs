//! Per-stage microbenchmarks on real models and real photos: detection on 640x480 and 1280x720
//! frames with one and several faces (min face 40 px), alignment, embedding at batch 1, 8 and 32.
//! Figures and the machine they came from go into BENCHMARKS.md.

use std::path::Path;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use facestream::config::Config;
use facestream::embed::{CROP_BYTES, align_into, crop_box};
use facestream::image::{self, RgbImage};
use facestream::photo::Analyzer;

fn fixture(name: &str) -> RgbImage {
    image::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)).expect("fixture")
}

/// Places `img` (scaled to fit) on a grey canvas of the given size, like a camera frame.
fn frame(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let mut out = RgbImage::filled(w, h, [90, 90, 90]);
    let s = (w as f32 / img.width as f32).min(h as f32 / img.height as f32);
    let (sw, sh) = ((img.width as f32 * s) as u32, (img.height as f32 * s) as u32);
    let (ox, oy) = ((w - sw) / 2, (h - sh) / 2);
    for y in 0..sh {
        for x in 0..sw {
            let p = img.pixel(((x as f32 / s) as u32).min(img.width - 1), ((y as f32 / s) as u32).min(img.height - 1));
            let i = (((y + oy) * w + x + ox) * 3) as usize;
            out.data[i..i + 3].copy_from_slice(&p);
        }
    }
    out
}

fn benches(c: &mut Criterion) {
    let mut cfg = Config::embedded().expect("config");
    cfg.detect.min_face = 40.0;
    let mut a = Analyzer::new(&cfg).expect("models (run `make setup`)");

    let one = fixture("meds-aa-S029-01.jpg");
    let several = fixture("race.jpg");
    let mut g = c.benchmark_group("detect");
    g.sample_size(20);
    for (label, src) in [("1face", &one), ("3faces", &several)] {
        for (w, h) in [(640u32, 480u32), (1280, 720)] {
            let f = frame(src, w, h);
            let n = a.detect(&f).unwrap().len();
            g.bench_with_input(BenchmarkId::new(format!("{label}(found {n})"), format!("{w}x{h}")), &f, |b, f| {
                b.iter(|| a.detect(f).unwrap())
            });
        }
    }
    g.finish();

    let faces = a.detect(&one).unwrap();
    let cb = crop_box(&faces[0].landmarks, false).unwrap();
    let cb_rot = crop_box(&faces[0].landmarks, true).unwrap();
    let mut crop = vec![0u8; CROP_BYTES];
    let mut g = c.benchmark_group("align");
    g.bench_function("faceapi_crop", |b| b.iter(|| align_into(&one, &cb, &mut crop).unwrap()));
    g.bench_function("faceapi_crop_rotated", |b| b.iter(|| align_into(&one, &cb_rot, &mut crop).unwrap()));
    g.finish();

    align_into(&one, &cb, &mut crop).unwrap();
    let mut g = c.benchmark_group("embed");
    g.sample_size(20);
    for batch in [1usize, 8, 32] {
        let crops: Vec<u8> = crop.iter().copied().cycle().take(CROP_BYTES * batch).collect();
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::new("batch", batch), &crops, |b, crops| b.iter(|| a.embedder.embed_crops(crops).unwrap()));
    }
    g.finish();
}

criterion_group!(stages, benches);
criterion_main!(stages);
