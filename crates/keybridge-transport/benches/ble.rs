//! BLE framing: a SIGN TRANSACTION APDU (about 300 bytes) cut into fragments
//! and put back together, at the smallest and a common ATT MTU.
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use keybridge_transport::ble::frame::{Cmd, FragmentLen, Message};
use keybridge_transport::ble::reassembly::Reassembler;

fn bench(c: &mut Criterion) {
    let message = Message::new(Cmd::Msg, vec![0x71; 300]);
    let mut group = c.benchmark_group("ble");
    for mtu in [23u16, 185] {
        let len = FragmentLen::from_att_mtu(mtu).expect("valid MTU");
        group.bench_with_input(BenchmarkId::new("fragment_300", mtu), &len, |b, &len| {
            b.iter(|| black_box(&message).fragments(len).expect("fits").count())
        });
        let fragments: Vec<Vec<u8>> = message.fragments(len).expect("fits").collect();
        group.bench_with_input(BenchmarkId::new("reassemble_300", mtu), &len, |b, &len| {
            b.iter(|| {
                let mut r = Reassembler::new(len, 1_000);
                let mut done = None;
                for f in &fragments {
                    done = r.push(f, 0).expect("valid");
                }
                done.expect("complete")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
