//! MQTT 5 enhanced authentication: SCRAM-SHA-256 exchanges (a client side written here, from
//! RFC 5802) against a broker on 127.0.0.1:0 whose listener offers `auth_methods =
//! ["SCRAM-SHA-256"]`; re-authentication; unknown methods (0x8C); the protocol errors of spec
//! 4.12 and 3.15; the bounds on the exchange; plain passwords against `$scram-sha-256$`
//! entries; and `starling passwd -H scram-sha-256`.
//!
//! rumqttc 0.25 sends the Authentication Method and Data of CONNECT and reads them in CONNACK,
//! but cannot answer an AUTH packet; its SCRAM tests go through a relay that does the
//! client's continue step, which is what such a library's authentication hook would do. The
//! raw-client tests make the cases no library produces.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use fixtures::*;
use scram_client::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{Bytes, BytesMut};
use common::{RawClient, TestServer, WAIT, connect_packet, publish_packet};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use starling::config::{Config, ListenerConfig};
use starling_auth::password::{HashKind, PasswordHash};
use starling_auth::{
    AuthExchange, AuthStep, DenyReason, EnhancedAuth, ExchangeInfo, PasswordFile,
    StandardAuthenticator,
};
use starling_broker::connection::MAX_AUTH_STEPS;
use starling_broker::{Broker, Close, Connection, Features, Limits, ListenerAccess, PeerInfo};
use starling_proto::{
    Auth, ConnAck, Connect, DecodeLimits, Packet, ProtocolVersion, QoS, ReasonCode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SCRAM: &str = "SCRAM-SHA-256";
const V5: ProtocolVersion = ProtocolVersion::V5;

// The tests, by topic.
mod at_connect;
mod bounds;
#[path = "../common/mod.rs"]
mod common;
mod fixtures;
mod in_memory;
mod jwt;
mod passwd;
mod reauth;
mod scram_client;
mod with_rumqttc;
