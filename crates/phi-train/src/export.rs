//! Model folders the tool writes for people to use (`phi export --out`, `phi finetune`'s
//! `adapter/` and `merged/`): built under `<out>.partial` and renamed into place, and only ever
//! replacing a folder that is absent, empty, or an earlier one of ours — one that carries our
//! `phi_export.json` marker and nothing but the files we write ([`phi_data::owned`]).

use std::error::Error;
use std::path::{Path, PathBuf};

use phi_data::owned::{self, Layout, Marker};

pub const MARKER: &str = "phi_export.json";
pub const FORMAT: &str = "phi-export";
pub const VERSION: u32 = 1;

/// An exported model or adapter folder.
pub static EXPORT_LAYOUT: Layout = Layout {
    what: "a model folder written by phi (with its phi_export.json marker)",
    markers: &[Marker { file: MARKER, format: FORMAT, version: VERSION }],
    file: is_export_file,
    // `phi export --adapter A` without `--merge`: the base, and the adapter in `adapter/`.
    dir: |name| (name == "adapter").then_some(&ADAPTER_LAYOUT),
};

/// The `adapter/` folder inside an export: named by us, checked entry by entry.
static ADAPTER_LAYOUT: Layout = Layout {
    what: "the adapter folder of a phi export",
    markers: &[],
    file: |name| ["adapter_config.json", "adapter_model.safetensors"].contains(&name.strip_suffix(".tmp").unwrap_or(name)),
    dir: |_| None,
};

/// What an export holds: HF weights and config, the tokenizer files copied along, a PEFT
/// adapter, the marker, and the temporaries of their atomic writes.
fn is_export_file(name: &str) -> bool {
    const FILES: &[&str] = &[
        MARKER,
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "special_tokens_map.json",
        "adapter_config.json",
        "adapter_model.safetensors",
    ];
    FILES.contains(&name.strip_suffix(".tmp").unwrap_or(name))
}

pub fn partial_of(out: &Path) -> PathBuf {
    let mut p = out.as_os_str().to_owned();
    p.push(".partial");
    PathBuf::from(p)
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
