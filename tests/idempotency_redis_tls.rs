//! The Redis store over TLS (`rediss://`) as an ACL user with only the commands it needs, on a
//! real redis-server and a real Redis Cluster started with `--tls-port` and a certificate made
//! here. The server's certificate is signed by a private CA that this binary makes the system
//! roots (`SSL_CERT_FILE`), so the plain `connect` URLs are what an operator writes.

mod common;

use std::{sync::OnceLock, time::Duration};

use common::{
    redis_server::{RedisCluster, RedisServer, TlsFiles},
    store_contract::contract,
};
use tower_rampart::idempotency::{RedisStore, Store};

const LEASE: Duration = Duration::from_millis(300);
const TTL: Duration = Duration::from_millis(600);
const USER: &str = "rampart";
const PASSWORD: &str = "s3cret-rampart";

async fn real_sleep(d: Duration) {
    tokio::time::sleep(d).await
}

/// The CA and server certificate of this binary, trusted as the system's roots.
fn tls() -> &'static TlsFiles {
    static TLS: OnceLock<TlsFiles> = OnceLock::new();
    TLS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("rampart-tls-{}", std::process::id()));
        let files = TlsFiles::make(&dir);
        // SAFETY: set once, inside the OnceLock, before any test of this binary goes past
        // `tls()`; nothing else in the process reads or writes this variable.
        unsafe { std::env::set_var("SSL_CERT_FILE", &files.ca) };
        files
    })
}

/// `ACL SETUSER rampart on >password` plus `rules`.
fn user_rules<'a>(rules: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec![USER, "on", ">s3cret-rampart"];
    all.extend_from_slice(rules);
    all
}

/// The user may run nothing else: other commands, other keys and ad-hoc scripts are refused,
/// and (`scripts`, on a single node) a loaded script that reaches outside the user's keys.
fn assert_restricted(node: &RedisServer, scripts: bool) {
    for refused in [
        &["FLUSHALL"][..],
        &["KEYS", "*"],
        &["CONFIG", "GET", "maxmemory"],
        &["GET", "other:key"],
        &["INCR", "idempotency:x"],
        &["EVAL", "return 1", "0"],
    ] {
        let answer = node.cli_as(USER, PASSWORD, refused);
        assert!(answer.contains("NOPERM"), "{refused:?} answered {answer:?}");
    }
    if !scripts {
        return;
    }
    // A script the user loads still runs with the user's rights.
    let sha = node.cli_as(
        USER,
        PASSWORD,
        &["SCRIPT", "LOAD", "return redis.call('GET', 'other:key')"],
    );
    let answer = node.cli_as(USER, PASSWORD, &["EVALSHA", &sha, "0"]);
    assert!(
        answer.contains("can't access at least one of the keys"),
        "a script reached another key: {answer:?}"
    );
}

/// Every command the rules grant was used (`+asking` only serves slot migrations): the list is
/// no longer than the store needs. Counts since the last `CONFIG RESETSTAT`.
fn assert_all_used(nodes: &[RedisServer], rules: &[&str]) {
    for rule in rules.iter().filter_map(|r| r.strip_prefix('+')) {
        if rule == "asking" {
            continue;
        }
        let calls: u64 = nodes.iter().map(|n| n.calls(rule)).sum();
        assert!(calls > 0, "the store never sent {rule}");
    }
}

/// Nothing the store sent was refused (a refused command whose error the client ignores would
/// not fail the contract).
fn assert_no_denial(node: &RedisServer) {
    assert_eq!(node.cli(&["ACL", "LOG"]).as_deref(), Some(""), "ACL LOG");
}

#[tokio::test]
async fn a_rediss_url_with_a_least_privilege_user_keeps_the_contract() {
    let tls = tls();
    let redis = RedisServer::start_tls(tls, &[]);
    let rules = redis.acl_rules(false);
    let setuser: Vec<&str> = ["ACL", "SETUSER"]
        .into_iter()
        .chain(user_rules(&rules))
        .collect();
    assert_eq!(redis.cli(&setuser).as_deref(), Some("OK"));
    assert_eq!(redis.cli(&["CONFIG", "RESETSTAT"]).as_deref(), Some("OK"));

    let store = RedisStore::connect(&redis.url_as(USER, PASSWORD))
        .await
        .expect("a rediss:// URL connects")
        // WAIT runs (no replica is asked for, so it answers at once).
        .wait_for_replicas(0, Duration::from_millis(100))
        .unwrap();
    store.ready().await.expect("ready over TLS as the ACL user");
    contract(store, LEASE, TTL, real_sleep).await;
    assert_no_denial(&redis);
    assert_all_used(std::slice::from_ref(&redis), &rules);
    assert_restricted(&redis, true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_with_a_least_privilege_user_keeps_the_contract() {
    let tls = tls();
    let cluster = tokio::task::spawn_blocking(move || {
        let c = RedisCluster::start(3, Some(tls));
        let rules = c.nodes[0].acl_rules(true);
        c.acl_setuser(&user_rules(&rules));
        for n in &c.nodes {
            assert_eq!(n.cli(&["CONFIG", "RESETSTAT"]).as_deref(), Some("OK"));
        }
        c
    })
    .await
    .unwrap();
    let urls: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| n.url_as(USER, PASSWORD))
        .collect();
    let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    let store = RedisStore::connect_cluster(&refs)
        .await
        .expect("rediss:// cluster URLs connect")
        .wait_for_replicas(0, Duration::from_millis(100))
        .unwrap();
    store.ready().await.expect("ready over TLS as the ACL user");
    contract(store, LEASE, TTL, real_sleep).await;
    assert_all_used(&cluster.nodes, &cluster.nodes[0].acl_rules(true));
    for node in &cluster.nodes {
        assert_no_denial(node);
        assert_restricted(node, false);
    }
}
