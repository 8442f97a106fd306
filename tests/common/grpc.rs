//! A hand-written tonic server and client (prost messages derived by hand, no protoc).

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    marker::PhantomData,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::uri::PathAndQuery;
use tonic::{
    Status,
    body::Body,
    client::{Grpc, GrpcService},
    server::NamedService,
    transport::server::TcpIncoming,
};
use tonic_prost::ProstCodec;
use tower::Service;
use tower_rampart::BoxError;

pub type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a unary method answers.
pub type Reply<Res> = BoxFut<Result<tonic::Response<Res>, Status>>;

type Handler<Req, Res> = Arc<dyn Fn(tonic::Request<Req>) -> Reply<Res> + Send + Sync>;

/// Names a gRPC service (`package.Service`).
pub trait ServiceName {
    const NAME: &'static str;
}

/// A gRPC service `N::NAME` whose unary methods (all `Req` -> `Res`) are closures; any other
/// method is UNIMPLEMENTED.
pub struct Methods<N, Req, Res> {
    methods: Arc<HashMap<&'static str, Handler<Req, Res>>>,
    _name: PhantomData<fn() -> N>,
}

impl<N, Req, Res> Clone for Methods<N, Req, Res> {
    fn clone(&self) -> Self {
        Methods {
            methods: self.methods.clone(),
            _name: PhantomData,
        }
    }
}

impl<N, Req, Res> Default for Methods<N, Req, Res> {
    fn default() -> Self {
        Methods {
            methods: Arc::default(),
            _name: PhantomData,
        }
    }
}

impl<N: ServiceName, Req, Res> NamedService for Methods<N, Req, Res> {
    const NAME: &'static str = N::NAME;
}

impl<N, Req, Res> Methods<N, Req, Res> {
    /// Adds the unary method `name` (the last part of its path).
    pub fn unary(
        mut self,
        name: &'static str,
        f: impl Fn(tonic::Request<Req>) -> Reply<Res> + Send + Sync + 'static,
    ) -> Self {
        Arc::get_mut(&mut self.methods)
            .expect("methods are added before the service is cloned")
            .insert(name, Arc::new(f));
        self
    }
}

struct Unary<Req, Res>(Handler<Req, Res>);

impl<Req, Res> tonic::server::UnaryService<Req> for Unary<Req, Res> {
    type Response = Res;
    type Future = Reply<Res>;

    fn call(&mut self, req: tonic::Request<Req>) -> Reply<Res> {
        (self.0)(req)
    }
}

impl<N, Req, Res, B> Service<http::Request<B>> for Methods<N, Req, Res>
where
    N: ServiceName,
    Req: prost::Message + Default + Send + 'static,
    Res: prost::Message + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Error: Into<BoxError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFut<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().rsplit('/').next().unwrap_or_default();
        let handler = self.methods.get(method).cloned();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Res, Req>::default());
            Ok(match handler {
                Some(handler) => grpc.unary(Unary(handler), req).await,
                None => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// A listener on 127.0.0.1 with a port the OS picks, for `serve_with_incoming`; its address.
pub async fn incoming() -> (TcpIncoming, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (TcpIncoming::from(listener), addr)
}

/// A channel connected to `http://{addr}`.
pub async fn channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// One unary call of `method` (its full path) through `grpc`; a service that is not ready
/// answers UNKNOWN.
pub async fn unary<S, Req, Res>(
    grpc: &mut Grpc<S>,
    method: &'static str,
    req: tonic::Request<Req>,
) -> Result<tonic::Response<Res>, Status>
where
    S: GrpcService<Body>,
    S::Error: Into<BoxError>,
    S::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<BoxError>,
    Req: prost::Message + Send + Sync + 'static,
    Res: prost::Message + Default + Send + Sync + 'static,
{
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(e.into().to_string()))?;
    let codec = ProstCodec::<Req, Res>::default();
    grpc.unary(req, PathAndQuery::from_static(method), codec)
        .await
}

/// A message with one string field, for echo services.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ping {
    #[prost(string, tag = "1")]
    pub text: String,
}

/// The `test.Echo` service.
pub struct Echo;

impl ServiceName for Echo {
    const NAME: &'static str = "test.Echo";
}

/// One unary call of `method` (its full path) through `grpc` with a [`Ping`] carrying `text`;
/// the message answered.
pub async fn ping<S>(grpc: &mut Grpc<S>, method: &'static str, text: &str) -> Result<Ping, Status>
where
    S: GrpcService<Body>,
    S::Error: Into<BoxError>,
    S::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<BoxError>,
{
    let req = tonic::Request::new(Ping { text: text.into() });
    let reply = unary(grpc, method, req).await;
    reply.map(tonic::Response::into_inner)
}

/// The messages of a server-streaming method.
pub type Messages = Pin<Box<dyn futures_util::Stream<Item = Result<Ping, Status>> + Send>>;

/// A gRPC service `test.Stream` with one server-streaming method (any path): `f` turns the
/// request into the stream of messages it answers; `calls` counts the requests.
#[derive(Clone)]
pub struct Streaming<F> {
    f: F,
    pub calls: Arc<std::sync::atomic::AtomicUsize>,
}

impl<F: Fn(tonic::Request<Ping>) -> Messages> Streaming<F> {
    pub fn new(f: F) -> Self {
        Streaming {
            f,
            calls: Arc::default(),
        }
    }
}

impl<F> NamedService for Streaming<F> {
    const NAME: &'static str = "test.Stream";
}

struct StreamWith<'a, F>(&'a F);

impl<F: Fn(tonic::Request<Ping>) -> Messages> tonic::server::ServerStreamingService<Ping>
    for StreamWith<'_, F>
{
    type Response = Ping;
    type ResponseStream = Messages;
    type Future = std::future::Ready<Result<tonic::Response<Messages>, Status>>;

    fn call(&mut self, req: tonic::Request<Ping>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new((self.0)(req))))
    }
}

impl<F, B> Service<http::Request<B>> for Streaming<F>
where
    F: Fn(tonic::Request<Ping>) -> Messages + Clone + Send + Sync + 'static,
    B: http_body::Body + Send + 'static,
    B::Error: Into<BoxError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFut<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let f = self.f.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Ping, Ping>::default());
            Ok(grpc.server_streaming(StreamWith(&f), req).await)
        })
    }
}
