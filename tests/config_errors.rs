//! What an operator reads when a configuration file is wrong: one table of broken files (as a
//! new user writes them), the loader each goes through, and what the error must say. Every
//! error names the key at fault and says what to write instead, in plain words.

use tower_rampart::{
    config::{PolicySettings, RegistrySettings},
    registry::Registry,
};

#[derive(Debug, Clone, Copy)]
enum Loader {
    /// `RegistrySettings::from_yaml`
    Yaml,
    /// `RegistrySettings::from_toml`
    Toml,
    /// `Registry::from_yaml` (the registry's own path to the settings)
    RegistryYaml,
    /// `Registry::from_toml`
    RegistryToml,
    /// `PolicySettings::from_yaml`
    PolicyYaml,
}

enum Expect {
    /// The file loads.
    Loads,
    /// The error contains every one of these, and none of the `Avoid` words.
    Says(&'static [&'static str]),
}

use Expect::{Loads, Says};
use Loader::{PolicyYaml, RegistryToml, RegistryYaml, Toml, Yaml};

/// Words of the parser's vocabulary an operator cannot act on.
const AVOID: &[&str] = &[
    "expected u32",
    "expected u64",
    "floating point",
    "expected struct",
    "DuplicateKeyPolicy",
    "expected number at",
    "at 0",
    "JSON",
];

fn load(loader: Loader, text: &str) -> Result<(), String> {
    match loader {
        Yaml => RegistrySettings::from_yaml(text).map(drop),
        Toml => RegistrySettings::from_toml(text).map(drop),
        RegistryYaml => Registry::from_yaml(text).map(drop),
        RegistryToml => Registry::from_toml(text).map(drop),
        PolicyYaml => PolicySettings::from_yaml(text).map(drop),
    }
    .map_err(|e| e.to_string())
}

/// A registry file with one policy `a` holding `body` (indented under it).
fn policy(body: &str) -> String {
    let body: String = body.lines().map(|l| format!("    {l}\n")).collect();
    format!("policies:\n  a:\n{body}")
}

#[test]
fn every_broken_file_gets_an_error_an_operator_can_act_on() {
    let table: Vec<(&str, String, Loader, Expect)> = vec![
        // An empty file is a mistake (a wrong path, a truncated write), not an empty registry.
        (
            "empty yaml",
            String::new(),
            Yaml,
            Says(&["empty", "`policies`"]),
        ),
        (
            "comment-only yaml",
            "# policies go here\n\n".into(),
            RegistryYaml,
            Says(&["empty", "`policies`"]),
        ),
        (
            "empty toml",
            "\n".into(),
            Toml,
            Says(&["empty", "`policies`"]),
        ),
        (
            "comment-only toml",
            "# policies go here\n".into(),
            RegistryToml,
            Says(&["empty", "`policies`"]),
        ),
        // Whole numbers.
        (
            "negative count",
            policy("circuit_breaker:\n  minimum_calls: -1"),
            Yaml,
            Says(&[
                "policies.a.circuit_breaker.minimum_calls: ",
                "a whole number from 0 to 4294967295",
                "-1",
            ]),
        ),
        (
            "huge count",
            policy("retry:\n  max_attempts: 99999999999999999999"),
            Yaml,
            Says(&[
                "policies.a.retry.max_attempts: ",
                "a whole number from 0 to 4294967295",
            ]),
        ),
        (
            "fractional count",
            policy("retry:\n  max_attempts: 2.5"),
            Yaml,
            Says(&["policies.a.retry.max_attempts: ", "a whole number", "2.5"]),
        ),
        (
            "huge count, toml",
            "[policies.a.retry]\nmax_attempts = 99999999999999999999\n".into(),
            Toml,
            Says(&["max_attempts", "line 2", "number too large"]),
        ),
        (
            "rate as text",
            policy("circuit_breaker:\n  failure_rate: half"),
            Yaml,
            Says(&[
                "policies.a.circuit_breaker.failure_rate: ",
                "a number",
                "\"half\"",
            ]),
        ),
        // The breaker engineer's fix (issue #14 item 16): a zero window is blamed on the window.
        (
            "zero window",
            policy("circuit_breaker:\n  failure_threshold: 5\n  sliding_window_size: 0"),
            Yaml,
            Says(&["sliding_window_size", "must be at least 1"]),
        ),
        // What the file must hold.
        (
            "prose",
            "This file holds the retry settings of the payment service.\n".into(),
            Yaml,
            Says(&["must be a mapping", "`defaults`", "`policies`", "a string"]),
        ),
        (
            "a list",
            "- payments\n- search\n".into(),
            RegistryYaml,
            Says(&["must be a mapping", "`defaults`", "`policies`", "a list"]),
        ),
        (
            "a policy that is a word",
            "policies:\n  a: fast\n".into(),
            Yaml,
            Says(&["policies.a: ", "`circuit_breaker`", "`retry`"]),
        ),
        (
            "a policy file that is prose",
            "retry three times\n".into(),
            PolicyYaml,
            Says(&["must be a mapping", "`circuit_breaker`", "`retry`"]),
        ),
        // A key written twice: which key, both lines, no parser option.
        (
            "duplicate key",
            policy("retry:\n  max_attempts: 3\n  max_attempts: 5"),
            Yaml,
            Says(&["`max_attempts`", "twice", "line 4", "line 5"]),
        ),
        (
            "duplicate policy",
            "policies:\n  a: {}\n  b: {}\n  a: {}\n".into(),
            RegistryYaml,
            Says(&["`a`", "twice", "line 2", "line 4"]),
        ),
        // Durations.
        (
            "negative duration",
            policy("timeout:\n  total: -5s"),
            Yaml,
            Says(&[
                "policies.a.timeout.total: ",
                "cannot be negative",
                "\"-5s\"",
            ]),
        ),
        (
            "negative duration, toml",
            "[policies.a.timeout]\ntotal = \"-5s\"\n".into(),
            Toml,
            Says(&["policies.a.timeout.total: ", "cannot be negative"]),
        ),
        (
            "a duration above one year",
            policy("timeout:\n  total: 2years"),
            Yaml,
            Says(&["policies.a.timeout.total: ", "at most one year"]),
        ),
        (
            "a breaker wait above one year",
            policy("circuit_breaker:\n  recovery_timeout: 400days"),
            RegistryYaml,
            Says(&[
                "policies.a.circuit_breaker.recovery_timeout: ",
                "at most one year",
            ]),
        ),
        (
            "a ttl above one year",
            "[policies.a.idempotency]\nttl = \"500d\"\n".into(),
            Toml,
            Says(&["policies.a.idempotency.ttl: ", "at most one year"]),
        ),
        (
            "a retry cap above one year",
            policy("retry:\n  retry_after_cap: 10000h"),
            Yaml,
            Says(&["policies.a.retry.retry_after_cap: ", "at most one year"]),
        ),
        (
            "a duration humantime cannot hold",
            policy("retry:\n  max_delay: 1000000000y"),
            Yaml,
            Says(&[
                "policies.a.retry.max_delay: ",
                "at most one year",
                "\"1000000000y\"",
            ]),
        ),
        (
            "a duration too long for any clock",
            policy("timeout:\n  attempt: 99999999999999999999999y"),
            Yaml,
            Says(&["policies.a.timeout.attempt: ", "at most one year"]),
        ),
        (
            "a defaults duration above one year",
            "defaults:\n  timeout: { total: 366d }\npolicies:\n  a: {}\n".into(),
            Yaml,
            Says(&["defaults.timeout.total: ", "at most one year"]),
        ),
        (
            "one year is fine",
            policy("timeout:\n  total: 365d"),
            Yaml,
            Loads,
        ),
        // The wrong loader.
        (
            "toml to the yaml loader",
            "[policies.search.retry]\nmax_attempts = 3\n".into(),
            RegistryYaml,
            Says(&["looks like TOML", "from_toml"]),
        ),
        (
            "toml keys to the yaml loader",
            "[defaults]\ncritical = false\n\n[policies.search]\n".into(),
            Yaml,
            Says(&["looks like TOML", "from_toml"]),
        ),
        (
            "yaml to the toml loader",
            "policies:\n  search:\n    retry:\n      max_attempts: 3\n".into(),
            RegistryToml,
            Says(&["looks like YAML", "from_yaml"]),
        ),
        // Statuses are names too, quoted or not.
        (
            "unquoted status",
            policy("retry_policy:\n  retryable_exceptions: [503, NetworkTimeout]"),
            Yaml,
            Loads,
        ),
        (
            "unquoted status, toml",
            "[policies.a.retry]\nretry_on = [503, \"NetworkTimeout\"]\nnever_retry = [501]\n"
                .into(),
            Toml,
            Loads,
        ),
        (
            "unknown status number",
            policy("retry:\n  retry_on: [999]"),
            Yaml,
            Says(&["policies.a.retry.retry_on[0]: ", "999"]),
        ),
    ];

    let mut wrong = Vec::new();
    for (case, text, loader, expect) in &table {
        let got = load(*loader, text);
        let ok = match (expect, &got) {
            (Loads, Ok(())) => true,
            (Says(words), Err(message)) => {
                words.iter().all(|w| message.contains(w))
                    && !AVOID.iter().any(|w| message.contains(w))
            }
            _ => false,
        };
        if !ok {
            let wanted = match expect {
                Loads => "loads".to_owned(),
                Says(words) => format!("says {words:?}"),
            };
            wrong.push(format!("{case} ({loader:?}): wanted {wanted}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

/// The statuses written as numbers are kept as names: they serialize back as strings and the
/// settings read back the same.
#[test]
fn unquoted_statuses_read_back_as_names() {
    let settings = RegistrySettings::from_yaml(
        "policies:\n  a:\n    retry:\n      retry_on: [503, 5xx]\n      never_retry: [501]\n",
    )
    .unwrap();
    let retry = settings.policies["a"].retry_settings().unwrap().clone();
    assert_eq!(
        retry.retry_on,
        Some(vec!["503".to_owned(), "5xx".to_owned()])
    );
    assert_eq!(retry.never_retry, Some(vec!["501".to_owned()]));
    let json = serde_json::to_value(&settings).unwrap();
    assert_eq!(RegistrySettings::from_value(json).unwrap(), settings);
}

/// Settings built in code skip the file's parser: the builders' own bound (one year) still
/// refuses huge durations, and the error still names the key.
#[test]
fn settings_built_in_code_are_bounded_too_and_name_the_key() {
    use std::time::Duration;
    use tower_rampart::config::{
        BreakerSettings, IdempotencySettings, RetrySettings, TimeoutSettings,
    };

    let huge = Duration::MAX;
    let mut cases: Vec<(PolicySettings, &str)> = Vec::new();
    let mut p = PolicySettings::default();
    let mut t = TimeoutSettings::default();
    t.total = Some(huge);
    p.timeout = Some(t);
    cases.push((p, "policies.a.timeout.total: "));
    let mut p = PolicySettings::default();
    let mut i = IdempotencySettings::default();
    i.ttl = Some(huge);
    p.idempotency = Some(i);
    cases.push((p, "policies.a.idempotency.ttl: "));
    let mut p = PolicySettings::default();
    let mut r = RetrySettings::default();
    r.max_delay = Some(huge);
    p.retry = Some(r);
    cases.push((p, "policies.a.retry.max_delay: "));
    let mut p = PolicySettings::default();
    let mut b = BreakerSettings::default();
    b.open_duration = Some(huge);
    b.max_open_duration = Some(huge);
    p.circuit_breaker = Some(b);
    cases.push((p, "policies.a.circuit_breaker."));

    let mut wrong = Vec::new();
    for (policy, path) in cases {
        let mut settings = RegistrySettings::default();
        settings.policies.insert("a".into(), policy);
        let got = Registry::from_settings(settings).map(drop);
        match &got {
            Err(e) if e.to_string().starts_with(path) && e.to_string().contains("one year") => {}
            _ => wrong.push(format!("{path}: {got:?}")),
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}
