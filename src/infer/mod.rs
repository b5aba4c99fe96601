//! ONNX Runtime behind one door: library loading, execution provider choice, sessions checked
//! against their model cards, and plain-slice tensors in and out.
//!
//! No other module imports `ort`. Stages hold a [`Model`] per worker (one session each) and call
//! [`Model::run`] with contiguous buffers they reuse between batches.

mod card;
pub mod config;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ort::ep::{self, ExecutionProvider};
use ort::session::Session;
use ort::value::TensorRef;

pub use card::{ModelCard, TensorSpec};
pub use config::{Device, InferConfig};

/// The ONNX Runtime release that setup installs and that the `api-31` feature targets.
pub const ORT_VERSION: &str = "1.31.1";

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error(
        "ONNX Runtime library not found (looked for: {tried}); run `make setup` (or set FACESTREAM_ORT_LIB to libonnxruntime.so.{ORT_VERSION})"
    )]
    LibraryNotFound { tried: String },
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    LibraryLoad { path: PathBuf, reason: String },
    #[error("model card {path}: {reason}; run `make setup` to fetch and convert the models")]
    Card { path: PathBuf, reason: String },
    #[error("model {path}: {reason}; run `make setup` to fetch and convert the models")]
    ModelFile { path: PathBuf, reason: String },
    #[error("model {model}: {reason}")]
    Mismatch { model: String, reason: String },
    #[error("execution provider {provider} was requested but is not usable: {reason}")]
    Provider { provider: &'static str, reason: String },
    #[error("onnx runtime ({context}): {reason}")]
    Ort { context: String, reason: String },
}

fn ort_err(context: impl Into<String>) -> impl FnOnce(ort::Error) -> InferError {
    let context = context.into();
    move |e| InferError::Ort { context, reason: e.to_string() }
}

/// Which device the sessions run on, as decided at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Cpu,
    Cuda,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
        }
    }
}

/// The process-wide ONNX Runtime: loaded once, shared by every session.
pub struct Runtime {
    env: ort::environment::Environment,
    pub provider: Provider,
    pub library: PathBuf,
    pub models_dir: PathBuf,
    intra_threads: usize,
}

static RUNTIME: OnceLock<Arc<Runtime>> = OnceLock::new();
static INIT_LOCK: Mutex<()> = Mutex::new(());

impl Runtime {
    /// Loads the library (once per process) and decides the execution provider.
    pub fn get(cfg: &InferConfig) -> Result<Arc<Runtime>, InferError> {
        if let Some(rt) = RUNTIME.get() {
            return Ok(rt.clone());
        }
        let _guard = INIT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rt) = RUNTIME.get() {
            return Ok(rt.clone());
        }
        let library = locate_library(cfg)?;
        let models_dir = locate_models(cfg);
        let builder = ort::init_from(&library)
            .map_err(|e| InferError::LibraryLoad { path: library.clone(), reason: e.to_string() })?;
        let env = builder.with_name("facestream").build().map_err(ort_err("environment"))?;
        let provider = choose_provider(cfg.device)?;
        tracing::info!(library = %library.display(), provider = provider.as_str(), models = %models_dir.display(), "ONNX Runtime loaded");
        let rt = Arc::new(Runtime { env, provider, library, models_dir, intra_threads: cfg.intra_threads });
        let _ = RUNTIME.set(rt.clone());
        Ok(rt)
    }

    /// Opens one session for the model described by `models_dir/<card_name>.toml`, checks the
    /// file's sha256 and its inputs and outputs against the card, and warms it up.
    pub fn load(&self, card_name: &str) -> Result<Model, InferError> {
        self.load_from(&self.models_dir, card_name)
    }

    /// Loads the card `card_name` and its model from another folder (a fine-tuned embedder).
    pub fn load_from(&self, dir: &std::path::Path, card_name: &str) -> Result<Model, InferError> {
        let card_path = dir.join(format!("{card_name}.toml"));
        let card = ModelCard::read(&card_path)?;
        let model_path = dir.join(&card.file);
        card.verify_file(&model_path)?;
        let mut builder = Session::builder(&self.env).map_err(ort_err("session builder"))?;
        builder = builder
            .with_intra_threads(self.intra_threads.max(1))
            .map_err(|e| InferError::Ort { context: "intra threads".into(), reason: e.to_string() })?
            .with_inter_threads(1)
            .map_err(|e| InferError::Ort { context: "inter threads".into(), reason: e.to_string() })?
            // A memory pattern is planned and kept for every input shape a session sees; R-Net,
            // O-Net and the embedder see a new batch size almost every call. Without patterns
            // the arena serves them all at the same speed with less memory (O-Net over batches
            // 1-119: 158 instead of 264 MB).
            .with_memory_pattern(false)
            .map_err(|e| InferError::Ort { context: "memory pattern".into(), reason: e.to_string() })?;
        if self.provider == Provider::Cuda {
            builder = builder
                .with_execution_providers([ep::CUDA::default().build().error_on_failure()])
                .map_err(|e| InferError::Provider { provider: "cuda", reason: e.to_string() })?;
        }
        let session = builder.commit_from_file(&model_path).map_err(|e| InferError::ModelFile {
            path: model_path.clone(),
            reason: e.to_string(),
        })?;
        let model = Model { session, card };
        model.check_against_card()?;
        Ok(model)
    }
}

impl Runtime {
    /// Opens a model file without a card (its inputs and outputs become the card). For tools and
    /// tests that compare against models from elsewhere; the pipeline always goes through cards.
    pub fn load_path(&self, path: &Path) -> Result<Model, InferError> {
        let session = Session::builder(&self.env)
            .map_err(ort_err("session builder"))?
            .commit_from_file(path)
            .map_err(|e| InferError::ModelFile { path: path.to_path_buf(), reason: e.to_string() })?;
        let spec = |outlets: &[ort::value::Outlet]| {
            outlets
                .iter()
                .map(|o| TensorSpec {
                    name: o.name().to_string(),
                    dtype: "float32".into(),
                    shape: o.dtype().tensor_shape().map(|s| s.to_vec()).unwrap_or_default(),
                })
                .collect::<Vec<_>>()
        };
        let card = ModelCard {
            id: path.display().to_string(),
            file: path.display().to_string(),
            sha256: String::new(),
            inputs: spec(session.inputs()),
            outputs: spec(session.outputs()),
            source: Default::default(),
            preprocessing: Default::default(),
            calibration: Default::default(),
        };
        Ok(Model { session, card })
    }
}

/// Whether the NVIDIA driver library can be loaded: the CUDA build of ONNX Runtime has the CUDA
/// provider compiled in, but it only works where the driver is installed.
fn cuda_driver_present() -> bool {
    // SAFETY: dlopen with a constant C string; the handle is closed at once.
    unsafe {
        let h = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
        if h.is_null() {
            return false;
        }
        libc::dlclose(h);
        true
    }
}

fn choose_provider(device: Device) -> Result<Provider, InferError> {
    let in_build = <ep::CUDA as ExecutionProvider>::is_available().unwrap_or(false);
    if in_build && !cuda_driver_present() && device != Device::Cpu {
        let reason = "the ONNX Runtime build has CUDA but no NVIDIA driver (libcuda.so.1) was found";
        if device == Device::Cuda {
            return Err(InferError::Provider { provider: "cuda", reason: reason.into() });
        }
        tracing::warn!("{reason}: running on CPU");
        return Ok(Provider::Cpu);
    }
    let available = in_build;
    match device {
        Device::Cpu => Ok(Provider::Cpu),
        Device::Cuda if available => Ok(Provider::Cuda),
        Device::Cuda => Err(InferError::Provider {
            provider: "cuda",
            reason: "this ONNX Runtime build has no CUDA provider; run `make setup GPU=1`".into(),
        }),
        Device::Auto if available => Ok(Provider::Cuda),
        Device::Auto => {
            tracing::warn!("no CUDA execution provider in this ONNX Runtime build: running on CPU (use `make setup GPU=1` on a machine with an NVIDIA GPU)");
            Ok(Provider::Cpu)
        }
    }
}

/// Default cache folder for downloads, the runtime library and the setup record.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FACESTREAM_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("facestream")
}

/// Reads `KEY=value` lines written by `models/fetch.py` into `<cache>/setup.env`.
fn setup_env(key: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string(cache_dir().join("setup.env")).ok()?;
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| PathBuf::from(v.trim()))
}

fn locate_library(cfg: &InferConfig) -> Result<PathBuf, InferError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = &cfg.library {
        // An explicit path is the user's decision: do not silently fall back to another.
        if p.is_file() {
            return Ok(p.clone());
        }
        return Err(InferError::LibraryNotFound { tried: p.display().to_string() });
    }
    if let Some(p) = std::env::var_os("FACESTREAM_ORT_LIB") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(p) = setup_env("FACESTREAM_ORT_LIB") {
        candidates.push(p);
    }
    let base = cache_dir().join("onnxruntime");
    candidates.push(base.join(format!("{ORT_VERSION}-cpu")).join(format!("libonnxruntime.so.{ORT_VERSION}")));
    candidates.push(base.join(format!("{ORT_VERSION}-gpu")).join(format!("libonnxruntime.so.{ORT_VERSION}")));
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    Err(InferError::LibraryNotFound {
        tried: candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
    })
}

/// Where the model cards are (config, FACESTREAM_MODELS, the checkout, the last setup).
pub fn locate_models(cfg: &InferConfig) -> PathBuf {
    if let Some(p) = &cfg.models_dir {
        return p.clone();
    }
    if let Some(p) = std::env::var_os("FACESTREAM_MODELS") {
        return PathBuf::from(p);
    }
    // The checkout being run beats whatever checkout last ran setup.
    let has_cards = |p: &Path| p.join("faceapi_recognition.toml").is_file();
    let local = PathBuf::from("models");
    if has_cards(&local) {
        return local;
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    if has_cards(&built) {
        return built;
    }
    setup_env("FACESTREAM_MODELS").filter(|p| has_cards(p)).unwrap_or(local)
}

/// One ONNX session (one per worker) plus the card it was checked against.
pub struct Model {
    session: Session,
    pub card: ModelCard,
}

/// An output tensor copied out of the session.
#[derive(Debug, Clone)]
pub struct Output {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Model {
    fn check_against_card(&self) -> Result<(), InferError> {
        let mismatch = |reason: String| InferError::Mismatch { model: self.card.id.clone(), reason };
        let check = |kind: &str, spec: &[TensorSpec], actual: Vec<(String, Vec<i64>)>| -> Result<(), InferError> {
            if spec.len() != actual.len() {
                return Err(mismatch(format!("card lists {} {kind}s, model has {}", spec.len(), actual.len())));
            }
            for s in spec {
                let Some((_, shape)) = actual.iter().find(|(n, _)| *n == s.name) else {
                    return Err(mismatch(format!("{kind} `{}` from the card is not in the model", s.name)));
                };
                if *shape != s.shape {
                    return Err(mismatch(format!("{kind} `{}` has shape {:?}, card says {:?}", s.name, shape, s.shape)));
                }
            }
            Ok(())
        };
        let shapes = |outlets: &[ort::value::Outlet]| {
            outlets
                .iter()
                .map(|o| (o.name().to_string(), o.dtype().tensor_shape().map(|s| s.to_vec()).unwrap_or_default()))
                .collect::<Vec<_>>()
        };
        check("input", &self.card.inputs, shapes(self.session.inputs()))?;
        check("output", &self.card.outputs, shapes(self.session.outputs()))?;
        Ok(())
    }

    /// Runs the model on float32 inputs given as (name, shape, data) and returns the outputs in the
    /// order the card lists them.
    pub fn run(&mut self, inputs: &[(&str, &[usize], &[f32])]) -> Result<Vec<Output>, InferError> {
        let id = self.card.id.clone();
        let mut values = Vec::with_capacity(inputs.len());
        for (name, shape, data) in inputs {
            let t = TensorRef::from_array_view((shape.to_vec(), *data)).map_err(ort_err(format!("{id}: input {name}")))?;
            values.push((std::borrow::Cow::Borrowed(*name), ort::session::SessionInputValue::from(t)));
        }
        let outputs = self.session.run(values).map_err(ort_err(format!("{id}: run")))?;
        let mut result = Vec::with_capacity(self.card.outputs.len());
        for spec in &self.card.outputs {
            let value = outputs
                .get(spec.name.as_str())
                .ok_or_else(|| InferError::Mismatch { model: id.clone(), reason: format!("no output {}", spec.name) })?;
            let (shape, data) = value.try_extract_tensor::<f32>().map_err(ort_err(format!("{id}: output {}", spec.name)))?;
            result.push(Output { shape: shape.iter().map(|&d| d.max(0) as usize).collect(), data: data.to_vec() });
        }
        Ok(result)
    }
}
