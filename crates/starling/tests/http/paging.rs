//! Paging through 10,000 connected clients. The broker runs as its own process (the binary),
//! so that its 10,000 sockets and this test's 10,000 fit under a per-process file limit.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::process::Process;

const CLIENTS: usize = 10_000;

/// A 3.1.1 CONNECT with a clean session and keep-alive 600.
fn connect_bytes(id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0x02, 0x58];
    body.extend_from_slice(&u16::try_from(id.len()).unwrap().to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    let mut p = vec![0x10, u8::try_from(body.len()).unwrap()];
    p.extend(body);
    p
}

async fn open(addr: SocketAddr, id: String) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&connect_bytes(&id)).await.unwrap();
    let mut ack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut ack))
        .await
        .expect("CONNACK in time")
        .unwrap();
    assert_eq!(ack, [0x20, 2, 0, 0], "{id}");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_through_ten_thousand_clients_sees_each_once_in_order() {
    let broker = Process::start(
        "[storage]\ndurability = \"memory\"\n[security]\nmax_connection_rate = 0\n\
         flapping_max_connects = 0\n[limits]\nsys_interval_secs = 0\n",
    )
    .await;
    let (base, client, mqtt) = (broker.base.clone(), reqwest::Client::new(), broker.mqtt);
    let addr = SocketAddr::from(([127, 0, 0, 1], mqtt));

    // 10,000 clients, 200 connecting at a time.
    let mut streams = Vec::with_capacity(CLIENTS);
    for chunk in (0..CLIENTS).collect::<Vec<_>>().chunks(200) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|i| tokio::spawn(open(addr, format!("c{i:05}"))))
            .collect();
        for t in tasks {
            streams.push(t.await.unwrap());
        }
    }

    for limit in [1000, 333] {
        let mut seen = Vec::with_capacity(CLIENTS);
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut url = format!("{base}/api/v1/clients?limit={limit}");
            if let Some(a) = &after {
                url.push_str(&format!("&after={a}"));
            }
            let page: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            pages += 1;
            let items = page["items"].as_array().unwrap();
            assert!(items.len() <= limit);
            seen.extend(
                items
                    .iter()
                    .map(|c| c["client_id"].as_str().unwrap().to_owned()),
            );
            match page["next"].as_str() {
                Some(n) => after = Some(n.to_owned()),
                None => break,
            }
            assert!(pages <= CLIENTS / limit + 2, "paging does not end");
        }
        assert_eq!(seen.len(), CLIENTS, "limit {limit}");
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order, no repeats");
        let unique: BTreeSet<&String> = seen.iter().collect();
        assert_eq!(unique.len(), CLIENTS);
    }
    let filtered: Value = client
        .get(format!("{base}/api/v1/clients?prefix=c0999&limit=1000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(filtered["items"].as_array().unwrap().len(), 10);
    assert_eq!(filtered["next"], Value::Null);
    drop(streams);
}
