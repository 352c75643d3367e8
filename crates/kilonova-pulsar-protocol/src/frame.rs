//! Frames of the Pulsar binary protocol.
//!
//! ```text
//! simple:  [u32 total_size][u32 command_size][BaseCommand]
//! payload: [u32 total_size][u32 command_size][BaseCommand]
//!          ([u16 0x0e02][u32 size][BrokerEntryMetadata])?       broker → client only
//!          [u16 0x0e01][u32 crc32c][u32 metadata_size][MessageMetadata][payload]
//! ```
//! All integers big-endian; `total_size` counts everything after itself; the
//! CRC32C covers everything after the checksum field. The span from `0x0e01` to
//! the end is kept as one [`Bytes`] ([`Payload::raw`]): the broker stores it and
//! sends it back in MESSAGE frames unchanged.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

use crate::proto::{
    BaseCommand, BrokerEntryMetadata, CompressionType, MessageMetadata, SingleMessageMetadata,
};

pub const MAGIC_CRC32C: u16 = 0x0e01;
pub const MAGIC_BROKER_ENTRY_METADATA: u16 = 0x0e02;
/// The default largest message (5 MiB, Pulsar's default) plus room for headers.
pub const DEFAULT_MAX_FRAME_BYTES: usize = (5 << 20) + (10 << 10);

/// Why bytes are not a valid frame. After any of these the connection's byte
/// stream cannot be trusted: the caller answers with an error and closes.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {size} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { size: usize, max: usize },
    #[error("frame size {0} is too small to hold a command")]
    FrameTooSmall(usize),
    #[error("command size {command} does not fit in a frame of {frame} bytes")]
    CommandSize { command: usize, frame: usize },
    #[error("invalid command: {0}")]
    Command(prost::DecodeError),
    #[error("payload is truncated: {0}")]
    Truncated(&'static str),
    #[error("invalid message metadata: {0}")]
    Metadata(prost::DecodeError),
    #[error("invalid broker entry metadata: {0}")]
    BrokerEntryMetadata(prost::DecodeError),
    #[error("invalid batch: {0}")]
    Batch(&'static str),
}

/// A payload-carrying command's message part.
#[derive(Clone, Debug, PartialEq)]
pub struct Payload {
    /// `[0x0e01][crc32c][metadata size][metadata][payload]` exactly as received
    /// (for frames without a checksum: `[metadata size][metadata][payload]`).
    pub raw: Bytes,
    /// Whether the frame carried a checksum and it matched (true when absent).
    pub checksum_ok: bool,
    pub metadata: MessageMetadata,
    /// The message bytes (a batch for batched messages), a slice of `raw`.
    pub data: Bytes,
    /// Present on frames a broker sent with broker entry metadata.
    pub broker_entry_metadata: Option<BrokerEntryMetadata>,
}

impl Payload {
    /// Messages in this entry: `num_messages_in_batch`, at least 1.
    pub fn message_count(&self) -> u32 {
        message_count(&self.metadata)
    }
}

/// Messages an entry with this metadata holds (1 for a non-batched message).
pub fn message_count(metadata: &MessageMetadata) -> u32 {
    metadata
        .num_messages_in_batch
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n > 0)
        .unwrap_or(1)
}

/// The fewest bytes one message of a batch takes before compression: its
/// 4-byte metadata size and a `SingleMessageMetadata` holding at least its
/// required `payload_size` (a tag byte and a one-byte varint).
pub const MIN_BATCHED_MESSAGE_BYTES: u64 = 6;

impl Payload {
    /// The entry's message count, if its bytes can hold that many messages:
    /// a batch's `num_messages_in_batch` is the client's word, and it sizes
    /// permits, backlogs and rate charges, so a count the payload cannot
    /// hold (2^31 messages in one byte) is refused. A compressed batch is
    /// measured by its declared uncompressed size, which may not exceed
    /// `max_uncompressed_bytes`.
    pub fn checked_message_count(&self, max_uncompressed_bytes: u64) -> Result<u32, DecodeError> {
        let count = self.message_count();
        if count == 1 || self.metadata.chunk_id.is_some() {
            return Ok(count);
        }
        let bytes = match self.metadata.compression() {
            CompressionType::None => self.data.len() as u64,
            _ => {
                let declared = u64::from(self.metadata.uncompressed_size.unwrap_or(0));
                if declared > max_uncompressed_bytes {
                    return Err(DecodeError::Batch("uncompressed size over the limit"));
                }
                declared
            }
        };
        if u64::from(count) * MIN_BATCHED_MESSAGE_BYTES > bytes {
            return Err(DecodeError::Batch(
                "num_messages_in_batch is more than the payload can hold",
            ));
        }
        Ok(count)
    }
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub command: BaseCommand,
    pub payload: Option<Payload>,
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn be_u16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

/// Decodes one frame from the front of `buf`. `Ok(None)`: more bytes are needed.
/// A frame larger than `max_frame_bytes` is refused as soon as its size is read,
/// before its body arrives or anything is allocated for it.
pub fn decode(buf: &mut BytesMut, max_frame_bytes: usize) -> Result<Option<Frame>, DecodeError> {
    let Some(total) = be_u32(buf, 0) else {
        return Ok(None);
    };
    let total = total as usize;
    if total > max_frame_bytes {
        return Err(DecodeError::FrameTooLarge {
            size: total,
            max: max_frame_bytes,
        });
    }
    if total < 4 {
        return Err(DecodeError::FrameTooSmall(total));
    }
    if buf.len() < 4 + total {
        buf.reserve(4 + total - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(4 + total).freeze();
    frame.advance(4);
    decode_body(frame).map(Some)
}

/// Decodes a frame body (everything after `total_size`).
fn decode_body(body: Bytes) -> Result<Frame, DecodeError> {
    let frame_len = body.len();
    let command_size = be_u32(&body, 0).ok_or(DecodeError::FrameTooSmall(frame_len))? as usize;
    if command_size > frame_len - 4 {
        return Err(DecodeError::CommandSize {
            command: command_size,
            frame: frame_len,
        });
    }
    let command =
        BaseCommand::decode(body.slice(4..4 + command_size)).map_err(DecodeError::Command)?;
    let rest = body.slice(4 + command_size..);
    let payload = if rest.is_empty() {
        None
    } else {
        Some(decode_payload(rest)?)
    };
    Ok(Frame { command, payload })
}

/// Decodes the message part of a payload command.
pub fn decode_payload(mut rest: Bytes) -> Result<Payload, DecodeError> {
    let mut broker_entry_metadata = None;
    if be_u16(&rest, 0) == Some(MAGIC_BROKER_ENTRY_METADATA) {
        let size =
            be_u32(&rest, 2).ok_or(DecodeError::Truncated("broker entry metadata size"))? as usize;
        let end = 6usize
            .checked_add(size)
            .filter(|e| *e <= rest.len())
            .ok_or(DecodeError::Truncated("broker entry metadata"))?;
        broker_entry_metadata = Some(
            BrokerEntryMetadata::decode(rest.slice(6..end))
                .map_err(DecodeError::BrokerEntryMetadata)?,
        );
        rest = rest.slice(end..);
    }
    let raw = rest.clone();
    let (checksum_ok, meta_at) = if be_u16(&rest, 0) == Some(MAGIC_CRC32C) {
        let expected = be_u32(&rest, 2).ok_or(DecodeError::Truncated("checksum"))?;
        let covered = rest.get(6..).ok_or(DecodeError::Truncated("checksum"))?;
        (crc32c::crc32c(covered) == expected, 6)
    } else {
        (true, 0)
    };
    let meta_size = be_u32(&rest, meta_at).ok_or(DecodeError::Truncated("metadata size"))? as usize;
    let meta_start = meta_at + 4;
    let meta_end = meta_start
        .checked_add(meta_size)
        .filter(|e| *e <= rest.len())
        .ok_or(DecodeError::Truncated("metadata"))?;
    let metadata =
        MessageMetadata::decode(rest.slice(meta_start..meta_end)).map_err(DecodeError::Metadata)?;
    let data = rest.slice(meta_end..);
    Ok(Payload {
        raw,
        checksum_ok,
        metadata,
        data,
        broker_entry_metadata,
    })
}

/// Appends a simple (payload-less) command frame.
pub fn encode_command(command: &BaseCommand, dst: &mut BytesMut) {
    encode_header(command, 0, dst);
}

/// A SEND_RECEIPT's fields: the broker answers every stored SEND with one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendReceipt {
    pub producer_id: u64,
    pub sequence_id: u64,
    pub highest_sequence_id: u64,
    pub ledger_id: u64,
    pub entry_id: u64,
}

/// `BaseCommand.type` (field 1) and `BaseCommand.send_receipt` (field 7),
/// `CommandSendReceipt.message_id` (field 3) of PulsarApi.proto.
const TYPE_FIELD: u32 = 1;
const SEND_RECEIPT_FIELD: u32 = 7;
const SEND_RECEIPT_TYPE: u64 = 7;
const RECEIPT_MESSAGE_ID_FIELD: u32 = 3;

/// Field-by-field protobuf encoding for the commands sent once per message
/// (receipts, MESSAGE headers). Every field number they use is below 16, so
/// a field's key is one byte.
mod by_field {
    use bytes::{BufMut, BytesMut};
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};

    /// A varint field's bytes: key and value.
    pub(super) fn varint_len(v: u64) -> usize {
        1 + encoded_len_varint(v)
    }

    /// A nested message's bytes: key, length and the `len` bytes.
    pub(super) fn nested_len(len: usize) -> usize {
        1 + encoded_len_varint(len as u64) + len
    }

    pub(super) fn varint(field: u32, v: u64, dst: &mut BytesMut) {
        encode_key(field, WireType::Varint, dst);
        encode_varint(v, dst);
    }

    /// A nested message's key and length; its fields follow.
    pub(super) fn nested(field: u32, len: usize, dst: &mut BytesMut) {
        encode_key(field, WireType::LengthDelimited, dst);
        encode_varint(len as u64, dst);
    }

    /// The frame's total and command sizes, for a command of `command_len`
    /// bytes and a payload of `raw_len`, with room reserved for the command.
    pub(super) fn frame_sizes(command_len: usize, raw_len: usize, dst: &mut BytesMut) {
        dst.reserve(8 + command_len);
        dst.put_u32((4 + command_len + raw_len) as u32);
        dst.put_u32(command_len as u32);
    }
}

/// Appends a SEND_RECEIPT frame: the bytes [`encode_command`] writes for the
/// same receipt (`BaseCommand { type: SEND_RECEIPT, send_receipt }` with
/// `message_id { ledgerId, entryId }` and `highest_sequence_id`), encoded
/// field by field so that a receipt — one per SEND — builds no command
/// struct and allocates nothing beyond `dst`'s growth.
pub fn encode_send_receipt(r: &SendReceipt, dst: &mut BytesMut) {
    use by_field::{frame_sizes, nested, nested_len, varint, varint_len};
    let id_len = varint_len(r.ledger_id) + varint_len(r.entry_id);
    let receipt_len = varint_len(r.producer_id)
        + varint_len(r.sequence_id)
        + nested_len(id_len)
        + varint_len(r.highest_sequence_id);
    let command_len = varint_len(SEND_RECEIPT_TYPE) + nested_len(receipt_len);
    frame_sizes(command_len, 0, dst);
    varint(TYPE_FIELD, SEND_RECEIPT_TYPE, dst);
    nested(SEND_RECEIPT_FIELD, receipt_len, dst);
    varint(1, r.producer_id, dst);
    varint(2, r.sequence_id, dst);
    nested(RECEIPT_MESSAGE_ID_FIELD, id_len, dst);
    varint(1, r.ledger_id, dst);
    varint(2, r.entry_id, dst);
    varint(4, r.highest_sequence_id, dst);
}

/// A MESSAGE command's fields as the broker dispatches an entry: the
/// message id is the entry's (no partition, no batch index) and no ack set
/// travels with it (a partly acknowledged batch's MESSAGE is built as a
/// whole [`BaseCommand`] instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageFields {
    pub consumer_id: u64,
    pub ledger_id: u64,
    pub entry_id: u64,
    pub redelivery_count: u32,
    pub consumer_epoch: Option<u64>,
}

/// `BaseCommand.message` (field 9), its type MESSAGE (9), and
/// `CommandMessage`'s fields of PulsarApi.proto.
const MESSAGE_FIELD: u32 = 9;
const MESSAGE_TYPE: u64 = 9;
const MESSAGE_ID_FIELD: u32 = 2;
const REDELIVERY_COUNT_FIELD: u32 = 3;
const CONSUMER_EPOCH_FIELD: u32 = 5;

/// The longest header [`encode_message_header`] writes: the frame's two
/// sizes (8), the type (2), the command's key and length (2), and the
/// command: consumer id (11), message id (2 + 22), redelivery count (6) and
/// consumer epoch (11).
pub const MESSAGE_HEADER_MAX_BYTES: usize = 8 + 2 + 2 + 11 + 24 + 6 + 11;

/// Appends a MESSAGE frame's header for a payload of `raw_len` bytes: the
/// bytes [`encode_header`] writes for `BaseCommand { type: MESSAGE, message }`
/// with the same fields, encoded field by field so that dispatching an entry
/// builds no command struct and allocates nothing beyond `dst`'s growth.
pub fn encode_message_header(m: &MessageFields, raw_len: usize, dst: &mut BytesMut) {
    use by_field::{frame_sizes, nested, nested_len, varint, varint_len};
    let id_len = varint_len(m.ledger_id) + varint_len(m.entry_id);
    let message_len = varint_len(m.consumer_id)
        + nested_len(id_len)
        + varint_len(u64::from(m.redelivery_count))
        + m.consumer_epoch.map_or(0, varint_len);
    let command_len = varint_len(MESSAGE_TYPE) + nested_len(message_len);
    frame_sizes(command_len, raw_len, dst);
    varint(TYPE_FIELD, MESSAGE_TYPE, dst);
    nested(MESSAGE_FIELD, message_len, dst);
    varint(1, m.consumer_id, dst);
    nested(MESSAGE_ID_FIELD, id_len, dst);
    varint(1, m.ledger_id, dst);
    varint(2, m.entry_id, dst);
    varint(REDELIVERY_COUNT_FIELD, u64::from(m.redelivery_count), dst);
    if let Some(epoch) = m.consumer_epoch {
        varint(CONSUMER_EPOCH_FIELD, epoch, dst);
    }
}

/// Appends everything of a payload command frame except the `raw` payload span,
/// so the caller can send `raw` (stored bytes) without copying it.
pub fn encode_header(command: &BaseCommand, raw_len: usize, dst: &mut BytesMut) {
    let command_size = command.encoded_len();
    dst.reserve(8 + command_size);
    dst.put_u32((4 + command_size + raw_len) as u32);
    dst.put_u32(command_size as u32);
    // Encoding into a BytesMut with reserved capacity cannot fail.
    let _ = command.encode(dst);
}

/// Appends a whole payload command frame.
pub fn encode_payload_command(command: &BaseCommand, raw: &[u8], dst: &mut BytesMut) {
    encode_header(command, raw.len(), dst);
    dst.put_slice(raw);
}

/// Appends a whole SEND-style frame whose payload is built from `metadata` and
/// `data` in place: `data` is copied once, into `dst`.
pub fn encode_message(
    command: &BaseCommand,
    metadata: &MessageMetadata,
    data: &[u8],
    dst: &mut BytesMut,
) {
    let meta_len = metadata.encoded_len();
    let raw_len = 10 + meta_len + data.len();
    encode_header(command, raw_len, dst);
    dst.reserve(raw_len);
    dst.put_u16(MAGIC_CRC32C);
    let crc_at = dst.len();
    dst.put_u32(0);
    let covered_from = dst.len();
    dst.put_u32(meta_len as u32);
    let _ = metadata.encode(dst);
    dst.put_slice(data);
    let crc = crc32c::crc32c(&dst[covered_from..]);
    dst[crc_at..crc_at + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Builds `[0x0e01][crc32c][metadata size][metadata][data]`: a payload as a client sends it.
pub fn build_payload(metadata: &MessageMetadata, data: &[u8]) -> Bytes {
    let meta_len = metadata.encoded_len();
    let mut b = BytesMut::with_capacity(14 + meta_len + data.len());
    b.put_u16(MAGIC_CRC32C);
    b.put_u32(0);
    b.put_u32(meta_len as u32);
    let _ = metadata.encode(&mut b);
    b.put_slice(data);
    let crc = crc32c::crc32c(&b[6..]);
    b[2..6].copy_from_slice(&crc.to_be_bytes());
    b.freeze()
}

/// [`build_payload`], kept as the [`Payload`] it decodes to: a broker that
/// builds an entry itself need not check the checksum it just computed nor
/// decode the metadata it just encoded.
pub fn built_payload(metadata: MessageMetadata, data: &[u8]) -> Payload {
    let raw = build_payload(&metadata, data);
    let data = raw.slice(raw.len() - data.len()..);
    Payload {
        raw,
        checksum_ok: true,
        metadata,
        data,
        broker_entry_metadata: None,
    }
}

/// Builds the `[0x0e02][size][BrokerEntryMetadata]` prefix a broker puts before a
/// stored payload for clients that asked for it.
pub fn broker_entry_metadata_prefix(meta: &BrokerEntryMetadata) -> Bytes {
    let len = meta.encoded_len();
    let mut b = BytesMut::with_capacity(6 + len);
    b.put_u16(MAGIC_BROKER_ENTRY_METADATA);
    b.put_u32(len as u32);
    let _ = meta.encode(&mut b);
    b.freeze()
}

/// Appends one message to a batched payload: `[u32 size][SingleMessageMetadata][payload]`.
/// `meta.payload_size` is set from `payload`.
pub fn push_batch_message(dst: &mut BytesMut, meta: &SingleMessageMetadata, payload: &[u8]) {
    let mut meta = meta.clone();
    meta.payload_size = i32::try_from(payload.len()).unwrap_or(i32::MAX);
    let len = meta.encoded_len();
    dst.reserve(4 + len + payload.len());
    dst.put_u32(len as u32);
    let _ = meta.encode(dst);
    dst.put_slice(payload);
}

/// Splits a batched payload (`num_messages_in_batch` messages, each
/// `[u32 size][SingleMessageMetadata][payload]`) without copying the payloads.
pub fn parse_batch(
    data: &Bytes,
    count: u32,
) -> Result<Vec<(SingleMessageMetadata, Bytes)>, DecodeError> {
    // `count` is the sender's claim: room for what the bytes can hold (each
    // message starts with a 4-byte size), never for the claim alone.
    let mut out = Vec::with_capacity((count as usize).min(data.len() / 4).min(4096));
    let mut at = 0usize;
    for _ in 0..count {
        let size = be_u32(data, at).ok_or(DecodeError::Batch("truncated metadata size"))? as usize;
        let start = at + 4;
        let end = start
            .checked_add(size)
            .filter(|e| *e <= data.len())
            .ok_or(DecodeError::Batch("truncated message metadata"))?;
        let meta = SingleMessageMetadata::decode(data.slice(start..end))
            .map_err(|_| DecodeError::Batch("invalid message metadata"))?;
        let len = usize::try_from(meta.payload_size)
            .map_err(|_| DecodeError::Batch("negative payload size"))?;
        let pend = end
            .checked_add(len)
            .filter(|e| *e <= data.len())
            .ok_or(DecodeError::Batch("truncated payload"))?;
        out.push((meta, data.slice(end..pend)));
        at = pend;
    }
    Ok(out)
}
