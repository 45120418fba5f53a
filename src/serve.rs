//! `courier serve`: the IM server. Wires the reactor, the hub and the store together and
//! speaks the few plain HTTP routes; the protocol itself lives in `im`.
//!
//! Everything here runs on the reactor thread. The store answers through a channel and
//! wakes the reactor; the hub's actions are applied to connections through `Out`.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crossbeam_channel::Receiver;

use crate::clock;
use crate::forwarded::{self, TrustedProxies};
use crate::im::auth;
use crate::im::hub::{Action, Hub, HubConfig, Now, Traffic, UNSUPPORTED_DATA};
use crate::im::protocol::ErrorCode;
use crate::login_guard::{LoginGuard, Summary};
use crate::metrics::{self, Metrics};
use crate::net::{Admission, ConnId, NetStats, Out, Service, Waker};
use crate::store::{self, Completion, Store, StoreConfig};
use crate::ws::frame::OpCode;
use crate::ws::handshake::{self, Request, Upgrade};

/// The subprotocol PROTOCOL.md names; echoed when a client offers it.
const SUBPROTOCOL: &str = "courier.v1";

/// Store completions handled per wake-up, and the output they may make (a `history` of
/// large bodies is megabytes of JSON to write): past either, the reactor serves its
/// sockets and timers before taking the rest, so one client's answers cannot hold up
/// everyone else's.
const COMPLETIONS_PER_WAKEUP: usize = 256;
const OUTPUT_PER_WAKEUP: usize = 4 << 20;

pub struct ServeConfig {
    pub store: StoreConfig,
    pub hub: HubConfig,
    pub secret: Vec<u8>,
    /// `--max-token-ttl`, `--token-audience`, `--token-issuer`.
    pub token_policy: auth::Policy,
    pub dev_login: bool,
    /// `--metrics-listen` is set: `/metrics` is served there, and is a 404 here.
    pub metrics_elsewhere: bool,
    pub echo: bool,
    /// `--origin`: browsers' Origins allowed on `/ws`; empty allows all.
    pub origins: Vec<String>,
    pub trusted_proxies: TrustedProxies,
    /// `--max-per-address`: connections one client address may hold; 0 is no limit.
    pub max_per_address: usize,
    /// `--max-per-user`: IM connections one user may hold; 0 is no limit.
    pub max_per_user: usize,
    /// `--echo-max-message`: the largest message `/echo` takes.
    pub echo_max_message: usize,
    /// How many connections `/echo` may hold at once, so it can never take the slots
    /// IM users need.
    pub echo_max_connections: usize,
    /// `--rate-bytes`: bytes per second one connection may send (0: no limit).
    pub read_rate: u32,
    /// `--auth-failures`: failed logins per address per window before `429`; 0 is off.
    pub auth_failures: u32,
    /// `--auth-failure-window`.
    pub auth_failure_window_ms: u64,
}

/// Addresses the failed-login guard keeps at most (a few MiB at the worst).
const LOGIN_GUARD_TRACKED: usize = 65_536;

pub struct Server {
    hub: Hub,
    store: Option<Store>,
    completions: Receiver<Completion>,
    secret: Vec<u8>,
    token_policy: auth::Policy,
    dev_login: bool,
    metrics_elsewhere: bool,
    echo: bool,
    origins: Vec<String>,
    trusted_proxies: TrustedProxies,
    /// Authenticated at the upgrade, greeted once the `101` is out.
    admitted: HashMap<ConnId, (String, IpAddr)>,
    /// The client address of every IM connection (behind a trusted proxy, the one it
    /// forwarded), and how many each address holds.
    address_of: HashMap<ConnId, IpAddr>,
    per_address: HashMap<IpAddr, usize>,
    max_per_address: usize,
    max_per_user: usize,
    /// The largest frame `/ws` takes: the largest legal request, so a larger one is
    /// refused from its header and never parsed.
    ws_max_message: usize,
    echo_max_message: usize,
    echo_max_connections: usize,
    read_rate: u32,
    /// Failed logins per client address; consulted before every token check.
    login_guard: LoginGuard,
    auth_failure_window_ms: u64,
    /// Connections on `/echo`.
    echoing: HashSet<ConnId>,
    /// Wakes the reactor again when completions are left after a wake-up's share.
    waker: Waker,
    /// Bytes of frames queued since the count was last reset (per wake-up's completions).
    output_made: usize,
    started: Instant,
    actions: Vec<Action>,
    /// Counted here, on the reactor thread, from what passes through; `/metrics` renders
    /// them with the store's own figures.
    metrics: Metrics,
}

impl Server {
    /// Opens the store (creating the data folder) and builds the hub from its heads.
    pub fn open(config: ServeConfig, waker: Waker, now: u64) -> Result<Server, String> {
        let wake_store = waker.clone();
        let notify: store::Notify = std::sync::Arc::new(move || wake_store.wake());
        let ws_max_message = crate::im::protocol::max_request_len(config.hub.max_body);
        let (store, completions) = store::open(&config.store, notify)
            .map_err(|e| format!("opening the store in {}: {e}", config.store.dir.display()))?;
        Ok(Server {
            hub: Hub::new(config.hub, now),
            store: Some(store),
            completions,
            secret: config.secret,
            token_policy: config.token_policy,
            dev_login: config.dev_login,
            metrics_elsewhere: config.metrics_elsewhere,
            echo: config.echo,
            origins: config.origins,
            trusted_proxies: config.trusted_proxies,
            admitted: HashMap::new(),
            address_of: HashMap::new(),
            per_address: HashMap::new(),
            max_per_address: config.max_per_address,
            max_per_user: config.max_per_user,
            ws_max_message,
            echo_max_message: config.echo_max_message,
            echo_max_connections: config.echo_max_connections,
            read_rate: config.read_rate,
            login_guard: LoginGuard::new(
                config.auth_failures,
                config.auth_failure_window_ms,
                LOGIN_GUARD_TRACKED,
            ),
            auth_failure_window_ms: config.auth_failure_window_ms,
            echoing: HashSet::new(),
            waker,
            output_made: 0,
            started: Instant::now(),
            actions: Vec::new(),
            metrics: Metrics::new(),
        })
    }

    /// Carries out what the hub asked for. Store refusals go back to the hub, whose
    /// answers are carried out in turn.
    fn apply(&mut self, out: &mut Out<'_>) {
        let mut i = 0;
        while i < self.actions.len() {
            let action = std::mem::replace(
                &mut self.actions[i],
                Action::Close {
                    conn: 0,
                    code: 0,
                    reason: "",
                },
            );
            i += 1;
            match action {
                Action::Send {
                    conn,
                    text,
                    traffic,
                } => {
                    self.output_made += text.len();
                    if out.send(ConnId::from_u64(conn), OpCode::Text, &text) {
                        self.count(traffic);
                    }
                }
                Action::Close { conn, code, reason } => {
                    out.close(ConnId::from_u64(conn), code, reason)
                }
                Action::AwaitOutput { conn } => {
                    if out.await_output(ConnId::from_u64(conn)) {
                        let mut more = Vec::new();
                        self.hub.output_drained(conn, Self::now(out), &mut more);
                        self.actions.extend(more);
                    }
                }
                Action::Store(job) => {
                    let refused = match &self.store {
                        Some(store) => store.submit(job).err(),
                        None => Some(job),
                    };
                    if let Some(job) = refused {
                        let mut more = Vec::new();
                        self.hub.store_refused(job, Self::now(out), &mut more);
                        self.actions.extend(more);
                    }
                }
            }
        }
        self.actions.clear();
    }

    fn count(&mut self, traffic: Traffic) {
        let m = &mut self.metrics;
        m.messages_out.inc();
        match traffic {
            Traffic::Reply => {}
            Traffic::Synced => m.sync_replays.inc(),
            Traffic::Push => m.pushes.inc(),
            Traffic::Repush => m.repushes.inc(),
            Traffic::Event => m.events.inc(),
            Traffic::Error(code) => {
                m.errors.inc(code.as_str());
                if code == ErrorCode::RateLimited {
                    m.rate_limited.inc();
                }
            }
        }
    }

    fn render_metrics(&self, net: NetStats) -> String {
        let store = self.store.as_ref().map(Store::stats);
        let uptime = self.started.elapsed().as_secs_f64();
        let acks = self.hub.acks();
        // The hub counts acks itself: the only request that may get no reply at all.
        let mut metrics = self.metrics.clone();
        metrics.acks.add(acks);
        metrics.output_queued_bytes.set(net.queued_bytes as _);
        metrics.output_sheds.add(net.output_sheds);
        metrics.render(&mut |x| {
            x.gauge(
                "courier_uptime_seconds",
                "Seconds since the server started.",
                uptime,
            );
            if let Some(stats) = &store {
                x.store_stats(stats);
            }
        })
    }

    fn now(out: &Out<'_>) -> Now {
        Now {
            mono: out.now(),
            wall: clock::wall_ms(),
        }
    }

    fn log_login_summaries(&self, summaries: Vec<Summary>) {
        let window = self.auth_failure_window_ms / 1000;
        for s in summaries {
            match s.client {
                Some(client) => crate::log_warn!(
                    "auth: {} failed logins from {client} within {window}s, {} upgrades refused (429)",
                    s.failures,
                    s.refused
                ),
                None => crate::log_warn!(
                    "auth: {} failed logins within {window}s from addresses not tracked (table full)",
                    s.failures
                ),
            }
        }
    }

    /// Admits `user`'s IM upgrade, or answers `429` when they hold `--max-per-user`.
    fn authorize(
        &mut self,
        conn: ConnId,
        user: String,
        client: IpAddr,
        protocol: Option<&'static str>,
        response: &mut Vec<u8>,
    ) -> Admission {
        let held = self.hub.connections_held(&user)
            + self.admitted.values().filter(|(u, _)| *u == user).count();
        if self.max_per_user > 0 && held >= self.max_per_user {
            crate::log_warn!("refused {user} from {client}: already {held} connections");
            refuse_busy(response, "too many connections for this user\n");
            return Admission::Refuse;
        }
        self.admitted.insert(conn, (user, client));
        Admission::Accept {
            protocol,
            max_message: Some(self.ws_max_message),
            read_rate: self.read_rate,
        }
    }

    /// The user `request`'s token names, checked the same at every door (the upgrade, the
    /// page's token check): an address past its failed logins gets `429` with
    /// `Retry-After` and its token is not even read; a refused token gets `401` and counts
    /// as a failed login. `None` once that answer is written.
    fn login(
        &mut self,
        request: &Request<'_>,
        client: IpAddr,
        now: u64,
        response: &mut Vec<u8>,
    ) -> Option<String> {
        if let Err(retry) = self.login_guard.admit(address_key(client), now) {
            let retry = retry.to_string();
            handshake::write_response(
                response,
                429,
                "Too Many Requests",
                "text/plain; charset=utf-8",
                &[("Retry-After", &retry)],
                b"too many failed logins from this address\n",
            );
            return None;
        }
        match self.authenticate(request) {
            Ok(user) => Some(user),
            Err(e) => {
                // The first failure of an address in a window is logged; the rest are
                // counted into one summary line, so a token flood cannot flood the log.
                if self.login_guard.failed(address_key(client), now) {
                    crate::log_warn!("auth failed from {client}: {e}");
                }
                let body = format!("{e}\n");
                handshake::write_response(
                    response,
                    401,
                    "Unauthorized",
                    "text/plain; charset=utf-8",
                    &[
                        ("WWW-Authenticate", "Bearer"),
                        ("Cache-Control", "no-store"),
                    ],
                    body.as_bytes(),
                );
                None
            }
        }
    }

    fn authenticate(&self, request: &Request<'_>) -> Result<String, auth::AuthError> {
        let token = auth::token_from_request(
            request.query_param("token"),
            request.header("authorization"),
        )
        .ok_or(auth::AuthError::Missing)?;
        let now = clock::wall_ms() / 1000;
        let claims = auth::verify_with(token, &self.secret, now, &self.token_policy)?;
        Ok(claims.sub)
    }

    /// `GET /ws` without an upgrade: a browser's WebSocket cannot see the status of a
    /// refused upgrade, so the page asks here whether its token is taken. With a token,
    /// checked as the upgrade checks it (the same failed-login guard): `401` when refused;
    /// otherwise, and without a token, `426`.
    fn token_check(
        &mut self,
        request: &Request<'_>,
        peer: SocketAddr,
        net: NetStats,
        out: &mut Vec<u8>,
    ) {
        let has_token =
            request.query_param("token").is_some() || request.header("authorization").is_some();
        if has_token {
            let client = self
                .trusted_proxies
                .client(peer, request.headers_named("x-forwarded-for"));
            if self.login(request, client, net.now, out).is_none() {
                return;
            }
        }
        upgrade_required(
            out,
            "/ws is courier's WebSocket endpoint: connect with a WebSocket client to \
             ws://HOST/ws?token=JWT (docs/PROTOCOL.md). The chat page is at /.\n",
        );
    }

    fn healthz(&self, out: &mut Vec<u8>) {
        // Not writable while stopping (the store is gone) or while the disk refuses writes.
        let writable = self
            .store
            .as_ref()
            .is_some_and(|store| !store.stats().writes_failing);
        let body = format!(
            "{{\"status\":\"{}\",\"version\":\"{}\",\"uptime_ms\":{},\
             \"connections\":{},\"store_writable\":{writable}}}",
            if writable { "ok" } else { "unavailable" },
            env!("CARGO_PKG_VERSION"),
            self.started.elapsed().as_millis(),
            self.metrics.connections_open.get(),
        );
        if writable {
            respond_json(out, 200, "OK", &body);
        } else {
            respond_json(out, 503, "Service Unavailable", &body);
        }
    }

    fn metrics(&self, net: NetStats, out: &mut Vec<u8>) {
        let body = self.render_metrics(net);
        handshake::write_response(
            out,
            200,
            "OK",
            metrics::CONTENT_TYPE,
            &[("Cache-Control", "no-store")],
            body.as_bytes(),
        );
    }

    /// `GET /dev/token?user=NAME`: a token for anyone who asks, which is why dev login is
    /// refused with a configured secret and, unless `--dev-login-public on`, off loopback.
    fn dev_token(&self, request: &Request<'_>, peer: SocketAddr, out: &mut Vec<u8>) {
        let Some(user) = request
            .query_param("user")
            .filter(|u| auth::valid_user_id(u))
        else {
            respond_json(
                out,
                400,
                "Bad Request",
                "{\"error\":\"user must be 1 to 64 of [A-Za-z0-9_.-]\"}",
            );
            return;
        };
        // Valid for a day, or as long as --max-token-ttl lets any token be; with the
        // claims --token-audience and --token-issuer ask for, so it passes this server.
        let ttl = self
            .token_policy
            .max_ttl_secs
            .map_or(DEV_TOKEN_TTL_SECS, |max| max.min(DEV_TOKEN_TTL_SECS));
        let policy = &self.token_policy;
        let token = auth::issue_with(
            user,
            ttl,
            &self.secret,
            clock::wall_ms() / 1000,
            policy.audience.as_deref(),
            policy.issuer.as_deref(),
        );
        let client = self
            .trusted_proxies
            .client(peer, request.headers_named("x-forwarded-for"));
        crate::log_info!("dev login: a token for {user} went to {client}");
        respond_json(out, 200, "OK", &format!("{{\"token\":\"{token}\"}}"));
    }
}

/// How long a `/dev/token` token lasts (at most): a day of trying things out.
const DEV_TOKEN_TTL_SECS: u64 = 24 * 3600;

fn not_found(out: &mut Vec<u8>) {
    handshake::write_response(
        out,
        404,
        "Not Found",
        "text/plain; charset=utf-8",
        &[],
        b"not found\n",
    );
}

/// `429`: the client holds all the connections it may.
fn refuse_busy(response: &mut Vec<u8>, body: &str) {
    handshake::write_response(
        response,
        429,
        "Too Many Requests",
        "text/plain; charset=utf-8",
        &[("Retry-After", "10")],
        body.as_bytes(),
    );
}

fn respond_json(out: &mut Vec<u8>, status: u16, reason: &str, body: &str) {
    handshake::write_response(
        out,
        status,
        reason,
        "application/json",
        &[("Cache-Control", "no-store")],
        body.as_bytes(),
    );
}

/// `426` for a plain request to a WebSocket endpoint: someone who opens `/ws` in a browser
/// or with curl learns what it is, where a `404` would say it does not exist. RFC 9110
/// §15.5.22: a 426 "MUST send an Upgrade header field", and §7.8 flags it in Connection.
fn upgrade_required(out: &mut Vec<u8>, body: &str) {
    handshake::write_response(
        out,
        426,
        "Upgrade Required",
        "text/plain; charset=utf-8",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade, close"),
            ("Sec-WebSocket-Version", "13"),
            ("Cache-Control", "no-store"),
        ],
        body.as_bytes(),
    );
}

impl Service for Server {
    fn http(&mut self, request: &Request<'_>, peer: SocketAddr, net: NetStats, out: &mut Vec<u8>) {
        match request.path() {
            // Load balancers and proxies probe the port they forward to.
            "/healthz" => self.healthz(out),
            "/metrics" if !self.metrics_elsewhere => self.metrics(net, out),
            "/dev/token" if self.dev_login => self.dev_token(request, peer, out),
            "/ws" => self.token_check(request, peer, net, out),
            "/echo" if self.echo => upgrade_required(
                out,
                "/echo is courier's WebSocket echo endpoint: connect with a WebSocket \
                 client; every data message comes back.\n",
            ),
            _ if crate::web::serve(request, out) => {}
            _ => not_found(out),
        }
    }

    fn metrics_http(
        &mut self,
        request: &Request<'_>,
        _peer: SocketAddr,
        net: NetStats,
        out: &mut Vec<u8>,
    ) {
        match request.path() {
            "/healthz" => self.healthz(out),
            "/metrics" => self.metrics(net, out),
            _ => not_found(out),
        }
    }

    fn upgrade(
        &mut self,
        conn: ConnId,
        request: &Request<'_>,
        upgrade: &Upgrade<'_>,
        peer: SocketAddr,
        net: NetStats,
        response: &mut Vec<u8>,
    ) -> Admission {
        let echo = match request.path() {
            "/ws" => false,
            "/echo" if self.echo => true,
            _ => {
                handshake::write_response(
                    response,
                    404,
                    "Not Found",
                    "text/plain; charset=utf-8",
                    &[],
                    b"no WebSocket endpoint here\n",
                );
                return Admission::Refuse;
            }
        };
        // Every endpoint obeys the same admission rules: an open one would be a way round
        // them (an anonymous echo client pins memory and slots like any other).
        if !forwarded::origin_allowed(&self.origins, request.headers_named("origin")) {
            handshake::write_response(
                response,
                403,
                "Forbidden",
                "text/plain; charset=utf-8",
                &[],
                b"this Origin is not allowed\n",
            );
            return Admission::Refuse;
        }
        let client = self
            .trusted_proxies
            .client(peer, request.headers_named("x-forwarded-for"));
        let held = self
            .per_address
            .get(&address_key(client))
            .copied()
            .unwrap_or(0);
        if self.max_per_address > 0 && held >= self.max_per_address {
            crate::log_warn!("refused {client}: already {held} connections");
            refuse_busy(response, "too many connections from this address\n");
            return Admission::Refuse;
        }
        let admission = if echo {
            if self.echoing.len() >= self.echo_max_connections {
                refuse_busy(response, "too many echo connections\n");
                return Admission::Refuse;
            }
            self.echoing.insert(conn);
            Admission::Accept {
                protocol: None,
                max_message: Some(self.echo_max_message),
                read_rate: self.read_rate,
            }
        } else {
            let Some(user) = self.login(request, client, net.now, response) else {
                return Admission::Refuse;
            };
            let protocol = upgrade
                .protocols()
                .any(|p| p == SUBPROTOCOL)
                .then_some(SUBPROTOCOL);
            self.authorize(conn, user, client, protocol, response)
        };
        if matches!(admission, Admission::Accept { .. }) {
            self.address_of.insert(conn, client);
            *self.per_address.entry(address_key(client)).or_default() += 1;
        }
        admission
    }

    fn opened(&mut self, conn: ConnId, out: &mut Out<'_>) {
        self.metrics.connections_opened.inc();
        self.metrics.connections_open.inc();
        if let Some((user, client)) = self.admitted.remove(&conn) {
            crate::log_debug!("{user} connected from {client}");
            let now = Self::now(out);
            self.hub
                .connect(conn.to_u64(), &user, now, &mut self.actions);
            self.apply(out);
        }
    }

    fn message(&mut self, conn: ConnId, opcode: OpCode, payload: &[u8], out: &mut Out<'_>) {
        if self.echoing.contains(&conn) {
            out.send(conn, opcode, payload);
            return;
        }
        self.metrics.messages_in.inc();
        if opcode != OpCode::Text {
            out.close(
                conn,
                UNSUPPORTED_DATA,
                "binary frames are not part of the protocol",
            );
            return;
        }
        let now = Self::now(out);
        self.hub
            .message(conn.to_u64(), payload, now, &mut self.actions);
        self.apply(out);
    }

    fn closed(&mut self, conn: ConnId, code: u16, out: &mut Out<'_>) {
        self.metrics.connections_open.dec();
        self.metrics.connections_closed.inc(code);
        let client = self.address_of.remove(&conn);
        if let Some(client) = client {
            let key = address_key(client);
            if let Some(held) = self.per_address.get_mut(&key) {
                *held -= 1;
                if *held == 0 {
                    self.per_address.remove(&key);
                }
            }
        }
        if self.echoing.remove(&conn) {
            return;
        }
        self.admitted.remove(&conn);
        if let Some(client) = client {
            // The closes a server operator acts on are logged at info; the everyday ones
            // (a client leaving, an idle timeout) only at debug.
            match code {
                1000 | 1001 | 1005 | 1006 => {
                    crate::log_debug!("connection from {client} closed: {code}")
                }
                _ => crate::log_info!("connection from {client} closed: {code}"),
            }
        }
        self.hub.disconnect(conn.to_u64(), &mut self.actions);
        self.apply(out);
    }

    fn output_drained(&mut self, conn: ConnId, out: &mut Out<'_>) {
        let now = Self::now(out);
        self.hub
            .output_drained(conn.to_u64(), now, &mut self.actions);
        self.apply(out);
    }

    fn woken(&mut self, out: &mut Out<'_>) {
        let now = Self::now(out);
        self.output_made = 0;
        for _ in 0..COMPLETIONS_PER_WAKEUP {
            if self.output_made > OUTPUT_PER_WAKEUP {
                break;
            }
            let Ok(completion) = self.completions.try_recv() else {
                return;
            };
            if let Some(e) = failure(&completion) {
                crate::log_error!("store: {e}");
            }
            self.hub.completion(completion, now, &mut self.actions);
            self.apply(out);
        }
        if !self.completions.is_empty() {
            self.waker.wake();
        }
    }

    fn next_deadline(&self) -> Option<u64> {
        match (self.hub.next_deadline(), self.login_guard.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_time(&mut self, out: &mut Out<'_>) {
        let summaries = self.login_guard.summaries(out.now());
        self.log_login_summaries(summaries);
        let now = Self::now(out);
        self.hub.on_time(now, &mut self.actions);
        self.apply(out);
    }

    fn shutdown(&mut self, out: &mut Out<'_>) {
        // The windows still running would end after the process: say what they held now.
        let summaries = self.login_guard.finish();
        self.log_login_summaries(summaries);
        self.hub.shutdown(&mut self.actions);
        self.apply(out);
    }

    fn drained(&mut self) -> bool {
        !self.hub.has_pending()
    }
}

impl Drop for Server {
    /// The store's figures for the run, so a benchmark can read the group-commit batch
    /// sizes and commit times it caused (the quantiles are power-of-two bucket bounds).
    fn drop(&mut self) {
        if let Some(store) = &self.store {
            let stats = store.stats();
            let (sizes, commit) = (&stats.batch_sizes, &stats.commit_us);
            crate::log_info!(
                "store: {} jobs in {} batches (mean {:.1}; p50 <= {}, p99 <= {}, max <= {} jobs), \
                 commit p50 <= {} us, p99 <= {} us; {} checkpoint steps on the writer, each p50 <= {} us, \
                 p99 <= {} us",
                stats.jobs,
                stats.batches,
                stats.jobs as f64 / stats.batches.max(1) as f64,
                sizes.quantile(0.5),
                sizes.quantile(0.99),
                sizes.quantile(1.0),
                commit.quantile(0.5),
                commit.quantile(0.99),
                stats.checkpoint_finish_us.count(),
                stats.checkpoint_finish_us.quantile(0.5),
                stats.checkpoint_finish_us.quantile(0.99),
            );
        }
    }
}

/// What `--max-per-address` counts: an IPv4 address (also when it comes IPv4-mapped), or
/// an IPv6 /64, the block one subscriber is usually given and can rotate through freely.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !0u128 << 64).into()),
        },
    }
}

/// A store failure worth a log line: not a refusal the client caused (forbidden, not
/// found, invalid), which the client hears about in its `error`.
fn failure(completion: &Completion) -> Option<&crate::store::StoreError> {
    use crate::store::StoreError;
    let error = match completion {
        Completion::Sent { result, .. } | Completion::Recalled { result, .. } => {
            result.as_ref().err()
        }
        Completion::Page { result, .. } => result.as_ref().err(),
        Completion::Read { result, .. } => result.as_ref().err(),
        Completion::Group { result, .. } => result.as_ref().err(),
        Completion::Convs { result, .. } => result.as_ref().err(),
        Completion::History { result, .. } => result.as_ref().err(),
        Completion::Members { result, .. } => result.as_ref().err(),
        Completion::Block { result, .. } => result.as_ref().err(),
        Completion::BlockList { result, .. } => result.as_ref().err(),
        Completion::Reach { result, .. } => result.as_ref().err(),
    }?;
    match error {
        StoreError::Forbidden(_)
        | StoreError::NotFound(_)
        | StoreError::Invalid(_)
        | StoreError::OverBudget(_) => None,
        // The writer logs these once per run of them, not once per job (`writer.rs`).
        StoreError::Unavailable { .. } => None,
        other => Some(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_counted_by_its_v4_or_its_v6_64() {
        let key = |s: &str| address_key(s.parse().unwrap());
        assert_eq!(key("192.0.2.7"), key("::ffff:192.0.2.7"));
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("2001:db8:1:2:ffff::1"), key("2001:db8:1:2::"));
    }
}
