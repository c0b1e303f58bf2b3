//! NATS in Docker containers with testcontainers, for the tests that must kill, pause and
//! restart nodes: one node, or a JetStream cluster of three on a Docker network of its own.
//! Each node publishes its client and monitoring ports on fixed host ports, so a node started
//! again is where its clients left it.
//!
//! The image is the compose file's `nats:<version>-alpine`, which `scripts/images.sh` pulls or,
//! where no registry answers, builds from PyPI's static `nats-server`.

use std::net::TcpListener;
use std::time::Duration;

use testcontainers::core::{ContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ImageExt};
use testcontainers_modules::nats::Nats;

use crate::{eventually, http, repository_root};

const CLIENT_PORT: u16 = 4222;
const ROUTE_PORT: u16 = 6222;
const MONITOR_PORT: u16 = 8222;

/// The NATS image of docker-compose.yml, as a (name, tag) pair.
pub fn nats_image() -> (String, String) {
    let compose = std::fs::read_to_string(repository_root().join("docker-compose.yml"))
        .expect("docker-compose.yml");
    let image = compose
        .lines()
        .find_map(|line| line.trim().strip_prefix("image: nats:"))
        .expect("docker-compose.yml names a nats image");
    ("nats".into(), image.trim().to_owned())
}

/// One NATS server in a container.
pub struct Node {
    pub name: String,
    /// The host ports of its client and monitoring listeners.
    pub client_port: u16,
    pub monitor_port: u16,
    container: ContainerAsync<Nats>,
}

impl Node {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    /// SIGKILLs the server, as a crash or a lost machine would; its store stays.
    pub async fn kill(&self) {
        self.container
            .stop_with_timeout(Some(0))
            .await
            .unwrap_or_else(|e| panic!("kill {}: {e}", self.name));
    }

    /// Stops the server as an orchestrator does (SIGTERM, then SIGKILL after Docker's grace)
    /// and starts it again.
    pub async fn restart(&self) {
        self.container
            .stop()
            .await
            .unwrap_or_else(|e| panic!("stop {}: {e}", self.name));
        self.start().await;
    }

    /// Starts the server again, with its store, and waits until its JetStream is current.
    pub async fn start(&self) {
        self.container
            .start()
            .await
            .unwrap_or_else(|e| panic!("start {}: {e}", self.name));
        self.wait_healthy().await;
    }

    /// Freezes the server's processes: to its peers and clients it stops answering, as behind
    /// a partition, while its connections stay open.
    pub async fn pause(&self) {
        self.container
            .pause()
            .await
            .unwrap_or_else(|e| panic!("pause {}: {e}", self.name));
    }

    pub async fn unpause(&self) {
        self.container
            .unpause()
            .await
            .unwrap_or_else(|e| panic!("unpause {}: {e}", self.name));
    }

    /// Waits until the server reports itself healthy with JetStream current (`/healthz`).
    pub async fn wait_healthy(&self) {
        eventually(&format!("{} to be healthy", self.name), || async {
            let response = self.monitor("/healthz").await?;
            match response.status {
                200 => Ok(()),
                _ => Err(String::from_utf8_lossy(&response.body).into_owned()),
            }
        })
        .await;
    }

    /// Whether a client that named itself `name` is connected to this server (`/connz`).
    pub async fn serves(&self, name: &str) -> bool {
        let Ok(response) = self.monitor("/connz").await else {
            return false;
        };
        let report = response.json();
        (report["connections"].as_array().into_iter().flatten()).any(|c| c["name"] == name)
    }

    /// A monitoring endpoint; a paused server does not answer, so give up after a while.
    async fn monitor(&self, path: &str) -> Result<http::Response, String> {
        let url = format!("http://127.0.0.1:{}{path}", self.monitor_port);
        match tokio::time::timeout(Duration::from_secs(2), http::get(&url)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(format!("{url}: {error}")),
            Err(_) => Err(format!("{url}: no answer within 2 s")),
        }
    }
}

/// NATS servers in containers: a single node or a JetStream cluster.
pub struct NatsNodes {
    pub nodes: Vec<Node>,
}

impl NatsNodes {
    /// One JetStream server.
    pub async fn single() -> Self {
        Self::start(1).await
    }

    /// A JetStream cluster of three, routed to each other on a Docker network of its own.
    pub async fn cluster() -> Self {
        Self::start(3).await
    }

    async fn start(count: usize) -> Self {
        let (image, tag) = nats_image();
        let network = format!("fluxgate-{:016x}", fastrand::u64(..));
        let names: Vec<String> = (1..=count).map(|i| format!("{network}-n{i}")).collect();
        let mut nodes = Vec::new();
        for name in &names {
            let routes: Vec<String> = (names.iter())
                .filter(|other| *other != name)
                .map(|other| format!("nats://{other}:{ROUTE_PORT}"))
                .collect();
            let mut args = vec![
                "--server_name".to_owned(),
                name.clone(),
                "--jetstream".into(),
                "--store_dir".into(),
                "/data".into(),
                "--http_port".into(),
                MONITOR_PORT.to_string(),
            ];
            if count > 1 {
                args.extend([
                    "--cluster_name".into(),
                    network.clone(),
                    "--cluster".into(),
                    format!("nats://0.0.0.0:{ROUTE_PORT}"),
                    "--routes".into(),
                    routes.join(","),
                ]);
            }
            let (client_port, monitor_port) = (free_port(), free_port());
            let container = Nats::default()
                .with_name(&image)
                .with_tag(&tag)
                .with_cmd(args)
                .with_container_name(name)
                .with_network(&network)
                .with_mapped_port(client_port, ContainerPort::Tcp(CLIENT_PORT))
                .with_mapped_port(monitor_port, ContainerPort::Tcp(MONITOR_PORT))
                .with_ready_conditions(vec![WaitFor::message_on_stderr("Server is ready")])
                .start()
                .await
                .unwrap_or_else(|e| {
                    panic!("start the NATS container {name} ({image}:{tag}; built by scripts/images.sh): {e}")
                });
            nodes.push(Node {
                name: name.clone(),
                client_port,
                monitor_port,
                container,
            });
        }
        let cluster = Self { nodes };
        for node in &cluster.nodes {
            node.wait_healthy().await;
        }
        cluster
    }

    /// Every node's client URL, comma-separated, as clients of a cluster are configured.
    pub fn url(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(Node::url).collect();
        urls.join(",")
    }

    /// The node a client that named itself `name` is connected to.
    pub async fn serving(&self, name: &str) -> &Node {
        let index = eventually(&format!("{name} to be connected"), || async {
            for (index, node) in self.nodes.iter().enumerate() {
                if node.serves(name).await {
                    return Ok(index);
                }
            }
            Err("on no node")
        })
        .await;
        &self.nodes[index]
    }

    /// The node whose server name is `name`.
    pub fn named(&self, name: &str) -> &Node {
        (self.nodes.iter())
            .find(|node| node.name == name)
            .unwrap_or_else(|| panic!("no node named {name}"))
    }

    /// The node that leads `stream`'s replicas, as the first node that answers sees it.
    pub async fn stream_leader(&self, stream: &str) -> &Node {
        self.stream_leader_other_than(stream, None).await
    }

    /// The node that leads `stream`'s replicas once it is not `former`: after an election.
    pub async fn stream_leader_other_than(&self, stream: &str, former: Option<&Node>) -> &Node {
        let leader = eventually(&format!("{stream} to have a new leader"), || async {
            for node in &self.nodes {
                if former.is_some_and(|former| former.name == node.name) {
                    continue;
                }
                let Ok(response) = node.monitor("/jsz?accounts=true&streams=true").await else {
                    continue;
                };
                let report = response.json();
                let streams = (report["account_details"].as_array().into_iter().flatten())
                    .flat_map(|account| account["stream_detail"].as_array().into_iter().flatten());
                for detail in streams {
                    if detail["name"] == stream
                        && let Some(leader) = detail["cluster"]["leader"].as_str()
                        && former.is_none_or(|former| former.name != leader)
                    {
                        return Ok(leader.to_owned());
                    }
                }
            }
            Err("no node reports a leader")
        })
        .await;
        self.named(&leader)
    }
}

/// A port free on the host now, for Docker to publish on.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}
