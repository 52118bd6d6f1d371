//! Message ids per second from one node: one caller, two callers at once (the machine's two
//! cores), and one caller with a high-water mark on disk while the clock runs ahead (so the mark
//! is rewritten as it goes).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cim_core::engine::MessageIds;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("message_ids");
    g.throughput(Throughput::Elements(1));
    g.bench_function("one caller", |b| {
        let ids = MessageIds::new(1);
        b.iter(|| black_box(ids.next()))
    });
    g.bench_function("two callers", |b| {
        let ids = Arc::new(MessageIds::new(1));
        b.iter_custom(|iters| {
            let start = Instant::now();
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let ids = Arc::clone(&ids);
                    std::thread::spawn(move || {
                        for _ in 0..iters / 2 {
                            black_box(ids.next());
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            start.elapsed()
        })
    });
    g.bench_function("one caller, high-water mark", |b| {
        let dir = tempfile::tempdir().unwrap();
        let ids = MessageIds::open(1, dir.path()).unwrap();
        b.iter(|| black_box(ids.next()))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
