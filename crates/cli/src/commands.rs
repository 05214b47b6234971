//! The client commands: identities, relays, contacts, send, sync, inbox, read, listen and
//! usage, on top of `pigeonhole-client`. Human output by default, `--json` for scripts.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the client commands print their results on stdout and warnings on stderr by contract"
)]

use std::io::IsTerminal as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use pigeonhole_client::db::{Folder, StoredMessage};
use pigeonhole_client::error::ClientError;
use pigeonhole_client::home::Home;
use pigeonhole_client::{Client, ClientConfig, SendReport};
use pigeonhole_proto::keys::SecretKey;
use serde_json::{Value, json};

/// Environment variable holding the passphrase, for scripts.
pub(crate) const PASSPHRASE_ENV: &str = "PIGEONHOLE_PASSPHRASE";

/// Options every client command shares.
pub(crate) struct Global {
    pub(crate) home: Option<PathBuf>,
    pub(crate) json: bool,
}

#[derive(Subcommand)]
pub(crate) enum IdCommand {
    /// Create a new identity: a key, its encrypted key file and a first card.
    New {
        /// The name shown on your card.
        #[arg(long)]
        label: String,
    },
    /// Show your card: the compact string to share, your key, relays and drop prefix.
    Show {
        /// Also draw the card string as a QR code in the terminal.
        #[arg(long)]
        qr: bool,
    },
    /// Write your signed card as a `.pigeon` file (to stdout without FILE).
    Export {
        /// Where to write it, e.g. alice.pigeon.
        file: Option<PathBuf>,
    },
    /// Create an identity from an existing secret key (64 hex characters, nsec1... or
    /// pigeonsec1...). Without KEY it is read from the terminal (hidden) or stdin.
    ImportKey {
        /// The secret key (prefer leaving it out: command lines end up in shell history).
        key: Option<String>,
        /// The name shown on your card.
        #[arg(long, default_value = "")]
        label: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum RelayCommand {
    /// Register an account on a relay and add it to your card; your contacts are told.
    Add {
        /// The relay's base URL, e.g. http://127.0.0.1:7070.
        url: String,
        /// Invite code, for relays that register by invitation.
        #[arg(long)]
        invite: Option<String>,
    },
    /// Your relays, whether each answers now, and its signed info.
    List,
    /// Remove a relay from your card; your contacts are told.
    Remove {
        /// The relay's base URL.
        url: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum ContactCommand {
    /// Add someone from their card: a .pigeon file or a pigeoncard1... string.
    Add {
        /// A .pigeon file, or the card string itself.
        card: String,
        /// Local name (default: the card's label).
        #[arg(long)]
        name: Option<String>,
    },
    /// Your contacts and the relays their cards list.
    List,
    /// Forget a contact.
    Remove {
        /// The contact's name.
        name: String,
    },
}

fn home_of(global: &Global) -> Result<Home> {
    match &global.home {
        Some(dir) => Ok(Home::new(dir)),
        None => Home::platform_default()
            .context("this platform has no data directory for pigeonhole: pass --home DIR"),
    }
}

fn config() -> ClientConfig {
    ClientConfig::default()
}

fn passphrase(confirm: bool) -> Result<String> {
    if let Ok(value) = std::env::var(PASSPHRASE_ENV) {
        return Ok(value);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no passphrase: set {PASSPHRASE_ENV} or run in a terminal to be asked");
    }
    let first = rpassword::prompt_password("passphrase: ").context("reading the passphrase")?;
    if confirm {
        let second = rpassword::prompt_password("passphrase again: ").context("reading the passphrase")?;
        if first != second {
            bail!("the two passphrases differ; nothing was created");
        }
    }
    Ok(first)
}

fn open(global: &Global) -> Result<Client> {
    Ok(Client::open(home_of(global)?, config())?)
}

fn open_unlocked(global: &Global) -> Result<Client> {
    let mut client = open(global)?;
    client.unlock(&passphrase(false)?)?;
    Ok(client)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string()));
}

fn card_json(card: &pigeonhole_proto::card::IdentityCard) -> Value {
    let content = card.content();
    json!({
        "label": content.label,
        "pubkey": content.pubkey.to_hex(),
        "npub": content.pubkey.to_bech32m(),
        "relays": content.relays,
        "prefix": {"bits": content.prefix.bits(), "value": content.prefix.value()},
        "updated": content.updated,
        "card": card.to_bech32m(),
    })
}

pub(crate) fn id(global: &Global, command: IdCommand) -> Result<()> {
    match command {
        IdCommand::New { label } => {
            let home = home_of(global)?;
            let client = Client::create(home, &label, &passphrase(true)?, None, config())?;
            created(global, &client)
        }
        IdCommand::ImportKey { key, label } => {
            let text = match key {
                Some(key) => key,
                None if std::io::stdin().is_terminal() => {
                    rpassword::prompt_password("secret key: ").context("reading the key")?
                }
                None => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line).context("reading the key from stdin")?;
                    line
                }
            };
            let secret = SecretKey::parse(&text).map_err(ClientError::BadKey).context(
                "expected 64 hex characters, nsec1... or pigeonsec1... (a public key cannot be imported)",
            )?;
            let home = home_of(global)?;
            let client = Client::create(home, &label, &passphrase(true)?, Some(secret), config())?;
            created(global, &client)
        }
        IdCommand::Show { qr } => {
            let client = open(global)?;
            let card = client.card()?;
            if global.json {
                print_json(&card_json(&card));
                return Ok(());
            }
            let content = card.content();
            println!("label:   {}", content.label);
            println!("key:     {}", content.pubkey.to_bech32m());
            println!("hex:     {}", content.pubkey.to_hex());
            println!("prefix:  {} bits, value {:#010x}", content.prefix.bits(), content.prefix.value());
            if content.relays.is_empty() {
                println!("relays:  none yet (add one with `pigeonhole relay add URL`)");
            } else {
                println!("relays:  {}", content.relays.join(", "));
            }
            println!("card:    {}", card.to_bech32m());
            if qr {
                let code = qrcode::QrCode::new(card.to_bech32m().to_uppercase().as_bytes())
                    .context("the card is too large for a QR code")?;
                let image = code
                    .render::<qrcode::render::unicode::Dense1x2>()
                    .dark_color(qrcode::render::unicode::Dense1x2::Light)
                    .light_color(qrcode::render::unicode::Dense1x2::Dark)
                    .build();
                println!("{image}");
            }
            Ok(())
        }
        IdCommand::Export { file } => {
            let client = open(global)?;
            let json = client.card()?.to_json();
            match file {
                Some(path) => {
                    std::fs::write(&path, format!("{json}\n"))
                        .with_context(|| format!("writing {}", path.display()))?;
                    if global.json {
                        print_json(&json!({"file": path.display().to_string()}));
                    } else {
                        println!("card written to {}", path.display());
                    }
                }
                None => println!("{json}"),
            }
            Ok(())
        }
    }
}

fn created(global: &Global, client: &Client) -> Result<()> {
    let card = client.card()?;
    if global.json {
        let mut value = card_json(&card);
        value["home"] = json!(client.home().dir().display().to_string());
        print_json(&value);
    } else {
        println!("identity created in {}", client.home().dir().display());
        println!("key: {}", card.content().pubkey.to_bech32m());
        println!("next: `pigeonhole relay add URL`, then share `pigeonhole id export FILE`");
    }
    Ok(())
}

fn send_report_json(report: &SendReport) -> Value {
    json!({
        "to": report.to.to_hex(),
        "toName": report.to_name,
        "recordId": report.record_id,
        "messageId": report.message_id,
        "stored": report.stored(),
        "relays": report.relays.iter().map(|r| match &r.result {
            Ok(outcome) => json!({
                "url": r.url,
                "ok": true,
                "seq": outcome.seq,
                "duplicate": outcome.duplicate,
                "storedAt": outcome.receipt.leaf.stored_at,
                "expiresAt": outcome.receipt.leaf.expires_at,
                "receipt": serde_json::to_value(&outcome.receipt).unwrap_or(Value::Null),
            }),
            Err(error) => json!({"url": r.url, "ok": false, "error": error.to_string()}),
        }).collect::<Vec<_>>(),
    })
}

fn print_send_report(report: &SendReport) {
    for relay in &report.relays {
        match &relay.result {
            Ok(outcome) => println!(
                "  stored on {} (seq {}, receipt verified, relay {}, commit root {})",
                relay.url,
                outcome.seq,
                outcome.receipt.leaf.relay,
                hex_prefix(&outcome.receipt.commit.root),
            ),
            Err(error) => println!("  FAILED on {}: {error}", relay.url),
        }
    }
}

fn hex_prefix(bytes: &[u8; 32]) -> String {
    let mut text = String::with_capacity(16);
    for byte in &bytes[..8] {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

fn print_change(global: &Global, change: &pigeonhole_client::RelayChange, what: &str) {
    if global.json {
        print_json(&json!({
            "card": card_json(&change.card),
            "relay": change.hello.as_ref().map(|h| json!({"url": h.url, "key": h.relay_key.to_hex(), "software": h.info.software})),
            "account": change.account_status,
            "announced": change.announced.iter().map(|a| match a {
                Ok(report) => send_report_json(report),
                Err((name, error)) => json!({"toName": name, "error": error.to_string()}),
            }).collect::<Vec<_>>(),
        }));
        return;
    }
    println!("{what}; your card now lists: {}", change.card.content().relays.join(", "));
    for announced in &change.announced {
        match announced {
            Ok(report) => println!(
                "  {} told of the change through {} of {} relays",
                report.to_name.as_deref().unwrap_or("?"),
                report.stored(),
                report.relays.len()
            ),
            Err((name, error)) => println!("  could not tell {name}: {error}"),
        }
    }
}

pub(crate) fn relay(global: &Global, command: RelayCommand) -> Result<()> {
    let rt = runtime()?;
    match command {
        RelayCommand::Add { url, invite } => {
            let mut client = open_unlocked(global)?;
            let change = rt.block_on(client.add_relay(&url, invite.as_deref()))?;
            let hello = change.hello.as_ref().context("relay info")?;
            let what = format!(
                "added {} (relay key {}, account {})",
                hello.url,
                hello.relay_key,
                change.account_status.as_deref().unwrap_or("?")
            );
            print_change(global, &change, &what);
        }
        RelayCommand::Remove { url } => {
            let mut client = open_unlocked(global)?;
            let change = rt.block_on(client.remove_relay(&url))?;
            print_change(global, &change, &format!("removed {url}"));
        }
        RelayCommand::List => {
            let client = open(global)?;
            let statuses = rt.block_on(client.relay_status())?;
            if global.json {
                print_json(&Value::Array(
                    statuses
                        .iter()
                        .map(|s| match &s.hello {
                            Ok(hello) => json!({"url": s.url, "key": s.relay_key.to_hex(), "up": true,
                                "signedAt": hello.timestamp, "info": hello.info}),
                            Err(error) => json!({"url": s.url, "key": s.relay_key.to_hex(), "up": false,
                                "error": error.to_string()}),
                        })
                        .collect(),
                ));
                return Ok(());
            }
            if statuses.is_empty() {
                println!("no relays yet: add one with `pigeonhole relay add URL`");
            }
            for status in &statuses {
                match &status.hello {
                    Ok(hello) => {
                        let info = &hello.info;
                        let policy = match info.policy {
                            0 => "open",
                            1 => "invite",
                            _ => "contract",
                        };
                        println!(
                            "up    {}  {}  info signed by {}: policy {policy}, max record {} B, ttl {}-{} s, pull limit {}",
                            status.url,
                            info.software,
                            hello.relay_key,
                            info.max_record_bytes,
                            info.default_ttl_secs,
                            info.max_ttl_secs,
                            info.pull_limit
                        );
                    }
                    Err(error) => println!("DOWN  {}  {error}", status.url),
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn contact(global: &Global, command: ContactCommand) -> Result<()> {
    match command {
        ContactCommand::Add { card, name } => {
            let mut client = open(global)?;
            let path = PathBuf::from(&card);
            let text = if path.is_file() {
                std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?
            } else if card.trim_start().starts_with('{') || card.trim().starts_with("pigeoncard1") {
                card.clone()
            } else {
                bail!("`{card}` is neither a card file nor a pigeoncard1... string");
            };
            let contact = client
                .add_contact(&text, name.as_deref())
                .with_context(|| format!("cannot add the card from `{}`", shorten(&card)))?;
            if global.json {
                print_json(&json!({"name": contact.name, "card": card_json(&contact.card)}));
            } else {
                println!(
                    "added {} ({}), relays: {}",
                    contact.name,
                    contact.card.content().pubkey.to_bech32m(),
                    contact.card.content().relays.join(", ")
                );
            }
        }
        ContactCommand::List => {
            let client = open(global)?;
            let contacts = client.contacts()?;
            if global.json {
                print_json(&Value::Array(
                    contacts.iter().map(|c| json!({"name": c.name, "card": card_json(&c.card)})).collect(),
                ));
            } else if contacts.is_empty() {
                println!("no contacts yet: add one with `pigeonhole contact add FILE|STRING`");
            } else {
                for c in &contacts {
                    println!(
                        "{}  {}  relays: {}",
                        c.name,
                        c.card.content().pubkey.to_bech32m(),
                        c.card.content().relays.join(", ")
                    );
                }
            }
        }
        ContactCommand::Remove { name } => {
            let mut client = open(global)?;
            let contact = client.remove_contact(&name)?;
            if global.json {
                print_json(&json!({"removed": contact.name}));
            } else {
                println!("removed {}", contact.name);
            }
        }
    }
    Ok(())
}

fn shorten(text: &str) -> String {
    if text.len() > 40 {
        format!("{}...", text.chars().take(40).collect::<String>())
    } else {
        text.to_owned()
    }
}

fn message_text(message: Option<String>, file: Option<PathBuf>) -> Result<String> {
    Ok(match (message, file) {
        (Some(text), None) => text,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (text files only)", path.display()))?,
        (None, None) => bail!("nothing to send: give MESSAGE or --file PATH"),
        (Some(_), Some(_)) => bail!("give MESSAGE or --file PATH, not both"),
    })
}

pub(crate) fn send_drop(
    global: &Global,
    to: &str,
    message: Option<String>,
    file: Option<PathBuf>,
    anonymous: bool,
) -> Result<()> {
    let text = message_text(message, file)?;
    let mut client = open(global)?;
    // Resolve first: an unknown recipient should not cost a passphrase prompt.
    let target = client.drop_target(to)?;
    client.unlock(&passphrase(false)?)?;
    let rt = runtime()?;
    let report = rt.block_on(client.send_drop(&target, &text, anonymous))?;
    let name = report.to_name.clone().unwrap_or_else(|| target.card.content().label.clone());
    if global.json {
        print_json(&json!({
            "to": report.to.to_hex(),
            "toName": report.to_name,
            "recordId": report.record_id,
            "tag": report.tag.to_hex(),
            "signed": report.signed,
            "contactPath": report.contact_path,
            "stored": report.stored(),
            "relays": report.relays.iter().map(|r| match &r.result {
                Ok(receipt) => json!({
                    "url": r.url, "ok": true, "seq": receipt.leaf.seq,
                    "expiresAt": receipt.leaf.expires_at,
                    "receipt": serde_json::to_value(receipt).unwrap_or(Value::Null),
                }),
                Err(error) => json!({"url": r.url, "ok": false, "error": error.to_string()}),
            }).collect::<Vec<_>>(),
        }));
    } else {
        let failed = report.relays.len() - report.stored();
        println!(
            "dropped to {name} ({}{}): stored on {} of {} relays{}",
            if report.signed { "signed" } else { "anonymous" },
            if report.contact_path { ", contact path" } else { "" },
            report.stored(),
            report.relays.len(),
            if failed > 0 { format!(", {failed} failed") } else { String::new() }
        );
        for relay in &report.relays {
            match &relay.result {
                Ok(receipt) => println!(
                    "  stored on {} (seq {}, receipt verified, commit root {})",
                    relay.url,
                    receipt.leaf.seq,
                    hex_prefix(&receipt.commit.root)
                ),
                Err(error) => println!("  FAILED on {}: {error}", relay.url),
            }
        }
    }
    Ok(())
}

pub(crate) fn send(global: &Global, to: &str, message: Option<String>, file: Option<PathBuf>) -> Result<()> {
    let text = message_text(message, file)?;
    let mut client = open(global)?;
    // Resolve first: an unknown contact should not cost a passphrase prompt.
    client.resolve_contact(to)?;
    client.unlock(&passphrase(false)?)?;
    let rt = runtime()?;
    let report = rt.block_on(client.send_text(to, &text))?;
    if global.json {
        print_json(&send_report_json(&report));
    } else {
        let failed = report.relays.len() - report.stored();
        println!(
            "sent to {} ({}): stored on {} of {} relays{}",
            report.to_name.as_deref().unwrap_or("?"),
            report.record_id,
            report.stored(),
            report.relays.len(),
            if failed > 0 { format!(", {failed} failed") } else { String::new() }
        );
        print_send_report(&report);
    }
    Ok(())
}

fn message_json(message: &StoredMessage) -> Value {
    serde_json::to_value(message).unwrap_or(Value::Null)
}

fn describe(message: &StoredMessage) -> String {
    let from =
        message.peer_name.clone().or_else(|| message.peer.clone()).unwrap_or_else(|| "anonymous".into());
    let body = match &message.text {
        Some(text) => text.lines().next().unwrap_or_default().chars().take(60).collect::<String>(),
        None => format!("(payload kind {})", message.kind),
    };
    format!(
        "{:>4}  {}  {:<16}  {:<12}  {}",
        message.id,
        if message.read_at.is_some() { " " } else { "*" },
        local_time(message.created_at, "%Y-%m-%d %H:%M"),
        from,
        body
    )
}

/// A time in milliseconds since the Unix epoch, in this machine's time zone and `format`
/// (strftime); one outside the representable range (a sender's clock is not to be trusted)
/// is shown as its raw value.
fn local_time(ms: u64, format: &str) -> String {
    let local = i64::try_from(ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map(|t| t.to_zoned(jiff::tz::TimeZone::system()));
    match local {
        Some(zoned) => zoned.strftime(format).to_string(),
        None => format!("{ms} ms since 1970"),
    }
}

pub(crate) fn sync(global: &Global) -> Result<()> {
    let mut client = open_unlocked(global)?;
    let rt = runtime()?;
    let bar = if !global.json && std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(0)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos}/{len} outboxes, {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let report = rt.block_on(client.sync(&mut |progress| {
        bar.set_length(progress.total as u64);
        bar.set_position(progress.done as u64);
        bar.set_message(format!("{} records", progress.records));
    }))?;
    bar.finish_and_clear();
    let attempted = report.sources.len();
    let reached = report.reached();
    if global.json {
        print_json(&json!({
            "newMessages": report.new_messages.iter().map(message_json).collect::<Vec<_>>(),
            "sources": report.sources.iter().map(|s| json!({
                "contact": s.contact, "url": s.url, "fetched": s.fetched,
                "error": s.error.as_ref().map(ToString::to_string),
            })).collect::<Vec<_>>(),
            "cardUpdates": report.card_updates,
            "acksReceived": report.acks_received,
            "acksSent": report.acks.sent,
            "ackFailures": report.acks.failed.iter().map(|(n, e)| json!({"contact": n, "error": e.to_string()})).collect::<Vec<_>>(),
            "rejected": report.rejected,
            "drops": {
                "newMessages": report.drops.new_messages.iter().map(message_json).collect::<Vec<_>>(),
                "sources": report.drops.sources.iter().map(|(url, r)| match r {
                    Ok(n) => json!({"url": url, "candidates": n}),
                    Err(e) => json!({"url": url, "error": e.to_string()}),
                }).collect::<Vec<_>>(),
                "rejected": report.drops.rejected,
            },
        }));
    } else {
        for source in &report.sources {
            if let Some(error) = &source.error {
                eprintln!("warning: {} via {}: {error}", source.contact, source.url);
            }
        }
        for rejected in &report.rejected {
            eprintln!("warning: refused {rejected}");
        }
        for name in &report.card_updates {
            println!("{name} updated their card; now following {name}'s new relays");
        }
        for (name, error) in &report.acks.failed {
            eprintln!("warning: acks to {name} not written yet (retried next sync): {error}");
        }
        println!(
            "synced {reached} of {attempted} outboxes: {} new message{}, {} ack{} received, {} sent",
            report.new_messages.len(),
            if report.new_messages.len() == 1 { "" } else { "s" },
            report.acks_received,
            if report.acks_received == 1 { "" } else { "s" },
            report.acks.sent,
        );
        for message in &report.new_messages {
            println!("{}", describe(message));
        }
        for (url, result) in &report.drops.sources {
            if let Err(error) = result {
                eprintln!("warning: drops via {url}: {error}");
            }
        }
        for rejected in &report.drops.rejected {
            eprintln!("warning: refused {rejected}");
        }
        let requests = report.drops.new_messages.iter().filter(|m| m.folder == Folder::Requests).count();
        if !report.drops.new_messages.is_empty() {
            println!(
                "{} new drop{} ({requests} from people who are not your contacts: see `pigeonhole inbox --requests`)",
                report.drops.new_messages.len(),
                if report.drops.new_messages.len() == 1 { "" } else { "s" },
            );
            for message in &report.drops.new_messages {
                println!("{}", describe(message));
            }
        }
    }
    if attempted > 0 && reached == 0 {
        bail!(
            "no contact's relay could be reached; check your network, or ask your contacts for fresh cards"
        );
    }
    Ok(())
}

pub(crate) fn inbox(global: &Global, requests: bool) -> Result<()> {
    let client = open(global)?;
    let messages = client.db().messages(if requests { Folder::Requests } else { Folder::Inbox })?;
    if global.json {
        print_json(&Value::Array(messages.iter().map(message_json).collect()));
    } else if messages.is_empty() {
        println!(
            "no {} (run `pigeonhole sync` to fetch new ones)",
            if requests { "message requests" } else { "messages" }
        );
    } else {
        for message in &messages {
            println!("{}", describe(message));
        }
    }
    Ok(())
}

pub(crate) fn read(global: &Global, id: i64) -> Result<()> {
    let client = open(global)?;
    let message = client.db().message(id)?.ok_or(ClientError::NoSuchMessage { id })?;
    client.db().mark_read(id, pigeonhole_client::relay::now_ms())?;
    if global.json {
        print_json(&message_json(&message));
        return Ok(());
    }
    let from =
        message.peer_name.clone().or_else(|| message.peer.clone()).unwrap_or_else(|| "anonymous".into());
    let label = if message.direction == "out" { "to" } else { "from" };
    println!("{label}: {from}");
    println!("record: {} (via {})", message.record_id, message.sent_via);
    println!("written: {}", local_time(message.created_at, "%Y-%m-%d %H:%M:%S %Z"));
    println!("received: {}", local_time(message.received_at, "%Y-%m-%d %H:%M:%S %Z"));
    println!();
    match &message.text {
        Some(text) => println!("{text}"),
        None => println!("(payload kind {}, not text)", message.kind),
    }
    Ok(())
}

pub(crate) fn usage(global: &Global) -> Result<()> {
    let client = open_unlocked(global)?;
    let rt = runtime()?;
    let audits = rt.block_on(client.usage())?;
    if global.json {
        print_json(&Value::Array(
            audits
                .iter()
                .map(|a| match &a.result {
                    Ok(summary) => json!({"url": a.url, "ok": true, "consistent": summary.is_consistent(), "summary": summary}),
                    Err(error) => json!({"url": a.url, "ok": false, "error": error.to_string()}),
                })
                .collect(),
        ));
        return Ok(());
    }
    if audits.is_empty() {
        println!("no relays yet: add one with `pigeonhole relay add URL`");
    }
    let mut reached = 0;
    for audit in &audits {
        match &audit.result {
            Ok(summary) => {
                reached += 1;
                println!(
                    "{}  {}: claims {} reads, contacts acknowledged {} ({} reads of ack records, {} bytes served)",
                    if summary.is_consistent() { "ok  " } else { "FLAG" },
                    audit.url,
                    summary.claimed_reads,
                    summary.acked_reads,
                    summary.ack_record_reads,
                    summary.bytes_served
                );
                for d in &summary.discrepancies {
                    println!(
                        "      record {} read by {}: relay claims {}, acknowledged {}",
                        d.record_id,
                        d.receiver_name.as_deref().unwrap_or(&d.receiver),
                        d.claimed,
                        d.acked
                    );
                }
            }
            Err(error) => println!("DOWN  {}: {error}", audit.url),
        }
    }
    if !audits.is_empty() && reached == 0 {
        bail!("no relay's usage report could be fetched");
    }
    Ok(())
}

pub(crate) fn listen(global: &Global) -> Result<()> {
    use pigeonhole_client::listen::ListenEvent;
    let mut client = open_unlocked(global)?;
    let rt = runtime()?;
    let json_output = global.json;
    let mut on_event = move |event: ListenEvent| {
        use std::io::Write as _;
        match event {
            ListenEvent::Message(message) => {
                if json_output {
                    println!("{}", json!({"event": "message", "message": message_json(&message)}));
                } else {
                    println!("{}", describe(&message));
                }
            }
            ListenEvent::Connected { url, outboxes } => {
                if json_output {
                    println!("{}", json!({"event": "connected", "url": url, "outboxes": outboxes}));
                } else {
                    eprintln!(
                        "connected to {url} ({outboxes} outbox{})",
                        if outboxes == 1 { "" } else { "es" }
                    );
                }
            }
            ListenEvent::Disconnected { url, error, retry_in } => {
                if json_output {
                    println!(
                        "{}",
                        json!({"event": "disconnected", "url": url, "error": error.to_string(), "retryInMs": retry_in.as_millis() as u64})
                    );
                } else {
                    eprintln!("lost {url}: {error}; retrying in {:.1} s", retry_in.as_secs_f64());
                }
            }
            ListenEvent::CardUpdated { contact } => {
                if json_output {
                    println!("{}", json!({"event": "cardUpdated", "contact": contact}));
                } else {
                    println!("{contact} updated their card; following their new relays");
                }
            }
            ListenEvent::Rejected(reason) => eprintln!("warning: refused {reason}"),
        }
        let _ = std::io::stdout().flush();
    };
    rt.block_on(async {
        tokio::select! {
            result = client.listen(&mut on_event) => result.map_err(anyhow::Error::from),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::local_time;

    #[test]
    fn local_time_renders_in_range_and_falls_back_outside_it() {
        // `%s` (seconds since the epoch) does not depend on the machine's time zone.
        assert_eq!(local_time(1_796_669_937_159, "%s"), "1796669937");
        assert_eq!(local_time(0, "%s"), "0");
        // Past what a timestamp can hold: the raw value, not a panic or a wrong date.
        assert_eq!(local_time(u64::MAX, "%s"), format!("{} ms since 1970", u64::MAX));
        assert_eq!(local_time(i64::MAX as u64, "%s"), format!("{} ms since 1970", i64::MAX));
    }
}
