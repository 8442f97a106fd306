//! Error names from configuration (`retryable_exceptions: ["NetworkTimeout", ...]`) turned into
//! classification: every standard name against responses and errors, a user's `NamedError`
//! found through boxes and `source()` chains, unknown names refused with a suggestion, and a
//! real reqwest client retrying by name against an axum server.

mod common;

use std::{
    convert::Infallible,
    fmt,
    io::{self, ErrorKind},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use axum::{Router, http::StatusCode, routing::get};
use common::{
    alloc::{Counting, allocations},
    http::{client, serve},
};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_rampart::{
    BoxError,
    backoff::Backoff,
    circuit_breaker::{CircuitBreakerLayer, Config},
    classify::{
        ByName, Classify, ErrorNames, GrpcCode, HttpStatus, InspectResponse, NameSet, NamedError,
        Outcome, TonicStatus,
    },
    replay::HttpReplay,
    retry::RetryLayer,
    timeout::TimeoutLayer,
};

#[global_allocator]
static GLOBAL: Counting = Counting;

fn set(names: &[&str]) -> NameSet {
    ErrorNames::default().compile(names).unwrap()
}

fn http(status: u16) -> http::Response<()> {
    http::Response::builder().status(status).body(()).unwrap()
}

fn grpc(code: GrpcCode) -> http::Response<()> {
    http::Response::builder()
        .header("grpc-status", (code as u8).to_string())
        .body(())
        .unwrap()
}

/// Every gRPC code, by number.
fn all_grpc_codes() -> Vec<GrpcCode> {
    (0..=16).map(GrpcCode::from_i32).collect()
}

/// The standard names and what they match: HTTP statuses and gRPC codes. Every other status in
/// 100..=599 and every other code must not match.
fn standard_table() -> Vec<(&'static [&'static str], Vec<u16>, Vec<GrpcCode>)> {
    use GrpcCode::*;
    vec![
        (
            &["NetworkTimeout", "Timeout"],
            vec![408, 504],
            vec![DeadlineExceeded],
        ),
        (&["ConnectionError", "NetworkError"], vec![], vec![]),
        (&["ServiceUnavailable"], vec![503], vec![Unavailable]),
        (
            &["TooManyRequests", "RateLimited"],
            vec![429],
            vec![ResourceExhausted],
        ),
        (
            &["ServerError"],
            (500..=599).collect(),
            vec![
                Internal,
                Unknown,
                DataLoss,
                Unavailable,
                Unimplemented,
                DeadlineExceeded,
            ],
        ),
        (
            &["ClientError"],
            (400..=499).collect(),
            vec![
                Cancelled,
                InvalidArgument,
                NotFound,
                AlreadyExists,
                PermissionDenied,
                ResourceExhausted,
                FailedPrecondition,
                Aborted,
                OutOfRange,
                Unauthenticated,
            ],
        ),
        (
            &["ValidationError", "BadRequest"],
            vec![400, 422],
            vec![InvalidArgument, OutOfRange, FailedPrecondition],
        ),
        (
            &["AuthenticationFailed", "Unauthorized"],
            vec![401],
            vec![Unauthenticated],
        ),
        (
            &["PermissionDenied", "Forbidden"],
            vec![403],
            vec![PermissionDenied],
        ),
        (&["NotFound"], vec![404], vec![NotFound]),
        (&["Conflict"], vec![409], vec![Aborted, AlreadyExists]),
        (&["CircuitOpen"], vec![], vec![]),
        (&["5xx", "5XX"], (500..=599).collect(), vec![]),
        (&["4xx"], (400..=499).collect(), vec![]),
        (&["2xx"], (200..=299).collect(), vec![]),
        (&["503"], vec![503], vec![]),
        (&["100"], vec![100], vec![]),
        (&["599"], vec![599], vec![]),
        (&["UNAVAILABLE"], vec![], vec![Unavailable]),
        (&["DEADLINE_EXCEEDED"], vec![], vec![DeadlineExceeded]),
        (&["OK"], vec![], vec![Ok]),
    ]
}

#[test]
fn standard_names_against_responses() {
    for (names, statuses, codes) in standard_table() {
        for name in names {
            let s = set(&[name]);
            for status in 100..=599 {
                let res = http::Response::builder().status(status).body(()).unwrap();
                assert_eq!(
                    s.matches_response(&res),
                    statuses.contains(&status),
                    "{name} against HTTP {status}"
                );
            }
            for code in all_grpc_codes() {
                // A gRPC answer is an HTTP 200 too.
                assert_eq!(
                    s.matches_response(&grpc(code)),
                    codes.contains(&code) || statuses.contains(&200),
                    "{name} against grpc-status {code:?}"
                );
            }
        }
    }
}

#[test]
fn every_grpc_code_name_matches_its_code() {
    let names = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    for (n, name) in names.iter().enumerate() {
        let s = set(&[name]);
        for code in all_grpc_codes() {
            assert_eq!(
                s.matches_response(&grpc(code)),
                code as usize == n,
                "{name} vs {code:?}"
            );
            let status = tonic::Status::new(tonic::Code::from_i32(code as i32), "x");
            assert_eq!(s.matches_error(&status), code as usize == n, "{name}");
        }
    }
}

/// Each standard name against tonic statuses: errors match the same codes as responses.
#[test]
fn standard_names_against_tonic_statuses() {
    for (names, _, codes) in standard_table() {
        for name in names {
            let s = set(&[name]);
            for code in all_grpc_codes() {
                let status = tonic::Status::new(tonic::Code::from_i32(code as i32), "boom");
                assert_eq!(s.matches_error(&status), codes.contains(&code), "{name}");
                let boxed: BoxError = Box::new(status);
                assert_eq!(s.matches_error(&boxed), codes.contains(&code), "{name}");
            }
        }
    }
}

#[test]
fn io_error_kinds() {
    let connection = [
        ErrorKind::ConnectionRefused,
        ErrorKind::ConnectionReset,
        ErrorKind::ConnectionAborted,
        ErrorKind::NotConnected,
        ErrorKind::BrokenPipe,
        ErrorKind::UnexpectedEof,
        ErrorKind::AddrNotAvailable,
        ErrorKind::HostUnreachable,
        ErrorKind::NetworkUnreachable,
        ErrorKind::NetworkDown,
    ];
    let others = [
        ErrorKind::NotFound,
        ErrorKind::PermissionDenied,
        ErrorKind::InvalidData,
        ErrorKind::Other,
    ];
    let timeout = set(&["NetworkTimeout"]);
    let conn = set(&["ConnectionError"]);
    let net = set(&["NetworkError"]);
    let status_names = set(&[
        "ServiceUnavailable",
        "ServerError",
        "ClientError",
        "NotFound",
        "PermissionDenied",
        "CircuitOpen",
        "5xx",
    ]);
    let timed_out = io::Error::from(ErrorKind::TimedOut);
    assert!(timeout.matches_error(&timed_out));
    assert!(set(&["Timeout"]).matches_error(&timed_out));
    assert!(!conn.matches_error(&timed_out));
    for kind in connection {
        let e = io::Error::new(kind, "x");
        assert!(conn.matches_error(&e), "{kind:?}");
        assert!(net.matches_error(&e), "{kind:?}");
        assert!(!timeout.matches_error(&e), "{kind:?}");
        assert!(!status_names.matches_error(&e), "{kind:?}");
        let boxed: BoxError = Box::new(e);
        assert!(conn.matches_error(&boxed), "{kind:?} boxed");
    }
    for kind in others {
        let e = io::Error::from(kind);
        assert!(!conn.matches_error(&e), "{kind:?}");
        assert!(!timeout.matches_error(&e), "{kind:?}");
        assert!(!status_names.matches_error(&e), "{kind:?}");
    }
    // Errors of types nobody knows are not seen; boxed, their chain is.
    assert!(!conn.matches_error(&"connection refused"));
    assert!(!conn.matches_error(&42u32));
}

#[tokio::test(start_paused = true)]
async fn timeouts_of_the_crate_and_of_tokio() {
    let timeout = set(&["NetworkTimeout"]);
    let others = set(&["ConnectionError", "ServiceUnavailable", "CircuitOpen"]);
    // The timeout layer's `Elapsed`, in the BoxError its service returns.
    let mut svc = TimeoutLayer::new(Duration::from_millis(10))
        .unwrap()
        .layer(service_fn(|()| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, Infallible>(())
        }));
    let err: BoxError = svc.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(err.is::<tower_rampart::timeout::Elapsed>());
    assert!(timeout.matches_error(&err));
    assert!(!others.matches_error(&err));
    // tokio's own `Elapsed`, bare and boxed.
    let elapsed = tokio::time::timeout(Duration::from_millis(1), std::future::pending::<()>())
        .await
        .unwrap_err();
    assert!(timeout.matches_error(&elapsed));
    assert!(!others.matches_error(&elapsed));
    let boxed: BoxError = Box::new(elapsed);
    assert!(timeout.matches_error(&boxed));
}

#[tokio::test]
async fn circuit_open_errors_and_responses() {
    let open = set(&["CircuitOpen"]);
    let unavailable = set(&["ServiceUnavailable"]);
    // Error mode: the refusal is a BoxError holding `CircuitOpen`.
    let layer = CircuitBreakerLayer::new(Config::builder().build().unwrap());
    layer.handle().force_open();
    let mut svc = layer.layer(service_fn(|()| async { Ok::<_, Infallible>(()) }));
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(open.matches_error(&err));
    assert!(!unavailable.matches_error(&err));
    assert!(!set(&["NetworkTimeout", "ConnectionError"]).matches_error(&err));
    // HTTP mode: the breaker's 503 carries the refusal; a plain 503 does not.
    let layer = CircuitBreakerLayer::new(Config::builder().build().unwrap()).respond_http();
    layer.handle().force_open();
    let mut svc = layer.layer(service_fn(|()| async {
        Ok::<_, Infallible>(http::Response::new(String::new()))
    }));
    let refused = svc.ready().await.unwrap().call(()).await.unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.is_breaker_refusal());
    assert!(open.matches_response(&refused));
    assert!(!open.matches_response(&http(503)));
    // A status name matches the breaker's 503 as the status it is.
    assert!(unavailable.matches_response(&refused));
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn reqwest_errors() {
    let timeout = set(&["NetworkTimeout"]);
    let conn = set(&["ConnectionError"]);
    let unavailable = set(&["ServiceUnavailable"]);

    // Connection refused.
    let url = format!("http://127.0.0.1:{}/", closed_port().await);
    let refused = client().get(&url).send().await.unwrap_err();
    assert!(refused.is_connect());
    assert!(conn.matches_error(&refused));
    assert!(set(&["NetworkError"]).matches_error(&refused));
    assert!(!timeout.matches_error(&refused));
    assert!(!unavailable.matches_error(&refused));
    let boxed: BoxError = Box::new(refused);
    assert!(conn.matches_error(&boxed));

    // A timeout: the server never answers in time.
    let app = Router::new()
        .route("/slow", get(common::http::never))
        .route("/busy", get(|| async { StatusCode::SERVICE_UNAVAILABLE }));
    let base = serve(app).await;
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let slow = impatient
        .get(format!("{base}/slow"))
        .send()
        .await
        .unwrap_err();
    assert!(slow.is_timeout());
    assert!(timeout.matches_error(&slow));
    assert!(!conn.matches_error(&slow));
    let boxed: BoxError = Box::new(slow);
    assert!(timeout.matches_error(&boxed));

    // A status error (`error_for_status`) matches by its status.
    let res = client().get(format!("{base}/busy")).send().await.unwrap();
    assert!(unavailable.matches_response(&res));
    assert!(set(&["5xx"]).matches_response(&res));
    let status = res.error_for_status().unwrap_err();
    assert!(unavailable.matches_error(&status));
    assert!(set(&["503", "ServerError"]).matches_error(&status));
    assert!(!set(&["NotFound", "ConnectionError", "Timeout"]).matches_error(&status));
}

/// A hyper client's error, boxed as layers box it: seen through its `source()` chain.
#[tokio::test]
async fn hyper_errors_boxed() {
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};

    let hyper =
        Client::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<bytes::Bytes>>();
    let uri: http::Uri = format!("http://127.0.0.1:{}/", closed_port().await)
        .parse()
        .unwrap();
    let err = hyper.get(uri).await.unwrap_err();
    assert!(err.is_connect());
    let boxed: BoxError = Box::new(err);
    assert!(set(&["ConnectionError"]).matches_error(&boxed));
    assert!(!set(&["NetworkTimeout"]).matches_error(&boxed));
}

// A user's own error type, answering to its variants' names.

#[derive(Debug, Clone, Copy, PartialEq)]
enum PaymentError {
    InsufficientFunds,
    CardDeclined,
    /// Uses a standard name too: the name then matches both.
    ServiceUnavailable,
}

impl fmt::Display for PaymentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.error_name())
    }
}

impl std::error::Error for PaymentError {}

impl NamedError for PaymentError {
    const NAMES: &'static [&'static str] =
        &["InsufficientFunds", "CardDeclined", "ServiceUnavailable"];

    fn error_name(&self) -> &str {
        match self {
            PaymentError::InsufficientFunds => "InsufficientFunds",
            PaymentError::CardDeclined => "CardDeclined",
            PaymentError::ServiceUnavailable => "ServiceUnavailable",
        }
    }
}

/// An error of some library, caused by a `PaymentError`.
#[derive(Debug)]
struct Wrapped(PaymentError);

impl fmt::Display for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "checkout failed")
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// An error whose chain is `depth` `Wrapped`-like links long before the payment error.
#[derive(Debug)]
struct Deep(usize, PaymentError);

impl fmt::Display for Deep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "deep {}", self.0)
    }
}

impl std::error::Error for Deep {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.1)
    }
}

fn payments() -> ErrorNames {
    ErrorNames::default()
        .register::<PaymentError>()
        .register::<PaymentError>()
}

#[test]
fn named_errors_are_found_in_boxes_and_chains() {
    let names = payments();
    assert_eq!(
        names.known().filter(|n| *n == "CardDeclined").count(),
        1,
        "registering twice changes nothing"
    );
    let declined = names.compile(&["CardDeclined"]).unwrap();
    assert!(declined.matches_error(&PaymentError::CardDeclined));
    assert!(!declined.matches_error(&PaymentError::InsufficientFunds));

    let boxed: BoxError = Box::new(PaymentError::CardDeclined);
    assert!(declined.matches_error(&boxed));
    let other: BoxError = Box::new(PaymentError::InsufficientFunds);
    assert!(!declined.matches_error(&other));

    // Behind a `source()` chain, boxed.
    let chained: BoxError = Box::new(Wrapped(PaymentError::CardDeclined));
    assert!(declined.matches_error(&chained));
    let chained: BoxError = Box::new(Wrapped(PaymentError::InsufficientFunds));
    assert!(!declined.matches_error(&chained));
    // Inside an io::Error (whose `source()` skips what it wraps), inside a box.
    let io = io::Error::other(Wrapped(PaymentError::CardDeclined));
    assert!(declined.matches_error(&io));
    let boxed: BoxError = Box::new(io);
    assert!(declined.matches_error(&boxed));
    // Inside a tonic::Status's source.
    let status = tonic::Status::from_error(Box::new(PaymentError::CardDeclined));
    assert!(declined.matches_error(&status));
    // Standard names are not the type's names: a declined card is no connection error.
    assert!(
        !names
            .compile(&["ConnectionError"])
            .unwrap()
            .matches_error(&boxed)
    );
    // A registered name that is also a standard name matches both.
    let unavailable = names.compile(&["ServiceUnavailable"]).unwrap();
    assert!(unavailable.matches_error(&PaymentError::ServiceUnavailable));
    assert!(unavailable.matches_response(&http(503)));
    assert!(!unavailable.matches_error(&PaymentError::CardDeclined));
    // Unregistered, the type's names are unknown.
    assert!(ErrorNames::default().compile(&["CardDeclined"]).is_err());
    // `Deep` is no registered type, so unboxed it is not seen; boxed, its chain is.
    let deep = Deep(1, PaymentError::CardDeclined);
    assert!(!declined.matches_error(&deep));
    let deep: BoxError = Box::new(deep);
    assert!(declined.matches_error(&deep));
}

#[test]
fn unknown_names_are_refused_with_a_suggestion() {
    let names = payments();
    let err = names
        .compile(&["NetworkTimeout", "ServiceUnavialable"])
        .unwrap_err();
    assert_eq!(err.name(), "ServiceUnavialable");
    assert_eq!(err.index(), 1);
    assert_eq!(err.suggestion(), Some("ServiceUnavailable"));
    assert_eq!(
        err.to_string(),
        "unknown error name \"ServiceUnavialable\" (entry 1); did you mean \"ServiceUnavailable\"?"
    );
    let as_error: Box<dyn std::error::Error> = Box::new(err);
    assert!(as_error.to_string().contains("ServiceUnavialable"));

    let cases: &[(&str, Option<&str>)] = &[
        ("networktimeout", Some("NetworkTimeout")),
        ("Unavailable", Some("UNAVAILABLE")),
        ("deadline_exceeded", Some("DEADLINE_EXCEEDED")),
        ("CardDecline", Some("CardDeclined")),
        ("InsuficientFunds", Some("InsufficientFunds")),
        ("5xX", Some("5xx")),
        ("5O3", Some("503")),
        ("ValidationErorr", Some("ValidationError")),
        ("", None),
        ("TotallyUnrelatedFailureMode", None),
    ];
    for (name, suggestion) in cases {
        let err = names.compile(&[*name]).unwrap_err();
        assert_eq!(err.index(), 0);
        assert_eq!(err.suggestion(), *suggestion, "{name:?}");
        if suggestion.is_none() {
            assert!(!err.to_string().contains("did you mean"));
        }
    }
    // Names are exact: no trimming, no case folding for CamelCase names.
    assert!(names.compile(&[" Timeout"]).is_err());
    assert!(names.compile(&["TIMEOUT"]).is_err());
    assert!(names.compile(&["unavailable"]).is_err());
    // Owned strings from a configuration file work too.
    let from_yaml: Vec<String> = vec!["ValidationError".into(), "AuthenticationFailed".into()];
    assert_eq!(
        names
            .compile(&from_yaml)
            .unwrap()
            .names()
            .collect::<Vec<_>>(),
        ["ValidationError", "AuthenticationFailed"]
    );
}

// The classifier's semantics.

fn classifier() -> ByName<HttpStatus> {
    let names = ErrorNames::default();
    ByName::new(HttpStatus::retryable())
        .only(
            names
                .compile(&["NetworkTimeout", "ServiceUnavailable"])
                .unwrap(),
        )
        .except(
            names
                .compile(&["ValidationError", "AuthenticationFailed"])
                .unwrap(),
        )
}

#[test]
fn by_name_outcomes() {
    let c = classifier();
    let k = |res: &http::Response<()>| c.classify(Ok::<_, &BoxError>(res));
    let hinted = http::Response::builder()
        .status(503)
        .header("retry-after", "7")
        .body(())
        .unwrap();
    // Matches `only` and the base says failure: the base's hint is kept.
    assert_eq!(
        k(&hinted),
        Outcome::failure_with_retry_after(Duration::from_secs(7))
    );
    assert_eq!(k(&http(503)), Outcome::FAILURE);
    assert_eq!(k(&http(504)), Outcome::FAILURE);
    // Matches `only` though the base calls it a success (a gRPC DEADLINE_EXCEEDED in a 200):
    // a failure with no hint.
    assert_eq!(k(&grpc(GrpcCode::DeadlineExceeded)), Outcome::FAILURE);
    // A base failure the names do not match: ignored, not retried.
    assert_eq!(k(&http(500)), Outcome::Ignore);
    assert_eq!(k(&http(429)), Outcome::Ignore);
    // `except` matches: ignored.
    assert_eq!(k(&http(422)), Outcome::Ignore);
    assert_eq!(k(&http(401)), Outcome::Ignore);
    // Neither: the base's success stays a success.
    assert_eq!(k(&http(200)), Outcome::Success);
    assert_eq!(k(&http(404)), Outcome::Success);

    // Errors of any kind.
    let e = |err: BoxError| c.classify(Err::<&http::Response<()>, _>(&err));
    assert_eq!(
        e(Box::new(io::Error::from(ErrorKind::TimedOut))),
        Outcome::FAILURE
    );
    assert_eq!(
        e(Box::new(io::Error::from(ErrorKind::ConnectionRefused))),
        Outcome::Ignore
    );
    assert_eq!(
        e(Box::new(tonic::Status::unavailable("down"))),
        Outcome::FAILURE
    );
    assert_eq!(
        e(Box::new(tonic::Status::invalid_argument("bad"))),
        Outcome::Ignore
    );
}

#[test]
fn except_wins_over_only() {
    let names = ErrorNames::default();
    let c = ByName::new(HttpStatus::default())
        .only(names.compile(&["5xx"]).unwrap())
        .except(names.compile(&["501"]).unwrap());
    let k = |s: u16| c.classify(Ok::<_, &()>(&http(s)));
    assert_eq!(k(500), Outcome::FAILURE);
    assert_eq!(k(501), Outcome::Ignore);
    // Without `only`, the base decides what `except` leaves.
    let c = ByName::new(HttpStatus::default()).except(names.compile(&["NotFound"]).unwrap());
    let k = |s: u16| c.classify(Ok::<_, &()>(&http(s)));
    assert_eq!(k(404), Outcome::Ignore);
    assert_eq!(k(502), Outcome::FAILURE);
    assert_eq!(k(200), Outcome::Success);
    assert_eq!(k(409), Outcome::Success);
    // Nothing named: the base alone.
    let c = ByName::new(HttpStatus::default());
    assert_eq!(c.classify(Ok::<_, &()>(&http(502))), Outcome::FAILURE);
}

#[test]
fn by_name_for_other_response_and_error_types() {
    let names = payments();
    // tonic: `Result<T, tonic::Status>` with the tonic classifier as the base.
    let c = ByName::new(TonicStatus::default())
        .only(names.compile(&["UNAVAILABLE", "ABORTED"]).unwrap());
    let ok = tonic::Response::new(());
    assert_eq!(c.classify(Ok(&ok)), Outcome::Success);
    assert_eq!(
        c.classify(Err::<&tonic::Response<()>, _>(&tonic::Status::aborted("x"))),
        Outcome::FAILURE
    );
    assert_eq!(
        c.classify(Err::<&tonic::Response<()>, _>(&tonic::Status::internal(
            "x"
        ))),
        Outcome::Ignore
    );
    // A user's error type as the service's error.
    let c = ByName::new(tower_rampart::classify::AnyError)
        .only(names.compile(&["InsufficientFunds"]).unwrap());
    let res = http(200);
    assert_eq!(c.classify(Ok::<_, &PaymentError>(&res)), Outcome::Success);
    assert_eq!(
        c.classify(Err::<&http::Response<()>, _>(
            &PaymentError::InsufficientFunds
        )),
        Outcome::FAILURE
    );
    assert_eq!(
        c.classify(Err::<&http::Response<()>, _>(&PaymentError::CardDeclined)),
        Outcome::Ignore
    );
}

#[tokio::test]
async fn refusals_are_the_bases_answer() {
    let c = ByName::new(HttpStatus::retryable())
        .only(set(&["ServiceUnavailable"]))
        .except(set(&["CircuitOpen"]));
    let layer = CircuitBreakerLayer::new(Config::builder().build().unwrap()).respond_http();
    layer.handle().force_open();
    let mut svc = layer.layer(service_fn(|()| async {
        Ok::<_, Infallible>(http::Response::new(String::new()))
    }));
    let refused = svc.ready().await.unwrap().call(()).await.unwrap();
    assert!(c.is_refused(Ok::<_, &BoxError>(&refused)));
    assert_eq!(c.classify(Ok::<_, &BoxError>(&refused)), Outcome::Ignore);
    let plain = http::Response::new(String::new());
    assert!(!c.is_refused(Ok::<_, &BoxError>(&plain)));

    let layer = CircuitBreakerLayer::new(Config::builder().build().unwrap());
    layer.handle().force_open();
    let mut svc = layer.layer(service_fn(|()| async { Ok::<_, Infallible>(()) }));
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(<ByName<HttpStatus> as Classify<
        http::Response<()>,
        BoxError,
    >>::is_refusal(&c, &err));
}

#[test]
fn name_sets_are_cheap_and_shareable() {
    fn send_sync<T: Send + Sync + Clone + 'static>() {}
    send_sync::<NameSet>();
    send_sync::<ByName<HttpStatus>>();
    send_sync::<ErrorNames>();
    let s = set(&["503", "Timeout"]);
    assert_eq!(format!("{s:?}"), "NameSet([\"503\", \"Timeout\"])");
    let empty = ErrorNames::default().compile(&[] as &[&str]).unwrap();
    assert!(empty.is_empty());
    assert!(!empty.matches_response(&http(503)));
    assert!(!empty.matches_error(&io::Error::from(ErrorKind::TimedOut)));
}

/// Real HTTP: a reqwest client behind a retry layer that classifies by name. `/flaky` answers
/// 503 then 200 and is retried; `/invalid` answers 422 and is not.
#[tokio::test]
async fn retry_by_name_over_real_http() -> Result<(), BoxError> {
    let flaky_hits = Arc::new(AtomicUsize::new(0));
    let invalid_hits = Arc::new(AtomicUsize::new(0));
    let (flaky, invalid) = (flaky_hits.clone(), invalid_hits.clone());
    let app = Router::new()
        .route(
            "/flaky",
            get(move || async move {
                if flaky.fetch_add(1, SeqCst) == 0 {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                }
            }),
        )
        .route(
            "/invalid",
            get(move || async move {
                invalid.fetch_add(1, SeqCst);
                StatusCode::UNPROCESSABLE_ENTITY
            }),
        );
    let base = serve(app).await;

    let names = ErrorNames::default();
    let retry = RetryLayer::builder()
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::from_millis(1)))
        .build()?
        .classify(
            ByName::new(HttpStatus::retryable())
                .only(names.compile(&["NetworkTimeout", "ServiceUnavailable"])?)
                .except(names.compile(&["ValidationError", "AuthenticationFailed"])?),
        )
        .replay(HttpReplay::default());
    let http = client();
    let mut svc = ServiceBuilder::new().layer(retry).service(http.clone());

    let req = http.get(format!("{base}/flaky")).build()?;
    let res = svc.ready().await?.call(req).await?;
    assert_eq!(res.status(), 200);
    assert_eq!(flaky_hits.load(SeqCst), 2, "the 503 was retried once");

    let req = http.get(format!("{base}/invalid")).build()?;
    let res = svc.ready().await?.call(req).await?;
    assert_eq!(res.status(), 422);
    assert_eq!(invalid_hits.load(SeqCst), 1, "the 422 was not retried");

    // A refused connection is no configured name: not retried either.
    let url = format!("http://127.0.0.1:{}/", closed_port().await);
    let err = svc.ready().await?.call(http.get(url).build()?).await;
    assert!(err.is_err());
    Ok(())
}

/// Classifying by name neither allocates: responses, boxed chains, tonic statuses, registered
/// types.
#[test]
fn classifying_does_not_allocate() {
    let names = payments();
    let c = ByName::new(HttpStatus::retryable())
        .only(
            names
                .compile(&["NetworkTimeout", "ServiceUnavailable", "CardDeclined"])
                .unwrap(),
        )
        .except(
            names
                .compile(&["ValidationError", "ConnectionError"])
                .unwrap(),
        );
    let responses = [http(503), http(422), http(200), grpc(GrpcCode::Unavailable)];
    let errors: Vec<BoxError> = vec![
        Box::new(io::Error::from(ErrorKind::TimedOut)),
        Box::new(io::Error::other(Wrapped(PaymentError::CardDeclined))),
        Box::new(Wrapped(PaymentError::InsufficientFunds)),
        Box::new(tonic::Status::unavailable("down")),
        Box::new(io::Error::from(ErrorKind::ConnectionReset)),
    ];
    let before = allocations();
    let mut failures = 0;
    for _ in 0..1_000 {
        for res in &responses {
            failures += usize::from(c.classify(Ok::<_, &BoxError>(res)).is_failure());
        }
        for err in &errors {
            failures += usize::from(c.classify(Err::<&http::Response<()>, _>(err)).is_failure());
        }
    }
    assert_eq!(allocations() - before, 0);
    assert_eq!(failures, 1_000 * 5);
}
