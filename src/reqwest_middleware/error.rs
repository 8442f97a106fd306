//! Errors in and out: what the tower stack returns, as `reqwest_middleware::Error`.

use std::fmt;

use ::reqwest_middleware::Error;

use crate::{BoxError, circuit_breaker::CircuitOpen, timeout::Elapsed};

/// An error of a middleware further in the chain, carried through the tower stack and handed
/// back as it came (`Error::Middleware` with the same `anyhow::Error`).
///
/// Its source is the original error, so classifiers that walk error chains (error names in
/// retry policies) see through it.
pub(crate) struct InnerMiddlewareError(pub(crate) anyhow::Error);

impl fmt::Debug for InnerMiddlewareError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for InnerMiddlewareError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for InnerMiddlewareError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(AsRef::<dyn std::error::Error + Send + Sync>::as_ref(
            &self.0,
        ))
    }
}

/// `err` as `reqwest_middleware` reports errors: a `reqwest::Error` stays `Error::Reqwest`, an
/// inner middleware's error comes back as it was, and the crate's own errors (`CircuitOpen`,
/// `Elapsed`) become `Error::Middleware` with an `anyhow::Error` they downcast from. Anything
/// else (a user layer's error) is `Error::Middleware` of the box:
/// `downcast_ref::<BoxError>()`, then the type.
pub(crate) fn into_middleware_error(err: BoxError) -> Error {
    let err = match err.downcast::<reqwest::Error>() {
        Ok(e) => return Error::Reqwest(*e),
        Err(err) => err,
    };
    let err = match err.downcast::<InnerMiddlewareError>() {
        Ok(e) => return Error::Middleware(e.0),
        Err(err) => err,
    };
    macro_rules! own {
        ($err:ident: $($ty:ty),*) => {$(
            let $err = match $err.downcast::<$ty>() {
                Ok(e) => return Error::Middleware(anyhow::Error::new(*e)),
                Err(err) => err,
            };
        )*};
    }
    own!(err: CircuitOpen, Elapsed);
    #[cfg(feature = "chaos")]
    own!(err: crate::chaos::Injected);
    Error::Middleware(anyhow::Error::from_boxed(err))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_crate_errors_downcast_from_the_anyhow_error() {
        let elapsed: BoxError = Box::new(Elapsed::new(Duration::from_millis(5)));
        let Error::Middleware(e) = into_middleware_error(elapsed) else {
            panic!("a middleware error")
        };
        assert_eq!(
            e.downcast_ref::<Elapsed>().unwrap().after(),
            Duration::from_millis(5)
        );
    }

    #[test]
    fn an_inner_middleware_error_comes_back_as_it_was() {
        let original = anyhow::anyhow!("inner said no");
        let ptr = format!("{original:?}");
        let boxed: BoxError = Box::new(InnerMiddlewareError(original));
        let Error::Middleware(e) = into_middleware_error(boxed) else {
            panic!("a middleware error")
        };
        assert_eq!(format!("{e:?}"), ptr);
    }

    #[test]
    fn other_errors_stay_reachable_through_the_box() {
        #[derive(Debug)]
        struct Mine;
        impl fmt::Display for Mine {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("mine")
            }
        }
        impl std::error::Error for Mine {}
        let Error::Middleware(e) = into_middleware_error(Box::new(Mine)) else {
            panic!("a middleware error")
        };
        assert_eq!(e.to_string(), "mine");
        let boxed = e.downcast_ref::<BoxError>().expect("the box");
        assert!(boxed.downcast_ref::<Mine>().is_some());
    }
}
