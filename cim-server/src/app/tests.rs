#![allow(clippy::unwrap_used)]
use super::*;

/// Settings on loopback, every port picked by the system, messages kept in memory.
fn loopback() -> Settings {
    let mut s = Settings::default();
    s.tcp.port = 0;
    s.websocket.port = 0;
    s.xml.enabled = true;
    s.xml.port = 0;
    s.http.port = 0;
    s.store.backend = StoreBackend::Memory;
    s
}

/// Built without the HTTP API, the default configuration starts: the TCP, WebSocket and
/// XML listeners serve, and no HTTP listener is opened.
#[tokio::test]
async fn without_http_the_defaults_start_the_other_listeners() {
    let app = App::start(&loopback()).await.unwrap();
    let addrs = app.addrs();
    let protocols: Vec<_> = addrs.iter().map(|(p, _)| *p).collect();
    assert_eq!(protocols, ["tcp", "websocket", "xml"], "{addrs:?}");
    let ws = addrs.iter().find(|(p, _)| *p == "websocket").unwrap().1;
    let stream = tokio::net::TcpStream::connect(ws).await.unwrap();
    let (mut socket, response) = tokio_tungstenite::client_async(format!("ws://{ws}/"), stream)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    socket.close(None).await.unwrap();
    for (_, addr) in addrs.iter().filter(|(p, _)| *p != "websocket") {
        tokio::net::TcpStream::connect(addr).await.unwrap();
    }
    assert!(app.shutdown(Duration::from_secs(5)).await);
}

/// `http.enabled = true` set in-process is refused too, before any socket opens.
#[tokio::test]
async fn without_http_enabled_true_is_refused_at_start() {
    let mut s = loopback();
    s.http.enabled = true;
    let Err(e) = App::start(&s).await else {
        panic!("started with http.enabled = true and no HTTP API");
    };
    let e = e.to_string();
    assert!(e.contains("`http.enabled` = true"), "{e}");
    assert!(e.contains("without the `http` feature"), "{e}");
}
