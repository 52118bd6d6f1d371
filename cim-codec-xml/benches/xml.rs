//! Encode and decode of a typical message (100-byte content, 6 short string fields).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::hint::black_box;

use bytes::BytesMut;
use cim_codec_xml::XmlCodec;
use cim_core::testing::typical_message;
use cim_core::{Frame, StreamCodec};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let frame = Frame::Message(typical_message());
    let mut codec = XmlCodec::new();
    let mut wire = BytesMut::new();
    codec.encode(&frame, &mut wire).unwrap();
    let wire = wire.freeze();
    let mut g = c.benchmark_group("xml");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode", |b| {
        let mut out = BytesMut::with_capacity(4096);
        b.iter(|| {
            out.clear();
            codec.encode(black_box(&frame), &mut out).unwrap();
            black_box(&out);
        })
    });
    g.bench_function("decode", |b| {
        b.iter(|| {
            let mut src = BytesMut::from(black_box(&wire[..]));
            black_box(codec.decode(&mut src).unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
