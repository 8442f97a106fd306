//! Connecting: one server or a cluster, in plain TCP or (feature `redis-tls`) TLS.

use std::time::Duration;

use redis::{aio::ConnectionManager, cluster_async::ClusterConnection};

use super::RedisStore;
use crate::idempotency::store::StoreError;

/// Connect and response timeouts of every connection the store opens.
const TIMEOUT: Duration = Duration::from_secs(1);

/// A `rediss://` URL without the feature that speaks TLS gets an error that says which feature
/// (the redis crate's own error names its features, not ours).
fn tls_supported(url: &str) -> Result<(), StoreError> {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    let tls = scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys");
    if tls && !cfg!(feature = "redis-tls") {
        return Err(StoreError::new(
            "a rediss:// (TLS) URL needs tower-rampart's `redis-tls` feature",
        ));
    }
    if tls {
        install_crypto_provider();
    }
    Ok(())
}

/// rustls needs a process-wide crypto provider. An application that installed one keeps it;
/// otherwise aws-lc-rs's is installed, so that an application whose other crates enable a
/// second provider (ring) does not make rustls panic for want of a choice.
#[cfg(feature = "redis-tls")]
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err only when another thread installed one meanwhile: that one is used.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

#[cfg(not(feature = "redis-tls"))]
fn install_crypto_provider() {}

fn manager(client: redis::Client) -> Result<RedisStore, StoreError> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT))
        .set_number_of_retries(1);
    // Lazy: a server that is down at start-up is a store error per request, not a crash.
    let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(StoreError::new)?;
    Ok(RedisStore::with_connection(conn))
}

fn cluster_builder(nodes: &[&str]) -> Result<redis::cluster::ClusterClientBuilder, StoreError> {
    for node in nodes {
        tls_supported(node)?;
    }
    Ok(
        redis::cluster::ClusterClientBuilder::new(nodes.iter().copied())
            .connection_timeout(TIMEOUT)
            .response_timeout(TIMEOUT),
    )
}

async fn cluster(
    builder: redis::cluster::ClusterClientBuilder,
) -> Result<RedisStore<ClusterConnection>, StoreError> {
    let client = builder.build().map_err(StoreError::new)?;
    let conn = client
        .get_async_connection()
        .await
        .map_err(StoreError::new)?;
    Ok(RedisStore::with_connection(conn))
}

impl RedisStore {
    /// Connects to one Redis server with an auto-reconnecting `ConnectionManager` (1 s to
    /// connect, 1 s per response).
    ///
    /// The URL may carry an ACL user and its password (`redis://user:password@host:6379`).
    /// With the `redis-tls` feature, `rediss://user:password@host:6380` connects over TLS and
    /// trusts the system's root certificates (for a private CA, `RedisStore::connect_tls`,
    /// same feature). Without the feature a `rediss://` URL is an error that names it.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        tls_supported(url)?;
        manager(redis::Client::open(url).map_err(StoreError::new)?)
    }

    /// Connects over TLS (a `rediss://` URL) with the given certificates: `root_cert` (PEM)
    /// replaces the system's roots, for a server whose certificate a private CA signed;
    /// `client_tls` is a client certificate and key, for servers that require one.
    ///
    /// ```no_run
    /// use tower_rampart::idempotency::RedisStore;
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let ca = std::fs::read("/etc/redis-ca.pem")?;
    /// let store = RedisStore::connect_tls(
    ///     "rediss://payments:secret@redis.internal:6380",
    ///     redis::TlsCertificates { client_tls: None, root_cert: Some(ca) },
    /// )
    /// .await?;
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "redis-tls")]
    pub async fn connect_tls(
        url: &str,
        certificates: redis::TlsCertificates,
    ) -> Result<Self, StoreError> {
        tls_supported(url)?;
        manager(redis::Client::build_with_tls(url, certificates).map_err(StoreError::new)?)
    }
}

impl RedisStore<ClusterConnection> {
    /// Connects to a Redis Cluster through any of its nodes (URLs as for
    /// [`RedisStore::connect`]: the first one's user, password and scheme hold for every node).
    pub async fn connect_cluster(nodes: &[&str]) -> Result<Self, StoreError> {
        cluster(cluster_builder(nodes)?).await
    }

    /// Connects to a Redis Cluster over TLS with the given certificates (as
    /// [`RedisStore::connect_tls`]), through any of its `rediss://` nodes.
    #[cfg(feature = "redis-tls")]
    pub async fn connect_cluster_tls(
        nodes: &[&str],
        certificates: redis::TlsCertificates,
    ) -> Result<Self, StoreError> {
        cluster(cluster_builder(nodes)?.certs(certificates)).await
    }
}

#[cfg(test)]
mod tests {
    use super::tls_supported;

    #[test]
    fn a_rediss_url_needs_the_tls_feature() {
        let answer = tls_supported("REDISS://user:secret@redis.internal:6380");
        if cfg!(feature = "redis-tls") {
            assert!(answer.is_ok());
        } else {
            let err = answer.unwrap_err().to_string();
            assert!(err.contains("`redis-tls` feature"), "{err}");
            assert!(!err.contains("secret"), "{err}");
        }
        assert!(tls_supported("redis://127.0.0.1:6379").is_ok());
        assert!(tls_supported("redis").is_ok());
        assert_eq!(
            tls_supported("valkeys://h:6380").is_ok(),
            cfg!(feature = "redis-tls")
        );
    }
}
