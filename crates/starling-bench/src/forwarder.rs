//! A trivial forwarding server: just enough MQTT 3.1.1 to carry the load generator's traffic
//! (CONNACK, SUBACK, PUBACK, PINGRESP, and every PUBLISH copied to the subscribers of exactly
//! its topic). No sessions, no wildcards, no queues, no limits. Its only use is to show the
//! generator can drive far more than a broker delivers.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use anyhow::{Context, Result};
use bytes::{Bytes, BytesMut};
use starling_proto::{
    ConnAck, Packet, Properties, PubAck, QoS, ReasonCode, SubAck, encode, encode_publish_header,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

use crate::client::{PacketReader, VERSION};

/// Payloads at least this large are passed on as they are instead of copied.
const BIG: usize = 64 * 1024;

/// Output of one connection, written by its own task: `chunks` first, then `buf`.
#[derive(Debug, Default)]
struct Out {
    chunks: RefCell<VecDeque<Bytes>>,
    buf: RefCell<BytesMut>,
    notify: Notify,
    next_id: Cell<u16>,
    closed: Cell<bool>,
}

#[derive(Debug)]
struct Sub {
    out: Rc<Out>,
    qos: QoS,
}

type Topics = Rc<RefCell<HashMap<Bytes, Vec<Sub>>>>;

/// Serves until the process is stopped.
pub(crate) async fn serve(addr: &str) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind {addr}"))?;
    let topics: Topics = Rc::default();
    loop {
        let (stream, _) = listener.accept().await.context("accept")?;
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        let out = Rc::new(Out::default());
        tokio::task::spawn_local(writer(out.clone(), wr));
        let topics = topics.clone();
        tokio::task::spawn_local(async move {
            let _ = reader(PacketReader::new(rd, 64 * 1024), &out, &topics).await;
            out.closed.set(true);
            out.notify.notify_one();
            for subs in topics.borrow_mut().values_mut() {
                subs.retain(|s| !Rc::ptr_eq(&s.out, &out));
            }
        });
    }
}

async fn writer(out: Rc<Out>, mut wr: OwnedWriteHalf) {
    let mut local = BytesMut::new();
    while !out.closed.get() {
        out.notify.notified().await;
        loop {
            let chunk = out.chunks.borrow_mut().pop_front();
            let Some(chunk) = chunk else { break };
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
        std::mem::swap(&mut local, &mut *out.buf.borrow_mut());
        if !local.is_empty() {
            if wr.write_all(&local).await.is_err() {
                return;
            }
            local.clear();
        }
    }
}

async fn reader(
    mut rd: PacketReader<tokio::net::tcp::OwnedReadHalf>,
    me: &Rc<Out>,
    topics: &Topics,
) -> Result<()> {
    let mut woken: Vec<Rc<Out>> = Vec::new();
    while rd.fill().await? {
        while let Some(packet) = rd.decode()? {
            let reply = match packet {
                Packet::Connect(_) => Some(Packet::ConnAck(ConnAck {
                    session_present: false,
                    reason: ReasonCode::Success,
                    properties: Properties::default(),
                })),
                Packet::Subscribe(s) => {
                    let mut reasons = Vec::new();
                    let mut t = topics.borrow_mut();
                    for (filter, opts) in s.filters {
                        let qos = opts.qos.min(QoS::AtLeastOnce);
                        t.entry(filter.as_shared().clone()).or_default().push(Sub {
                            out: me.clone(),
                            qos,
                        });
                        reasons.push(if qos == QoS::AtLeastOnce {
                            ReasonCode::GrantedQoS1
                        } else {
                            ReasonCode::Success
                        });
                    }
                    Some(Packet::SubAck(SubAck {
                        packet_id: s.packet_id,
                        reasons,
                        properties: Properties::default(),
                    }))
                }
                Packet::Publish(mut p) => {
                    let ack = (p.qos != QoS::AtMostOnce).then(|| PubAck::new(p.packet_id));
                    let from = p.qos;
                    if let Some(subs) = topics.borrow().get(p.topic.as_shared()) {
                        for s in subs {
                            p.qos = from.min(s.qos);
                            p.packet_id = if p.qos == QoS::AtMostOnce {
                                0
                            } else {
                                let id = s.out.next_id.get().wrapping_add(1).max(1);
                                s.out.next_id.set(id);
                                id
                            };
                            let mut buf = s.out.buf.borrow_mut();
                            encode_publish_header(&p, VERSION, &mut buf)?;
                            if p.payload.len() >= BIG {
                                let mut chunks = s.out.chunks.borrow_mut();
                                chunks.push_back(buf.split().freeze());
                                chunks.push_back(p.payload.clone());
                            } else {
                                buf.extend_from_slice(&p.payload);
                            }
                            if !woken.iter().any(|w| Rc::ptr_eq(w, &s.out)) {
                                woken.push(s.out.clone());
                            }
                        }
                    }
                    ack.map(Packet::PubAck)
                }
                Packet::PingReq => Some(Packet::PingResp),
                Packet::Disconnect(_) => return Ok(()),
                _ => None,
            };
            if let Some(reply) = reply {
                encode(&reply, VERSION, &mut me.buf.borrow_mut())?;
                if !woken.iter().any(|w| Rc::ptr_eq(w, me)) {
                    woken.push(me.clone());
                }
            }
        }
        for w in woken.drain(..) {
            w.notify.notify_one();
        }
    }
    Ok(())
}
