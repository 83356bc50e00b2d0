//! An in-memory bitmap backend that draws text with correct glyph spacing.
//!
//! plotters 0.3.7's `ab_glyph` text path places each glyph's bitmap at the pen position and drops
//! the glyph's left side bearing, so letters sit unevenly ("on e point"). [`Canvas`] delegates all
//! drawing to plotters' `BitMapBackend` except `draw_text`, which lays glyphs out with `ab_glyph`
//! itself. Text measurement stays plotters' own (the advance widths, which are right), so labels
//! are placed where plotters expects them.

use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use plotters::prelude::*;
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind,
};

pub(crate) struct Canvas<'a> {
    inner: BitMapBackend<'a>,
    font: &'static FontRef<'static>,
}

impl<'a> Canvas<'a> {
    /// A canvas over an RGB8 `buffer` of `size` pixels, drawing text in the font parsed from
    /// `font_bytes` (parsed once per process).
    pub(crate) fn new(
        buffer: &'a mut [u8],
        size: (u32, u32),
        font_bytes: &'static [u8],
    ) -> anyhow::Result<Canvas<'a>> {
        static FONT: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
        let font = FONT
            .get_or_init(|| FontRef::try_from_slice(font_bytes).ok())
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the embedded font could not be parsed"))?;
        Ok(Canvas {
            inner: BitMapBackend::with_buffer(buffer, size),
            font,
        })
    }
}

type BitMapError = <BitMapBackend<'static> as DrawingBackend>::ErrorType;
type DrawResult = Result<(), DrawingErrorKind<BitMapError>>;

impl DrawingBackend for Canvas<'_> {
    type ErrorType = BitMapError;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }

    fn ensure_prepared(&mut self) -> DrawResult {
        self.inner.ensure_prepared()
    }

    fn present(&mut self) -> DrawResult {
        self.inner.present()
    }

    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> DrawResult {
        self.inner.draw_pixel(point, color)
    }

    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> DrawResult {
        self.inner.draw_line(from, to, style)
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> DrawResult {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> DrawResult {
        self.inner.draw_path(path, style)
    }

    fn draw_circle<S: BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> DrawResult {
        self.inner.draw_circle(center, radius, style, fill)
    }

    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> DrawResult {
        self.inner.fill_polygon(vert, style)
    }

    fn blit_bitmap(&mut self, pos: BackendCoord, size: (u32, u32), src: &[u8]) -> DrawResult {
        self.inner.blit_bitmap(pos, size, src)
    }

    /// Anchors and rotates like plotters' default `draw_text`, in the box plotters measured, but
    /// places every glyph at its own outline bounds.
    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> DrawResult {
        let color = style.color();
        if color.alpha == 0.0 || text.is_empty() {
            return Ok(());
        }
        let ((min_x, min_y), (max_x, max_y)) = style
            .layout_box(text)
            .map_err(|e| DrawingErrorKind::FontError(Box::new(e)))?;
        let (width, height) = (max_x - min_x, max_y - min_y);
        let anchor = style.anchor();
        let dx = match anchor.h_pos {
            HPos::Left => 0,
            HPos::Right => -width,
            HPos::Center => -width / 2,
        };
        let dy = match anchor.v_pos {
            VPos::Top => 0,
            VPos::Center => -height / 2,
            VPos::Bottom => -height,
        };
        let transform = style.transform();
        let (w, h) = self.get_size();

        let face: &'static FontRef<'static> = self.font;
        let scale = PxScale::from(style.size() as f32);
        let font = face.as_scaled(scale);
        // Centre the capital letters in the measured box: then top, centre and bottom anchors
        // all look right, and descenders hang below as in print.
        let cap_height = face
            .outline_glyph(font.scaled_glyph('H'))
            .map_or(font.ascent() * 0.75, |g| -g.px_bounds().min.y);
        let baseline = (height as f32 + cap_height) / 2.0;

        let mut result = Ok(());
        let mut caret = 0.0f32;
        let mut previous = None;
        for c in text.chars() {
            let id = font.glyph_id(c);
            if let Some(previous) = previous {
                caret += font.kern(previous, id);
            }
            previous = Some(id);
            let glyph = id.with_scale_and_position(scale, point(caret, baseline));
            caret += font.h_advance(id);
            let Some(outline) = face.outline_glyph(glyph) else {
                continue;
            };
            let bounds = outline.px_bounds();
            let (left, top) = (bounds.min.x as i32, bounds.min.y as i32);
            outline.draw(|gx, gy, coverage| {
                if result.is_err() || coverage <= 0.0 {
                    return;
                }
                let (x, y) = transform
                    .transform(left + gx as i32 + dx - min_x, top + gy as i32 + dy - min_y);
                let (x, y) = (pos.0 + x, pos.1 + y);
                if x >= 0 && x < w as i32 && y >= 0 && y < h as i32 {
                    let pixel = BackendColor {
                        alpha: color.alpha * f64::from(coverage.min(1.0)),
                        rgb: color.rgb,
                    };
                    result = self.inner.draw_pixel((x, y), pixel);
                }
            });
            std::mem::replace(&mut result, Ok(()))?;
        }
        Ok(())
    }
}
