//! Runs the real `fluxgate-dispatcher` binary against a NATS server and the Kubernetes API
//! stand-in (through a kubeconfig), and reads the outcome events it records.

use std::path::Path;

use async_nats::jetstream;
use fluxgate_shared::contract::{self, Outcome};
use serde_json::Value;

use crate::process::Service;

pub struct Dispatcher {
    pub admin_port: u16,
    pub service: Service,
}

impl Dispatcher {
    /// Starts a dispatcher; `kubeconfig` points it at the stand-in. Without a receivers file it
    /// takes the Receivers from there too.
    pub async fn start(
        nats_url: &str,
        receivers_file: Option<&Path>,
        kubeconfig: &Path,
        extra_args: &[&str],
    ) -> Self {
        Self::start_with(nats_url, receivers_file, kubeconfig, extra_args, &[]).await
    }

    /// [`Dispatcher::start`] with environment variables added to the test's.
    pub async fn start_with(
        nats_url: &str,
        receivers_file: Option<&Path>,
        kubeconfig: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut args: Vec<String> = vec!["--nats-url".into(), nats_url.into()];
        if let Some(file) = receivers_file {
            args.extend(["--receivers-file".into(), file.display().to_string()]);
        }
        args.extend([
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
            "--reload-interval".into(),
            "100ms".into(),
        ]);
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let kubeconfig = kubeconfig.display().to_string();
        let mut env = env.to_vec();
        env.push(("KUBECONFIG", kubeconfig.as_str()));
        let (service, ports) = Service::start(
            "fluxgate-dispatcher",
            &args,
            &env,
            "fluxgate_dispatcher::listen",
            &["admin"],
        )
        .await;
        Self {
            admin_port: ports[0],
            service,
        }
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }
}

/// Every outcome event recorded so far, oldest first, one per delivery it concerns (as the
/// CLI reads them: a message listing several deliveries is that event for each).
pub async fn outcomes(client: &async_nats::Client) -> Vec<Value> {
    let Ok(mut stream) = jetstream::new(client.clone())
        .get_stream(contract::OUTCOMES_STREAM)
        .await
    else {
        return Vec::new();
    };
    let Ok(info) = stream.info().await else {
        return Vec::new();
    };
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut events = Vec::new();
    for sequence in first.max(1)..=last {
        if let Ok(message) = stream.get_raw_message(sequence).await
            && let Ok(outcome) = serde_json::from_slice::<Outcome>(&message.payload)
        {
            let each = outcome.per_delivery().into_iter();
            events.extend(each.filter_map(|one| serde_json::to_value(one).ok()));
        }
    }
    events
}
