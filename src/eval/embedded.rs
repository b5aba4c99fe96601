//! Embeds a labelled photo set once, on several workers, with a cache file so that repeated
//! evaluation and calibration runs over thousands of photos cost seconds. The labelled face of a
//! photo is the one nearest the image centre (datasets like LFW centre the labelled person; the
//! largest or most confident face may be someone else).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Config;
use crate::dataset::Labelled;
use crate::detect::Face;
use crate::embed::{DIM, Embedding};
use crate::photo::{Analyzer, PhotoError};

#[derive(Debug, thiserror::Error)]
pub enum EmbedSetError {
    #[error(transparent)]
    Photo(#[from] PhotoError),
    #[error("{path}: cannot write the embedding cache: {error}")]
    Cache { path: PathBuf, error: std::io::Error },
}

/// Which face of a photo is the labelled one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// Nearest the image centre.
    Centre,
    /// Highest detector confidence (single-person portraits).
    Confident,
}

/// Index of the face nearest the image centre (by box centre).
pub fn centre_face(faces: &[Face], width: u32, height: u32) -> Option<usize> {
    let (cx, cy) = (width as f32 / 2.0, height as f32 / 2.0);
    (0..faces.len()).min_by(|&a, &b| {
        let d = |f: &Face| ((f.bbox.x1 + f.bbox.x2) / 2.0 - cx).hypot((f.bbox.y1 + f.bbox.y2) / 2.0 - cy);
        d(&faces[a]).total_cmp(&d(&faces[b]))
    })
}

fn embed_one(a: &mut Analyzer, path: &Path, pick: Pick) -> Option<Embedding> {
    let img = crate::image::load(path).ok()?;
    let faces = a.detect(&img).ok()?;
    let i = match pick {
        Pick::Centre => centre_face(&faces, img.width, img.height)?,
        Pick::Confident => crate::photo::primary_face(&faces)?,
    };
    a.embed(&img, &faces[i..=i]).ok()?.pop().flatten()
}

fn path_hash(p: &Path) -> u64 {
    crate::dataset::fnv1a(p.to_string_lossy().as_bytes(), 0)
}

const MAGIC: &[u8; 8] = b"FSEMB001";

fn read_cache(path: &Path, model: &str, list: &[Labelled]) -> Option<Vec<Option<Embedding>>> {
    let mut r = std::io::BufReader::new(std::fs::File::open(path).ok()?);
    let mut buf = vec![0u8; 8];
    r.read_exact(&mut buf).ok()?;
    if buf != MAGIC {
        return None;
    }
    let mut word = [0u8; 8];
    r.read_exact(&mut word).ok()?;
    let mut name = vec![0u8; u64::from_le_bytes(word) as usize];
    r.read_exact(&mut name).ok()?;
    r.read_exact(&mut word).ok()?;
    if name != model.as_bytes() || u64::from_le_bytes(word) != list.len() as u64 {
        return None;
    }
    let mut out = Vec::with_capacity(list.len());
    let mut v = vec![0u8; DIM * 4];
    for l in list {
        r.read_exact(&mut word).ok()?;
        let mut ok = [0u8; 1];
        r.read_exact(&mut ok).ok()?;
        r.read_exact(&mut v).ok()?;
        if u64::from_le_bytes(word) != path_hash(&l.path) {
            return None;
        }
        out.push((ok[0] == 1).then(|| v.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()));
    }
    Some(out)
}

fn write_cache(path: &Path, model: &str, list: &[Labelled], embs: &[Option<Embedding>]) -> std::io::Result<()> {
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        w.write_all(MAGIC)?;
        w.write_all(&(model.len() as u64).to_le_bytes())?;
        w.write_all(model.as_bytes())?;
        w.write_all(&(list.len() as u64).to_le_bytes())?;
        for (l, e) in list.iter().zip(embs) {
            w.write_all(&path_hash(&l.path).to_le_bytes())?;
            w.write_all(&[e.is_some() as u8])?;
            let zero = vec![0f32; DIM];
            for x in e.as_ref().unwrap_or(&zero) {
                w.write_all(&x.to_le_bytes())?;
            }
        }
        w.flush()?;
    }
    std::fs::rename(tmp, path)
}

/// The embedding of each photo's labelled face (`None`: unreadable, or no face found), on
/// `workers` analyzers; read from `cache` when it holds exactly this list for this model, else
/// computed and written there. `progress(done, total)` is called as photos finish.
/// Runs `f(analyzer, i)` for every `i < n`, one analyzer per worker thread, taking the next
/// index as each finishes; the results in index order.
pub fn on_workers<T: Clone + Default + Send>(analyzers: &mut [Analyzer], n: usize, progress: &(dyn Fn(usize, usize) + Sync), f: impl Fn(&mut Analyzer, usize) -> T + Sync) -> Vec<T> {
    let out: Mutex<Vec<T>> = Mutex::new(vec![T::default(); n]);
    let (next, done) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|s| {
        for a in analyzers.iter_mut() {
            let (out, next, done, f) = (&out, &next, &done, &f);
            s.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let r = f(a, i);
                    out.lock().unwrap_or_else(|p| p.into_inner())[i] = r;
                    progress(done.fetch_add(1, Ordering::Relaxed) + 1, n);
                }
            });
        }
    });
    out.into_inner().unwrap_or_else(|p| p.into_inner())
}

pub fn embed_set(cfg: &Config, list: &[Labelled], pick: Pick, workers: usize, cache: Option<&Path>, progress: &(dyn Fn(usize, usize) + Sync)) -> Result<Vec<Option<Embedding>>, EmbedSetError> {
    let mut analyzers = (0..workers.max(1)).map(|_| Analyzer::new(cfg)).collect::<Result<Vec<_>, _>>()?;
    let model = format!("{}{}", analyzers[0].embedder.model_id(), if analyzers[0].flip { "+flip" } else { "" });
    if let Some(c) = cache
        && let Some(v) = read_cache(c, &model, list) {
            tracing::info!(cache = %c.display(), photos = list.len(), "embeddings read from the cache");
            return Ok(v);
        }
    let out = on_workers(&mut analyzers, list.len(), progress, |a, i| embed_one(a, &list[i].path, pick));
    if let Some(c) = cache {
        write_cache(c, &model, list, &out).map_err(|error| EmbedSetError::Cache { path: c.to_path_buf(), error })?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::BBox;

    #[test]
    fn the_centre_face_wins_over_a_larger_one_at_the_edge() {
        let face = |x1: f32, y1: f32, side: f32| Face { bbox: BBox { x1, y1, x2: x1 + side, y2: y1 + side }, score: 0.99, landmarks: [[0.0; 2]; 5] };
        let faces = [face(0.0, 0.0, 120.0), face(100.0, 100.0, 50.0)];
        assert_eq!(centre_face(&faces, 250, 250), Some(1));
        assert_eq!(centre_face(&[], 250, 250), None);
    }

    #[test]
    fn the_cache_round_trips_and_refuses_another_list() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("e.bin");
        let list: Vec<Labelled> = (0..3).map(|i| Labelled { identity: format!("p{i}"), path: PathBuf::from(format!("x/{i}.jpg")) }).collect();
        let embs = vec![Some(vec![0.5f32; DIM]), None, Some(vec![-1.0f32; DIM])];
        write_cache(&c, "m1", &list, &embs).unwrap();
        assert_eq!(read_cache(&c, "m1", &list).unwrap(), embs);
        assert!(read_cache(&c, "m2", &list).is_none(), "another model");
        assert!(read_cache(&c, "m1", &list[..2]).is_none(), "another list");
    }
}
