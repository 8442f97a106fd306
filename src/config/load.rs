//! From text to typed settings: YAML or TOML to a JSON value, then serde with the path of the
//! field at fault kept for the error, in words an operator can act on (see [`plain`]).

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::Error;

/// What a whole file (or value) must hold, for errors about its shape.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// What it is, for "the file is empty" messages: `a registry file`.
    pub(crate) what: &'static str,
    /// What it must hold: `` `policies` (one per downstream) and, optionally, `defaults` ``.
    pub(crate) holds: &'static str,
}

pub(crate) const REGISTRY: Shape = Shape {
    what: "a registry file",
    holds: "`policies` (one per downstream) and, optionally, `defaults`",
};

pub(crate) const POLICY: Shape = Shape {
    what: "a policy file",
    holds: "sections such as `circuit_breaker`, `retry`, `timeout`",
};

/// Deserializes `value`, naming the path of the field that did not fit.
pub(crate) fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, Error> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let message = plain(&e.into_inner().to_string());
        Error::at(path, message)
    })
}

/// Deserializes a whole document, which must be a mapping: serde would otherwise read a list
/// as the struct's fields in order, and a string says nothing of what was expected.
pub(crate) fn document<T: DeserializeOwned>(value: Value, shape: Shape) -> Result<T, Error> {
    if !value.is_object() {
        return Err(Error::at(
            "",
            format!(
                "the file must be a mapping with {}; this one holds {}",
                shape.holds,
                Got::of(&value)
            ),
        ));
    }
    from_value(value)
}

/// An empty document (nothing but blanks and comments): a wrong path or a truncated write,
/// never meant as "no policies".
fn empty(shape: Shape) -> Error {
    Error::at(
        "",
        format!(
            "the file is empty (or holds only comments): {} holds {}",
            shape.what, shape.holds
        ),
    )
}

/// A YAML document as a value. Syntax errors carry line and column.
#[cfg(feature = "yaml")]
pub(crate) fn yaml(text: &str, shape: Shape) -> Result<Value, Error> {
    let e = match serde_saphyr::from_str::<Value>(text) {
        Ok(Value::Null) => return Err(empty(shape)),
        Ok(v) if !v.is_object() && looks_like_toml(text) => return Err(toml_to_yaml()),
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    if let serde_saphyr::Error::DuplicateMappingKey {
        key: Some(key),
        location,
    } = e.without_snippet()
    {
        return Err(duplicate(text, key, location.line(), location.column()));
    }
    if looks_like_toml(text) {
        return Err(toml_to_yaml());
    }
    Err(Error::at("", format!("invalid YAML: {e}")))
}

#[cfg(feature = "yaml")]
fn toml_to_yaml() -> Error {
    Error::at(
        "",
        "this looks like TOML, not YAML (`[section]` headers, `key = value` lines): load it \
         with `from_toml` (or `reload_toml`)",
    )
}

/// A TOML document as a value.
#[cfg(feature = "toml")]
pub(crate) fn toml(text: &str, shape: Shape) -> Result<Value, Error> {
    match toml::from_str::<Value>(text) {
        Ok(Value::Object(m)) if m.is_empty() => Err(empty(shape)),
        Ok(v) => Ok(v),
        Err(_) if looks_like_yaml(text) => Err(Error::at(
            "",
            "this looks like YAML, not TOML (`key: value` lines): load it with `from_yaml` (or \
             `reload_yaml`)",
        )),
        // The document goes to a JSON value, whose limit is not the file's business.
        Err(e) => Err(Error::at(
            "",
            format!("invalid TOML: {e}").replace("JSON number out of range", "number too large"),
        )),
    }
}

/// The lines that are neither blank nor comments.
fn content_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// A bare or dotted key, as both formats write them unquoted.
fn is_key(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"' | '\''))
}

/// `[section]` or `[[section]]` headers, or `key = value` lines.
#[cfg(feature = "yaml")]
fn looks_like_toml(text: &str) -> bool {
    content_lines(text).any(|l| {
        let header = l
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'));
        let assignment = l.split_once('=').map(|(k, _)| k.trim());
        header.is_some_and(is_key) || assignment.is_some_and(is_key)
    })
}

/// `key:` lines, or `- item` lines.
#[cfg(feature = "toml")]
fn looks_like_yaml(text: &str) -> bool {
    content_lines(text).any(|l| {
        l.starts_with("- ") || l.split_once(':').is_some_and(|(k, _)| is_key(k.trim_end()))
    })
}

/// A key written twice in one mapping: which key, and both lines (YAML only names the second).
#[cfg(feature = "yaml")]
fn duplicate(text: &str, key: &str, line: u64, column: u64) -> Error {
    let first = first_occurrence(text, key, line, column);
    let lines = match first {
        Some(l) if l == line => format!("twice on line {line}"),
        Some(l) => format!("twice in one mapping, on line {l} and line {line}"),
        None => format!("twice in one mapping (the second time on line {line})"),
    };
    Error::at("", format!("`{key}` is written {lines}: keep one"))
}

/// The line where `key` first appears in the mapping whose second `key` is at `line`:`column`
/// (1-based): the nearest line above at the same indentation that starts with the key, before
/// the mapping began; else earlier on the same line (a flow mapping).
#[cfg(feature = "yaml")]
fn first_occurrence(text: &str, key: &str, line: u64, column: u64) -> Option<u64> {
    let lines: Vec<&str> = text.lines().collect();
    let starts_with_key = |s: &str| {
        [key.to_owned(), format!("\"{key}\""), format!("'{key}'")]
            .iter()
            .any(|k| {
                s.strip_prefix(k.as_str())
                    .is_some_and(|r| r.trim_start().starts_with(':'))
            })
    };
    let at = usize::try_from(line).ok()?.checked_sub(1)?;
    let column = usize::try_from(column).ok()?.checked_sub(1)?;
    for (i, l) in lines.get(..at)?.iter().enumerate().rev() {
        let trimmed = l.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        // The key's column, past any `- ` of a sequence item.
        let mut rest = trimmed;
        while let Some(r) = rest.strip_prefix("- ") {
            rest = r.trim_start();
        }
        let key_column = l.len() - rest.len();
        if key_column == column && starts_with_key(rest) {
            return Some(i as u64 + 1);
        }
        if key_column < column {
            break;
        }
    }
    let same = lines.get(at)?;
    let before = same.get(..column)?;
    before
        .match_indices(key)
        .any(|(i, _)| {
            let prev = before[..i].trim_end().chars().last();
            matches!(prev, Some('{' | ',')) && starts_with_key(&before[i..])
        })
        .then_some(line)
}

/// Serde's "invalid type: string \"half\", expected f64" in an operator's words: "must be a
/// number, got \"half\"". Other messages pass through.
pub(crate) fn plain(message: &str) -> String {
    let Some(rest) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
    else {
        return message.to_owned();
    };
    let Some((got, expected)) = rest.split_once(", expected ") else {
        return message.to_owned();
    };
    let Some(expected) = expected_in_words(expected) else {
        return message.to_owned();
    };
    format!("must be {expected}, got {}", got_in_words(got))
}

/// Serde's name of an expected type, in words; `None` when already in words.
fn expected_in_words(expected: &str) -> Option<String> {
    let whole = |max: u128| format!("a whole number from 0 to {max}");
    let signed = |min: i128, max: i128| format!("a whole number from {min} to {max}");
    Some(match expected {
        "u8" => whole(u8::MAX.into()),
        "u16" => whole(u16::MAX.into()),
        "u32" => whole(u32::MAX.into()),
        "u64" => whole(u64::MAX.into()),
        "usize" => whole(usize::MAX as u128),
        "i32" => signed(i32::MIN.into(), i32::MAX.into()),
        "i64" => signed(i64::MIN.into(), i64::MAX.into()),
        "f32" | "f64" => "a number".to_owned(),
        "a boolean" => "`true` or `false`".to_owned(),
        "a string" => "text".to_owned(),
        "a sequence" => "a list".to_owned(),
        "a map" => "a mapping of keys".to_owned(),
        "struct RegistrySettings" => format!("a mapping with {}", REGISTRY.holds),
        "struct PolicySettings" => format!("a mapping with {}", POLICY.holds),
        other => {
            let name = other.strip_prefix("struct ")?.strip_suffix("Settings")?;
            format!("a mapping of {} settings", name.to_lowercase())
        }
    })
}

/// Serde's account of what it found (`floating point \`1e20\``), in words.
fn got_in_words(got: &str) -> String {
    let quoted = |prefix: &str| {
        got.strip_prefix(prefix)
            .and_then(|g| g.strip_prefix('`'))
            .and_then(|g| g.strip_suffix('`'))
    };
    if let Some(n) = quoted("integer ") {
        return n.to_owned();
    }
    if let Some(f) = quoted("floating point ") {
        // A whole number too large for the setting arrives as a float: write it out in full.
        return match f.parse::<f64>() {
            Ok(v) if v.fract() == 0.0 && v.abs() < 1e30 => format!("{v:.0}"),
            _ => f.to_owned(),
        };
    }
    if let Some(b) = quoted("boolean ") {
        return b.to_owned();
    }
    if let Some(s) = got.strip_prefix("string ") {
        return s.to_owned();
    }
    match got {
        "sequence" => "a list".to_owned(),
        "map" => "a mapping".to_owned(),
        "unit value" | "null" => "nothing".to_owned(),
        other => other.to_owned(),
    }
}

/// What a whole document holds, for shape errors.
struct Got<'a>(&'a Value);

impl Got<'_> {
    fn of(value: &Value) -> Got<'_> {
        Got(value)
    }
}

impl std::fmt::Display for Got<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Value::Null => f.write_str("nothing"),
            Value::Bool(b) => write!(f, "`{b}`"),
            Value::Number(n) => write!(f, "a number ({n})"),
            Value::String(s) => {
                let short: String = s.chars().take(60).collect();
                let more = if short.len() < s.len() { "..." } else { "" };
                write!(f, "a string ({short:?}{more})")
            }
            Value::Array(_) => f.write_str("a list"),
            Value::Object(_) => f.write_str("a mapping"),
        }
    }
}

/// The `from_yaml`, `from_toml` and `from_value` constructors of a settings type.
macro_rules! loaders {
    ($what:literal, $shape:expr) => {
        #[doc = concat!("Loads ", $what, " from a YAML document (feature `yaml`).")]
        ///
        /// # Errors
        ///
        /// A [`config::Error`](crate::config::Error) naming the path of the field at fault: a
        /// syntax error, an empty file, an unknown field, a value of the wrong type or one a
        /// builder refuses.
        #[cfg(feature = "yaml")]
        pub fn from_yaml(text: &str) -> Result<Self, crate::config::Error> {
            Self::from_value(crate::config::load::yaml(text, $shape)?)
        }

        #[doc = concat!("Loads ", $what, " from a TOML document (feature `toml`).")]
        ///
        /// # Errors
        ///
        /// As [`from_yaml`](Self::from_yaml).
        #[cfg(feature = "toml")]
        pub fn from_toml(text: &str) -> Result<Self, crate::config::Error> {
            Self::from_value(crate::config::load::toml(text, $shape)?)
        }
    };
}

pub(crate) use loaders;
