//! Replays dead letters kept in PostgreSQL (`PgDeadLetters`) to a RabbitMQ queue, after the fix
//! that makes them processable is deployed. Each letter is published with publisher confirms
//! and marked replayed only then; several replayers at once never replay one letter twice.
//!
//! ```sh
//! cargo run --example replay_dead_letters --features postgres,rabbitmq -- \
//!     postgres://postgres@127.0.0.1/shop amqp://guest:guest@127.0.0.1:5672/%2f payments [reason]
//! ```
//!
//! `reason` is one of `poison`, `max-attempts`, `not-retryable`, `key-reused` (all when left
//! out). Prints how many letters were waiting and how many were replayed.

use tower_rampart::{
    BoxError,
    message::{DeadLetterReason, postgres::PgDeadLetters, rabbitmq::RabbitPublisher},
};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db, amqp, queue, rest @ ..] = args.as_slice() else {
        eprintln!("usage: replay_dead_letters <postgres-url> <amqp-url> <queue> [reason]");
        std::process::exit(2);
    };
    let reason = match rest.first() {
        None => None,
        Some(name) => Some(DeadLetterReason::from_name(name).ok_or_else(|| {
            format!(
                "unknown reason {name:?}: expected poison, max-attempts, not-retryable or key-reused"
            )
        })?),
    };
    let pool = sqlx::PgPool::connect(db)
        .await
        .map_err(|e| format!("cannot connect to PostgreSQL at {db}: {e}"))?;
    let letters = PgDeadLetters::new(pool);
    let waiting = letters.pending(reason).await?;
    // The default exchange routes by queue name.
    let mut publisher = RabbitPublisher::builder(amqp.as_str(), "")
        .routing_key(queue.as_str())
        .build()?;
    let replayed = letters.replay(&mut publisher, 10_000, reason).await?;
    println!("{waiting} dead letters waiting, {replayed} replayed to {queue}");
    Ok(())
}
