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
