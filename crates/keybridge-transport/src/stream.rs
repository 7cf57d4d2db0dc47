//! Reading the fixed-size header of a frame from a byte stream (vpcd's
//! length prefix, the simulated BLE link's operation header).

use std::io::{self, Read};

/// Fills `header`. `Ok(false)`: the stream ended cleanly, before its first
/// byte. A stream that ends part-way through it is an error, not a clean
/// end: the peer stopped in the middle of a frame.
pub(crate) fn read_header(r: &mut impl Read, header: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < header.len() {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the stream ended inside a frame's header",
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_end_only_before_the_first_byte() {
        let mut header = [0u8; 3];
        assert!(!read_header(&mut &[][..], &mut header).unwrap());
        assert!(read_header(&mut &[1, 2][..], &mut header).is_err());
        assert!(read_header(&mut &[1, 2, 3, 4][..], &mut header).unwrap());
        assert_eq!(header, [1, 2, 3]);
    }
}
