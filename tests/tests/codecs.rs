//! The codecs across a real socket, and against each other.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

use bytes::BytesMut;
use cim_codec_binary::BinaryCodec;
use cim_codec_json::JsonCodec;
use cim_codec_xml::XmlCodec;
use cim_core::{Frame, PacketCodec, StreamCodec};

/// The worked example of docs/protocol.md section 2: a stock client's bind, then a PONG.
const BIND_THEN_PONG: &[u8] = &[
    0x03, 0x36, 0x00, 0x0a, 0x0b, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x5f, 0x62, 0x69, 0x6e, 0x64,
    0x10, 0x80, 0xd0, 0x95, 0xff, 0xbc, 0x31, 0x1a, 0x0c, 0x0a, 0x03, 0x75, 0x69, 0x64, 0x12, 0x05,
    0x31, 0x30, 0x30, 0x30, 0x30, 0x1a, 0x12, 0x0a, 0x07, 0x63, 0x68, 0x61, 0x6e, 0x6e, 0x65, 0x6c,
    0x12, 0x07, 0x61, 0x6e, 0x64, 0x72, 0x6f, 0x69, 0x64, //
    0x00, 0x04, 0x00, 0x50, 0x4f, 0x4e, 0x47,
];

/// Reads frames from a socket until it closes.
fn read_frames(mut codec: impl StreamCodec, mut sock: TcpStream) -> Vec<Frame> {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut chunk = [0u8; 7];
    loop {
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            frames.push(f);
        }
        let n = sock.read(&mut chunk).unwrap();
        if n == 0 {
            assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
            return frames;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn stock_client_bytes_over_tcp_one_byte_at_a_time() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let client = thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        for b in BIND_THEN_PONG {
            s.write_all(&[*b]).unwrap();
        }
    });
    let (sock, _) = listener.accept().unwrap();
    let frames = read_frames(BinaryCodec::new(), sock);
    client.join().unwrap();
    let [Frame::Sent(bind), Frame::Pong] = &frames[..] else {
        panic!("{frames:?}")
    };
    assert_eq!(bind.key, "client_bind");
    assert_eq!(bind.get("uid"), "10000");
    assert_eq!(bind.get("channel"), "android");
    assert_eq!(bind.timestamp, 1_700_000_000_000);
}

#[test]
fn a_frame_is_the_same_in_every_codec() {
    let mut src = BytesMut::from(BIND_THEN_PONG);
    let frames = [
        BinaryCodec::new().decode(&mut src).unwrap().unwrap(),
        BinaryCodec::new().decode(&mut src).unwrap().unwrap(),
    ];
    for frame in &frames {
        let json = JsonCodec.encode(frame).unwrap();
        assert_eq!(&JsonCodec.decode(json.as_packet()).unwrap(), frame);

        let mut xml = XmlCodec::new();
        let mut wire = BytesMut::new();
        xml.encode(frame, &mut wire).unwrap();
        assert_eq!(xml.decode(&mut wire).unwrap().as_ref(), Some(frame));
    }
}
