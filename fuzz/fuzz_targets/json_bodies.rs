//! Fuzzes the JSON that facestream takes from outside: the signed gate command envelope
//! (`gate::signing::Verifier`), the gallery export file (`gallery::store::Export`, imported into a
//! store and loaded into a gallery), the HTTP API's person and groups bodies (stored through
//! `Store`), and the calibration file (`identify::calibration::Calibration`).
//!
//! The first byte picks the body: `0` envelope, `1` export, `2` person (`POST /api/persons`),
//! `3` groups (`PUT /api/persons/{id}/groups`), `4` calibration (byte - '0', mod 5); the rest is
//! the body. The API's body structs are private to `http::api`, so this file mirrors them (and the
//! handler's checks) and fuzzes what the handlers then do with the store.
//!
//! Invariants: no panic; an envelope is accepted only when signed with the key, fresh (within the
//! skew, computed without overflow), for this gate, and never twice; whatever parses is accepted
//! once re-signed and refused once tampered with; an export imports every person and sample, loads
//! exactly the samples of the running model with 128 values, and the gallery then reports each
//! match at its best sample's real distance (a malformed embedding must not match everyone); a
//! person's name, metadata and groups come back from the store as they were sent; a calibration
//! lookup never returns an entry above the false-accept target asked for.
//!
//! Seeds: `FACESTREAM_FUZZ_WRITE_SEEDS=<dir> .../json_bodies` writes signed envelopes, an export
//! with real unit embeddings and the other bodies into <dir> and exits (`make fuzz-seeds`).
#![no_main]

use std::collections::HashMap;
use std::path::Path;

use facestream::embed::{DIM, normalized};
use facestream::gallery::Gallery;
use facestream::gallery::store::{Export, ExportPerson, SampleRow, Store, groups_of};
use facestream::gate::Command;
use facestream::gate::signing::{Envelope, Rejection, Verifier, sign};
use facestream::http::api::{MAX_GROUP_BYTES, MAX_GROUPS, MAX_METADATA_BYTES, MAX_NAME_BYTES};
use facestream::identify::calibration::{Calibration, Entry};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;

const KEY: &[u8] = b"facestream-fuzz-key-0123456789";
const NOW: i64 = 1_764_633_600;
const SKEW: i64 = 30;
const MODEL: &str = "facenet-fuzz";

fn fresh(now: i64, ts: i64) -> bool {
    (now as i128 - ts as i128).abs() <= SKEW as i128
}

fn envelope(body: &[u8]) {
    let parsed = serde_json::from_slice::<Envelope>(body);
    let mut v = Verifier::new(KEY, SKEW, None);
    match v.verify(body, NOW) {
        Ok(env) => {
            assert_eq!(Some(&env), parsed.as_ref().ok(), "accepted envelope differs from the body");
            assert!(fresh(NOW, env.ts), "accepted a stale envelope (ts {})", env.ts);
            assert!(matches!(v.verify(body, NOW), Err(Rejection::Replay(_))), "accepted the same envelope twice");
        }
        Err(Rejection::Malformed(_)) => assert!(parsed.is_err(), "refused as malformed an envelope that parses"),
        Err(_) => assert!(parsed.is_ok(), "parse error not reported as malformed"),
    }
    let Ok(env) = parsed else { return };
    let _ = serde_json::from_str::<Command>(&env.payload);
    if env.v != 1 {
        assert!(matches!(Verifier::new(KEY, SKEW, None).verify(body, NOW), Err(Rejection::Version(_))));
        return;
    }
    // Whatever parses, signed with the key, is accepted at its own time by its own gate, once.
    let signed = sign(KEY, &env.gate, env.ts, env.nonce.clone(), env.payload.clone());
    let bytes = serde_json::to_vec(&signed).expect("envelope serialises");
    let mut own = Verifier::new(KEY, SKEW, Some(env.gate.clone()));
    assert_eq!(own.verify(&bytes, env.ts), Ok(signed.clone()), "a freshly signed envelope was refused");
    assert!(matches!(own.verify(&bytes, env.ts), Err(Rejection::Replay(_))), "replay accepted");
    assert_eq!(Verifier::new(b"another key", SKEW, None).verify(&bytes, env.ts), Err(Rejection::Signature));
    let other_gate = format!("{}-other", env.gate);
    assert!(matches!(Verifier::new(KEY, SKEW, Some(other_gate)).verify(&bytes, env.ts), Err(Rejection::WrongGate { .. })));
    let mut tampered = signed.clone();
    tampered.payload.push(' ');
    let tampered = serde_json::to_vec(&tampered).expect("envelope serialises");
    assert_eq!(Verifier::new(KEY, SKEW, None).verify(&tampered, env.ts), Err(Rejection::Signature), "tampered payload accepted");
    // At the receiver's clock: accepted exactly when within the skew.
    match Verifier::new(KEY, SKEW, None).verify(&bytes, NOW) {
        Ok(_) => assert!(fresh(NOW, env.ts), "accepted ts {} at {NOW} (skew {SKEW})", env.ts),
        Err(Rejection::Stale { .. }) => assert!(!fresh(NOW, env.ts), "refused as stale ts {} at {NOW}", env.ts),
        Err(e) => panic!("signed envelope refused: {e}"),
    }
}

fn memory_store() -> Store {
    Store::open(Path::new(":memory:")).expect("in-memory store")
}

fn l2(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum::<f64>().sqrt()
}

fn export(body: &[u8]) {
    let Ok(data) = serde_json::from_slice::<Export>(body) else { return };
    // What serialises parses back to the same thing.
    let text = serde_json::to_string(&data).expect("export serialises");
    let back: Export = serde_json::from_str(&text).expect("a serialised export parses");
    assert_eq!(serde_json::to_string(&back).expect("export serialises"), text, "export does not round-trip");
    for p in &data.persons {
        let _ = groups_of(&p.metadata);
    }
    let mut store = memory_store();
    let Ok((persons, samples)) = store.import(&data) else { return };
    assert_eq!(persons, data.persons.len());
    assert_eq!(samples, data.persons.iter().map(|p| p.samples.len()).sum::<usize>());
    let mut gallery = Gallery::new();
    let foreign = data.persons.iter().flat_map(|p| &p.samples).any(|s| s.model_id != MODEL);
    let loaded = store.load_into(&mut gallery, MODEL);
    if foreign {
        assert!(loaded.is_err(), "loaded samples of another model");
        return;
    }
    let loaded = loaded.expect("load an imported export");
    // Samples per name (an export may name a person twice: the store merges them).
    let mut by_name: HashMap<&str, Vec<&[f32]>> = HashMap::new();
    for p in &data.persons {
        by_name.entry(p.name.as_str()).or_default().extend(p.samples.iter().filter(|s| s.embedding.len() == DIM).map(|s| s.embedding.as_slice()));
    }
    let expected: usize = by_name.values().map(Vec::len).sum();
    assert_eq!(loaded, expected, "samples loaded");
    assert_eq!(gallery.len(), by_name.values().filter(|v| !v.is_empty()).count(), "persons in the gallery");
    let probes = [normalized(&[1.0; DIM]), normalized(&(0..DIM).map(|i| if i % 3 == 0 { -1.0 } else { 0.5 }).collect::<Vec<f32>>())];
    for q in &probes {
        for m in gallery.search(q, 5) {
            let samples = by_name.get(m.name.as_str()).expect("a match names an imported person");
            let best = samples.iter().map(|s| l2(q, s)).fold(f64::INFINITY, f64::min);
            assert!(m.distance.is_finite() && (m.distance as f64 - best).abs() < 5e-3, "`{}` matched at {} but its nearest sample is {best} away", m.name, m.distance);
        }
    }
}

/// `POST /api/persons` body (mirrors the private `http::api::NewPerson`).
#[derive(Deserialize)]
struct NewPerson {
    name: String,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
}

/// `PUT /api/persons/{id}/groups` body (mirrors the private `http::api::GroupsBody`).
#[derive(Deserialize)]
struct GroupsBody {
    groups: Vec<String>,
}

fn person(body: &[u8]) {
    let Ok(p) = serde_json::from_slice::<NewPerson>(body) else { return };
    // The handler's checks, in its order.
    if p.name.trim().is_empty() || p.name.len() > MAX_NAME_BYTES || p.name.chars().any(char::is_control) {
        return;
    }
    if p.metadata.as_ref().is_some_and(|m| m.to_string().len() > MAX_METADATA_BYTES) {
        return;
    }
    let mut store = memory_store();
    let id = store.ensure_person(&p.name, p.metadata.as_ref()).expect("store a person");
    let row = store.person(id).expect("read a person").expect("the person just stored");
    assert_eq!(row.name, p.name);
    let want = p.metadata.clone().unwrap_or_else(|| serde_json::json!({}));
    assert_eq!(row.metadata, want, "metadata does not come back as sent");
    assert_eq!(store.person_by_name(&p.name).expect("read").map(|r| r.id), Some(id));
    let groups = groups_of(&row.metadata);
    if store.set_groups(id, &groups).expect("set groups") {
        assert_eq!(groups_of(&store.person(id).expect("read").expect("person").metadata), groups);
    }
}

fn groups(body: &[u8]) {
    let Ok(b) = serde_json::from_slice::<GroupsBody>(body) else { return };
    if b.groups.len() > MAX_GROUPS || b.groups.iter().any(|g| g.is_empty() || g.len() > MAX_GROUP_BYTES) {
        return;
    }
    let mut store = memory_store();
    let meta = serde_json::json!({"badge": 7, "groups": ["old"]});
    let id = store.ensure_person("fuzz", Some(&meta)).expect("store a person");
    assert!(store.set_groups(id, &b.groups).expect("set groups"));
    let row = store.person(id).expect("read").expect("person");
    assert_eq!(groups_of(&row.metadata), b.groups, "groups do not come back as sent");
    assert_eq!(row.metadata["badge"], 7, "other metadata keys are kept");
    assert!(!store.set_groups(id + 1, &b.groups).expect("set groups"), "groups set on a missing person");
}

fn calibration(body: &[u8]) {
    let Ok(c) = serde_json::from_slice::<Calibration>(body) else { return };
    let mut rebuilt = Calibration { entries: Vec::new(), ..c.clone() };
    for e in c.entries.iter().cloned() {
        rebuilt.put(e);
    }
    assert!(rebuilt.entries.windows(2).all(|w| (w[0].gallery_size, w[0].target_far) <= (w[1].gallery_size, w[1].target_far)), "entries not sorted");
    for target in [0.0, 1e-4, 1e-3, 0.01, 0.1, 1.0] {
        for size in [0, 1, 10, 1000, usize::MAX] {
            for cal in [&c, &rebuilt] {
                if let Some(e) = cal.lookup(target, size) {
                    assert!(e.target_far <= target + 1e-12, "lookup({target}, {size}) gave an entry for FAR {}", e.target_far);
                }
            }
        }
    }
}

fuzz_target!(
    init: {
        if let Some(dir) = std::env::var_os("FACESTREAM_FUZZ_WRITE_SEEDS") {
            write_seeds(Path::new(&dir));
            std::process::exit(0);
        }
    },
    |data: &[u8]| {
        let Some((&kind, body)) = data.split_first() else { return };
        match kind.wrapping_sub(b'0') % 5 {
            0 => envelope(body),
            1 => export(body),
            2 => person(body),
            3 => groups(body),
            _ => calibration(body),
        }
    }
);

fn unit(seed: u64) -> Vec<f32> {
    facestream::embed::random_units(1, seed | 1)
}

fn write_seeds(dir: &Path) {
    std::fs::create_dir_all(dir).expect("seed folder");
    let put = |name: &str, kind: u8, body: &[u8]| {
        let mut bytes = vec![kind];
        bytes.extend_from_slice(body);
        std::fs::write(dir.join(name), bytes).expect("write seed");
    };
    let command = Command { command: "open".into(), gate: "front-door".into(), person: "MEDS_S029".into(), track_id: "cam-1/17".into(), time: "2025-12-02T00:00:00.000Z".into(), log_id: Some(3) };
    let payload = serde_json::to_string(&command).expect("command");
    let env = sign(KEY, "front-door", NOW, "9f2c3b1a0d4e5f60718293a4b5c6d7e8".into(), payload.clone());
    put("envelope-valid.json", b'0', &serde_json::to_vec(&env).expect("envelope"));
    let stale = sign(KEY, "front-door", NOW - 3600, "00112233445566778899aabbccddeeff".into(), payload.clone());
    put("envelope-stale.json", b'0', &serde_json::to_vec(&stale).expect("envelope"));
    let mut forged = env.clone();
    forged.payload = payload.replace("MEDS_S029", "someone-else");
    put("envelope-forged.json", b'0', &serde_json::to_vec(&forged).expect("envelope"));
    let persons = vec![
        ExportPerson {
            name: "alice".into(),
            metadata: serde_json::json!({"groups": ["staff"], "badge": 12}),
            samples: (0..2).map(|i| SampleRow { id: i + 1, person_id: 1, model_id: MODEL.into(), quality: 0.9, image_sha256: "ab".repeat(32), created: 1_764_633_600, embedding: unit(10 + i) }).collect(),
        },
        ExportPerson { name: "bob".into(), metadata: serde_json::json!({}), samples: vec![SampleRow { id: 3, person_id: 2, model_id: MODEL.into(), quality: 0.7, image_sha256: "cd".repeat(32), created: 1_764_633_601, embedding: unit(20) }] },
    ];
    let export = Export { format: "facestream-gallery-1".into(), persons };
    put("export-2-persons.json", b'1', &serde_json::to_vec(&export).expect("export"));
    put("person.json", b'2', br#"{"name": "Carol Example", "metadata": {"groups": ["visitors"], "note": "escort"}}"#);
    put("person-no-metadata.json", b'2', br#"{"name": "dave"}"#);
    put("groups.json", b'3', br#"{"groups": ["staff", "night-shift"]}"#);
    let cal = Calibration {
        model: MODEL.into(),
        rule: "distance+margin0.05".into(),
        source: "fuzz seed".into(),
        entries: [(10, 0.01, 0.40), (100, 0.01, 0.36), (100, 0.001, 0.33)].into_iter().map(|(gallery_size, target_far, threshold)| Entry { gallery_size, target_far, threshold, far: target_far, dir: 0.9 }).collect(),
    };
    put("calibration.json", b'4', &serde_json::to_vec(&cal).expect("calibration"));
}
