//! A throwaway PKI for TLS tests: a CA, a server certificate for `127.0.0.1` and `localhost`,
//! and a client certificate for mutual TLS, as PEM files in a directory of their own.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "fluxgate test CA");
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        write(dir.path(), "ca.pem", &ca_cert.pem());
        let leaf = |name: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let mut params = CertificateParams::new(sans).expect("params");
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().expect("key");
            let cert: Certificate = params
                .signed_by(&key, &ca_cert, &ca_key)
                .expect("certificate");
            write(dir.path(), &format!("{name}.pem"), &cert.pem());
            write(dir.path(), &format!("{name}-key.pem"), &key.serialize_pem());
        };
        leaf(
            "server",
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        leaf("client", vec![], ExtendedKeyUsagePurpose::ClientAuth);
        Self { dir }
    }

    /// `ca.pem`, `server.pem`, `server-key.pem`, `client.pem` or `client-key.pem`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The `tls` block of a nats-server configuration requiring client certificates.
    pub fn server_config(&self) -> String {
        format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: true\n}}\n",
            self.path("server.pem"),
            self.path("server-key.pem"),
            self.path("ca.pem"),
        )
    }

    /// The flags that make a fluxgate binary connect with the client certificate.
    pub fn client_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for (flag, _, file) in CLIENT_FILES {
            args.push(flag.to_owned());
            args.push(self.path(file).display().to_string());
        }
        args
    }

    /// The same as environment variables (`NATS_CA`, `NATS_CERT`, `NATS_KEY`).
    pub fn client_env(&self) -> Vec<(&'static str, String)> {
        CLIENT_FILES
            .iter()
            .map(|(_, variable, file)| (*variable, self.path(file).display().to_string()))
            .collect()
    }

    /// Client options for the tests' own connections.
    pub fn client_options(&self) -> async_nats::ConnectOptions {
        async_nats::ConnectOptions::new()
            .add_root_certificates(self.path("ca.pem"))
            .add_client_certificate(self.path("client.pem"), self.path("client-key.pem"))
            .require_tls(true)
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// The client's TLS files: flag, environment variable, file name.
const CLIENT_FILES: [(&str, &str, &str); 3] = [
    ("--nats-ca", "NATS_CA", "ca.pem"),
    ("--nats-cert", "NATS_CERT", "client.pem"),
    ("--nats-key", "NATS_KEY", "client-key.pem"),
];

fn write(dir: &Path, name: &str, pem: &str) {
    std::fs::write(dir.join(name), pem).expect("write PEM");
}
