//! A real `redis-server` started by the test on a free port, killed when dropped; optionally
//! over TLS (a CA and a server certificate made in-process), and Redis Clusters built from them
//! with redis-cli.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct RedisServer {
    /// The port clients use: the TLS port for a TLS server.
    pub port: u16,
    /// The cluster bus port, for a cluster node.
    pub cluster_port: Option<u16>,
    dir: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
    tls: Option<TlsFiles>,
}

/// The least-privilege ACL rules of the README for a user of `RedisStore` with the default
/// prefix, after `ACL SETUSER <name>`: the scripts' commands (`EVALSHA`, `SCRIPT LOAD` on
/// `NOSCRIPT`, and the `TYPE GET SET PEXPIRE PTTL DEL` they call), `WAIT` for
/// `wait_for_replicas`, `PING` for readiness, the store's keys only, no channels.
pub const ACL_RULES: &[&str] = &[
    "resetkeys",
    "~idempotency:*",
    "resetchannels",
    "-@all",
    "+evalsha",
    "+script|load",
    "+type",
    "+get",
    "+set",
    "+pexpire",
    "+pttl",
    "+del",
    "+wait",
    "+ping",
];

/// What a Redis Cluster client needs on top of [`ACL_RULES`]: the slot map, and `ASKING` for
/// a slot being migrated.
pub const ACL_CLUSTER_RULES: &[&str] = &["+cluster|slots", "+asking"];

/// Redis 7.2 and later know `CLIENT SETINFO`, which the client sends on connecting (ignoring a
/// refusal); earlier versions refuse the rule itself.
pub const ACL_SETINFO_RULE: &str = "+client|setinfo";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private CA and a server certificate for 127.0.0.1 and localhost, as PEM files.
#[derive(Clone)]
pub struct TlsFiles {
    /// The CA certificate, PEM: what a client must trust.
    pub ca_pem: Vec<u8>,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// Makes the CA and the server certificate in `dir`.
    pub fn make(dir: &std::path::Path) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        std::fs::create_dir_all(dir).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "tower-rampart test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        let files = TlsFiles {
            ca_pem: ca.pem().into_bytes(),
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        };
        std::fs::write(&files.ca, &files.ca_pem).unwrap();
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        Self::launch(extra, None, false)
    }

    /// A server that takes TLS connections only (`--port 0`), without client certificates.
    pub fn start_tls(tls: &TlsFiles, extra: &[&str]) -> Self {
        Self::launch(extra, Some(tls.clone()), false)
    }

    /// A cluster node (its own bus port, so that `port + 10000` never has to be free or valid).
    pub fn start_cluster_node(tls: Option<&TlsFiles>) -> Self {
        Self::launch(&[], tls.cloned(), true)
    }

    fn launch(extra: &[&str], tls: Option<TlsFiles>, cluster: bool) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("rampart-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = RedisServer {
            port,
            cluster_port: cluster.then(free_port),
            dir,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls,
        };
        s.restart();
        s
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The URL that logs in as `user`.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://{user}:{password}@127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = match &self.tls {
            None => vec!["--port".into(), self.port.to_string()],
            Some(tls) => vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                self.port.to_string(),
                "--tls-cert-file".into(),
                tls.cert.display().to_string(),
                "--tls-key-file".into(),
                tls.key.display().to_string(),
                "--tls-ca-cert-file".into(),
                tls.ca.display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
                "--tls-replication".into(),
                "yes".into(),
            ],
        };
        if let Some(bus) = self.cluster_port {
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-port",
                    &bus.to_string(),
                ]
                .map(String::from),
            );
            if self.tls.is_some() {
                args.extend(["--tls-cluster", "yes"].map(String::from));
            }
        }
        args.extend(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"].map(String::from));
        args
    }

    /// Starts (again) on the same port and waits until it answers.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(self.args())
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (.ci/run installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).as_deref() != Some("PONG") {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// redis-cli for this server (over TLS for a TLS server), as the default user.
    fn cli_command(&self) -> Command {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(tls) = &self.tls {
            cmd.arg("--tls").arg("--cacert").arg(&tls.ca);
        }
        cmd
    }

    /// Runs redis-cli against this server; its trimmed output.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = self.cli_command().args(args).output().ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Runs redis-cli logged in as `user`; its trimmed output, errors included.
    pub fn cli_as(&self, user: &str, password: &str, args: &[&str]) -> String {
        let out = self
            .cli_command()
            .args(["--user", user, "--pass", password, "--no-auth-warning"])
            .args(args)
            .output()
            .expect("redis-cli");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        text.trim().to_owned()
    }

    /// Calls of one command so far, from `INFO commandstats`.
    pub fn calls(&self, command: &str) -> u64 {
        let info = self.cli(&["INFO", "commandstats"]).unwrap_or_default();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// The README's ACL rules for this server (`cluster`: with the cluster ones), with
    /// `+client|setinfo` where the server knows that command.
    pub fn acl_rules(&self, cluster: bool) -> Vec<&'static str> {
        let mut rules = ACL_RULES.to_vec();
        if cluster {
            rules.extend_from_slice(ACL_CLUSTER_RULES);
        }
        let probe = ["ACL", "SETUSER", "rampart-probe", ACL_SETINFO_RULE];
        if self.cli(&probe).as_deref() == Some("OK") {
            rules.push(ACL_SETINFO_RULE);
            self.cli(&["ACL", "DELUSER", "rampart-probe"]);
        }
        rules
    }

    /// This node's cluster id.
    pub fn node_id(&self) -> String {
        self.cli(&["CLUSTER", "MYID"]).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `f` every 20 ms for up to 20 s; `what` names what never happened.
fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A Redis Cluster of real servers: primaries that share the slots, and replicas added later.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// `primaries` primaries (at least 3: redis-cli's minimum) sharing every slot, no replica.
    /// Blocks the calling thread until the cluster is up (seconds at most).
    pub fn start(primaries: usize, tls: Option<&TlsFiles>) -> Self {
        let nodes: Vec<RedisServer> = (0..primaries)
            .map(|_| RedisServer::start_cluster_node(tls))
            .collect();
        let addrs: Vec<String> = nodes.iter().map(RedisServer::addr).collect();
        let out = nodes[0]
            .cli_command()
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.until_ok();
        cluster
    }

    fn until_ok(&self) {
        until("the cluster did not form", || {
            self.nodes.iter().all(|n| {
                n.cli(&["CLUSTER", "INFO"])
                    .unwrap_or_default()
                    .contains("cluster_state:ok")
            })
        });
    }

    /// Adds a replica of the primary `nodes[of]`, waits until it is in sync and every node
    /// knows it; its index.
    pub fn add_replica(&mut self, of: usize) -> usize {
        let tls = self.nodes[of].tls.clone();
        let replica = RedisServer::start_cluster_node(tls.as_ref());
        let primary = &self.nodes[of];
        let (port, bus) = (
            primary.port.to_string(),
            primary.cluster_port.unwrap().to_string(),
        );
        let answer = replica.cli(&["CLUSTER", "MEET", "127.0.0.1", &port, &bus]);
        assert_eq!(answer.as_deref(), Some("OK"), "CLUSTER MEET");
        let id = primary.node_id();
        until("the new node never became a replica", || {
            replica.cli(&["CLUSTER", "REPLICATE", &id]).as_deref() == Some("OK")
        });
        until("the replica never synced", || {
            replica
                .cli(&["INFO", "replication"])
                .is_some_and(|i| i.lines().any(|l| l.trim() == "master_link_status:up"))
        });
        self.nodes.push(replica);
        until("not every node knows the replica", || {
            self.nodes.iter().all(|n| {
                let nodes = n.cli(&["CLUSTER", "NODES"]).unwrap_or_default();
                nodes.lines().filter(|l| l.contains("slave")).count() >= 1
                    && nodes.lines().count() == self.nodes.len()
            })
        });
        self.until_ok();
        self.nodes.len() - 1
    }

    /// The index of the primary that serves `key`.
    pub fn owner_of(&self, key: &str) -> usize {
        let slot: u16 = self.nodes[0]
            .cli(&["CLUSTER", "KEYSLOT", key])
            .and_then(|s| s.parse().ok())
            .expect("CLUSTER KEYSLOT");
        let id = self.nodes[0]
            .cli(&["CLUSTER", "NODES"])
            .unwrap_or_default()
            .lines()
            .find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let serves = fields.iter().skip(8).any(|range| {
                    let mut ends = range.split('-').map(|n| n.parse::<u16>().ok());
                    match (ends.next().flatten(), ends.next()) {
                        (Some(a), None) => a == slot,
                        (Some(a), Some(Some(b))) => (a..=b).contains(&slot),
                        _ => false,
                    }
                });
                serves.then(|| fields[0].to_owned())
            })
            .expect("a primary serves every slot");
        self.nodes
            .iter()
            .position(|n| n.node_id() == id)
            .expect("the owner is one of our nodes")
    }

    /// `f(key)` for the first key `{prefix}{n}` whose primary satisfies `pick`.
    pub fn key_where(&self, prefix: &str, pick: impl Fn(usize) -> bool) -> String {
        (0..1000)
            .map(|n| format!("{prefix}{n}"))
            .find(|k| pick(self.owner_of(k)))
            .expect("some key lands on the wanted primary")
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Runs `ACL SETUSER` with `rules` on every node (ACLs are per node).
    pub fn acl_setuser(&self, rules: &[&str]) {
        for n in &self.nodes {
            let mut args = vec!["ACL", "SETUSER"];
            args.extend_from_slice(rules);
            assert_eq!(n.cli(&args).as_deref(), Some("OK"), "ACL SETUSER {rules:?}");
        }
    }
}
