//! Wiring: opens the data directory (store and relay key), starts the commit thread, the
//! expiry sweeper and the HTTP server, and shuts them down in order when asked: stop
//! accepting, finish in-flight requests, commit every queued write, close the store.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use pigeonhole_proto::keys::{PublicKey, SecretKey};
use pigeonhole_store::{Account, AccountStatus, FjallStore, Store, StoreError};

use crate::commit::Committer;
use crate::config::{RelayConfig, StorageConfig};
use crate::engine::Engine;
use crate::http::{AppState, now_ms, router};
use crate::notify::Notifier;

/// Name of the relay's secret key file inside the data directory.
pub const KEY_FILE: &str = "relay.key";
/// Name of the store directory inside the data directory.
pub const STORE_DIR: &str = "store";

/// Why the relay could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory or key file could not be used.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The relay key file is damaged.
    #[error("relay key file {0} is not a valid key (64 hex characters); restore it from backup")]
    BadKey(PathBuf),
    /// The store could not be opened.
    #[error("cannot open the store in {path}")]
    Store {
        /// The store directory.
        path: PathBuf,
        /// The cause.
        source: StoreError,
    },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let context = context.into();
    move |source| ServerError::Io { context, source }
}

/// Loads the relay's key from `data/relay.key`, creating it (mode 0600) on first start.
pub fn load_or_create_key(data: &Path) -> Result<SecretKey, ServerError> {
    std::fs::create_dir_all(data)
        .map_err(io_error(format!("cannot create data directory {}", data.display())))?;
    let path = data.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => SecretKey::parse(text.trim()).map_err(|_| ServerError::BadKey(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SecretKey::generate(&mut rand_core::OsRng);
            let hex = zeroize::Zeroizing::new(hex::encode(*key.to_bytes()));
            write_private(&path, hex.as_bytes())
                .map_err(io_error(format!("cannot write {}", path.display())))?;
            tracing::info!(relay = %key.public_key(), "created a new relay key");
            Ok(key)
        }
        Err(e) => Err(io_error(format!("cannot read {}", path.display()))(e)),
    }
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Opens the store in `data/store` with the given memory and thread settings.
pub fn open_store(data: &Path, storage: &StorageConfig) -> Result<FjallStore, ServerError> {
    let path = data.join(STORE_DIR);
    FjallStore::open_with(&path, storage.fjall()).map_err(|source| ServerError::Store { path, source })
}

/// Adds (or re-activates) an account, for the operator's `account add` command. The relay
/// must not be running on the same data directory.
pub fn add_account(data: &Path, key: PublicKey, now: u64) -> Result<Account, ServerError> {
    let store = open_store(data, &StorageConfig::default())?;
    let path = data.join(STORE_DIR);
    let mut account = store
        .account(&key)
        .map_err(|source| ServerError::Store { path: path.clone(), source })?
        .unwrap_or(Account {
            key,
            status: AccountStatus::Active,
            created_at: now,
            max_bytes: 0,
            max_records_per_day: 0,
        });
    account.status = AccountStatus::Active;
    store.put_account(&account).map_err(|source| ServerError::Store { path, source })?;
    Ok(account)
}

/// How often the Prometheus recorder drains its histograms when nobody scrapes /metrics.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// The process-wide Prometheus recorder (metrics macros record into one global recorder).
///
/// Histograms keep every sample in a buffer until the recorder's upkeep folds them into its
/// bounded summaries; scraping /metrics does that too, but a relay nobody scrapes would grow by
/// every request's latency sample (8 bytes a request, hundreds of MB a day under load). A
/// thread runs the upkeep for the life of the process.
fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new().install_recorder().ok()?;
            let upkeep = handle.clone();
            let started = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
                loop {
                    std::thread::sleep(METRICS_UPKEEP);
                    upkeep.run_upkeep();
                }
            });
            if let Err(e) = started {
                tracing::warn!("cannot start the metrics upkeep thread: {e}");
            }
            Some(handle)
        })
        .clone()
}

/// A task aborted when its handle is dropped.
struct TaskGuard(tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Deletes expired records and drops every few seconds, forgets spent stamps of epochs that
/// can no longer be spent, and refreshes the storage gauges.
fn spawn_sweeper(engine: Arc<Engine>, limiter_state: std::sync::Weak<AppState>) -> TaskGuard {
    TaskGuard(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(5));
        loop {
            ticker.tick().await;
            let engine = engine.clone();
            let result = tokio::task::spawn_blocking(move || {
                let store = engine.store();
                let now = now_ms();
                let expired = store.expire(now, 10_000)?;
                let expired_drops = store.expire_drops(now, 10_000)?;
                // Stamps of epochs before the previous one are refused by epoch already.
                let previous = crate::postage::Postage::epoch(&engine, now).saturating_sub(1);
                store.prune_stamps(previous, 100_000)?;
                let totals = store.totals()?;
                let drop_totals = store.drop_totals()?;
                for ks in store.keyspace_stats() {
                    metrics::gauge!("pigeonhole_store_tables", "keyspace" => ks.name).set(ks.tables as f64);
                    metrics::gauge!("pigeonhole_store_l0_tables", "keyspace" => ks.name)
                        .set(ks.l0_tables as f64);
                    metrics::gauge!("pigeonhole_store_blob_files", "keyspace" => ks.name)
                        .set(ks.blob_files as f64);
                }
                Ok::<_, StoreError>((expired, expired_drops, totals, drop_totals))
            })
            .await;
            match result {
                Ok(Ok((expired, expired_drops, totals, drop_totals))) => {
                    // Forget idle rate-limit keys so the limiters' memory stays bounded.
                    if let Some(state) = limiter_state.upgrade() {
                        state.ip_limiter.retain_recent();
                        state.registration_limiter.retain_recent();
                        state.write_limiter.retain_recent();
                        state.postage.retain_recent();
                    }
                    metrics::counter!("pigeonhole_expired_records_total").increment(expired as u64);
                    metrics::counter!("pigeonhole_expired_drops_total").increment(expired_drops as u64);
                    metrics::gauge!("pigeonhole_stored_records").set(totals.records as f64);
                    metrics::gauge!("pigeonhole_stored_bytes").set(totals.bytes as f64);
                    metrics::gauge!("pigeonhole_stored_drops").set(drop_totals.records as f64);
                    metrics::gauge!("pigeonhole_stored_drop_bytes").set(drop_totals.bytes as f64);
                }
                Ok(Err(error)) => tracing::warn!(%error, "expiry sweep failed"),
                Err(error) => tracing::warn!(%error, "expiry sweep task failed"),
            }
        }
    }))
}

/// Accepts connections until `shutdown` resolves, then lets in-flight requests finish (up to
/// 30 s). At most `max_connections` connections are served at once (more wait in the kernel's
/// backlog), and a client must send its request headers within `request_timeout_secs`.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: &crate::config::Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    stopping: tokio::sync::watch::Sender<bool>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;

    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let header_timeout = Duration::from_secs(u64::from(limits.request_timeout_secs));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Running out of file descriptors and similar: back off and keep serving.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Answers and pushes are small frames that must leave at once: without this, Nagle's
        // algorithm holds a push until the client acknowledges the previous one (tens of ms).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set");
        }
        metrics::gauge!("pigeonhole_connections").increment(1.0);
        let service = hyper::service::service_fn({
            let app = app.clone();
            move |request: hyper::Request<hyper::body::Incoming>| {
                let mut request = request.map(axum::body::Body::new);
                request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                tower::ServiceExt::oneshot(app.clone(), request)
            }
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
            metrics::gauge!("pigeonhole_connections").decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    // Long polls, slow uploads and WebSocket sessions end now; requests being served finish.
    let _ = stopping.send(true);
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown()).await.is_err() {
        tracing::warn!("some connections were still open 30 s after shutdown began");
    }
    Ok(())
}

/// Runs a relay until `shutdown` resolves. `on_listening` is called with the bound address
/// before the first request is served.
pub async fn serve(
    config: RelayConfig,
    on_listening: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let data = config.data.clone();
    let key = load_or_create_key(&data)?;
    let store: Arc<dyn Store> = Arc::new(tokio::task::block_in_place(|| open_store(&data, &config.storage))?);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(io_error(format!("cannot listen on {}", config.listen)))?;
    let addr = listener.local_addr().map_err(io_error("cannot read the bound address"))?;
    let engine = Arc::new(Engine::new(store.clone(), key, config));
    let notifier = Arc::new(Notifier::default());
    let committer = Committer::start(engine.clone(), notifier.clone());
    let (stopping, shutdown_watch) = tokio::sync::watch::channel(false);
    let state =
        Arc::new(AppState::new(engine.clone(), committer, notifier, metrics_handle(), shutdown_watch));
    let app = router(state.clone());
    let sweeper = spawn_sweeper(engine.clone(), Arc::downgrade(&state));
    tracing::info!(%addr, relay = %engine.public_key(), data = %data.display(), last_seq = store.last_seq(), "relay started");
    on_listening(addr);

    let served = accept_loop(listener, app, &state.engine.config().limits, shutdown, stopping).await;
    drop(sweeper);
    // In-flight requests are done; dropping the last state reference stops the commit
    // thread after it has committed everything queued.
    drop(state);
    tracing::info!("relay stopped");
    served.map_err(io_error("the HTTP server failed"))
}
