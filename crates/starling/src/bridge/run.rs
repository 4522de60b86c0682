//! The task of one bridge: the local connection (in memory, persistent session, No Local
//! subscriptions), the remote connection (reconnected with exponential backoff and jitter,
//! trying each address in turn; closed, and left closed, while an operator has the bridge
//! stopped), and the packets between them, which `flows.rs` decides.
//!
//! Packet ids are mirrored across the bridge, so the bridge's own SUBSCRIBE ids must not take
//! one a message may use on the same connection: towards the remote a SUBSCRIBE takes an id
//! no message of the local session is in flight under (a message the local broker then gives
//! that id waits for the SUBACK); towards the local broker it takes an id the local session
//! does not await a PUBREL for, and what comes from the remote before its SUBACK waits.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand_core::RngCore;
use starling_auth::StandardAuthenticator;
use starling_broker::config::QueueBounds;
use starling_broker::connection::{BRIDGE_PROPERTY, NODE_PROPERTY};
use starling_broker::session::Locked;
use starling_broker::{Broker, ListenerAccess, PeerInfo};
use starling_proto::{
    ConnAck, Connect, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode, SubAck,
    TopicFilter, TopicName,
};
use tokio::sync::watch;
use tracing::{info, warn};

use super::flows::{Flows, Send, free_id};
use super::topics::subscribe;
use super::{BridgeStats, Routes, switched};
use crate::cli::client::{Client, ClientError, Event};
use crate::cli::net;
use crate::cli::opts::{ConnectOpts, Endpoint, Scheme};
use crate::config::bridge::{BridgeConfig, BridgeProtocol};
use crate::connection::{Stop, StreamOptions};

/// QoS 1 and 2 messages the local broker hands the bridge at once (its Receive Maximum),
/// and the most the remote gets at once: what waits beyond stays in the local session.
const WINDOW: u16 = 64;
/// QoS 1 and 2 messages a 3.x remote gets at once unless `max_inflight` says otherwise (see
/// `BridgeConfig::max_inflight`).
const WINDOW_3X: u16 = 20;
/// Bytes buffered each way on the in-memory local connection; when full, the writer waits.
const PIPE: usize = 256 * 1024;
/// How long one connection attempt to the remote may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait before reopening the local connection after it ended (only at shutdown or after a
/// protocol error, which the broker logs).
const LOCAL_RETRY: Duration = Duration::from_secs(1);

/// Why serving stopped.
enum Exit {
    Stopped,
    LocalLost(ClientError),
}

/// Runs a bridge until the broker stops.
pub async fn run(cfg: BridgeConfig, broker: Arc<Broker>, stop: Arc<Stop>, stats: Arc<BridgeStats>) {
    let routes = Routes::new(&cfg.topics);
    let mut switch = stats.switch.watch();
    let mut b = Bridge {
        remote_id: cfg.remote_client_id(),
        name: Arc::from(cfg.name.as_str()),
        cfg,
        routes,
        stats,
        broker,
        attempt: 0,
        connected_before: false,
        attempt_now: false,
        clean_once: false,
        next_local_subscribe: 0,
    };
    loop {
        let local = tokio::select! {
            l = b.open_local(&stop) => l,
            () = stop.wait() => return,
        };
        let exit = match local {
            Ok(mut local) => {
                let exit = b.serve(&mut local, &stop, &mut switch).await;
                if let Exit::Stopped = exit {
                    let _ = local.client.disconnect(Properties::default()).await;
                    return;
                }
                exit
            }
            Err(e) => Exit::LocalLost(e),
        };
        if let Exit::LocalLost(e) = exit {
            warn!(bridge = %b.cfg.name, error = %e, "local side of the bridge lost; reopening");
        }
        // What the local broker handed over and the remote did not finish comes again.
        b.stats.pending.store(0, Ordering::Relaxed);
        tokio::select! {
            () = tokio::time::sleep(LOCAL_RETRY) => {}
            () = stop.wait() => return,
        }
    }
}

struct Bridge {
    cfg: BridgeConfig,
    name: Arc<str>,
    remote_id: String,
    routes: Routes,
    stats: Arc<BridgeStats>,
    broker: Arc<Broker>,
    attempt: u32,
    connected_before: bool,
    /// Connect without waiting for the backoff (an operator just started the bridge, or the
    /// remote is to resend what the bridge left unanswered).
    attempt_now: bool,
    /// End the remote session before the next connection (with a clean start of its own):
    /// the local session was new, so the local broker's packet ids start afresh, and a remote
    /// session that still holds ids of an earlier one would take new messages under them for
    /// resends and drop them.
    clean_once: bool,
    next_local_subscribe: u16,
}

/// The local connection and what waits on its SUBSCRIBE.
struct Local {
    client: Client,
    /// The id of the SUBSCRIBE awaiting its SUBACK.
    subscribing: Option<u16>,
    /// Events from the remote read before that SUBACK, handled after it in order (a PUBLISH
    /// from the remote could carry the SUBSCRIBE's id). At most `flows::IN_WAITING`: the
    /// remote is not read beyond.
    held: VecDeque<Event>,
}

impl Bridge {
    /// The local connection: in memory, served like any client's, as `$bridge/<name>` with a
    /// session that never expires.
    async fn open_local(&mut self, stop: &Arc<Stop>) -> Result<Local, ClientError> {
        let (ours, theirs) = tokio::io::duplex(PIPE);
        let access = Arc::new(ListenerAccess {
            name: Arc::from(format!("bridge {}", self.cfg.name)),
            authenticator: Arc::new(StandardAuthenticator {
                allow_anonymous: true,
                passwords: None,
                identity_as_username: false,
            }),
            authorizer: None,
            enhanced: Vec::new(),
            session_queue: Some(QueueBounds {
                messages: self.cfg.queue_max_messages,
                bytes: self.cfg.queue_max_bytes,
            }),
            internal: true,
        });
        let peer = SocketAddr::from(([127, 0, 0, 1], 0));
        let client = crate::connection::Client::new(
            Some(peer),
            Instant::now(),
            access,
            PeerInfo::default(),
            stop,
        );
        let options = StreamOptions { flush: true };
        tokio::spawn(crate::connection::serve(
            theirs,
            client,
            self.broker.clone(),
            options,
            (),
        ));
        let mut connect = Connect::new(ProtocolVersion::V5, super::local_client_id(&self.cfg.name));
        connect.clean_start = false;
        connect.keep_alive = 0;
        connect.properties.session_expiry_interval = Some(u32::MAX);
        connect.properties.receive_maximum = Some(WINDOW);
        let (mut client, ack) =
            Client::connect(Box::new(ours), connect, false, CONNECT_TIMEOUT).await?;
        if ack.reason != ReasonCode::Success {
            return Err(ClientError::Protocol(format!(
                "the local broker refused the bridge: {}",
                crate::cli::strings::reason(ack.reason)
            )));
        }
        if !ack.session_present && !self.cfg.clean_start {
            info!(bridge = %self.cfg.name,
                "the bridge's local session is new: the remote session starts clean once");
            self.clean_once = true;
        }
        client.set_manual_flows();
        let filters = self.routes.local_filters();
        let mut subscribing = None;
        if !filters.is_empty() {
            let awaiting: HashSet<u16> = self.local_session(|s| s.awaiting_release().collect());
            let id = free_id(&mut self.next_local_subscribe, |id| awaiting.contains(&id));
            client
                .send(&Packet::Subscribe(subscribe(id, filters, true)))
                .await?;
            subscribing = Some(id);
        }
        Ok(Local {
            client,
            subscribing,
            held: VecDeque::new(),
        })
    }

    /// Reads the bridge's local session (an empty answer if it is gone).
    fn local_session<T: Default>(&self, read: impl FnOnce(&Locked<'_>) -> T) -> T {
        self.broker
            .session(&super::local_client_id(&self.cfg.name))
            .map(|s| read(&s.lock()))
            .unwrap_or_default()
    }

    /// Serves the local connection, connecting and reconnecting the remote while the switch
    /// is on, until the local side ends or the broker stops.
    async fn serve(
        &mut self,
        local: &mut Local,
        stop: &Stop,
        switch: &mut watch::Receiver<bool>,
    ) -> Exit {
        let local_max = usize::from(local.client.receive_maximum);
        let mut flows = Flows::new(
            self.name.clone(),
            self.routes.clone(),
            self.stats.clone(),
            local_max,
        )
        .with_own_node(self.broker.node_id());
        loop {
            let (mut remote, ack) = loop {
                if let Err(exit) = self.wait_to_connect(local, &mut flows, stop, switch).await {
                    return exit;
                }
                let attempt = tokio::select! {
                    () = stop.wait() => return Exit::Stopped,
                    () = switched(switch, false) => continue,
                    r = self.connect_remote() => r,
                };
                match attempt {
                    Ok(r) => break r,
                    Err(e) => {
                        self.attempt = self.attempt.saturating_add(1);
                        warn!(bridge = %self.cfg.name, error = %e, "cannot connect the bridge");
                    }
                }
            };
            self.attempt = 0;
            self.clean_once = false;
            if self.connected_before {
                BridgeStats::add(&self.stats.reconnects, 1);
            }
            self.connected_before = true;
            let lost = match self
                .start_session(local, &mut remote, &mut flows, &ack)
                .await
            {
                Ok(()) => {
                    self.stats.connected.store(true, Ordering::Relaxed);
                    match self.report_state(local, true).await {
                        Ok(()) => {
                            self.session(local, &mut remote, &mut flows, stop, switch)
                                .await
                        }
                        Err(e) => Lost::Local(e),
                    }
                }
                Err(e) => e.into(),
            };
            self.stats.connected.store(false, Ordering::Relaxed);
            flows.remote_lost();
            // The remote resends what it did not get answered; those were read on its watch.
            local.held.clear();
            if !matches!(lost, Lost::Local(_) | Lost::Resend) {
                let _ = self.report_state(local, false).await;
            }
            match lost {
                Lost::Stopped => {
                    let _ = remote.disconnect(Properties::default()).await;
                    return Exit::Stopped;
                }
                Lost::Switched => {
                    info!(bridge = %self.cfg.name, "bridge stopped: disconnected from the remote");
                    let _ = remote.disconnect(Properties::default()).await;
                }
                Lost::Resend => {
                    info!(bridge = %self.cfg.name,
                        "the remote sent more than the bridge takes at once; reconnecting for the rest");
                    let _ = remote.disconnect(Properties::default()).await;
                    self.attempt_now = true;
                }
                Lost::Local(e) => return Exit::LocalLost(e),
                Lost::Remote(e) => {
                    warn!(bridge = %self.cfg.name, error = %e, "bridge disconnected from the remote");
                }
            }
        }
    }

    /// Waits until the switch is on and the backoff has passed, serving the local side
    /// meanwhile (what it hands over waits for the remote).
    async fn wait_to_connect(
        &mut self,
        local: &mut Local,
        flows: &mut Flows,
        stop: &Stop,
        switch: &mut watch::Receiver<bool>,
    ) -> Result<(), Exit> {
        loop {
            let on = *switch.borrow_and_update();
            let wake = if on {
                let delay = if std::mem::take(&mut self.attempt_now) {
                    Duration::ZERO
                } else {
                    self.backoff()
                };
                Some(tokio::time::Instant::now() + delay)
            } else {
                None
            };
            loop {
                let reads = flows.reads_local();
                tokio::select! {
                    () = stop.wait() => return Err(Exit::Stopped),
                    () = switched(switch, !on) => {
                        if !on {
                            info!(bridge = %self.cfg.name, "bridge started");
                            self.attempt = 0;
                            self.attempt_now = true;
                        }
                        break;
                    }
                    () = sleep_until(wake) => return Ok(()),
                    ev = local.client.next_event(None), if reads => {
                        let handled = match ev {
                            Ok(ev) => self.on_local(ev, local, flows, None).await,
                            Err(e) => Err(Side::Local(e)),
                        };
                        if let Err(Side::Local(e) | Side::Remote(e)) = handled {
                            return Err(Exit::LocalLost(e));
                        }
                    }
                }
            }
        }
    }

    /// Subscribes at the remote (under an id no message of the local session is in flight
    /// under) and hands the connection to `flows`, which resends what the remote has not
    /// answered.
    async fn start_session(
        &mut self,
        local: &mut Local,
        remote: &mut Client,
        flows: &mut Flows,
        ack: &ConnAck,
    ) -> Result<(), Side> {
        let filters = self.routes.remote_filters();
        let mut subscribing = None;
        if !filters.is_empty() {
            let inflight: HashSet<u16> =
                self.local_session(|s| s.inflight().map(|f| f.packet_id).collect());
            let id = flows.remote_subscribe_id(|id| inflight.contains(&id));
            let v5 = remote.version == ProtocolVersion::V5;
            let sub = subscribe(id, filters, v5);
            remote
                .send(&Packet::Subscribe(sub))
                .await
                .map_err(Side::Remote)?;
            subscribing = Some(id);
        }
        let awaiting: Vec<u16> = if ack.session_present {
            Vec::new()
        } else {
            self.local_session(|s| s.awaiting_release().collect())
        };
        let window = match (remote.version, self.cfg.max_inflight) {
            (ProtocolVersion::V5, configured) => {
                (remote.receive_maximum).min(configured.unwrap_or(WINDOW))
            }
            // 3.x cannot say how much it takes.
            (_, configured) => configured.unwrap_or(WINDOW_3X),
        };
        let window = usize::from(window.min(WINDOW));
        // A Starling remote names itself in CONNACK when asked (the loop guard).
        let node = (ack.properties.user_properties)
            .iter()
            .find(|(k, _)| k == NODE_PROPERTY)
            .map(|(_, v)| v.clone());
        flows.set_remote_node(node);
        flows.remote_connected(window, ack.session_present, subscribing, awaiting);
        execute(flows, &mut local.client, Some(remote)).await
    }

    /// Publishes, retained, `$SYS/broker/bridge/<name>/state`: "1" while connected to the
    /// remote, "0" otherwise (mosquitto's values for its bridges' state).
    async fn report_state(&self, local: &mut Local, connected: bool) -> Result<(), ClientError> {
        let topic = format!("$SYS/broker/bridge/{}/state", self.cfg.name);
        let Ok(topic) = TopicName::try_from_str(&topic) else {
            return Ok(());
        };
        let payload = Bytes::from_static(if connected { b"1" } else { b"0" });
        let publish = Publish::new(topic, QoS::AtMostOnce, 0, payload);
        local
            .client
            .send(&Packet::Publish(Publish {
                retain: true,
                ..publish
            }))
            .await
    }

    /// The delay before the next connection attempt: none for the first, then doubling from
    /// `reconnect_min_secs` to `reconnect_max_secs`, each drawn between half and all of it.
    fn backoff(&self) -> Duration {
        if self.attempt == 0 && !self.connected_before {
            return Duration::ZERO;
        }
        let min = self.cfg.reconnect_min_secs.max(1);
        let max = self.cfg.reconnect_max_secs.max(min);
        let exp = min.saturating_mul(1u64 << self.attempt.min(20)).min(max);
        let ms = exp.saturating_mul(1000);
        let jitter = rand_core::OsRng.next_u64() % (ms / 2 + 1);
        Duration::from_millis(ms / 2 + jitter)
    }

    async fn connect_remote(&self) -> Result<(Client, ConnAck), String> {
        let mut last = String::from("no address");
        for address in &self.cfg.address {
            match tokio::time::timeout(CONNECT_TIMEOUT, self.connect_to(address)).await {
                Ok(Ok(c)) => {
                    info!(bridge = %self.cfg.name, %address, session_present = c.1.session_present,
                        "bridge connected");
                    return Ok(c);
                }
                Ok(Err(e)) => last = format!("{address}: {e}"),
                Err(_) => {
                    last = format!(
                        "{address}: no answer within {} s",
                        CONNECT_TIMEOUT.as_secs()
                    )
                }
            }
        }
        Err(last)
    }

    async fn connect_to(&self, address: &str) -> Result<(Client, ConnAck), String> {
        let (host, port) = address
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']).to_owned(), p.parse().ok()?)))
            .ok_or_else(|| format!("{address:?} is not host:port"))?;
        let password = match (&self.cfg.password, &self.cfg.password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| format!("cannot read {}: {e}", f.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let ep = Endpoint {
            scheme: if self.cfg.tls {
                Scheme::Mqtts
            } else {
                Scheme::Mqtt
            },
            host,
            port,
            path: String::new(),
            unix: None,
            username: self.cfg.username.clone(),
            password,
            url_topic: None,
            tls_name: self.cfg.server_name.clone(),
        };
        let version = match self.cfg.protocol {
            BridgeProtocol::Mqttv5 => ProtocolVersion::V5,
            BridgeProtocol::Mqttv311 => ProtocolVersion::V311,
            BridgeProtocol::Mqttv31 => ProtocolVersion::V31,
        };
        let mut connect = Connect::new(version, self.remote_id.clone());
        connect.clean_start = self.cfg.clean_start;
        connect.keep_alive = self.cfg.keepalive_secs;
        connect.username = ep.username.clone();
        connect.password = ep.password.clone().map(Bytes::from);
        if version == ProtocolVersion::V5 {
            if !self.cfg.clean_start {
                connect.properties.session_expiry_interval = Some(u32::MAX);
            }
            connect.properties.receive_maximum = Some(WINDOW);
            // Asks a Starling remote for its name, and tells it this one's (loop guard).
            let own = self.broker.node_id();
            if !own.is_empty() {
                (connect.properties.user_properties)
                    .push((BRIDGE_PROPERTY.to_owned(), own.to_owned()));
            }
        }
        if self.clean_once && !self.cfg.clean_start {
            // The old session is ended by a connection of its own, and the bridge's persistent
            // one begins with the next, without clean start: 3.x has no expiry to keep a clean
            // session past its connection, and mosquitto stores (across its restarts) only
            // sessions begun without clean start, whatever their expiry.
            let mut wipe = connect.clone();
            wipe.clean_start = true;
            wipe.properties.session_expiry_interval = None;
            let (mut c, _) = self.open_remote(&ep, wipe).await?;
            c.disconnect(Properties::default())
                .await
                .map_err(|e| e.to_string())?;
        }
        let (mut remote, ack) = self.open_remote(&ep, connect).await?;
        remote.set_manual_flows();
        Ok((remote, ack))
    }

    /// One connection to the remote, accepted.
    async fn open_remote(
        &self,
        ep: &Endpoint,
        connect: Connect,
    ) -> Result<(Client, ConnAck), String> {
        let version = connect.protocol;
        let stream = net::open(ep, &self.tls_opts())
            .await
            .map_err(|e| e.to_string())?;
        let (remote, ack) = Client::connect_as(
            stream,
            connect,
            false,
            CONNECT_TIMEOUT,
            self.cfg.try_private,
        )
        .await
        .map_err(|e| e.to_string())?;
        if ack.reason != ReasonCode::Success {
            return Err(crate::cli::strings::connack_refusal(version, ack.reason).0);
        }
        Ok((remote, ack))
    }

    /// The TLS settings of the remote connection, in the client commands' terms.
    fn tls_opts(&self) -> ConnectOpts {
        ConnectOpts {
            host: String::new(),
            port: None,
            unix: None,
            bind_address: None,
            url: None,
            username: None,
            password: None,
            id: None,
            id_prefix: None,
            keepalive: self.cfg.keepalive_secs,
            version: None,
            persistent: false,
            session_expiry: None,
            properties: Vec::new(),
            debug: false,
            quiet: true,
            nodelay: true,
            will_topic: None,
            will_payload: None,
            will_qos: 0,
            will_retain: false,
            cafile: self.cfg.ca_file.clone(),
            capath: None,
            cert: self.cfg.cert_file.clone(),
            key: self.cfg.key_file.clone(),
            insecure: self.cfg.insecure,
            quic: false,
            tls_use_os_certs: false,
            tls_version: None,
            help: None,
        }
    }

    /// One remote connection: messages both ways until either side ends, the bridge is
    /// stopped or the broker stops.
    async fn session(
        &mut self,
        local: &mut Local,
        remote: &mut Client,
        flows: &mut Flows,
        stop: &Stop,
        switch: &mut watch::Receiver<bool>,
    ) -> Lost {
        loop {
            let reads_remote = flows.reads_remote(local.held.len());
            let reads_local = flows.reads_local();
            let handled = tokio::select! {
                () = stop.wait() => return Lost::Stopped,
                () = switched(switch, false) => return Lost::Switched,
                ev = local.client.next_event(None), if reads_local => match ev {
                    Ok(ev) => self.on_local(ev, local, flows, Some(&mut *remote)).await,
                    Err(e) => Err(Side::Local(e)),
                },
                ev = remote.next_event(None), if reads_remote => match ev {
                    Ok(ev) if local.subscribing.is_some() => {
                        local.held.push_back(ev);
                        Ok(())
                    }
                    Ok(ev) => self.on_remote(ev, local, flows, remote).await,
                    Err(e) => Err(Side::Remote(e)),
                },
            };
            if let Err(e) = handled {
                return e.into();
            }
            if flows.wants_resend() {
                return Lost::Resend;
            }
        }
    }

    /// An event of the local connection.
    async fn on_local(
        &mut self,
        ev: Event,
        local: &mut Local,
        flows: &mut Flows,
        mut remote: Option<&mut Client>,
    ) -> Result<(), Side> {
        match ev {
            Event::Message(p) => flows.local_publish(p),
            Event::Acked(id, reason) => flows.local_acked(id, reason),
            Event::Received(id, reason) => flows.local_received(id, reason),
            Event::Released(id) => flows.local_released(id),
            Event::Packet(Packet::SubAck(ack)) if local.subscribing == Some(ack.packet_id) => {
                local.subscribing = None;
                self.log_refusals("local", &ack, &self.routes.local_filters());
                // What the remote sent meanwhile, in order.
                while let Some(ev) = local.held.pop_front() {
                    if let Some(remote) = remote.as_deref_mut() {
                        self.on_remote(ev, local, flows, remote).await?;
                    }
                }
            }
            Event::Packet(Packet::Disconnect(d)) => {
                return Err(Side::Local(ClientError::Protocol(format!(
                    "the local broker disconnected the bridge: {}",
                    crate::cli::strings::reason(d.reason)
                ))));
            }
            Event::Packet(_) | Event::Timeout => {}
        }
        execute(flows, &mut local.client, remote).await
    }

    /// An event of the remote connection.
    async fn on_remote(
        &mut self,
        ev: Event,
        local: &mut Local,
        flows: &mut Flows,
        remote: &mut Client,
    ) -> Result<(), Side> {
        match ev {
            Event::Message(p) => flows.remote_publish(p),
            Event::Acked(id, reason) => flows.remote_acked(id, reason),
            Event::Received(id, reason) => flows.remote_received(id, reason),
            Event::Released(id) => flows.remote_released(id),
            Event::Packet(Packet::SubAck(ack)) => {
                if flows.remote_subscribed(ack.packet_id) {
                    self.log_refusals("remote", &ack, &self.routes.remote_filters());
                }
            }
            Event::Packet(Packet::Disconnect(d)) => {
                return Err(Side::Remote(ClientError::Protocol(format!(
                    "disconnected by the remote: {}",
                    crate::cli::strings::reason(d.reason)
                ))));
            }
            Event::Packet(_) | Event::Timeout => {}
        }
        execute(flows, &mut local.client, Some(remote)).await
    }

    /// Logs each filter a SUBACK refused: messages on it will not cross the bridge.
    fn log_refusals(&self, side: &str, ack: &SubAck, filters: &[(TopicFilter, QoS)]) {
        for (i, reason) in ack.reasons.iter().enumerate() {
            if reason.as_u8() >= 0x80 {
                let filter = filters.get(i).map_or("?", |(f, _)| f.as_str());
                warn!(bridge = %self.cfg.name, side, filter,
                    reason = %crate::cli::strings::reason(*reason),
                    "a subscription of the bridge was refused");
            }
        }
    }
}

/// Sends what `flows` decided, in order, each run of packets for one side in one write.
async fn execute(
    flows: &mut Flows,
    local: &mut Client,
    mut remote: Option<&mut Client>,
) -> Result<(), Side> {
    let sends = flows.take_sends();
    let mut run: Vec<Packet> = Vec::new();
    let mut run_is_local = true;
    for s in sends {
        let (is_local, p) = match s {
            Send::Local(p) => (true, p),
            Send::Remote(p) => (false, p),
        };
        if is_local != run_is_local && !run.is_empty() {
            write(&mut run, run_is_local, local, remote.as_deref_mut()).await?;
        }
        run_is_local = is_local;
        run.push(p);
    }
    write(&mut run, run_is_local, local, remote).await
}

async fn write(
    run: &mut Vec<Packet>,
    to_local: bool,
    local: &mut Client,
    remote: Option<&mut Client>,
) -> Result<(), Side> {
    if run.is_empty() {
        return Ok(());
    }
    let r = if to_local {
        local.send_all(run).await.map_err(Side::Local)
    } else if let Some(remote) = remote {
        remote.send_all(run).await.map_err(Side::Remote)
    } else {
        // `Flows` sends nothing to a remote it knows is away.
        Ok(())
    };
    run.clear();
    r
}

/// Sleeps until `at`, or forever without it.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Why a remote connection ended.
enum Lost {
    Stopped,
    /// An operator stopped the bridge.
    Switched,
    /// The remote sent messages the bridge left unanswered (`Flows::wants_resend`): a new
    /// connection makes it resend them.
    Resend,
    Local(ClientError),
    Remote(ClientError),
}

/// Which side failed while handling an event.
enum Side {
    Local(ClientError),
    Remote(ClientError),
}

impl From<Side> for Lost {
    fn from(s: Side) -> Self {
        match s {
            Side::Local(e) => Lost::Local(e),
            Side::Remote(e) => Lost::Remote(e),
        }
    }
}
