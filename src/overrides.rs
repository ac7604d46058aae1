//! Unknown keys in TOML override files (`phi train --config`, `phi data prepare --config`) are
//! errors with the closest valid key suggested: merged onto a full config, a misspelt key would
//! otherwise be carried along and ignored (`max_step = 10` trained the recipe's 300 steps).
//!
//! The valid keys come from the config structs' own serde derives (see [`struct_fields`]), so
//! they cannot drift from the structs.

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// One table of a config: its valid keys, and the sub-tables that are structs themselves.
pub struct Schema {
    pub fields: &'static [&'static str],
    pub tables: Vec<(&'static str, Schema)>,
}

impl Schema {
    /// The keys of struct `T`, with no sub-tables checked.
    pub fn of<T: for<'de> Deserialize<'de>>() -> Self {
        Schema { fields: struct_fields::<T>(), tables: Vec::new() }
    }

    /// Also check the keys of the sub-table `key` against struct `T`.
    pub fn with<T: for<'de> Deserialize<'de>>(mut self, key: &'static str) -> Self {
        self.tables.push((key, Schema::of::<T>()));
        self
    }
}

/// The field names serde's derive gives for struct `T`: a derived `Deserialize` hands them to
/// `Deserializer::deserialize_struct`, and this probe deserializer only records them.
pub fn struct_fields<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    match T::deserialize(FieldProbe) {
        Err(Probe(Some(fields))) => fields,
        _ => &[],
    }
}

struct FieldProbe;

#[derive(Debug)]
struct Probe(Option<&'static [&'static str]>);

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("field probe")
    }
}

impl std::error::Error for Probe {}

impl de::Error for Probe {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Probe(None)
    }
}

impl<'de> Deserializer<'de> for FieldProbe {
    type Error = Probe;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Probe> {
        Err(Probe(None))
    }

    fn deserialize_struct<V: Visitor<'de>>(self, _: &'static str, fields: &'static [&'static str], _: V) -> Result<V::Value, Probe> {
        Err(Probe(Some(fields)))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// Checks every key of `over` (a parsed TOML override) against `schema`; the error names the
/// key with its table (`schedule.peek`) and suggests the closest valid one.
pub fn check_keys(over: &toml::Value, schema: &Schema) -> Result<(), String> {
    check_table(over, schema, "", schema)
}

fn check_table(over: &toml::Value, schema: &Schema, prefix: &str, root: &Schema) -> Result<(), String> {
    let Some(table) = over.as_table() else { return Ok(()) };
    for (key, value) in table {
        let path = format!("{prefix}{key}");
        if !schema.fields.contains(&key.as_str()) {
            let hint = match suggest(key, prefix, root) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("valid keys here: {}", schema.fields.join(", ")),
            };
            return Err(format!("unknown key `{path}`: {hint}"));
        }
        if let Some((_, sub)) = schema.tables.iter().find(|(k, _)| k == key) {
            check_table(value, sub, &format!("{path}."), root)?;
        }
    }
    Ok(())
}

/// The valid key closest to `key` (edit distance at most 2, or a third of its length), looked
/// for first in the same table, then anywhere (a top-level `peak` is `schedule.peak`).
fn suggest(key: &str, prefix: &str, root: &Schema) -> Option<String> {
    let mut all: Vec<(String, &str)> = root.fields.iter().map(|f| (f.to_string(), *f)).collect();
    for (table, sub) in &root.tables {
        all.extend(sub.fields.iter().map(|f| (format!("{table}.{f}"), *f)));
    }
    let distance = |bare: &str| strsim::damerau_levenshtein(&key.to_lowercase(), bare);
    let close_enough = |d: usize| d <= 2.max(key.chars().count() / 3);
    let best = |candidates: &mut dyn Iterator<Item = &(String, &str)>| {
        candidates.map(|(full, bare)| (distance(bare), full)).filter(|(d, _)| close_enough(*d)).min_by_key(|(d, _)| *d).map(|(_, f)| f.clone())
    };
    let same_table = |(full, _): &&(String, &str)| full.strip_prefix(prefix).is_some_and(|rest| !rest.contains('.'));
    best(&mut all.iter().filter(same_table)).or_else(|| best(&mut all.iter()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use phi_train::{AdamWSettings, LossScaler, LrSchedule, TrainConfig};

    fn schema() -> Schema {
        Schema::of::<TrainConfig>().with::<AdamWSettings>("optimizer").with::<LrSchedule>("schedule").with::<LossScaler>("loss_scaler")
    }

    fn check(text: &str) -> Result<(), String> {
        check_keys(&toml::from_str(text).unwrap(), &schema())
    }

    #[test]
    fn fields_come_from_the_serde_derive() {
        let fields = struct_fields::<LrSchedule>();
        assert_eq!(fields, ["peak", "warmup_steps", "total_steps", "floor", "decay"]);
        assert!(struct_fields::<TrainConfig>().contains(&"on_non_finite"));
    }

    #[test]
    fn unknown_keys_are_named_with_the_closest_valid_one() {
        assert_eq!(check("max_step = 10").unwrap_err(), "unknown key `max_step`: did you mean `max_steps`?");
        assert_eq!(check("[schedule]\npeek = 1e-3").unwrap_err(), "unknown key `schedule.peek`: did you mean `schedule.peak`?");
        assert_eq!(check("schedule.peek = 1e-3").unwrap_err(), "unknown key `schedule.peek`: did you mean `schedule.peak`?");
        // A key of a sub-table given at the top level.
        assert_eq!(check("weight_decay = 0.0").unwrap_err(), "unknown key `weight_decay`: did you mean `optimizer.weight_decay`?");
        let far = check("colour = 3").unwrap_err();
        assert!(far.starts_with("unknown key `colour`: valid keys here: batch_size, seq_len"), "{far}");
        check("max_steps = 10\nclip_norm = 0.5\non_non_finite = \"skip\"\n[schedule]\npeak = 1e-3\n[optimizer]\nbeta2 = 0.95").unwrap();
    }
}
