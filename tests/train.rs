//! `facestream train --head` end to end on a tiny labelled set of fixture photos (real models):
//! the head, its model card and the curves are written, and the saved head reloads and maps an
//! embedding to a unit vector. The long runs on the calibration set are benchmarks (BENCHMARKS.md).

use std::path::Path;
use std::process::Command;

/// A tiny `train --head` run on every `data` set (figures on the people trained on: no split).
fn train_tiny(data: &[&Path], out: &Path, cache: &Path, epochs: &str, steps: &str, extra: &[&str]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_facestream"));
    c.args(["train", "--head", "--hold-out", "none", "--validation", "0", "--epochs", epochs, "--steps", steps, "--p", "3", "--k", "2", "--gallery", "3", "--trials", "1", "--workers", "1"]).args(extra);
    for d in data {
        c.arg("--data").arg(d);
    }
    c.arg("--out").arg(out).arg("--cache").arg(cache).output().unwrap()
}

#[test]
fn train_head_smoke_on_fixture_photos() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let f = |n: &str| root.join("tests/fixtures").join(n).display().to_string();
    let rows = [
        ("meds-aa-S001-01.jpg", "S001"),
        ("meds-aa-S001-02.jpg", "S001"),
        ("meds-aa-S001-03.jpg", "S001"),
        ("Paul.jpeg", "Paul"),
        ("Paul2.jpeg", "Paul"),
        ("meds-af-S419-01.jpg", "S419"),
        ("meds-af-S419-01_40deg.jpg", "S419"),
        ("meds-aa-S029-01.jpg", "S029"),
        ("Chris.jpeg", "Chris"),
    ];
    let list = dir.path().join("identities.tsv");
    std::fs::write(&list, rows.iter().map(|(p, id)| format!("{}\t{id}\n", f(p))).collect::<String>()).unwrap();
    let out = dir.path().join("head");
    let run = train_tiny(&[&list], &out, &dir.path().join("cache.bin"), "3", "4", &[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "train failed:\n{stderr}\n{stdout}");
    assert!(stdout.contains("before") && stdout.contains("after"), "{stdout}");
    assert!(stderr.contains("people the head was trained on"), "the tiny run says its figures are on seen people: {stderr}");

    let card: toml::Value = toml::from_str(&std::fs::read_to_string(out.join("head.toml")).unwrap()).unwrap();
    assert!(card["id"].as_str().unwrap().contains("+head-"), "{card}");
    assert_eq!(card["train_people"].as_integer(), Some(5));
    assert_eq!(card["train_photos"].as_integer(), Some(9));
    assert_eq!(card["loss_curve"].as_array().unwrap().len(), 3, "one loss per epoch");
    assert!(card["held_out_after"]["tar_at_far_01pct"].as_float().is_some());
    let png = std::fs::read(out.join("curves.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "the curves are a PNG");

    // --augment 2: two varied copies of every training photo's face join the training rows.
    let aug = dir.path().join("head-aug");
    let run = train_tiny(&[&list], &aug, &dir.path().join("cache.bin"), "2", "2", &["--augment", "2"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("--augment 2: 18 varied faces of 9 training photos"), "{stderr}");
    let card_aug: toml::Value = toml::from_str(&std::fs::read_to_string(aug.join("head.toml")).unwrap()).unwrap();
    assert_eq!(card_aug["train_photos"].as_integer(), Some(27), "the photos and their copies");

    // `run`, `compare` and the rest take the head through embed.head: the head's threshold and
    // model id are used.
    let cfg = dir.path().join("with-head.toml");
    std::fs::write(&cfg, "[embed]\nhead = \"head\"\n").unwrap();
    let compare = |config: Option<&Path>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_facestream"));
        if let Some(p) = config {
            c.arg("--config").arg(p);
        }
        let o = c.arg("compare").arg(f("Paul.jpeg")).arg(f("Paul2.jpeg")).arg("--json").output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap(), String::from_utf8_lossy(&o.stderr).to_string())
    };
    let (with, log) = compare(Some(&cfg));
    assert!(log.contains("+head-"), "the head's model id is in use: {log}");
    assert!((with["threshold"].as_f64().unwrap() - card["threshold"].as_float().unwrap()).abs() < 1e-4, "{with}");
    let (bare, _) = compare(None);
    assert!(with["distance"].as_f64().is_some() && bare["distance"].as_f64().is_some());
    std::fs::write(&cfg, "[embed]\nhead = \"missing\"\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_facestream")).arg("--config").arg(&cfg).arg("compare").arg(f("Paul.jpeg")).arg(f("Paul2.jpeg")).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("embed.head") && err.contains("missing"), "a missing head is named: {err}");

    // The gallery follows the new model: faces enrolled with the bare embedder are refused by a
    // config with the head until `gallery reembed` re-embeds them from their kept crops.
    let store = dir.path().join("gallery.db");
    let fs = |config: Option<&Path>, args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_facestream"));
        if let Some(p) = config {
            c.arg("--config").arg(p);
        }
        c.args(args).arg("--store").arg(&store).output().unwrap()
    };
    std::fs::write(&cfg, "[embed]\nhead = \"head\"\n").unwrap();
    let o = fs(None, &["enroll", "--name", "Paul", &f("Paul.jpeg")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = fs(Some(&cfg), &["identify", &f("Paul2.jpeg")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("re-enroll"), "a store of the bare model is refused under the head: {err}");
    let o = fs(Some(&cfg), &["gallery", "reembed"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains("1 samples re-embedded") && err.contains("+head-"), "{err}");
    let o = fs(Some(&cfg), &["identify", &f("Paul2.jpeg")]);
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && said.contains("Paul"), "identified through the head after the re-embed: {said}{}", String::from_utf8_lossy(&o.stderr));
    let s = facestream::gallery::store::Store::open(&store).unwrap().samples(None).unwrap();
    assert!(s.len() == 1 && s[0].model_id.contains("+head-"), "{:?}", s.iter().map(|x| &x.model_id).collect::<Vec<_>>());

    let head = facestream::train::data::load_head(&out).unwrap();
    assert_eq!(head.dim, 128);
    let v = facestream::embed::random_units(1, 3);
    let mapped = head.apply(&[v]).unwrap();
    let norm: f32 = mapped[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "unit vectors out: {norm}");
}

/// `run --harvest` keeps each track of the sign clips (faces from the bare embedder, best crop);
/// the tracks become identities (one track is one person; likeness links tracks, never across a
/// shared moment on one camera); `train` mixes the harvest with labelled photos.
#[test]
fn harvested_tracks_train_a_head_mixed_with_labelled_photos() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = format!("[events]\nstdout = false\n[http]\nenabled = false\n[gallery]\nstore = \"{}\"\n", dir.path().join("g.db").display());
    for name in ["again", "book", "help", "yes"] {
        cfg += &format!("[[cameras]]\nid = \"{name}\"\nurl = \"{}\"\n", root.join(format!("tests/fixtures/signs/{name}.mkv")).display());
    }
    let config = dir.path().join("harvest.toml");
    std::fs::write(&config, cfg).unwrap();
    let harvest = dir.path().join("harvest");
    let run = Command::new(env!("CARGO_BIN_EXE_facestream")).arg("--config").arg(&config).args(["run", "--harvest"]).arg(&harvest).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let card = root.join("models/faceapi_recognition.toml");
    let model_id = facestream::infer::ModelCard::read(&std::env::var("FACESTREAM_MODELS").map(|m| Path::new(&m).join("faceapi_recognition.toml")).unwrap_or(card)).unwrap().id;
    let tracks = facestream::harvest::read(&harvest, &model_id).unwrap();
    assert!(tracks.len() >= 4, "a track per clip at least: {}", tracks.len());
    for t in &tracks {
        assert!(t.faces.len() >= 3 && t.faces.len() == t.qualities.len(), "{}: {} faces", t.id, t.faces.len());
        assert!(t.faces.iter().all(|f| facestream::gallery::store::is_unit_embedding(f)));
        let crop = std::fs::read(harvest.join("crops").join(t.crop.as_ref().expect("a best crop"))).unwrap();
        assert_eq!(&crop[..2], &[0xFF, 0xD8]);
        assert!(t.person.is_none(), "nobody is enrolled");
    }
    let ids = facestream::harvest::identities(&tracks, 0.35);
    let of = |cam: &str| ids.iter().position(|(_, faces)| tracks.iter().filter(|t| t.camera == cam).any(|t| faces.contains(&t.faces[0]))).unwrap();
    eprintln!("{} tracks -> {} identities: again {} book {} help {} yes {}", tracks.len(), ids.len(), of("again"), of("book"), of("help"), of("yes"));
    assert_ne!(of("book"), of("again"), "signer B (book) is never linked with signer A");
    assert!(of("again") == of("help") && of("help") == of("yes"), "signer A's three clips are linked into one identity");
    assert_eq!(ids.len(), 2, "two signers, two identities");
    assert_eq!(facestream::harvest::identities(&tracks, 0.0).len(), tracks.len(), "without linking every track is an identity");

    // Mixed with labelled photos: both sets' identities are trained on.
    let list = dir.path().join("identities.tsv");
    let f = |n: &str| root.join("tests/fixtures").join(n).display().to_string();
    std::fs::write(&list, format!("{}\tPaul\n{}\tPaul\n{}\tS001\n{}\tS001\n", f("Paul.jpeg"), f("Paul2.jpeg"), f("meds-aa-S001-01.jpg"), f("meds-aa-S001-02.jpg"))).unwrap();
    let out = dir.path().join("head");
    let train = train_tiny(&[&harvest, &list], &out, &dir.path().join("cache.bin"), "2", "3", &[]);
    let stderr = String::from_utf8_lossy(&train.stderr);
    assert!(train.status.success(), "{stderr}");
    assert!(stderr.contains("harvested tracks ->"), "{stderr}");
    let stdout = String::from_utf8_lossy(&train.stdout);
    assert!(stdout.contains(&format!("the harvested people ({} identities", ids.len())), "the site's own people are checked before and after: {stdout}");
    let card: toml::Value = toml::from_str(&std::fs::read_to_string(out.join("head.toml")).unwrap()).unwrap();
    let faces: usize = ids.iter().map(|i| i.1.len()).sum();
    assert_eq!(card["train_people"].as_integer(), Some(ids.len() as i64 + 2), "{card}");
    assert_eq!(card["train_photos"].as_integer(), Some(faces as i64 + 4));
    // The export: the embedder followed by the head as one ONNX model gives what the pipeline
    // computes (embedder, normalise, head) on the harvested faces, within 1e-5.
    let rt = facestream::infer::Runtime::get(&Default::default()).unwrap();
    let mut headed = facestream::embed::Embedder::new(&rt, &Default::default()).unwrap().with_head(Some(&out)).unwrap();
    let exported_card = facestream::infer::ModelCard::read(&out.join(facestream::train::export::CARD_FILE)).unwrap();
    assert_eq!(exported_card.id, card["id"].as_str().unwrap(), "the export carries the head's model id");
    exported_card.verify_file(&out.join(&exported_card.file)).expect("the card pins the exported bytes");
    let mut exported = rt.load_path(&out.join(facestream::train::export::ONNX_FILE)).unwrap();
    let mut crops = Vec::new();
    for t in &tracks {
        let img = facestream::image::decode(&std::fs::read(harvest.join("crops").join(t.crop.as_ref().unwrap())).unwrap(), Path::new("crop.jpg")).unwrap();
        assert_eq!((img.width, img.height), (150, 150));
        crops.extend(img.data);
    }
    let want = headed.embed_crops(&crops).unwrap();
    let input: Vec<f32> = crops.iter().map(|&v| v as f32).collect();
    let got = exported.run(&[("input", &[tracks.len(), 150, 150, 3], &input)]).unwrap();
    let got = &got[0];
    assert_eq!(got.shape, [tracks.len(), 128]);
    let worst = want.iter().flatten().zip(&got.data).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    eprintln!("exported ONNX vs embedder + head: largest difference {worst:e}");
    assert!(worst < 1e-5, "the exported model matches the pipeline: {worst}");
    let bare = facestream::embed::Embedder::new(&rt, &Default::default()).unwrap().embed_crops(&crops).unwrap();
    let moved = bare.iter().flatten().zip(want.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(moved > 1e-3, "the trained head is not the identity (moved {moved}), so the match above means something");

    // The embedder re-expressed in candle (the groundwork of fine-tuning): its forward pass gives
    // ONNX Runtime's embeddings on the same crops, within 1e-4.
    let models = facestream::infer::locate_models(&Default::default());
    let graph = facestream::train::graph::Graph::load(&std::fs::read(models.join("faceapi_recognition.onnx")).unwrap(), &candle_core::Device::Cpu).unwrap();
    assert_eq!(graph.blocks.first().map(String::as_str), Some("conv32_down"));
    assert_eq!(graph.blocks.last().map(String::as_str), Some("fc"));
    let ours = graph.embed_crops(&crops, &candle_core::Device::Cpu).unwrap();
    let worst = ours.iter().flatten().zip(bare.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    eprintln!("candle re-expression vs ONNX Runtime: largest difference {worst:e} over {} blocks", graph.blocks.len());
    assert!(worst < 1e-4, "the candle forward pass matches ONNX Runtime: {worst}");

    // A harvest of another model (or through a head) is refused, naming the file.
    let line = std::fs::read_to_string(harvest.join("harvest.jsonl")).unwrap().replace(&model_id, "another-model");
    std::fs::write(harvest.join("harvest.jsonl"), line).unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_facestream")).args(["train", "--head", "--data"]).arg(&harvest).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("another-model"), "{}", String::from_utf8_lossy(&refused.stderr));
}

/// `train --finetune 2` on the tiny fixture set: the embedder's last two blocks re-expressed in
/// candle give ONNX Runtime's embeddings before any step (through the split into a frozen part
/// and the trained blocks); the fine-tuned weights go back into an ONNX file with its card; the
/// saved model reloads through `embed.model` and reproduces the candle graph's embeddings; the
/// gallery follows it like a head.
#[test]
fn finetune_writes_an_onnx_model_that_reloads_and_reproduces_its_embeddings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let f = |n: &str| root.join("tests/fixtures").join(n);
    let names = ["meds-aa-S001-01.jpg", "meds-aa-S001-02.jpg", "meds-aa-S001-03.jpg", "Paul.jpeg", "Paul2.jpeg", "meds-af-S419-01.jpg", "meds-af-S419-01_40deg.jpg"];
    let ids = ["S001", "S001", "S001", "Paul", "Paul", "S419", "S419"];
    let list = dir.path().join("identities.tsv");
    std::fs::write(&list, names.iter().zip(ids).map(|(p, id)| format!("{}\t{id}\n", f(p).display())).collect::<String>()).unwrap();

    // The crops the pipeline embeds, and ONNX Runtime's embeddings of them.
    let cfg = facestream::config::Config::default();
    let mut analyzer = facestream::photo::Analyzer::new(&cfg).unwrap();
    let mut crops = Vec::new();
    for n in names {
        let img = facestream::image::load(&f(n)).unwrap();
        let faces = analyzer.detect(&img).unwrap();
        crops.extend(analyzer.crop(&img, &faces[facestream::photo::primary_face(&faces).unwrap()]).unwrap());
    }
    let rt = facestream::infer::Runtime::get(&Default::default()).unwrap();
    let bare = facestream::embed::Embedder::new(&rt, &Default::default()).unwrap().embed_crops(&crops).unwrap();
    let models = facestream::infer::locate_models(&Default::default());
    let cpu = candle_core::Device::Cpu;
    let mut graph = facestream::train::graph::Graph::load(&std::fs::read(models.join("faceapi_recognition.onnx")).unwrap(), &cpu).unwrap();
    let vars = graph.train_last(2).unwrap();
    assert_eq!(vars.len(), 5, "conv256_down_out's two convolutions (weights, biases) and fc's matrix");
    assert_eq!(graph.boundary().len(), 2, "the block reads its input and the residual branch");
    let split = graph.embed_crops(&crops, &cpu).unwrap();
    let worst = split.iter().flatten().zip(bare.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "frozen part + trained blocks = ONNX Runtime before training: {worst}");

    // The command: a few steps at a high rate so the weights surely move.
    let out = dir.path().join("ft");
    let run = Command::new(env!("CARGO_BIN_EXE_facestream"))
        .args(["train", "--finetune", "2", "--hold-out", "none", "--validation", "0", "--epochs", "2", "--steps", "2", "--p", "3", "--k", "2", "--gallery", "2", "--trials", "1", "--workers", "1", "--lr", "1e-3", "--data"])
        .arg(&list)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}\n{}", String::from_utf8_lossy(&run.stdout));
    assert!(stderr.contains("fine-tuning the last 2 of 16 blocks (conv256_down_out, fc)"), "{stderr}");
    let card_file = out.join(facestream::train::export::FINETUNED_CARD);
    let card = facestream::infer::ModelCard::read(&card_file).unwrap();
    card.verify_file(&out.join(&card.file)).expect("the card pins the written bytes");
    assert!(card.id.starts_with("faceapi-recognition-") && card.id.contains("+ft2-"), "{}", card.id);
    let table: toml::Value = toml::from_str(&std::fs::read_to_string(&card_file).unwrap()).unwrap();
    assert_eq!(table["parent_model"].as_str(), Some("faceapi-recognition-1.7.15"));
    assert_eq!(table["training"]["blocks"].as_integer(), Some(2));
    assert_eq!(table["training"]["train_faces"].as_integer(), Some(7));
    assert_eq!(table["training"]["loss_curve"].as_array().map(|a| a.len()), Some(2), "{table}");
    assert!(table["training"]["held_out_after"]["dir_at_far_1pct"].as_float().is_some());

    // Reloaded by ONNX Runtime through embed.model, it gives what the candle graph with the
    // written weights gives, and no longer the converted model's embeddings.
    let mut tuned = facestream::embed::Embedder::load(&rt, &Default::default(), Some(&out)).unwrap();
    assert_eq!(tuned.model_id(), card.id);
    let ours = tuned.embed_crops(&crops).unwrap();
    let again = facestream::train::graph::Graph::load(&std::fs::read(out.join(&card.file)).unwrap(), &cpu).unwrap().embed_crops(&crops, &cpu).unwrap();
    let worst = ours.iter().flatten().zip(again.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "the saved model reproduces its embeddings: {worst}");
    let moved = ours.iter().flatten().zip(bare.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(moved > 1e-3, "the fine-tuned weights differ from the converted ones (moved {moved})");

    // `compare` with embed.model: the fine-tuned model's id and threshold are used.
    let config = dir.path().join("tuned.toml");
    std::fs::write(&config, "[embed]\nmodel = \"ft\"\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_facestream")).arg("--config").arg(&config).arg("compare").arg(f("Paul.jpeg")).arg(f("Paul2.jpeg")).arg("--json").output().unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && log.contains("+ft2-"), "{log}");
    let said: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!((said["threshold"].as_f64().unwrap() - card.calibration_f32("threshold").unwrap() as f64).abs() < 1e-4, "{said}");
    std::fs::write(&config, "[embed]\nmodel = \"nowhere\"\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_facestream")).arg("--config").arg(&config).arg("compare").arg(f("Paul.jpeg")).arg(f("Paul2.jpeg")).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("nowhere"), "a missing model folder is named: {err}");
}
