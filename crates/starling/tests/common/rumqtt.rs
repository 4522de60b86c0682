//! `rumqttc` clients for the black-box tests, MQTT 3.1.1 ([`v311`]) and MQTT 5 ([`v5`]). The
//! event loop runs in a task that hands incoming packets (and the error that ends it) over a
//! channel; the helpers wait on that channel. Both levels share one [`Client`], generic over
//! rumqttc's types for the level ([`Version`]).
//!
//! Every wait is bounded by [`WAIT`], and every helper fails on a dead connection: once the
//! event loop has reported an error or ended, waiting for a packet panics, and so does
//! checking that nothing arrives ([`Client::no_publish`]), since silence on a closed
//! connection proves nothing.

use std::fmt::{Debug, Display};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout, timeout_at};

/// Bound for every wait on a rumqttc client.
pub(crate) const WAIT: Duration = Duration::from_secs(5);

/// Capacity of the request channel between a client handle and its event loop.
const REQUESTS: usize = 1000;

/// An event of rumqttc's event loop, as far as the helpers care.
#[derive(Debug)]
pub(crate) enum Event<P> {
    /// A packet from the broker.
    Incoming(P),
    /// The client's DISCONNECT has been written.
    SentDisconnect,
    /// Any other packet sent.
    Outgoing,
}

/// rumqttc's types and calls for one protocol level.
pub(crate) trait Version: 'static {
    type Options;
    type AsyncClient;
    type EventLoop: Send + 'static;
    type Packet: Debug + Send + 'static;
    type ConnAck: Debug;
    type Publish: Debug;
    type Error: Debug + Display + Send + 'static;

    fn new_client(opts: Self::Options, cap: usize) -> (Self::AsyncClient, Self::EventLoop);

    fn poll(
        eventloop: &mut Self::EventLoop,
    ) -> impl Future<Output = Result<Event<Self::Packet>, Self::Error>> + Send;

    /// Queues a DISCONNECT; fails if the event loop is gone.
    fn send_disconnect(client: &Self::AsyncClient) -> impl Future<Output = Result<(), String>>;

    fn connack(packet: Self::Packet) -> Result<Self::ConnAck, Self::Packet>;

    fn publish(packet: Self::Packet) -> Result<Self::Publish, Self::Packet>;
}

/// What the event loop task sends.
enum Item<V: Version> {
    Packet(V::Packet),
    SentDisconnect,
    /// The error that ended the event loop (the task sends nothing after it).
    Failed(V::Error),
}

/// What one wait on the channel gave.
enum Got<V: Version> {
    Packet(V::Packet),
    SentDisconnect,
    Failed(V::Error),
    /// The event loop task is gone without an error (aborted or panicked).
    Ended,
    /// Nothing before the deadline.
    Timeout,
}

impl<V: Version> From<Item<V>> for Got<V> {
    fn from(item: Item<V>) -> Self {
        match item {
            Item::Packet(p) => Self::Packet(p),
            Item::SentDisconnect => Self::SentDisconnect,
            Item::Failed(e) => Self::Failed(e),
        }
    }
}

/// A rumqttc client whose event loop runs in a task and forwards incoming packets.
pub(crate) struct Client<V: Version> {
    /// rumqttc's handle, for requests the helpers do not cover.
    pub(crate) client: V::AsyncClient,
    rx: mpsc::UnboundedReceiver<Item<V>>,
    task: JoinHandle<()>,
    /// Why the connection is gone, once the helpers have seen it go.
    gone: Option<String>,
}

impl<V: Version> Client<V> {
    /// Starts the event loop (which connects) without waiting for anything.
    pub(crate) fn start(opts: V::Options) -> Self {
        let (client, mut eventloop) = V::new_client(opts, REQUESTS);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let item = match V::poll(&mut eventloop).await {
                    Ok(Event::Incoming(p)) => Item::Packet(p),
                    Ok(Event::SentDisconnect) => Item::SentDisconnect,
                    Ok(Event::Outgoing) => continue,
                    Err(e) => {
                        let _ = tx.send(Item::Failed(e));
                        return;
                    }
                };
                if tx.send(item).is_err() {
                    return;
                }
            }
        });
        Self {
            client,
            rx,
            task,
            gone: None,
        }
    }

    /// Starts the event loop and waits for a CONNACK, which is returned.
    pub(crate) async fn connect_with(opts: V::Options) -> (Self, V::ConnAck) {
        let mut c = Self::start(opts);
        let ack = match c.next().await {
            Ok(p) => V::connack(p).unwrap_or_else(|p| panic!("expected CONNACK, got {p:?}")),
            Err(e) => panic!("expected CONNACK, got {e:?}"),
        };
        (c, ack)
    }

    /// Records what the channel gave and returns it.
    fn note(&mut self, got: Got<V>) -> Got<V> {
        match &got {
            Got::Failed(e) => self.gone = Some(format!("connection error: {e}")),
            Got::Ended if self.gone.is_none() => {
                self.gone = Some("event loop ended without an error".to_owned());
            }
            _ => {}
        }
        got
    }

    /// The next item, or [`Got::Timeout`] if the channel is still empty at `deadline`.
    async fn recv(&mut self, deadline: Instant) -> Got<V> {
        let got = match timeout_at(deadline, self.rx.recv()).await {
            Ok(Some(item)) => item.into(),
            Ok(None) => Got::Ended,
            // What arrived just in time counts.
            Err(_) => match self.rx.try_recv() {
                Ok(item) => item.into(),
                Err(TryRecvError::Empty) => Got::Timeout,
                Err(TryRecvError::Disconnected) => Got::Ended,
            },
        };
        self.note(got)
    }

    /// Panics if the connection is known to be gone.
    fn assert_alive(&self, doing: &str) {
        if let Some(why) = &self.gone {
            panic!("{doing} on a dead connection ({why})");
        }
    }

    /// The next packet, or the connection error that ended the event loop. Panics if nothing
    /// comes within [`WAIT`], and if the connection was already gone (its error returned).
    pub(crate) async fn next(&mut self) -> Result<V::Packet, V::Error> {
        self.assert_alive("waiting for a packet");
        let deadline = Instant::now() + WAIT;
        loop {
            match self.recv(deadline).await {
                Got::Packet(p) => return Ok(p),
                Got::Failed(e) => return Err(e),
                Got::SentDisconnect => {}
                Got::Ended => {
                    panic!("event loop ended without an error while waiting for a packet")
                }
                Got::Timeout => panic!("timed out waiting for a packet ({WAIT:?})"),
            }
        }
    }

    /// The first packet `pick` takes, skipping the others; panics on a connection error.
    pub(crate) async fn expect<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(V::Packet) -> Option<T>,
    ) -> T {
        loop {
            match self.next().await {
                Ok(p) => {
                    if let Some(t) = pick(p) {
                        return t;
                    }
                }
                Err(e) => panic!("connection error while waiting for {what}: {e}"),
            }
        }
    }

    /// The next PUBLISH, skipping acks.
    pub(crate) async fn publish(&mut self) -> V::Publish {
        self.expect("PUBLISH", |p| V::publish(p).ok()).await
    }

    /// Asserts that no PUBLISH arrives within `d`, on a connection that is up all along: also
    /// panics if the connection was already gone, or goes (an error, or the end of the event
    /// loop) during the wait.
    pub(crate) async fn no_publish(&mut self, d: Duration) {
        self.assert_alive("checking that no PUBLISH arrives");
        let deadline = Instant::now() + d;
        loop {
            match self.recv(deadline).await {
                Got::Timeout => return,
                Got::Packet(p) => {
                    if let Ok(p) = V::publish(p) {
                        panic!("unexpected PUBLISH: {p:?}");
                    }
                }
                Got::SentDisconnect => {}
                Got::Failed(e) => {
                    panic!("connection error while checking that no PUBLISH arrives: {e}")
                }
                Got::Ended => {
                    panic!("event loop ended while checking that no PUBLISH arrives")
                }
            }
        }
    }

    /// Waits up to `within` for the connection to go (a connection error or the end of the
    /// event loop), skipping packets; says whether it went.
    pub(crate) async fn wait_closed(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.gone.is_none() {
            if let Got::Timeout = self.recv(deadline).await {
                return false;
            }
        }
        true
    }

    /// Ends the event loop (closing the socket without DISCONNECT) but keeps the client, to
    /// show what the helpers do on a dead connection.
    pub(crate) fn abort_event_loop(&self) {
        self.task.abort();
    }

    /// Closes the socket without DISCONNECT (the event loop task is aborted). Panics if the
    /// connection is already gone.
    pub(crate) fn kill(mut self) {
        loop {
            match self.rx.try_recv() {
                Ok(item) => {
                    self.note(item.into());
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.note(Got::Ended);
                    break;
                }
            }
        }
        self.assert_alive("kill");
        self.task.abort();
    }

    /// Sends DISCONNECT and waits until it is written, then up to [`WAIT`] for the event loop
    /// to end (the broker closes the connection). Panics if the connection goes first.
    pub(crate) async fn disconnect(mut self) {
        self.assert_alive("DISCONNECT");
        if let Err(e) = V::send_disconnect(&self.client).await {
            panic!("DISCONNECT not queued: {e}");
        }
        let deadline = Instant::now() + WAIT;
        loop {
            match self.recv(deadline).await {
                Got::SentDisconnect => break,
                Got::Packet(_) => {}
                Got::Failed(e) => panic!("connection error before DISCONNECT was written: {e}"),
                Got::Ended => panic!("event loop ended before DISCONNECT was written"),
                Got::Timeout => panic!("DISCONNECT not written within {WAIT:?}"),
            }
        }
        let _ = timeout(WAIT, async { while self.rx.recv().await.is_some() {} }).await;
    }
}

/// The [`Version`] of one of rumqttc's type families, and its `options`: rumqttc's 3.1.1 types
/// and its v5 types have the same shape under other paths, so one text serves both (the
/// names resolve in the module that uses it).
macro_rules! rumqttc_version {
    ($name:ident) => {
        impl Version for $name {
            type Options = MqttOptions;
            type AsyncClient = AsyncClient;
            type EventLoop = EventLoop;
            type Packet = Packet;
            type ConnAck = ConnAck;
            type Publish = Publish;
            type Error = ConnectionError;

            fn new_client(opts: MqttOptions, cap: usize) -> (AsyncClient, EventLoop) {
                AsyncClient::new(opts, cap)
            }

            async fn poll(eventloop: &mut EventLoop) -> Result<Event<Packet>, ConnectionError> {
                Ok(match eventloop.poll().await? {
                    RumqttcEvent::Incoming(p) => Event::Incoming(p),
                    RumqttcEvent::Outgoing(Outgoing::Disconnect) => Event::SentDisconnect,
                    RumqttcEvent::Outgoing(_) => Event::Outgoing,
                })
            }

            async fn send_disconnect(client: &AsyncClient) -> Result<(), String> {
                client.disconnect().await.map_err(|e| e.to_string())
            }

            fn connack(packet: Packet) -> Result<ConnAck, Packet> {
                match packet {
                    Packet::ConnAck(a) => Ok(a),
                    other => Err(other),
                }
            }

            fn publish(packet: Packet) -> Result<Publish, Packet> {
                match packet {
                    Packet::Publish(p) => Ok(p),
                    other => Err(other),
                }
            }
        }

        /// Options for client `id` of the broker at `addr`, keep-alive 30 s.
        pub(crate) fn options(addr: SocketAddr, id: &str) -> MqttOptions {
            let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
            opts.set_keep_alive(Duration::from_secs(30));
            opts
        }
    };
}

/// MQTT 3.1.1: rumqttc's top-level types.
pub(crate) mod v311 {
    use std::net::SocketAddr;
    use std::time::Duration;

    use rumqttc::Event as RumqttcEvent;
    use rumqttc::{
        AsyncClient, ConnAck, ConnectionError, EventLoop, LastWill, MqttOptions, Outgoing, Packet,
        Publish, QoS,
    };

    use super::{Event, Version};

    #[derive(Debug)]
    pub(crate) struct V311;

    /// A 3.1.1 client.
    pub(crate) type Client = super::Client<V311>;

    rumqttc_version!(V311);

    impl Client {
        /// Connects and waits for the CONNACK.
        pub(crate) async fn connect(
            addr: SocketAddr,
            id: &str,
            clean: bool,
            will: Option<LastWill>,
        ) -> (Self, ConnAck) {
            let mut opts = options(addr, id);
            opts.set_clean_session(clean);
            if let Some(w) = will {
                opts.set_last_will(w);
            }
            Self::connect_with(opts).await
        }

        /// Subscribes to one filter and waits for the SUBACK.
        pub(crate) async fn subscribe(&mut self, filter: &str, qos: QoS) {
            self.assert_alive("SUBSCRIBE");
            self.client.subscribe(filter, qos).await.unwrap();
            self.expect("SUBACK", |p| match p {
                Packet::SubAck(a) => Some(a),
                _ => None,
            })
            .await;
        }
    }
}

/// MQTT 5: rumqttc's `v5` types.
pub(crate) mod v5 {
    use std::net::SocketAddr;
    use std::time::Duration;

    use rumqttc::Outgoing;
    use rumqttc::v5::Event as RumqttcEvent;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{
        ConnAck, ConnectReturnCode, Filter, Packet, Publish, SubscribeProperties,
    };
    use rumqttc::v5::{AsyncClient, ConnectionError, EventLoop, MqttOptions};

    use super::{Event, Version};

    #[derive(Debug)]
    pub(crate) struct V5;

    /// A v5 client.
    pub(crate) type Client = super::Client<V5>;

    rumqttc_version!(V5);

    impl Client {
        /// Connects with [`options`] adjusted by `tweak` and waits for the CONNACK.
        pub(crate) async fn connect(
            addr: SocketAddr,
            id: &str,
            tweak: impl FnOnce(&mut MqttOptions),
        ) -> (Self, ConnAck) {
            let mut opts = options(addr, id);
            tweak(&mut opts);
            Self::connect_with(opts).await
        }

        /// Connects with [`options`] as they are.
        pub(crate) async fn plain(addr: SocketAddr, id: &str) -> Self {
            Self::connect(addr, id, |_| {}).await.0
        }

        /// Subscribes to one filter, with a subscription identifier if `id` is given, and
        /// waits for the SUBACK.
        pub(crate) async fn subscribe(&mut self, filter: Filter, id: Option<usize>) {
            self.assert_alive("SUBSCRIBE");
            let props = SubscribeProperties {
                id,
                user_properties: vec![],
            };
            self.client
                .subscribe_many_with_properties(vec![filter], props)
                .await
                .unwrap();
            self.expect("SUBACK", |p| match p {
                Packet::SubAck(a) => Some(a),
                _ => None,
            })
            .await;
        }

        /// Subscribes to `path` with default options.
        pub(crate) async fn sub(&mut self, path: &str, qos: QoS) {
            self.subscribe(Filter::new(path, qos), None).await;
        }

        /// Expects the connection to be refused; returns the CONNACK's reason.
        pub(crate) async fn expect_refused(&mut self) -> ConnectReturnCode {
            match self.next().await {
                Err(ConnectionError::ConnectionRefused(code)) => code,
                other => panic!("expected a refused connection, got {other:?}"),
            }
        }
    }
}
