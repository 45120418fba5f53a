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

usage: courier COMMAND [flags]

commands:
  serve         the IM server: WebSocket /ws, the chat page at /, /healthz, /metrics
                (the default: `courier --listen ...` is `courier serve --listen ...`)
  token USER    print an access token for USER, signed with the server's secret
  secret        make a fresh random token secret: print it, or write it with --out FILE
  echo          a bare WebSocket echo server, the target of benchmarks and Autobahn
  help [COMMAND]  this list, or COMMAND's flags (as `courier COMMAND --help`)
  --version     print the version

`courier COMMAND --help` lists the command's flags, each with its default and its
COURIER_* environment variable. The load generator is a second binary, courier-bench,
built by `cargo build --release` (`./target/release/courier-bench --help`).";

const SERVE_USAGE: &str = "\
usage: courier [serve] [flags]

The IM server of PROTOCOL.md: authenticated WebSocket connections on /ws (token in
?token= or Authorization: Bearer), messages stored in SQLite under --data before they are
acknowledged, pushed with ACK and re-push; the chat page at /. Needs a token secret
(--jwt-secret-file or --jwt-secret), or --dev-login on to try it locally. Prints
`listening on ADDR` once it accepts connections, then `chat page: URL`; on SIGTERM/SIGINT
closes every connection with 1001, finishes the store's queue and exits 0.";

const TOKEN_USAGE: &str = "\
usage: courier token USER [--ttl 24h] [--jwt-secret-file FILE | --jwt-secret S]

Prints an HS256 access token for USER, signed with the secret the server uses (at least
32 bytes; `courier secret --out FILE` makes one).";

const SECRET_USAGE: &str = "\
usage: courier secret [--out FILE]

Makes a fresh token secret: 32 bytes from the kernel's random generator, as 64 hex
digits. Without --out it is printed, for COURIER_JWT_SECRET or a file of your own. With
--out FILE it is written to FILE, created readable and writable by you only (mode 0600,
missing folders mode 0700), and never over an existing file: a new secret signs out
everyone. Give the file to `courier serve` and `courier token` with --jwt-secret-file.
Keep a secret out of the command line of a running server: ps shows it to every user.

Flags:
  --out FILE    write the secret to FILE instead of printing it";

const ECHO_USAGE: &str = "\
usage: courier echo [flags]

Echoes every WebSocket data message with its opcode on any path; answers pings; prints
`listening on ADDR` once it accepts connections; on SIGTERM/SIGINT closes every
connection with 1001 and exits 0 (a second signal exits at once).";

/// The commands with flags of their own, for `courier help COMMAND`.
const COMMANDS: &[&str] = &["serve", "token", "secret", "echo"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, rest) = match args.split_first() {
        Some((first, rest)) if !first.starts_with('-') => (first.as_str(), rest),
        // Bare `courier --help` is about courier, not its default command: the list of
        // commands is where someone new starts.
        Some((first, [])) if first == "--help" || first == "-h" => ("help", &[][..]),
        _ => ("serve", &args[..]),
    };
    let result = match command {
        "echo" => echo(rest),
        "serve" if rest.iter().any(|a| a == "--version" || a == "-V") => {
            print_out(&format!("courier {}", env!("CARGO_PKG_VERSION")));
            Ok(())
        }
        "serve" => serve(rest),
        "token" => token(rest),
        "secret" => secret(rest),
        "help" => help(rest),
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

/// Writes `text` and a newline to stdout. A closed pipe (`courier --help | head`) is not
/// an error worth a panic.
fn print_out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{text}");
    let _ = stdout.flush();
}

fn help(args: &[String]) -> Result<(), String> {
    match args {
        [] => print_out(USAGE),
        [command] => print_out(&command_help(command).ok_or_else(|| {
            format!(
                "no command '{command}': one of {}\n\n{USAGE}",
                COMMANDS.join(", ")
            )
        })?),
        [_, extra, ..] => return Err(format!("unexpected argument '{extra}'\n\n{USAGE}")),
    }
    Ok(())
}

/// The `--help` text of each command: one source for `courier COMMAND --help` and
/// `courier help COMMAND`.
fn command_help(command: &str) -> Option<String> {
    Some(match command {
        "serve" => config::help(SERVE_USAGE, &[NET_FLAGS, SERVE_FLAGS]),
        "echo" => config::help(ECHO_USAGE, &[NET_FLAGS]),
        "token" => config::help(TOKEN_USAGE, &[TOKEN_FLAGS]),
        "secret" => SECRET_USAGE.to_owned(),
        _ => return None,
    })
}

fn echo(args: &[String]) -> Result<(), String> {
    let Some((values, positional)) = parse_or_help(args, "echo", &[NET_FLAGS])? else {
        return Ok(());
    };
    if let Some(extra) = positional.first() {
        return Err(format!("unexpected argument '{extra}'"));
    }
    let open_files = courier::net::raise_open_file_limit()
        .map_err(|e| format!("reading the open-file limit: {e}"))?;
    let config = NetConfig::from_values(&values, open_files)?;
    courier::net::run(
        config,
        |_| Ok(courier::echo::Echo),
        |bound| {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "listening on {}", bound.listen);
            let _ = stdout.flush();
        },
    )
    .map_err(|e| format!("echo: {e}"))
}

fn parse_or_help(
    args: &[String],
    command: &str,
    tables: &[&'static [config::Flag]],
) -> Result<Option<(Values, Vec<String>)>, String> {
    let env = |name: &str| std::env::var(name).ok();
    match config::parse(args, tables, &env)? {
        Parsed::Help => {
            print_out(&command_help(command).expect("a command with flags"));
            Ok(None)
        }
        Parsed::Run(values, positional) => Ok(Some((values, positional))),
    }
}

fn serve(args: &[String]) -> Result<(), String> {
    let Some((values, positional)) = parse_or_help(args, "serve", &[NET_FLAGS, SERVE_FLAGS])?
    else {
        return Ok(());
    };
    if let Some(extra) = positional.first() {
        return Err(format!("unexpected argument '{extra}'"));
    }
    let dev_login = values.switch("dev-login")?;
    let dev_login_public = values.switch("dev-login-public")?;
    let open_files = courier::net::raise_open_file_limit()
        .map_err(|e| format!("reading the open-file limit: {e}"))?;
    // Resolves --listen, once: the dev-login check below and the listener must see the
    // same address.
    let mut net = NetConfig::from_values(&values, open_files)?;
    let secret = if dev_login {
        check_dev_login(secret_given(&values), net.listen, dev_login_public)?;
        dev_secret(Path::new(values.raw("data")))?
    } else {
        configured_secret(&values)?
    };
    let token_policy = auth::Policy {
        max_ttl_secs: match values.millis_or_off("max-token-ttl")? {
            Some(ms) if ms < 1000 => {
                return Err(format!(
                    "{}: must be at least 1s, or off",
                    values.given("max-token-ttl")
                ))
            }
            ttl => ttl.map(|ms| ms / 1000),
        },
        audience: values.optional("token-audience"),
        issuer: values.optional("token-issuer"),
    };
    let heartbeat_ms = values.millis("heartbeat")?;
    if heartbeat_ms == 0 {
        return Err(format!(
            "{}: clients would ping without pause; must be longer than 0",
            values.given("heartbeat")
        ));
    }
    net.metrics_listen = values.optional_addr("metrics-listen")?;
    if net.metrics_listen == Some(net.listen) && net.listen.port() != 0 {
        return Err(format!(
            "{} must be another address than {}",
            values.label("metrics-listen"),
            values.label("listen")
        ));
    }
    if !values.is_set("idle-timeout") {
        // PROTOCOL.md: the idle timeout is three heartbeats unless set on its own.
        net.idle_timeout_ms = heartbeat_ms.saturating_mul(3).max(1);
    }
    let max_body = values.bytes("max-body")?;
    if max_body == 0 {
        return Err(format!(
            "{}: no message could carry a body; at least 1 byte",
            values.given("max-body")
        ));
    }
    // A body travels inside one WebSocket message, with its JSON around it: at or above
    // --max-message a body that large closes the connection (1009) before it is read.
    if max_body >= net.max_message {
        return Err(format!(
            "{} is not below {}: a body travels inside one WebSocket message, with its \
             JSON around it, so a body that large could never arrive (the connection \
             would be closed 1009 first). Raise {} or lower {}",
            values.given("max-body"),
            values.given("max-message"),
            values.label("max-message"),
            values.label("max-body"),
        ));
    }
    let echo_max_message = values.bytes("echo-max-message")?;
    if echo_max_message == 0 {
        return Err(format!(
            "{}: every echo message would be refused (1009); at least 1 byte",
            values.given("echo-max-message")
        ));
    }
    let too_large = |name: &str| format!("{}: too large", values.given(name));
    let rate = u32::try_from(values.count("rate")?).map_err(|_| too_large("rate"))?;
    let hub = HubConfig {
        heartbeat_ms,
        ack_timeout_ms: values.millis("ack-timeout")?,
        ack_retries: u32::try_from(values.count("ack-retries")?)
            .map_err(|_| too_large("ack-retries"))?,
        ack_retry_interval_ms: values.millis("ack-retry-interval")?,
        window: values.count("ack-window")?.max(1),
        window_bytes: (values.bytes("ack-window-bytes")? as u64).max(1),
        max_body,
        rate_per_sec: rate.max(1),
        rate_burst: rate.saturating_mul(2).max(1),
        recall_window_ms: values.millis("recall-window")?,
        max_group: u32::try_from(values.count("max-group")?)
            .map_err(|_| too_large("max-group"))?
            .max(1),
        ..HubConfig::default()
    };
    let mut store = StoreConfig::new(values.raw("data"));
    store.budget = courier::store::Budget {
        groups_per_hour: u32::try_from(values.count("groups-per-hour")?)
            .map_err(|_| too_large("groups-per-hour"))?,
        new_users_per_hour: u32::try_from(values.count("new-users-per-hour")?)
            .map_err(|_| too_large("new-users-per-hour"))?,
    };
    store.synchronous = match values.raw("synchronous") {
        "normal" => Synchronous::Normal,
        "full" => Synchronous::Full,
        other => {
            return Err(format!(
                "{}: expected normal or full, got '{other}'",
                values.label("synchronous")
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
        echo_max_message,
        // Half the slots at most: the benchmark endpoint must never lock IM users out.
        echo_max_connections: (net.max_connections / 2).max(1),
        read_rate: u32::try_from(values.bytes("rate-bytes")?)
            .map_err(|_| format!("{}: at most 4 GiB per second", values.given("rate-bytes")))?,
        auth_failures: u32::try_from(values.count("auth-failures")?)
            .map_err(|_| too_large("auth-failures"))?,
        auth_failure_window_ms: values.millis("auth-failure-window")?,
    };
    let listen = net.listen;
    // A host name is resolved once, at start: say what it was, beside what was bound.
    let resolved = match values.raw("listen").parse::<SocketAddr>() {
        Ok(_) => String::new(),
        Err(_) => format!(" (from {})", values.given("listen")),
    };
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
    let started = std::cell::Cell::new(false);
    // The server (and with it the store) is dropped when the reactor returns: the store
    // then commits what it accepted and stops its threads.
    let result = courier::net::run(
        net,
        |waker| Server::open(config, waker, 0).map_err(std::io::Error::other),
        |bound| {
            started.set(true);
            let version = env!("CARGO_PKG_VERSION");
            let mut stdout = std::io::stdout().lock();
            match bound.metrics {
                Some(metrics) => {
                    courier::log_info!(
                        "courier {version} serving on {}{resolved}, /metrics on {metrics} only",
                        bound.listen
                    );
                    // Before `listening on`: whoever waits for that line has both.
                    let _ = writeln!(stdout, "metrics on {metrics}");
                }
                None => {
                    courier::log_info!("courier {version} serving on {}{resolved}", bound.listen)
                }
            }
            let _ = writeln!(stdout, "listening on {}", bound.listen);
            // After `listening on`, which scripts wait for: the address a person opens.
            let _ = writeln!(stdout, "chat page: {}", page_url(bound.listen));
            let _ = stdout.flush();
        },
    );
    match result {
        Ok(()) => {
            courier::log_info!("stopped");
            courier::log::shutdown();
            Ok(())
        }
        Err(e) => {
            // The error is the news: the logger is flushed first so nothing it held lands
            // after it, and a server that never started does not say it `stopped`.
            courier::log::shutdown();
            if started.get() {
                Err(format!("serve on {listen} stopped: {e}"))
            } else {
                Err(format!("serve: {e}"))
            }
        }
    }
}

/// The URL of the chat page on `listen`. A server on every interface is also on loopback,
/// and `http://0.0.0.0:8080/` is not an address every browser opens.
fn page_url(listen: SocketAddr) -> String {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        });
    }
    format!("http://{addr}/")
}

fn token(args: &[String]) -> Result<(), String> {
    let Some((values, positional)) = parse_or_help(args, "token", &[TOKEN_FLAGS])? else {
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
    let ttl_ms = values.millis("ttl")?;
    if ttl_ms < 1000 {
        return Err(format!(
            "{}: the token would expire as it is made; at least 1s",
            values.given("ttl")
        ));
    }
    let secret = configured_secret(&values)?;
    let now = courier::clock::wall_ms() / 1000;
    let audience = values.optional("token-audience");
    let issuer = values.optional("token-issuer");
    print_out(&auth::issue_with(
        user,
        ttl_ms / 1000,
        &secret,
        now,
        audience.as_deref(),
        issuer.as_deref(),
    ));
    Ok(())
}

fn secret(args: &[String]) -> Result<(), String> {
    let out = match args {
        [] => None,
        [flag] if flag == "--help" || flag == "-h" => {
            print_out(SECRET_USAGE);
            return Ok(());
        }
        [flag, file] if flag == "--out" => Some(file.as_str()),
        [flag] if flag.starts_with("--out=") => Some(&flag["--out=".len()..]),
        [flag] if flag == "--out" => return Err("--out needs a FILE".into()),
        [.., extra] => return Err(format!("unexpected argument '{extra}'\n\n{SECRET_USAGE}")),
    };
    let hex: String = random_secret()?
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    match out {
        None => print_out(&hex),
        Some("") => return Err("--out needs a FILE".into()),
        Some(file) => {
            write_secret_file(Path::new(file), &hex)?;
            print_out(&format!(
                "wrote a fresh token secret to {file} (mode 0600): give it to `courier serve` \
                 and `courier token` with --jwt-secret-file {file}"
            ));
        }
    }
    Ok(())
}

/// `courier secret --out FILE`: owner-only from the first byte (created with mode 0600,
/// never chmod-ed after), and never over an existing file, which may be the secret every
/// token in use was signed with.
fn write_secret_file(path: &Path, hex: &str) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let at = path.display();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| format!("--out {at}: cannot create {}: {e}", parent.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => format!(
                "--out {at}: the file exists and is left as it is (a new secret would sign \
                 out everyone the old one signed in); delete it first to replace it"
            ),
            _ => format!("--out {at}: {e}"),
        })?;
    file.write_all(format!("{hex}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("--out {at}: writing: {e}"))
}

/// The flag or variable that configures a secret, if one does (an empty value does not).
fn secret_given(values: &Values) -> Option<String> {
    ["jwt-secret", "jwt-secret-file"]
        .into_iter()
        .find(|name| !values.raw(name).is_empty())
        .map(|name| values.label(name))
}

/// The token secret of `serve` and `token`: `--jwt-secret` or the file of
/// `--jwt-secret-file` (or their variables), never both, refused when too short to be an
/// HS256 key.
fn configured_secret(values: &Values) -> Result<Vec<u8>, String> {
    let inline = values.raw("jwt-secret");
    let file = values.raw("jwt-secret-file");
    match (inline.is_empty(), file.is_empty()) {
        (false, false) => Err(format!(
            "{} and {} are both set: give one (which of two secrets signs is not a \
             question to leave to precedence rules)",
            values.label("jwt-secret"),
            values.label("jwt-secret-file")
        )),
        (true, true) => Err(format!(
            "no token secret: make one once with `courier secret --out FILE` and give it \
             with --jwt-secret-file FILE (or COURIER_JWT_SECRET_FILE), or set --jwt-secret \
             or COURIER_JWT_SECRET ({} or more random bytes: `courier secret` or `openssl \
             rand -hex 32` makes one); or try courier locally with --dev-login on",
            auth::MIN_SECRET_LEN
        )),
        (false, true) => {
            auth::check_secret(inline.as_bytes())
                .map_err(|e| format!("{}: {e}", values.label("jwt-secret")))?;
            Ok(inline.as_bytes().to_vec())
        }
        (true, false) => read_secret_file(Path::new(file), &values.given("jwt-secret-file")),
    }
}

/// The largest secret file read: a secret is 32 to a few hundred bytes, and a path to
/// something endless (a device, a FIFO nobody closes) must not hang the start.
const SECRET_FILE_MAX: u64 = 64 << 10;

/// Reads the secret in `path`: its bytes as written, less one trailing newline (what
/// `courier secret > FILE` and editors add). Refused when other users may read or write
/// it, as OpenSSH refuses such a private key: whoever reads it signs in as anyone, and
/// whoever writes it chooses the secret. A group may read it (a service group, or the ACL
/// systemd gives a credential, which shows in the group bits).
fn read_secret_file(path: &Path, given: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound => {
                format!(" (make it once with `courier secret --out {shown}`)")
            }
            _ => String::new(),
        };
        format!("{given}: cannot read the secret file: {e}{hint}")
    })?;
    let mode = file
        .metadata()
        .map_err(|e| format!("{given}: {e}"))?
        .permissions()
        .mode();
    if mode & 0o006 != 0 {
        let may = match (mode & 0o004 != 0, mode & 0o002 != 0) {
            (true, true) => "read and write",
            (true, false) => "read",
            _ => "write",
        };
        return Err(format!(
            "{given}: every user on this machine may {may} it (mode {:04o}), and the secret \
             signs every token; `chmod 600 {shown}` and start again",
            mode & 0o7777
        ));
    }
    let mut secret = Vec::new();
    file.take(SECRET_FILE_MAX + 1)
        .read_to_end(&mut secret)
        .map_err(|e| format!("{given}: cannot read the secret file: {e}"))?;
    if secret.len() as u64 > SECRET_FILE_MAX {
        return Err(format!(
            "{given}: larger than {} KiB, not a secret",
            SECRET_FILE_MAX >> 10
        ));
    }
    if secret.ends_with(b"\n") {
        secret.pop();
        if secret.ends_with(b"\r") {
            secret.pop();
        }
    }
    if secret.is_empty() {
        return Err(format!(
            "{given}: the file is empty (make a secret with `courier secret --out FILE`)"
        ));
    }
    auth::check_secret(&secret).map_err(|e| format!("{given}: {e}"))?;
    Ok(secret)
}

/// Dev login hands a token for any user to anyone who asks. It is refused with a
/// configured secret rather than signing with it: those tokens would be valid on every
/// server that shares the secret, and signing with a second secret beside it would make
/// a production server quietly accept tokens nobody issued. And it is refused off
/// loopback unless asked for twice.
fn check_dev_login(
    configured: Option<String>,
    listen: SocketAddr,
    public: bool,
) -> Result<(), String> {
    if let Some(configured) = configured {
        return Err(format!(
            "--dev-login on refuses a configured secret ({configured} is set): it would hand \
             anyone a token signed with it, for any user, valid on every server that shares \
             it. To try courier locally unset the secret (--jwt-secret, --jwt-secret-file, \
             COURIER_JWT_SECRET, COURIER_JWT_SECRET_FILE; dev login keeps its own in the \
             data folder); for real use turn dev login off."
        ));
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
    fn the_page_url_of_every_interface_is_its_loopback() {
        let url = |s: &str| page_url(s.parse().unwrap());
        assert_eq!(url("127.0.0.1:8080"), "http://127.0.0.1:8080/");
        assert_eq!(url("0.0.0.0:8080"), "http://127.0.0.1:8080/");
        assert_eq!(url("[::]:80"), "http://[::1]:80/");
        assert_eq!(url("[::1]:8080"), "http://[::1]:8080/");
        assert_eq!(url("192.0.2.7:8080"), "http://192.0.2.7:8080/");
    }

    #[test]
    fn dev_login_is_refused_with_a_secret_and_off_loopback_unless_public() {
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let open: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let v6: SocketAddr = "[::1]:8080".parse().unwrap();
        assert!(check_dev_login(None, local, false).is_ok());
        assert!(check_dev_login(None, v6, false).is_ok());
        assert!(check_dev_login(None, open, true).is_ok());
        let refusal = check_dev_login(None, open, false).unwrap_err();
        assert!(refusal.contains("--dev-login-public on"), "{refusal}");
        // A configured secret is refused even where dev login would otherwise be allowed.
        for (listen, public) in [(local, false), (open, true)] {
            let given = Some("COURIER_JWT_SECRET_FILE".to_owned());
            let refusal = check_dev_login(given, listen, public).unwrap_err();
            assert!(
                refusal.contains("COURIER_JWT_SECRET_FILE is set"),
                "{refusal}"
            );
        }
    }
}
