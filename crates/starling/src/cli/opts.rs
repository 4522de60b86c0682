//! The flags the client commands share (`-h -p -u -P -i -I -k -V -c -x -L -D --will-*`, TLS),
//! with mosquitto's letters and meanings, and what they turn into: where to connect
//! ([`Endpoint`]) and the CONNECT packet. `-D` properties are parsed here for every packet
//! kind; each command takes the ones it sends.

use std::net::IpAddr;
use std::path::PathBuf;

use bytes::Bytes;
use clap::{ArgAction, Args};
use starling_proto::{Connect, PropertyValues, ProtocolVersion, QoS, TopicName, Will};

/// A usage error: printed, then the command exits with status 1 as mosquitto's tools do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

/// Connection flags common to `pub`, `sub` and `rr`.
#[derive(Debug, Clone, Args)]
pub struct ConnectOpts {
    /// MQTT host to connect to.
    #[arg(short = 'h', long = "host", default_value = "localhost")]
    pub host: String,
    /// Network port (default 1883, or 8883 with TLS).
    #[arg(short = 'p', long = "port")]
    pub port: Option<u16>,
    /// Connect through a Unix domain socket instead of TCP.
    #[arg(long = "unix", value_name = "PATH")]
    pub unix: Option<PathBuf>,
    /// Bind the outgoing socket to this local address.
    #[arg(short = 'A', value_name = "ADDRESS")]
    pub bind_address: Option<IpAddr>,
    /// mqtt(s)://[user[:password]@]host[:port]/topic, or ws(s)://[user[:password]@]host[:port][/path]
    /// for MQTT over WebSocket (the path is the WebSocket path, default /mqtt; give the topic
    /// with -t), or quic://[user[:password]@]host[:port]/topic for MQTT over QUIC.
    #[arg(short = 'L', long = "url")]
    pub url: Option<String>,
    /// Username.
    #[arg(short = 'u', long = "username")]
    pub username: Option<String>,
    /// Password.
    #[arg(short = 'P', long = "pw")]
    pub password: Option<String>,
    /// Client id (default: empty for a clean session, so that the broker assigns one).
    #[arg(short = 'i', long = "id", conflicts_with = "id_prefix")]
    pub id: Option<String>,
    /// Client id made of this prefix and the process id.
    #[arg(short = 'I', long = "id-prefix")]
    pub id_prefix: Option<String>,
    /// Keep-alive in seconds (5-65535, or 0 to disable).
    #[arg(short = 'k', long = "keepalive", default_value_t = 60)]
    pub keepalive: u16,
    /// MQTT version: mqttv5, mqttv311 or mqttv31 (also 5, 311, 31).
    #[arg(short = 'V', long = "protocol-version", value_parser = parse_version)]
    pub version: Option<ProtocolVersion>,
    /// Persistent session: do not clean the session on connect (3.x) / clean start off and
    /// a session that never expires unless -x says otherwise (5).
    #[arg(short = 'c', long = "disable-clean-session")]
    pub persistent: bool,
    /// Session expiry interval in seconds (MQTT 5; ignored before): 0-4294967294, or -1,
    /// 4294967295 or ∞ for none.
    #[arg(short = 'x', value_name = "SECONDS", allow_hyphen_values = true, value_parser = parse_expiry)]
    pub session_expiry: Option<u32>,
    /// MQTT 5 property: -D COMMAND IDENTIFIER VALUE, or -D COMMAND user-property NAME VALUE.
    #[arg(short = 'D', long = "property", num_args = 3..=4, action = ArgAction::Append,
          value_names = ["COMMAND", "IDENTIFIER", "VALUE"])]
    pub properties: Vec<String>,
    /// Print debug messages (packets sent and received) to stdout.
    #[arg(short = 'd', long = "debug")]
    pub debug: bool,
    /// Do not print error messages.
    #[arg(long = "quiet")]
    pub quiet: bool,
    /// Disable Nagle's algorithm.
    #[arg(long = "nodelay")]
    pub nodelay: bool,
    /// Topic of the client's will.
    #[arg(long = "will-topic")]
    pub will_topic: Option<String>,
    /// Payload of the will (default empty).
    #[arg(long = "will-payload")]
    pub will_payload: Option<String>,
    /// QoS of the will.
    #[arg(long = "will-qos", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub will_qos: u8,
    /// Retain the will.
    #[arg(long = "will-retain")]
    pub will_retain: bool,
    /// CA certificates (PEM) to verify the broker with; turns TLS on.
    #[arg(long = "cafile", value_name = "FILE")]
    pub cafile: Option<PathBuf>,
    /// Directory of CA certificates (PEM files) to verify the broker with; turns TLS on.
    #[arg(long = "capath", value_name = "DIR")]
    pub capath: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long = "cert", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long = "key", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Do not check that the broker's certificate names the host connected to.
    #[arg(long = "insecure")]
    pub insecure: bool,
    /// MQTT over QUIC (UDP, default port 14567), verified as TLS is (--cafile, --capath,
    /// --insecure, the system's CAs by default).
    #[arg(long = "quic")]
    pub quic: bool,
    /// Trust the operating system's CA certificates; turns TLS on.
    #[arg(long = "tls-use-os-certs")]
    pub tls_use_os_certs: bool,
    /// Highest TLS version: tlsv1.3 or tlsv1.2.
    #[arg(long = "tls-version")]
    pub tls_version: Option<String>,
    /// Print help.
    #[arg(long = "help", action = ArgAction::Help)]
    pub help: Option<bool>,
}

fn parse_version(s: &str) -> Result<ProtocolVersion, String> {
    match s {
        "mqttv5" | "5" => Ok(ProtocolVersion::V5),
        "mqttv311" | "311" => Ok(ProtocolVersion::V311),
        "mqttv31" | "31" => Ok(ProtocolVersion::V31),
        _ => Err("must be mqttv5, mqttv311 or mqttv31".into()),
    }
}

fn parse_expiry(s: &str) -> Result<u32, String> {
    match s {
        "-1" | "∞" => Ok(u32::MAX),
        _ => s
            .parse::<u32>()
            .map_err(|_| "must be 0-4294967295, -1 or ∞".to_string()),
    }
}

/// The transport the URL or flags ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// MQTT over TCP.
    Mqtt,
    /// MQTT over TLS.
    Mqtts,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
    /// MQTT over QUIC.
    Quic,
}

impl Scheme {
    /// Whether TLS is used over a TCP stream (QUIC has its own).
    pub fn tls(self) -> bool {
        matches!(self, Self::Mqtts | Self::Wss)
    }
}

/// Where and how to connect, after the URL (if any) and the flags are combined.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Transport.
    pub scheme: Scheme,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// WebSocket path.
    pub path: String,
    /// Unix socket, replacing host and port.
    pub unix: Option<PathBuf>,
    /// Username and password (URL credentials, overridden by -u/-P).
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Topic given in an mqtt:// URL.
    pub url_topic: Option<String>,
    /// The name the server's certificate must carry, when not `host`.
    pub tls_name: Option<String>,
}

/// `-D` properties, by the packet they go into.
#[derive(Debug, Clone, Default)]
pub struct PacketProperties {
    /// CONNECT.
    pub connect: PropertyValues,
    /// PUBLISH.
    pub publish: PropertyValues,
    /// SUBSCRIBE.
    pub subscribe: PropertyValues,
    /// UNSUBSCRIBE.
    pub unsubscribe: PropertyValues,
    /// DISCONNECT.
    pub disconnect: PropertyValues,
    /// The will.
    pub will: PropertyValues,
}

impl ConnectOpts {
    /// The protocol version, mosquitto's default (3.1.1) unless `default` says otherwise.
    pub fn version_or(&self, default: ProtocolVersion) -> ProtocolVersion {
        self.version.unwrap_or(default)
    }

    /// Combines `-L` with the other flags.
    pub fn endpoint(&self) -> Result<Endpoint, UsageError> {
        let mut ep = Endpoint {
            scheme: if self.quic {
                Scheme::Quic
            } else if self.cafile.is_some() || self.capath.is_some() || self.tls_use_os_certs {
                Scheme::Mqtts
            } else {
                Scheme::Mqtt
            },
            host: self.host.clone(),
            port: 0,
            path: "/mqtt".into(),
            unix: self.unix.clone(),
            username: None,
            password: None,
            url_topic: None,
            tls_name: None,
        };
        let mut port = self.port;
        if let Some(url) = &self.url {
            let (scheme, rest) = url
                .split_once("://")
                .ok_or_else(|| usage("Error: unsupported URL scheme."))?;
            ep.scheme = match scheme {
                "mqtt" => Scheme::Mqtt,
                "mqtts" => Scheme::Mqtts,
                "ws" => Scheme::Ws,
                "wss" => Scheme::Wss,
                "quic" => Scheme::Quic,
                _ => return Err(usage("Error: unsupported URL scheme.")),
            };
            let (authority, path) = match rest.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (rest, None),
            };
            let hostport = match authority.rsplit_once('@') {
                Some((creds, hostport)) => {
                    match creds.split_once(':') {
                        Some((u, p)) => {
                            ep.username = Some(u.to_string());
                            ep.password = Some(p.to_string());
                        }
                        None => ep.username = Some(creds.to_string()),
                    }
                    hostport
                }
                None => authority,
            };
            let (host, url_port) = split_host_port(hostport)?;
            ep.host = host;
            if url_port.is_some() {
                port = url_port;
            }
            match ep.scheme {
                Scheme::Mqtt | Scheme::Mqtts | Scheme::Quic => match path {
                    Some(topic) if !topic.is_empty() => ep.url_topic = Some(topic.to_string()),
                    _ => {
                        return Err(usage(
                            "Error: Invalid URL for -L argument specified - topic missing.",
                        ));
                    }
                },
                Scheme::Ws | Scheme::Wss => {
                    if let Some(p) = path {
                        ep.path = format!("/{p}");
                    }
                }
            }
        }
        ep.port = port.unwrap_or(match ep.scheme {
            Scheme::Mqtt => 1883,
            Scheme::Mqtts => 8883,
            Scheme::Ws => 80,
            Scheme::Wss => 443,
            Scheme::Quic => 14567,
        });
        if ep.scheme == Scheme::Quic && ep.unix.is_some() {
            return Err(usage("Error: QUIC cannot run over a Unix socket."));
        }
        if let Some(u) = &self.username {
            ep.username = Some(u.clone());
        }
        if let Some(p) = &self.password {
            ep.password = Some(p.clone());
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(usage(
                "Error: Both certfile and keyfile must be provided if one of them is set.",
            ));
        }
        if ep.password.is_some() && ep.username.is_none() {
            return Err(usage("Error: A password was given without a username."));
        }
        Ok(ep)
    }

    /// Checks the flags that do not depend on the command.
    pub fn check(&self, version: ProtocolVersion) -> Result<(), UsageError> {
        if self.will_topic.is_none() && self.will_payload.is_some() {
            return Err(usage("Error: Will payload given, but no will topic given."));
        }
        if self.will_topic.is_none() && self.will_retain {
            return Err(usage("Error: Will retain given, but no will topic given."));
        }
        if self.keepalive != 0 && self.keepalive < 5 {
            return Err(usage(
                "Error: Invalid keepalive given, it must be between 5 and 65535 inclusive.",
            ));
        }
        let no_id = self.id.is_none() && self.id_prefix.is_none();
        if no_id && self.session_expiry == Some(u32::MAX) {
            return Err(usage(
                "Error: You must provide a client id if you are using an infinite session expiry interval.",
            ));
        }
        if no_id && self.persistent && version != ProtocolVersion::V5 {
            return Err(usage(
                "Error: You must provide a client id if you are using the -c option.",
            ));
        }
        if let Some(v) = &self.tls_version
            && v != "tlsv1.3"
            && v != "tlsv1.2"
        {
            return Err(usage(format!(
                "Error: Unsupported TLS version \"{v}\": use tlsv1.3 or tlsv1.2."
            )));
        }
        if !self.properties.is_empty() && version != ProtocolVersion::V5 {
            return Err(usage(
                "Error: -D properties are only supported with MQTT v5 (-V mqttv5).",
            ));
        }
        Ok(())
    }

    /// The client id: `-i`, or `-I` with the process id, or `default`.
    pub fn client_id(&self, default: &str) -> String {
        if let Some(id) = &self.id {
            id.clone()
        } else if let Some(prefix) = &self.id_prefix {
            format!("{prefix}{}", std::process::id())
        } else {
            default.to_string()
        }
    }

    /// Parses `-D`.
    pub fn packet_properties(&self) -> Result<PacketProperties, UsageError> {
        let mut out = PacketProperties::default();
        let mut args = self.properties.iter();
        while let Some(command) = args.next() {
            let Some(ident) = args.next() else {
                return Err(usage("Error: -D argument given but no property specified."));
            };
            let target = match command.to_ascii_lowercase().as_str() {
                "connect" => &mut out.connect,
                "publish" => &mut out.publish,
                "subscribe" => &mut out.subscribe,
                "unsubscribe" => &mut out.unsubscribe,
                "disconnect" => &mut out.disconnect,
                "will" => &mut out.will,
                other => {
                    return Err(usage(format!(
                        "Error: Invalid command {other} given in -D argument."
                    )));
                }
            };
            let Some(value) = args.next() else {
                return Err(usage(format!(
                    "Error: -D {command} {ident} given but no value specified."
                )));
            };
            set_property(target, command, ident, value, &mut args)?;
        }
        Ok(out)
    }

    /// The CONNECT packet.
    pub fn connect_packet(
        &self,
        version: ProtocolVersion,
        client_id: String,
        ep: &Endpoint,
        props: &PacketProperties,
    ) -> Result<Connect, UsageError> {
        let mut c = Connect::new(version, client_id);
        c.keep_alive = self.keepalive;
        c.clean_start = !self.persistent;
        c.username = ep.username.clone();
        c.password = ep.password.clone().map(Bytes::from);
        let mut values = props.connect.clone();
        if version == ProtocolVersion::V5 {
            let expiry = match (self.session_expiry, self.persistent) {
                (Some(x), _) => x,
                (None, true) => u32::MAX,
                (None, false) => 0,
            };
            if expiry != 0 {
                values.session_expiry_interval = Some(expiry);
            }
        }
        c.properties = values.into();
        if let Some(topic) = &self.will_topic {
            let topic = TopicName::new(Bytes::from(topic.clone()), usize::MAX).map_err(|_| {
                usage(format!(
                    "Error: Invalid will topic '{topic}', does it contain '+' or '#'?"
                ))
            })?;
            let qos = QoS::from_u8(self.will_qos).unwrap_or(QoS::AtMostOnce);
            c.will = Some(Will {
                topic,
                payload: Bytes::from(self.will_payload.clone().unwrap_or_default()),
                qos,
                retain: self.will_retain,
                properties: props.will.clone().into(),
            });
        }
        Ok(c)
    }
}

fn split_host_port(s: &str) -> Result<(String, Option<u16>), UsageError> {
    let bad = || usage(format!("Error: Invalid port in URL \"{s}\"."));
    if let Some(rest) = s.strip_prefix('[') {
        // [v6]:port
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().map_err(|_| bad())?),
            None => None,
        };
        return Ok((host.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((host, port)) => Ok((host.to_string(), Some(port.parse().map_err(|_| bad())?))),
        None => Ok((s.to_string(), None)),
    }
}

fn set_property<'a>(
    v: &mut PropertyValues,
    command: &str,
    ident: &str,
    value: &str,
    rest: &mut impl Iterator<Item = &'a String>,
) -> Result<(), UsageError> {
    let bad_value = || {
        usage(format!(
            "Error: Invalid value \"{value}\" for property {ident}."
        ))
    };
    let int = |max: u64| -> Result<u64, UsageError> {
        value
            .parse::<u64>()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(bad_value)
    };
    let not_allowed = || {
        usage(format!(
            "Error: {ident} property not allowed for {command} in -D argument."
        ))
    };
    let cmd = command.to_ascii_lowercase();
    let publishing = cmd == "publish" || cmd == "will";
    match ident {
        "payload-format-indicator" if publishing => {
            v.payload_format_indicator = Some(int(1)? as u8);
        }
        "message-expiry-interval" if publishing => {
            v.message_expiry_interval = Some(int(u64::from(u32::MAX))? as u32);
        }
        "content-type" if publishing => v.content_type = Some(value.to_string()),
        "response-topic" if publishing => v.response_topic = Some(value.to_string()),
        "correlation-data" if publishing => {
            v.correlation_data = Some(Bytes::from(value.as_bytes().to_vec()));
        }
        "will-delay-interval" if cmd == "will" => {
            v.will_delay_interval = Some(int(u64::from(u32::MAX))? as u32);
        }
        "session-expiry-interval" if cmd == "connect" || cmd == "disconnect" => {
            v.session_expiry_interval = Some(int(u64::from(u32::MAX))? as u32);
        }
        "receive-maximum" if cmd == "connect" => {
            v.receive_maximum = Some(int(65535)? as u16).filter(|n| *n > 0);
        }
        "topic-alias-maximum" if cmd == "connect" => {
            v.topic_alias_maximum = Some(int(65535)? as u16);
        }
        "maximum-packet-size" if cmd == "connect" => {
            v.maximum_packet_size = Some(int(u64::from(u32::MAX))? as u32).filter(|n| *n > 0);
        }
        "request-problem-information" if cmd == "connect" => {
            v.request_problem_information = Some(int(1)? as u8);
        }
        "request-response-information" if cmd == "connect" => {
            v.request_response_information = Some(int(1)? as u8);
        }
        "authentication-method" if cmd == "connect" => {
            v.authentication_method = Some(value.to_string());
        }
        "authentication-data" if cmd == "connect" => {
            v.authentication_data = Some(Bytes::from(value.as_bytes().to_vec()));
        }
        "subscription-identifier" if cmd == "subscribe" => {
            let id = int(268_435_455)? as u32;
            if id == 0 {
                return Err(bad_value());
            }
            v.subscription_identifiers = vec![id];
        }
        "topic-alias" if cmd == "publish" => {
            v.topic_alias = Some(int(65535)? as u16).filter(|n| *n > 0);
        }
        "user-property" => {
            let Some(val) = rest.next() else {
                return Err(usage(format!(
                    "Error: -D {command} user-property {value} given but no value specified."
                )));
            };
            v.user_properties.push((value.to_string(), val.clone()));
        }
        "payload-format-indicator"
        | "message-expiry-interval"
        | "content-type"
        | "response-topic"
        | "correlation-data"
        | "will-delay-interval"
        | "session-expiry-interval"
        | "receive-maximum"
        | "topic-alias-maximum"
        | "maximum-packet-size"
        | "request-problem-information"
        | "request-response-information"
        | "authentication-method"
        | "authentication-data"
        | "subscription-identifier"
        | "topic-alias" => return Err(not_allowed()),
        other => {
            return Err(usage(format!(
                "Error: Invalid property name {other} in -D argument."
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    #[command(disable_help_flag = true)]
    struct T {
        #[command(flatten)]
        c: ConnectOpts,
    }

    fn parse(args: &[&str]) -> ConnectOpts {
        T::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .map(|t| t.c)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn urls() {
        let c = parse(&["-L", "mqtts://u:p@example.org:1234/a/b"]);
        let ep = c.endpoint().unwrap();
        assert_eq!(ep.scheme, Scheme::Mqtts);
        assert_eq!((ep.host.as_str(), ep.port), ("example.org", 1234));
        assert_eq!(ep.username.as_deref(), Some("u"));
        assert_eq!(ep.password.as_deref(), Some("p"));
        assert_eq!(ep.url_topic.as_deref(), Some("a/b"));
        let ep = parse(&["-L", "ws://[::1]/ws"]).endpoint().unwrap();
        assert_eq!(
            (ep.host.as_str(), ep.port, ep.path.as_str()),
            ("::1", 80, "/ws")
        );
        assert!(parse(&["-L", "mqtt://host"]).endpoint().is_err());
        assert!(parse(&["-L", "http://host/t"]).endpoint().is_err());
        let ep = parse(&["--cafile", "x"]).endpoint().unwrap();
        assert_eq!((ep.scheme, ep.port), (Scheme::Mqtts, 8883));
        let ep = parse(&["-L", "quic://broker:9000/t"]).endpoint().unwrap();
        assert_eq!((ep.scheme, ep.port), (Scheme::Quic, 9000));
        assert_eq!(ep.url_topic.as_deref(), Some("t"));
        let ep = parse(&["--quic", "--cafile", "x"]).endpoint().unwrap();
        assert_eq!((ep.scheme, ep.port), (Scheme::Quic, 14567));
        assert!(parse(&["--quic", "--unix", "/s"]).endpoint().is_err());
    }

    #[test]
    fn properties_by_command() {
        let c = parse(&[
            "-V",
            "5",
            "-D",
            "connect",
            "user-property",
            "a",
            "b",
            "-D",
            "publish",
            "content-type",
            "text/plain",
            "-D",
            "subscribe",
            "subscription-identifier",
            "7",
        ]);
        let p = c.packet_properties().unwrap();
        assert_eq!(p.connect.user_properties, vec![("a".into(), "b".into())]);
        assert_eq!(p.publish.content_type.as_deref(), Some("text/plain"));
        assert_eq!(p.subscribe.subscription_identifiers, vec![7]);
        let bad = parse(&["-D", "connect", "content-type", "x"]);
        assert!(bad.packet_properties().is_err());
        let bad = parse(&["-D", "publish", "nonsense", "x"]);
        assert!(bad.packet_properties().is_err());
    }

    #[test]
    fn session_expiry_defaults() {
        let c = parse(&["-V", "mqttv5", "-c", "-i", "x"]);
        let ep = c.endpoint().unwrap();
        let props = c.packet_properties().unwrap();
        let connect = c
            .connect_packet(ProtocolVersion::V5, "x".into(), &ep, &props)
            .unwrap();
        assert!(!connect.clean_start);
        assert_eq!(connect.properties.session_expiry_interval, Some(u32::MAX));
        // As mosquitto's tools: -x is ignored before MQTT 5.
        let c = parse(&["-V", "mqttv311", "-x", "10"]);
        assert!(c.check(ProtocolVersion::V311).is_ok());
        let c = parse(&["-c"]);
        assert!(c.check(ProtocolVersion::V311).is_err());
        let c = parse(&["-x", "-1"]);
        assert_eq!(c.session_expiry, Some(u32::MAX));
    }
}
