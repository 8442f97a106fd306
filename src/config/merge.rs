//! Inheritance (a policy over the defaults) and settings with two spellings.

use super::{Error, error::join};

/// `mine` with every group of fields it leaves unset taken from `base`. A group is taken whole
/// (a policy that names a count window drops the defaults' time window, and a value written
/// under one spelling drops the defaults' other spelling).
macro_rules! inherit {
    ($mine:expr, $base:expr; $([$($field:ident),+])*) => {{
        let (mine, base) = ($mine, $base);
        let mut out = mine.clone();
        $(
            if true $(&& mine.$field.is_none())+ {
                $(out.$field = base.$field.clone();)+
            }
        )*
        out
    }};
}

pub(crate) use inherit;

/// The value of a setting that may be written under two keys, with the key used; both at once
/// is an error (they would contradict each other or repeat).
pub(crate) fn either<'a, T>(
    section: &str,
    a: (&'a Option<T>, &'static str),
    b: (&'a Option<T>, &'static str),
) -> Result<Option<(&'a T, &'static str)>, Error> {
    match (a.0, b.0) {
        (Some(_), Some(_)) => Err(Error::at(
            join(section, b.1),
            format!("`{}` and `{}` are the same setting: give one", a.1, b.1),
        )),
        (Some(v), None) => Ok(Some((v, a.1))),
        (None, Some(v)) => Ok(Some((v, b.1))),
        (None, None) => Ok(None),
    }
}
