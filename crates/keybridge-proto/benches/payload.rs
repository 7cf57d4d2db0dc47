//! Payload encode/decode: done once per payment by the server (encode), the
//! relay and the card (decode).
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use keybridge_proto::{AccountId, Challenge, ConfirmationPayload, Currency, Money, TransactionId};

fn payload() -> ConfirmationPayload {
    ConfirmationPayload {
        origin: "keybridge.example".into(),
        transaction_id: TransactionId([7; 16]),
        challenge: Challenge([9; 32]),
        payer: AccountId::new("CN-6222-0001-0002").expect("valid"),
        payee: AccountId::new("bookshop").expect("valid"),
        payee_name: "Corner Bookshop".into(),
        amount: Money::new(1234, Currency::from_code("CNY").expect("known")),
        order_id: "ORD-2026-11-26-0001".into(),
        description: "Two paperbacks and a notebook".into(),
        created_at_unix_s: 1_790_000_000,
        expires_at_unix_s: 1_790_000_120,
    }
}

fn bench(c: &mut Criterion) {
    let p = payload();
    let bytes = p.encode().expect("encodes");
    c.bench_function("payload_encode", |b| b.iter(|| black_box(&p).encode()));
    c.bench_function("payload_decode", |b| {
        b.iter(|| ConfirmationPayload::decode(black_box(&bytes)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
