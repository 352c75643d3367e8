//! The Pulsar protocol's decoders: frames as a connection reads them
//! ([`frame::decode`] on a stream), a payload's message part
//! ([`frame::decode_payload`], and the marker scan dispatch runs on every
//! stored entry, [`markers::marker_type`]), batches ([`frame::parse_batch`]) and the
//! protobuf messages on their own (MessageMetadata, SingleMessageMetadata,
//! BrokerEntryMetadata, BaseCommand), and the payload codecs
//! ([`compression::decompress`]).

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use kilonova_pulsar_protocol::compression;
use kilonova_pulsar_protocol::frame::{self, MAGIC_BROKER_ENTRY_METADATA, MAGIC_CRC32C};
use kilonova_pulsar_protocol::markers;
use kilonova_pulsar_protocol::proto::{
    base_command::Type, BaseCommand, BrokerEntryMetadata, CommandAck, CommandConnect, CommandFlow,
    CommandLookupTopic, CommandMessage, CommandPing, CommandPong, CommandProducer, CommandSend,
    CommandSubscribe, CompressionType, KeyValue, MessageIdData, MessageMetadata,
    SingleMessageMetadata,
};

use super::Target;
use crate::mutate::Input;
use crate::rng::Rng;

/// The frame cap the targets decode with: small, so lies around it are cheap.
pub const MAX_FRAME_BYTES: usize = 64 << 10;

/// What a decoder may allocate beyond the input's own size: prost's structs
/// for what the bytes hold, never what a length field claims.
fn proportional(input_len: usize) -> usize {
    64 * input_len + (64 << 10)
}

fn bytes(rng: &mut Rng, max: usize) -> Bytes {
    let n = rng.below(max + 1);
    Bytes::from(rng.bytes(n))
}

fn key_values(rng: &mut Rng) -> Vec<KeyValue> {
    (0..rng.below(4))
        .map(|_| KeyValue {
            key: rng.text(16),
            value: rng.text(32),
        })
        .collect()
}

fn some<T>(rng: &mut Rng, f: impl FnOnce(&mut Rng) -> T) -> Option<T> {
    rng.chance(1, 2).then(|| f(rng))
}

fn small_i32(rng: &mut Rng) -> i32 {
    if rng.chance(1, 4) {
        rng.interesting_i64() as i32
    } else {
        rng.below(10) as i32
    }
}

pub fn message_metadata(rng: &mut Rng) -> MessageMetadata {
    MessageMetadata {
        producer_name: rng.text(24),
        sequence_id: rng.interesting_u64(),
        publish_time: rng.interesting_u64(),
        properties: key_values(rng),
        replicated_from: some(rng, |r| r.text(8)),
        partition_key: some(rng, |r| r.text(16)),
        replicate_to: (0..rng.below(3)).map(|_| rng.text(8)).collect(),
        compression: some(rng, |r| r.below(6) as i32),
        uncompressed_size: some(rng, |r| r.interesting_u64() as u32),
        num_messages_in_batch: some(rng, small_i32),
        event_time: some(rng, Rng::interesting_u64),
        encryption_keys: Vec::new(),
        encryption_algo: None,
        encryption_param: None,
        schema_version: some(rng, |r| bytes(r, 8)),
        partition_key_b64_encoded: some(rng, |r| r.chance(1, 2)),
        ordering_key: some(rng, |r| bytes(r, 8)),
        deliver_at_time: some(rng, Rng::interesting_i64),
        // Replicated-subscription markers (10-13) mostly, else anything.
        marker_type: some(rng, |r| match r.below(2) {
            0 => 10 + r.below(4) as i32,
            _ => small_i32(r),
        }),
        txnid_least_bits: None,
        txnid_most_bits: None,
        highest_sequence_id: some(rng, Rng::interesting_u64),
        null_value: some(rng, |r| r.chance(1, 2)),
        uuid: some(rng, |r| r.text(36)),
        num_chunks_from_msg: some(rng, small_i32),
        total_chunk_msg_size: some(rng, small_i32),
        chunk_id: some(rng, small_i32),
        null_partition_key: None,
    }
}

fn single_metadata(rng: &mut Rng, payload_size: i32) -> SingleMessageMetadata {
    SingleMessageMetadata {
        properties: key_values(rng),
        partition_key: some(rng, |r| r.text(16)),
        payload_size,
        compacted_out: some(rng, |r| r.chance(1, 8)),
        event_time: some(rng, Rng::interesting_u64),
        partition_key_b64_encoded: None,
        ordering_key: some(rng, |r| bytes(r, 8)),
        sequence_id: some(rng, Rng::interesting_u64),
        null_value: None,
        null_partition_key: None,
    }
}

fn message_id(rng: &mut Rng) -> MessageIdData {
    MessageIdData {
        ledger_id: rng.interesting_u64(),
        entry_id: rng.interesting_u64(),
        partition: some(rng, small_i32),
        batch_index: some(rng, small_i32),
        ack_set: (0..rng.below(3)).map(|_| rng.interesting_i64()).collect(),
        batch_size: some(rng, small_i32),
        first_chunk_message_id: None,
    }
}

/// A batch of `count` messages as a producer builds it; `fields` gets the
/// offset of each message's metadata size.
pub fn batch(rng: &mut Rng, count: usize, input: &mut Input, base: usize) -> Vec<u8> {
    let mut data = BytesMut::new();
    for _ in 0..count {
        input.u32_be_at(base + data.len());
        let n = rng.below(40);
        let payload = rng.bytes(n);
        let meta = single_metadata(rng, payload.len() as i32);
        frame::push_batch_message(&mut data, &meta, &payload);
    }
    data.to_vec()
}

/// A message part `[0x0e02 …]? [0x0e01][crc][size][MessageMetadata][data]`,
/// appended to `input` with its length fields marked.
fn payload(rng: &mut Rng, input: &mut Input, broker_entry_metadata: bool) {
    if broker_entry_metadata {
        let bem = BrokerEntryMetadata {
            broker_timestamp: some(rng, Rng::interesting_u64),
            index: some(rng, Rng::interesting_u64),
        };
        input.bytes.put_u16(MAGIC_BROKER_ENTRY_METADATA);
        input.u32_be_at(input.bytes.len());
        input.bytes.put_u32(bem.encoded_len() as u32);
        bem.encode(&mut input.bytes).unwrap_or_default();
    }
    let mut meta = message_metadata(rng);
    let batched = rng.chance(1, 2);
    let count = rng.below(5);
    if batched {
        meta.num_messages_in_batch = Some(count as i32);
    }
    let checksum = rng.chance(4, 5);
    let start = input.bytes.len();
    if checksum {
        input.bytes.put_u16(MAGIC_CRC32C);
        input.bytes.put_u32(0);
    }
    input.u32_be_at(input.bytes.len());
    input.bytes.put_u32(meta.encoded_len() as u32);
    meta.encode(&mut input.bytes).unwrap_or_default();
    let data = if batched {
        let base = input.bytes.len();
        batch(rng, count, input, base)
    } else {
        let n = rng.below(64);
        rng.bytes(n)
    };
    input.bytes.extend_from_slice(&data);
    if checksum {
        let crc = crc32c::crc32c(input.bytes.get(start + 6..).unwrap_or_default());
        if let Some(s) = input.bytes.get_mut(start + 2..start + 6) {
            s.copy_from_slice(&crc.to_be_bytes());
        }
    }
}

/// A command a client or a broker could send, and whether it carries a payload.
fn command(rng: &mut Rng) -> (BaseCommand, bool) {
    let mut c = BaseCommand::default();
    let mut with_payload = false;
    match rng.below(10) {
        0 => {
            c.r#type = Type::Ping as i32;
            c.ping = Some(Box::new(CommandPing {}));
        }
        1 => {
            c.r#type = Type::Pong as i32;
            c.pong = Some(Box::new(CommandPong {}));
        }
        2 => {
            c.r#type = Type::Connect as i32;
            c.connect = Some(Box::new(CommandConnect {
                client_version: rng.text(16),
                auth_method_name: some(rng, |r| r.text(8)),
                auth_data: some(rng, |r| bytes(r, 64)),
                protocol_version: some(rng, small_i32),
                ..Default::default()
            }));
        }
        3 | 4 => {
            c.r#type = Type::Send as i32;
            c.send = Some(Box::new(CommandSend {
                producer_id: rng.interesting_u64(),
                sequence_id: rng.interesting_u64(),
                num_messages: some(rng, small_i32),
                highest_sequence_id: some(rng, Rng::interesting_u64),
                is_chunk: some(rng, |r| r.chance(1, 4)),
                ..Default::default()
            }));
            with_payload = true;
        }
        5 => {
            c.r#type = Type::Message as i32;
            c.message = Some(Box::new(CommandMessage {
                consumer_id: rng.interesting_u64(),
                message_id: message_id(rng),
                redelivery_count: some(rng, |r| r.below(5) as u32),
                ack_set: Vec::new(),
                consumer_epoch: None,
            }));
            with_payload = true;
        }
        6 => {
            c.r#type = Type::Flow as i32;
            c.flow = Some(Box::new(CommandFlow {
                consumer_id: rng.interesting_u64(),
                message_permits: rng.interesting_u64() as u32,
            }));
        }
        7 => {
            c.r#type = Type::Ack as i32;
            c.ack = Some(Box::new(CommandAck {
                consumer_id: rng.interesting_u64(),
                ack_type: rng.below(3) as i32,
                message_id: (0..rng.below(4)).map(|_| message_id(rng)).collect(),
                request_id: some(rng, Rng::interesting_u64),
                ..Default::default()
            }));
        }
        8 => {
            c.r#type = Type::Subscribe as i32;
            c.subscribe = Some(Box::new(CommandSubscribe {
                topic: rng.text(40),
                subscription: rng.text(16),
                sub_type: rng.below(5) as i32,
                consumer_id: rng.interesting_u64(),
                request_id: rng.interesting_u64(),
                start_message_id: some(rng, message_id),
                metadata: key_values(rng),
                ..Default::default()
            }));
        }
        _ => {
            if rng.chance(1, 2) {
                c.r#type = Type::Producer as i32;
                c.producer = Some(Box::new(CommandProducer {
                    topic: rng.text(40),
                    producer_id: rng.interesting_u64(),
                    request_id: rng.interesting_u64(),
                    producer_name: some(rng, |r| r.text(16)),
                    metadata: key_values(rng),
                    ..Default::default()
                }));
            } else {
                c.r#type = Type::Lookup as i32;
                c.lookup_topic = Some(Box::new(CommandLookupTopic {
                    topic: rng.text(40),
                    request_id: rng.interesting_u64(),
                    authoritative: some(rng, |r| r.chance(1, 2)),
                    ..Default::default()
                }));
            }
        }
    }
    if rng.chance(1, 16) {
        // A type that does not match the command carried.
        c.r#type = rng.below(70) as i32;
    }
    (c, with_payload)
}

/// One frame appended to `input`, its size fields marked.
fn one_frame(rng: &mut Rng, input: &mut Input) {
    let (cmd, with_payload) = command(rng);
    let start = input.bytes.len();
    input.u32_be_at(start);
    input.bytes.put_u32(0);
    input.u32_be_at(start + 4);
    input.bytes.put_u32(cmd.encoded_len() as u32);
    cmd.encode(&mut input.bytes).unwrap_or_default();
    if with_payload {
        let bem = cmd.message.is_some() && rng.chance(1, 2);
        payload(rng, input, bem);
    }
    let total = (input.bytes.len() - start - 4) as u32;
    if let Some(s) = input.bytes.get_mut(start..start + 4) {
        s.copy_from_slice(&total.to_be_bytes());
    }
}

/// Recomputes the CRC32C of every payload found by walking the frames, so a
/// mutated input reaches past the checksum.
fn fix_frame_checksums(b: &mut [u8]) {
    let mut at = 0usize;
    while let Some(total) = be_u32(b, at) {
        let end = at
            .saturating_add(4)
            .saturating_add(total as usize)
            .min(b.len());
        if let Some(cmd) = be_u32(b, at + 4) {
            let rest_at = at.saturating_add(8).saturating_add(cmd as usize);
            if let Some(frame) = b.get_mut(rest_at.min(end)..end) {
                fix_payload_checksum(frame);
            }
        }
        if end <= at + 4 {
            break;
        }
        at = end;
    }
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn fix_payload_checksum(p: &mut [u8]) {
    let mut at = 0usize;
    if p.get(..2) == Some(&MAGIC_BROKER_ENTRY_METADATA.to_be_bytes()[..]) {
        let Some(n) = be_u32(p, 2) else { return };
        at = 6usize.saturating_add(n as usize);
    }
    let Some(rest) = p.get_mut(at..) else { return };
    if rest.len() >= 6 && rest.get(..2) == Some(&MAGIC_CRC32C.to_be_bytes()[..]) {
        let crc = crc32c::crc32c(&rest[6..]);
        rest[2..6].copy_from_slice(&crc.to_be_bytes());
    }
}

/// What the broker does with a decoded payload, with its invariants checked.
fn check_payload(p: &frame::Payload) {
    // The data is a slice of the raw span, which the broker stores as is.
    let (raw, data) = (p.raw.as_ptr() as usize, p.data.as_ptr() as usize);
    assert!(
        p.data.is_empty() || (data >= raw && data + p.data.len() <= raw + p.raw.len()),
        "the payload's data is not inside its raw bytes"
    );
    if p.checksum_ok && p.raw.get(..2) == Some(&MAGIC_CRC32C.to_be_bytes()[..]) {
        let stated = be_u32(&p.raw, 2);
        assert_eq!(
            stated,
            Some(crc32c::crc32c(&p.raw[6..])),
            "checksum_ok lies"
        );
    }
    let count = p.message_count();
    assert!(count >= 1);
    if p.metadata.num_messages_in_batch.is_some() {
        check_batch(&p.data, count);
    }
}

fn check_batch(data: &Bytes, count: u32) {
    if let Ok(messages) = frame::parse_batch(data, count) {
        assert_eq!(
            messages.len(),
            count as usize,
            "a batch parsed to the wrong count"
        );
        let (start, end) = (data.as_ptr() as usize, data.as_ptr() as usize + data.len());
        let mut total = 0usize;
        for (meta, body) in &messages {
            assert_eq!(body.len(), meta.payload_size as usize);
            let at = body.as_ptr() as usize;
            assert!(body.is_empty() || (at >= start && at + body.len() <= end));
            total += 4 + body.len();
        }
        assert!(total <= data.len(), "a batch's messages overlap");
    }
}

/// A decoded frame re-encodes to bytes that decode to the same frame.
fn check_round_trip(f: &frame::Frame) {
    let mut out = BytesMut::new();
    match &f.payload {
        None => frame::encode_command(&f.command, &mut out),
        Some(p) => {
            let mut raw = BytesMut::new();
            if let Some(bem) = &p.broker_entry_metadata {
                raw.extend_from_slice(&frame::broker_entry_metadata_prefix(bem));
            }
            raw.extend_from_slice(&p.raw);
            frame::encode_payload_command(&f.command, &raw, &mut out);
        }
    }
    let again = frame::decode(&mut out, usize::MAX);
    match again {
        Ok(Some(g)) => assert_eq!(&g, f, "a frame does not survive re-encoding"),
        other => panic!("a re-encoded frame does not decode: {other:?}"),
    }
    assert!(out.is_empty(), "re-encoding left bytes behind");
}

/// A stream of frames as a connection reads it.
pub struct FrameTarget;

impl Target for FrameTarget {
    fn name(&self) -> &'static str {
        "frame"
    }

    fn generate(&mut self, rng: &mut Rng) -> Input {
        let mut input = Input::default();
        for _ in 0..rng.between(1, 3) {
            one_frame(rng, &mut input);
        }
        input
    }

    fn fix_up(&self, bytes: &mut Vec<u8>) {
        fix_frame_checksums(bytes);
    }

    fn alloc_limit(&self, input_len: usize) -> usize {
        // `decode` reserves room for a whole frame once its size is known.
        MAX_FRAME_BYTES + 4 + proportional(input_len)
    }

    fn run(&mut self, input: &[u8]) {
        let mut buf = BytesMut::from(input);
        let mut at = 0usize;
        for _ in 0..64 {
            let before = buf.len();
            match frame::decode(&mut buf, MAX_FRAME_BYTES) {
                Ok(Some(f)) => {
                    let consumed = before - buf.len();
                    let declared = be_u32(input, at).map(|t| t as usize + 4);
                    assert_eq!(
                        Some(consumed),
                        declared,
                        "a frame consumed the wrong length"
                    );
                    assert!(
                        consumed <= MAX_FRAME_BYTES + 4,
                        "a frame over the cap was decoded"
                    );
                    at += consumed;
                    if let Some(p) = &f.payload {
                        check_payload(p);
                    }
                    check_round_trip(&f);
                }
                Ok(None) => {
                    // More bytes needed: a whole declared frame is not there yet.
                    if let Some(total) = be_u32(&buf, 0) {
                        assert!(
                            total as usize + 4 > buf.len(),
                            "a whole frame was not decoded"
                        );
                    }
                    assert_eq!(buf.len(), before, "an incomplete frame consumed bytes");
                    break;
                }
                Err(_) => break,
            }
        }
    }
}

/// A payload command's message part on its own (also what the store holds).
pub struct PayloadTarget;

impl Target for PayloadTarget {
    fn name(&self) -> &'static str {
        "payload"
    }

    fn generate(&mut self, rng: &mut Rng) -> Input {
        let mut input = Input::default();
        let bem = rng.chance(1, 3);
        payload(rng, &mut input, bem);
        input
    }

    fn fix_up(&self, bytes: &mut Vec<u8>) {
        fix_payload_checksum(bytes);
    }

    fn alloc_limit(&self, input_len: usize) -> usize {
        proportional(input_len)
    }

    fn run(&mut self, input: &[u8]) {
        let scanned = markers::marker_type(input);
        if let Ok(p) = frame::decode_payload(Bytes::copy_from_slice(input)) {
            check_payload(&p);
            assert!(p.raw.len() <= input.len());
            if p.broker_entry_metadata.is_none() {
                // Dispatch's scan agrees with the full decode.
                assert_eq!(scanned, p.metadata.marker_type, "the marker scan disagrees");
            }
            let _ = markers::parse(&p);
        }
    }
}

/// A batch with the message count its metadata claims: `[u32 count][batch]`.
pub struct BatchTarget;

impl Target for BatchTarget {
    fn name(&self) -> &'static str {
        "batch"
    }

    fn generate(&mut self, rng: &mut Rng) -> Input {
        let count = rng.below(6);
        let mut input = Input::default();
        input.u32_be_at(0);
        input.bytes.put_u32(count as u32);
        let data = batch(rng, count, &mut input, 4);
        input.bytes.extend_from_slice(&data);
        input
    }

    fn alloc_limit(&self, input_len: usize) -> usize {
        proportional(input_len)
    }

    fn run(&mut self, input: &[u8]) {
        let Some(count) = be_u32(input, 0) else {
            return;
        };
        let data = Bytes::copy_from_slice(input.get(4..).unwrap_or_default());
        check_batch(&data, count);
    }
}

/// A compressed payload as the metadata describes it: `[codec][u32
/// uncompressed size][compressed bytes]`. The size is the sender's claim:
/// decompression must refuse one over its cap before allocating, and what it
/// returns must have exactly that size and compress back to itself.
pub struct CompressionTarget;

/// The cap [`CompressionTarget`] decompresses with.
const MAX_UNCOMPRESSED_BYTES: usize = 1 << 20;

const CODECS: [CompressionType; 5] = [
    CompressionType::None,
    CompressionType::Lz4,
    CompressionType::Zlib,
    CompressionType::Zstd,
    CompressionType::Snappy,
];

impl Target for CompressionTarget {
    fn name(&self) -> &'static str {
        "compression"
    }

    fn generate(&mut self, rng: &mut Rng) -> Input {
        let codec = rng.below(CODECS.len());
        // Compressible bytes: a few random runs repeated.
        let run_len = rng.between(1, 32);
        let run = rng.bytes(run_len);
        let len = rng.below(4096);
        let plain: Vec<u8> = run.iter().copied().cycle().take(len).collect();
        let packed = CODECS
            .get(codec)
            .and_then(|c| compression::compress(*c, &plain).ok())
            .unwrap_or_default();
        let mut input = Input::default();
        input.bytes.push(codec as u8);
        input.u32_be_at(1);
        input.bytes.put_u32(plain.len() as u32);
        input.bytes.extend_from_slice(&packed);
        input
    }

    fn alloc_limit(&self, input_len: usize) -> usize {
        // The result, its re-compression and its decompression again.
        3 * MAX_UNCOMPRESSED_BYTES + proportional(input_len)
    }

    fn run(&mut self, input: &[u8]) {
        let (Some(codec), Some(size)) = (input.first(), be_u32(input, 1)) else {
            return;
        };
        let codec = CODECS[usize::from(*codec) % CODECS.len()];
        let data = input.get(5..).unwrap_or_default();
        let Ok(out) = compression::decompress(codec, data, size, MAX_UNCOMPRESSED_BYTES) else {
            return;
        };
        assert_eq!(out.len(), size as usize, "{codec:?}: not the declared size");
        let packed = match compression::compress(codec, &out) {
            Ok(p) => p,
            Err(e) => panic!("{codec:?}: cannot compress what it decompressed: {e}"),
        };
        let back = compression::decompress(codec, &packed, size, MAX_UNCOMPRESSED_BYTES);
        assert_eq!(back.as_deref(), Ok(&out[..]), "{codec:?}: no round trip");
    }
}

/// The protobuf messages alone: `[kind][bytes]`.
pub struct MetadataTarget;

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(b: &[u8]) -> Option<M> {
    let m = M::decode(b).ok()?;
    let again = M::decode(m.encode_to_vec().as_slice());
    assert_eq!(
        again.as_ref(),
        Ok(&m),
        "a message does not survive re-encoding"
    );
    Some(m)
}

impl Target for MetadataTarget {
    fn name(&self) -> &'static str {
        "metadata"
    }

    fn generate(&mut self, rng: &mut Rng) -> Input {
        let kind = rng.below(4) as u8;
        let body = match kind {
            0 => message_metadata(rng).encode_to_vec(),
            1 => {
                let size = small_i32(rng);
                single_metadata(rng, size).encode_to_vec()
            }
            2 => BrokerEntryMetadata {
                broker_timestamp: some(rng, Rng::interesting_u64),
                index: some(rng, Rng::interesting_u64),
            }
            .encode_to_vec(),
            _ => command(rng).0.encode_to_vec(),
        };
        let mut input = Input::new(vec![kind]);
        input.bytes.extend_from_slice(&body);
        input
    }

    fn alloc_limit(&self, input_len: usize) -> usize {
        proportional(input_len)
    }

    fn run(&mut self, input: &[u8]) {
        let Some((kind, body)) = input.split_first() else {
            return;
        };
        match kind % 4 {
            0 => {
                if let Some(m) = round_trip::<MessageMetadata>(body) {
                    let n = frame::message_count(&m);
                    assert!(n >= 1);
                    if let Some(declared) = m.num_messages_in_batch.filter(|n| *n > 0) {
                        assert_eq!(n as i32, declared);
                    }
                }
            }
            1 => {
                round_trip::<SingleMessageMetadata>(body);
            }
            2 => {
                round_trip::<BrokerEntryMetadata>(body);
            }
            _ => {
                round_trip::<BaseCommand>(body);
            }
        }
    }
}
