//! The applet's SIGN TRANSACTION (VERIFY + SIGN through the dispatcher).
//!
//! - `applet_verify_and_sign`: state kept in memory, so the figure is the
//!   card's CPU work, not the disk's.
//! - `applet_verify_and_sign_file`: the same on a state file in a temporary
//!   directory, every save durable, as a real card runs: VERIFY's try and
//!   SIGN's counter are written in place to the counters sidecar (one
//!   `fdatasync` each). The figure is mostly the disk's.
//! - `applet_verify_and_sign_file_whole_saves`: the same with every save
//!   writing the whole state file (temp file, fsync, rename, directory
//!   fsync), as before the sidecar: the two side by side in one run.
//! - `ecdsa_sign_p256_crate` / `ecdsa_sign_ring`: one signature over a
//!   payment's signed message, as SIGN CSR (`p256`, RFC 6979) and SIGN
//!   TRANSACTION (ring, key pair made once) make it.
use criterion::{criterion_group, criterion_main, Criterion};
use keybridge_card::{
    init_state, AutoApprove, Card, CardState, Context, FileStore, MemoryStore, StateStore,
    TransactionApplet,
};
use keybridge_proto::{AccountId, Challenge, ConfirmationPayload, Currency, Money, TransactionId};
use keybridge_transport::Command;
use rand::rngs::StdRng;
use rand::SeedableRng;

const PIN: &[u8] = b"123456";

/// A selected card with a key, and the VERIFY and SIGN commands of a payment.
struct Payment {
    card: Card,
    holder: AutoApprove,
    rng: StdRng,
    verify: Vec<u8>,
    sign: Vec<u8>,
}

impl Payment {
    fn new(state: CardState, store: Box<dyn StateStore>) -> Payment {
        let applet = TransactionApplet::new(state, store);
        let verify = Command::new(0, 0x20, 0, 0x80)
            .with_data(PIN.to_vec())
            .encode();
        let mut payment = Payment {
            card: Card::new().with_applet(Box::new(applet)),
            holder: AutoApprove,
            rng: StdRng::seed_from_u64(2),
            verify: verify.clone(),
            sign: Command::new(0, 0x2A, 0x9E, 0x9A)
                .with_data(payload())
                .with_le(256)
                .encode(),
        };
        let select = Command::new(0, 0xA4, 4, 0)
            .with_data(keybridge_proto::applet::AID.to_vec())
            .encode();
        let generate = Command::new(0, 0x47, 0, 0).with_le(256).encode();
        for apdu in [select, verify, generate] {
            let r = payment.run(&apdu);
            assert_eq!(&r[r.len() - 2..], &[0x90, 0x00]);
        }
        payment
    }

    fn run(&mut self, apdu: &[u8]) -> Vec<u8> {
        let mut context = Context {
            holder: &mut self.holder,
            rng: &mut self.rng,
            now_unix_s: 1_790_000_000,
        };
        self.card.process(apdu, &mut context)
    }

    /// VERIFY then SIGN TRANSACTION, both answered `9000`.
    fn pay(&mut self) {
        let verify = self.verify.clone();
        let r = self.run(&verify);
        assert_eq!(r, [0x90, 0x00]);
        let sign = self.sign.clone();
        let r = self.run(&sign);
        assert_eq!(&r[r.len() - 2..], &[0x90, 0x00]);
    }
}

/// A [`FileStore`] whose counters saves are whole saves (the trait's
/// default), as every save was before the counters sidecar.
struct WholeSaves(FileStore);

impl StateStore for WholeSaves {
    fn save(&mut self, state: &CardState) -> Result<(), keybridge_card::CardError> {
        self.0.save(state)
    }
}

fn payload() -> Vec<u8> {
    ConfirmationPayload {
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
    .expect("encodes")
}

fn bench(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let state = CardState::new(PIN, &mut rng).expect("fresh state");
    let mut payment = Payment::new(state, Box::new(MemoryStore::new()));
    c.bench_function("applet_verify_and_sign", |b| b.iter(|| payment.pay()));

    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("card.json");
    init_state(&path, std::str::from_utf8(PIN).expect("ASCII")).expect("state file");
    let state = CardState::load(&path).expect("state file loads");
    let mut payment = Payment::new(state, Box::new(FileStore::new(&path)));
    c.bench_function("applet_verify_and_sign_file", |b| b.iter(|| payment.pay()));

    let path = dir.path().join("whole.json");
    init_state(&path, std::str::from_utf8(PIN).expect("ASCII")).expect("state file");
    let state = CardState::load(&path).expect("state file loads");
    let mut payment = Payment::new(state, Box::new(WholeSaves(FileStore::new(&path))));
    c.bench_function("applet_verify_and_sign_file_whole_saves", |b| {
        b.iter(|| payment.pay())
    });

    let key = p256::ecdsa::SigningKey::random(&mut rng);
    let message = keybridge_proto::signed_message(&payload(), 1);
    c.bench_function("ecdsa_sign_p256_crate", |b| {
        b.iter(|| {
            let signature: p256::ecdsa::Signature =
                p256::ecdsa::signature::Signer::sign(&key, &message);
            signature.to_der()
        })
    });
    let random = ring::rand::SystemRandom::new();
    let scalar = key.to_bytes();
    let point = key.verifying_key().to_encoded_point(false);
    let pair = ring::signature::EcdsaKeyPair::from_private_key_and_public_key(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &scalar,
        point.as_bytes(),
        &random,
    )
    .expect("ring takes a p256 key");
    c.bench_function("ecdsa_sign_ring", |b| {
        b.iter(|| pair.sign(&random, &message).expect("signs"))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
