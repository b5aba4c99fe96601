//! The embedder followed by a trained head as one ONNX model: the converted embedder's graph
//! with four nodes appended (`LpNormalization`, `MatMul` by W^T, `Add` b, `LpNormalization`), the
//! head's weights as initializers, and the graph's output replaced by the head's. The graph is
//! edited on the protobuf wire format: every field of the model and of its graph is copied as it
//! is except the graph's outputs, so nothing the converter wrote is lost.

use super::TrainError;

/// The new graph output's name.
pub const OUTPUT: &str = "embedding";

// --- protobuf wire format ---------------------------------------------------------------------

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, ((field as u64) << 3) | wire as u64);
}

fn bytes_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn int_field(out: &mut Vec<u8>, field: u32, v: i64) {
    key(out, field, 0);
    varint(out, v as u64);
}

pub(crate) fn read_varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// One top-level field: its number, wire type and the whole encoded field (key included), plus
/// the payload of a length-delimited one, or the value of a varint or 32-bit one.
pub(crate) struct Field<'a> {
    pub number: u32,
    pub wire: u8,
    pub raw: &'a [u8],
    pub payload: &'a [u8],
    pub value: u64,
}

pub(crate) fn fields(b: &[u8]) -> Option<Vec<Field<'_>>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let start = pos;
        let k = read_varint(b, &mut pos)?;
        let (number, wire) = ((k >> 3) as u32, (k & 7) as u8);
        let payload_start;
        let mut value = 0;
        match wire {
            0 => {
                value = read_varint(b, &mut pos)?;
                payload_start = pos;
            }
            1 => {
                value = u64::from_le_bytes(b.get(pos..pos + 8)?.try_into().ok()?);
                pos += 8;
                payload_start = pos;
            }
            2 => {
                let n = read_varint(b, &mut pos)? as usize;
                payload_start = pos;
                pos = pos.checked_add(n)?;
            }
            5 => {
                value = u32::from_le_bytes(b.get(pos..pos + 4)?.try_into().ok()?) as u64;
                pos += 4;
                payload_start = pos;
            }
            _ => return None,
        }
        if pos > b.len() {
            return None;
        }
        let payload = if wire == 2 { &b[payload_start..pos] } else { &b[start..start] };
        out.push(Field { number, wire, raw: &b[start..pos], payload, value });
    }
    Some(out)
}

pub(crate) fn string_of(payload: &[u8], field: u32) -> Option<String> {
    fields(payload)?.into_iter().find(|f| f.number == field).map(|f| String::from_utf8_lossy(f.payload).into_owned())
}

// --- ONNX messages (field numbers from onnx.proto) ---------------------------------------------

fn attribute_int(name: &str, v: i64) -> Vec<u8> {
    let mut a = Vec::new();
    bytes_field(&mut a, 1, name.as_bytes());
    int_field(&mut a, 3, v);
    int_field(&mut a, 20, 2); // AttributeType INT
    a
}

fn node(op: &str, inputs: &[&str], output: &str, attributes: &[Vec<u8>]) -> Vec<u8> {
    let mut n = Vec::new();
    for i in inputs {
        bytes_field(&mut n, 1, i.as_bytes());
    }
    bytes_field(&mut n, 2, output.as_bytes());
    bytes_field(&mut n, 3, format!("head_{output}").as_bytes());
    bytes_field(&mut n, 4, op.as_bytes());
    for a in attributes {
        bytes_field(&mut n, 5, a);
    }
    n
}

fn tensor(name: &str, dims: &[i64], values: &[f32]) -> Vec<u8> {
    let mut t = Vec::new();
    for d in dims {
        int_field(&mut t, 1, *d);
    }
    int_field(&mut t, 2, 1); // FLOAT
    bytes_field(&mut t, 8, name.as_bytes());
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    bytes_field(&mut t, 9, &raw);
    t
}

/// A float tensor [N, dim] value info.
fn value_info(name: &str, dim: usize) -> Vec<u8> {
    let mut shape = Vec::new();
    let mut d0 = Vec::new();
    bytes_field(&mut d0, 2, b"N");
    bytes_field(&mut shape, 1, &d0);
    let mut d1 = Vec::new();
    int_field(&mut d1, 1, dim as i64);
    bytes_field(&mut shape, 1, &d1);
    let mut tensor_type = Vec::new();
    int_field(&mut tensor_type, 1, 1); // FLOAT
    bytes_field(&mut tensor_type, 2, &shape);
    let mut ty = Vec::new();
    bytes_field(&mut ty, 1, &tensor_type);
    let mut v = Vec::new();
    bytes_field(&mut v, 1, name.as_bytes());
    bytes_field(&mut v, 2, &ty);
    v
}

/// The model's top-level fields with the graph (field 7) replaced by `g`.
fn with_graph(top: &[Field], g: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    for f in top {
        if f.number == 7 {
            bytes_field(&mut m, 7, g);
        } else {
            m.extend_from_slice(f.raw);
        }
    }
    m
}

/// The embedder's ONNX bytes with the head `normalise(normalise(x) W^T + b)` appended; `w` is
/// row-major [dim, dim] (y_r = sum_c w[r][c] x_c + b_r). Returns the new model's bytes.
pub fn embedder_with_head(model: &[u8], w: &[f32], b: &[f32], dim: usize) -> Result<Vec<u8>, TrainError> {
    let bad = |why: &str| TrainError::Data(format!("cannot export the head into the embedder's ONNX file: {why}"));
    if w.len() != dim * dim || b.len() != dim {
        return Err(bad("the head's weights do not match its dimension"));
    }
    let top = fields(model).ok_or_else(|| bad("not a protobuf message"))?;
    let graph = top.iter().find(|f| f.number == 7).ok_or_else(|| bad("no graph"))?;
    let gfields = fields(graph.payload).ok_or_else(|| bad("the graph is not a protobuf message"))?;
    let outputs: Vec<&Field> = gfields.iter().filter(|f| f.number == 12).collect();
    let [out] = outputs[..] else { return Err(bad("the graph has more than one output")) };
    let descriptor = string_of(out.payload, 1).ok_or_else(|| bad("the graph's output has no name"))?;
    // W^T for MatMul: x [N, dim] times M [dim, dim] with M[c][r] = w[r][c].
    let mut wt = vec![0.0f32; dim * dim];
    for r in 0..dim {
        for c in 0..dim {
            wt[c * dim + r] = w[r * dim + c];
        }
    }
    let l2 = [attribute_int("axis", 1), attribute_int("p", 2)];
    let mut g = Vec::new();
    for f in gfields.iter().filter(|f| f.number != 12) {
        g.extend_from_slice(f.raw);
    }
    bytes_field(&mut g, 1, &node("LpNormalization", &[&descriptor], "head_in", &l2));
    bytes_field(&mut g, 1, &node("MatMul", &["head_in", "head_w"], "head_xw", &[]));
    bytes_field(&mut g, 1, &node("Add", &["head_xw", "head_b"], "head_y", &[]));
    bytes_field(&mut g, 1, &node("LpNormalization", &["head_y"], OUTPUT, &l2));
    bytes_field(&mut g, 5, &tensor("head_w", &[dim as i64, dim as i64], &wt));
    bytes_field(&mut g, 5, &tensor("head_b", &[dim as i64], b));
    bytes_field(&mut g, 12, &value_info(OUTPUT, dim));
    Ok(with_graph(&top, &g))
}

/// The model's bytes with the float initializers named in `weights` given new values (same
/// names, same shapes); every other field is copied as it is. Refuses a name the graph lacks or
/// a value count that does not match the initializer's shape.
pub fn with_weights(model: &[u8], weights: &[(String, Vec<f32>)]) -> Result<Vec<u8>, TrainError> {
    let bad = |why: String| TrainError::Data(format!("cannot write the fine-tuned weights into the embedder's ONNX file: {why}"));
    let top = fields(model).ok_or_else(|| bad("not a protobuf message".into()))?;
    let graph = top.iter().find(|f| f.number == 7).ok_or_else(|| bad("no graph".into()))?;
    let gfields = fields(graph.payload).ok_or_else(|| bad("the graph is not a protobuf message".into()))?;
    let mut done = vec![false; weights.len()];
    let mut g = Vec::new();
    for f in &gfields {
        let name = if f.number == 5 { string_of(f.payload, 8) } else { None };
        let Some(k) = name.as_ref().and_then(|n| weights.iter().position(|w| &w.0 == n)) else {
            g.extend_from_slice(f.raw);
            continue;
        };
        let dims: Vec<i64> = fields(f.payload).unwrap_or_default().iter().filter(|x| x.number == 1).flat_map(|x| {
            let mut v = Vec::new();
            if x.wire == 2 {
                let mut pos = 0;
                while let Some(d) = read_varint(x.payload, &mut pos) {
                    v.push(d as i64);
                }
            } else {
                v.push(x.value as i64);
            }
            v
        }).collect();
        let count: i64 = dims.iter().product();
        if count as usize != weights[k].1.len() {
            return Err(bad(format!("`{}` holds {count} values, the fine-tuned one {}", weights[k].0, weights[k].1.len())));
        }
        bytes_field(&mut g, 5, &tensor(&weights[k].0, &dims, &weights[k].1));
        done[k] = true;
    }
    if let Some(k) = done.iter().position(|d| !d) {
        return Err(bad(format!("the graph has no initializer `{}`", weights[k].0)));
    }
    Ok(with_graph(&top, &g))
}

/// Files of a fine-tuned embedder, in its folder.
pub const FINETUNED_ONNX: &str = "embedder.onnx";
pub const FINETUNED_CARD: &str = "embedder.toml";

/// Writes the fine-tuned embedder (the parent's graph with `weights` in place of its own) and its
/// model card: the parent's card with the new id, file, sha256, threshold and a `[training]`
/// table. `embed.model` runs it.
pub fn write_finetuned(weights: &[(String, Vec<f32>)], id: &str, threshold: f32, training: toml::Table, models_dir: &std::path::Path, out: &std::path::Path) -> Result<std::path::PathBuf, TrainError> {
    use sha2::{Digest, Sha256};
    let card_path = models_dir.join(format!("{}.toml", crate::embed::CARD));
    let file_err = |path: &std::path::Path, e: String| TrainError::File { path: path.to_path_buf(), reason: e };
    let text = std::fs::read_to_string(&card_path).map_err(|e| file_err(&card_path, e.to_string()))?;
    let mut card: toml::Table = toml::from_str(&text).map_err(|e| file_err(&card_path, e.to_string()))?;
    let parent = crate::infer::ModelCard::read(&card_path).map_err(|e| TrainError::Data(e.to_string()))?;
    let src = models_dir.join(&parent.file);
    let model = std::fs::read(&src).map_err(|e| file_err(&src, e.to_string()))?;
    let bytes = with_weights(&model, weights)?;
    let onnx = out.join(FINETUNED_ONNX);
    std::fs::write(&onnx, &bytes).map_err(|e| file_err(&onnx, e.to_string()))?;
    card.insert("id".into(), id.into());
    card.insert("file".into(), FINETUNED_ONNX.into());
    card.insert("sha256".into(), format!("{:x}", Sha256::digest(&bytes)).into());
    card.insert("parent_model".into(), parent.id.clone().into());
    card.insert("training".into(), toml::Value::Table(training));
    let calibration = card.entry("calibration").or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let Some(t) = calibration.as_table_mut() {
        t.insert("threshold".into(), toml::Value::Float(threshold as f64));
    }
    let path = out.join(FINETUNED_CARD);
    let text = format!("# `{}` with its last blocks fine-tuned by `facestream train --finetune` as `{id}`.\n{}", parent.id, toml::to_string_pretty(&card).unwrap_or_default());
    std::fs::write(&path, text).map_err(|e| file_err(&path, e.to_string()))?;
    tracing::info!(file = %onnx.display(), "the fine-tuned embedder (card beside it)");
    Ok(onnx)
}

/// Files of the export, in the head's folder.
pub const ONNX_FILE: &str = "embedder+head.onnx";
pub const CARD_FILE: &str = "embedder+head.toml";

/// Writes the embedder followed by `head` as one ONNX model with its model card (the parent's
/// inputs and preprocessing, the head's id, output and threshold) beside the head's files.
pub fn write_onnx(head: &super::Head, id: &str, threshold: f32, models_dir: &std::path::Path, out: &std::path::Path) -> Result<std::path::PathBuf, TrainError> {
    use sha2::{Digest, Sha256};
    let card_path = models_dir.join(format!("{}.toml", crate::embed::CARD));
    let parent = crate::infer::ModelCard::read(&card_path).map_err(|e| TrainError::Data(e.to_string()))?;
    let src = models_dir.join(&parent.file);
    let file_err = |path: &std::path::Path, e: std::io::Error| TrainError::File { path: path.to_path_buf(), reason: e.to_string() };
    let model = std::fs::read(&src).map_err(|e| file_err(&src, e))?;
    let w: Vec<f32> = head.w.as_tensor().flatten_all()?.to_vec1()?;
    let b: Vec<f32> = head.b.as_tensor().flatten_all()?.to_vec1()?;
    let bytes = embedder_with_head(&model, &w, &b, head.dim)?;
    let onnx = out.join(ONNX_FILE);
    std::fs::write(&onnx, &bytes).map_err(|e| file_err(&onnx, e))?;
    let spec = |s: &crate::infer::TensorSpec| toml::toml! { name = (s.name.clone()) dtype = (s.dtype.clone()) shape = (s.shape.clone()) };
    let mut card = toml::Table::new();
    card.insert("id".into(), id.into());
    card.insert("file".into(), ONNX_FILE.into());
    card.insert("sha256".into(), format!("{:x}", Sha256::digest(&bytes)).into());
    card.insert("inputs".into(), toml::Value::Array(parent.inputs.iter().map(|s| toml::Value::Table(spec(s))).collect()));
    let output = crate::infer::TensorSpec { name: OUTPUT.into(), dtype: "float32".into(), shape: vec![-1, head.dim as i64] };
    card.insert("outputs".into(), toml::Value::Array(vec![toml::Value::Table(spec(&output))]));
    card.insert("source".into(), toml::Value::Table(toml::toml! { parent_model = (parent.id.clone()) head = "head.safetensors" written_by = "facestream train --head" }));
    card.insert("preprocessing".into(), toml::Value::Table(parent.preprocessing.clone()));
    card.insert("calibration".into(), toml::Value::Table(toml::toml! { threshold = (threshold as f64) metric = "euclidean distance between unit vectors (the output is already L2-normalised)" }));
    let path = out.join(CARD_FILE);
    let text = format!("# The embedder `{}` followed by the head `{id}`, as one ONNX model.\n{}", parent.id, toml::to_string_pretty(&card).unwrap_or_default());
    std::fs::write(&path, text).map_err(|e| file_err(&path, e))?;
    tracing::info!(file = %onnx.display(), "the embedder followed by the head, as one ONNX model (card beside it)");
    Ok(onnx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_a_broken_message_is_refused() {
        let mut m = Vec::new();
        int_field(&mut m, 1, 8);
        bytes_field(&mut m, 2, b"producer");
        key(&mut m, 3, 5);
        m.extend_from_slice(&1.5f32.to_le_bytes());
        let f = fields(&m).unwrap();
        assert_eq!(f.iter().map(|f| f.number).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(f.iter().flat_map(|f| f.raw.to_vec()).collect::<Vec<_>>(), m, "copying every field gives the same bytes");
        assert_eq!(f[1].payload, b"producer");
        assert!(fields(&m[..m.len() - 1]).is_none(), "a cut message");
        assert!(embedder_with_head(b"\x08", &[0.0; 4], &[0.0; 2], 2).is_err(), "no graph");
    }
}
