//! Publishing a claimed batch: aggregates concurrently, the rows of one aggregate one after the
//! other, each confirmed (or failed) before the next; the first failure of an aggregate
//! defers the rest of it.

use std::{
    future::{Future, poll_fn},
    panic::AssertUnwindSafe,
    time::Duration,
};

use futures_util::{StreamExt, stream};
use tower_service::Service;

use super::claim::Claimed;
use crate::{
    BoxError,
    catch::{CatchUnwind, panic_text},
    message::Message,
};

/// What became of one claimed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fate {
    Published,
    /// The publication failed: why, in words.
    Failed(String),
    /// Not tried: an earlier row of its aggregate failed.
    Deferred,
}

/// One row's id, attempts before this batch, and fate.
pub(crate) type Done = (i64, i32, Fate);

/// Publishes `rows` (in id order) through clones of `publisher`.
///
/// Not an `async fn`: the clones are made here, so the future holds no `&S` and is `Send` for
/// any `S: Send` (a borrowed service across an await would need `S: Sync`).
pub(crate) fn publish_batch<S>(
    publisher: &S,
    rows: Vec<Claimed>,
    concurrency: usize,
    timeout: Duration,
) -> impl Future<Output = Vec<Done>> + Send + use<S>
where
    S: Service<Message> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
{
    let groups: Vec<(S, Vec<Claimed>)> = group(rows)
        .into_iter()
        .map(|g| (publisher.clone(), g))
        .collect();
    stream::iter(groups)
        .map(move |(svc, rows)| publish_aggregate(svc, rows, timeout))
        .buffer_unordered(concurrency.max(1))
        .flat_map(stream::iter)
        .collect()
}

/// Rows grouped by aggregate, each group in id order, groups in the order of their first row.
fn group(rows: Vec<Claimed>) -> Vec<Vec<Claimed>> {
    let mut groups: Vec<Vec<Claimed>> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = Default::default();
    for r in rows {
        match index.get(&r.aggregate) {
            Some(&i) => groups[i].push(r),
            None => {
                index.insert(r.aggregate.clone(), groups.len());
                groups.push(vec![r]);
            }
        }
    }
    groups
}

async fn publish_aggregate<S>(svc: S, rows: Vec<Claimed>, timeout: Duration) -> Vec<Done>
where
    S: Service<Message> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
{
    let mut out = Vec::with_capacity(rows.len());
    let mut failed = false;
    for r in rows {
        let fate = if failed {
            Fate::Deferred
        } else {
            match publish_one(&svc, r.message, timeout).await {
                Ok(()) => Fate::Published,
                Err(why) => {
                    failed = true;
                    Fate::Failed(why)
                }
            }
        };
        out.push((r.id, r.attempts, fate));
    }
    out
}

/// One publication: a fresh clone, ready, call, all within `timeout`; a panic (in `clone`,
/// `poll_ready`, `call` or the response future) is a failure, never a crashed relay. The clone
/// is made before the future, which so holds no `&S` (see [`publish_batch`]).
fn publish_one<S>(
    svc: &S,
    message: Message,
    timeout: Duration,
) -> impl Future<Output = Result<(), String>> + Send + use<S>
where
    S: Service<Message> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
{
    let cloned = std::panic::catch_unwind(AssertUnwindSafe(|| svc.clone()));
    async move {
        let mut s = match cloned {
            Ok(s) => s,
            Err(panic) => return Err(format!("publisher panicked: {}", panic_text(&*panic))),
        };
        let attempt = async move {
            poll_fn(|cx| s.poll_ready(cx))
                .await
                .map_err(|e| format!("publisher not ready: {}", e.into()))?;
            s.call(message)
                .await
                .map(drop)
                .map_err(|e| format!("publication failed: {}", e.into()))
        };
        match tokio::time::timeout(timeout, CatchUnwind::new(attempt)).await {
            Ok(Ok(done)) => done,
            Ok(Err(panic)) => Err(format!("publisher panicked: {panic}")),
            Err(_) => Err(format!(
                "publication timed out after {} ms",
                timeout.as_millis()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        convert::Infallible,
        sync::{Arc, Mutex},
        task::{Context, Poll},
    };

    fn row(id: i64, aggregate: &str) -> Claimed {
        Claimed {
            id,
            aggregate: aggregate.into(),
            attempts: 0,
            message: Message::new(format!("m{id}"), "k", ""),
        }
    }

    /// Fails (or panics, or hangs) on chosen ids; records the order of calls.
    #[derive(Clone)]
    struct Publisher {
        seen: Arc<Mutex<Vec<String>>>,
    }

    impl Service<Message> for Publisher {
        type Response = ();
        type Error = BoxError;
        type Future = futures_util::future::BoxFuture<'static, Result<(), BoxError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, m: Message) -> Self::Future {
            self.seen.lock().unwrap().push(m.id().to_owned());
            let id = m.id().to_owned();
            Box::pin(async move {
                match id.as_str() {
                    "m2" => Err("broker said no".into()),
                    "m4" => panic!("boom"),
                    "m6" => std::future::pending().await,
                    _ => Ok(()),
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_defers_the_rest_of_its_aggregate_only() {
        let p = Publisher {
            seen: Default::default(),
        };
        let rows = vec![
            row(1, "a"),
            row(2, "a"),
            row(3, "a"),
            row(4, "b"),
            row(5, "b"),
            row(6, "c"),
            row(7, "c"),
            row(8, "d"),
        ];
        let mut done = publish_batch(&p, rows, 2, Duration::from_secs(5)).await;
        done.sort_by_key(|d| d.0);
        let fates: Vec<_> = done.iter().map(|d| d.2.clone()).collect();
        assert_eq!(fates[0], Fate::Published);
        assert!(matches!(&fates[1], Fate::Failed(w) if w.contains("broker said no")));
        assert_eq!(fates[2], Fate::Deferred);
        assert!(matches!(&fates[3], Fate::Failed(w) if w.contains("panicked: boom")));
        assert_eq!(fates[4], Fate::Deferred);
        assert!(matches!(&fates[5], Fate::Failed(w) if w.contains("timed out after 5000 ms")));
        assert_eq!(fates[6], Fate::Deferred);
        assert_eq!(fates[7], Fate::Published);
        let seen = p.seen.lock().unwrap();
        assert!(!seen.contains(&"m3".to_owned()) && !seen.contains(&"m5".to_owned()));
    }

    #[tokio::test]
    async fn rows_of_an_aggregate_go_in_id_order() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let svc = tower::service_fn(move |m: Message| {
            let s = s.clone();
            async move {
                tokio::task::yield_now().await;
                s.lock().unwrap().push(m.id().to_owned());
                Ok::<_, Infallible>(())
            }
        });
        let rows = (1..=30)
            .map(|i| row(i, ["x", "y", "z"][(i % 3) as usize]))
            .collect();
        publish_batch(&svc, rows, 3, Duration::from_secs(5)).await;
        let seen = seen.lock().unwrap();
        for agg in 0..3 {
            let ids: Vec<i64> = seen
                .iter()
                .map(|m| m[1..].parse::<i64>().unwrap())
                .filter(|i| i % 3 == agg)
                .collect();
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
            assert_eq!(ids.len(), 10);
        }
    }
}
