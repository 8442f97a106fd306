//! A registry file driving a client and a server, reloaded while they run.
//!
//! An axum "inventory" server on 127.0.0.1 sits behind the registry's chaos layer for policy
//! `inventory`; a reqwest client calls it through the registry's standard client stack for the
//! same policy; `/readyz` answers from the registry's breakers. A task watches the registry file
//! (its modification time, twice a second) and reloads it on every change, printing what the
//! reload did.
//!
//! ```text
//! cargo run --example registry                                  # a scripted demo, ends by itself
//! cargo run --example registry -- examples/resilience.yaml      # watches your file until Ctrl-C
//! ```
//!
//! The scripted demo copies `examples/resilience.yaml` to a temporary file and edits it the way
//! an operator would: fault injection on (30 %, then every call), a typo (refused, nothing
//! changes), and off again.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::{Duration, SystemTime},
};

use axum::{Router, routing::get};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_rampart::{
    BoxError,
    health::BreakerSource,
    registry::{Registry, ReloadOutcome},
};

const EXAMPLE_FILE: &str = include_str!("resilience.yaml");

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let watched: Option<PathBuf> = std::env::args().nth(1).map(PathBuf::from);
    let path = match &watched {
        Some(p) => p.clone(),
        None => {
            let p =
                std::env::temp_dir().join(format!("rampart-registry-{}.yaml", std::process::id()));
            std::fs::write(&p, EXAMPLE_FILE)?;
            p
        }
    };
    let registry = Registry::builder()
        .on_reload(|e| match e.outcome {
            ReloadOutcome::Applied { changed } => {
                println!(
                    "  reload: generation {} in force, changed {changed:?}",
                    e.generation
                );
            }
            ReloadOutcome::Unchanged => {
                println!("  reload: no change, generation {} stays", e.generation);
            }
            ReloadOutcome::Rejected { error } => {
                println!("  reload refused, nothing changed: {error}");
            }
            _ => {}
        })
        .from_yaml(&std::fs::read_to_string(&path)?)?;

    // The server: chaos from the registry, readiness from its breakers.
    let app = Router::new()
        .route("/stock", get(|| async { "42 left" }))
        .layer(registry.chaos("inventory")?.respond_http())
        .route_service("/readyz", registry.readiness());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!(
        "inventory server on {base}; registry file {}",
        path.display()
    );

    tokio::spawn(watch(registry.clone(), path.clone()));

    let http = reqwest::Client::builder().no_proxy().build()?;
    let client = ServiceBuilder::new()
        .layer(registry.client("inventory")?)
        .service(http.clone());

    let script: &[(&str, &str)] = &[
        ("healthy", ""),
        ("30 % injected 503s", "enabled: true"),
        ("an outage: every call 503", "injection_rate: 1.0"),
        ("a typo", "injection_rate: 1.0\n      injection_rat: 0"),
        ("recovered", "enabled: false"),
    ];
    // Watching a file: forever, no edits of ours. The demo: one round per scripted edit.
    let rounds: Box<dyn Iterator<Item = Option<&(&str, &str)>>> = match watched {
        Some(_) => Box::new(std::iter::repeat(None)),
        None => Box::new(script.iter().map(Some)),
    };
    for step in rounds {
        if let Some((what, edit)) = step {
            println!("\n== {what}");
            edit_file(&path, edit)?;
            // Twice the watcher's period, so the edit is in force.
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        let (ok, failed) = calls(&client, &base, 40).await;
        let breakers: Vec<String> = registry
            .breakers()
            .iter()
            .map(|h| format!("{} {:?}", h.name(), h.state()))
            .collect();
        let ready = http.get(format!("{base}/readyz")).send().await?.status();
        println!(
            "  40 calls: {ok} answered 200, {failed} failed; breakers {breakers:?}; /readyz {ready}"
        );
        if watched.is_some() {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Calls `/stock` `n` times through `client`: how many answered 200, how many did not.
async fn calls<S>(client: &S, base: &str, n: usize) -> (usize, usize)
where
    S: Service<reqwest::Request, Response = reqwest::Response, Error = BoxError> + Clone,
{
    let ok = Arc::new(AtomicUsize::new(0));
    for _ in 0..n {
        let req = reqwest::Request::new(
            reqwest::Method::GET,
            format!("{base}/stock").parse().unwrap(),
        );
        let res = client.clone().oneshot(req).await;
        if res.is_ok_and(|r| r.status() == 200) {
            ok.fetch_add(1, SeqCst);
        }
    }
    let ok = ok.load(SeqCst);
    (ok, n - ok)
}

/// Applies the scripted edit to the chaos section of the example file (no edit: the file as
/// shipped).
fn edit_file(path: &Path, edit: &str) -> std::io::Result<()> {
    let text = if edit.is_empty() {
        EXAMPLE_FILE.to_owned()
    } else if edit.starts_with("enabled") {
        EXAMPLE_FILE.replace("enabled: false", edit)
    } else {
        EXAMPLE_FILE
            .replace("enabled: false", "enabled: true")
            .replace("injection_rate: 0.3", edit)
    };
    std::fs::write(path, text)
}

/// Reloads `path` whenever its modification time changes.
async fn watch(registry: Registry, path: PathBuf) {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen: Option<SystemTime> = modified(&path);
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = modified(&path);
        let Ok(new) = std::fs::read_to_string(&path) else {
            continue;
        };
        // Some file systems keep mtimes to the second: compare the text as well.
        if now == seen && new == text {
            continue;
        }
        (seen, text) = (now, new);
        let _ = registry.reload_yaml(&text);
    }
}
