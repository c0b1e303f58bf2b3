//! Spawns a private `nats-server` with JetStream on a port of its own choosing and a temporary
//! store, so tests never share state with the machine's server (or race each other for ports);
//! it can be killed and restarted in place.

use crate::eventually;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// `FLUXGATE_NATS_SERVER`, else `nats-server` on PATH, else Debian's `/usr/sbin/nats-server`.
pub fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FLUXGATE_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file());
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"))
}

pub struct NatsServer {
    pub port: u16,
    store: tempfile::TempDir,
    config: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

/// How to configure a server beyond its defaults.
#[derive(Debug, Clone, Default)]
pub struct NatsSetup {
    /// Extra configuration lines (for example `max_payload: 65536`).
    pub config: String,
    /// Files copied beside the configuration and included from it (nats-server includes only
    /// by relative path).
    pub includes: Vec<PathBuf>,
    /// The server's environment, which the configuration can refer to (`$NAME`).
    pub env: Vec<(String, String)>,
}

impl NatsServer {
    /// Starts a server with default limits.
    pub async fn start() -> Self {
        Self::start_with_config("").await
    }

    /// Starts a server with extra configuration lines (for example `max_payload: 65536`).
    pub async fn start_with_config(extra: &str) -> Self {
        Self::start_with(&NatsSetup {
            config: extra.to_owned(),
            ..Default::default()
        })
        .await
    }

    pub async fn start_with(setup: &NatsSetup) -> Self {
        let store = tempfile::tempdir().expect("temporary store");
        let config = store.path().join("nats.conf");
        let mut text = setup.config.clone();
        for file in &setup.includes {
            let name = file.file_name().expect("a file name");
            std::fs::copy(file, store.path().join(name)).expect("copy an included file");
            text.push_str(&format!("\ninclude {:?}\n", name.to_string_lossy()));
        }
        std::fs::write(&config, text).expect("write nats config");
        let mut server = Self {
            port: 0,
            store,
            config,
            env: setup.env.clone(),
            child: None,
        };
        server.spawn().await;
        server
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server on `self.port`, or on a port it picks itself (and reports in a ports
    /// file) when that is still 0, then waits until it accepts clients.
    async fn spawn(&mut self) {
        let ports_dir = self.store.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).expect("ports directory");
        let port = if self.port == 0 {
            "-1".to_owned()
        } else {
            self.port.to_string()
        };
        let child = Command::new(server_binary())
            .args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
            .arg(self.store.path().join("js"))
            .arg("-c")
            .arg(&self.config)
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .arg("-l")
            .arg(self.log_file())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", server_binary().display()));
        self.child = Some(child);
        self.port = self.reported_port(&ports_dir).await;
        self.wait_ready().await;
    }

    /// The client port from the `<name>_<pid>.ports` file nats-server writes once it listens.
    async fn reported_port(&mut self, dir: &std::path::Path) -> u16 {
        eventually("nats-server to report its port", || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("nats-server exited at start-up: {status}");
            }
            let report = std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .find_map(|entry| std::fs::read_to_string(entry.path()).ok())
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
            let port = report
                .as_ref()
                .and_then(|r| r["nats"][0].as_str())
                .and_then(|u| u.rsplit(':').next())
                .and_then(|p| p.parse::<u16>().ok());
            async move { port.ok_or(report) }
        })
        .await
    }

    /// Waits until the server accepts a client connection.
    async fn wait_ready(&self) {
        // nats-server starts JetStream (and recovers its streams) before it listens, so an
        // accepted connection means JetStream is ready.
        // A server that requires credentials or TLS refuses this client: it is up all the same.
        eventually("nats-server to accept clients", || async {
            match async_nats::connect(self.url()).await {
                Ok(_) => Ok(()),
                Err(error) if fluxgate_shared::nats_is_refusal(&error) => Ok(()),
                Err(error) => Err(error),
            }
        })
        .await
    }

    fn log_file(&self) -> PathBuf {
        self.store.path().join("nats.log")
    }

    /// What the server has logged so far (permission violations, for one).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// SIGKILLs the server, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same store (clients reconnect there).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connect to test nats-server")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
