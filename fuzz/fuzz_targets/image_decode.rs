//! Fuzzes the image decode path and its limits: `image::dimensions`, `image::decode` (every format
//! the `image` crate is built with: JPEG, PNG, TIFF, GIF, WebP, BMP; EXIF orientation) and
//! `image::downscaled` on what decodes.
//!
//! Invariants: no panic and no allocation past libFuzzer's limit (a hostile header must be refused
//! before any pixel is allocated); a decoded image is never empty, never larger than `MAX_SIDE` per
//! side or `MAX_PIXELS` in all, is packed RGB, and has the size its header announced (rotated by
//! its EXIF orientation); every error names the input.
//!
//! Seeds: `FACESTREAM_FUZZ_WRITE_SEEDS=<dir> .../image_decode` encodes small synthetic images
//! (gradients; no photos) in every format, colour type and orientation into <dir> and exits
//! (`make fuzz-seeds`).
#![no_main]

use std::path::Path;

use facestream::image::{ImageError, MAX_PIXELS, MAX_SIDE, decode, dimensions, downscaled};
use libfuzzer_sys::fuzz_target;

const NAME: &str = "<fuzz input>.img";

fuzz_target!(
    init: {
        if let Some(dir) = std::env::var_os("FACESTREAM_FUZZ_WRITE_SEEDS") {
            seeds::write(Path::new(&dir));
            std::process::exit(0);
        }
    },
    |data: &[u8]| {
    let name = Path::new(NAME);
    let header = dimensions(data, name);
    if let Err(e) = &header {
        assert!(e.to_string().contains(NAME), "dimensions() error does not name the input: {e}");
    }
    match decode(data, name) {
        Ok(img) => {
            let (w, h) = (img.width, img.height);
            assert!(w > 0 && h > 0, "decode returned an empty {w}x{h} image");
            assert!(w <= MAX_SIDE && h <= MAX_SIDE && w as u64 * h as u64 <= MAX_PIXELS, "decode returned {w}x{h}, over the limits");
            assert_eq!(img.data.len(), w as usize * h as usize * 3, "{w}x{h} image is not packed RGB");
            match header {
                Ok((hw, hh)) => assert!((hw, hh) == (w, h) || (hh, hw) == (w, h), "header says {hw}x{hh}, decoded {w}x{h}"),
                Err(e) => panic!("decode gave {w}x{h} but the header could not be read: {e}"),
            }
            let budget = 64.0 * 64.0;
            let (small, f) = downscaled(img, budget);
            assert!(small.width >= 1 && small.height >= 1 && small.width <= w && small.height <= h, "downscaled {w}x{h} to {}x{}", small.width, small.height);
            assert_eq!(small.data.len(), small.width as usize * small.height as usize * 3, "downscaled image is not packed RGB");
            assert!(f > 0.0 && f <= 1.0, "downscale factor {f}");
        }
        Err(e) => {
            assert!(!matches!(e, ImageError::BadBuffer { .. }), "decode reported a buffer error: {e}");
            let msg = e.to_string();
            assert!(msg.contains(NAME), "decode error does not name the input: {msg}");
        }
    }
}
);

mod seeds {
    use std::io::Cursor;
    use std::path::Path;

    use image::codecs::{bmp::BmpEncoder, gif::GifEncoder, jpeg::JpegEncoder, png::PngEncoder, tiff::TiffEncoder, webp::WebPEncoder};
    use image::{DynamicImage, Frame, ImageEncoder, Rgb, RgbImage, RgbaImage};

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb([(x * 255 / w.max(1)) as u8, (y * 255 / h.max(1)) as u8, ((x + y) * 7 % 256) as u8]))
    }

    /// A TIFF-structured EXIF block with one tag: Orientation = `o`.
    fn exif_orientation(o: u16) -> Vec<u8> {
        let mut e = b"II*\0".to_vec();
        e.extend_from_slice(&8u32.to_le_bytes());
        e.extend_from_slice(&1u16.to_le_bytes());
        e.extend_from_slice(&0x0112u16.to_le_bytes());
        e.extend_from_slice(&3u16.to_le_bytes());
        e.extend_from_slice(&1u32.to_le_bytes());
        e.extend_from_slice(&o.to_le_bytes());
        e.extend_from_slice(&[0, 0]);
        e.extend_from_slice(&0u32.to_le_bytes());
        e
    }

    fn encode(img: &DynamicImage, enc: impl ImageEncoder) {
        enc.write_image(img.as_bytes(), img.width(), img.height(), img.color().into()).expect("encode seed");
    }

    pub fn write(dir: &Path) {
        std::fs::create_dir_all(dir).expect("seed folder");
        let put = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).expect("write seed");
        let rgb = DynamicImage::ImageRgb8(gradient(16, 12));
        let with = |img: &DynamicImage, f: &dyn Fn(&mut Cursor<Vec<u8>>, &DynamicImage)| {
            let mut c = Cursor::new(Vec::new());
            f(&mut c, img);
            c.into_inner()
        };
        put("rgb-16x12.png", &with(&rgb, &|c, i| encode(i, PngEncoder::new(c))));
        put("rgb-16x12.jpg", &with(&rgb, &|c, i| encode(i, JpegEncoder::new_with_quality(c, 80))));
        put("rgb-16x12.bmp", &with(&rgb, &|c, i| encode(i, BmpEncoder::new(c))));
        put("rgb-16x12.tif", &with(&rgb, &|c, i| encode(i, TiffEncoder::new(c))));
        put("rgb-16x12.webp", &with(&rgb, &|c, i| encode(i, WebPEncoder::new_lossless(c))));
        put("rgba-16x12.png", &with(&DynamicImage::ImageRgba8(RgbaImage::from_fn(16, 12, |x, y| image::Rgba([x as u8 * 16, y as u8 * 20, 99, (x * y) as u8]))), &|c, i| encode(i, PngEncoder::new(c))));
        put("rgb16-16x12.png", &with(&DynamicImage::ImageRgb16(rgb.to_rgb16()), &|c, i| encode(i, PngEncoder::new(c))));
        put("gray-16x12.png", &with(&DynamicImage::ImageLuma8(rgb.to_luma8()), &|c, i| encode(i, PngEncoder::new(c))));
        put("gray-alpha-16x12.png", &with(&DynamicImage::ImageLumaA8(rgb.to_luma_alpha8()), &|c, i| encode(i, PngEncoder::new(c))));
        put("gray-16x12.jpg", &with(&DynamicImage::ImageLuma8(rgb.to_luma8()), &|c, i| encode(i, JpegEncoder::new_with_quality(c, 60))));
        put("rgba-16x12.webp", &with(&DynamicImage::ImageRgba8(rgb.to_rgba8()), &|c, i| encode(i, WebPEncoder::new_lossless(c))));
        put("white-1x1.png", &with(&DynamicImage::ImageRgb8(RgbImage::from_pixel(1, 1, Rgb([255, 255, 255]))), &|c, i| encode(i, PngEncoder::new(c))));
        // EXIF orientation 6 (rotate 90) on a JPEG and 8 (rotate 270) on a PNG: decoded 12x16.
        put("exif-orient6-16x12.jpg", &with(&rgb, &|c, i| {
            let mut e = JpegEncoder::new_with_quality(c, 80);
            e.set_exif_metadata(exif_orientation(6)).expect("jpeg exif");
            encode(i, e);
        }));
        put("exif-orient8-16x12.png", &with(&rgb, &|c, i| {
            let mut e = PngEncoder::new(c);
            e.set_exif_metadata(exif_orientation(8)).expect("png exif");
            encode(i, e);
        }));
        let mut gif = Vec::new();
        {
            let mut g = GifEncoder::new(&mut gif);
            let frames = [gradient(8, 8), gradient(8, 8)].map(|f| Frame::new(DynamicImage::ImageRgb8(f).to_rgba8()));
            g.encode_frames(frames).expect("gif");
        }
        put("anim-2frames-8x8.gif", &gif);
        // Headers that announce more than the limits, followed by almost nothing.
        let mut bmp = with(&rgb, &|c, i| encode(i, BmpEncoder::new(c)));
        bmp[18..22].copy_from_slice(&20_000i32.to_le_bytes());
        bmp[22..26].copy_from_slice(&12i32.to_le_bytes());
        put("header-20000x12.bmp", &bmp);
        let mut bmp = with(&rgb, &|c, i| encode(i, BmpEncoder::new(c)));
        bmp[18..22].copy_from_slice(&8_192i32.to_le_bytes());
        bmp[22..26].copy_from_slice(&8_192i32.to_le_bytes());
        put("header-8192x8192-short.bmp", &bmp);
        let mut g = gif.clone();
        g[6..8].copy_from_slice(&16_000u16.to_le_bytes());
        g[8..10].copy_from_slice(&16_000u16.to_le_bytes());
        put("header-16000x16000.gif", &g);
    }
}
