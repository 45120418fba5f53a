//! Command line → configuration → run. Nothing else lives here.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use courier::config::{self, NetConfig, Parsed, Values, NET_FLAGS, SERVE_FLAGS, TOKEN_FLAGS};

use courier::im::hub::HubConfig;
use courier::serve::{ServeConfig, Server};
use courier::store::{StoreConfig, Synchronous};

const USAGE: &str = "\
courier: a single-binary instant-messaging server

usage:
  courier echo [flags]     WebSocket echo server (benchmark target: every data message comes back)
  courier [serve] [flags]  the IM server (WebSocket endpoint /ws, echo on /echo)
  courier echo [flags]     WebSocket echo server (benchmark target: every data message comes back)
  courier token USER [--ttl 24h]   print an access token for USER
  courier --version

`courier serve --help` (or echo, token) lists every flag with its default.";

const SERVE_USAGE: &str = "\
usage: courier [serve] [flags]

The IM server of PROTOCOL.md: authenticated WebSocket connections on /ws (token in
?token= or Authorization: Bearer), messages stored in SQLite under --data before they are
acknowledged, pushed with ACK and re-push. Prints `listening on ADDR` once it accepts
connections; on SIGTERM/SIGINT closes every connection with 1001, finishes the store's
queue and exits 0.";

const TOKEN_USAGE: &str = "\
usage: courier token USER [--ttl 24h] [--jwt-secret S]

Prints an HS256 access token for USER, signed with the secret the server uses.";

const ECHO_USAGE: &str = "\
usage: courier echo [flags]

Echoes every WebSocket data message with its opcode on any path; answers pings; prints
`listening on ADDR` once it accepts connections; on SIGTERM/SIGINT closes every
connection with 1001 and exits 0 (a second signal exits at once).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, rest) = match args.split_first() {
        Some((first, rest)) if !first.starts_with('-') => (first.as_str(), rest),
        _ => ("serve", &args[..]),
    };
    let result = match command {
        "echo" => echo(rest),
        "serve" if rest.iter().any(|a| a == "--version" || a == "-V") => {
            println!("courier {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        "serve" => serve(rest),
        "token" => token(rest),
        "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command '{other}'\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("courier: {message}");
            ExitCode::from(2)
        }
    }
}

fn echo(args: &[String]) -> Result<(), String> {
    let env = |name: &str| std::env::var(name).ok();
    let values = match config::parse(args, &[NET_FLAGS], &env)? {
        Parsed::Help => {
            println!("{}", config::help(ECHO_USAGE, &[NET_FLAGS]));
            return Ok(());
        }
        Parsed::Run(values, positional) => {
            if let Some(extra) = positional.first() {
                return Err(format!("unexpected argument '{extra}'"));
            }
            values
        }
    };
    let open_files = courier::net::raise_open_file_limit()
        .map_err(|e| format!("reading the open-file limit: {e}"))?;
    let config = NetConfig::from_values(&values, open_files)?;
    let listen = config.listen;
    courier::net::run(
        config,
        |_| Ok(courier::echo::Echo),
        |addr| {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "listening on {addr}");
            let _ = stdout.flush();
        },
    )
    .map_err(|e| format!("echo on {listen}: {e}"))
}

fn parse_or_help(
    args: &[String],
    usage: &str,
    tables: &[&'static [config::Flag]],
) -> Result<Option<(Values, Vec<String>)>, String> {
    let env = |name: &str| std::env::var(name).ok();
    match config::parse(args, tables, &env)? {
        Parsed::Help => {
            println!("{}", config::help(usage, tables));
            Ok(None)
        }
        Parsed::Run(values, positional) => Ok(Some((values, positional))),
    }
}

fn serve(args: &[String]) -> Result<(), String> {
    let Some((values, positional)) = parse_or_help(args, SERVE_USAGE, &[NET_FLAGS, SERVE_FLAGS])?
    else {
        return Ok(());
    };
    if let Some(extra) = positional.first() {
        return Err(format!("unexpected argument '{extra}'"));
    }
    let dev_login = values.switch("dev-login")?;
    let secret = match (values.raw("jwt-secret"), dev_login) {
        ("", false) => {
            return Err(
                "no token secret: set --jwt-secret or COURIER_JWT_SECRET (32+ random \
                 bytes, e.g. `openssl rand -hex 32`), or try it locally with --dev-login on"
                    .into(),
            )
        }
        ("", true) => {
            eprintln!(
                "courier: DEV LOGIN IS ON: tokens are signed with a random secret kept in the \
                 data folder and anyone who can reach GET /dev/token can sign in as anyone. \
                 For local tries only."
            );
            dev_secret(Path::new(values.raw("data")))?
        }
        (secret, _) => secret.as_bytes().to_vec(),
    };
    let heartbeat_ms = values.millis("heartbeat")?;
    let open_files = courier::net::raise_open_file_limit()
        .map_err(|e| format!("reading the open-file limit: {e}"))?;
    let mut net = NetConfig::from_values(&values, open_files)?;
    if !values.is_set("idle-timeout") {
        // PROTOCOL.md: the idle timeout is three heartbeats unless set on its own.
        net.idle_timeout_ms = heartbeat_ms.saturating_mul(3).max(1);
    }
    let rate = u32::try_from(values.count("rate")?).map_err(|_| "--rate is too large")?;
    let hub = HubConfig {
        heartbeat_ms,
        ack_timeout_ms: values.millis("ack-timeout")?,
        ack_retries: u32::try_from(values.count("ack-retries")?)
            .map_err(|_| "--ack-retries is too large")?,
        ack_retry_interval_ms: values.millis("ack-retry-interval")?,
        window: values.count("ack-window")?.max(1),
        window_bytes: (values.bytes("ack-window-bytes")? as u64).max(1),
        max_body: values.bytes("max-body")?,
        rate_per_sec: rate.max(1),
        rate_burst: rate.saturating_mul(2).max(1),
        recall_window_ms: values.millis("recall-window")?,
        max_group: u32::try_from(values.count("max-group")?)
            .map_err(|_| "--max-group is too large")?
            .max(1),
        ..HubConfig::default()
    };
    let mut store = StoreConfig::new(values.raw("data"));
    store.budget = courier::store::Budget {
        groups_per_hour: u32::try_from(values.count("groups-per-hour")?)
            .map_err(|_| "--groups-per-hour is too large")?,
        new_users_per_hour: u32::try_from(values.count("new-users-per-hour")?)
            .map_err(|_| "--new-users-per-hour is too large")?,
    };
    store.synchronous = match values.raw("synchronous") {
        "normal" => Synchronous::Normal,
        "full" => Synchronous::Full,
        other => {
            return Err(format!(
                "--synchronous: expected normal or full, got '{other}'"
            ))
        }
    };
    let config = ServeConfig {
        store,
        hub,
        secret,
        dev_login,
        echo: values.switch("echo")?,
        origins: values.list("origin"),
        trusted_proxies: courier::forwarded::TrustedProxies::parse(&values.list("trusted-proxy"))?,
        max_per_address: values.count("max-per-address")? as usize,
        max_per_user: values.count("max-per-user")? as usize,
        echo_max_message: values.bytes("echo-max-message")?,
        // Half the slots at most: the benchmark endpoint must never lock IM users out.
        echo_max_connections: (net.max_connections / 2).max(1),
        read_rate: u32::try_from(values.bytes("rate-bytes")?)
            .map_err(|_| "--rate-bytes is too large (at most 4 GiB per second)")?,
        auth_failures: u32::try_from(values.count("auth-failures")?)
            .map_err(|_| "--auth-failures is too large")?,
        auth_failure_window_ms: values.millis("auth-failure-window")?,
    };
    let listen = net.listen;
    // Before the reactor: from here on log lines go through the logger's thread, so the
    // reactor never waits on stderr.
    courier::log::init_from_env();
    // The server (and with it the store) is dropped when the reactor returns: the store
    // then commits what it accepted and stops its threads.
    let result = courier::net::run(
        net,
        |waker| Server::open(config, waker, 0).map_err(std::io::Error::other),
        |addr| {
            courier::log_info!("courier {} serving on {addr}", env!("CARGO_PKG_VERSION"));
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "listening on {addr}");
            let _ = stdout.flush();
        },
    );
    courier::log_info!("stopped");
    courier::log::shutdown();
    result.map_err(|e| format!("serve on {listen}: {e}"))
}

fn token(args: &[String]) -> Result<(), String> {
    let Some((values, positional)) = parse_or_help(args, TOKEN_USAGE, &[TOKEN_FLAGS])? else {
        return Ok(());
    };
    let [user] = positional.as_slice() else {
        return Err(format!("expected one USER\n\n{TOKEN_USAGE}"));
    };
    if !courier::im::auth::valid_user_id(user) {
        return Err(format!(
            "'{user}' is not a user id: 1 to 64 of [A-Za-z0-9_.-]"
        ));
    }
    let secret = values.raw("jwt-secret");
    if secret.is_empty() {
        return Err("no token secret: set --jwt-secret or COURIER_JWT_SECRET".into());
    }
    let ttl = values.millis("ttl")? / 1000;
    let now = courier::clock::wall_ms() / 1000;
    println!(
        "{}",
        courier::im::auth::issue(user, ttl, secret.as_bytes(), now)
    );
    Ok(())
}

/// 32 bytes from the kernel's generator, for the dev-login secret.
/// The dev-login secret: random, made once and kept in the data folder (readable by its
/// owner only), so the tokens a browser saved stay valid when the server restarts, as they
/// would with a configured secret.
fn dev_secret(data: &Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = data.join("dev-login.secret");
    match std::fs::read(&path) {
        Ok(secret) if secret.len() >= 32 => return Ok(secret),
        Ok(_) => return Err(format!("{} is too short; delete it", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    }
    std::fs::create_dir_all(data).map_err(|e| format!("creating {}: {e}", data.display()))?;
    let secret = random_secret()?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(&secret))
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(secret)
}

fn random_secret() -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut secret = vec![0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut secret))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    Ok(secret)
}
