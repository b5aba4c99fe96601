//! Enrollment that cannot poison the gallery, on real photos: a portrait with a small second face
//! at its edge enrolls its dominant face, a photo of two equally prominent people is refused with
//! both boxes listed, and a blurred copy of a sharp fixture face is refused with its measured
//! sharpness, while the sharp original is accepted.

use std::path::{Path, PathBuf};

use facestream::config::Config;
use facestream::photo::{Analyzer, ENROLL_MIN_SHARPNESS, EnrollError, enrollable_bytes};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn png(img: &image::RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn a_portrait_with_a_face_at_its_edge_enrolls_the_dominant_face() {
    let mut a = Analyzer::new(&Config::embedded().unwrap()).unwrap();
    // Paul's portrait, with Chris's photo pasted small into the lower-left corner.
    let mut paul = image::open(fixture("Paul.jpeg")).unwrap().to_rgb8();
    let chris = image::open(fixture("Chris.jpeg")).unwrap().to_rgb8();
    let small = image::imageops::resize(&chris, chris.width() / 3, chris.height() / 3, image::imageops::FilterType::Triangle);
    let y = (paul.height() - small.height()) as i64;
    image::imageops::overlay(&mut paul, &small, 0, y);
    let e = enrollable_bytes(&mut a, &png(&paul), Path::new("paul-and-corner.png"), None).expect("the dominant face is enrolled");
    assert_eq!(e.faces_in_photo, 2, "both faces were found");
    assert!(e.face.bbox.x1 > 80.0 && e.face.bbox.y1 < 200.0, "Paul's face, not the pasted one: {:?}", e.face.bbox);
    let alone = enrollable_bytes(&mut a, &std::fs::read(fixture("Paul.jpeg")).unwrap(), Path::new("Paul.jpeg"), None).unwrap();
    assert!(facestream::embed::distance(&e.embedding, &alone.embedding) < 0.05, "the same face as in the plain portrait");
}

#[test]
fn a_photo_of_two_equally_prominent_people_is_refused_with_both_boxes() {
    let mut a = Analyzer::new(&Config::embedded().unwrap()).unwrap();
    let err = match enrollable_bytes(&mut a, &std::fs::read(fixture("girl-1741925_1920.jpg")).unwrap(), Path::new("girl.jpg"), None) {
        Err(e) => e,
        Ok(_) => panic!("a balanced two-face photo must be refused"),
    };
    let EnrollError::SeveralFaces { count, boxes, .. } = &err else { panic!("{err}") };
    assert_eq!((*count, boxes.len()), (2, 2));
    let text = err.to_string();
    assert!(text.contains(&format!("[{:.0},", boxes[0][0])) && text.contains(&format!("[{:.0},", boxes[1][0])), "{text}");
}

#[test]
fn a_blurred_copy_of_a_fixture_face_is_refused_and_the_original_accepted() {
    let mut a = Analyzer::new(&Config::embedded().unwrap()).unwrap();
    for name in ["meds-aa-S001-01.jpg", "meds-aa-S029-01.jpg", "Paul.jpeg"] {
        let sharp = std::fs::read(fixture(name)).unwrap();
        let ok = enrollable_bytes(&mut a, &sharp, Path::new(name), None);
        assert!(ok.is_ok(), "{name}: the sharp original is accepted: {:?}", ok.err().map(|e| e.to_string()));
        let img = image::open(fixture(name)).unwrap().to_rgb8();
        let blurred = image::imageops::blur(&img, 6.0);
        match enrollable_bytes(&mut a, &png(&blurred), Path::new("blurred.png"), None) {
            Err(EnrollError::Blurred { value, min, .. }) => {
                assert_eq!(min, ENROLL_MIN_SHARPNESS);
                assert!(value < min, "{name}: {value}");
                eprintln!("{name}: blurred copy measured {value:.1} (floor {min})");
            }
            Err(EnrollError::NoFace { .. }) => panic!("{name}: the blurred face should still be found, then refused as blurred"),
            Err(e) => panic!("{name}: {e}"),
            Ok(_) => panic!("{name}: a blurred face must be refused"),
        }
    }
}

#[test]
fn enroll_from_a_clip_takes_distinct_frames_and_a_look_alike_is_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("g.db");
    let bin = env!("CARGO_BIN_EXE_facestream");
    let clip = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/signs/again.mkv");
    let out = std::process::Command::new(bin).args(["--log", "warn", "enroll", "--name", "signer", "--video"]).arg(&clip).arg("--store").arg(&db).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    let store = facestream::gallery::store::Store::open(&db).unwrap();
    let samples = store.samples(None).unwrap();
    assert!((2..=3).contains(&samples.len()), "a few frames, not every frame: {}", samples.len());
    for (i, a) in samples.iter().enumerate() {
        for b in &samples[i + 1..] {
            let d = facestream::embed::distance(&a.embedding, &b.embedding);
            assert!(d > 0.05 && d < 0.4, "distinct frames of the same face: {d}");
        }
    }
    assert_eq!(store.persons().unwrap().len(), 1);
    // A second person enrolled from another clip of the same signer is flagged.
    let help = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/signs/help.mkv");
    let out = std::process::Command::new(bin).args(["--log", "warn", "enroll", "--name", "signer-again", "--video"]).arg(&help).arg("--store").arg(&db).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert!(err.contains("warning: signer-again lies within the threshold of signer"), "{err}");
}
