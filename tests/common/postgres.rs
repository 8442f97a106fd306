//! A database of its own for each test on the machine's PostgreSQL (127.0.0.1:5432, trust auth),
//! dropped when the test ends. `RAMPART_PG_URL` points elsewhere (a server URL without a
//! database name, e.g. `postgres://postgres@10.0.0.5:5432`).

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use sqlx::{Connection, Executor, PgConnection, PgPool, postgres::PgPoolOptions};

/// The server, without a database name.
pub fn server_url() -> String {
    std::env::var("RAMPART_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A fresh database, dropped (with its connections) when this is dropped.
pub struct TestDb {
    name: String,
    url: String,
}

impl TestDb {
    /// Creates `rampart_<prefix>_<pid>_<n>`. Panics with what to do when PostgreSQL is not
    /// there.
    pub async fn new(prefix: &str) -> TestDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "rampart_{}_{}_{}",
            prefix
                .to_lowercase()
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = PgConnection::connect(&format!("{}/postgres", server_url()))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL is not answering at {} ({e}); start it with \
                     `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`",
                    server_url()
                )
            });
        admin
            .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await
            .unwrap();
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        let url = format!("{}/{}", server_url(), name);
        TestDb { name, url }
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A pool of up to `max` connections to it through a proxy at `proxy` (in front of the
    /// server), each connection waited for at most `acquire_timeout`.
    pub async fn pool_through(
        &self,
        proxy: std::net::SocketAddr,
        max: u32,
        acquire_timeout: Duration,
    ) -> PgPool {
        PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(acquire_timeout)
            .connect(&format!("postgres://postgres@{proxy}/{}", self.name))
            .await
            .unwrap()
    }

    /// A pool of up to `max` connections to it.
    pub async fn pool(&self, max: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(max)
            .connect(&self.url)
            .await
            .expect("connect to the test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Dropped from sync code (maybe inside a runtime): a thread with a runtime of its own.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut admin) =
                    PgConnection::connect(&format!("{}/postgres", server_url())).await
                {
                    let _ = admin
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                }
            });
        })
        .join();
    }
}

/// The single number `sql` answers (a `count(*)`).
pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}
