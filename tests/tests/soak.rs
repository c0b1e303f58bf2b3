//! A minute of `fluxgate_tests::soak`: the real ingest and dispatcher under a mix of valid,
//! duplicate, badly signed, oversized and slow requests, with a NATS restart and a dispatcher
//! SIGKILL in the middle. Memory is the benchmark's to measure (`fluxgate-load soak`); this
//! checks what must hold however fast the machine is.

use std::time::Duration;

use fluxgate_tests::soak::{self, Kind, Options};

#[tokio::test]
async fn a_minute_of_mixed_requests_and_faults_loses_nothing_and_leaks_no_files() {
    let options = Options {
        duration: Duration::from_secs(60),
        senders: 2,
        pace: Duration::from_millis(20),
        slow_clients: 4,
        receivers: 10,
        sample_every: Duration::from_secs(1),
    };
    let report = soak::run(options.clone()).await;
    eprintln!("{report}");

    assert!(report.accepted > 0, "nothing was accepted");
    assert!(
        report.nothing_lost(),
        "answered 2xx without a terminal outcome: {:?}",
        report.lost
    );
    // Each kind got the answers it deserves, and only those: 503 only where NATS was away.
    let allowed: [(Kind, &[&str]); 5] = [
        (Kind::Valid, &["202", "503"]),
        (Kind::Duplicate, &["202 duplicate", "503"]),
        (Kind::BadSignature, &["401"]),
        (Kind::Oversized, &["413"]),
        (Kind::Slow, &["408"]),
    ];
    for (kind, answers) in allowed {
        let seen = report.answers.get(&kind).cloned().unwrap_or_default();
        assert!(!seen.is_empty(), "no {} request was answered", kind.label());
        for answer in seen.keys() {
            assert!(
                answers.contains(&answer.as_str()),
                "{} request answered {answer}",
                kind.label()
            );
        }
    }
    // Ingest counted what senders saw.
    let answered = |kind: Kind, answer: &str| {
        let by_kind = report.answers.get(&kind);
        by_kind.and_then(|a| a.get(answer)).copied().unwrap_or(0) as u64
    };
    let counted = |outcome: &str| report.ingest_outcomes.get(outcome).copied().unwrap_or(0);
    assert_eq!(counted("accepted"), report.accepted as u64);
    assert_eq!(counted("unauthorized"), answered(Kind::BadSignature, "401"));
    assert_eq!(counted("too_large"), answered(Kind::Oversized, "413"));
    // Once the load is over, ingest holds no more files than before it, but for the senders'
    // idle keep-alive connections.
    let (first, _, last) = report.fds(0);
    assert!(
        last <= first + options.senders,
        "ingest had {first} open files before the soak and {last} after it"
    );
}
