//! A TCP fault proxy on every link between the nodes of a test cluster. Each node is
//! advertised to the others at its proxy's address; nodes dial from their own inter-node
//! address (127.0.0.N), so the proxy knows which node a stream comes from and which it goes
//! to. A cut pair of nodes has its streams closed and new ones refused, in both directions,
//! until it is healed. A muted direction loses the replies on the streams one node opened to
//! another (its requests arrive, what comes back is dropped) until it is unmuted.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// Which pairs are cut, and the streams carried now.
#[derive(Default)]
struct Links {
    /// Cut pairs, both orders.
    cut: HashSet<(u64, u64)>,
    /// (from, to): what `to` sends back on streams `from` opened is dropped.
    muted: HashSet<(u64, u64)>,
    /// Streams carried: from, to, the task that copies them.
    streams: Vec<(u64, u64, AbortHandle)>,
}

/// The proxy: one listener per node, stopped on drop.
pub(crate) struct FaultProxy {
    links: Arc<Mutex<Links>>,
    listeners: Vec<JoinHandle<()>>,
}

fn lock(m: &Mutex<Links>) -> std::sync::MutexGuard<'_, Links> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The node a stream comes from: the last byte of its 127.0.0.N source address.
fn node_of(addr: SocketAddr) -> u64 {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => u64::from(ip.octets()[3]),
        _ => 0,
    }
}

impl FaultProxy {
    /// Listens for each node (`targets[i]` is node i+1's inter-node address) on a free port
    /// of 127.0.0.1; returns the proxy and the address each node is to be advertised at.
    pub(crate) fn start(targets: &[SocketAddr]) -> (Self, Vec<SocketAddr>) {
        let links = Arc::new(Mutex::new(Links::default()));
        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        for (i, target) in targets.iter().enumerate() {
            let to = i as u64 + 1;
            let std = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            std.set_nonblocking(true).unwrap();
            addrs.push(std.local_addr().unwrap());
            let listener = TcpListener::from_std(std).unwrap();
            let (links, target) = (links.clone(), *target);
            listeners.push(tokio::spawn(async move {
                while let Ok((stream, peer)) = listener.accept().await {
                    let from = node_of(peer);
                    if lock(&links).cut.contains(&(from, to)) {
                        continue; // dropped: the dialer sees its stream closed
                    }
                    let copying = links.clone();
                    let task = tokio::spawn(async move {
                        let Ok(upstream) = TcpStream::connect(target).await else {
                            return;
                        };
                        let _ = upstream.set_nodelay(true);
                        let _ = stream.set_nodelay(true);
                        let (mut from_reader, mut from_writer) = stream.into_split();
                        let (mut to_reader, mut to_writer) = upstream.into_split();
                        let forth = tokio::io::copy(&mut from_reader, &mut to_writer);
                        let back = async {
                            let mut buf = vec![0u8; 16 * 1024];
                            loop {
                                let n = to_reader.read(&mut buf).await?;
                                if n == 0 {
                                    return Ok::<_, std::io::Error>(());
                                }
                                if !lock(&copying).muted.contains(&(from, to)) {
                                    from_writer.write_all(&buf[..n]).await?;
                                }
                            }
                        };
                        tokio::select! {
                            _ = forth => {}
                            _ = back => {}
                        }
                    });
                    let mut l = lock(&links);
                    l.streams.retain(|(_, _, h)| !h.is_finished());
                    if l.cut.contains(&(from, to)) {
                        // Cut while it was being accepted.
                        task.abort();
                    } else {
                        l.streams.push((from, to, task.abort_handle()));
                    }
                }
            }));
        }
        (FaultProxy { links, listeners }, addrs)
    }

    /// Cuts nodes `a` and `b` apart: their streams close, new ones are refused.
    pub(crate) fn cut(&self, a: u64, b: u64) {
        let mut l = lock(&self.links);
        l.cut.insert((a, b));
        l.cut.insert((b, a));
        l.streams.retain(|(from, to, h)| {
            let hit = (*from, *to) == (a, b) || (*from, *to) == (b, a);
            if hit {
                h.abort();
            }
            !hit
        });
    }

    /// Cuts node `n` apart from every other of `all`.
    pub(crate) fn isolate(&self, n: u64, all: &[u64]) {
        for &other in all.iter().filter(|&&o| o != n) {
            self.cut(n, other);
        }
    }

    /// Heals every cut.
    pub(crate) fn heal_all(&self) {
        lock(&self.links).cut.clear();
    }

    /// Drops what `to` sends back on the streams `from` opened to it (`from`'s requests
    /// arrive, their replies are lost), until [`FaultProxy::unmute_all`].
    pub(crate) fn mute(&self, from: u64, to: u64) {
        lock(&self.links).muted.insert((from, to));
    }

    /// Ends every mute.
    pub(crate) fn unmute_all(&self) {
        lock(&self.links).muted.clear();
    }

    /// Streams carried now between `a` and `b` (either way).
    pub(crate) fn streams_between(&self, a: u64, b: u64) -> usize {
        let mut l = lock(&self.links);
        l.streams.retain(|(_, _, h)| !h.is_finished());
        l.streams
            .iter()
            .filter(|(from, to, _)| (*from, *to) == (a, b) || (*from, *to) == (b, a))
            .count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        for l in &self.listeners {
            l.abort();
        }
        for (_, _, h) in &lock(&self.links).streams {
            h.abort();
        }
    }
}
