//! Encode and decode of a typical message (100-byte content, 6 short string fields).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::hint::black_box;

use cim_codec_json::JsonCodec;
use cim_core::testing::typical_message;
use cim_core::{Frame, Packet, PacketCodec};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let frame = Frame::Message(typical_message());
    let text = JsonCodec.encode_text(&frame).unwrap();
    let mut g = c.benchmark_group("json");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode", |b| {
        b.iter(|| black_box(JsonCodec.encode(black_box(&frame)).unwrap()))
    });
    g.bench_function("decode", |b| {
        b.iter(|| black_box(JsonCodec.decode(Packet::Text(black_box(&text))).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
