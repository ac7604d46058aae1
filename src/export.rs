//! Model folders the tool writes for people to use (`phi export --out`, `phi finetune`'s
//! `adapter/` and `merged/`, `phi dpo`'s outputs): built under `<out>.partial` and renamed into
//! place, and only ever replacing a folder that is absent, empty, or an earlier one of ours — one
//! that carries our `phi_export.json` marker and nothing but the files we write
//! ([`phi_train::export::EXPORT_LAYOUT`], checked with [`phi_data::owned`]).

use std::error::Error;
use std::path::Path;

use phi_data::owned;

pub use phi_train::export::{EXPORT_LAYOUT, FORMAT, MARKER, VERSION, partial_of};

/// The files beside `tokenizer.json` that carry the tokenizer's special tokens and the chat
/// template (`phi_core::chat::ChatTemplate::for_model` reads them): a model trained or exported
/// from a folder keeps the template it was trained with.
pub const TEMPLATE_FILES: [&str; 3] = ["tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"];

/// Copies those of [`TEMPLATE_FILES`] that `from` has into `to`.
pub fn copy_template_files(from: &Path, to: &Path) -> Result<(), Box<dyn Error>> {
    for f in TEMPLATE_FILES {
        if from.join(f).is_file() {
            std::fs::copy(from.join(f), to.join(f)).map_err(|e| format!("{} → {}: {e}", from.join(f).display(), to.join(f).display()))?;
        }
    }
    Ok(())
}

/// Fails, naming the folder, unless `out` and `<out>.partial` may be written by
/// [`write_model_folder`] (for commands that should refuse before a long run, not after).
pub fn check_writable(out: &Path) -> Result<(), Box<dyn Error>> {
    owned::check(out, &EXPORT_LAYOUT)?;
    owned::check(&partial_of(out), &EXPORT_LAYOUT)?;
    Ok(())
}

/// Writes a folder at `out` through `write` (which fills the folder it is given); `source`
/// says what it was made from (kept in the marker). Refuses, before any work and with nothing
/// touched, when `out` or `<out>.partial` holds anything that is not ours.
pub fn write_model_folder(out: &Path, source: &str, write: impl FnOnce(&Path) -> Result<(), Box<dyn Error>>) -> Result<(), Box<dyn Error>> {
    owned::check(out, &EXPORT_LAYOUT)?;
    let partial = partial_of(out);
    // Left by an export that died: ours, so cleared; someone else's stops us.
    owned::remove_owned(&partial, &EXPORT_LAYOUT)?;
    std::fs::create_dir_all(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
    // The marker goes first, so that a half-written `.partial` is still known to be ours.
    let marker = serde_json::json!({ "format": FORMAT, "version": VERSION, "source": source });
    phi_core::weights::write_atomic(&partial.join(MARKER), marker.to_string().as_bytes())?;
    write(&partial)?;
    owned::remove_owned(out, &EXPORT_LAYOUT)?;
    std::fs::rename(&partial, out).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(())
}
