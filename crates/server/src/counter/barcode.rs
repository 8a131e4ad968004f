//! Code 128 images of a counter serial: SVG for the page, PNG for devices and scanners that want
//! a bitmap. The bars come from `barcoders`; the PNG is written with `png`.

use barcoders::generators::svg::SVG;
use barcoders::sym::code128::Code128;

/// Pixels per narrow bar in the PNG and user units in the SVG: wide enough for a phone screen
/// read by a counter scanner at arm's length.
const MODULE: u32 = 3;
/// Bar height in modules.
const HEIGHT_MODULES: u32 = 30;
/// The quiet zone each side, in modules (Code 128 needs at least 10).
const QUIET: u32 = 12;

/// Why an image could not be made (never for a valid serial).
#[derive(Debug, thiserror::Error)]
pub enum BarcodeError {
    #[error("the text cannot be encoded as Code 128: {0}")]
    Encode(String),
    #[error("writing the PNG failed: {0}")]
    Png(String),
}

/// The bar modules (1 = bar) of `text` in Code 128 set B, with quiet zones.
fn modules(text: &str) -> Result<Vec<u8>, BarcodeError> {
    let code =
        Code128::new(format!("\u{0181}{text}")).map_err(|e| BarcodeError::Encode(e.to_string()))?;
    let quiet = vec![0u8; QUIET as usize];
    let mut out = quiet.clone();
    out.extend(code.encode());
    out.extend(quiet);
    Ok(out)
}

/// An SVG of the barcode, scalable, with a title naming it for screen readers.
pub fn svg(text: &str, title: &str) -> Result<String, BarcodeError> {
    let m = modules(text)?;
    let raw = SVG::new(HEIGHT_MODULES * MODULE)
        .xdim(MODULE)
        .xmlns("http://www.w3.org/2000/svg".into())
        .generate(&m)
        .map_err(|e| BarcodeError::Encode(e.to_string()))?;
    // Give the image an accessible name; the generator writes no title of its own.
    let escaped = title
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    Ok(match raw.find('>') {
        Some(i) => {
            let (head, rest) = raw.split_at(i + 1);
            let head = head.replacen("<svg ", "<svg role=\"img\" ", 1);
            format!("{head}<title>{escaped}</title>{rest}")
        }
        None => raw,
    })
}

/// A greyscale PNG of the barcode (white background, black bars).
pub fn png(text: &str) -> Result<Vec<u8>, BarcodeError> {
    let m = modules(text)?;
    let width = u32::try_from(m.len())
        .unwrap_or(u32::MAX)
        .saturating_mul(MODULE);
    let height = (HEIGHT_MODULES + 2 * QUIET / 2) * MODULE;
    let mut row = Vec::with_capacity(width as usize);
    for &b in &m {
        let v = if b == 1 { 0u8 } else { 255u8 };
        row.extend(std::iter::repeat_n(v, MODULE as usize));
    }
    let margin = QUIET / 2 * MODULE;
    let mut data = Vec::with_capacity(row.len() * height as usize);
    for y in 0..height {
        if y < margin || y >= height - margin {
            data.extend(std::iter::repeat_n(255u8, row.len()));
        } else {
            data.extend_from_slice(&row);
        }
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc
            .write_header()
            .map_err(|e| BarcodeError::Png(e.to_string()))?;
        w.write_image_data(&data)
            .map_err(|e| BarcodeError::Png(e.to_string()))?;
        w.finish().map_err(|e| BarcodeError::Png(e.to_string()))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_made_for_every_serial_character() {
        let all = std::str::from_utf8(mydata_core::counter::SERIAL_ALPHABET).unwrap();
        for chunk in all.as_bytes().chunks(8) {
            let text = std::str::from_utf8(chunk).unwrap();
            let s = svg(text, "barcode <x>").unwrap();
            assert!(s.starts_with("<svg role=\"img\""));
            assert!(s.contains("<title>barcode &lt;x&gt;</title>"));
            let p = png(text).unwrap();
            assert_eq!(&p[1..4], b"PNG");
        }
    }

    #[test]
    fn quiet_zones_surround_the_bars() {
        let m = modules("ABCD2345").unwrap();
        assert!(m[..QUIET as usize].iter().all(|&b| b == 0));
        assert!(m[m.len() - QUIET as usize..].iter().all(|&b| b == 0));
        assert_eq!(m[QUIET as usize], 1);
    }
}
