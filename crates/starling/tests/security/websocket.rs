//! WebSocket and secure WebSocket listeners.

use super::*;

async fn ws_connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    url: &str,
    subprotocol: Option<&str>,
) -> Result<tokio_tungstenite::WebSocketStream<S>, tokio_tungstenite::tungstenite::Error> {
    let mut req = url.into_client_request().unwrap();
    if let Some(p) = subprotocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    let (ws, resp) = tokio_tungstenite::client_async(req, stream).await?;
    if let Some(p) = subprotocol {
        assert_eq!(
            resp.headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|v| v.to_str().ok()),
            Some(p.split(',').next().unwrap().trim())
        );
    }
    Ok(ws)
}

/// Reads binary messages until one whole packet decodes.
async fn ws_recv<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    rbuf: &mut BytesMut,
) -> Option<Packet> {
    loop {
        if let Some(p) = starling_proto::decode(rbuf, V5, &DecodeLimits::default()).unwrap() {
            return Some(p);
        }
        match timeout(WAIT, ws.next())
            .await
            .expect("WebSocket message in time")
        {
            Some(Ok(Message::Binary(b))) => rbuf.extend_from_slice(&b),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(other)) => panic!("unexpected WebSocket message {other:?}"),
        }
    }
}

/// CONNECT split over two frames; SUBSCRIBE and PUBLISH in one frame; the message comes back.
async fn ws_session<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: tokio_tungstenite::WebSocketStream<S>,
) {
    let connect = encode(&[Packet::Connect(Box::new(connect_packet(V5, "ws")))], V5);
    let (a, b) = connect.split_at(5);
    ws.send(Message::binary(a.to_vec())).await.unwrap();
    ws.send(Message::binary(b.to_vec())).await.unwrap();
    let mut rbuf = BytesMut::new();
    assert!(
        matches!(ws_recv(&mut ws, &mut rbuf).await, Some(Packet::ConnAck(a)) if a.reason == ReasonCode::Success)
    );
    let both = encode(
        &[
            subscribe_packet(1, "ws/t", QoS::AtMostOnce),
            publish_packet("ws/t", QoS::AtMostOnce, 0, b"hello"),
        ],
        V5,
    );
    ws.send(Message::binary(both)).await.unwrap();
    assert!(matches!(
        ws_recv(&mut ws, &mut rbuf).await,
        Some(Packet::SubAck(_))
    ));
    match ws_recv(&mut ws, &mut rbuf).await {
        Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"hello"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    // A text frame closes the connection (MQTT-6.0.0-1).
    ws.send(Message::text("{}")).await.unwrap();
    assert!(ws_recv(&mut ws, &mut rbuf).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_plain() {
    let s = start(vec![listener("ws")]).await;
    let url = format!("ws://{}/mqtt", s.addr);
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    ws_session(ws_connect(tcp, &url, Some("mqtt")).await.unwrap()).await;
    // The older subprotocol name is accepted too.
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    ws_connect(tcp, &url, Some("mqttv3.1")).await.unwrap();
    // Wrong path: 404. No MQTT subprotocol: 400.
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let e = ws_connect(tcp, &format!("ws://{}/other", s.addr), Some("mqtt"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("404"), "{e}");
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let e = ws_connect(tcp, &url, None).await.unwrap_err();
    assert!(e.to_string().contains("400"), "{e}");
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let e = ws_connect(tcp, &url, Some("chat")).await.unwrap_err();
    assert!(e.to_string().contains("400"), "{e}");
    assert_serving_ws(s.addr).await;
    s.shutdown().await;
}

async fn assert_serving_ws(addr: SocketAddr) {
    ws_connected(addr, "/mqtt", "probe").await;
}

/// A v5 client connected over WebSocket at `path` (CONNACK received), and its read buffer.
async fn ws_connected(
    addr: SocketAddr,
    path: &str,
    id: &str,
) -> (tokio_tungstenite::WebSocketStream<TcpStream>, BytesMut) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut ws = ws_connect(tcp, &format!("ws://{addr}{path}"), Some("mqtt"))
        .await
        .unwrap();
    ws.send(Message::binary(encode(
        &[Packet::Connect(Box::new(connect_packet(V5, id)))],
        V5,
    )))
    .await
    .unwrap();
    let mut rbuf = BytesMut::new();
    assert!(matches!(
        ws_recv(&mut ws, &mut rbuf).await,
        Some(Packet::ConnAck(_))
    ));
    (ws, rbuf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_are_limited_to_the_maximum_packet_size() {
    let mut config = Config::default();
    config.http.bind = ([127, 0, 0, 1], 0).into();
    let mut l = listener("ws");
    l.path = Some("/custom".into());
    config.listeners = vec![l];
    config.limits.max_packet_size = 4096;
    let s = start_server_with(&config).await;
    let (mut ws, mut rbuf) = ws_connected(s.addr, "/custom", "big").await;
    let _ = ws.send(Message::binary(vec![0u8; 8192])).await;
    assert!(ws_recv(&mut ws, &mut rbuf).await.is_none());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_secure() {
    let dir = TempDir::new("wss");
    let pki = Pki::new(&dir, "");
    let s = start(vec![pki.tls_listener("wss")]).await;
    let tls = tls_connect(s.addr, client_config(&pki.ca_file, None))
        .await
        .unwrap();
    let ws = ws_connect(
        tls,
        &format!("wss://localhost:{}/mqtt", s.addr.port()),
        Some("mqtt"),
    )
    .await
    .unwrap();
    ws_session(ws).await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_of_every_kind_side_by_side() {
    let dir = TempDir::new("multi");
    let pki = Pki::new(&dir, "");
    let s = start(vec![
        listener("tcp"),
        listener("ws"),
        pki.tls_listener("tls"),
        pki.tls_listener("wss"),
    ])
    .await;
    let addrs = s.addrs().to_vec();
    common::assert_serving(addrs[0]).await;
    assert_serving_ws(addrs[1]).await;
    let tls = tls_connect(addrs[2], client_config(&pki.ca_file, None))
        .await
        .unwrap();
    StreamClient::new(tls, V5)
        .connect(connect_packet(V5, "t"))
        .await;
    s.shutdown().await;
}
