//! A deadline for each Kubernetes API call that is not a watch: an API server that takes the
//! connection and never answers must not hold a Secret read, a Lease renewal or a target's
//! resolution -- and what waits behind it -- forever. And the backoff of every watch.

use std::future::Future;
use std::time::Duration;

/// How long one call may take.
pub const KUBE_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The pause between a failed watch and the next attempt: from 0.5 s doubling to 5 s, with
/// jitter, reset after two quiet minutes. kube-runtime's default goes up to 30 s, which would
/// leave a cache or the catalog that long behind the API server once it is back.
pub fn watch_backoff() -> impl kube::runtime::utils::Backoff {
    let exponential = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    kube::runtime::utils::ResetTimerBackoff::new(
        kube::runtime::watcher::ExponentialBackoff::from(exponential),
        Duration::from_secs(120),
    )
}

/// `call`, or an error once [`KUBE_CALL_TIMEOUT`] has passed without an answer.
pub async fn within_deadline<T>(
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    tokio::time::timeout(KUBE_CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            Err(kube::Error::Service(
                format!("no answer from the API server within {KUBE_CALL_TIMEOUT:?}").into(),
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_call_without_an_answer_fails_at_the_deadline() {
        let silent = within_deadline(std::future::pending::<Result<(), kube::Error>>());
        let error = silent.await.expect_err("no answer");
        assert!(error.to_string().contains("within 10s"), "{error}");
        let answered = within_deadline(async { Ok::<_, kube::Error>(7) }).await;
        assert_eq!(answered.ok(), Some(7));
    }
}
