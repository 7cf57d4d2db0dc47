//! The applet's SIGN TRANSACTION (VERIFY + SIGN through the dispatcher, state
//! kept in memory so the figure is the card's CPU work, not the disk's).
use criterion::{criterion_group, criterion_main, Criterion};
use keybridge_card::{AutoApprove, Card, CardState, Context, MemoryStore, TransactionApplet};
use keybridge_proto::{AccountId, Challenge, ConfirmationPayload, Currency, Money, TransactionId};
use keybridge_transport::Command;
use rand::SeedableRng;

fn bench(c: &mut Criterion) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let state = CardState::new(b"123456", &mut rng).expect("fresh state");
    let applet = TransactionApplet::new(state, Box::new(MemoryStore::new()));
    let mut card = Card::new().with_applet(Box::new(applet));
    let mut holder = AutoApprove;
    let mut run = |card: &mut Card, apdu: &[u8]| {
        let mut context = Context {
            holder: &mut holder,
            rng: &mut rng,
            now_unix_s: 1_790_000_000,
        };
        card.process(apdu, &mut context)
    };
    let select = Command::new(0, 0xA4, 4, 0)
        .with_data(keybridge_proto::applet::AID.to_vec())
        .encode();
    let verify = Command::new(0, 0x20, 0, 0x80)
        .with_data(b"123456".to_vec())
        .encode();
    run(&mut card, &select);
    run(&mut card, &verify);
    run(
        &mut card,
        &Command::new(0, 0x47, 0, 0).with_le(256).encode(),
    );
    let payload = ConfirmationPayload {
        origin: "keybridge.example".into(),
        transaction_id: TransactionId([7; 16]),
        challenge: Challenge([9; 32]),
        payer: AccountId::new("alice").expect("valid"),
        payee: AccountId::new("bookshop").expect("valid"),
        payee_name: "Corner Bookshop".into(),
        amount: Money::new(1234, Currency::from_code("CNY").expect("known")),
        order_id: "ORD-1".into(),
        description: "Two paperbacks".into(),
        created_at_unix_s: 1_790_000_000,
        expires_at_unix_s: 1_790_000_120,
    }
    .encode()
    .expect("encodes");
    let sign = Command::new(0, 0x2A, 0x9E, 0x9A)
        .with_data(payload)
        .with_le(256)
        .encode();
    c.bench_function("applet_verify_and_sign", |b| {
        b.iter(|| {
            run(&mut card, &verify);
            let r = run(&mut card, &sign);
            assert_eq!(&r[r.len() - 2..], &[0x90, 0x00]);
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
