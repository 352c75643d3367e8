//! Kafka's framing: every request and response is a big-endian `i32` size
//! followed by that many bytes.

use bytes::{Buf, Bytes, BytesMut};

/// Why the bytes a client sent cannot be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("request of {size} bytes is over the limit of {max}")]
    TooLarge { size: u64, max: usize },
    #[error("negative request size {0}")]
    Negative(i32),
}

/// Takes one whole request off the front of `buf`, if it holds one. The size
/// is checked against `max_bytes` before any byte of the body is awaited, so
/// a client announcing 2 GiB gets an error, not a 2 GiB buffer.
pub fn next_request(buf: &mut BytesMut, max_bytes: usize) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let size = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let size = usize::try_from(size).map_err(|_| FrameError::Negative(size))?;
    if size > max_bytes {
        return Err(FrameError::TooLarge {
            size: size as u64,
            max: max_bytes,
        });
    }
    if buf.len() < 4 + size {
        buf.reserve(4 + size - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(size).freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn waits_for_a_whole_request_and_refuses_absurd_sizes() {
        let mut b = BytesMut::from(&[0, 0, 0, 3, 1, 2][..]);
        assert_eq!(next_request(&mut b, 10), Ok(None));
        b.extend_from_slice(&[3, 0, 0]);
        assert_eq!(
            next_request(&mut b, 10),
            Ok(Some(Bytes::from_static(&[1, 2, 3])))
        );
        assert_eq!(&b[..], &[0, 0]);
        let mut huge = BytesMut::from(&0x7fff_ffffi32.to_be_bytes()[..]);
        assert!(matches!(
            next_request(&mut huge, 1 << 20),
            Err(FrameError::TooLarge { .. })
        ));
        let mut neg = BytesMut::from(&(-1i32).to_be_bytes()[..]);
        assert_eq!(next_request(&mut neg, 10), Err(FrameError::Negative(-1)));
    }

    proptest! {
        #[test]
        fn any_bytes_frame_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut b = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = next_request(&mut b, 16) {}
        }
    }
}
