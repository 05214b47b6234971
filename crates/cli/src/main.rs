//! `pigeonhole`: the command-line entry point. It runs a relay (`pigeonhole serve`) and is
//! the client: identities, relays, contacts, send, sync, inbox, read, listen and usage audits
//! (`commands`, on top of `pigeonhole-client`).

mod commands;
mod heap;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use pigeonhole_proto::keys::PublicKey;
use pigeonhole_relay::config::{AccountPolicy, LogFormat, RelayConfig};

/// Decentralized, end-to-end encrypted store-and-forward messaging.
#[derive(Parser)]
#[command(name = "pigeonhole", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// The client's home directory: key file and database (default: the platform's data
    /// directory, e.g. ~/.local/share/pigeonhole).
    #[arg(long, global = true, env = "PIGEONHOLE_HOME", value_name = "DIR")]
    home: Option<PathBuf>,

    /// Print results as JSON (for scripts).
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a relay: store and forward sealed records for the keys that hold accounts on it.
    ///
    /// Settings come from, in increasing priority: built-in defaults, the config file
    /// (--config, or $PIGEONHOLE_CONFIG), `--set KEY=VALUE` pairs and their environment
    /// variables, and the dedicated flags below. Every key of the config file can be set with
    /// --set, e.g. `--set limits.pull_limit=3 --set accounts.max_bytes=1000000`.
    ///
    /// The first line on stdout is `listening on http://ADDR`. SIGINT or SIGTERM stops the
    /// relay after in-flight writes are committed.
    #[command(args_conflicts_with_subcommands = true)]
    Serve(ServeArgs),

    /// Your identity: create, show, export, import a key.
    #[command(subcommand)]
    Id(commands::IdCommand),

    /// Your relays: add (registers an account), list, remove.
    #[command(subcommand)]
    Relay(commands::RelayCommand),

    /// The people you exchange messages with.
    #[command(subcommand)]
    Contact(commands::ContactCommand),

    /// Seal a message to a contact and store it on every one of your relays.
    Send {
        /// The contact's name or key; with --drop also a card (`pigeoncard1...` or a `.pigeon`
        /// file) of someone who is not a contact yet.
        to: String,
        /// The text to send.
        message: Option<String>,
        /// Send the contents of a text file instead.
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// Send as a drop: posted under the recipient's prefix on the relays of their card, paid
        /// with a postage token from each relay. The way to reach someone who does not know you
        /// yet (it lands in their requests); nothing outside the sealed letter names you.
        #[arg(long)]
        drop: bool,
        /// With --drop: leave your identity out of the letter too (no signature, no reply
        /// address): the recipient cannot tell who sent it.
        #[arg(long, requires = "drop")]
        anonymous: bool,
    },

    /// Fetch new messages from every contact's relays and acknowledge them.
    Sync,

    /// List received messages (`*` marks unread ones).
    Inbox {
        /// List message requests instead: drops from people who are not your contacts
        /// (add their card with `contact add` to move future messages to the inbox).
        #[arg(long)]
        requests: bool,
    },

    /// Show one message in full.
    Read {
        /// The message id shown by `inbox`.
        id: i64,
    },

    /// Stay connected to your contacts' relays and print messages as they arrive.
    Listen,

    /// Check each of your relays' signed usage report against your contacts' acks.
    Usage,
}

#[derive(Args)]
struct ServeArgs {
    #[command(subcommand)]
    command: Option<ServeCommand>,

    /// Address to listen on (use 127.0.0.1:0 to pick a free port).
    #[arg(long, env = "PIGEONHOLE_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,

    /// Data directory: the store and the relay's key.
    #[arg(long, env = "PIGEONHOLE_DATA", value_name = "DIR")]
    data: Option<PathBuf>,

    /// TOML config file (see `pigeonhole serve --print-config` for every setting).
    #[arg(long, env = "PIGEONHOLE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Who may open an account.
    #[arg(long, env = "PIGEONHOLE_POLICY", value_enum)]
    policy: Option<PolicyArg>,

    /// Log format on stderr.
    #[arg(long, env = "PIGEONHOLE_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormatArg>,

    /// Log filter (tracing syntax), e.g. `info` or `pigeonhole_relay=debug`.
    #[arg(
        long,
        env = "PIGEONHOLE_LOG",
        default_value = "info,fjall=warn,lsm_tree=warn",
        value_name = "FILTER"
    )]
    log: String,

    /// Override any config setting: `--set limits.pull_limit=3` (repeatable; the value is TOML).
    /// Also read from the environment as PIGEONHOLE_SET (settings separated by `;`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,

    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

#[derive(Subcommand)]
enum ServeCommand {
    /// Manage the relay's accounts (the relay must not be running on the same data directory).
    #[command(subcommand)]
    Account(AccountCommand),
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Add or re-activate an account, e.g. under the invite policy.
    Add {
        /// The account's public key: 64 hex characters, `pigeon1...` or `npub1...`.
        key: String,
        /// Data directory of the relay.
        #[arg(long, env = "PIGEONHOLE_DATA", value_name = "DIR")]
        data: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum PolicyArg {
    Open,
    Invite,
    Contract,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let global = commands::Global { home: cli.home, json: cli.json };
    let result = match cli.command {
        Command::Serve(args) => serve(args, global.json),
        Command::Id(command) => commands::id(&global, command),
        Command::Relay(command) => commands::relay(&global, command),
        Command::Contact(command) => commands::contact(&global, command),
        Command::Send { to, message, file, drop, anonymous } => {
            if drop {
                commands::send_drop(&global, &to, message, file, anonymous)
            } else {
                commands::send(&global, &to, message, file)
            }
        }
        Command::Sync => commands::sync(&global),
        Command::Inbox { requests } => commands::inbox(&global, requests),
        Command::Read { id } => commands::read(&global, id),
        Command::Listen => commands::listen(&global),
        Command::Usage => commands::usage(&global),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // The whole cause chain, one cause per line, then a non-zero exit.
            #[allow(clippy::print_stderr, reason = "the binary reports fatal errors on stderr")]
            {
                eprintln!("error: {error}");
                for cause in error.chain().skip(1) {
                    eprintln!("  caused by: {cause}");
                }
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Applies `key.path=value` overrides to the config through its TOML form, so every setting
/// is reachable without a dedicated flag.
fn apply_overrides(config: RelayConfig, overrides: &[String]) -> Result<RelayConfig> {
    if overrides.is_empty() {
        return Ok(config);
    }
    let mut value = toml::Value::try_from(&config).context("serializing the configuration")?;
    for item in overrides {
        let (path, raw) = item
            .split_once('=')
            .with_context(|| format!("`--set {item}`: expected KEY=VALUE, e.g. limits.pull_limit=3"))?;
        let parsed: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
            Ok(mut table) => table.remove("v").context("parsed value")?,
            // Bare words are strings: `--set accounts.policy=invite`.
            Err(_) => toml::Value::String(raw.to_owned()),
        };
        let parts: Vec<&str> = path.trim().split('.').collect();
        let (last, sections) =
            parts.split_last().with_context(|| format!("`--set {item}`: empty setting name"))?;
        let mut cursor = &mut value;
        for part in sections {
            cursor = cursor
                .get_mut(*part)
                .filter(|v| v.is_table())
                .with_context(|| format!("`--set {item}`: unknown section `{part}`"))?;
        }
        let table = cursor.as_table_mut().with_context(|| format!("`--set {item}`: not a section"))?;
        if !table.contains_key(*last) || table.get(*last).is_some_and(toml::Value::is_table) {
            bail!("`--set {item}`: unknown setting `{path}`; see `pigeonhole serve --print-config`");
        }
        table.insert((*last).to_owned(), parsed);
    }
    let config: RelayConfig = value.try_into().context("applying --set overrides")?;
    config.validate()?;
    Ok(config)
}

fn effective_config(args: &ServeArgs) -> Result<RelayConfig> {
    let mut config = match &args.config {
        Some(path) => RelayConfig::load(path)?,
        None => RelayConfig::default(),
    };
    let mut overrides: Vec<String> = std::env::var("PIGEONHOLE_SET")
        .map(|v| v.split(';').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    overrides.extend(args.set.iter().cloned());
    config = apply_overrides(config, &overrides)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(data) = &args.data {
        config.data = data.clone();
    }
    if let Some(policy) = args.policy {
        config.accounts.policy = match policy {
            PolicyArg::Open => AccountPolicy::Open,
            PolicyArg::Invite => AccountPolicy::Invite,
            PolicyArg::Contract => AccountPolicy::Contract,
        };
    }
    if let Some(format) = args.log_format {
        config.log_format = match format {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        };
    }
    config.validate()?;
    Ok(config)
}

fn init_logging(format: LogFormat, filter: &str) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("invalid --log filter `{filter}`"))?;
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|e| anyhow::anyhow!("cannot start logging: {e}"))
}

#[allow(clippy::print_stdout, reason = "serve prints its address and account results on stdout by contract")]
fn serve(args: ServeArgs, json: bool) -> Result<()> {
    if let Some(ServeCommand::Account(AccountCommand::Add { key, data })) = args.command {
        let key = PublicKey::parse(&key).with_context(|| {
            format!("`{key}` is not a public key (64 hex characters, pigeon1... or npub1...)")
        })?;
        let account = pigeonhole_relay::server::add_account(&data, key, now_ms()).with_context(|| {
            format!("adding the account in {} (stop the relay using this directory first)", data.display())
        })?;
        if json {
            println!(
                "{}",
                serde_json::json!({"key": account.key.to_hex(), "status": "active", "createdAt": account.created_at})
            );
        } else {
            println!("account {} is active", account.key);
        }
        return Ok(());
    }
    let config = effective_config(&args)?;
    if args.print_config {
        print!("{}", toml::to_string(&config).context("printing the configuration")?);
        return Ok(());
    }
    init_logging(config.log_format, &args.log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        pigeonhole_relay::server::serve(
            config,
            |addr| {
                use std::io::Write as _;
                // The metrics recorder is installed by now: the first figures are not lost.
                heap::report_heap_metrics();
                println!("listening on http://{addr}");
                let _ = std::io::stdout().flush();
            },
            shutdown_signal(),
        )
        .await
    })?;
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
