//! An in-process TCP proxy that injects network faults between a client and a real server
//! (Redis, PostgreSQL, RabbitMQ, NATS): cut every open connection, refuse new ones for a while,
//! or stall traffic. This kernel has no `tc netem`; a proxy on 127.0.0.1 does the same for one
//! test without touching the machine.
//!
//! ```ignore
//! let proxy = FaultProxy::start("127.0.0.1:5672").await;
//! let url = format!("amqp://guest:guest@{}/%2f", proxy.addr());
//! // ... connect through `url` ...
//! proxy.cut(); // every connection through the proxy is closed now, as a network failure
//! ```

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// A running proxy; dropping it closes the listener and every connection.
pub struct FaultProxy {
    addr: SocketAddr,
    /// Bumped by `cut`: every connection opened under an older generation closes.
    generation: watch::Sender<u64>,
    refusing: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards each connection to `upstream`.
    pub async fn start(upstream: impl Into<String>) -> FaultProxy {
        let upstream = upstream.into();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let (generation, gen_rx) = watch::channel(0u64);
        let refusing = Arc::new(AtomicBool::new(false));
        let stalled = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (r, s, a) = (refusing.clone(), stalled.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if r.load(Ordering::SeqCst) {
                    drop(client); // refused: closed at once
                    continue;
                }
                a.fetch_add(1, Ordering::SeqCst);
                let mut gen_rx = gen_rx.clone();
                let born = *gen_rx.borrow_and_update();
                let upstream = upstream.clone();
                let stalled = s.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let mut client = client;
                    let mut server = server;
                    let cut = async {
                        while gen_rx.changed().await.is_ok() {
                            if *gen_rx.borrow() != born {
                                return;
                            }
                        }
                        std::future::pending::<()>().await
                    };
                    tokio::pin!(cut);
                    let stall = async {
                        while !stalled.load(Ordering::SeqCst) {
                            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                        }
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut client, &mut server) => return,
                        _ = &mut cut => return,
                        _ = stall => {}
                    }
                    // Stalled: the sockets stay open and move no bytes until cut.
                    cut.await;
                    // Dropping both sockets closes them: the peers see a reset or EOF.
                });
            }
        });
        FaultProxy {
            addr,
            generation,
            refusing,
            stalled,
            accepted,
            task,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every connection open now (clients that reconnect get new ones).
    pub fn cut(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// While `true`, new connections are closed as soon as they arrive.
    pub fn refuse(&self, on: bool) {
        self.refusing.store(on, Ordering::SeqCst);
    }

    /// While `true`, open connections move no bytes (a silent network partition); new ones
    /// still connect but stall too. Turning it off does not revive stalled connections: `cut`
    /// them.
    pub fn stall(&self, on: bool) {
        self.stalled.store(on, Ordering::SeqCst);
    }

    /// Connections accepted so far (to check that a client really reconnected).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}
