//! facestream: real-time face recognition for video streams.
//!
//! Data flows one way: ingest → detect → track → align + embed (one batcher) → identify → events.
//! Each stage lives in its own module; `infer` is the only module that talks to ONNX Runtime.

pub mod app;
pub mod bench;
pub mod cluster;
pub mod config;
pub mod dataset;
pub mod detect;
pub mod draw;
pub mod embed;
pub mod eval;
pub mod events;
pub mod gallery;
pub mod gate;
pub mod harvest;
pub mod http;
pub mod identify;
pub mod image;
pub mod ingest;
pub mod live;
pub mod infer;
pub mod photo;
pub mod queue;
pub mod soak;
pub mod telemetry;
pub mod topology;
pub mod track;
pub mod train;
pub mod visitors;
