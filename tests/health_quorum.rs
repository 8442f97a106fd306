//! Issue #14 item 12c: a keyed family of per-host breakers in readiness. `critical` fails the
//! probe when any one of them is open (every instance of a service calling that host at once);
//! `critical_when` fails it only when enough of the family is open.

use tokio::time::Instant;
use tower_rampart::{
    circuit_breaker::{CircuitBreakerLayer, Config, KeyedBreakers},
    health::{OpenBreakers, Readiness, Status},
};

fn family(hosts: usize) -> std::sync::Arc<KeyedBreakers<String>> {
    let layer = CircuitBreakerLayer::keyed(
        Config::builder().name("hosts").build().unwrap(),
        |k: &String| k.clone(),
    );
    let family = layer.breakers();
    for i in 0..hosts {
        family.get_or_insert(format!("h{i}"), Instant::now());
    }
    family
}

fn open(family: &KeyedBreakers<String>, i: usize) {
    family.get(&format!("h{i}")).unwrap().force_open();
}

/// The decision kept: a family added with `critical` fails on any open breaker, as documented.
#[tokio::test]
async fn critical_fails_on_one_open_breaker_of_a_family() {
    let f = family(4);
    open(&f, 0);
    let report = Readiness::new().critical(f.clone()).report().await;
    assert_eq!(report.status, Status::Fail);
}

#[tokio::test]
async fn critical_when_at_least_n_breakers_of_a_family_are_open() {
    let f = family(4);
    let readiness = Readiness::new().critical_when(f.clone(), OpenBreakers::at_least(2).unwrap());
    assert_eq!(readiness.report().await.status, Status::Pass);
    open(&f, 0);
    let report = readiness.report().await;
    assert_eq!(
        report.status,
        Status::Warn,
        "one host of four: warn, still ready"
    );
    let check = report.get("hosts/h0:state").next().unwrap();
    assert_eq!(check.status, Status::Warn);
    let output = check.output.as_deref().unwrap();
    assert!(output.contains("1 of 4"), "{output}");
    open(&f, 3);
    let report = readiness.report().await;
    assert_eq!(report.status, Status::Fail, "two hosts of four");
    let output = report
        .get("hosts/h3:state")
        .next()
        .unwrap()
        .output
        .clone()
        .unwrap();
    assert!(output.contains("2 of 4"), "{output}");
    assert_eq!(
        report.get("hosts/h1:state").next().unwrap().status,
        Status::Pass
    );
}

#[tokio::test]
async fn critical_when_a_fraction_of_a_family_is_open() {
    let f = family(4);
    let readiness = Readiness::new().critical_when(f.clone(), OpenBreakers::fraction(0.5).unwrap());
    open(&f, 1);
    assert_eq!(readiness.report().await.status, Status::Warn);
    open(&f, 2);
    assert_eq!(readiness.report().await.status, Status::Fail, "50 % of 4");
    // An empty family never fails.
    let empty = family(0);
    let r = Readiness::new().critical_when(empty, OpenBreakers::fraction(0.5).unwrap());
    assert_eq!(r.report().await.status, Status::Pass);
}

#[test]
fn thresholds_out_of_range_are_refused() {
    for bad in [0.0, -0.5, 1.5, f64::NAN] {
        let err = OpenBreakers::fraction(bad).unwrap_err();
        assert_eq!(err.setting(), Some("open_fraction"), "{err}");
    }
    let err = OpenBreakers::at_least(0).unwrap_err();
    assert_eq!(err.setting(), Some("open_breakers"), "{err}");
    assert!(err.to_string().contains("at least 1"), "{err}");
}
