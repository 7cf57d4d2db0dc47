//! vpcd's wire framing (`vpcd::read_frame`) on an arbitrary byte stream, as
//! a card or reader socket delivers it: never panics; every frame is at most
//! FRAME_LEN_MAX bytes and re-encodes (`write_frame`) to exactly the bytes
//! it was read from; a stream ends cleanly only with nothing left, and a
//! truncated frame (its length prefix included) is an error; no single
//! allocation exceeds one frame and its prefix, whatever the prefix says.
//! The first byte sets how many bytes each read returns (1..=256), as TCP
//! delivers a frame in pieces.
#![no_main]
use keybridge_transport::vpcd::{read_frame, write_frame, FRAME_LEN_MAX};
use libfuzzer_sys::fuzz_target;

mod chunked;
mod largest_alloc;

#[global_allocator]
static ALLOC: largest_alloc::LargestAlloc = largest_alloc::LargestAlloc;

fuzz_target!(|data: &[u8]| {
    largest_alloc::reset();
    chunked::read_all(
        data,
        |r| read_frame(r),
        |frame| {
            assert!(frame.len() <= FRAME_LEN_MAX);
            let mut again = Vec::new();
            write_frame(&mut again, &frame).expect("a frame that was read can be written");
            again
        },
    );
    assert!(largest_alloc::largest() <= FRAME_LEN_MAX + 2);
});
