//! The chaos future: the call, the call after a delay, an injected answer, or nothing ever.

use std::{
    future::Future,
    marker::PhantomData,
    pin::Pin,
    task::{Context, Poll},
};

use http::Response;
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::{Fault, Injected};
use crate::{
    BoxError,
    mode::{ModeAnswer, ResponseBody},
};

pin_project! {
    /// The future of [`Chaos`](super::Chaos): the inner call, the inner call after an
    /// injected delay, an injected answer, or (for an aborted call) nothing until dropped. No
    /// allocation, whatever the fault.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use tower::{Layer, Service, service_fn};
    /// use tower_rampart::{chaos::{ChaosLayer, Config, ResponseFuture}, mode::ReturnError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_rampart::BoxError> {
    /// let mut svc = ChaosLayer::new(Config::builder().build()?)
    ///     .layer(service_fn(|n: u8| async move { Ok::<_, Infallible>(n) }));
    /// let fut: ResponseFuture<_, ReturnError> = svc.call(3);
    /// assert_eq!(fut.await?, 3);
    /// # Ok(())
    /// # }
    /// ```
    pub struct ResponseFuture<F, M> {
        #[pin]
        state: State<F>,
        _mode: PhantomData<fn() -> M>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // No fault: the call.
        Call { #[pin] inner: F },
        // Latency: the call, first polled once the sleep is over.
        Delay { #[pin] sleep: Sleep, #[pin] inner: F },
        // A fault answered without the call (taken when it completes).
        Inject { injected: Option<Injected> },
        // Never completes.
        Abort,
    }
}

impl<F, M> ResponseFuture<F, M> {
    #[inline]
    pub(crate) fn call(inner: F) -> Self {
        Self::of(State::Call { inner })
    }

    pub(crate) fn injected(injected: Injected, call: impl FnOnce() -> F) -> Self {
        Self::of(match injected.fault() {
            Fault::Latency(d) => State::Delay {
                sleep: tokio::time::sleep(*d),
                inner: call(),
            },
            Fault::Abort => State::Abort,
            _ => State::Inject {
                injected: Some(injected),
            },
        })
    }

    fn of(state: State<F>) -> Self {
        ResponseFuture {
            state,
            _mode: PhantomData,
        }
    }
}

fn step<F: Future, M>(
    this: Pin<&mut ResponseFuture<F, M>>,
    cx: &mut Context<'_>,
) -> Poll<Result<F::Output, Injected>> {
    match this.project().state.project() {
        StateProj::Call { inner } => inner.poll(cx).map(Ok),
        StateProj::Delay { sleep, inner } => {
            if sleep.poll(cx).is_pending() {
                return Poll::Pending;
            }
            inner.poll(cx).map(Ok)
        }
        StateProj::Inject { injected } => Poll::Ready(Err(injected
            .take()
            .expect("chaos future polled after completion"))),
        StateProj::Abort => Poll::Pending,
    }
}

impl ModeAnswer for Injected {
    #[inline]
    fn into_error(self) -> BoxError {
        self.into()
    }

    #[inline]
    fn into_http<B: ResponseBody>(self) -> Response<B> {
        self.to_http_response()
    }

    #[inline]
    fn into_grpc<B: Default>(self) -> Response<B> {
        self.to_grpc_response()
    }
}

mode_futures!(ResponseFuture, step);
