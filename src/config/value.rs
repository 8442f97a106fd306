//! Small value types of configuration files: a duration or `off`, and jitter.

use std::{fmt, time::Duration};

use humantime_serde::re::humantime;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::backoff::Jitter;

/// A duration, or `off` (also `false`) to turn the setting off.
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::config::Limit;
///
/// let on: Limit = serde_json::from_str("\"1m 30s\"").unwrap();
/// assert_eq!(on, Limit::After(Duration::from_secs(90)));
/// let off: Limit = serde_json::from_str("\"off\"").unwrap();
/// assert_eq!(off.duration(), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Turned off.
    Off,
    /// This long.
    After(Duration),
}

impl Limit {
    /// The duration, `None` when off.
    pub fn duration(self) -> Option<Duration> {
        match self {
            Limit::Off => None,
            Limit::After(d) => Some(d),
        }
    }
}

impl Serialize for Limit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Limit::Off => s.serialize_str("off"),
            Limit::After(d) => s.collect_str(&humantime::format_duration(*d)),
        }
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Limit;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\" or \"1500ms\", or \"off\"")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Limit, E> {
                if v {
                    Err(E::custom(
                        "`true` says nothing of how long: give a duration such as \"30s\", or \"off\"",
                    ))
                } else {
                    Ok(Limit::Off)
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Limit, E> {
                if v == "off" {
                    return Ok(Limit::Off);
                }
                parse(v).map(Limit::After).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Limit, E> {
                Err(E::custom(format!(
                    "{v} has no unit: write a duration such as \"{v}s\" or \"{v}ms\""
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Limit, E> {
                if v < 0 {
                    return Err(E::custom(format!(
                        "cannot be negative: write a duration such as \"30s\", got {v}"
                    )));
                }
                Err(E::custom(format!(
                    "{v} is not a duration: write one such as \"30s\""
                )))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Limit, E> {
                Err(E::custom(format!(
                    "{v} is not a duration: write one such as \"1.5s\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// A human duration (`30s`, `1m 30s`), at most [`MAX_DURATION`](crate::MAX_DURATION): longer
/// ones (and those too long for a `Duration` at all) are refused here, with the key, for every
/// duration of every file, whatever the builder the value goes to.
fn parse(v: &str) -> Result<Duration, String> {
    if v.trim_start().starts_with('-') {
        return Err(format!(
            "cannot be negative: write a duration such as \"5s\", got {v:?}"
        ));
    }
    match humantime::parse_duration(v) {
        Ok(d) if d <= crate::MAX_DURATION => Ok(d),
        // Named as written (`1000000000y` says more than its count of days), and so is a
        // duration too long for a `Duration` at all.
        Ok(_) | Err(humantime::DurationError::NumberOverflow) => {
            Err(format!("must be at most one year (365 days), got {v:?}"))
        }
        Err(e) => Err(format!("invalid duration {v:?}: {e}")),
    }
}

/// How retry delays are randomised, as written in configuration files: `true` (full jitter),
/// `false` or `none`, `full`, `equal`, `decorrelated`, or a fraction such as `0.2` (each delay
/// within ±20 %).
///
/// ```
/// use tower_rampart::{backoff::Jitter, config::JitterSetting};
///
/// let j: JitterSetting = serde_json::from_str("true").unwrap();
/// assert_eq!(j.jitter(), Jitter::Full);
/// let j: JitterSetting = serde_json::from_str("0.2").unwrap();
/// assert_eq!(j.jitter(), Jitter::Proportional(200));
/// assert!(serde_json::from_str::<JitterSetting>("\"wobbly\"").is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterSetting(Jitter);

impl JitterSetting {
    /// The jitter.
    pub fn jitter(self) -> Jitter {
        self.0
    }
}

impl From<Jitter> for JitterSetting {
    fn from(j: Jitter) -> Self {
        JitterSetting(j)
    }
}

impl Serialize for JitterSetting {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Jitter::None => s.serialize_str("none"),
            Jitter::Full => s.serialize_str("full"),
            Jitter::Equal => s.serialize_str("equal"),
            Jitter::Decorrelated => s.serialize_str("decorrelated"),
            Jitter::Proportional(p) => s.serialize_f64(f64::from(p) / 1000.0),
        }
    }
}

impl<'de> Deserialize<'de> for JitterSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = JitterSetting;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false, none, full, equal, decorrelated or a fraction in (0, 1]")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(JitterSetting(if v { Jitter::Full } else { Jitter::None }))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(JitterSetting(match v {
                    "none" => Jitter::None,
                    "full" => Jitter::Full,
                    "equal" => Jitter::Equal,
                    "decorrelated" => Jitter::Decorrelated,
                    _ => return Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                if v > 0.0 && v <= 1.0 {
                    Ok(JitterSetting(Jitter::Proportional(
                        (v * 1000.0).round() as u16
                    )))
                } else {
                    Err(E::invalid_value(de::Unexpected::Float(v), &self))
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                self.visit_f64(v as f64)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                self.visit_f64(v as f64)
            }
        }
        d.deserialize_any(V)
    }
}

/// Serde helpers for `Option<Duration>` fields written as human durations (`30s`, `1500ms`,
/// `1m 30s`), parsed by `humantime` (through `humantime-serde`), with its reason when a value is
/// not one.
pub(crate) mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de};

    pub(crate) use humantime_serde::option::serialize;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        match Option::<super::Limit>::deserialize(d)? {
            None => Ok(None),
            Some(super::Limit::After(d)) => Ok(Some(d)),
            Some(super::Limit::Off) => Err(de::Error::custom(
                "this setting cannot be turned off: give a duration such as \"30s\"",
            )),
        }
    }
}

/// Serde helpers for lists of error names (`retry_on: [503, NetworkTimeout]`): an unquoted
/// status is a number to YAML and TOML, and is taken as the name it spells.
pub(crate) mod names {
    use std::fmt;

    use serde::{Deserialize, Deserializer, de};

    struct Name(String);

    impl<'de> Deserialize<'de> for Name {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl de::Visitor<'_> for V {
                type Value = Name;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("an error name such as \"NetworkTimeout\", \"5xx\" or 503")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Name, E> {
                    Ok(Name(v.to_owned()))
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<Name, E> {
                    Ok(Name(v.to_string()))
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<Name, E> {
                    Ok(Name(v.to_string()))
                }
            }
            d.deserialize_any(V)
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<String>>, D::Error> {
        let names = Option::<Vec<Name>>::deserialize(d)?;
        Ok(names.map(|n| n.into_iter().map(|n| n.0).collect()))
    }
}
