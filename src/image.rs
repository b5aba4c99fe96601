//! Image loading with limits and EXIF orientation, and the packed RGB image type shared by every stage.
//!
//! Every image that enters the pipeline is decoded here or copied from a GStreamer buffer with its real
//! stride, so later stages can rely on a packed `width * 3` row layout.

use std::path::{Path, PathBuf};

use std::io::Cursor;

use image::{ImageDecoder, ImageFormat, ImageReader, Limits};

/// Largest side accepted from a file. Larger images are refused before any pixel is decoded,
/// so a hostile header cannot make us allocate gigabytes.
pub const MAX_SIDE: u32 = 16_384;
/// Largest pixel count accepted from a file (about 8k x 8k).
pub const MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// A packed 8-bit RGB image (`data.len() == width * height * 3`).
#[derive(Clone, Debug)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: cannot open: {error}")]
    Open { path: PathBuf, error: std::io::Error },
    #[error("{path}: not a readable image ({reason}); supported formats: JPEG, PNG, TIFF, GIF, WebP, BMP")]
    Decode { path: PathBuf, reason: String },
    #[error("{path}: image is empty ({width}x{height})")]
    Empty { path: PathBuf, width: u32, height: u32 },
    #[error("{path}: image is {width}x{height}, larger than the limit ({MAX_SIDE} px per side, {MAX_PIXELS} pixels); downscale it first")]
    TooLarge { path: PathBuf, width: u32, height: u32 },
    #[error("{path}: image exceeds the decoder limits ({reason}); downscale it first")]
    OverLimit { path: PathBuf, reason: String },
    #[error("buffer of {len} bytes does not hold a {width}x{height} image with stride {stride}")]
    BadBuffer { width: u32, height: u32, stride: usize, len: usize },
}

impl RgbImage {
    /// Copies a possibly padded RGB buffer (rows `stride` bytes apart) into a packed image.
    pub fn from_strided(width: u32, height: u32, stride: usize, src: &[u8]) -> Result<Self, ImageError> {
        let row = width as usize * 3;
        let needed = if height == 0 { 0 } else { stride * (height as usize - 1) + row };
        if stride < row || src.len() < needed {
            return Err(ImageError::BadBuffer { width, height, stride, len: src.len() });
        }
        let mut data = Vec::with_capacity(row * height as usize);
        for y in 0..height as usize {
            data.extend_from_slice(&src[y * stride..y * stride + row]);
        }
        Ok(Self { width, height, data })
    }

    /// A uniform image, for tests and warm-up.
    pub fn filled(width: u32, height: u32, rgb: [u8; 3]) -> Self {
        let mut data = Vec::with_capacity(width as usize * height as usize * 3);
        for _ in 0..width as usize * height as usize {
            data.extend_from_slice(&rgb);
        }
        Self { width, height, data }
    }

    #[inline]
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }
}

/// Decodes an image file, refusing oversized, empty or truncated images and applying its EXIF orientation.
pub fn load(path: &Path) -> Result<RgbImage, ImageError> {
    let bytes = std::fs::read(path).map_err(|error| ImageError::Open { path: path.to_path_buf(), error })?;
    decode(&bytes, path)
}

/// Decodes an image held in memory; `name` is used in error messages.
/// Width and height from the header alone (nothing decoded), for pixel budgets.
pub fn dimensions(bytes: &[u8], name: &Path) -> Result<(u32, u32), ImageError> {
    ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|error| ImageError::Open { path: name.to_path_buf(), error })?
        .into_dimensions()
        .map_err(|e| classify(name, e))
}

/// The image shrunk (bilinear) so it holds at most `max_pixels`, and the factor applied (1 when
/// it already fits).
pub fn downscaled(img: RgbImage, max_pixels: f64) -> (RgbImage, f32) {
    let px = img.width as f64 * img.height as f64;
    if px <= max_pixels || px == 0.0 {
        return (img, 1.0);
    }
    let f = (max_pixels / px).sqrt();
    let (w, h) = (((img.width as f64 * f) as u32).max(1), ((img.height as f64 * f) as u32).max(1));
    let Some(buf) = image::RgbImage::from_raw(img.width, img.height, img.data) else { return (RgbImage { width: 0, height: 0, data: Vec::new() }, 1.0) };
    let small = image::imageops::resize(&buf, w, h, image::imageops::FilterType::Triangle);
    (RgbImage { width: w, height: h, data: small.into_raw() }, w as f32 / buf.width() as f32)
}

/// Encodes packed RGB as JPEG at `quality` (1-100); None when the buffer does not fit the size.
/// OpenCV's encoder (libjpeg-turbo: about 5x faster than the pure-Rust one, which is the fallback).
pub fn jpeg(rgb: &[u8], width: u32, height: u32, quality: u8) -> Option<Vec<u8>> {
    if rgb.len() != width as usize * height as usize * 3 {
        return None;
    }
    match jpeg_opencv(rgb, width, height, quality) {
        Ok(bytes) => return Some(bytes),
        Err(e) => tracing::debug!(error = %e, "OpenCV JPEG encoding failed; using the built-in encoder"),
    }
    let mut out = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
    image::ImageEncoder::write_image(enc, rgb, width, height, image::ExtendedColorType::Rgb8).ok()?;
    Some(out)
}

/// A JPEG of `img` at most `max_width` pixels wide (area-averaged when shrunk): the live view's
/// frames (about 1 ms for 640x480 on one core).
pub fn jpeg_scaled(img: &RgbImage, max_width: u32, quality: u8) -> Option<Vec<u8>> {
    if img.width <= max_width {
        return jpeg(&img.data, img.width, img.height, quality);
    }
    let w = max_width.max(1);
    let h = ((img.height as u64 * w as u64 / img.width.max(1) as u64) as u32).max(1);
    let small = (|| {
        use opencv::core::{Mat, Size, Vec3b};
        let src = Mat::new_rows_cols_with_bytes::<Vec3b>(img.height as i32, img.width as i32, &img.data)?;
        let mut out = vec![0u8; w as usize * h as usize * 3];
        {
            let mut dst = Mat::new_rows_cols_with_bytes_mut::<Vec3b>(h as i32, w as i32, &mut out)?;
            opencv::imgproc::resize(&src, &mut dst, Size::new(w as i32, h as i32), 0.0, 0.0, opencv::imgproc::INTER_AREA)?;
        }
        Ok::<_, opencv::Error>(RgbImage { width: w, height: h, data: out })
    })()
    .unwrap_or_else(|_| thumbnail(img, w, None));
    jpeg(&small.data, small.width, small.height, quality)
}

fn jpeg_opencv(rgb: &[u8], width: u32, height: u32, quality: u8) -> Result<Vec<u8>, opencv::Error> {
    use opencv::core::{Mat, Vector};
    use opencv::prelude::VectorToVec;
    let src = Mat::new_rows_cols_with_bytes::<opencv::core::Vec3b>(height as i32, width as i32, rgb)?;
    let mut bgr = Mat::default();
    opencv::imgproc::cvt_color_def(&src, &mut bgr, opencv::imgproc::COLOR_RGB2BGR)?;
    let mut out = Vector::<u8>::new();
    let params = Vector::<i32>::from_slice(&[opencv::imgcodecs::IMWRITE_JPEG_QUALITY, quality.clamp(1, 100) as i32]);
    if !opencv::imgcodecs::imencode(".jpg", &bgr, &mut out, &params)? {
        return Err(opencv::Error::new(opencv::core::StsError, "imencode refused the image"));
    }
    Ok(out.to_vec())
}

/// A small copy of a frame, `width` pixels wide (box-averaged), with `mark` (a box in the
/// frame's pixels) outlined: the context of a best shot.
pub fn thumbnail(img: &RgbImage, width: u32, mark: Option<[f32; 4]>) -> RgbImage {
    let w = width.min(img.width).max(1);
    let h = ((img.height as u64 * w as u64 / img.width.max(1) as u64) as u32).max(1);
    let mut data = Vec::with_capacity(w as usize * h as usize * 3);
    let (sx, sy) = (img.width as f32 / w as f32, img.height as f32 / h as f32);
    for oy in 0..h {
        let (y0, y1) = ((oy as f32 * sy) as u32, (((oy + 1) as f32 * sy) as u32).clamp(1, img.height));
        for ox in 0..w {
            let (x0, x1) = ((ox as f32 * sx) as u32, (((ox + 1) as f32 * sx) as u32).clamp(1, img.width));
            // At most 2x2 samples per output pixel: enough for a thumbnail, cheap for a 4K frame.
            let (stx, sty) = (x1.saturating_sub(x0).div_ceil(2).max(1), y1.saturating_sub(y0).div_ceil(2).max(1));
            let mut acc = [0u32; 3];
            let mut n = 0u32;
            let mut y = y0.min(img.height - 1);
            while y < y1 {
                let mut x = x0.min(img.width - 1);
                while x < x1 {
                    let p = img.pixel(x, y);
                    for c in 0..3 {
                        acc[c] += p[c] as u32;
                    }
                    n += 1;
                    x += stx;
                }
                y += sty;
            }
            let n = n.max(1);
            data.extend_from_slice(&[(acc[0] / n) as u8, (acc[1] / n) as u8, (acc[2] / n) as u8]);
        }
    }
    let mut out = RgbImage { width: w, height: h, data };
    if let Some([x1, y1, x2, y2]) = mark {
        let f = w as f32 / img.width.max(1) as f32;
        let clamp = |v: f32, max: u32| ((v * f).round().max(0.0) as u32).min(max - 1);
        let (ax, ay, bx, by) = (clamp(x1, w), clamp(y1, h), clamp(x2, w), clamp(y2, h));
        let mut put = |x: u32, y: u32| {
            let i = (y as usize * w as usize + x as usize) * 3;
            out.data[i..i + 3].copy_from_slice(&[0, 230, 0]);
        };
        for x in ax..=bx {
            put(x, ay);
            put(x, by);
        }
        for y in ay..=by {
            put(ax, y);
            put(bx, y);
        }
    }
    out
}

pub fn decode(bytes: &[u8], name: &Path) -> Result<RgbImage, ImageError> {
    let path = name;
    let decode_err = |reason: String| ImageError::Decode { path: path.to_path_buf(), reason };
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|error| ImageError::Open { path: path.to_path_buf(), error })
    };
    let format = reader()?.format().ok_or_else(|| decode_err("unknown format".into()))?;
    // Lenient decoders fill a cut-off JPEG with grey and report success; a face found in
    // half an image is worse than an error, so require the end-of-image marker.
    if format == ImageFormat::Jpeg && !has_jpeg_end(bytes) {
        return Err(decode_err("truncated JPEG (no end-of-image marker)".into()));
    }
    // Read the size from the header first, so an oversized image is refused before any allocation.
    let (width, height) = reader()?.into_dimensions().map_err(|e| classify(path, e))?;
    check_size(path, width, height)?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_PIXELS * 4 + (64 << 20));
    let mut r = reader()?;
    r.limits(limits);
    let mut decoder = r.into_decoder().map_err(|e| classify(path, e))?;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(|e| classify(path, e))?;
    img.apply_orientation(orientation);
    let rgb = img.into_rgb8();
    let (width, height) = rgb.dimensions();
    if width == 0 || height == 0 {
        return Err(ImageError::Empty { path: path.to_path_buf(), width, height });
    }
    Ok(RgbImage { width, height, data: rgb.into_raw() })
}

/// A JPEG ends with FF D9; allow some trailing padding, as some cameras write it.
fn has_jpeg_end(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

fn check_size(path: &Path, width: u32, height: u32) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::Empty { path: path.to_path_buf(), width, height });
    }
    if width > MAX_SIDE || height > MAX_SIDE || width as u64 * height as u64 > MAX_PIXELS {
        return Err(ImageError::TooLarge { path: path.to_path_buf(), width, height });
    }
    Ok(())
}

fn classify(path: &Path, e: image::ImageError) -> ImageError {
    match e {
        e @ image::ImageError::Limits(_) => {
            // The decoder refused before telling us the size; report what we know.
            ImageError::OverLimit { path: path.to_path_buf(), reason: e.to_string() }
        }
        image::ImageError::IoError(error) => ImageError::Open { path: path.to_path_buf(), error },
        other => ImageError::Decode { path: path.to_path_buf(), reason: other.to_string() },
    }
}
