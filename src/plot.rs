//! The loss-curve PNG every training command writes at the end (`loss.png` in its output
//! folder, [`fit_and_plot`]): training loss per step, validation loss where it was measured,
//! learning rate on a second axis; and the data-quality experiment's picture. A file of that
//! name that is not a picture phi drew is never replaced.
//!
//! Text is drawn with DejaVu Sans Mono, embedded (`assets/`, its licence beside it), so the plot
//! needs no system fonts.

use std::path::Path;
use std::sync::Once;

use burn::tensor::Device;
use phi_train::checkpoint::LOSS_CURVE_FILE;
use phi_train::{Objective, Resume, StepMetrics, TrainConfig, TrainOutcome, Weights};
use plotters::prelude::*;

/// [`phi_train::fit`], then the run's loss curve ([`write_run_loss_curve`]): how the tool's
/// commands train.
pub fn fit_and_plot<O: Objective>(
    weights: &Weights,
    objective: &mut O,
    cfg: &TrainConfig,
    out_dir: &Path,
    resume: Resume,
    device: &Device,
    on_step: impl FnMut(&StepMetrics),
) -> phi_train::Result<TrainOutcome> {
    let mut outcome = phi_train::fit(weights, objective, cfg, out_dir, resume, device, on_step)?;
    if crate::world::lead() {
        write_run_loss_curve(&mut outcome, cfg, out_dir);
    }
    Ok(outcome)
}

/// Draws a finished run's metrics (the whole run's, a resumed one's included) as
/// `out_dir/loss.png`, titled with the model's and the batch's shape. The curve is a
/// convenience: when it cannot be drawn, or `loss.png` is not a picture phi drew (a file of the
/// user's, left as it is), the run still succeeds and the reason is a warning of the run —
/// emitted with `tracing::warn!` and added to `outcome.warnings`.
pub fn write_run_loss_curve(outcome: &mut TrainOutcome, cfg: &TrainConfig, out_dir: &Path) {
    let c = outcome.model.config();
    let title = format!("{} layers x {} hidden, {} x {} sequences/step", c.num_hidden_layers, c.hidden_size, cfg.batch_size, cfg.grad_accum);
    // Drawn under the run's lock, as the run wrote: a second run in the folder waits its turn.
    let drawn = phi_train::run_dir::RunLock::acquire(out_dir)
        .map_err(|e| e.to_string())
        .and_then(|_lock| write_loss_curve(&outcome.metrics, &title, &out_dir.join(LOSS_CURVE_FILE)));
    if let Err(e) = drawn {
        let w = format!("loss curve not written: {e}");
        tracing::warn!("{w}");
        outcome.warnings.push(w);
    }
}

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/DejaVuSansMono.ttf");
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).unwrap_or_else(|_| panic!("the embedded font parses"));
    });
}

/// Writes `metrics` as a PNG at `path` (to a temporary name, then renamed).
pub fn write_loss_curve(metrics: &[StepMetrics], title: &str, path: &Path) -> Result<(), String> {
    if metrics.is_empty() {
        return Err("no metrics to plot".into());
    }
    write_png(path, |tmp| draw(metrics, title, tmp))
}

/// Draws with `draw` into a temporary PNG beside `path`, marks it as ours, then renames it into
/// place — unless `path` holds a file that is not a PNG of ours, which is left as it is.
fn write_png(path: &Path, draw: impl FnOnce(&Path) -> Result<(), Box<dyn std::error::Error>>) -> Result<(), String> {
    if let Err(why) = png_is_ours(path) {
        return Err(format!("{why}; it is left as it is"));
    }
    register_font();
    let tmp = path.with_extension("tmp.png");
    draw(&tmp).map_err(|e| format!("{}: {e}", path.display()))?;
    let marked = std::fs::read(&tmp).ok().and_then(|png| with_marker(&png));
    let marked = marked.ok_or_else(|| format!("{}: the drawn image is not a PNG", tmp.display()))?;
    std::fs::write(&tmp, marked).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The `tEXt` chunk every PNG phi draws carries (keyword `Software`), which is how a later run
/// tells its own picture, to be redrawn, from a file of the user's of the same name.
const PNG_KEYWORD: &[u8] = b"Software";
const PNG_SOFTWARE: &[u8] = b"phi-train";
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// The chunks of a PNG as (type, data), or `None` if it is not one.
fn png_chunks(png: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let mut rest = png.strip_prefix(PNG_SIGNATURE)?;
    let mut chunks = Vec::new();
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let kind = rest.get(4..8)?;
        let data = rest.get(8..8usize.checked_add(len)?)?;
        chunks.push((kind, data));
        rest = rest.get(12 + len..)?;
    }
    Some(chunks)
}

/// `Ok` when `path` is absent or a PNG that phi drew; otherwise why not.
fn png_is_ours(path: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Ok(m) if m.file_type().is_file() => {}
        _ => return Err(format!("{} exists and is not a plain file", path.display())),
    }
    let png = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = [PNG_KEYWORD, b"\0", PNG_SOFTWARE].concat();
    let ours = png_chunks(&png).is_some_and(|chunks| chunks.iter().any(|(kind, data)| *kind == b"tEXt" && *data == text.as_slice()));
    if ours { Ok(()) } else { Err(format!("{} is not a picture phi drew (a file of yours?)", path.display())) }
}

/// `png` with our `tEXt` chunk after its header chunk.
fn with_marker(png: &[u8]) -> Option<Vec<u8>> {
    let chunks = png_chunks(png)?;
    let (kind, ihdr) = chunks.first()?;
    if *kind != b"IHDR" {
        return None;
    }
    let at = PNG_SIGNATURE.len() + 12 + ihdr.len();
    let body = [b"tEXt" as &[u8], PNG_KEYWORD, b"\0", PNG_SOFTWARE].concat();
    let mut out = Vec::with_capacity(png.len() + body.len() + 8);
    out.extend_from_slice(&png[..at]);
    out.extend_from_slice(&(body.len() as u32 - 4).to_be_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out.extend_from_slice(&png[at..]);
    Some(out)
}

/// The CRC-32 (ISO-HDLC, as PNG chunks use) of `bytes`; a handful of bytes per picture.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn draw(metrics: &[StepMetrics], title: &str, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let train: Vec<(f64, f64)> = metrics.iter().filter(|m| m.loss.is_finite()).map(|m| (m.step as f64, m.loss)).collect();
    let val: Vec<(f64, f64)> = metrics.iter().filter_map(|m| m.val_loss.filter(|v| v.is_finite()).map(|v| (m.step as f64, v))).collect();
    let lr: Vec<(f64, f64)> = metrics.iter().map(|m| (m.step as f64, m.lr)).collect();
    let (lo, hi) = train.iter().chain(&val).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &(_, y)| (lo.min(y), hi.max(y)));
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let first = metrics.first().map_or(0, |m| m.step) as f64;
    let last = (metrics.last().map_or(1, |m| m.step) as f64).max(first + 1.0);
    let max_lr = lr.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-12);

    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .right_y_label_area_size(70)
        .build_cartesian_2d(first..last, (lo - pad)..(hi + pad))?
        .set_secondary_coord(first..last, 0.0..max_lr * 1.05);
    chart.configure_mesh().x_desc("step").y_desc("loss").x_label_formatter(&|v| format!("{v:.0}")).label_style(("sans-serif", 14)).draw()?;
    chart.configure_secondary_axes().y_desc("learning rate").label_style(("sans-serif", 14)).y_label_formatter(&|v| format!("{v:.1e}")).draw()?;
    chart.draw_series(LineSeries::new(train, BLUE.stroke_width(2)))?.label("train loss").legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    if !val.is_empty() {
        chart.draw_series(LineSeries::new(val.clone(), RED.stroke_width(2)))?.label("validation loss").legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.stroke_width(2)));
        chart.draw_series(val.into_iter().map(|p| Circle::new(p, 4, RED.filled())))?;
    }
    chart
        .draw_secondary_series(LineSeries::new(lr, RGBColor(150, 150, 150).stroke_width(1)))?
        .label("learning rate")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RGBColor(150, 150, 150)));
    // A curriculum's stage changes: a dashed vertical line and the new stage's name.
    for w in metrics.windows(2) {
        if let (Some(a), Some(b)) = (&w[0].stage, &w[1].stage) {
            if a != b {
                let x = w[0].step as f64 + 0.5;
                let grey = RGBColor(90, 90, 90);
                chart.draw_series(DashedLineSeries::new([(x, lo - pad), (x, hi + pad)], 6, 4, grey.stroke_width(1)))?;
                chart.draw_series(std::iter::once(Text::new(b.clone(), (x, hi + pad * 0.2), ("sans-serif", 14).into_font().color(&grey))))?;
            }
        }
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.9)).border_style(BLACK).label_font(("sans-serif", 14)).draw()?;
    root.present()?;
    Ok(())
}

/// The data-quality experiment's picture: per arm, a bar of the mean held-out loss with the
/// spread over seeds (min–max), and the mean validation curves.
pub fn write_experiment_plot(bars: &[(String, f64, f64, f64)], curves: &[(String, Vec<(usize, f64)>)], path: &Path) -> Result<(), String> {
    if bars.is_empty() {
        return Err("no arms to plot".into());
    }
    write_png(path, |tmp| draw_experiment(bars, curves, tmp))
}

fn draw_experiment(bars: &[(String, f64, f64, f64)], curves: &[(String, Vec<(usize, f64)>)], path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(520);
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    let finite = |v: f64| v.is_finite();
    let (lo, hi) = bars.iter().flat_map(|b| [b.2, b.3]).chain(curves.iter().flat_map(|c| c.1.iter().map(|p| p.1))).filter(|v| finite(*v)).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.1).max(1e-3);

    // The bars get their own range: the curves start far higher.
    let (blo, bhi) = bars.iter().flat_map(|b| [b.1, b.2, b.3]).filter(|v| finite(*v)).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    let (blo, bhi) = if blo.is_finite() { (blo, bhi) } else { (0.0, 1.0) };
    let bpad = ((bhi - blo) * 0.5).max(1e-3);
    let (lo_b, hi_b) = (blo - bpad, bhi + bpad);
    let mut chart = ChartBuilder::on(&left)
        .caption("held-out loss (mean, min-max over seeds)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..bars.len() as f64, lo_b..hi_b)?;
    chart.configure_mesh().disable_x_mesh().x_labels(0).y_desc("loss").label_style(("sans-serif", 14)).draw()?;
    for (i, (name, mean, min, max)) in bars.iter().enumerate() {
        let c = colors[i % colors.len()];
        let x = i as f64;
        chart.draw_series(std::iter::once(Rectangle::new([(x + 0.15, lo_b), (x + 0.85, *mean)], c.mix(0.5).filled())))?;
        chart.draw_series(std::iter::once(PathElement::new([(x + 0.5, *min), (x + 0.5, *max)], BLACK.stroke_width(2))))?;
        for y in [*min, *max] {
            chart.draw_series(std::iter::once(PathElement::new([(x + 0.4, y), (x + 0.6, y)], BLACK.stroke_width(2))))?;
        }
        chart.draw_series(std::iter::once(Text::new(format!("{name} {mean:.3}"), (x + 0.15, lo_b + bpad * 0.2), ("sans-serif", 14).into_font())))?;
    }

    let last = curves.iter().flat_map(|c| c.1.iter().map(|p| p.0)).max().unwrap_or(1) as f64;
    let mut chart = ChartBuilder::on(&right)
        .caption("held-out loss during training (mean over seeds)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..last.max(1.0), (lo - pad)..(hi + pad))?;
    chart.configure_mesh().x_desc("step").y_desc("loss").label_style(("sans-serif", 14)).draw()?;
    for (i, (name, points)) in curves.iter().enumerate() {
        let c = colors[i % colors.len()];
        let pts: Vec<(f64, f64)> = points.iter().filter(|p| p.1.is_finite()).map(|&(s, v)| (s as f64, v)).collect();
        chart.draw_series(LineSeries::new(pts, c.stroke_width(2)))?.label(name.clone()).legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.9)).border_style(BLACK).label_font(("sans-serif", 14)).draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png() {
        let metrics: Vec<StepMetrics> = (1..=50)
            .map(|s| StepMetrics {
                step: s,
                loss: 8.0 / (1.0 + s as f64 * 0.1),
                val_loss: (s % 10 == 0).then(|| 8.5 / (1.0 + s as f64 * 0.1)),
                val_perplexity: None,
                lr: 1e-3 * (s as f64 / 50.0),
                grad_norm: 1.0,
                tokens_per_s: 1000.0,
                mfu: None,
                loss_scale: None,
                skipped: false,
                stage: Some(if s <= 25 { "broad" } else { "anneal" }.into()),
                extra: Default::default(),
            })
            .collect();
        let dir = std::env::temp_dir().join(format!("phi-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("loss.png");
        write_loss_curve(&metrics, "test run", &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(bytes.len() > 10_000, "a drawn chart, not an empty image: {} bytes", bytes.len());
        assert!(write_loss_curve(&[], "empty", &path).is_err());
        // Marked as ours, with a valid chunk CRC (`crc32(b"IEND")` is the constant every PNG ends with).
        assert_eq!(crc32(b"IEND"), 0xae42_6082);
        png_is_ours(&path).unwrap();
        write_loss_curve(&metrics, "again", &path).unwrap();
        // A picture of the user's by that name is not ours: left byte for byte.
        let theirs = [PNG_SIGNATURE, &bytes[8..33]].concat(); // the signature and header chunk alone
        std::fs::write(&path, &theirs).unwrap();
        let e = write_loss_curve(&metrics, "test run", &path).unwrap_err();
        assert!(e.contains("loss.png") && e.contains("not a picture phi drew"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), theirs);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
