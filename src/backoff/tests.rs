use std::time::Duration;

use super::{Backoff, Jitter};

const N: usize = 10_000;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The mean of N draws of the first delay of a fresh sequence each (or of the n-th delay).
fn sample(backoff: &Backoff, nth: usize) -> Vec<f64> {
    (0..N)
        .map(|_| backoff.delays().nth(nth).unwrap().as_secs_f64())
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn within(actual: f64, expected: f64, tolerance: f64) -> bool {
    (actual - expected).abs() <= expected * tolerance
}

#[test]
fn nominal_curves() {
    let e = Backoff::exponential(ms(100))
        .multiplier(3.0)
        .max_delay(ms(1000));
    assert_eq!(
        (0..4).map(|n| e.nominal(n)).collect::<Vec<_>>(),
        [100, 300, 900, 1000].map(ms)
    );
    assert_eq!(e.nominal(u32::MAX), ms(1000), "no overflow");
    let l = Backoff::linear(ms(100), ms(50)).max_delay(ms(220));
    assert_eq!(
        (0..4).map(|n| l.nominal(n)).collect::<Vec<_>>(),
        [100, 150, 200, 220].map(ms)
    );
    assert_eq!(Backoff::constant(ms(7)).nominal(99), ms(7));
}

#[test]
fn full_jitter_is_uniform_below_the_delay() {
    // Third retry: nominal 400 ms, capped delays still vary.
    let b = Backoff::exponential(ms(100))
        .max_delay(ms(1000))
        .jitter(Jitter::Full);
    let s = sample(&b, 2);
    assert!(s.iter().all(|d| (0.0..=0.4).contains(d)));
    assert!(within(mean(&s), 0.2, 0.03), "mean {}", mean(&s));
    let capped = sample(&b, 10);
    assert!(capped.iter().all(|d| *d <= 1.0));
    assert!(
        within(mean(&capped), 0.5, 0.03),
        "jitter applies after the cap"
    );
}

#[test]
fn equal_jitter_keeps_half() {
    let b = Backoff::exponential(ms(100)).jitter(Jitter::Equal);
    let s = sample(&b, 1); // nominal 200 ms
    assert!(s.iter().all(|d| (0.1..=0.2).contains(d)));
    assert!(within(mean(&s), 0.15, 0.03), "mean {}", mean(&s));
}

#[test]
fn decorrelated_jitter_grows_from_the_previous_delay() {
    let b = Backoff::exponential(ms(100))
        .max_delay(ms(10_000))
        .jitter(Jitter::Decorrelated);
    // First delay: uniform(base, base * 3).
    let s = sample(&b, 0);
    assert!(s.iter().all(|d| (0.1..=0.3).contains(d)));
    assert!(within(mean(&s), 0.2, 0.03), "mean {}", mean(&s));
    // Every later delay is within [base, min(cap, previous * 3)].
    let mut d = b.delays();
    let mut previous = ms(100);
    for _ in 0..1000 {
        let next = d.next().unwrap();
        assert!(next >= ms(100) && next <= (previous * 3).min(ms(10_000)));
        previous = next;
    }
}

#[test]
fn proportional_jitter_matches_grpc() {
    let b = Backoff::exponential(ms(1000)).jitter(Jitter::Proportional(200));
    let s = sample(&b, 0);
    assert!(s.iter().all(|d| (0.8..=1.2).contains(d)));
    assert!(within(mean(&s), 1.0, 0.03), "mean {}", mean(&s));
}

#[test]
fn no_jitter_is_exact() {
    let b = Backoff::exponential(ms(100)).jitter(Jitter::None);
    assert!(sample(&b, 1).iter().all(|d| *d == 0.2));
}

#[test]
fn sequences_are_independent() {
    let b = Backoff::exponential(ms(100)).jitter(Jitter::Full);
    let (x, y): (Vec<_>, Vec<_>) = (
        b.delays().take(8).collect(),
        b.clone().delays().take(8).collect(),
    );
    assert_ne!(x, y, "two requests must not retry in lockstep");
    // A seeded backoff is reproducible, and its sequences still differ from each other.
    let seeded = |s| Backoff::exponential(ms(100)).seeded(s);
    let a = seeded(7);
    let first: Vec<_> = a.delays().take(8).collect();
    let second: Vec<_> = a.delays().take(8).collect();
    assert_ne!(first, second);
    let again = seeded(7);
    assert_eq!(first, again.delays().take(8).collect::<Vec<_>>());
}

#[test]
fn validation() {
    assert!(Backoff::default().validate().is_ok());
    let refused = |b: Backoff| b.validate().unwrap_err();
    let e = refused(Backoff::exponential(Duration::ZERO));
    assert_eq!(e.setting(), Some("initial_delay"));
    assert_eq!(e.reason(), "must be above zero");
    let e = refused(Backoff::exponential(ms(100)).multiplier(0.5));
    assert_eq!(e.setting(), Some("multiplier"));
    assert_eq!(
        e.message(),
        "multiplier must be a finite number >= 1, got 0.5"
    );
    let e = refused(Backoff::exponential(ms(100)).max_delay(ms(10)));
    assert_eq!(e.setting(), Some("max_delay"));
    assert_eq!(
        e.to_string(),
        "invalid backoff configuration: max_delay must not be below initial_delay (100ms), got 10ms"
    );
    let e = refused(Backoff::exponential(ms(100)).jitter(Jitter::Proportional(1001)));
    assert_eq!(e.setting(), Some("jitter"));
    assert!(e.reason().ends_with("got 1001"), "{e}");
    // A zero constant delay is allowed (retry at once).
    assert!(Backoff::constant(Duration::ZERO).validate().is_ok());
}

/// Proportional jitter on a delay capped near `Duration::MAX` stays a valid duration (`validate`
/// refuses such a cap; the delays must not overflow all the same).
#[test]
fn proportional_jitter_never_overflows() {
    let b = Backoff::exponential(Duration::from_secs(1))
        .max_delay(Duration::MAX)
        .jitter(Jitter::Proportional(200));
    assert_eq!(b.validate().unwrap_err().setting(), Some("max_delay"));
    let mut d = b.delays();
    for _ in 0..200 {
        let _ = d.next().unwrap();
    }
}
