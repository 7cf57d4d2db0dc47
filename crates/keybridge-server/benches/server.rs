//! The server's per-payment work, measured apart: signature verification,
//! certificate path validation (cold, and through the cache every payment
//! after the first one uses), and ledger commits one at a time versus
//! concurrently (where group commit lets writes share one fsync), and the
//! request-rate check every terminal request passes.
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use keybridge_proto::{signed_message, AccountId, Currency};
use keybridge_server::ca::Ca;
use keybridge_server::pki::{self, PathCache, TrustStore};
use keybridge_server::store::{NewAccount, SqliteStore, Store};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{DerSignature, SigningKey};

const NOW: u64 = 1_790_000_000;

fn crypto(c: &mut Criterion) {
    let ca = Ca::generate("keybridge.bench", NOW).expect("CA");
    let key = SigningKey::random(&mut rand::rngs::OsRng);
    let point = key.verifying_key().to_encoded_point(false);
    let account = AccountId::new("alice").expect("valid");
    let cert = ca
        .issue_device_certificate(
            "dev_bench",
            &account,
            point.as_bytes(),
            "keybridge.bench",
            NOW,
        )
        .expect("issued");
    let trust = TrustStore::new(vec![ca.cert_der().to_vec()], Vec::new()).expect("trust store");
    let now = i64::try_from(NOW + 10).expect("fits");

    c.bench_function("path_validate_cold", |b| {
        b.iter(|| pki::validate(&trust, &cert, now).expect("valid"))
    });
    let cache = PathCache::default();
    cache
        .get_or_validate(&trust, "dev_bench", &cert, now)
        .expect("valid");
    c.bench_function("path_validate_cached", |b| {
        b.iter(|| {
            cache
                .get_or_validate(&trust, "dev_bench", &cert, now)
                .expect("valid")
        })
    });

    let path = pki::validate(&trust, &cert, now).expect("valid");
    let message = signed_message(&[0x71; 300], 7);
    let signature: DerSignature = key.sign(&message);
    c.bench_function("signature_verify_ring_p256", |b| {
        b.iter(|| assert!(path.key.verify(&message, signature.as_bytes())))
    });
}

fn ledger(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(SqliteStore::open(&dir.path().join("bench.sqlite"), NOW).expect("store"));
    let cny = Currency::from_code("CNY").expect("known");
    let mut n = 0u64;
    let mut group = c.benchmark_group("ledger_commit");
    group.sample_size(10);
    // Each write is a double-entry opening transfer plus the account row and
    // an audit row, durable (WAL, synchronous=FULL) before it returns.
    for writes in [1usize, 100] {
        group.bench_with_input(
            BenchmarkId::new("concurrent_writes", writes),
            &writes,
            |b, &writes| {
                b.iter(|| {
                    rt.block_on(async {
                        let mut tasks = Vec::with_capacity(writes);
                        for _ in 0..writes {
                            n += 1;
                            let store = Arc::clone(&store);
                            let account = NewAccount {
                                id: AccountId::new(&format!("acct-{n}")).expect("valid"),
                                display_name: "Bench".into(),
                                currency: cny,
                                opening_balance_minor: 100,
                            };
                            tasks.push(tokio::spawn(async move {
                                store.create_account(account, NOW).await.expect("created")
                            }));
                        }
                        for t in tasks {
                            t.await.expect("task");
                        }
                    })
                })
            },
        );
    }
    group.finish();
}

/// `TerminalRate::admit` within the rate: what every terminal request pays
/// (the bench runs its payments with the check on and never reached).
fn rate(c: &mut Criterion) {
    let rate = keybridge_server::rate::TerminalRate::new(1_000_000_000).expect("a rate");
    let terminal = keybridge_server::store::TerminalRecord {
        id: "term_0123456789abcdef".to_owned(),
        name: "till".to_owned(),
        disabled_at_unix_s: None,
    };
    c.bench_function("terminal_rate_admit", |b| {
        b.iter(|| rate.admit(&terminal).expect("within the rate"))
    });
}

criterion_group!(benches, crypto, ledger, rate);
criterion_main!(benches);
