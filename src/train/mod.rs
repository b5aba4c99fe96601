//! `facestream train --head`: FaceNet's triplet loss on the user's own labelled faces, learning a
//! small projection on top of the frozen embedder (the embeddings are computed once).
//!
//! - Batches of P identities x K faces, drawn with a seeded generator.
//! - Online semi-hard negative mining as in the FaceNet paper: for every anchor-positive pair of
//!   the batch, the negative is a face of another identity that lies farther from the anchor than
//!   the positive but within the margin (the closest such one); `Mining::Hardest` takes the
//!   closest negative whatever its distance.
//! - Loss `max(0, |f(a)-f(p)|^2 - |f(a)-f(n)|^2 + alpha)` on unit vectors (alpha = 0.2), averaged
//!   over the mined triplets; gradients by candle's automatic differentiation, Adam with a step
//!   schedule.
//! - The head is `normalise(x W^T + b)`, started at the identity (W = I, b = 0), so before any step
//!   it gives back the embedder's own vectors; early stopping on the validation identities' DIR
//!   at FAR 1%.

pub mod augment;
pub mod data;
pub mod export;
pub mod finetune;
pub mod graph;

use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("training: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Data(String),
    #[error("{path}: {reason}")]
    File { path: std::path::PathBuf, reason: String },
}

/// Which negative a triplet takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mining {
    /// Farther than the positive, within the margin (FaceNet); pairs without one are skipped.
    SemiHard,
    /// The closest negative.
    Hardest,
}

/// One triplet of batch rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Triplet {
    pub anchor: usize,
    pub positive: usize,
    pub negative: usize,
}

/// Squared Euclidean distances between every pair of rows (row-major n x n).
pub fn squared_distances(rows: &[Vec<f32>]) -> Vec<f32> {
    let n = rows.len();
    let mut d = vec![0.0f32; n * n];
    for i in 0..n {
        for j in i + 1..n {
            let v: f32 = rows[i].iter().zip(&rows[j]).map(|(a, b)| (a - b) * (a - b)).sum();
            d[i * n + j] = v;
            d[j * n + i] = v;
        }
    }
    d
}

/// The triplets of a batch: every anchor-positive pair (ordered, anchor != positive) with the
/// negative `mining` picks from the squared distances `d` (n x n); pairs without a negative are
/// left out.
pub fn mine(labels: &[u32], d: &[f32], margin: f32, mining: Mining) -> Vec<Triplet> {
    let n = labels.len();
    let mut out = Vec::new();
    for a in 0..n {
        for p in 0..n {
            if p == a || labels[p] != labels[a] {
                continue;
            }
            let dap = d[a * n + p];
            let candidates = (0..n).filter(|&x| labels[x] != labels[a]).filter(|&x| match mining {
                Mining::SemiHard => d[a * n + x] > dap && d[a * n + x] < dap + margin,
                Mining::Hardest => true,
            });
            if let Some(neg) = candidates.min_by(|&x, &y| d[a * n + x].total_cmp(&d[a * n + y])) {
                out.push(Triplet { anchor: a, positive: p, negative: neg });
            }
        }
    }
    out
}

/// The projection head: `normalise(x W^T + b)`.
pub struct Head {
    pub w: Var,
    pub b: Var,
    pub dim: usize,
}

impl Head {
    /// The identity head (gives back its input, normalised).
    pub fn identity(dim: usize, device: &Device) -> Result<Self, TrainError> {
        Ok(Self { w: Var::from_tensor(&Tensor::eye(dim, DType::F32, device)?)?, b: Var::zeros(dim, DType::F32, device)?, dim })
    }

    pub fn from_weights(w: &[f32], b: &[f32], dim: usize, device: &Device) -> Result<Self, TrainError> {
        if w.len() != dim * dim || b.len() != dim {
            return Err(TrainError::Data(format!("a {dim}-dimensional head needs {} weights and {dim} biases, got {} and {}", dim * dim, w.len(), b.len())));
        }
        Ok(Self { w: Var::from_tensor(&Tensor::from_slice(w, (dim, dim), device)?)?, b: Var::from_tensor(&Tensor::from_slice(b, dim, device)?)?, dim })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TrainError> {
        let y = x.matmul(&self.w.as_tensor().t()?)?.broadcast_add(self.b.as_tensor())?;
        let norm = y.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
        Ok(y.broadcast_div(&norm)?)
    }

    /// Applies the head to plain vectors (for evaluation and the gallery).
    pub fn apply(&self, rows: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, TrainError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let x = Tensor::from_vec(flat, (rows.len(), self.dim), self.w.device())?;
        Ok(self.forward(&x)?.to_vec2::<f32>()?)
    }

    pub fn weights(&self) -> Result<(Vec<f32>, Vec<f32>), TrainError> {
        Ok((self.w.as_tensor().flatten_all()?.to_vec1()?, self.b.as_tensor().to_vec1()?))
    }
}

/// The triplet loss of `triplets` over the batch's embeddings `emb` (n x dim): the mean of
/// `max(0, |a-p|^2 - |a-n|^2 + margin)`, and the fraction of triplets with a non-zero loss.
pub fn triplet_loss(emb: &Tensor, triplets: &[Triplet], margin: f32) -> Result<(Tensor, f32), TrainError> {
    let device = emb.device();
    let idx = |f: fn(&Triplet) -> usize| Tensor::from_vec(triplets.iter().map(|t| f(t) as u32).collect::<Vec<u32>>(), triplets.len(), device);
    let a = emb.index_select(&idx(|t| t.anchor)?, 0)?;
    let p = emb.index_select(&idx(|t| t.positive)?, 0)?;
    let n = emb.index_select(&idx(|t| t.negative)?, 0)?;
    let dap = (&a - &p)?.sqr()?.sum(D::Minus1)?;
    let dan = (&a - &n)?.sqr()?.sum(D::Minus1)?;
    let per = ((dap - dan)? + margin as f64)?.relu()?;
    let active = per.to_vec1::<f32>()?.iter().filter(|&&v| v > 0.0).count() as f32 / triplets.len().max(1) as f32;
    Ok((per.mean_all()?, active))
}

/// Training settings (`facestream train --head`).
#[derive(Clone, Debug, Serialize)]
pub struct TrainConfig {
    pub margin: f32,
    /// Identities per batch, faces per identity.
    pub p: usize,
    pub k: usize,
    pub lr: f64,
    pub epochs: usize,
    /// Batches per epoch (0: as many as the training faces fill).
    pub steps_per_epoch: usize,
    pub mining: Mining,
    pub seed: u64,
    /// Epochs without a better validation score before stopping.
    pub patience: usize,
    /// Pull of the weights towards the identity (the frozen embedder): `anchor * (|W - I|^2 +
    /// |b|^2)` is added to the loss, so a small training set bends the embedding space only
    /// where its triplets ask.
    pub anchor: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self { margin: 0.2, p: 32, k: 4, lr: 1e-3, epochs: 30, steps_per_epoch: 0, mining: Mining::SemiHard, seed: 1, patience: 5, anchor: 0.0 }
    }
}

/// One epoch's figures.
#[derive(Clone, Debug, Serialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub loss: f32,
    /// Anchor-positive pairs with a non-zero triplet loss, of all pairs in the batches.
    pub active: f32,
    pub triplets: usize,
    pub validation: f64,
    pub lr: f64,
}

/// A small deterministic generator (SplitMix64) for the batch draws.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// Draws one batch: P identities (of those with at least 2 faces) and up to K faces each; rows and
/// labels.
pub fn draw_batch(by_identity: &[Vec<usize>], cfg: &TrainConfig, rng: &mut Rng) -> Vec<(u32, usize)> {
    let eligible: Vec<usize> = (0..by_identity.len()).filter(|&i| by_identity[i].len() >= 2).collect();
    let mut ids = eligible.clone();
    rng.shuffle(&mut ids);
    let mut out = Vec::new();
    for &i in ids.iter().take(cfg.p) {
        let mut faces = by_identity[i].clone();
        rng.shuffle(&mut faces);
        out.extend(faces.into_iter().take(cfg.k).map(|f| (i as u32, f)));
    }
    out
}

/// What training produced.
pub struct Trained {
    pub head: Head,
    pub log: Vec<EpochLog>,
    pub best_epoch: usize,
    pub best_validation: f64,
    pub stopped_early: bool,
}

/// What the triplet-loss loop trains: a head over cached embeddings, or the embedder's last
/// blocks over cached activations ([`finetune`]).
pub trait Trainable {
    /// Unit embeddings of the given training rows, differentiable in [`Trainable::vars`].
    fn forward_rows(&self, rows: &[usize]) -> Result<Tensor, TrainError>;
    fn vars(&self) -> Vec<Var>;
    /// A term added to the loss (the head's pull towards the identity); None: nothing.
    fn regulariser(&self) -> Result<Option<Tensor>, TrainError> {
        Ok(None)
    }
    /// The trained values now, and setting them back (the best epoch's).
    fn snapshot(&self) -> Result<Vec<Vec<f32>>, TrainError> {
        self.vars().iter().map(|v| Ok(v.as_tensor().flatten_all()?.to_vec1()?)).collect()
    }
    fn restore(&self, saved: &[Vec<f32>]) -> Result<(), TrainError> {
        for (v, vals) in self.vars().iter().zip(saved) {
            v.set(&Tensor::from_vec(vals.clone(), v.as_tensor().shape(), v.device())?)?;
        }
        Ok(())
    }
}

/// Scores the model on the validation people (higher is better); None: too few of them.
pub type Validate<'a> = dyn FnMut(&dyn Trainable) -> Result<Option<f64>, TrainError> + 'a;

/// The loop's result; the model is left at its best epoch's values.
pub struct Log {
    pub log: Vec<EpochLog>,
    pub best_epoch: usize,
    pub best_validation: f64,
    pub stopped_early: bool,
}

struct HeadRows<'a> {
    head: &'a Head,
    samples: &'a [(u32, Vec<f32>)],
    anchor: f64,
}

impl Trainable for HeadRows<'_> {
    fn forward_rows(&self, rows: &[usize]) -> Result<Tensor, TrainError> {
        let flat: Vec<f32> = rows.iter().flat_map(|&r| self.samples[r].1.iter().copied()).collect();
        self.head.forward(&Tensor::from_vec(flat, (rows.len(), self.head.dim), self.head.w.device())?)
    }
    fn vars(&self) -> Vec<Var> {
        vec![self.head.w.clone(), self.head.b.clone()]
    }
    fn regulariser(&self) -> Result<Option<Tensor>, TrainError> {
        if self.anchor <= 0.0 {
            return Ok(None);
        }
        let eye = Tensor::eye(self.head.dim, DType::F32, self.head.w.device())?;
        let pull = ((self.head.w.as_tensor() - &eye)?.sqr()?.sum_all()? + self.head.b.as_tensor().sqr()?.sum_all()?)?;
        Ok(Some((pull * self.anchor)?))
    }
}

/// Trains a head on `samples` (identity index, embedding) of the training identities; `validate`
/// scores a head (higher is better) after every epoch (None: too few validation identities; the
/// epoch's training loss decides then, lower being better), and `on_best` is called with every new
/// best head (to save it at once: an interrupt keeps the best one); `stop` is checked between
/// batches; `progress` gets (epoch, step, steps, loss, active) after each batch.
#[allow(clippy::too_many_arguments)]
pub fn train_head(
    samples: &[(u32, Vec<f32>)],
    dim: usize,
    cfg: &TrainConfig,
    validate: &mut dyn FnMut(&Head) -> Result<Option<f64>, TrainError>,
    on_best: &mut dyn FnMut(&Head, &EpochLog) -> Result<(), TrainError>,
    stop: &dyn Fn() -> bool,
    progress: &mut dyn FnMut(usize, usize, usize, f32, f32),
) -> Result<Trained, TrainError> {
    let head = Head::identity(dim, &Device::Cpu)?;
    let labels: Vec<u32> = samples.iter().map(|s| s.0).collect();
    let model = HeadRows { head: &head, samples, anchor: cfg.anchor };
    let l = train(&model, &labels, cfg, &mut |_| validate(&head), &mut |_, e| on_best(&head, e), stop, progress)?;
    let (w, b) = head.weights()?;
    Ok(Trained { head: Head::from_weights(&w, &b, dim, &Device::Cpu)?, log: l.log, best_epoch: l.best_epoch, best_validation: l.best_validation, stopped_early: l.stopped_early })
}

/// The triplet-loss loop over `model`'s training rows labelled `labels`: P x K batches, online
/// mining, Adam with a step schedule, validation after every epoch, early stopping; the model
/// ends at its best epoch's values.
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: &dyn Trainable,
    labels: &[u32],
    cfg: &TrainConfig,
    validate: &mut Validate,
    on_best: &mut dyn FnMut(&dyn Trainable, &EpochLog) -> Result<(), TrainError>,
    stop: &dyn Fn() -> bool,
    progress: &mut dyn FnMut(usize, usize, usize, f32, f32),
) -> Result<Log, TrainError> {
    let ids = labels.iter().max().map_or(0, |m| *m as usize + 1);
    let mut by_identity: Vec<Vec<usize>> = vec![Vec::new(); ids];
    for (row, id) in labels.iter().enumerate() {
        by_identity[*id as usize].push(row);
    }
    let usable = by_identity.iter().filter(|v| v.len() >= 2).count();
    if usable < 2 {
        return Err(TrainError::Data(format!("training needs at least 2 identities with 2 or more faces; there are {usable}")));
    }
    let faces: usize = by_identity.iter().filter(|v| v.len() >= 2).map(|v| v.len().min(cfg.k)).sum();
    let steps = if cfg.steps_per_epoch > 0 { cfg.steps_per_epoch } else { faces.div_ceil((cfg.p * cfg.k).max(1)).max(1) };
    let mut opt = AdamW::new(model.vars(), ParamsAdamW { lr: cfg.lr, weight_decay: 0.0, ..Default::default() })?;
    let mut rng = Rng::new(cfg.seed);
    let mut best = validate(model)?.unwrap_or(f64::NEG_INFINITY);
    let mut best_values = model.snapshot()?;
    let mut best_epoch = 0;
    let mut log = vec![EpochLog { epoch: 0, loss: f32::NAN, active: f32::NAN, triplets: 0, validation: best, lr: cfg.lr }];
    let mut since_best = 0;
    let mut stopped_early = false;
    'epochs: for epoch in 1..=cfg.epochs {
        // Step schedule: the rate halves at 1/2 and again at 3/4 of the epochs.
        let lr = cfg.lr * if epoch > cfg.epochs * 3 / 4 { 0.25 } else if epoch > cfg.epochs / 2 { 0.5 } else { 1.0 };
        opt.set_learning_rate(lr);
        let (mut loss_sum, mut active_sum, mut n, mut triplets) = (0.0f32, 0.0f32, 0usize, 0usize);
        for step in 0..steps {
            if stop() {
                break 'epochs;
            }
            let batch = draw_batch(&by_identity, cfg, &mut rng);
            let labels: Vec<u32> = batch.iter().map(|b| b.0).collect();
            let rows: Vec<usize> = batch.iter().map(|b| b.1).collect();
            let emb = model.forward_rows(&rows)?;
            let d = squared_distances(&emb.to_vec2::<f32>()?);
            let t = mine(&labels, &d, cfg.margin, cfg.mining);
            if t.is_empty() {
                continue;
            }
            let (loss, active) = triplet_loss(&emb, &t, cfg.margin)?;
            // Active: anchor-positive pairs of the batch whose triplet has a loss (a semi-hard
            // negative always has one; pairs without a negative in reach count as inactive).
            let pairs = labels.iter().enumerate().map(|(i, l)| labels.iter().enumerate().filter(|(j, m)| *j != i && *m == l).count()).sum::<usize>();
            let active = active * t.len() as f32 / pairs.max(1) as f32;
            let total = match model.regulariser()? {
                Some(r) => (&loss + r)?,
                None => loss.clone(),
            };
            opt.backward_step(&total)?;
            let l = loss.to_scalar::<f32>()?;
            loss_sum += l;
            active_sum += active;
            n += 1;
            triplets += t.len();
            progress(epoch, step + 1, steps, l, active);
        }
        let mean_loss = loss_sum / n.max(1) as f32;
        let score = validate(model)?.unwrap_or(-(mean_loss as f64));
        let entry = EpochLog { epoch, loss: mean_loss, active: active_sum / n.max(1) as f32, triplets, validation: score, lr };
        tracing::info!(epoch, loss = entry.loss, active = entry.active, validation = score, "epoch done");
        if score > best {
            best = score;
            best_epoch = epoch;
            best_values = model.snapshot()?;
            since_best = 0;
            on_best(model, &entry)?;
        } else {
            since_best += 1;
        }
        log.push(entry);
        if since_best >= cfg.patience {
            stopped_early = true;
            break;
        }
    }
    model.restore(&best_values)?;
    Ok(Log { log, best_epoch, best_validation: best, stopped_early })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_miner_picks_exactly_the_semi_hard_negatives() {
        // Points on a line: identity 0 at 0.0 and 0.3; identity 1 at 0.45, 0.6 and 2.0.
        let xs = [0.0f32, 0.3, 0.45, 0.6, 2.0];
        let labels = [0u32, 0, 1, 1, 1];
        let rows: Vec<Vec<f32>> = xs.iter().map(|&x| vec![x]).collect();
        let d = squared_distances(&rows);
        let t = mine(&labels, &d, 0.2, Mining::SemiHard);
        // Anchor 0, positive 1: d_ap = 0.09; negatives at 0.2025 (0.45) and 0.36 (0.6) lie within
        // (0.09, 0.29): only 0.45 is inside, and it is taken.
        assert!(t.contains(&Triplet { anchor: 0, positive: 1, negative: 2 }));
        // Anchor 1, positive 0: d_ap = 0.09; negatives at 0.0225 (0.45: closer than the positive,
        // too hard), 0.09 (0.6: not farther), 2.89: none is semi-hard, the pair is left out.
        assert!(!t.iter().any(|x| x.anchor == 1 && x.positive == 0));
        // Anchor 2 (0.45), positive 3 (0.6): d_ap = 0.0225; negatives 0.3 (0.0225: not farther)
        // and 0.0 (0.2025: within 0.2225): 0.
        assert!(t.contains(&Triplet { anchor: 2, positive: 3, negative: 0 }));
        // Every mined negative is semi-hard; and every semi-hard candidate that exists is found.
        for x in &t {
            let (dap, dan) = (d[x.anchor * 5 + x.positive], d[x.anchor * 5 + x.negative]);
            assert!(dan > dap && dan < dap + 0.2, "{x:?}");
        }
        let hardest = mine(&labels, &d, 0.2, Mining::Hardest);
        assert!(hardest.contains(&Triplet { anchor: 1, positive: 0, negative: 2 }), "the hardest negative whatever its distance");
        assert_eq!(hardest.len(), 2 + 6, "every ordered positive pair has one");
    }

    #[test]
    fn loss_and_gradient_match_a_hand_computation() {
        let device = Device::Cpu;
        // Two dimensions, identity head: a = (1,0), p = (0.8,0.6), n = (0.6,0.8) (unit vectors).
        let head = Head::identity(2, &device).unwrap();
        let x = Tensor::from_vec(vec![1.0f32, 0.0, 0.8, 0.6, 0.6, 0.8], (3, 2), &device).unwrap();
        let emb = head.forward(&x).unwrap();
        let t = [Triplet { anchor: 0, positive: 1, negative: 2 }];
        let (loss, active) = triplet_loss(&emb, &t, 0.2).unwrap();
        // |a-p|^2 = 0.04 + 0.36 = 0.4; |a-n|^2 = 0.16 + 0.64 = 0.8; 0.4 - 0.8 + 0.2 < 0 -> 0.
        assert!(loss.to_scalar::<f32>().unwrap().abs() < 1e-6);
        assert_eq!(active, 0.0);
        // With margin 0.5: loss = 0.1, and its gradient w.r.t. the bias b (before normalising,
        // y = x + b at b = 0, so y = x; the loss is on y/|y|). By hand, for unit y the gradient of
        // |u_a - u_p|^2 - |u_a - u_n|^2 w.r.t. b (added to every row) is the sum over rows of
        // (I - u u^T) g_row, with g_a = 2(u_a - u_p) - 2(u_a - u_n) = 2(u_n - u_p),
        // g_p = -2(u_a - u_p), g_n = 2(u_a - u_n).
        let (loss, active) = triplet_loss(&emb, &t, 0.5).unwrap();
        assert!((loss.to_scalar::<f32>().unwrap() - 0.1).abs() < 1e-6);
        assert_eq!(active, 1.0);
        let grads = loss.backward().unwrap();
        let gb = grads.get(head.b.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        let u = [[1.0f32, 0.0], [0.8, 0.6], [0.6, 0.8]];
        let g = [[2.0 * (u[2][0] - u[1][0]), 2.0 * (u[2][1] - u[1][1])], [-2.0 * (u[0][0] - u[1][0]), -2.0 * (u[0][1] - u[1][1])], [2.0 * (u[0][0] - u[2][0]), 2.0 * (u[0][1] - u[2][1])]];
        let mut want = [0.0f32; 2];
        for r in 0..3 {
            let dot = u[r][0] * g[r][0] + u[r][1] * g[r][1];
            for c in 0..2 {
                want[c] += g[r][c] - u[r][c] * dot;
            }
        }
        for c in 0..2 {
            assert!((gb[c] - want[c]).abs() < 1e-5, "d loss / d b[{c}]: {} by autodiff, {} by hand", gb[c], want[c]);
        }
    }

    /// Synthetic identities whose differences live in 4 of 16 dimensions, the rest noise that is
    /// larger than the signal: the head must learn to look at the 4.
    fn synthetic(ids: usize, per: usize, seed: u64) -> Vec<(u32, Vec<f32>)> {
        let mut rng = Rng::new(seed);
        let mut unif = move || (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
        let mut out = Vec::new();
        for i in 0..ids {
            let centre: Vec<f32> = (0..4).map(|_| unif() * 2.0).collect();
            for _ in 0..per {
                let mut v: Vec<f32> = centre.iter().map(|c| c + unif() * 0.1).collect();
                v.extend((0..12).map(|_| unif() * 1.2));
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                out.push((i as u32, v.into_iter().map(|x| x / n).collect()));
            }
        }
        out
    }

    /// Nearest-neighbour accuracy of the validation set (one gallery face per identity).
    fn rank1(head: &Head, val: &[(u32, Vec<f32>)]) -> f64 {
        let rows: Vec<Vec<f32>> = val.iter().map(|v| v.1.clone()).collect();
        let e = head.apply(&rows).unwrap();
        let mut gallery: Vec<(u32, &Vec<f32>)> = Vec::new();
        let mut probes = Vec::new();
        for (i, (id, _)) in val.iter().enumerate() {
            if gallery.iter().any(|g| g.0 == *id) { probes.push((*id, &e[i])) } else { gallery.push((*id, &e[i])) }
        }
        let hits = probes
            .iter()
            .filter(|(id, p)| {
                let best = gallery.iter().min_by(|a, b| {
                    let da: f32 = a.1.iter().zip(p.iter()).map(|(x, y)| (x - y) * (x - y)).sum();
                    let db: f32 = b.1.iter().zip(p.iter()).map(|(x, y)| (x - y) * (x - y)).sum();
                    da.total_cmp(&db)
                });
                best.is_some_and(|b| b.0 == *id)
            })
            .count();
        hits as f64 / probes.len().max(1) as f64
    }

    #[test]
    fn on_synthetic_identities_the_loss_falls_and_validation_rises() {
        let train = synthetic(60, 6, 1);
        let val = synthetic(30, 4, 2);
        let cfg = TrainConfig { p: 16, k: 4, lr: 0.01, epochs: 15, steps_per_epoch: 20, patience: 100, ..TrainConfig::default() };
        let mut validate = |h: &Head| Ok(Some(rank1(h, &val)));
        let before = rank1(&Head::identity(16, &Device::Cpu).unwrap(), &val);
        let mut bests = 0;
        let t = train_head(&train, 16, &cfg, &mut validate, &mut |_, _| { bests += 1; Ok(()) }, &|| false, &mut |_, _, _, _, _| {}).unwrap();
        let (first, last) = (&t.log[1], t.log.last().unwrap());
        assert!(last.loss < first.loss * 0.7, "loss {} -> {}", first.loss, last.loss);
        assert!(t.best_validation > before + 0.15, "validation rank-1 {before:.3} -> {:.3}", t.best_validation);
        assert!(bests >= 1);
        // The returned head is the best one, and a head rebuilt from its weights gives the same vectors.
        assert!((rank1(&t.head, &val) - t.best_validation).abs() < 1e-9);
        let (w, b) = t.head.weights().unwrap();
        let again = Head::from_weights(&w, &b, 16, &Device::Cpu).unwrap();
        let rows: Vec<Vec<f32>> = val.iter().take(5).map(|v| v.1.clone()).collect();
        assert_eq!(t.head.apply(&rows).unwrap(), again.apply(&rows).unwrap());
    }

    #[test]
    fn training_is_deterministic_with_a_seed() {
        let train = synthetic(20, 4, 3);
        let cfg = TrainConfig { p: 8, k: 4, epochs: 2, steps_per_epoch: 5, ..TrainConfig::default() };
        let run = || train_head(&train, 16, &cfg, &mut |_| Ok(None), &mut |_, _| Ok(()), &|| false, &mut |_, _, _, _, _| {}).unwrap().log.iter().map(|l| l.loss).collect::<Vec<_>>();
        let (a, b) = (run(), run());
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }
}
