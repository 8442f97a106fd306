//! Macros shared by the layers.

/// `get_ref`, `get_mut` and `into_inner` for a service whose wrapped service is the field
/// `inner` of type `S`, as tower's services have them.
macro_rules! inner_service_accessors {
    () => {
        /// The wrapped service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The wrapped service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// Unwraps the service.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}

/// The `Future` impls of a layer's future `$future<F, M>` in the three modes, from a function
/// `$poll(self, cx) -> Poll<Result<F::Output, X>>` where `X: ModeAnswer`: the inner call's
/// output (its error boxed in `ReturnError` mode), or `X` answered the mode's way.
macro_rules! mode_futures {
    ($future:ident, $poll:ident) => {
        impl<F, T, E> ::std::future::Future for $future<F, $crate::mode::ReturnError>
        where
            F: ::std::future::Future<Output = Result<T, E>>,
            E: Into<$crate::BoxError>,
        {
            type Output = Result<T, $crate::BoxError>;

            #[inline]
            fn poll(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<Self::Output> {
                $poll(self, cx).map(|r| match r {
                    Ok(out) => out.map_err(Into::into),
                    Err(answer) => Err($crate::mode::ModeAnswer::into_error(answer)),
                })
            }
        }

        mode_futures!(@respond $future, $poll, RespondHttp, $crate::mode::ResponseBody, into_http);
        mode_futures!(@respond $future, $poll, RespondGrpc, Default, into_grpc);
    };
    // A respond mode `$mode`, for response bodies `$body`, answering with `ModeAnswer::$into`.
    (@respond $future:ident, $poll:ident, $mode:ident, $body:path, $into:ident) => {
        impl<F, B, E> ::std::future::Future for $future<F, $crate::mode::$mode>
        where
            F: ::std::future::Future<Output = Result<::http::Response<B>, E>>,
            B: $body,
        {
            type Output = Result<::http::Response<B>, E>;

            #[inline]
            fn poll(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<Self::Output> {
                $poll(self, cx).map(|r| match r {
                    Ok(out) => out,
                    Err(answer) => Ok($crate::mode::ModeAnswer::$into(answer)),
                })
            }
        }
    };
}
