//! `tojson` as transformers defines it for chat templates: Python's `json.dumps(x,
//! ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)`. minijinja's
//! own `tojson` escapes `<`, `>`, `&` and `'` for HTML and never puts a space after `,` or `:`, so
//! a template that writes its tools with `tojson` would render other text than the model was
//! trained on.

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, Value};

/// The filter: `{{ tools | tojson }}`, `{{ x | tojson(indent=4) }}`.
pub fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match (v.as_i64(), v.as_str()) {
            (Some(n), _) => Some(" ".repeat(n.max(0) as usize)),
            (None, Some(s)) => Some(s.to_string()),
            _ => return Err(Error::new(ErrorKind::InvalidOperation, "tojson: indent must be an integer or a string")),
        },
    };
    // Python's defaults: `, ` and `: ` on one line, `,` and `: ` when indenting.
    let (item, key) = match separators {
        Some(s) if !s.is_none() => {
            let parts: Vec<Value> = s.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] if a.as_str().is_some() && b.as_str().is_some() => (a.as_str().unwrap().to_string(), b.as_str().unwrap().to_string()),
                _ => return Err(Error::new(ErrorKind::InvalidOperation, "tojson: separators must be two strings")),
            }
        }
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let mut w = Writer { out: String::new(), indent, item, key, ensure_ascii: ensure_ascii.unwrap_or(false), sort_keys: sort_keys.unwrap_or(false) };
    w.value(&value, 0)?;
    Ok(Value::from_safe_string(w.out))
}

struct Writer {
    out: String,
    indent: Option<String>,
    item: String,
    key: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

impl Writer {
    fn newline(&mut self, level: usize) {
        if let Some(unit) = &self.indent {
            self.out.push('\n');
            for _ in 0..level {
                self.out.push_str(unit);
            }
        }
    }

    fn value(&mut self, v: &Value, level: usize) -> Result<(), Error> {
        match v.kind() {
            ValueKind::None => self.out.push_str("null"),
            ValueKind::Undefined => return Err(Error::new(ErrorKind::UndefinedError, "tojson: the value is undefined")),
            ValueKind::Bool => self.out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => self.number(v),
            ValueKind::String => self.string(v.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.seq(&items, level)?;
            }
            ValueKind::Map => {
                let mut pairs = Vec::new();
                for k in v.try_iter()? {
                    let item = v.get_item(&k)?;
                    pairs.push((key_text(&k)?, item));
                }
                if self.sort_keys {
                    pairs.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.map(&pairs, level)?;
            }
            kind => return Err(Error::new(ErrorKind::InvalidOperation, format!("tojson: a {kind} is not JSON"))),
        }
        Ok(())
    }

    fn seq(&mut self, items: &[Value], level: usize) -> Result<(), Error> {
        if items.is_empty() {
            self.out.push_str("[]");
            return Ok(());
        }
        self.out.push('[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                let sep = self.item.clone();
                self.out.push_str(&sep);
            }
            self.newline(level + 1);
            self.value(item, level + 1)?;
        }
        self.newline(level);
        self.out.push(']');
        Ok(())
    }

    fn map(&mut self, pairs: &[(String, Value)], level: usize) -> Result<(), Error> {
        if pairs.is_empty() {
            self.out.push_str("{}");
            return Ok(());
        }
        self.out.push('{');
        for (i, (k, item)) in pairs.iter().enumerate() {
            if i > 0 {
                let sep = self.item.clone();
                self.out.push_str(&sep);
            }
            self.newline(level + 1);
            self.string(k);
            let sep = self.key.clone();
            self.out.push_str(&sep);
            self.value(item, level + 1)?;
        }
        self.newline(level);
        self.out.push('}');
        Ok(())
    }

    fn number(&mut self, v: &Value) {
        if let Some(i) = v.as_i64() {
            // An integer, or a float that holds one exactly: minijinja keeps the kind apart.
            if v.is_integer() {
                self.out.push_str(&i.to_string());
                return;
            }
        }
        match f64::try_from(v.clone()) {
            Ok(f) => self.out.push_str(&python_float(f)),
            Err(_) => self.out.push_str(&v.to_string()),
        }
    }

    fn string(&mut self, s: &str) {
        self.out.push('"');
        for c in s.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                '\t' => self.out.push_str("\\t"),
                '\u{8}' => self.out.push_str("\\b"),
                '\u{c}' => self.out.push_str("\\f"),
                c if (c as u32) < 0x20 => self.out.push_str(&format!("\\u{:04x}", c as u32)),
                // Python's ensure_ascii escapes all but ' ' to '~' (DEL too).
                c if self.ensure_ascii && (c as u32) > 0x7e => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        self.out.push_str(&format!("\\u{u:04x}"));
                    }
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }
}

/// A dict key as `json.dumps` writes it: strings as they are, numbers, booleans and `None` as
/// their JSON text.
fn key_text(k: &Value) -> Result<String, Error> {
    match k.kind() {
        ValueKind::String => Ok(k.as_str().unwrap_or_default().to_string()),
        ValueKind::Bool => Ok(if k.is_true() { "true" } else { "false" }.into()),
        ValueKind::None => Ok("null".into()),
        ValueKind::Number if k.is_integer() => Ok(k.to_string()),
        ValueKind::Number => Ok(f64::try_from(k.clone()).map(python_float).unwrap_or_else(|_| k.to_string())),
        kind => Err(Error::new(ErrorKind::InvalidOperation, format!("tojson: keys must be str, int, float, bool or None, not {kind}"))),
    }
}

/// Python's `repr(float)` (what `json.dumps` writes): the shortest digits that read back to
/// the same value, positional from 1e-4 up to 1e16, else `d.ddde±XX`; `Infinity`, `NaN`.
pub fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // Rust's `{:e}` is the shortest round-trip digits: `d.ddde<exp>`.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` has an exponent");
    let exp: i32 = exp.parse().expect("`{:e}`'s exponent is an integer");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if f < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let text = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
        };
        format!("{sign}{text}")
    } else {
        let mantissa = if digits.len() == 1 { digits } else { format!("{}.{}", &digits[..1], &digits[1..]) };
        format!("{sign}{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_read_as_python_writes_them() {
        for (f, py) in [(1.0, "1.0"), (0.1, "0.1"), (1e-5, "1e-05"), (1.5e-5, "1.5e-05"), (123456.0, "123456.0"), (1e16, "1e+16"), (1.2345e20, "1.2345e+20"), (0.0001, "0.0001"), (-2.5, "-2.5"), (1e15, "1000000000000000.0")] {
            assert_eq!(python_float(f), py, "{f}");
        }
    }
}
