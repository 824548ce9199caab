//! The `thumbnail` builtin: shrinks a PNG or JPEG to fit a bounding box, keeping its aspect ratio.
//!
//! Input: the image bytes as the request body (format sniffed from the bytes). Query parameters:
//! `width` and `height` (the box, default 256 each, at most 4096), `format` (`png` or `jpeg`,
//! default: the input's), `quality` (JPEG quality 1–100, default 80). An image already inside the
//! box is not enlarged; it is returned as is when no format change is asked for.
//!
//! Output: the image, `content-type: image/png` or `image/jpeg`. Input that is not a PNG or JPEG is
//! a 415, bad parameters a 400. Decoding is bounded (10000 pixels a side, 64 MiB of pixel memory)
//! so a small compressed "decompression bomb" cannot exhaust a Pi's memory.
//!
//! Built with the `image` crate limited to PNG and JPEG (cargo feature `thumbnail`, on by default);
//! measured on x86_64 with the release profile, it adds about 0.55 MB to a stripped binary and
//! about 25 s to a clean build on two cores.

use std::io::Cursor;

use http::StatusCode;
use image::{ImageFormat, ImageReader, Limits};

use super::{bad_input, error_reply, unknown_operation};
use crate::offer::{OfferRequest, UpstreamReply};

/// Default bounding box side.
const DEFAULT_SIDE: u32 = 256;
/// Largest bounding box side.
const MAX_SIDE: u32 = 4096;
/// Largest input side decoded.
const MAX_INPUT_SIDE: u32 = 10_000;
/// Most memory the decoder may allocate.
const MAX_DECODE_BYTES: u64 = 64 * 1024 * 1024;

/// Entry point (see the module doc).
pub(crate) fn handle(op: &str, req: &OfferRequest) -> UpstreamReply {
    if !matches!(op, "" | "resize") {
        return unknown_operation("thumbnail", op, "resize");
    }
    let params = match Params::parse(req.query.as_deref().unwrap_or("")) {
        Ok(p) => p,
        Err(msg) => return bad_input(msg),
    };
    match thumbnail(&req.body, &params) {
        Ok((format, bytes)) => {
            let mut reply = UpstreamReply::new(StatusCode::OK, bytes);
            reply
                .headers
                .push(("content-type".into(), format.to_mime_type().into()));
            reply
        }
        Err(reply) => reply,
    }
}

/// Query parameters.
#[derive(Debug, PartialEq)]
struct Params {
    /// Box width.
    width: u32,
    /// Box height.
    height: u32,
    /// Output format, `None` for the input's.
    format: Option<ImageFormat>,
    /// JPEG quality.
    quality: u8,
}

impl Params {
    fn parse(query: &str) -> Result<Self, String> {
        let mut p = Params {
            width: DEFAULT_SIDE,
            height: DEFAULT_SIDE,
            format: None,
            quality: 80,
        };
        for pair in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let side = |v: &str| {
                v.parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_SIDE).contains(n))
                    .ok_or_else(|| format!("{k} must be a number from 1 to {MAX_SIDE}"))
            };
            match k {
                "width" => p.width = side(v)?,
                "height" => p.height = side(v)?,
                "format" => {
                    p.format = Some(match v {
                        "png" => ImageFormat::Png,
                        "jpeg" | "jpg" => ImageFormat::Jpeg,
                        _ => return Err("format must be png or jpeg".into()),
                    });
                }
                "quality" => {
                    p.quality = v
                        .parse::<u8>()
                        .ok()
                        .filter(|q| (1..=100).contains(q))
                        .ok_or("quality must be a number from 1 to 100")?;
                }
                other => return Err(format!("unknown parameter {other:?}")),
            }
        }
        Ok(p)
    }
}

fn unsupported(message: impl Into<String>) -> UpstreamReply {
    error_reply(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "ERR_MALFORMED_REQUEST",
        message,
    )
}

fn thumbnail(input: &[u8], p: &Params) -> Result<(ImageFormat, Vec<u8>), UpstreamReply> {
    if input.is_empty() {
        return Err(bad_input(
            "request body is empty; expected a PNG or JPEG image",
        ));
    }
    let mut reader = ImageReader::new(Cursor::new(input))
        .with_guessed_format()
        .map_err(|e| bad_input(format!("cannot read image: {e}")))?;
    let in_format = match reader.format() {
        Some(f @ (ImageFormat::Png | ImageFormat::Jpeg)) => f,
        _ => return Err(unsupported("expected a PNG or JPEG image")),
    };
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_INPUT_SIDE);
    limits.max_image_height = Some(MAX_INPUT_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| bad_input(format!("cannot decode image: {e}")))?;
    let out_format = p.format.unwrap_or(in_format);
    let fits = image.width() <= p.width && image.height() <= p.height;
    if fits && out_format == in_format {
        return Ok((in_format, input.to_vec()));
    }
    let small = if fits {
        image
    } else {
        image.thumbnail(p.width, p.height)
    };
    let mut out = Vec::new();
    let encoded = match out_format {
        ImageFormat::Jpeg => {
            // JPEG has no alpha channel.
            let rgb = small.to_rgb8();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, p.quality)
                .encode_image(&rgb)
        }
        _ => small.write_to(&mut Cursor::new(&mut out), ImageFormat::Png),
    };
    encoded.map_err(|e| {
        error_reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_CAPABILITY_INTERNAL",
            format!("cannot encode thumbnail: {e}"),
        )
    })?;
    Ok((out_format, out))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use image::{DynamicImage, GenericImageView, RgbaImage};

    use super::*;
    use crate::builtin::tests::request;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img =
            DynamicImage::ImageRgba8(RgbaImage::from_pixel(w, h, image::Rgba([200, 10, 10, 255])));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    /// CRC-32 as PNG chunks use it (so the forged header above is well-formed).
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn call(body: &[u8], query: Option<&str>) -> UpstreamReply {
        let mut req = request("", body);
        req.query = query.map(Into::into);
        handle("", &req)
    }

    #[test]
    fn shrinks_to_fit_keeping_aspect_ratio() {
        let reply = call(&png(800, 400), Some("width=100&height=100"));
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("content-type"), Some("image/png"));
        let out = image::load_from_memory(&reply.body).unwrap();
        assert_eq!(out.dimensions(), (100, 50));
    }

    #[test]
    fn converts_to_jpeg_and_leaves_small_images_alone() {
        let reply = call(&png(300, 300), Some("format=jpeg&quality=50"));
        assert_eq!(reply.header("content-type"), Some("image/jpeg"));
        let out = image::load_from_memory(&reply.body).unwrap();
        assert_eq!(out.dimensions(), (256, 256));

        let small = png(10, 20);
        let reply = call(&small, None);
        assert_eq!(reply.body.as_ref(), small.as_slice());
    }

    #[test]
    fn rejects_bad_input_and_parameters() {
        assert_eq!(
            call(b"GIF89a....", None).status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(call(b"", None).status, StatusCode::BAD_REQUEST);
        assert_eq!(
            call(&png(2, 2), Some("width=0")).status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            call(&png(2, 2), Some("colour=red")).status,
            StatusCode::BAD_REQUEST
        );
        // A valid PNG header claiming a huge image is refused before anything is allocated.
        let mut bomb = png(1, 1);
        bomb[16..20].copy_from_slice(&60_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&60_000u32.to_be_bytes());
        let crc = crc32(&bomb[12..29]);
        bomb[29..33].copy_from_slice(&crc.to_be_bytes());
        let reply = call(&bomb, None);
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        let body = String::from_utf8_lossy(&reply.body).to_lowercase();
        assert!(body.contains("limit"), "{body}");
    }

    #[test]
    fn params() {
        assert_eq!(
            Params::parse("width=10&format=jpg"),
            Ok(Params {
                width: 10,
                height: DEFAULT_SIDE,
                format: Some(ImageFormat::Jpeg),
                quality: 80
            })
        );
        assert!(Params::parse("quality=0").is_err());
    }
}
