//! Fuzzes the gallery index dump loader, `Hnsw::load` (the dump beside the store that the gallery
//! reloads at start instead of rebuilding), then searches and extends what it accepted.
//!
//! The input is a dump file (written to a temporary file, as `load` reads a path). The vectors are
//! generated here: as many as the dump's header announces (up to `MAX_NODES`, else the seed's
//! `SEED_NODES`), and the fingerprint passed is the header's own, so the fuzzer gets past that one
//! comparison and reaches the graph checks; the fingerprint check itself is checked once per input.
//!
//! Invariants: no panic, no runaway allocation; a dump is accepted only for its own fingerprint; an
//! accepted graph has one node per vector, answers searches with existing nodes, and takes an insert
//! (what the gallery does with a reloaded index on the next enrollment).
//!
//! Seeds: `FACESTREAM_FUZZ_WRITE_SEEDS=<dir> fuzz/target/.../hnsw_load` builds real indexes with
//! `Hnsw::build` over the same generated vectors, dumps them into <dir> and exits (`make fuzz-seeds`).
#![no_main]

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use facestream::embed::DIM;
use facestream::gallery::hnsw::{Hnsw, Params, fingerprint};
use libfuzzer_sys::fuzz_target;

/// Nodes of the main seed dump; the vector set used when the header's count is out of range.
const SEED_NODES: usize = 48;
/// Largest node count the target generates vectors for.
const MAX_NODES: u64 = 512;
/// Offsets in the dump: magic (8 bytes), then m, ef_construction, seed, n, fingerprint, entry, top.
const N_AT: usize = 8 + 3 * 8;
const FP_AT: usize = 8 + 4 * 8;

/// `n` seeded pseudo-random unit vectors, node-major (the generator of hnsw.rs's tests).
fn unit_vectors(n: usize, seed: u64) -> Vec<f32> {
    facestream::embed::random_units(n, seed)
}

thread_local! {
    static VECTORS: RefCell<HashMap<usize, Vec<f32>>> = RefCell::new(HashMap::new());
}

fn with_vectors<R>(n: usize, f: impl FnOnce(&[f32]) -> R) -> R {
    VECTORS.with(|cell| {
        let mut cache = cell.borrow_mut();
        let v = cache.entry(n).or_insert_with(|| unit_vectors(n, 7));
        f(v)
    })
}

fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?))
}

fn dump_path() -> PathBuf {
    std::env::temp_dir().join(format!("facestream-fuzz-hnsw-{}.dump", std::process::id()))
}

/// Real dumps for the seed corpus: the main one, a one-node graph, an empty graph, and one built
/// with other parameters.
fn write_seeds(dir: &Path) {
    std::fs::create_dir_all(dir).expect("seed folder");
    for (name, n, params) in [
        ("hnsw-48-default.dump", SEED_NODES, Params::default()),
        ("hnsw-1.dump", 1, Params::default()),
        ("hnsw-0.dump", 0, Params::default()),
        ("hnsw-40-m4.dump", 40, Params { m: 4, ef_construction: 16, seed: 99 }),
    ] {
        with_vectors(n, |v| {
            let h = Hnsw::build(v, params, 1, &|_| {});
            let path = dir.join(name);
            h.save(&path, fingerprint(v)).expect("write seed dump");
            assert!(Hnsw::load(&path, v, fingerprint(v)).is_some(), "seed {name} reloads");
        });
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
        let n = u64_at(data, N_AT).unwrap_or(0);
        let fp = u64_at(data, FP_AT).unwrap_or(0);
        let count = if n <= MAX_NODES { n as usize } else { SEED_NODES };
        let path = dump_path();
        if std::fs::write(&path, data).is_err() {
            return;
        }
        with_vectors(count, |vectors| {
            assert!(Hnsw::load(&path, vectors, fp ^ 1).is_none(), "a dump was accepted for another fingerprint");
            let Some(mut h) = Hnsw::load(&path, vectors, fp) else { return };
            assert_eq!(h.len(), count, "loaded graph has {} nodes for {count} vectors", h.len());
            let probe = unit_vectors(2, 1234);
            let queries = probe.chunks_exact(DIM).chain(vectors.chunks_exact(DIM).take(4));
            for q in queries {
                for (node, d) in h.search(q, 5, 16) {
                    assert!((node as usize) < h.len(), "search returned node {node} of {}", h.len());
                    assert!(d.is_finite(), "search returned distance {d}");
                }
            }
            let node = h.insert(&probe[..DIM]);
            assert_eq!(node as usize, count, "insert after load");
            assert!(h.search(&probe[..DIM], 1, 16).iter().all(|&(n, _)| (n as usize) < h.len()));
        });
        let _ = std::fs::remove_file(&path);
    }
);
