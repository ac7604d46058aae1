//! Parquet input, as the hub ships datasets (The Stack, FineWeb-Edu, Cosmopedia: a `text` or
//! `content` column per row). Read with the `parquet` crate's column readers, one row group at a
//! time, so memory is bounded by a row group rather than a file; string columns come back as
//! their raw bytes with nulls kept, so that a caller counts a null or a value that is not UTF-8
//! as a dropped row with its reason instead of failing the file.
//!
//! ```no_run
//! # fn demo() -> Result<(), phi_data::DataError> {
//! phi_data::parquet::for_each_row_group(std::path::Path::new("train-00000-of-00004.parquet"), &["content"], |first_row, columns| {
//!     for (i, value) in columns[0].iter().enumerate() {
//!         let text = value.as_deref().map(String::from_utf8_lossy);
//!         println!("row {}: {:?}", first_row + i as u64, text.map(|t| t.len()));
//!     }
//!     Ok(())
//! })
//! # }
//! ```

use std::path::Path;

use parquet::basic::Type as PhysicalType;
use parquet::column::reader::ColumnReader;
use parquet::file::reader::{FileReader, RowGroupReader, SerializedFileReader};

use crate::error::DataError;

/// One column of a row group: each row's value, `None` where it is null.
pub type StringColumn = Vec<Option<Vec<u8>>>;

/// Values decoded per call of the column reader.
const BATCH: usize = 4096;

fn invalid(path: &Path, what: impl std::fmt::Display) -> DataError {
    DataError::Invalid(format!("{}: {what}", path.display()))
}

/// Calls `f` once per row group of the Parquet file `path`, in order, with the index of the
/// group's first row and the values of `columns` (top-level string or binary columns, by name:
/// one [`StringColumn`] each, in the order asked). A file that is not Parquet, a column it does
/// not have (the error lists those it has) or one that is not a flat string column is an error
/// naming the file.
pub fn for_each_row_group(path: &Path, columns: &[&str], mut f: impl FnMut(u64, Vec<StringColumn>) -> Result<(), DataError>) -> Result<(), DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(|e| invalid(path, format!("not a readable Parquet file: {e}")))?;
    let schema = reader.metadata().file_metadata().schema_descr();
    let indices = columns
        .iter()
        .map(|&name| {
            let found = schema.columns().iter().position(|c| c.path().string() == name);
            let Some(i) = found else {
                let names: Vec<String> = schema.columns().iter().map(|c| c.path().string()).collect();
                return Err(invalid(path, format!("no column `{name}` (its columns: {})", names.join(", "))));
            };
            let c = schema.column(i);
            if c.physical_type() != PhysicalType::BYTE_ARRAY || c.max_rep_level() > 0 {
                return Err(invalid(path, format!("column `{name}` is not a string column (it is {:?}{})", c.physical_type(), if c.max_rep_level() > 0 { ", repeated" } else { "" })));
            }
            Ok((i, c.max_def_level()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut first_row = 0u64;
    for g in 0..reader.num_row_groups() {
        let group = reader.get_row_group(g).map_err(|e| invalid(path, format!("row group {g}: {e}")))?;
        let rows = group.metadata().num_rows().max(0) as usize;
        let values = indices
            .iter()
            .zip(columns)
            .map(|(&(i, max_def), name)| read_strings(&*group, i, max_def, rows).map_err(|e| invalid(path, format!("row group {g}, column `{name}`: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        f(first_row, values)?;
        first_row += rows as u64;
    }
    Ok(())
}

/// Every value of column `i` of a row group of `rows` rows.
fn read_strings(group: &dyn RowGroupReader, i: usize, max_def: i16, rows: usize) -> Result<StringColumn, String> {
    let ColumnReader::ByteArrayColumnReader(mut reader) = group.get_column_reader(i).map_err(|e| e.to_string())? else {
        return Err("not a byte-array column".into());
    };
    let mut out = Vec::with_capacity(rows);
    loop {
        let (mut defs, mut values) = (Vec::with_capacity(BATCH), Vec::with_capacity(BATCH));
        let (records, _, levels) = reader.read_records(BATCH, Some(&mut defs), None, &mut values).map_err(|e| e.to_string())?;
        if records == 0 {
            break;
        }
        if max_def == 0 {
            // A required column: every row has its value.
            out.extend(values.iter().map(|v| Some(v.data().to_vec())));
        } else {
            let mut values = values.iter();
            for &d in &defs[..levels] {
                out.push(if d == max_def { Some(values.next().ok_or("fewer values than its levels say")?.data().to_vec()) } else { None });
            }
        }
    }
    if out.len() != rows {
        return Err(format!("{} values for {rows} rows", out.len()));
    }
    Ok(out)
}

/// Calls `f` with each row of the Parquet file `path`, in order, as a JSON object (column names
/// as keys, lists as arrays, structs as objects, nulls as null: the hub's `messages` column comes
/// out as a JSONL record's does), with its 1-based row number; a row that cannot be read comes
/// as `Err(why)`. For the instruction and preference files of fine-tuning; pre-training text
/// streams through [`for_each_row_group`] instead.
///
/// A string that is not UTF-8 (which Arrow writers such as pyarrow never produce) stops the
/// `parquet` crate's record reader partway through its row, and it cannot go on in that row
/// group: the rows after it in the group come as `Err` saying so, and the next row group is
/// read afresh.
pub fn for_each_row(path: &Path, mut f: impl FnMut(usize, Result<serde_json::Value, String>)) -> Result<(), DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(|e| invalid(path, format!("not a readable Parquet file: {e}")))?;
    let mut row_no = 0usize;
    for g in 0..reader.num_row_groups() {
        let group = reader.get_row_group(g).map_err(|e| invalid(path, format!("row group {g}: {e}")))?;
        let rows = group.metadata().num_rows().max(0) as usize;
        let iter = parquet::record::reader::RowIter::from_row_group(None, &*group).map_err(|e| invalid(path, format!("row group {g}: {e}")))?;
        let (mut stuck, mut read) = (None, 0);
        for row in iter.take(rows) {
            row_no += 1;
            read += 1;
            match row {
                Ok(r) => f(row_no, row_json(&r)),
                Err(e) => {
                    let e = e.to_string();
                    let why = if e.contains("as String") { "a text value that is not valid UTF-8".to_string() } else { format!("unreadable row: {}", e.chars().take(200).collect::<String>()) };
                    f(row_no, Err(why));
                    stuck = Some(row_no);
                    break;
                }
            }
        }
        if let Some(bad) = stuck {
            for _ in read..rows {
                row_no += 1;
                f(row_no, Err(format!("not read: row {bad}, earlier in its row group, could not be read, and the Parquet record reader cannot go on past it in that group")));
            }
        }
    }
    Ok(())
}

/// A row as a JSON object; byte arrays as strings, or an error where one is not UTF-8.
fn row_json(row: &parquet::record::Row) -> Result<serde_json::Value, String> {
    row.get_column_iter().map(|(name, field)| Ok((name.clone(), field_json(field)?))).collect::<Result<serde_json::Map<_, _>, String>>().map(serde_json::Value::Object)
}

fn field_json(field: &parquet::record::Field) -> Result<serde_json::Value, String> {
    use parquet::record::Field;
    use serde_json::Value;
    Ok(match field {
        Field::Bytes(b) => Value::String(String::from_utf8(b.data().to_vec()).map_err(|_| "a text value that is not valid UTF-8".to_string())?),
        Field::Group(row) => row_json(row)?,
        Field::ListInternal(list) => Value::Array(list.elements().iter().map(field_json).collect::<Result<_, _>>()?),
        Field::MapInternal(map) => Value::Object(
            map.entries()
                .iter()
                .map(|(k, v)| {
                    let key = match field_json(k)? {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    Ok((key, field_json(v)?))
                })
                .collect::<Result<_, String>>()?,
        ),
        // Numbers, booleans, nulls, dates: parquet's own JSON form.
        other => other.to_json_value(),
    })
}

/// Whether `path` names a Parquet file (by its extension, as the hub names them).
pub fn is_parquet(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

/// Writes a Parquet file of nullable string columns `names` (snappy pages), one row group per
/// item of `groups`, each a list of rows of one value per column (`None`: null). For tests and
/// for turning other data into what the hub ships; through a temporary name, renamed at the end.
pub fn write_string_columns(path: &Path, names: &[&str], groups: &[Vec<Vec<Option<Vec<u8>>>>]) -> Result<(), DataError> {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    let bad = |e: parquet::errors::ParquetError| invalid(path, format!("writing Parquet: {e}"));
    if let Some(row) = groups.iter().flatten().find(|r| r.len() != names.len()) {
        return Err(invalid(path, format!("a row of {} values for {} columns", row.len(), names.len())));
    }
    let fields: String = names.iter().map(|n| format!("optional binary {n} (UTF8);")).collect();
    let schema = std::sync::Arc::new(parquet::schema::parser::parse_message_type(&format!("message doc {{ {fields} }}")).map_err(bad)?);
    let props = std::sync::Arc::new(WriterProperties::builder().set_compression(parquet::basic::Compression::SNAPPY).build());
    let tmp = path.with_extension("parquet.tmp");
    let file = std::fs::File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
    let mut w = SerializedFileWriter::new(file, schema, props).map_err(bad)?;
    for rows in groups {
        let mut g = w.next_row_group().map_err(bad)?;
        for c in 0..names.len() {
            let mut col = g.next_column().map_err(bad)?.expect("one writer per column");
            let defs: Vec<i16> = rows.iter().map(|r| r[c].is_some() as i16).collect();
            let values: Vec<ByteArray> = rows.iter().filter_map(|r| r[c].clone()).map(ByteArray::from).collect();
            col.typed::<ByteArrayType>().write_batch(&values, Some(&defs), None).map_err(bad)?;
            col.close().map_err(bad)?;
        }
        g.close().map_err(bad)?;
    }
    w.close().map_err(bad)?;
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn row_groups_come_back_in_order_with_nulls_and_raw_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let row = |t: Option<&[u8]>, p: &str| vec![t.map(<[u8]>::to_vec), Some(p.as_bytes().to_vec())];
        super::write_string_columns(&path, &["content", "path"], &[vec![row(Some(b"a"), "x.py"), row(None, "y.py")], vec![row(Some(b"\xff\xfe"), "z.py")]]).unwrap();
        let mut seen = Vec::new();
        super::for_each_row_group(&path, &["content", "path"], |first, cols| {
            seen.push((first, cols));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!((seen[0].0, seen[1].0), (0, 2));
        assert_eq!(seen[0].1[0], vec![Some(b"a".to_vec()), None]);
        assert_eq!(seen[1].1[0], vec![Some(b"\xff\xfe".to_vec())]);
        assert_eq!(seen[1].1[1], vec![Some(b"z.py".to_vec())]);
        let e = super::for_each_row_group(&path, &["text"], |_, _| Ok(())).unwrap_err().to_string();
        assert!(e.contains("t.parquet") && e.contains("no column `text`") && e.contains("content, path"), "{e}");
        std::fs::write(dir.path().join("bad.parquet"), b"not parquet at all").unwrap();
        let e = super::for_each_row_group(&dir.path().join("bad.parquet"), &["content"], |_, _| Ok(())).unwrap_err().to_string();
        assert!(e.contains("bad.parquet") && e.contains("not a readable Parquet file"), "{e}");
    }

    #[test]
    fn rows_as_json_with_a_bad_value_reported_and_the_next_row_group_read_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.parquet");
        let cell = |t: &[u8]| vec![Some(t.to_vec()), None];
        super::write_string_columns(&path, &["prompt", "chosen"], &[vec![cell(b"a"), cell(b"\xff"), cell(b"c")], vec![cell(b"d")]]).unwrap();
        let mut seen = Vec::new();
        super::for_each_row(&path, |row, value| seen.push((row, value))).unwrap();
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[0], (1, Ok(serde_json::json!({"prompt": "a", "chosen": null}))));
        assert!(matches!(&seen[1], (2, Err(e)) if e.contains("not valid UTF-8")), "{seen:?}");
        assert!(matches!(&seen[2], (3, Err(e)) if e.contains("not read: row 2")), "{seen:?}");
        assert_eq!(seen[3], (4, Ok(serde_json::json!({"prompt": "d", "chosen": null}))));
    }
}
