//! Drawing detections onto an image (for `--draw`) and saving it.

use std::path::Path;

use opencv::core::{Mat, Point, Rect, Scalar, Vec3b};
use opencv::imgproc;

use crate::detect::Face;
use crate::image::RgbImage;

#[derive(Debug, thiserror::Error)]
pub enum DrawError {
    #[error("drawing: {0}")]
    OpenCv(#[from] opencv::Error),
    #[error("{path}: cannot write image: {reason}")]
    Save { path: std::path::PathBuf, reason: String },
}

/// Draws each face's box (green), landmarks (eyes red, nose yellow, mouth blue) and an optional
/// label above the box.
pub fn draw_faces(img: &mut RgbImage, faces: &[Face], labels: Option<&[String]>) -> Result<(), DrawError> {
    let (w, h) = (img.width as i32, img.height as i32);
    let thick = ((w.max(h) as f32) / 400.0).ceil().max(1.0) as i32;
    let mut mat = Mat::new_rows_cols_with_bytes_mut::<Vec3b>(h, w, &mut img.data)?;
    for (i, f) in faces.iter().enumerate() {
        let b = &f.bbox;
        let rect = Rect::new(b.x1 as i32, b.y1 as i32, b.width().max(1.0) as i32, b.height().max(1.0) as i32);
        imgproc::rectangle(&mut mat, rect, Scalar::new(0.0, 255.0, 0.0, 0.0), thick, imgproc::LINE_8, 0)?;
        let colours = [(255.0, 0.0, 0.0), (255.0, 0.0, 0.0), (255.0, 255.0, 0.0), (0.0, 128.0, 255.0), (0.0, 128.0, 255.0)];
        for (p, c) in f.landmarks.iter().zip(colours) {
            imgproc::circle(&mut mat, Point::new(p[0] as i32, p[1] as i32), thick * 2, Scalar::new(c.0, c.1, c.2, 0.0), -1, imgproc::LINE_8, 0)?;
        }
        let text = match labels.and_then(|l| l.get(i)) {
            Some(l) => format!("{l} {:.3}", f.score),
            None => format!("{:.3}", f.score),
        };
        imgproc::put_text(
            &mut mat,
            &text,
            Point::new(b.x1 as i32, (b.y1 as i32 - 4 * thick).max(10)),
            imgproc::FONT_HERSHEY_SIMPLEX,
            0.4 * thick as f64,
            Scalar::new(0.0, 255.0, 0.0, 0.0),
            thick,
            imgproc::LINE_8,
            false,
        )?;
    }
    Ok(())
}

/// Saves an RGB image; the format follows the file extension (png, jpg, ...).
pub fn save(img: &RgbImage, path: &Path) -> Result<(), DrawError> {
    image::save_buffer(path, &img.data, img.width, img.height, image::ExtendedColorType::Rgb8)
        .map_err(|e| DrawError::Save { path: path.to_path_buf(), reason: e.to_string() })
}
