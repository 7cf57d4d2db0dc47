//! A byte stream that hands out at most `chunk` bytes per read, as a socket
//! delivers a frame in pieces (for the stream targets).
use std::io::Read;

pub struct Chunked<'a> {
    pub rest: &'a [u8],
    pub chunk: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.rest.len());
        let (head, tail) = self.rest.split_at(n);
        buf[..n].copy_from_slice(head);
        self.rest = tail;
        Ok(n)
    }
}

/// What the stream targets check: `data`'s first byte sets how many bytes
/// each read returns (1..=256), the rest is the stream. `read` takes items
/// from it until it ends: each `encode`s to exactly the bytes it was read
/// from, a clean end comes only with nothing left, an error only with bytes
/// left (a cut-off item, its header included).
pub fn read_all<T, E>(
    data: &[u8],
    mut read: impl FnMut(&mut Chunked<'_>) -> Result<Option<T>, E>,
    mut encode: impl FnMut(T) -> Vec<u8>,
) {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let mut r = Chunked {
        rest: stream,
        chunk: usize::from(chunk) + 1,
    };
    let mut offset = 0;
    loop {
        match read(&mut r) {
            Ok(Some(item)) => {
                let again = encode(item);
                assert_eq!(again, stream[offset..offset + again.len()]);
                offset += again.len();
            }
            Ok(None) => {
                assert_eq!(stream.len(), offset, "clean end with bytes left");
                return;
            }
            Err(_) => {
                assert!(
                    stream.len() > offset,
                    "error where the stream ended cleanly"
                );
                return;
            }
        }
    }
}
