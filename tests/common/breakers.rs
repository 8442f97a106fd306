//! Breaker configurations the tests share.

use std::time::Duration;

use tower_rampart::{
    circuit_breaker::{Builder, CircuitBreakerLayer, Config},
    classify::HttpStatus,
    mode::RespondHttp,
};

/// Named `name`: the last 10 calls, opening at 50 % failures once 5 calls are in, for 30 s
/// (longer than any test, so an open breaker stays open).
pub fn window_of_ten(name: &str) -> Builder {
    Config::builder()
        .name(name)
        .count_window(10)
        .minimum_calls(5)
        .failure_rate(0.5)
        .open_duration(Duration::from_secs(30))
}

/// Opens at the first failure, for `open`; then one probe decides.
pub fn one_probe(open: Duration) -> Builder {
    Config::builder()
        .consecutive_failures(1)
        .open_duration(open)
        .half_open_permits(1)
}

/// A server-side breaker layer over `config`: HTTP statuses decide, and a refused call is
/// answered with the breaker's own 503.
pub fn server_side(config: Config) -> CircuitBreakerLayer<HttpStatus, RespondHttp> {
    CircuitBreakerLayer::new(config)
        .classify(HttpStatus::default())
        .respond_http()
}
