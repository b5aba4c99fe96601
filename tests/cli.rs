//! The command line as a user runs it: batch behaviour on bad input, drawing, compare, help, config errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn facestream(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_facestream")).args(args).output().expect("run facestream")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn detect_goes_on_after_bad_files_and_fails_at_the_end() {
    let good = fixture("meds-aa-S029-01.jpg");
    let bad = [fixture("bad/truncated.jpg"), fixture("bad/text-named.jpg"), fixture("bad/missing.jpg"), fixture("bad/zero-0x0.png"), fixture("bad/huge-20000x20000.png")];
    let mut args: Vec<String> = vec!["detect".into()];
    args.extend(bad.iter().map(|p| p.display().to_string()));
    args.push(good.display().to_string());
    let out = facestream(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out.status.success(), "must exit non-zero when a file failed");
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "the good file is still processed: {stdout}");
    assert_eq!(lines[0]["faces"].as_array().unwrap().len(), 1);
    for b in &bad {
        let name = b.file_name().unwrap().to_str().unwrap();
        assert!(stderr.contains(name), "stderr does not name {name}: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn detect_on_a_faceless_image_succeeds_with_no_faces() {
    let out = facestream(&["detect", fixture("bad/no-face-gradient.png").to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(v["faces"].as_array().unwrap().len(), 0);
}

#[test]
fn draw_writes_an_image_of_the_same_size() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("race.png");
    let out = facestream(&["detect", fixture("race.jpg").to_str().unwrap(), "--draw", out_path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let drawn = facestream::image::load(&out_path).unwrap();
    let orig = facestream::image::load(&fixture("race.jpg")).unwrap();
    assert_eq!((drawn.width, drawn.height), (orig.width, orig.height));
    assert_ne!(drawn.data, orig.data, "boxes were drawn");
}

#[test]
fn compare_says_same_and_different() {
    let same = facestream(&["compare", "--json", fixture("Paul.jpeg").to_str().unwrap(), fixture("Paul2.jpeg").to_str().unwrap()]);
    assert!(same.status.success(), "{}", text(&same.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&same.stdout).trim()).unwrap();
    assert_eq!(v["verdict"], "same", "{v}");
    let diff = facestream(&["compare", fixture("Paul.jpeg").to_str().unwrap(), fixture("Chris.jpeg").to_str().unwrap()]);
    assert!(text(&diff.stdout).starts_with("different"), "{}", text(&diff.stdout));
}

#[test]
fn compare_without_a_face_names_the_file() {
    let out = facestream(&["compare", fixture("Paul.jpeg").to_str().unwrap(), fixture("bad/no-face-gradient.png").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no-face-gradient.png: no face found"), "{}", text(&out.stderr));
}

#[test]
fn every_command_has_help() {
    for cmd in [vec!["--help"], vec!["detect", "--help"], vec!["embed", "--help"], vec!["compare", "--help"], vec!["eval", "--help"], vec!["demo", "--help"]] {
        let out = facestream(&cmd);
        assert!(out.status.success(), "{cmd:?}");
        assert!(text(&out.stdout).contains("Usage:"), "{cmd:?}: {}", text(&out.stdout));
    }
}

#[test]
fn a_bad_config_key_is_refused_naming_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[detect]\nmin_fase = 30\n").unwrap();
    let out = facestream(&["--config", cfg.to_str().unwrap(), "detect", fixture("Paul.jpeg").to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("min_fase"), "{err}");
}

#[test]
fn eval_reports_metrics_on_a_small_list() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("ids.tsv");
    let f = |n: &str| fixture(n).display().to_string();
    std::fs::write(
        &list,
        format!(
            "file\tidentity\n{}\tS001\n{}\tS001\n{}\tS001\n{}\tPaul\n{}\tPaul\n{}\tChris\n{}\tS029\n",
            f("meds-aa-S001-01.jpg"), f("meds-aa-S001-02.jpg"), f("meds-aa-S001-03.jpg"),
            f("Paul.jpeg"), f("Paul2.jpeg"), f("Chris.jpeg"), f("meds-aa-S029-01.jpg")
        ),
    )
    .unwrap();
    let json = dir.path().join("report.json");
    let out = facestream(&["eval", "--identities", list.to_str().unwrap(), "--json", json.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["photos"], 7);
    assert_eq!(v["verification"]["genuine_pairs"], 4);
    assert_eq!(v["verification"]["impostor_pairs"], 17);
    assert!(v["verification"]["auc"].as_f64().unwrap() > 0.9, "{v}");
}

#[test]
fn check_prints_every_problem_of_a_config_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[detect]\nmin_face = 2\n[track]\nmax_age = 0\n[[cameras]]\nid = \"door\"\nurl = \"/nonexistent/clip.mp4\"\n").unwrap();
    let out = facestream(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    for key in ["detect.min_face", "track.max_age", "cameras[0].url"] {
        assert!(err.contains(key), "{key} missing from: {err}");
    }
    assert!(err.lines().filter(|l| l.contains("bad.toml")).count() >= 3, "each problem names the file: {err}");
    assert!(err.contains("3 problem(s)"), "{err}");
    let out = facestream(&["check"]);
    assert!(out.status.success(), "the embedded default is valid: {}", text(&out.stderr));
    // `run` refuses the same config with the same report, before any thread starts.
    let out = facestream(&["--config", cfg.to_str().unwrap(), "run"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("detect.min_face") && err.contains("track.max_age"), "{err}");
}
