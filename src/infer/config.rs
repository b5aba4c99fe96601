//! Settings of the inference core: where the runtime and models are, which device, how many threads.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// CUDA when the runtime build and the driver have it, CPU otherwise (logged).
    #[default]
    Auto,
    Cpu,
    Cuda,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferConfig {
    /// Path to libonnxruntime.so.1.31.1; default: FACESTREAM_ORT_LIB, then the setup cache.
    pub library: Option<PathBuf>,
    /// Folder with the model cards and .onnx files; default: FACESTREAM_MODELS, then ./models.
    pub models_dir: Option<PathBuf>,
    pub device: Device,
    /// ONNX Runtime intra-op threads per session. On the 2-vCPU reference machine 1 is fastest
    /// (2 threads ran at half the speed: the vCPUs are hyperthreads of one core).
    pub intra_threads: usize,
}

impl Default for InferConfig {
    fn default() -> Self {
        Self { library: None, models_dir: None, device: Device::Auto, intra_threads: 1 }
    }
}
