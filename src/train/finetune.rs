//! `train --finetune N`: the embedder's own last N blocks trained with the triplet loss. The
//! converted ONNX graph is re-expressed in candle ([`super::graph`]); the frozen part runs once
//! per crop and its output at the boundary (what the trained blocks read) is kept, so each step
//! runs only the trained blocks. The fine-tuned weights go back into the ONNX file in place of
//! the originals ([`super::export::with_weights`]): the same graph, new numbers.

use candle_core::{D, Device, Tensor, Var};

use super::graph::Graph;
use super::{Trainable, TrainError};
use crate::embed::{CROP_BYTES, CROP_SIDE};

/// Crops per frozen-part batch.
const BATCH: usize = 16;

/// The boundary activations of every crop (one row each), computed in batches.
pub struct Cached {
    /// Per boundary value: all crops' rows, [n, ...].
    pub values: Vec<Tensor>,
    pub n: usize,
}

fn crops_tensor(crops: &[&[u8]], device: &Device) -> Result<Tensor, TrainError> {
    let flat: Vec<f32> = crops.iter().flat_map(|c| c.iter().map(|&v| v as f32)).collect();
    Ok(Tensor::from_vec(flat, (crops.len(), CROP_SIDE, CROP_SIDE, 3), device)?)
}

/// Runs the frozen part over `crops` (each [`CROP_BYTES`] long); `progress` gets (done, total).
pub fn cache(graph: &Graph, crops: &[Vec<u8>], progress: &mut dyn FnMut(usize, usize)) -> Result<Cached, TrainError> {
    if let Some(c) = crops.iter().find(|c| c.len() != CROP_BYTES) {
        return Err(TrainError::Data(format!("a crop of {} bytes, expected {CROP_BYTES}", c.len())));
    }
    let device = Device::Cpu;
    let mut parts: Vec<Vec<Tensor>> = Vec::new();
    for (i, chunk) in crops.chunks(BATCH).enumerate() {
        let refs: Vec<&[u8]> = chunk.iter().map(|c| c.as_slice()).collect();
        let b = graph.frozen(&crops_tensor(&refs, &device)?)?;
        if parts.is_empty() {
            parts = vec![Vec::new(); b.len()];
        }
        for (p, t) in parts.iter_mut().zip(b) {
            p.push(t);
        }
        progress((i * BATCH + chunk.len()).min(crops.len()), crops.len());
    }
    let values = parts.iter().map(|p| Tensor::cat(p, 0)).collect::<Result<Vec<_>, _>>()?;
    Ok(Cached { values, n: crops.len() })
}

/// Unit embeddings from boundary rows.
fn embed_from(graph: &Graph, values: &[Tensor]) -> Result<Tensor, TrainError> {
    let y = graph.tail(values)?;
    let norm = y.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
    Ok(y.broadcast_div(&norm)?)
}

/// The trained blocks over cached rows: what the triplet-loss loop trains.
pub struct Blocks<'a> {
    pub graph: &'a Graph,
    pub cached: &'a Cached,
    /// Training row -> cached row.
    pub index: Vec<usize>,
    pub vars: Vec<Var>,
    /// Pull towards the converted weights (`anchor * sum |w - w0|^2`, L2-SP); 0: none.
    pub anchor: f64,
    /// The converted weights, in the order of `vars`.
    pub origin: Vec<Tensor>,
}

impl<'a> Blocks<'a> {
    pub fn new(graph: &'a Graph, cached: &'a Cached, index: Vec<usize>, vars: Vec<Var>, anchor: f64) -> Self {
        let origin = vars.iter().map(|v| v.as_tensor().detach()).collect();
        Blocks { graph, cached, index, vars, anchor, origin }
    }
}

impl Trainable for Blocks<'_> {
    fn forward_rows(&self, rows: &[usize]) -> Result<Tensor, TrainError> {
        let idx = Tensor::from_vec(rows.iter().map(|&r| self.index[r] as u32).collect::<Vec<u32>>(), rows.len(), &Device::Cpu)?;
        let values = self.cached.values.iter().map(|v| v.index_select(&idx, 0)).collect::<Result<Vec<_>, _>>()?;
        embed_from(self.graph, &values)
    }
    fn vars(&self) -> Vec<Var> {
        self.vars.clone()
    }
    fn regulariser(&self) -> Result<Option<Tensor>, TrainError> {
        if self.anchor <= 0.0 {
            return Ok(None);
        }
        let mut sum: Option<Tensor> = None;
        for (v, o) in self.vars.iter().zip(&self.origin) {
            let d = (v.as_tensor() - o)?.sqr()?.sum_all()?;
            sum = Some(match sum {
                Some(s) => (s + d)?,
                None => d,
            });
        }
        Ok(match sum {
            Some(s) => Some((s * self.anchor)?),
            None => None,
        })
    }
}

/// Unit embeddings of the cached `rows` with the graph's weights as they are now.
pub fn embed_cached(graph: &Graph, cached: &Cached, rows: &[usize]) -> Result<Vec<Vec<f32>>, TrainError> {
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(256) {
        let idx = Tensor::from_vec(chunk.iter().map(|&r| r as u32).collect::<Vec<u32>>(), chunk.len(), &Device::Cpu)?;
        let values = cached.values.iter().map(|v| v.index_select(&idx, 0).map(|t| t.detach())).collect::<Result<Vec<_>, _>>()?;
        out.extend(embed_from(graph, &values)?.detach().to_vec2::<f32>()?);
    }
    Ok(out)
}
