//! A stream of its own for each test on the machine's NATS server with JetStream
//! (127.0.0.1:4222), deleted when the test ends. `RAMPART_NATS_URL` points elsewhere.
//!
//! Names are `RAMPART_<PREFIX>_<pid>_<n>`; a test starts by deleting streams left under its
//! prefix by an earlier run that died before its cleanup.

use std::sync::atomic::{AtomicU32, Ordering};

use async_nats::jetstream::{self, Context, stream};
use futures_util::StreamExt;

/// The server's URL.
pub fn url() -> String {
    std::env::var("RAMPART_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// The server's host:port (for a `FaultProxy` upstream).
pub fn addr() -> String {
    url().trim_start_matches("nats://").to_string()
}

/// A JetStream context on a new connection. Panics with what to do when NATS is not there.
pub async fn connect() -> Context {
    let client = async_nats::connect(url()).await.unwrap_or_else(|e| {
        panic!(
            "NATS is not answering at {} ({e}); start it with \
             `nats-server -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server &`",
            url()
        )
    });
    jetstream::new(client)
}

/// A stream capturing `<subject>.>`, deleted (with its consumers) when this is dropped.
pub struct TestStream {
    /// The stream's name.
    pub name: String,
    /// The subject prefix it captures (`<prefix>.>`): publish to `<subject>.anything`.
    pub subject: String,
}

impl TestStream {
    /// Creates a fresh stream, after deleting streams left under the same prefix by a dead run.
    pub async fn new(js: &Context, prefix: &str) -> TestStream {
        static N: AtomicU32 = AtomicU32::new(0);
        let clean = prefix
            .to_uppercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        let family = format!("RAMPART_{clean}_");
        let names: Vec<String> = js
            .stream_names()
            .filter_map(|n| async move { n.ok() })
            .collect()
            .await;
        for old in names.iter().filter(|n| left_behind(n, &family)) {
            let _ = js.delete_stream(old).await;
        }
        let me = format!("{family}{}_", std::process::id());
        let name = format!("{me}{}", N.fetch_add(1, Ordering::Relaxed));
        let subject = name.to_lowercase().replace('_', "-");
        js.create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{subject}.>")],
            ..Default::default()
        })
        .await
        .expect("create the test stream");
        TestStream { name, subject }
    }
}

/// `<family><pid>_<n>[_<suffix>]` of a process that is gone (a live one, this or another test binary,
/// still uses its streams).
fn left_behind(name: &str, family: &str) -> bool {
    let Some(rest) = name.strip_prefix(family) else {
        return false;
    };
    // `<pid>_<n>`, maybe followed by `_<suffix>` (a second stream of the same test).
    let mut parts = rest.split('_');
    let (Some(pid), Some(n)) = (parts.next(), parts.next()) else {
        return false;
    };
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    numeric(pid) && numeric(n) && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

impl TestStream {
    /// The name and subject prefix for a second stream of the same test (a dead-letter
    /// stream), not created here: `<name>_<SUFFIX>` over `<subject>-<suffix>`. Deleted when
    /// dropped, and cleaned up after a dead run like the first.
    pub fn sibling(&self, suffix: &str) -> TestStream {
        TestStream {
            name: format!("{}_{}", self.name, suffix.to_uppercase()),
            subject: format!("{}-{}", self.subject, suffix.to_lowercase()),
        }
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        // Dropped from sync code (maybe inside a runtime): a thread with a runtime of its own.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(client) = async_nats::connect(url()).await {
                    let _ = jetstream::new(client).delete_stream(&name).await;
                }
            });
        })
        .join();
    }
}
