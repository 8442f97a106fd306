//! Breaker configurations the tests share.

use std::time::Duration;

use tower_rampart::circuit_breaker::{Builder, Config};

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
