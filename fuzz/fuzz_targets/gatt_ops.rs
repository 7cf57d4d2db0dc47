//! The simulated BLE link's GATT operations (`ble::sim::read_op`, and
//! through it `GattOp::decode`) on an arbitrary byte stream, as the phone's
//! or the device's socket delivers it: never panics; every operation
//! carries at most VALUE_LEN_MAX bytes and re-encodes to exactly the bytes
//! it was read from; a stream ends cleanly only with nothing left (one cut
//! off, its header included, is an error); no single allocation exceeds one
//! operation, whatever its length field says. The first byte sets how many
//! bytes each read returns (1..=256).
#![no_main]
use keybridge_transport::ble::sim::{read_op, VALUE_LEN_MAX};
use libfuzzer_sys::fuzz_target;

mod chunked;
mod largest_alloc;

#[global_allocator]
static ALLOC: largest_alloc::LargestAlloc = largest_alloc::LargestAlloc;

fuzz_target!(|data: &[u8]| {
    largest_alloc::reset();
    chunked::read_all(
        data,
        |r| read_op(r),
        |op| {
            let again = op.encode().expect("an operation that was read encodes");
            assert!(again.len() <= 3 + VALUE_LEN_MAX);
            again
        },
    );
    assert!(largest_alloc::largest() <= 3 + VALUE_LEN_MAX);
});
