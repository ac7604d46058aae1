//! What a model folder written for people to use (`phi export --out`, `phi finetune`'s
//! `adapter/` and `merged/`) holds, so that it is only ever replaced when it is one of ours: the
//! `phi_export.json` marker and nothing but the files listed here ([`phi_data::owned`]), built
//! under [`partial_of`] `<out>.partial`. The writing itself (the marker first, then the files,
//! then the rename into place) is the `phi` crate's `export` module.

use std::path::{Path, PathBuf};

use phi_data::owned::{Layout, Marker};

use crate::checkpoint::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, CONFIG_FILE, GENERATION_CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE};

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
    file: |name| [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE].contains(&name.strip_suffix(".tmp").unwrap_or(name)),
    dir: |_| None,
};

/// What an export holds: HF weights and config, the tokenizer files copied along, a PEFT
/// adapter, the marker, and the temporaries of their atomic writes.
fn is_export_file(name: &str) -> bool {
    const FILES: &[&str] = &[
        MARKER,
        CONFIG_FILE,
        WEIGHTS_FILE,
        TOKENIZER_FILE,
        "tokenizer_config.json",
        GENERATION_CONFIG_FILE,
        "special_tokens_map.json",
        "chat_template.jinja",
        ADAPTER_CONFIG_FILE,
        ADAPTER_WEIGHTS_FILE,
    ];
    let name = name.strip_suffix(".tmp").unwrap_or(name);
    // Weights written as shards (`phi export --max-shard-size`), and their index.
    FILES.contains(&name) || name == phi_core::weights::SAFETENSORS_INDEX_FILE || phi_core::weights::is_shard_name(name)
}

/// The folder an export of `out` is built in before it is renamed into place: `<out>.partial`.
pub fn partial_of(out: &Path) -> PathBuf {
    let mut p = out.as_os_str().to_owned();
    p.push(".partial");
    PathBuf::from(p)
}
