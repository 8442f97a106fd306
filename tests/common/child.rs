//! A test that runs part of itself in another process, to kill it for real (SIGKILL) mid-step:
//! the test binary starts itself again, running only one `#[ignore]`d test function with
//! settings in an environment variable.
//!
//! ```ignore
//! #[test]
//! #[ignore = "runs as a child process of the_consumer_dies_twice"]
//! fn consumer_process() {
//!     let Some(settings) = child::settings() else { return };
//!     child::runtime().block_on(async move { /* settings["queue"] ... */ });
//!     ...
//! }
//! let mut c = Child::start("consumer_process", "queue=q1;db=...");
//! c.kill();
//! ```

use std::{
    collections::HashMap,
    process::{Command, Stdio},
};

/// The variable that carries a child's settings.
pub const SETTINGS: &str = "RAMPART_CHILD_SETTINGS";

/// The settings this process was started with (`key=value;key=value`), when it is a child.
pub fn settings() -> Option<HashMap<String, String>> {
    let s = std::env::var(SETTINGS).ok()?;
    Some(
        s.split(';')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// A child's runtime: two workers, as the machine has.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A child process running one test function of this binary.
pub struct Child {
    inner: std::process::Child,
}

impl Child {
    /// Starts the test function `name` (an `#[ignore]`d test of this binary) with `settings`.
    pub fn start(name: &str, settings: &str) -> Child {
        let exe = std::env::current_exe().expect("the test binary's path");
        let inner = Command::new(exe)
            .args([
                name,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(SETTINGS, settings)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the child process");
        Child { inner }
    }

    /// Kills it at once (SIGKILL: no destructor, no flush, no goodbye to the broker) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.inner.kill();
        let _ = self.inner.wait();
    }

    /// Whether it has exited on its own, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.inner.try_wait().ok().flatten()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Child {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.inner.id()
    }
}
