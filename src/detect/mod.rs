//! Face detection: the MTCNN cascade (P-Net over an image pyramid, R-Net and O-Net batched over
//! all candidates) giving boxes, scores and five landmarks.

pub mod config;
mod mtcnn;
pub mod worker;

use serde::Serialize;

pub use config::DetectConfig;
pub use mtcnn::Mtcnn;

/// An axis-aligned box in pixel coordinates of the source image.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct BBox {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

impl BBox {
    pub fn width(&self) -> f32 {
        self.x2 - self.x1
    }
    pub fn height(&self) -> f32 {
        self.y2 - self.y1
    }
    pub fn area(&self) -> f32 {
        self.width().max(0.0) * self.height().max(0.0)
    }
    pub fn center(&self) -> (f32, f32) {
        ((self.x1 + self.x2) * 0.5, (self.y1 + self.y2) * 0.5)
    }
    pub fn contains(&self, x: f32, y: f32) -> bool {
        x >= self.x1 && x <= self.x2 && y >= self.y1 && y <= self.y2
    }
    pub fn iou(&self, other: &BBox) -> f32 {
        let ix = (self.x2.min(other.x2) - self.x1.max(other.x1)).max(0.0);
        let iy = (self.y2.min(other.y2) - self.y1.max(other.y1)).max(0.0);
        let inter = ix * iy;
        let union = self.area() + other.area() - inter;
        if union <= 0.0 { 0.0 } else { inter / union }
    }
}

/// Landmark order: left eye, right eye (as seen in the image), nose tip, left and right mouth corner.
pub const LANDMARK_NAMES: [&str; 5] = ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"];

/// One detected face.
#[derive(Clone, Debug, Serialize)]
pub struct Face {
    pub bbox: BBox,
    pub score: f32,
    /// (x, y) per landmark, in [`LANDMARK_NAMES`] order.
    pub landmarks: [[f32; 2]; 5],
}

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error(transparent)]
    Infer(#[from] crate::infer::InferError),
    #[error("image processing: {0}")]
    Image(String),
}

impl From<opencv::Error> for DetectError {
    fn from(e: opencv::Error) -> Self {
        DetectError::Image(e.to_string())
    }
}
