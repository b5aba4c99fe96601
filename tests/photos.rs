//! Detection, alignment and embedding on real photos with the real models (run `make setup` first).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use facestream::config::Config;
use facestream::embed::distance;
use facestream::image::{self, ImageError};
use facestream::infer::Runtime;
use facestream::photo::{Analyzer, primary_face};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn analyzer() -> MutexGuard<'static, Analyzer> {
    static A: OnceLock<Mutex<Analyzer>> = OnceLock::new();
    A.get_or_init(|| Mutex::new(Analyzer::new(&Config::embedded().unwrap()).expect("models loaded (run `make setup`)")))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn main_embedding(a: &mut Analyzer, name: &str) -> Vec<f32> {
    let img = image::load(&fixture(name)).unwrap();
    let faces = a.detect(&img).unwrap();
    let i = primary_face(&faces).unwrap_or_else(|| panic!("{name}: no face"));
    a.embed(&img, &faces[i..=i]).unwrap().pop().flatten().unwrap()
}

const MEDS: [&str; 7] = [
    "meds-aa-S001-01.jpg",
    "meds-aa-S001-01-exif-rotation.jpg",
    "meds-aa-S001-01.tif",
    "meds-aa-S001-02.jpg",
    "meds-aa-S001-03.jpg",
    "meds-aa-S029-01.jpg",
    "meds-af-S419-01.jpg",
];

#[test]
fn every_meds_photo_has_exactly_one_plausible_face() {
    let mut a = analyzer();
    for name in MEDS {
        let img = image::load(&fixture(name)).unwrap();
        let faces = a.detect(&img).unwrap();
        assert_eq!(faces.len(), 1, "{name}: {faces:?}");
        let f = &faces[0];
        assert!(f.score > 0.99, "{name}: score {}", f.score);
        let [le, re, _nose, ml, mr] = f.landmarks;
        assert!(le[1] < ml[1] && le[1] < mr[1] && re[1] < ml[1] && re[1] < mr[1], "{name}: eyes not above mouth: {:?}", f.landmarks);
        assert!(le[0] < re[0] && ml[0] < mr[0], "{name}: left/right swapped: {:?}", f.landmarks);
        for p in f.landmarks {
            assert!(f.bbox.contains(p[0], p[1]), "{name}: landmark {p:?} outside {:?}", f.bbox);
        }
    }
}

#[test]
fn exif_rotated_photo_gives_the_same_face_as_the_upright_one() {
    let mut a = analyzer();
    let upright = image::load(&fixture("meds-aa-S001-01.jpg")).unwrap();
    let rotated = image::load(&fixture("meds-aa-S001-01-exif-rotation.jpg")).unwrap();
    assert_eq!((upright.width, upright.height), (rotated.width, rotated.height), "EXIF orientation applied");
    let fu = a.detect(&upright).unwrap().remove(0);
    let fr = a.detect(&rotated).unwrap().remove(0);
    assert!(fu.bbox.iou(&fr.bbox) > 0.9, "{:?} vs {:?}", fu.bbox, fr.bbox);
    let eu = main_embedding(&mut a, "meds-aa-S001-01.jpg");
    let er = main_embedding(&mut a, "meds-aa-S001-01-exif-rotation.jpg");
    assert!(distance(&eu, &er) < 0.1, "distance {}", distance(&eu, &er));
}

#[test]
fn group_photos_give_the_counted_number_of_faces() {
    let mut a = analyzer();
    // Counted by eye on `facestream detect --draw` output: race.jpg has two runners in front with
    // faces over 40 px and five more runners behind them with faces of 14-28 px.
    for (name, min_face, expected) in [
        ("race.jpg", 40.0, 2),
        ("race.jpg", 12.0, 7),
        ("girl-1741925_1920.jpg", 40.0, 2),
        ("meds-af-S419-01_40deg.jpg", 40.0, 2),
    ] {
        let img = image::load(&fixture(name)).unwrap();
        let faces = a.detector.detect_with_min_face(&img, min_face).unwrap();
        assert_eq!(faces.len(), expected, "{name} at min face {min_face}: {faces:?}");
    }
}

#[test]
fn same_and_different_people() {
    let mut a = analyzer();
    let t = a.embedder.threshold;
    let d = |a: &mut Analyzer, x: &str, y: &str| {
        let (ex, ey) = (main_embedding(a, x), main_embedding(a, y));
        distance(&ex, &ey)
    };
    for (x, y) in [("Paul.jpeg", "Paul2.jpeg"), ("meds-aa-S001-01.jpg", "meds-aa-S001-02.jpg")] {
        let dist = d(&mut a, x, y);
        assert!(dist <= t, "{x} vs {y}: {dist} > threshold {t}");
    }
    for (x, y) in [("Paul.jpeg", "Chris.jpeg"), ("meds-aa-S001-01.jpg", "meds-aa-S029-01.jpg")] {
        let dist = d(&mut a, x, y);
        assert!(dist > t, "{x} vs {y}: {dist} <= threshold {t}");
    }
}

#[test]
fn embeddings_are_unit_length_and_deterministic() {
    let mut a = analyzer();
    let e1 = main_embedding(&mut a, "Paul.jpeg");
    let e2 = main_embedding(&mut a, "Paul.jpeg");
    assert_eq!(e1.len(), 128);
    let n: f32 = e1.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((n - 1.0).abs() < 1e-4, "norm {n}");
    assert_eq!(e1, e2);
}

#[test]
fn a_photo_without_a_face_gives_an_empty_result() {
    let mut a = analyzer();
    let img = image::load(&fixture("bad/no-face-gradient.png")).unwrap();
    assert!(a.detect(&img).unwrap().is_empty());
}

#[test]
fn bad_images_are_clear_errors_naming_the_file() {
    type Case = (&'static str, fn(&ImageError) -> bool);
    let cases: [Case; 5] = [
        ("bad/does-not-exist.jpg", |e| matches!(e, ImageError::Open { .. })),
        ("bad/truncated.jpg", |e| matches!(e, ImageError::Decode { .. })),
        ("bad/text-named.jpg", |e| matches!(e, ImageError::Decode { .. })),
        ("bad/zero-0x0.png", |e| matches!(e, ImageError::Empty { .. } | ImageError::Decode { .. })),
        ("bad/huge-20000x20000.png", |e| matches!(e, ImageError::TooLarge { .. } | ImageError::OverLimit { .. })),
    ];
    for (name, expected) in cases {
        let path = fixture(name);
        let err = image::load(&path).expect_err(name);
        assert!(expected(&err), "{name}: unexpected error kind {err:?}");
        let msg = err.to_string();
        assert!(msg.contains(path.file_name().unwrap().to_str().unwrap()), "{name}: message does not name the file: {msg}");
    }
}

/// The converted embedder matches the reference conversion (when the reference is present).
#[test]
fn converted_embedder_matches_the_reference_model() {
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models-reference/faceapi_recognition.onnx");
    if !reference.is_file() {
        eprintln!("skipped: {} not present", reference.display());
        return;
    }
    let rt = Runtime::get(&Config::embedded().unwrap().infer).unwrap();
    let mut ours = rt.load("faceapi_recognition").unwrap();
    let mut theirs = rt.load_path(&reference).unwrap();
    // The check input of MODELS.md: pixel (y, x) = (255 x / 149, 255 y / 149, 64).
    let mut input = Vec::with_capacity(150 * 150 * 3);
    for y in 0..150 {
        for x in 0..150 {
            input.extend_from_slice(&[255.0 * x as f32 / 149.0, 255.0 * y as f32 / 149.0, 64.0]);
        }
    }
    let shape = [1usize, 150, 150, 3];
    let a = ours.run(&[("input", &shape, &input)]).unwrap().remove(0).data;
    let b = theirs.run(&[("input", &shape, &input)]).unwrap().remove(0).data;
    let max_diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(max_diff < 1e-4, "max abs difference {max_diff}");
    let expected = [-0.04991f32, 0.12179, 0.05684, 0.00749, -0.05187, -0.03765];
    for (got, want) in a.iter().zip(expected) {
        assert!((got - want).abs() < 1e-4, "descriptor starts {:?}", &a[..6]);
    }
}
