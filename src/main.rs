//! Command line → configuration → run. Nothing else lives here.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;

use courier::config::{self, NetConfig, Parsed, Values, NET_FLAGS, SERVE_FLAGS, TOKEN_FLAGS};

use courier::im::auth;
use courier::im::hub::HubConfig;
use courier::serve::{ServeConfig, Server};
use courier::store::{StoreConfig, Synchronous};

const USAGE: &str = "\
courier: a single-binary instant-messaging server

usage:
  courier [serve] [flags]  the IM server (WebSocket endpoint /ws, echo on /echo)
  courier echo [flags]     WebSocket echo server (benchmark target: every data message comes back)
  courier token USER [--ttl 24h]   print an access token for USER
  courier secret           print a fresh random token secret (32 bytes, hex) for --jwt-secret
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

Prints an HS256 access token for USER, signed with the secret the server uses (at least
32 bytes; `courier secret` makes one).";

const SECRET_USAGE: &str = "\
usage: courier secret

Prints a fresh token secret: 32 bytes from the kernel's random generator, as 64 hex
digits, for --jwt-secret or COURIER_JWT_SECRET. Keep it out of the command line of a
running server (ps shows it to every user): put it in the environment.";

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
        "secret" => secret(rest),
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
        |bound| {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "listening on {}", bound.listen);
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
    let dev_login_public = values.switch("dev-login-public")?;
    let secret = if dev_login {
        check_dev_login(
            values.raw("jwt-secret"),
            values.addr("listen")?,
            dev_login_public,
        )?;
        dev_secret(Path::new(values.raw("data")))?
    } else {
        configured_secret(values.raw("jwt-secret"))?
    };
    let token_policy = auth::Policy {
        max_ttl_secs: match values.millis_or_off("max-token-ttl")? {
            Some(ms) if ms < 1000 => {
                return Err("--max-token-ttl must be at least 1s, or off".into())
            }
            ttl => ttl.map(|ms| ms / 1000),
        },
        audience: values.optional("token-audience"),
        issuer: values.optional("token-issuer"),
    };
    let heartbeat_ms = values.millis("heartbeat")?;
    let open_files = courier::net::raise_open_file_limit()
        .map_err(|e| format!("reading the open-file limit: {e}"))?;
    let mut net = NetConfig::from_values(&values, open_files)?;
    net.metrics_listen = values.optional_addr("metrics-listen")?;
    if net.metrics_listen == Some(net.listen) && net.listen.port() != 0 {
        return Err("--metrics-listen must be another address than --listen".into());
    }
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
        token_policy,
        dev_login,
        metrics_elsewhere: net.metrics_listen.is_some(),
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
    if dev_login {
        courier::log_warn!(
            "DEV LOGIN IS ON: GET /dev/token hands a token for any user to anyone who can \
             reach {listen}. Tokens are signed with the data folder's own dev-login.secret. \
             For trying courier on this machine only."
        );
        if dev_login_public {
            courier::log_warn!(
                "DEV LOGIN IS PUBLIC (--dev-login-public on): anyone who can reach {listen} \
                 signs in as any user"
            );
        }
    }
    // The server (and with it the store) is dropped when the reactor returns: the store
    // then commits what it accepted and stops its threads.
    let result = courier::net::run(
        net,
        |waker| Server::open(config, waker, 0).map_err(std::io::Error::other),
        |bound| {
            let version = env!("CARGO_PKG_VERSION");
            let mut stdout = std::io::stdout().lock();
            match bound.metrics {
                Some(metrics) => {
                    courier::log_info!(
                        "courier {version} serving on {}, /metrics on {metrics} only",
                        bound.listen
                    );
                    // Before `listening on`: whoever waits for that line has both.
                    let _ = writeln!(stdout, "metrics on {metrics}");
                }
                None => courier::log_info!("courier {version} serving on {}", bound.listen),
            }
            let _ = writeln!(stdout, "listening on {}", bound.listen);
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
    let secret = configured_secret(values.raw("jwt-secret"))?;
    let ttl = values.millis("ttl")? / 1000;
    let now = courier::clock::wall_ms() / 1000;
    let audience = values.optional("token-audience");
    let issuer = values.optional("token-issuer");
    println!(
        "{}",
        auth::issue_with(
            user,
            ttl,
            &secret,
            now,
            audience.as_deref(),
            issuer.as_deref()
        )
    );
    Ok(())
}

fn secret(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        None => {}
        Some("--help" | "-h") => {
            println!("{SECRET_USAGE}");
            return Ok(());
        }
        Some(extra) => return Err(format!("unexpected argument '{extra}'\n\n{SECRET_USAGE}")),
    }
    let hex: String = random_secret()?
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    println!("{hex}");
    Ok(())
}

/// The secret of `--jwt-secret` / `COURIER_JWT_SECRET`, refused when missing or too short
/// to be an HS256 key.
fn configured_secret(secret: &str) -> Result<Vec<u8>, String> {
    if secret.is_empty() {
        return Err(format!(
            "no token secret: set --jwt-secret or COURIER_JWT_SECRET ({} or more random \
             bytes: `courier secret` or `openssl rand -hex 32` makes one), or try courier \
             locally with --dev-login on",
            auth::MIN_SECRET_LEN
        ));
    }
    auth::check_secret(secret.as_bytes())
        .map_err(|e| format!("--jwt-secret (or COURIER_JWT_SECRET): {e}"))?;
    Ok(secret.as_bytes().to_vec())
}

/// Dev login hands a token for any user to anyone who asks. It is refused with a
/// configured secret rather than signing with it: those tokens would be valid on every
/// server that shares the secret, and signing with a second secret beside it would make
/// a production server quietly accept tokens nobody issued. And it is refused off
/// loopback unless asked for twice.
fn check_dev_login(configured: &str, listen: SocketAddr, public: bool) -> Result<(), String> {
    if !configured.is_empty() {
        return Err(
            "--dev-login on refuses a configured secret (--jwt-secret or COURIER_JWT_SECRET): \
             it would hand anyone a token signed with it, for any user, valid on every server \
             that shares it. To try courier locally unset the secret (dev login keeps its own \
             in the data folder); for real use turn dev login off."
                .into(),
        );
    }
    if !public && !is_loopback(listen.ip()) {
        return Err(format!(
            "--dev-login on with --listen {listen}, not a loopback address: anyone who \
             reaches it could sign in as anyone. Listen on 127.0.0.1 or [::1], or add \
             --dev-login-public on if that is really meant."
        ));
    }
    Ok(())
}

/// 127.0.0.0/8, ::1, and 127.x as an IPv4-mapped IPv6 address. Not the unspecified
/// address (0.0.0.0, ::), which listens on every interface.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The dev-login secret: random, made once and kept in the data folder (readable by its
/// owner only), so the tokens a browser saved stay valid when the server restarts, as they
/// would with a configured secret.
fn dev_secret(data: &Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = data.join("dev-login.secret");
    match std::fs::read(&path) {
        Ok(secret) if secret.len() >= auth::MIN_SECRET_LEN => return Ok(secret),
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

/// 32 bytes from the kernel's generator: the dev-login secret, and `courier secret`.
fn random_secret() -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut secret = vec![0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut secret))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_127_8_and_v6_1_and_their_mapped_forms_only() {
        for ip in ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "0.0.0.0",
            "::",
            "10.0.0.1",
            "192.168.1.1",
            "::ffff:10.0.0.1",
            "fe80::1",
        ] {
            assert!(!is_loopback(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn dev_login_is_refused_with_a_secret_and_off_loopback_unless_public() {
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let open: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let v6: SocketAddr = "[::1]:8080".parse().unwrap();
        assert!(check_dev_login("", local, false).is_ok());
        assert!(check_dev_login("", v6, false).is_ok());
        assert!(check_dev_login("", open, true).is_ok());
        let refusal = check_dev_login("", open, false).unwrap_err();
        assert!(refusal.contains("--dev-login-public on"), "{refusal}");
        // A configured secret is refused even where dev login would otherwise be allowed.
        for (listen, public) in [(local, false), (open, true)] {
            let refusal = check_dev_login(&"k".repeat(64), listen, public).unwrap_err();
            assert!(refusal.contains("COURIER_JWT_SECRET"), "{refusal}");
        }
    }
}
