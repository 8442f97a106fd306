//! From text to typed settings: YAML or TOML to a JSON value, then serde with the path of the
//! field at fault kept for the error.

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::Error;

/// Deserializes `value`, naming the path of the field that did not fit.
pub(crate) fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, Error> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        Error::at(path, e.into_inner().to_string())
    })
}

/// A YAML document as a value. Syntax errors carry line and column.
#[cfg(feature = "yaml")]
pub(crate) fn yaml(text: &str) -> Result<Value, Error> {
    serde_saphyr::from_str::<Value>(text)
        .map_err(|e| Error::at("", format!("invalid YAML: {e}")))
        .map(|v| {
            if v.is_null() {
                Value::Object(Default::default())
            } else {
                v
            }
        })
}

/// A TOML document as a value.
#[cfg(feature = "toml")]
pub(crate) fn toml(text: &str) -> Result<Value, Error> {
    toml::from_str::<Value>(text).map_err(|e| Error::at("", format!("invalid TOML: {e}")))
}

/// The `from_yaml`, `from_toml` and `from_value` constructors of a settings type.
macro_rules! loaders {
    ($what:literal) => {
        #[doc = concat!("Loads ", $what, " from a YAML document (feature `yaml`).")]
        ///
        /// # Errors
        ///
        /// A [`config::Error`](crate::config::Error) naming the path of the field at fault: a
        /// syntax error, an unknown field, a value of the wrong type or one a builder refuses.
        #[cfg(feature = "yaml")]
        pub fn from_yaml(text: &str) -> Result<Self, crate::config::Error> {
            Self::from_value(crate::config::load::yaml(text)?)
        }

        #[doc = concat!("Loads ", $what, " from a TOML document (feature `toml`).")]
        ///
        /// # Errors
        ///
        /// As [`from_yaml`](Self::from_yaml).
        #[cfg(feature = "toml")]
        pub fn from_toml(text: &str) -> Result<Self, crate::config::Error> {
            Self::from_value(crate::config::load::toml(text)?)
        }
    };
}

pub(crate) use loaders;
