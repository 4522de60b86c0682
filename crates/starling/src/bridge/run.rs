//! The task of one bridge: the local connection (in memory, persistent session, No Local
//! subscriptions), the remote connection (reconnected with exponential backoff and jitter,
//! trying each address in turn), and the messages between them, each acknowledged on one side
//! only once the other side has acknowledged it.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand_core::RngCore;
use starling_auth::StandardAuthenticator;
use starling_broker::config::QueueBounds;
use starling_broker::{Broker, ListenerAccess, PeerInfo};
use starling_proto::{
    Connect, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode, RetainHandling,
    Subscribe, SubscriptionOptions, TopicFilter, TopicName,
};
use tracing::{info, warn};

use super::{BridgeStats, Routes};
use crate::cli::client::{Client, ClientError, Event};
use crate::cli::net;
use crate::cli::opts::{ConnectOpts, Endpoint, Scheme};
use crate::config::bridge::{BridgeConfig, BridgeProtocol};
use crate::connection::{Stop, StreamOptions};

/// QoS 1 and 2 messages the local broker hands the bridge at once (its Receive Maximum),
/// and the most the remote gets at once: what waits beyond stays in the local session.
const WINDOW: u16 = 64;
/// Bytes buffered each way on the in-memory local connection; when full, the writer waits.
const PIPE: usize = 256 * 1024;
/// How long one connection attempt to the remote may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait before reopening the local connection after it ended (only at shutdown or after a
/// protocol error, which the broker logs).
const LOCAL_RETRY: Duration = Duration::from_secs(1);

/// A local message on its way out.
#[derive(Debug)]
struct Out {
    local_id: u16,
    local_qos: QoS,
    publish: Publish,
    /// The packet id at the remote, once sent on the current connection.
    remote_id: Option<u16>,
}

/// Why serving stopped.
enum Exit {
    Stopped,
    LocalLost(ClientError),
}

/// Runs a bridge until the broker stops.
pub async fn run(cfg: BridgeConfig, broker: Arc<Broker>, stop: Arc<Stop>, stats: Arc<BridgeStats>) {
    let routes = Routes::new(&cfg.topics);
    let mut b = Bridge {
        remote_id: cfg.remote_client_id(),
        cfg,
        routes,
        stats,
        out: VecDeque::new(),
        incoming: HashMap::new(),
        attempt: 0,
        connected_before: false,
    };
    loop {
        let local = tokio::select! {
            l = b.open_local(&broker, &stop) => l,
            () = stop.wait() => return,
        };
        let exit = match local {
            Ok(mut local) => {
                let exit = b.serve(&mut local, &stop).await;
                if let Exit::Stopped = exit {
                    let _ = local.disconnect(Properties::default()).await;
                    return;
                }
                exit
            }
            Err(e) => Exit::LocalLost(e),
        };
        if let Exit::LocalLost(e) = exit {
            warn!(bridge = %b.cfg.name, error = %e, "local side of the bridge lost; reopening");
        }
        // What the local broker handed over and the remote did not acknowledge comes again.
        b.out.clear();
        b.stats.pending.store(0, Ordering::Relaxed);
        tokio::select! {
            () = tokio::time::sleep(LOCAL_RETRY) => {}
            () = stop.wait() => return,
        }
    }
}

struct Bridge {
    cfg: BridgeConfig,
    remote_id: String,
    routes: Routes,
    stats: Arc<BridgeStats>,
    /// Delivered by the local broker, not yet acknowledged by the remote; at most `WINDOW`.
    out: VecDeque<Out>,
    /// Messages from the remote published locally: local packet id -> (remote id, QoS).
    incoming: HashMap<u16, (u16, QoS)>,
    attempt: u32,
    connected_before: bool,
}

impl Bridge {
    /// The local connection: in memory, served like any client's, as `$bridge/<name>` with a
    /// session that never expires.
    async fn open_local(
        &self,
        broker: &Arc<Broker>,
        stop: &Arc<Stop>,
    ) -> Result<Client, ClientError> {
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
        let client =
            crate::connection::Client::new(peer, Instant::now(), access, PeerInfo::default());
        let (rd, wr) = tokio::io::split(theirs);
        let options = StreamOptions {
            flush: true,
            slow_connect: false,
        };
        tokio::spawn(crate::connection::serve(
            rd,
            wr,
            client,
            broker.clone(),
            options,
            stop.clone(),
            (),
        ));
        let mut connect = Connect::new(ProtocolVersion::V5, super::local_client_id(&self.cfg.name));
        connect.clean_start = false;
        connect.keep_alive = 0;
        connect.properties.session_expiry_interval = Some(u32::MAX);
        connect.properties.receive_maximum = Some(WINDOW);
        let (mut local, ack) =
            Client::connect(Box::new(ours), connect, false, CONNECT_TIMEOUT).await?;
        if ack.reason != ReasonCode::Success {
            return Err(ClientError::Protocol(format!(
                "the local broker refused the bridge: {}",
                crate::cli::strings::reason(ack.reason)
            )));
        }
        local.set_manual_ack();
        let filters = self.routes.local_filters();
        if !filters.is_empty() {
            let id = local.next_packet_id();
            local
                .send(&Packet::Subscribe(subscribe(id, filters, true)))
                .await?;
        }
        Ok(local)
    }

    /// Serves the local connection, connecting and reconnecting the remote, until the local
    /// side ends or the broker stops.
    async fn serve(&mut self, local: &mut Client, stop: &Stop) -> Exit {
        loop {
            // Connect, servicing the local side meanwhile.
            let remote = loop {
                let delay = self.backoff();
                let wake = tokio::time::Instant::now() + delay;
                loop {
                    tokio::select! {
                        () = stop.wait() => return Exit::Stopped,
                        ev = local.next_event(Some(wake)) => match ev {
                            Ok(Event::Timeout) => break,
                            Ok(ev) => {
                                if let Err(Side::Local(e) | Side::Remote(e)) =
                                    self.on_local(ev, local, None).await
                                {
                                    return Exit::LocalLost(e);
                                }
                            }
                            Err(e) => return Exit::LocalLost(e),
                        },
                    }
                }
                let attempt = tokio::select! {
                    () = stop.wait() => return Exit::Stopped,
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
            let mut remote = remote;
            self.attempt = 0;
            if self.connected_before {
                BridgeStats::add(&self.stats.reconnects, 1);
            }
            self.connected_before = true;
            self.stats.connected.store(true, Ordering::Relaxed);
            if let Err(e) = self.report_state(local, true).await {
                return Exit::LocalLost(e);
            }
            let lost = self.session(local, &mut remote, stop).await;
            self.stats.connected.store(false, Ordering::Relaxed);
            if !matches!(lost, Lost::Local(_)) {
                let _ = self.report_state(local, false).await;
            }
            // Sent again on the next connection; the remote resends what it did not get
            // acknowledged (its session is persistent unless clean_start).
            for o in &mut self.out {
                o.remote_id = None;
            }
            self.incoming.clear();
            match lost {
                Lost::Stopped => {
                    let _ = remote.disconnect(Properties::default()).await;
                    return Exit::Stopped;
                }
                Lost::Local(e) => return Exit::LocalLost(e),
                Lost::Remote(e) => {
                    warn!(bridge = %self.cfg.name, error = %e, "bridge disconnected from the remote");
                }
            }
        }
    }

    /// Publishes, retained, `$SYS/broker/bridge/<name>/state`: "1" while connected to the
    /// remote, "0" otherwise (mosquitto's values for its bridges' state).
    async fn report_state(&self, local: &mut Client, connected: bool) -> Result<(), ClientError> {
        let topic = format!("$SYS/broker/bridge/{}/state", self.cfg.name);
        let Ok(topic) = TopicName::try_from_str(&topic) else {
            return Ok(());
        };
        let payload = Bytes::from_static(if connected { b"1" } else { b"0" });
        let publish = Publish::new(topic, QoS::AtMostOnce, 0, payload);
        local
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

    async fn connect_remote(&self) -> Result<Client, String> {
        let mut last = String::from("no address");
        for address in &self.cfg.address {
            match tokio::time::timeout(CONNECT_TIMEOUT, self.connect_to(address)).await {
                Ok(Ok(c)) => {
                    info!(bridge = %self.cfg.name, %address, "bridge connected");
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

    async fn connect_to(&self, address: &str) -> Result<Client, String> {
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
        let opts = self.tls_opts();
        let stream = net::open(&ep, &opts).await.map_err(|e| e.to_string())?;
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
        }
        let (mut remote, ack) = Client::connect_as(
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
        remote.set_manual_ack();
        let filters = self.routes.remote_filters();
        if !filters.is_empty() {
            let id = remote.next_packet_id();
            let sub = subscribe(id, filters, version == ProtocolVersion::V5);
            remote
                .send(&Packet::Subscribe(sub))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(remote)
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
            tls_use_os_certs: false,
            tls_version: None,
            help: None,
        }
    }

    /// One remote connection: messages both ways until either side ends or the broker stops.
    async fn session(&mut self, local: &mut Client, remote: &mut Client, stop: &Stop) -> Lost {
        if let Err(e) = self.send_out(local, remote).await {
            return e.into();
        }
        // Messages from the remote awaiting the local broker's acknowledgement: at most its
        // Receive Maximum; at that bound the remote is not read until acknowledgements come.
        let most_incoming = usize::from(local.receive_maximum);
        loop {
            let room = self.incoming.len() < most_incoming;
            let handled = tokio::select! {
                () = stop.wait() => return Lost::Stopped,
                ev = local.next_event(None) => match ev {
                    Ok(ev) => self.on_local(ev, local, Some(&mut *remote)).await,
                    Err(e) => Err(Side::Local(e)),
                },
                ev = remote.next_event(None), if room => match ev {
                    Ok(ev) => self.on_remote(ev, local, remote).await,
                    Err(e) => Err(Side::Remote(e)),
                },
            };
            if let Err(e) = handled {
                return e.into();
            }
        }
    }

    /// An event of the local connection.
    async fn on_local(
        &mut self,
        ev: Event,
        local: &mut Client,
        remote: Option<&mut Client>,
    ) -> Result<(), Side> {
        match ev {
            Event::Message(p) => {
                let Some((topic, qos)) = self.routes.outbound(&p.topic, p.qos) else {
                    // A subscription left from an older configuration.
                    BridgeStats::add(&self.stats.dropped, 1);
                    return local.ack(p.packet_id, p.qos).await.map_err(Side::Local);
                };
                let publish = Publish {
                    dup: false,
                    qos,
                    retain: p.retain,
                    topic,
                    packet_id: 0,
                    properties: forwarded(&p.properties),
                    payload: p.payload,
                };
                self.out.push_back(Out {
                    local_id: p.packet_id,
                    local_qos: p.qos,
                    publish,
                    remote_id: None,
                });
                self.stats
                    .pending
                    .store(self.out.len() as u64, Ordering::Relaxed);
                if let Some(remote) = remote {
                    self.send_out(local, remote).await?;
                }
            }
            Event::Acked(local_id, _) => {
                // A message from the remote is stored here: acknowledge it there.
                if let (Some((remote_id, qos)), Some(remote)) =
                    (self.incoming.remove(&local_id), remote)
                {
                    remote.ack(remote_id, qos).await.map_err(Side::Remote)?;
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
        Ok(())
    }

    /// An event of the remote connection.
    async fn on_remote(
        &mut self,
        ev: Event,
        local: &mut Client,
        remote: &mut Client,
    ) -> Result<(), Side> {
        match ev {
            Event::Message(p) => {
                let Some((topic, qos)) = self.routes.inbound(&p.topic, p.qos) else {
                    BridgeStats::add(&self.stats.dropped, 1);
                    return remote.ack(p.packet_id, p.qos).await.map_err(Side::Remote);
                };
                BridgeStats::add(&self.stats.in_messages, 1);
                BridgeStats::add(&self.stats.in_bytes, p.payload.len() as u64);
                let local_id = if qos == QoS::AtMostOnce {
                    0
                } else {
                    local.next_packet_id()
                };
                let publish = Publish {
                    dup: false,
                    qos,
                    retain: p.retain,
                    topic,
                    packet_id: local_id,
                    properties: forwarded(&p.properties),
                    payload: p.payload,
                };
                local
                    .send(&Packet::Publish(publish))
                    .await
                    .map_err(Side::Local)?;
                if qos == QoS::AtMostOnce {
                    remote.ack(p.packet_id, p.qos).await.map_err(Side::Remote)?;
                } else {
                    self.incoming.insert(local_id, (p.packet_id, p.qos));
                }
            }
            Event::Acked(remote_id, reason) => {
                let Some(i) = self.out.iter().position(|o| o.remote_id == Some(remote_id)) else {
                    return Ok(());
                };
                if let Some(o) = self.out.remove(i) {
                    if reason.as_u8() >= 0x80 {
                        BridgeStats::add(&self.stats.dropped, 1);
                        warn!(bridge = %self.cfg.name, topic = %o.publish.topic.as_str(),
                            reason = %crate::cli::strings::reason(reason),
                            "the remote refused a message");
                    } else {
                        self.count_out(&o);
                    }
                    local
                        .ack(o.local_id, o.local_qos)
                        .await
                        .map_err(Side::Local)?;
                }
                self.send_out(local, remote).await?;
            }
            Event::Packet(Packet::Disconnect(d)) => {
                return Err(Side::Remote(ClientError::Protocol(format!(
                    "disconnected by the remote: {}",
                    crate::cli::strings::reason(d.reason)
                ))));
            }
            Event::Packet(_) | Event::Timeout => {}
        }
        Ok(())
    }

    /// Sends what is waiting, as far as the remote's window allows; a message going at QoS 0
    /// is done once written, and acknowledged locally at once.
    async fn send_out(&mut self, local: &mut Client, remote: &mut Client) -> Result<(), Side> {
        let window = usize::from(remote.receive_maximum.min(WINDOW));
        let mut inflight = self.out.iter().filter(|o| o.remote_id.is_some()).count();
        let mut i = 0;
        while let Some(o) = self.out.get_mut(i) {
            if o.remote_id.is_some() {
                i += 1;
                continue;
            }
            if o.publish.qos == QoS::AtMostOnce {
                remote
                    .send(&Packet::Publish(o.publish.clone()))
                    .await
                    .map_err(Side::Remote)?;
                if let Some(o) = self.out.remove(i) {
                    self.count_out(&o);
                    local
                        .ack(o.local_id, o.local_qos)
                        .await
                        .map_err(Side::Local)?;
                }
                continue;
            }
            if inflight >= window {
                break;
            }
            let id = remote.next_packet_id();
            o.publish.packet_id = id;
            o.remote_id = Some(id);
            let p = Packet::Publish(o.publish.clone());
            remote.send(&p).await.map_err(Side::Remote)?;
            inflight += 1;
            i += 1;
        }
        Ok(())
    }

    fn count_out(&self, o: &Out) {
        BridgeStats::add(&self.stats.out_messages, 1);
        BridgeStats::add(&self.stats.out_bytes, o.publish.payload.len() as u64);
        self.stats
            .pending
            .store(self.out.len() as u64, Ordering::Relaxed);
    }
}

/// Why a remote connection ended.
enum Lost {
    Stopped,
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

/// A SUBSCRIBE for `filters`; with MQTT 5 options, No Local (what the bridge publishes on a
/// side never comes back to it there), Retain As Published, and retained messages only for a
/// new subscription.
fn subscribe(packet_id: u16, filters: Vec<(TopicFilter, QoS)>, v5: bool) -> Subscribe {
    Subscribe {
        packet_id,
        filters: filters
            .into_iter()
            .map(|(f, qos)| {
                let options = if v5 {
                    SubscriptionOptions {
                        qos,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: RetainHandling::SendIfNew,
                    }
                } else {
                    SubscriptionOptions {
                        qos,
                        ..SubscriptionOptions::default()
                    }
                };
                (f, options)
            })
            .collect(),
        properties: Properties::default(),
    }
}

/// The properties a message keeps across the bridge (not its topic alias or subscription
/// identifiers, which belong to one connection).
fn forwarded(p: &Properties) -> Properties {
    let mut v = (**p).clone();
    v.topic_alias = None;
    v.subscription_identifiers.clear();
    v.into()
}
