//! APDU codec: every card exchange parses and encodes a few of these.
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use keybridge_transport::{Command, Response};

fn bench(c: &mut Criterion) {
    let sign = Command::new(0, 0x2A, 0x9E, 0x9A)
        .with_data(vec![0x71; 300])
        .with_le(256);
    let encoded = sign.encode();
    c.bench_function("apdu_encode_extended_300", |b| {
        b.iter(|| black_box(&sign).encode())
    });
    c.bench_function("apdu_parse_extended_300", |b| {
        b.iter(|| Command::parse(black_box(&encoded)))
    });
    let chain = sign.clone();
    c.bench_function("apdu_chain_300", |b| {
        b.iter(|| black_box(chain.clone()).into_chain(255))
    });
    let response = [vec![0u8; 75], vec![0x90, 0x00]].concat();
    c.bench_function("response_parse_77", |b| {
        b.iter(|| Response::parse(black_box(&response)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
