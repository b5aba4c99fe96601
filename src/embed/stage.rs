//! The embedding side of the pipeline: the one batcher across all cameras (a batch leaves when
//! `max_batch` faces wait or the oldest has waited `max_wait_ms`) and the embedding workers, which
//! run each batch through one reused contiguous buffer and hand every face's embedding on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::batcher::{BatchConfig, Batcher};
use super::{EmbedError, Embedder, Embedding};
use crate::detect::BBox;
use crate::queue::{Outlet, Tx};
use crate::telemetry::metrics;

/// One aligned face crop of a track, to be embedded.
pub struct EmbedRequest {
    pub camera: Arc<str>,
    pub track: u64,
    /// Aligned crop, `CROP_BYTES` of packed RGB.
    pub crop: Vec<u8>,
    pub bbox: BBox,
    /// The face's quality score (size, pose, sharpness) as the track stage judged it.
    pub quality: f32,
    pub captured_instant: Instant,
    /// A small copy of the frame with the face outlined, when this face is the track's best so
    /// far and best shots are kept (`snapshots.context_width`).
    pub context: Option<Arc<crate::image::RgbImage>>,
}

/// A request with its embedding, or why the batch it was in failed.
pub struct Embedded {
    pub request: EmbedRequest,
    pub embedding: Result<Embedding, Arc<EmbedError>>,
}

/// Groups requests into batches; ends (after a last flush) when its inputs close. A request from
/// `priority` (observed cameras: gates) is taken first and sends its batch at once, without
/// waiting for `max_wait`.
pub fn batch_stage(cfg: BatchConfig, rx: Receiver<EmbedRequest>, priority: Receiver<EmbedRequest>, tx: Tx<Vec<EmbedRequest>>) {
    let mut b = Batcher::new(cfg);
    let (mut open, mut prio_open) = (true, true);
    while open || prio_open {
        let now = Instant::now();
        let wait = b.wait_time(now).unwrap_or(Duration::from_secs(3600));
        // Waiting priority requests go first, whatever else is ready.
        let mut urgent = false;
        while prio_open {
            match priority.try_recv() {
                Ok(req) => {
                    urgent = true;
                    if let Some(batch) = b.push(req, Instant::now())
                        && tx.push(batch).is_err() {
                            return;
                        }
                }
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => prio_open = false,
            }
        }
        if urgent {
            if let Some(batch) = b.flush()
                && tx.push(batch).is_err() {
                    return;
                }
            continue;
        }
        let mut sel = crossbeam_channel::Select::new();
        let normal = open.then(|| sel.recv(&rx));
        let prio = prio_open.then(|| sel.recv(&priority));
        // Bounded wait: the inputs' end is also noticed by polling (never rely on one wake-up).
        let op = sel.select_timeout(wait.min(Duration::from_millis(100)));
        if op.is_err() {
            for (q, flag) in [(&rx, &mut open), (&priority, &mut prio_open)] {
                if *flag {
                    match q.try_recv() {
                        Ok(req) => {
                            if let Some(batch) = b.push(req, Instant::now())
                                && tx.push(batch).is_err() {
                                    return;
                                }
                        }
                        Err(crossbeam_channel::TryRecvError::Disconnected) => *flag = false,
                        Err(crossbeam_channel::TryRecvError::Empty) => {}
                    }
                }
            }
        }
        if let Ok(op) = op {
            let i = Some(op.index());
            let (result, from_prio) = if i == prio { (op.recv(&priority), true) } else if i == normal { (op.recv(&rx), false) } else { continue };
            match result {
                Ok(req) => {
                    if let Some(batch) = b.push(req, Instant::now())
                        && tx.push(batch).is_err() {
                            return;
                        }
                    if from_prio {
                        if let Some(batch) = b.flush()
                            && tx.push(batch).is_err() {
                                return;
                            }
                        continue;
                    }
                }
                Err(_) if from_prio => prio_open = false,
                Err(_) => open = false,
            }
        }
        if let Some(batch) = b.poll(Instant::now())
            && tx.push(batch).is_err() {
                return;
            }
    }
    if let Some(batch) = b.flush() {
        let _ = tx.push(batch);
    }
}

/// One embedding worker (one ONNX session); `flip` adds each crop's mirror image (see
/// [`Embedder::embed_crops_flip`]).
pub fn embed_worker(emb: &mut Embedder, flip: bool, rx: Receiver<Vec<EmbedRequest>>, mut out: impl Outlet<Embedded>) {
    let m = metrics();
    let mut buf: Vec<u8> = Vec::new();
    for batch in rx {
        m.batch_size.observe(batch.len() as f64);
        buf.clear();
        for r in &batch {
            buf.extend_from_slice(&r.crop);
        }
        let started = Instant::now();
        let cpu = crate::telemetry::thread_cpu_seconds();
        let result = emb.embed_crops_flip(&buf, flip);
        m.stage_seconds.with_label_values(&["embed"]).observe(started.elapsed().as_secs_f64());
        m.stage_cpu_seconds.with_label_values(&["embed"]).inc_by((crate::telemetry::thread_cpu_seconds() - cpu).max(0.0));
        let embeddings: Vec<Result<Embedding, Arc<EmbedError>>> = match result {
            Ok(embs) => embs.into_iter().map(Ok).collect(),
            Err(e) => {
                tracing::warn!(error = %e, faces = batch.len(), "embedding batch failed");
                let e = Arc::new(e);
                batch.iter().map(|_| Err(e.clone())).collect()
            }
        };
        for (request, embedding) in batch.into_iter().zip(embeddings) {
            m.embeddings.with_label_values(&[&request.camera]).inc();
            m.capture_to_embed.observe(request.captured_instant.elapsed().as_secs_f64());
            if !out.put(Embedded { request, embedding }) {
                return;
            }
        }
    }
}
