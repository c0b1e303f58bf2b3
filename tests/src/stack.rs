//! The end-to-end tests' stack, built to order: a private `nats-server`, the Kubernetes API
//! stand-in with its objects, a receivers file (else the binaries read the cluster's
//! Receivers), ingest and a dispatcher -- each test asks for the parts it needs, and reads
//! the stored deliveries and outcomes through the stack.

use std::path::{Path, PathBuf};

use async_nats::jetstream;
use fluxgate_shared::contract;
use serde_json::Value;

use crate::apiserver::ApiServer;
use crate::dispatcher::{Dispatcher, outcomes};
use crate::eventually;
use crate::ingest::Ingest;
use crate::nats::{NatsServer, NatsSetup};
use crate::webhook::hook_path;

/// What to start; see [`Stack::builder`].
#[derive(Default)]
pub struct StackBuilder {
    nats: NatsSetup,
    nats_url: Option<String>,
    nats_client: Option<async_nats::ConnectOptions>,
    receivers: Option<String>,
    cluster: Option<Vec<Value>>,
    rbac: Option<String>,
    ingest: Option<Vec<String>>,
    dispatcher: Option<Vec<String>>,
    env: Vec<(String, String)>,
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

impl StackBuilder {
    /// An environment variable of ingest and the dispatcher (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub fn services_env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Extra `nats-server` configuration lines (for example `max_payload: 65536`).
    pub fn nats_config(mut self, lines: &str) -> Self {
        self.nats.config = lines.to_owned();
        self
    }

    /// A configuration file of the repository to include, as a deployment would.
    pub fn nats_include(mut self, file: PathBuf) -> Self {
        self.nats.includes.push(file);
        self
    }

    /// The server's environment, which its configuration can refer to (`$NAME`).
    pub fn nats_env(mut self, name: &str, value: &str) -> Self {
        self.nats.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Use these NATS servers (comma-separated URLs, say of containers) instead of starting one.
    pub fn nats_url(mut self, url: String) -> Self {
        self.nats_url = Some(url);
        self
    }

    /// How the test itself connects to that server (credentials, TLS).
    pub fn nats_client(mut self, options: async_nats::ConnectOptions) -> Self {
        self.nats_client = Some(options);
        self
    }

    /// Serve these manifests from a receivers file; without one, the binaries watch the
    /// stand-in's Receivers.
    pub fn receivers(mut self, manifests: impl Into<String>) -> Self {
        self.receivers = Some(manifests.into());
        self
    }

    /// Start the Kubernetes API stand-in holding `objects` (the dispatcher's cluster).
    pub fn cluster(mut self, objects: impl IntoIterator<Item = Value>) -> Self {
        self.cluster = Some(objects.into_iter().collect());
        self
    }

    /// Make the stand-in enforce the RBAC of these manifests (Roles, ClusterRoles, bindings).
    pub fn rbac(mut self, manifests: &str) -> Self {
        self.rbac = Some(manifests.to_owned());
        self
    }

    /// Start ingest with these extra flags.
    pub fn ingest(mut self, args: &[&str]) -> Self {
        self.ingest = Some(owned(args));
        self
    }

    /// Start a dispatcher with these extra flags (it needs the cluster).
    pub fn dispatcher(mut self, args: &[&str]) -> Self {
        self.dispatcher = Some(owned(args));
        self
    }

    pub async fn start(self) -> Stack {
        let dir = tempfile::tempdir().expect("tempdir");
        let nats = match self.nats_url {
            Some(_) => None,
            None => Some(NatsServer::start_with(&self.nats).await),
        };
        let nats_url = (self.nats_url)
            .unwrap_or_else(|| nats.as_ref().map(NatsServer::url).unwrap_or_default());
        let receivers_file = self.receivers.map(|manifests| {
            let file = dir.path().join("receivers.yaml");
            std::fs::write(&file, manifests).expect("write the receivers file");
            file
        });
        let (api, kubeconfig) = match self.cluster {
            Some(objects) => {
                let api = ApiServer::start_local().await;
                if let Some(manifests) = &self.rbac {
                    api.enforce_rbac(manifests)
                        .expect("the RBAC of the manifests");
                }
                for object in objects {
                    api.apply(object);
                }
                let kubeconfig = api.write_kubeconfig(dir.path()).expect("kubeconfig");
                (Some(api), Some(kubeconfig))
            }
            None => (None, None),
        };
        let mut stack = Stack {
            nats,
            nats_url,
            nats_client: self.nats_client.unwrap_or_default(),
            api,
            ingest: None,
            dispatcher: None,
            receivers_file,
            kubeconfig,
            dir,
            env: self.env,
        };
        if let Some(args) = self.ingest {
            stack.ingest = Some(stack.start_ingest(&args).await);
        }
        if let Some(args) = self.dispatcher {
            stack.dispatcher = Some(stack.start_dispatcher(&args).await);
        }
        stack
    }
}

/// A running stack; parts not asked for panic when used.
pub struct Stack {
    nats: Option<NatsServer>,
    nats_url: String,
    nats_client: async_nats::ConnectOptions,
    api: Option<ApiServer>,
    ingest: Option<Ingest>,
    dispatcher: Option<Dispatcher>,
    receivers_file: Option<PathBuf>,
    kubeconfig: Option<PathBuf>,
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Stack {
    pub fn builder() -> StackBuilder {
        StackBuilder::default()
    }

    /// The stack's own `nats-server`.
    pub fn nats(&self) -> &NatsServer {
        self.nats
            .as_ref()
            .expect("the stack was built with .nats_url()")
    }

    pub fn nats_mut(&mut self) -> &mut NatsServer {
        self.nats
            .as_mut()
            .expect("the stack was built with .nats_url()")
    }

    /// The URL(s) the binaries connect to.
    pub fn nats_url(&self) -> &str {
        &self.nats_url
    }

    pub fn api(&self) -> &ApiServer {
        self.api
            .as_ref()
            .expect("the stack was built without .cluster()")
    }

    pub fn ingest(&self) -> &Ingest {
        self.ingest
            .as_ref()
            .expect("the stack was built without .ingest()")
    }

    pub fn ingest_mut(&mut self) -> &mut Ingest {
        self.ingest
            .as_mut()
            .expect("the stack was built without .ingest()")
    }

    pub fn dispatcher(&self) -> &Dispatcher {
        self.dispatcher
            .as_ref()
            .expect("the stack was built without .dispatcher()")
    }

    pub fn dispatcher_mut(&mut self) -> &mut Dispatcher {
        self.dispatcher
            .as_mut()
            .expect("the stack was built without .dispatcher()")
    }

    pub fn receivers_file(&self) -> &Path {
        self.receivers_file
            .as_deref()
            .expect("the stack was built without .receivers()")
    }

    pub fn kubeconfig(&self) -> &Path {
        self.kubeconfig
            .as_deref()
            .expect("the stack was built without .cluster()")
    }

    /// A directory that lives as long as the stack.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts another ingest with these flags: from the receivers file when there is one,
    /// else from the cluster.
    pub async fn start_ingest<S: AsRef<str>>(&self, args: &[S]) -> Ingest {
        let mut args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        // The receivers file's path, or the kubeconfig's: borrowed by `args` or `env`.
        let source;
        let mut env: Vec<(&str, &str)> = (self.env.iter())
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        match &self.receivers_file {
            Some(file) => {
                source = file.display().to_string();
                args.splice(0..0, ["--receivers-file", source.as_str()]);
            }
            None => {
                source = self.kubeconfig().display().to_string();
                env.push(("KUBECONFIG", source.as_str()));
            }
        }
        Ingest::start_with(&self.nats_url, &args, &env).await
    }

    /// Starts another dispatcher with these flags, on the stand-in.
    pub async fn start_dispatcher<S: AsRef<str>>(&self, args: &[S]) -> Dispatcher {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let file = self.receivers_file.as_deref();
        let env: Vec<(&str, &str)> = (self.env.iter())
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Dispatcher::start_with(&self.nats_url, file, self.kubeconfig(), &args, &env).await
    }

    /// The webhook URL of a receiver on the stack's ingest.
    pub fn hook_url(&self, token: &str, name: &str, namespace: &str) -> String {
        self.ingest().hook_url(&hook_path(token, name, namespace))
    }

    pub async fn client(&self) -> async_nats::Client {
        self.nats_client
            .clone()
            .connect(fluxgate_shared::nats_servers(&self.nats_url).expect("the stack's NATS URLs"))
            .await
            .expect("connect to the test nats-server")
    }

    /// The deliveries stream.
    pub async fn deliveries(&self) -> jetstream::stream::Stream {
        jetstream::new(self.client().await)
            .get_stream(contract::DELIVERIES_STREAM)
            .await
            .expect("the deliveries stream")
    }

    /// How many deliveries the stream holds.
    pub async fn stored(&self) -> u64 {
        let mut stream = self.deliveries().await;
        stream.info().await.expect("stream info").state.messages
    }

    /// The last delivery stored for a receiver.
    pub async fn last_delivery(
        &self,
        namespace: &str,
        receiver: &str,
    ) -> jetstream::message::StreamMessage {
        self.deliveries()
            .await
            .get_last_raw_message_by_subject(&contract::delivery_subject(namespace, receiver))
            .await
            .expect("a stored delivery")
    }

    /// Every outcome event recorded so far, oldest first.
    pub async fn outcomes(&self) -> Vec<Value> {
        outcomes(&self.client().await).await
    }

    /// Waits until `done` holds for the recorded outcomes, and returns them.
    pub async fn outcomes_until(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let client = self.client().await;
        eventually(what, || async {
            let events = outcomes(&client).await;
            if done(&events) {
                Ok(events)
            } else {
                Err(events)
            }
        })
        .await
    }
}
