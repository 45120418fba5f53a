//! Every knob with its default, read from flags and `COURIER_*` environment variables (a
//! flag wins over the environment, which wins over the default). The flag tables are the
//! single source for parsing and for `--help`, so the two cannot drift apart.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

/// One command-line flag. Its environment variable is `COURIER_` + the name upper-cased
/// with `-` turned into `_`.
pub struct Flag {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

/// Flags of the network layer, shared by every server subcommand.
pub const NET_FLAGS: &[Flag] = &[
    Flag {
        name: "listen",
        default: "127.0.0.1:8080",
        help: "address to accept connections on: IP:PORT, HOST:PORT (resolved once at start; the first IPv4 address, else the first), or :PORT for 127.0.0.1 (every interface: 0.0.0.0:PORT or [::]:PORT)",
    },
    Flag {
        name: "max-message",
        default: "1MiB",
        help: "largest WebSocket message accepted (close 1009 above it)",
    },
    Flag {
        name: "max-connections",
        default: "auto",
        help: "connections held at once; 'auto' = the open-file limit minus a reserve",
    },
    Flag {
        name: "idle-timeout",
        default: "75s",
        help: "close a connection silent this long (1001)",
    },
    Flag {
        name: "handshake-timeout",
        default: "5s",
        help: "cut off a client that has not finished its handshake (slowloris)",
    },
    Flag {
        name: "message-timeout",
        default: "10s",
        help: "a message (all its fragments) must arrive within this once begun (close 1008)",
    },
    Flag {
        name: "close-timeout",
        default: "2s",
        help: "how long to wait for the peer's close frame / TCP close after ours",
    },
    Flag {
        name: "out-soft-cap",
        default: "256KiB",
        help: "stop reading a connection whose unsent output is above this",
    },
    Flag {
        name: "out-hard-cap",
        default: "16MiB",
        help: "close a connection (1008) whose unsent output is above this",
    },
];

/// Flags of `courier serve`, beside [`NET_FLAGS`].
pub const SERVE_FLAGS: &[Flag] = &[
    Flag {
        name: "data",
        default: "./courier-data",
        help: "data folder (the SQLite database and its WAL)",
    },
    Flag {
        name: "jwt-secret",
        default: "",
        help: "HS256 secret that signs access tokens, at least 32 bytes (make one with `courier secret`); this or --jwt-secret-file is required, except with --dev-login on, which refuses both",
    },
    Flag {
        name: "jwt-secret-file",
        default: "",
        help: "file holding the --jwt-secret (one trailing newline ignored; refused when other users may read or write it); `courier secret --out FILE` makes one",
    },
    Flag {
        name: "max-token-ttl",
        default: "off",
        help: "refuse (401) a token whose exp is further out than now plus this (e.g. 24h; 30s of leeway); off: any exp",
    },
    Flag {
        name: "token-audience",
        default: "",
        help: "when set, a token's aud (a string, or an array of strings) must hold exactly this (401 otherwise)",
    },
    Flag {
        name: "token-issuer",
        default: "",
        help: "when set, a token's iss must be exactly this (401 otherwise)",
    },
    Flag {
        name: "heartbeat",
        default: "25s",
        help: "app ping interval suggested to clients (the idle timeout is 3x this unless set)",
    },
    Flag {
        name: "ack-timeout",
        default: "5s",
        help: "re-push the oldest unacked message after this",
    },
    Flag {
        name: "ack-retries",
        default: "2",
        help: "re-pushes before closing with 4008",
    },
    Flag {
        name: "ack-retry-interval",
        default: "2s",
        help: "time between re-pushes, and from the last one to the 4008 close",
    },
    Flag {
        name: "ack-window",
        default: "256",
        help: "pushed-but-unacked messages per connection before pushing pauses",
    },
    Flag {
        name: "ack-window-bytes",
        default: "1MiB",
        help: "the same in bytes; also the most one sync page sends at once",
    },
    Flag {
        name: "max-body",
        default: "16KiB",
        help: "largest message body (error too_large above it)",
    },
    Flag {
        name: "rate",
        default: "200",
        help: "requests per second one connection may make on average (burst: twice this; an ack counts a tenth)",
    },
    Flag {
        name: "rate-bytes",
        default: "1MiB",
        help: "bytes per second one connection may send (burst: twice this); past it the server stops reading it for a while; 0: no limit",
    },
    Flag {
        name: "synchronous",
        default: "normal",
        help: "normal: a sent message survives a crash of the process; full: also power loss",
    },
    Flag {
        name: "origin",
        default: "",
        help: "allowed Origin of WebSocket clients (repeatable; comma-separated in the environment); none set: any (403 when set and not matched)",
    },
    Flag {
        name: "trusted-proxy",
        default: "",
        help: "address of a reverse proxy whose X-Forwarded-For is believed (repeatable; IP or CIDR)",
    },
    Flag {
        name: "max-per-address",
        default: "0",
        help: "connections one client address may hold at once (429 past it); 0: no limit",
    },
    Flag {
        name: "auth-failures",
        default: "20",
        help: "failed logins one client address may make per --auth-failure-window; past them its upgrades get 429 with Retry-After until the window ends; 0: no limit",
    },
    Flag {
        name: "auth-failure-window",
        default: "60s",
        help: "the window --auth-failures counts in, from an address's first failure",
    },
    Flag {
        name: "max-per-user",
        default: "32",
        help: "IM connections one user may hold at once (429 past it); 0: no limit",
    },
    Flag {
        name: "recall-window",
        default: "2m",
        help: "how long after sending a message its sender may recall it",
    },
    Flag {
        name: "groups-per-hour",
        default: "60",
        help: "groups one user may create per hour (rate_limited past it); 0: no limit",
    },
    Flag {
        name: "new-users-per-hour",
        default: "5000",
        help: "users one user may name that did not exist before, by a message or a group request, per hour (rate_limited past it); 0: no limit",
    },
    Flag {
        name: "max-group",
        default: "1000",
        help: "most members a group may have",
    },
    Flag {
        name: "dev-login",
        default: "off",
        help: "on: anyone may get a token for any user at GET /dev/token?user=NAME, signed with a random secret kept in the data folder (local tries only; refused with --jwt-secret, and unless --listen is loopback)",
    },
    Flag {
        name: "dev-login-public",
        default: "off",
        help: "on: allow --dev-login on with a --listen that is not a loopback address (anyone who reaches it signs in as anyone)",
    },
    Flag {
        name: "metrics-listen",
        default: "",
        help: "a second address serving /metrics and /healthz only (plain HTTP); when set, --listen answers 404 for /metrics",
    },
    Flag {
        name: "echo",
        default: "off",
        help: "on: serve the /echo endpoint beside /ws, anonymous (benchmark `courier echo` instead)",
    },
    Flag {
        name: "echo-max-message",
        default: "64KiB",
        help: "largest message /echo takes when on (close 1009 above it)",
    },
];

/// Flags of `courier token`.
pub const TOKEN_FLAGS: &[Flag] = &[
    Flag {
        name: "jwt-secret",
        default: "",
        help: "HS256 secret that signs access tokens, at least 32 bytes (the server's)",
    },
    Flag {
        name: "jwt-secret-file",
        default: "",
        help: "file holding the secret (the server's --jwt-secret-file)",
    },
    Flag {
        name: "token-audience",
        default: "",
        help: "aud claim to write (the server's --token-audience)",
    },
    Flag {
        name: "token-issuer",
        default: "",
        help: "iss claim to write (the server's --token-issuer)",
    },
    Flag {
        name: "ttl",
        default: "24h",
        help: "how long the token is valid (at least 1s)",
    },
];

/// Where a value came from, so an error names what the user actually wrote: a bad
/// `COURIER_IDLE_TIMEOUT` reported as `--idle-timeout` sends them looking for a flag they
/// never gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    Default,
}

/// Parsed flag values, each already checked against its table.
pub struct Values {
    /// Every flag's value, and where it came from.
    entries: Vec<(&'static Flag, String, Source)>,
    /// Every occurrence of each flag given on the command line, in order (for the
    /// repeatable ones).
    given: Vec<(&'static Flag, String)>,
}

/// What the command line asked for besides values.
pub enum Parsed {
    Run(Values, Vec<String>),
    Help,
}

/// Parses `args` against `tables`; positional arguments are returned in order. `env`
/// looks up an environment variable (injected so tests need not touch the process env).
pub fn parse(
    args: &[String],
    tables: &[&'static [Flag]],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Parsed, String> {
    let flags: Vec<&'static Flag> = tables.iter().flat_map(|t| t.iter()).collect();
    let mut given: Vec<(&'static Flag, String)> = Vec::new();
    let mut positional = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--help" || arg == "-h" {
            return Ok(Parsed::Help);
        }
        let Some(body) = arg.strip_prefix("--") else {
            positional.push(arg.clone());
            continue;
        };
        let (name, inline) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (body, None),
        };
        let flag = flags
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| format!("unknown flag --{name} (see --help)"))?;
        let value = match inline {
            Some(value) => value,
            None => iter
                .next()
                .cloned()
                .ok_or_else(|| format!("--{name} needs a value"))?,
        };
        given.push((flag, value));
    }
    let mut entries = Vec::with_capacity(flags.len());
    for flag in flags {
        // The last occurrence of a flag wins, as with most tools.
        let (value, source) = match given.iter().rev().find(|(f, _)| std::ptr::eq(*f, flag)) {
            Some((_, value)) => (value.clone(), Source::Flag),
            None => match env(&env_name(flag.name)) {
                Some(value) => (value, Source::Env),
                None => (flag.default.to_string(), Source::Default),
            },
        };
        entries.push((flag, value, source));
    }
    Ok(Parsed::Run(Values { entries, given }, positional))
}

pub fn env_name(flag: &str) -> String {
    format!("COURIER_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

/// The `--help` text of one subcommand: usage, then every flag with its default and
/// environment variable.
pub fn help(usage: &str, tables: &[&'static [Flag]]) -> String {
    let mut text =
        format!("{usage}\n\nFlags (each also read from its environment variable; a flag wins):\n");
    for flag in tables.iter().flat_map(|t| t.iter()) {
        let _ = writeln!(
            text,
            "  --{:<20} {} [default: {}] [env: {}]",
            flag.name,
            flag.help,
            flag.default,
            env_name(flag.name)
        );
    }
    text
}

impl Values {
    fn entry(&self, name: &str) -> &(&'static Flag, String, Source) {
        self.entries
            .iter()
            .find(|(f, ..)| f.name == name)
            .unwrap_or_else(|| panic!("flag --{name} is not in this command's tables"))
    }

    pub fn raw(&self, name: &str) -> &str {
        &self.entry(name).1
    }

    pub fn source(&self, name: &str) -> Source {
        self.entry(name).2
    }

    /// The flag or the environment variable the value came from, as the user wrote it:
    /// `--idle-timeout` or `COURIER_IDLE_TIMEOUT` (the flag for a default).
    pub fn label(&self, name: &str) -> String {
        match self.source(name) {
            Source::Env => env_name(name),
            Source::Flag | Source::Default => format!("--{name}"),
        }
    }

    /// [`label`](Self::label) with the value: `--max-body 2MiB`, `COURIER_MAX_BODY=2MiB`.
    pub fn given(&self, name: &str) -> String {
        let raw = self.raw(name);
        match self.source(name) {
            Source::Env => format!("{}={raw}", env_name(name)),
            Source::Flag | Source::Default => format!("--{name} {raw}"),
        }
    }

    /// A repeatable flag: every occurrence on the command line, or else its environment
    /// variable split at commas, or else its default (empty when the default is empty).
    pub fn list(&self, name: &str) -> Vec<String> {
        let (flag, value, source) = self.entry(name);
        let given: Vec<String> = self
            .given
            .iter()
            .filter(|(f, _)| std::ptr::eq(*f, *flag))
            .map(|(_, v)| v.clone())
            .collect();
        if !given.is_empty() {
            return given;
        }
        if *source != Source::Default || !value.is_empty() {
            return value
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .collect();
        }
        Vec::new()
    }

    /// Whether the flag or its environment variable was given (not just the default).
    pub fn is_set(&self, name: &str) -> bool {
        self.source(name) != Source::Default
    }

    /// `on` or `off`.
    pub fn switch(&self, name: &str) -> Result<bool, String> {
        match self.raw(name) {
            "on" => Ok(true),
            "off" => Ok(false),
            raw => Err(format!(
                "{}: expected on or off, got '{raw}'",
                self.label(name)
            )),
        }
    }

    /// A whole number.
    pub fn count(&self, name: &str) -> Result<u64, String> {
        let raw = self.raw(name);
        raw.parse()
            .map_err(|_| format!("{}: expected a whole number, got '{raw}'", self.label(name)))
    }

    /// An address to listen on, host names resolved now (see [`resolve_listen`]).
    pub fn addr(&self, name: &str) -> Result<SocketAddr, String> {
        resolve_listen(self.raw(name)).map_err(|e| format!("{}: {e}", self.label(name)))
    }

    /// A duration in milliseconds: `500ms`, `25s`, `2m`, `1h`, `1d`.
    pub fn millis(&self, name: &str) -> Result<u64, String> {
        let raw = self.raw(name);
        parse_duration_ms(raw).ok_or_else(|| {
            format!(
                "{}: expected a duration like 500ms, 25s, 2m or 24h, got '{raw}'",
                self.label(name)
            )
        })
    }

    /// A duration in milliseconds, or `off` (returned as `None`).
    pub fn millis_or_off(&self, name: &str) -> Result<Option<u64>, String> {
        if self.raw(name) == "off" {
            return Ok(None);
        }
        self.millis(name).map(Some)
    }

    /// An address, or nothing when the value is empty.
    pub fn optional_addr(&self, name: &str) -> Result<Option<SocketAddr>, String> {
        if self.raw(name).is_empty() {
            return Ok(None);
        }
        self.addr(name).map(Some)
    }

    /// A string, or nothing when the value is empty.
    pub fn optional(&self, name: &str) -> Option<String> {
        Some(self.raw(name))
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    /// A byte count: `65536`, `64KiB`, `16MiB`, `1GiB` (K, M, G are binary too).
    pub fn bytes(&self, name: &str) -> Result<usize, String> {
        let raw = self.raw(name);
        parse_size(raw).ok_or_else(|| {
            format!(
                "{}: expected a size like 65536, 64KiB or 16MiB, got '{raw}'",
                self.label(name)
            )
        })
    }

    /// A count, or `auto` (returned as `None`).
    pub fn count_or_auto(&self, name: &str) -> Result<Option<usize>, String> {
        let raw = self.raw(name);
        if raw == "auto" {
            return Ok(None);
        }
        raw.parse().map(Some).map_err(|_| {
            format!(
                "{}: expected a whole number or 'auto', got '{raw}'",
                self.label(name)
            )
        })
    }
}

pub fn parse_duration_ms(raw: &str) -> Option<u64> {
    let split = raw.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = raw.split_at(split);
    let number: u64 = number.parse().ok()?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    number.checked_mul(scale)
}

pub fn parse_size(raw: &str) -> Option<usize> {
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let number: usize = number.parse().ok()?;
    let scale = match unit {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(scale)
}

/// What `--listen` and `--metrics-listen` take. An IP literal is used as it is.
///
/// `HOST:PORT` is resolved once, here, to one address, since one listener binds one: the
/// first IPv4 address the resolver gives, else its first. glibc puts `::1` before
/// `127.0.0.1` for `localhost`, and a server on `::1` alone is missed by every
/// `http://127.0.0.1:8080/` in the docs and scripts.
///
/// `:PORT` keeps the default host, 127.0.0.1. In Go it would mean every interface, but
/// whoever types only a port wants another port; reading it as "put the server on the
/// network" would expose a server (dev login included) that was meant to stay local.
/// Every interface is asked for by name: `0.0.0.0:PORT` or `[::]:PORT`.
pub fn resolve_listen(raw: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = raw.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let expected = "expected HOST:PORT like 127.0.0.1:8080, localhost:8080, [::1]:8080 or :8080";
    let Some((host, port)) = raw.rsplit_once(':') else {
        return Err(format!("{expected}, got '{raw}' (no port)"));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{expected}, got '{raw}' ('{port}' is not a port)"))?;
    if host.is_empty() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if host.contains([':', '[', ']']) {
        return Err(format!(
            "{expected}, got '{raw}' (an IPv6 address goes in brackets: [::1]:8080)"
        ));
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve '{host}': {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("'{host}' resolves to no address"))
}

/// The network layer's settings.
#[derive(Clone, Debug)]
pub struct NetConfig {
    pub listen: SocketAddr,
    pub max_message: usize,
    pub max_connections: usize,
    pub idle_timeout_ms: u64,
    pub handshake_timeout_ms: u64,
    pub close_timeout_ms: u64,
    pub message_timeout_ms: u64,
    pub out_soft_cap: usize,
    pub out_hard_cap: usize,
    /// A second listener whose connections get plain HTTP only, answered by
    /// [`Service::metrics_http`](crate::net::Service::metrics_http): no upgrade, so
    /// whoever reaches it reaches no IM. `courier serve --metrics-listen`; `None`: none.
    pub metrics_listen: Option<SocketAddr>,
}

/// File descriptors kept back from `--max-connections auto` for the listener, the poll
/// instance, the signal pipe, the store's files and a margin to accept-and-refuse with.
const RESERVED_FDS: usize = 64;

impl NetConfig {
    /// `open_files` is the process's open-file limit, for `--max-connections auto`.
    pub fn from_values(values: &Values, open_files: usize) -> Result<NetConfig, String> {
        let config = NetConfig {
            listen: values.addr("listen")?,
            max_message: values.bytes("max-message")?,
            max_connections: values
                .count_or_auto("max-connections")?
                .unwrap_or(open_files.saturating_sub(RESERVED_FDS).max(1)),
            idle_timeout_ms: values.millis("idle-timeout")?,
            handshake_timeout_ms: values.millis("handshake-timeout")?,
            close_timeout_ms: values.millis("close-timeout")?,
            message_timeout_ms: values.millis("message-timeout")?,
            out_soft_cap: values.bytes("out-soft-cap")?,
            out_hard_cap: values.bytes("out-hard-cap")?,
            metrics_listen: None,
        };
        if config.max_connections == 0 {
            return Err(format!(
                "{}: must be at least 1",
                values.given("max-connections")
            ));
        }
        if config.max_message == 0 {
            return Err(format!(
                "{}: every message would be refused (1009); at least 1 byte",
                values.given("max-message")
            ));
        }
        if config.out_hard_cap < config.out_soft_cap {
            return Err(format!(
                "{} must not be below {}",
                values.given("out-hard-cap"),
                values.given("out-soft-cap")
            ));
        }
        if config.out_hard_cap > 1 << 30 {
            return Err(format!(
                "{}: must be at most 1GiB",
                values.given("out-hard-cap")
            ));
        }
        for (name, ms) in [
            ("idle-timeout", config.idle_timeout_ms),
            ("handshake-timeout", config.handshake_timeout_ms),
            ("close-timeout", config.close_timeout_ms),
            ("message-timeout", config.message_timeout_ms),
        ] {
            if ms == 0 {
                return Err(format!("{}: must be longer than 0", values.given(name)));
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn values(list: &[&str], env: &dyn Fn(&str) -> Option<String>) -> Values {
        match parse(&args(list), &[NET_FLAGS], env).unwrap() {
            Parsed::Run(values, _) => values,
            Parsed::Help => panic!("help"),
        }
    }

    #[test]
    fn repeatable_flags_keep_every_occurrence_or_split_the_environment() {
        let env =
            |name: &str| (name == "COURIER_ORIGIN").then(|| "https://a, https://b".to_owned());
        let parse_serve = |list: &[&str], env: &dyn Fn(&str) -> Option<String>| match parse(
            &args(list),
            &[NET_FLAGS, SERVE_FLAGS],
            env,
        )
        .unwrap()
        {
            Parsed::Run(values, _) => values,
            Parsed::Help => panic!("help"),
        };
        let v = parse_serve(&["--origin", "https://x", "--origin=https://y"], &env);
        assert_eq!(v.list("origin"), ["https://x", "https://y"]);
        let v = parse_serve(&[], &env);
        assert_eq!(v.list("origin"), ["https://a", "https://b"]);
        let v = parse_serve(&[], &no_env);
        assert!(v.list("origin").is_empty());
        assert!(v.list("trusted-proxy").is_empty());
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration_ms("500ms"), Some(500));
        assert_eq!(parse_duration_ms("25s"), Some(25_000));
        assert_eq!(parse_duration_ms("2m"), Some(120_000));
        assert_eq!(parse_duration_ms("24h"), Some(86_400_000));
        assert_eq!(parse_duration_ms("25"), None, "a bare number is ambiguous");
        assert_eq!(parse_duration_ms("s"), None);
        assert_eq!(parse_duration_ms("5x"), None);
        assert_eq!(parse_size("16MiB"), Some(16 << 20));
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("1TB"), None);
    }

    #[test]
    fn flag_wins_over_env_which_wins_over_default() {
        let env = |name: &str| {
            (name == "COURIER_IDLE_TIMEOUT" || name == "COURIER_LISTEN").then(|| "9s".to_string())
        };
        let v = values(&["--listen", "0.0.0.0:1"], &env);
        assert_eq!(v.raw("listen"), "0.0.0.0:1");
        assert_eq!(v.millis("idle-timeout"), Ok(9_000));
        assert_eq!(v.millis("handshake-timeout"), Ok(5_000));
    }

    #[test]
    fn equals_form_and_last_occurrence_win() {
        let v = values(&["--max-message=10", "--max-message", "20"], &no_env);
        assert_eq!(v.bytes("max-message"), Ok(20));
    }

    #[test]
    fn unknown_flag_and_missing_value_are_errors() {
        assert!(parse(&args(&["--nope", "1"]), &[NET_FLAGS], &no_env).is_err());
        assert!(parse(&args(&["--listen"]), &[NET_FLAGS], &no_env).is_err());
    }

    #[test]
    fn auto_max_connections_leaves_a_reserve() {
        let config = NetConfig::from_values(&values(&[], &no_env), 20_000).unwrap();
        assert_eq!(config.max_connections, 20_000 - RESERVED_FDS);
        let config =
            NetConfig::from_values(&values(&["--max-connections", "7"], &no_env), 20_000).unwrap();
        assert_eq!(config.max_connections, 7);
    }

    #[test]
    fn off_durations_and_empty_addresses_are_none() {
        let serve =
            |list: &[&str]| match parse(&args(list), &[NET_FLAGS, SERVE_FLAGS], &no_env).unwrap() {
                Parsed::Run(values, _) => values,
                Parsed::Help => panic!("help"),
            };
        let v = serve(&[]);
        assert_eq!(v.millis_or_off("max-token-ttl"), Ok(None));
        assert_eq!(v.optional_addr("metrics-listen"), Ok(None));
        assert_eq!(v.optional("token-audience"), None);
        let v = serve(&[
            "--max-token-ttl",
            "1h",
            "--metrics-listen",
            "127.0.0.1:9100",
            "--token-issuer",
            "https://login.example",
        ]);
        assert_eq!(v.millis_or_off("max-token-ttl"), Ok(Some(3_600_000)));
        assert_eq!(
            v.optional_addr("metrics-listen"),
            Ok(Some("127.0.0.1:9100".parse().unwrap()))
        );
        assert_eq!(
            v.optional("token-issuer").as_deref(),
            Some("https://login.example")
        );
        let v = serve(&[
            "--max-token-ttl",
            "forever",
            "--metrics-listen",
            "localhost",
        ]);
        assert!(v.millis_or_off("max-token-ttl").is_err());
        assert!(v.optional_addr("metrics-listen").is_err());
    }

    #[test]
    fn an_error_names_the_flag_or_the_variable_the_value_came_from() {
        let env = |name: &str| (name == "COURIER_IDLE_TIMEOUT").then(|| "5".to_owned());
        let from_env = values(&[], &env).millis("idle-timeout").unwrap_err();
        assert!(from_env.starts_with("COURIER_IDLE_TIMEOUT: "), "{from_env}");
        assert!(!from_env.contains("--idle-timeout"), "{from_env}");
        let from_flag = values(&["--idle-timeout", "5"], &env)
            .millis("idle-timeout")
            .unwrap_err();
        assert!(from_flag.starts_with("--idle-timeout: "), "{from_flag}");
        let v = values(&["--max-message", "0"], &env);
        assert_eq!(v.given("max-message"), "--max-message 0");
        assert_eq!(v.given("idle-timeout"), "COURIER_IDLE_TIMEOUT=5");
        assert_eq!(v.source("handshake-timeout"), Source::Default);
        let v = values(&["--max-message", "0"], &no_env);
        let refusal = NetConfig::from_values(&v, 1000).unwrap_err();
        assert!(refusal.starts_with("--max-message 0: "), "{refusal}");
    }

    #[test]
    fn listen_takes_ip_literals_host_names_and_a_bare_port() {
        let ok = |raw: &str| resolve_listen(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
        assert_eq!(ok("0.0.0.0:8080"), "0.0.0.0:8080".parse().unwrap());
        assert_eq!(ok("[::1]:8080"), "[::1]:8080".parse().unwrap());
        assert_eq!(ok("[::]:0"), "[::]:0".parse().unwrap());
        // A bare port keeps the default host: loopback, never every interface.
        assert_eq!(ok(":8080"), "127.0.0.1:8080".parse().unwrap());
        // A host name, from /etc/hosts: no DNS server is asked, whatever the machine.
        let local = ok("localhost:8080");
        assert!(local.ip().is_loopback(), "{local}");
        assert_eq!(local.port(), 8080);
        for (raw, says) in [
            ("localhost", "no port"),
            ("127.0.0.1", "no port"),
            ("localhost:http", "not a port"),
            ("localhost:70000", "not a port"),
            ("::1:8080", "brackets"),
            ("[::1:8080", "brackets"),
        ] {
            let refusal = resolve_listen(raw).unwrap_err();
            assert!(refusal.contains(says), "{raw}: {refusal}");
            assert!(refusal.contains(&format!("'{raw}'")), "{raw}: {refusal}");
        }
    }

    #[test]
    fn help_lists_every_flag_with_default_and_env() {
        let text = help("usage: courier echo", &[NET_FLAGS]);
        for flag in NET_FLAGS {
            assert!(text.contains(&format!("--{}", flag.name)));
            assert!(text.contains(flag.default));
            assert!(text.contains(&env_name(flag.name)));
        }
    }
}
