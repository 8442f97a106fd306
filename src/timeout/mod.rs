//! Timeouts: give up on a call that takes too long.
//!
//! Use one inside a retry layer for each attempt and one outside it for the whole call. A timed
//! out call is a failure for every classifier: in error mode it fails with [`Elapsed`]; in
//! response mode an HTTP server answers `504 Gateway Timeout` (problem+json) and a gRPC server a
//! trailers-only response with `grpc-status: 4` (DEADLINE_EXCEEDED), honouring the client's
//! `grpc-timeout` when it is shorter. A zero timeout is refused with a
//! [`ConfigError`](crate::ConfigError).
//!
//! A timeout passes its [`Deadline`] down to the layers it encloses: an attempt timeout inside
//! never waits past the total timeout outside (it shrinks to the time left), and a retry layer
//! between them gives up ([`GiveUp::Deadline`](crate::retry::GiveUp::Deadline)) rather than
//! sleep or start an attempt that cannot finish in time.
//!
//! ```
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_rampart::timeout::{Elapsed, TimeoutLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower_rampart::BoxError> {
//! let mut svc = ServiceBuilder::new()
//!     .layer(TimeoutLayer::new(Duration::from_secs(1))?)
//!     .service_fn(|_: ()| async {
//!         tokio::time::sleep(Duration::from_secs(5)).await;
//!         Ok::<_, std::convert::Infallible>("late")
//!     });
//! let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
//! assert_eq!(err.downcast_ref::<Elapsed>().unwrap().after(), Duration::from_secs(1));
//! # Ok(())
//! # }
//! ```

mod deadline;
mod error;
mod future;
mod grpc_timeout;
mod layer;
mod service;

pub use deadline::Deadline;
pub use error::{Elapsed, TIMEOUT_PROBLEM_TYPE};
pub use future::ResponseFuture;
pub use grpc_timeout::parse_grpc_timeout;
pub use layer::TimeoutLayer;
pub use service::Timeout;
