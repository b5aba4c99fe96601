//! The converted embedder re-expressed in candle: its ONNX graph read node by node (the dozen
//! operators it uses), its weights loaded from the file's initializers, run with candle's tensor
//! operations. The same forward pass as ONNX Runtime (tested within 1e-4 on real face crops), but
//! differentiable: the groundwork for fine-tuning the embedder's last blocks.
//!
//! Blocks are the weight names' first path component in graph order (`conv32_down`, `conv32_1`,
//! ..., `conv256_down_out`, `fc`).

use std::collections::HashMap;

use candle_core::{D, DType, Device, Tensor, Var};

use super::TrainError;
use super::export::{fields, read_varint, string_of};

#[derive(Clone, Debug)]
enum Attr {
    Int(i64),
    Ints(Vec<i64>),
}

#[derive(Clone, Debug)]
struct Node {
    op: String,
    inputs: Vec<String>,
    output: String,
    attrs: HashMap<String, Attr>,
}

impl Node {
    fn ints(&self, name: &str) -> Option<Vec<i64>> {
        match self.attrs.get(name)? {
            Attr::Ints(v) => Some(v.clone()),
            Attr::Int(i) => Some(vec![*i]),
        }
    }

    fn int(&self, name: &str) -> Option<i64> {
        match self.attrs.get(name)? {
            Attr::Int(i) => Some(*i),
            Attr::Ints(v) => v.first().copied(),
        }
    }
}

/// Repeated integers, packed or one field each.
fn push_ints(out: &mut Vec<i64>, f: &super::export::Field) {
    if f.wire == 2 {
        let mut pos = 0;
        while pos < f.payload.len() {
            match read_varint(f.payload, &mut pos) {
                Some(v) => out.push(v as i64),
                None => break,
            }
        }
    } else {
        out.push(f.value as i64);
    }
}

fn bad(why: impl std::fmt::Display) -> TrainError {
    TrainError::Data(format!("the embedder's ONNX graph: {why}"))
}

/// An initializer: name, dims, float32 values (raw or float_data), int64 values.
type Initializer = (String, Vec<usize>, Vec<f32>, Vec<i64>);

fn initializer(payload: &[u8]) -> Result<Initializer, TrainError> {
    let fs = fields(payload).ok_or_else(|| bad("a broken initializer"))?;
    let (mut name, mut dims, mut ty, mut raw, mut floats, mut int64s) = (String::new(), Vec::new(), 0, &[][..], Vec::new(), Vec::new());
    for f in &fs {
        match f.number {
            1 => push_ints(&mut dims, f),
            2 => ty = f.value,
            4 if f.wire == 2 => floats.extend(f.payload.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
            4 => floats.push(f32::from_bits(f.value as u32)),
            7 => push_ints(&mut int64s, f),
            8 => name = String::from_utf8_lossy(f.payload).into_owned(),
            9 => raw = f.payload,
            _ => {}
        }
    }
    match ty {
        1 if !raw.is_empty() => floats = raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        7 if !raw.is_empty() => int64s = raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect(),
        1 | 7 => {}
        other => return Err(bad(format!("initializer {name}: data type {other} (only float32 and int64 are read)"))),
    }
    Ok((name, dims.iter().map(|&d| d as usize).collect(), floats, int64s))
}

fn node(payload: &[u8]) -> Result<Node, TrainError> {
    let fs = fields(payload).ok_or_else(|| bad("a broken node"))?;
    let mut n = Node { op: String::new(), inputs: Vec::new(), output: String::new(), attrs: HashMap::new() };
    for f in &fs {
        match f.number {
            1 => n.inputs.push(String::from_utf8_lossy(f.payload).into_owned()),
            2 => n.output = String::from_utf8_lossy(f.payload).into_owned(),
            4 => n.op = String::from_utf8_lossy(f.payload).into_owned(),
            5 => {
                let afs = fields(f.payload).ok_or_else(|| bad("a broken attribute"))?;
                let name = string_of(f.payload, 1).unwrap_or_default();
                let mut ints = Vec::new();
                let mut int = None;
                for a in &afs {
                    match a.number {
                        3 => int = Some(a.value as i64),
                        8 => push_ints(&mut ints, a),
                        _ => {}
                    }
                }
                if let Some(i) = int {
                    n.attrs.insert(name, Attr::Int(i));
                } else if !ints.is_empty() {
                    n.attrs.insert(name, Attr::Ints(ints));
                }
            }
            _ => {}
        }
    }
    Ok(n)
}

/// A weight: frozen, or trainable.
enum Weight {
    Fixed(Tensor),
    Trained(Var),
}

impl Weight {
    fn tensor(&self) -> &Tensor {
        match self {
            Weight::Fixed(t) => t,
            Weight::Trained(v) => v.as_tensor(),
        }
    }
}

pub struct Graph {
    nodes: Vec<Node>,
    weights: HashMap<String, Weight>,
    ints: HashMap<String, Vec<i64>>,
    input: String,
    output: String,
    /// Block names in graph order.
    pub blocks: Vec<String>,
}

fn block_of(weight: &str) -> &str {
    weight.split('/').next().unwrap_or(weight)
}

impl Graph {
    /// Reads the graph and its weights from the ONNX file's bytes.
    pub fn load(model: &[u8], device: &Device) -> Result<Self, TrainError> {
        let top = fields(model).ok_or_else(|| bad("not a protobuf message"))?;
        let graph = top.iter().find(|f| f.number == 7).ok_or_else(|| bad("no graph"))?;
        let gfs = fields(graph.payload).ok_or_else(|| bad("a broken graph"))?;
        let (mut nodes, mut weights, mut ints) = (Vec::new(), HashMap::new(), HashMap::new());
        for f in &gfs {
            match f.number {
                1 => nodes.push(node(f.payload)?),
                5 => {
                    let (name, dims, floats, int64s) = initializer(f.payload)?;
                    if int64s.is_empty() {
                        let t = if dims.is_empty() { Tensor::new(floats.first().copied().unwrap_or(0.0), device)? } else { Tensor::from_vec(floats, dims, device)? };
                        weights.insert(name, Weight::Fixed(t));
                    } else {
                        ints.insert(name, int64s);
                    }
                }
                _ => {}
            }
        }
        let names = |n: u32| gfs.iter().filter(|f| f.number == n).filter_map(|f| string_of(f.payload, 1)).collect::<Vec<_>>();
        let input = names(11).into_iter().find(|n| !weights.contains_key(n)).ok_or_else(|| bad("no input"))?;
        let output = names(12).into_iter().next().ok_or_else(|| bad("no output"))?;
        let mut blocks: Vec<String> = Vec::new();
        for n in &nodes {
            for i in &n.inputs {
                if let Some(Weight::Fixed(t)) = weights.get(i)
                    && t.rank() >= 2
                    && !blocks.iter().any(|b| b == block_of(i))
                {
                    blocks.push(block_of(i).to_string());
                }
            }
        }
        Ok(Self { nodes, weights, ints, input, output, blocks })
    }

    /// Makes the weights of the last `n` blocks trainable; returns them (for the optimiser).
    pub fn train_last(&mut self, n: usize) -> Result<Vec<Var>, TrainError> {
        let chosen: Vec<String> = self.blocks.iter().rev().take(n).cloned().collect();
        let mut vars = Vec::new();
        let mut names: Vec<String> = self.weights.keys().filter(|k| chosen.iter().any(|b| b == block_of(k))).cloned().collect();
        names.sort();
        for k in names {
            if let Some(Weight::Fixed(t)) = self.weights.remove(&k) {
                let v = Var::from_tensor(&t)?;
                vars.push(v.clone());
                self.weights.insert(k, Weight::Trained(v));
            }
        }
        Ok(vars)
    }

    /// The descriptor of a batch of aligned crops `[N, 150, 150, 3]`, raw pixel values.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TrainError> {
        self.tail(&self.frozen(x)?)
    }

    /// Whether each node depends on a trained weight (directly or through its inputs).
    fn trained_nodes(&self) -> Vec<bool> {
        let mut made_by_trained: std::collections::HashSet<&str> = std::collections::HashSet::new();
        self.nodes
            .iter()
            .map(|n| {
                let t = n.inputs.iter().any(|i| matches!(self.weights.get(i), Some(Weight::Trained(_))) || made_by_trained.contains(i.as_str()));
                if t {
                    made_by_trained.insert(n.output.as_str());
                }
                t
            })
            .collect()
    }

    /// The values the trained part reads from the frozen part (or the graph's input), in graph
    /// order: what fine-tuning computes once per crop and keeps. With nothing trained: the output.
    pub fn boundary(&self) -> Vec<String> {
        let trained = self.trained_nodes();
        if !trained.iter().any(|&t| t) {
            return vec![self.output.clone()];
        }
        let frozen_out: std::collections::HashSet<&str> = self.nodes.iter().zip(&trained).filter(|(_, t)| !**t).map(|(n, _)| n.output.as_str()).collect();
        let mut out: Vec<String> = Vec::new();
        for (n, _) in self.nodes.iter().zip(&trained).filter(|(_, t)| **t) {
            for i in &n.inputs {
                if (frozen_out.contains(i.as_str()) || *i == self.input) && !out.contains(i) {
                    out.push(i.clone());
                }
            }
        }
        out
    }

    /// Runs the frozen part on a batch of crops: the [`Graph::boundary`] values.
    pub fn frozen(&self, x: &Tensor) -> Result<Vec<Tensor>, TrainError> {
        let trained = self.trained_nodes();
        let mut values: HashMap<&str, Tensor> = HashMap::new();
        values.insert(self.input.as_str(), x.clone());
        for (n, _) in self.nodes.iter().zip(&trained).filter(|(_, t)| !**t) {
            let y = self.eval(n, &values)?;
            values.insert(n.output.as_str(), y);
        }
        self.boundary().iter().map(|b| values.get(b.as_str()).cloned().ok_or_else(|| bad(format!("boundary value `{b}` was not computed")))).collect()
    }

    /// Runs the trained part from boundary values (as [`Graph::frozen`] gives them): the descriptor.
    pub fn tail(&self, boundary: &[Tensor]) -> Result<Tensor, TrainError> {
        let names = self.boundary();
        let mut values: HashMap<&str, Tensor> = names.iter().map(|s| s.as_str()).zip(boundary.iter().cloned()).collect();
        let trained = self.trained_nodes();
        for (n, _) in self.nodes.iter().zip(&trained).filter(|(_, t)| **t) {
            let y = self.eval(n, &values)?;
            values.insert(n.output.as_str(), y);
        }
        values.remove(self.output.as_str()).ok_or_else(|| bad(format!("output `{}` was not computed", self.output)))
    }

    /// The trained weights by initializer name, as they are now.
    pub fn trained_weights(&self) -> Result<Vec<(String, Vec<f32>)>, TrainError> {
        let mut out: Vec<(String, Vec<f32>)> = Vec::new();
        for (k, w) in &self.weights {
            if let Weight::Trained(v) = w {
                out.push((k.clone(), v.as_tensor().flatten_all()?.to_vec1()?));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Sets trained weights (as [`Graph::trained_weights`] gives them), e.g. back to the best epoch's.
    pub fn set_trained(&self, saved: &[(String, Vec<f32>)]) -> Result<(), TrainError> {
        for (k, vals) in saved {
            if let Some(Weight::Trained(v)) = self.weights.get(k) {
                v.set(&Tensor::from_vec(vals.clone(), v.as_tensor().shape(), v.device())?)?;
            }
        }
        Ok(())
    }

    fn eval(&self, n: &Node, values: &HashMap<&str, Tensor>) -> Result<Tensor, TrainError> {
        let get = |k: usize| -> Result<Tensor, TrainError> {
            let name = n.inputs.get(k).ok_or_else(|| bad(format!("{} {}: input {k} missing", n.op, n.output)))?;
            values.get(name.as_str()).cloned().or_else(|| self.weights.get(name).map(|w| w.tensor().clone())).ok_or_else(|| bad(format!("{} {}: no value `{name}`", n.op, n.output)))
        };
        Ok(match n.op.as_str() {
            "Sub" => get(0)?.broadcast_sub(&get(1)?)?,
            "Div" => get(0)?.broadcast_div(&get(1)?)?,
            "Add" => get(0)?.broadcast_add(&get(1)?)?,
            "Relu" => get(0)?.relu()?,
            "MatMul" => get(0)?.matmul(&get(1)?)?,
            "Flatten" => get(0)?.flatten_from(n.int("axis").unwrap_or(1) as usize)?,
            "GlobalAveragePool" => get(0)?.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)?,
            "Transpose" => {
                let p: Vec<usize> = n.ints("perm").ok_or_else(|| bad("Transpose without perm"))?.iter().map(|&v| v as usize).collect();
                get(0)?.permute(p)?.contiguous()?
            }
            "Conv" => {
                let pads = n.ints("pads").unwrap_or_else(|| vec![0; 4]);
                let strides = n.ints("strides").unwrap_or_else(|| vec![1, 1]);
                if pads.iter().any(|&p| p != pads[0]) || strides[0] != strides[1] {
                    return Err(bad(format!("Conv {}: uneven pads {pads:?} or strides {strides:?}", n.output)));
                }
                let w = get(1)?;
                let y = get(0)?.conv2d(&w, pads[0] as usize, strides[0] as usize, 1, 1)?;
                match n.inputs.get(2) {
                    Some(_) => y.broadcast_add(&get(2)?.reshape((1, w.dim(0)?, 1, 1))?)?,
                    None => y,
                }
            }
            "MaxPool" | "AveragePool" => {
                let k = n.ints("kernel_shape").ok_or_else(|| bad("pool without kernel_shape"))?;
                let s = n.ints("strides").unwrap_or_else(|| k.clone());
                if n.ints("pads").is_some_and(|p| p.iter().any(|&v| v != 0)) {
                    return Err(bad(format!("{} {}: padded pooling", n.op, n.output)));
                }
                let (k, s) = ((k[0] as usize, k[1] as usize), (s[0] as usize, s[1] as usize));
                if n.op == "MaxPool" { get(0)?.max_pool2d_with_stride(k, s)? } else { get(0)?.avg_pool2d_with_stride(k, s)? }
            }
            "Pad" => {
                let name = n.inputs.get(1).ok_or_else(|| bad("Pad without pads"))?;
                let pads = self.ints.get(name).ok_or_else(|| bad(format!("Pad {}: pads `{name}` is not a constant", n.output)))?;
                let mut y = get(0)?;
                let rank = y.rank();
                for d in 0..rank {
                    let (b, e) = (pads[d] as usize, pads[d + rank] as usize);
                    if b + e > 0 {
                        y = y.pad_with_zeros(d, b, e)?;
                    }
                }
                y
            }
            other => return Err(bad(format!("operator {other} ({}) is not re-expressed", n.output))),
        })
    }

    /// Descriptors of packed RGB crops (150x150), L2-normalised: what the pipeline embeds.
    pub fn embed_crops(&self, crops: &[u8], device: &Device) -> Result<Vec<Vec<f32>>, TrainError> {
        let side = crate::embed::align::CROP_SIDE;
        let n = crops.len() / crate::embed::align::CROP_BYTES;
        let x = Tensor::from_vec(crops.iter().map(|&v| v as f32).collect::<Vec<f32>>(), (n, side, side, 3), device)?.to_dtype(DType::F32)?;
        let y = self.forward(&x)?;
        let norm = y.sqr()?.sum_keepdim(1)?.sqrt()?;
        Ok(y.broadcast_div(&norm)?.to_vec2()?)
    }
}
