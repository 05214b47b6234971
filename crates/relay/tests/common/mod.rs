//! A relay started in this test process on loopback, stopped through its shutdown future.

#![allow(dead_code, reason = "shared by several test binaries; each uses a part of it")]

use pigeonhole_proto::keys::{PublicKey, SecretKey};
use pigeonhole_relay::config::RelayConfig;
use serde_json::Value;
use tokio::sync::oneshot;

/// Installs rustls's `ring` provider as the process default. In a workspace build reqwest's
/// TLS feature set is shared with the client library (rustls without a built-in provider,
/// so that only `ring` is ever compiled), and a reqwest client refuses to start without one.
pub(crate) fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A running in-process relay.
pub(crate) struct TestRelay {
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
    /// The relay's key.
    pub(crate) key: PublicKey,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TestRelay {
    /// A relay with the default configuration and a fresh key.
    pub(crate) async fn start() -> Self {
        Self::start_with(None, |_| {}).await
    }

    /// A relay signing with `key` (when given), with `change` applied to its configuration.
    pub(crate) async fn start_with(key: Option<&SecretKey>, change: impl FnOnce(&mut RelayConfig)) -> Self {
        install_crypto();
        let dir = tempfile::tempdir().expect("tempdir");
        if let Some(key) = key {
            std::fs::write(dir.path().join("relay.key"), hex::encode(*key.to_bytes())).expect("key file");
        }
        let mut config = RelayConfig {
            listen: "127.0.0.1:0".parse().expect("address"),
            data: dir.path().to_owned(),
            ..RelayConfig::default()
        };
        change(&mut config);
        let (addr_tx, addr_rx) = oneshot::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            pigeonhole_relay::server::serve(
                config,
                move |addr| {
                    let _ = addr_tx.send(addr);
                },
                async move {
                    let _ = stopped.await;
                },
            )
            .await
            .expect("the relay runs");
        });
        let addr = addr_rx.await.expect("the relay reports its address");
        let url = format!("http://{addr}");
        let health: Value =
            reqwest::get(format!("{url}/health")).await.expect("health").json().await.expect("json");
        let key = PublicKey::from_hex(health["relay"].as_str().expect("relay key")).expect("hex key");
        Self { url, key, stop: Some(stop), task: Some(task), _dir: dir }
    }

    /// Stops the relay and waits until it has shut down.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("the relay stops cleanly");
        }
    }
}
