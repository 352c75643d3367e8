//! Frame codec: golden vectors, round trips, limits, and hostile input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use kilonova_pulsar_protocol::frame::{self, DecodeError, DEFAULT_MAX_FRAME_BYTES};
use kilonova_pulsar_protocol::proto::{
    base_command::Type, BaseCommand, CommandPing, CommandSend, MessageMetadata,
    SingleMessageMetadata,
};
use proptest::prelude::*;
use prost::Message;

fn golden(name: &str) -> BytesMut {
    let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    let hex = std::fs::read_to_string(path).unwrap();
    let hex = hex.trim();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    BytesMut::from(&bytes[..])
}

fn send_command(producer_id: u64, sequence_id: u64) -> BaseCommand {
    BaseCommand {
        r#type: Type::Send as i32,
        send: Some(Box::new(CommandSend {
            producer_id,
            sequence_id,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn metadata(seq: u64) -> MessageMetadata {
    MessageMetadata {
        producer_name: "p".into(),
        sequence_id: seq,
        publish_time: 1000,
        ..Default::default()
    }
}

#[test]
fn golden_ping_frame_decodes() {
    let mut buf = golden("ping.hex");
    let f = frame::decode(&mut buf, DEFAULT_MAX_FRAME_BYTES)
        .unwrap()
        .unwrap();
    assert_eq!(f.command.r#type, Type::Ping as i32);
    assert!(f.command.ping.is_some());
    assert!(f.payload.is_none());
    assert!(buf.is_empty());
}

#[test]
fn golden_send_frame_decodes_with_a_valid_checksum() {
    let mut buf = golden("send_hello.hex");
    let f = frame::decode(&mut buf, DEFAULT_MAX_FRAME_BYTES)
        .unwrap()
        .unwrap();
    let send = f.command.send.unwrap();
    assert_eq!((send.producer_id, send.sequence_id), (1, 7));
    let p = f.payload.unwrap();
    assert!(p.checksum_ok);
    assert_eq!(p.metadata, metadata(7));
    assert_eq!(&p.data[..], b"hello");
    assert_eq!(p.message_count(), 1);
    // Our encoder produces the same bytes as the hand-built vector.
    let mut out = BytesMut::new();
    frame::encode_payload_command(
        &send_command(1, 7),
        &frame::build_payload(&metadata(7), b"hello"),
        &mut out,
    );
    assert_eq!(out, golden("send_hello.hex"));
}

#[test]
fn a_corrupted_payload_fails_its_checksum() {
    let mut buf = golden("send_hello.hex");
    let last = buf.len() - 1;
    buf[last] ^= 0x01;
    let f = frame::decode(&mut buf, DEFAULT_MAX_FRAME_BYTES)
        .unwrap()
        .unwrap();
    assert!(!f.payload.unwrap().checksum_ok);
}

#[test]
fn an_oversize_frame_is_refused_before_its_body_arrives() {
    let mut buf = BytesMut::from(&((DEFAULT_MAX_FRAME_BYTES as u32) + 1).to_be_bytes()[..]);
    match frame::decode(&mut buf, DEFAULT_MAX_FRAME_BYTES) {
        Err(DecodeError::FrameTooLarge { size, max }) => {
            assert_eq!(
                (size, max),
                (DEFAULT_MAX_FRAME_BYTES + 1, DEFAULT_MAX_FRAME_BYTES)
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_command_size_beyond_the_frame_is_an_error() {
    let mut buf = BytesMut::from(&[0, 0, 0, 8, 0, 0, 0, 200, 1, 2, 3, 4][..]);
    assert!(matches!(
        frame::decode(&mut buf, DEFAULT_MAX_FRAME_BYTES),
        Err(DecodeError::CommandSize { .. })
    ));
}

#[test]
fn batches_split_into_their_messages_without_copying() {
    let mut data = BytesMut::new();
    for (i, body) in [&b"one"[..], b"two!", b""].iter().enumerate() {
        let m = SingleMessageMetadata {
            payload_size: body.len() as i32,
            partition_key: Some(format!("k{i}")),
            ..Default::default()
        };
        data.extend_from_slice(&(m.encoded_len() as u32).to_be_bytes());
        m.encode(&mut data).unwrap();
        data.extend_from_slice(body);
    }
    let data = data.freeze();
    let msgs = frame::parse_batch(&data, 3).unwrap();
    assert_eq!(msgs.len(), 3);
    assert_eq!(&msgs[1].1[..], b"two!");
    assert_eq!(msgs[2].0.partition_key.as_deref(), Some("k2"));
    assert!(
        frame::parse_batch(&data, 4).is_err(),
        "a 4th message is not there"
    );
}

fn batch_payload(count: i32, data: &[u8], compressed: Option<u32>) -> frame::Payload {
    let mut meta = metadata(1);
    meta.num_messages_in_batch = Some(count);
    if let Some(size) = compressed {
        meta.set_compression(kilonova_pulsar_protocol::proto::CompressionType::Lz4);
        meta.uncompressed_size = Some(size);
    }
    frame::decode_payload(frame::build_payload(&meta, data)).unwrap()
}

#[test]
fn a_batch_claiming_more_messages_than_its_bytes_hold_is_refused() {
    const MAX: u64 = 1 << 20;
    // The attack: 2^31 - 1 messages in one byte.
    assert!(batch_payload(i32::MAX, b"x", None)
        .checked_message_count(MAX)
        .is_err());
    // Compressed: measured by the declared size, which is capped.
    assert!(batch_payload(i32::MAX, b"x", Some(u32::MAX))
        .checked_message_count(MAX)
        .is_err());
    assert!(batch_payload(1000, b"x", Some(100))
        .checked_message_count(MAX)
        .is_err());
    assert_eq!(
        batch_payload(1000, b"x", Some(60_000))
            .checked_message_count(MAX)
            .unwrap(),
        1000
    );
    // A real batch of empty messages: the smallest each can be.
    let mut data = BytesMut::new();
    for _ in 0..3 {
        frame::push_batch_message(&mut data, &SingleMessageMetadata::default(), b"");
    }
    assert_eq!(
        batch_payload(3, &data, None)
            .checked_message_count(MAX)
            .unwrap(),
        3
    );
    assert_eq!(
        batch_payload(1, b"", None)
            .checked_message_count(MAX)
            .unwrap(),
        1
    );
}

proptest! {
    #[test]
    fn simple_frames_round_trip(seq: u64, pid: u64) {
        let cmd = send_command(pid, seq);
        let mut buf = BytesMut::new();
        frame::encode_command(&cmd, &mut buf);
        let f = frame::decode(&mut buf, DEFAULT_MAX_FRAME_BYTES).unwrap().unwrap();
        prop_assert_eq!(f.command, cmd);
        prop_assert!(f.payload.is_none());
    }

    #[test]
    fn payload_frames_round_trip_and_split_anywhere(
        seq: u64,
        data in proptest::collection::vec(any::<u8>(), 0..2000),
        split in 0usize..4000,
    ) {
        let raw = frame::build_payload(&metadata(seq), &data);
        let mut whole = BytesMut::new();
        frame::encode_payload_command(&send_command(1, seq), &raw, &mut whole);
        // Fed in two pieces split at any point, the frame decodes the same.
        let split = split % (whole.len() + 1);
        let mut buf = BytesMut::from(&whole[..split]);
        let first = frame::decode(&mut buf, DEFAULT_MAX_FRAME_BYTES).unwrap();
        let f = match first {
            Some(f) => f,
            None => {
                buf.extend_from_slice(&whole[split..]);
                frame::decode(&mut buf, DEFAULT_MAX_FRAME_BYTES).unwrap().unwrap()
            }
        };
        let p = f.payload.unwrap();
        prop_assert!(p.checksum_ok);
        prop_assert_eq!(&p.data[..], &data[..]);
        prop_assert_eq!(p.raw, raw);
        prop_assert_eq!(p.metadata, metadata(seq));
    }

    #[test]
    fn encode_message_equals_building_the_payload_first(
        seq: u64,
        data in proptest::collection::vec(any::<u8>(), 0..2000),
    ) {
        let cmd = send_command(3, seq);
        let mut direct = BytesMut::new();
        frame::encode_message(&cmd, &metadata(seq), &data, &mut direct);
        let mut two_step = BytesMut::new();
        frame::encode_payload_command(&cmd, &frame::build_payload(&metadata(seq), &data), &mut two_step);
        prop_assert_eq!(&direct[..], &two_step[..]);
    }

    #[test]
    fn batches_built_with_push_batch_message_parse_back(
        msgs in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..300), proptest::option::of("[a-z]{0,8}")),
            1..20,
        ),
    ) {
        let mut data = BytesMut::new();
        for (payload, key) in &msgs {
            let meta = SingleMessageMetadata { partition_key: key.clone(), ..Default::default() };
            frame::push_batch_message(&mut data, &meta, payload);
        }
        let parsed = frame::parse_batch(&data.freeze(), msgs.len() as u32).unwrap();
        prop_assert_eq!(parsed.len(), msgs.len());
        for ((meta, payload), (want, key)) in parsed.iter().zip(&msgs) {
            prop_assert_eq!(&payload[..], &want[..]);
            prop_assert_eq!(meta.payload_size as usize, want.len());
            prop_assert_eq!(&meta.partition_key, key);
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::from(&bytes[..]);
        // Decode until the input is used up or refused; never a panic.
        for _ in 0..64 {
            match frame::decode(&mut buf, 4096) {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
        let _ = frame::parse_batch(&Bytes::from(bytes.clone()), 8);
        let _ = frame::decode_payload(Bytes::from(bytes));
    }

    #[test]
    fn a_valid_header_over_random_bodies_never_panics(body in proptest::collection::vec(any::<u8>(), 4..512)) {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
        buf.extend_from_slice(&body);
        let _ = frame::decode(&mut buf, 4096);
    }
}

#[test]
fn a_ping_command_built_here_is_the_golden_ping() {
    let cmd = BaseCommand {
        r#type: Type::Ping as i32,
        ping: Some(Box::new(CommandPing {})),
        ..Default::default()
    };
    let mut out = BytesMut::new();
    frame::encode_command(&cmd, &mut out);
    assert_eq!(out, golden("ping.hex"));
}

proptest! {
    /// The field-by-field MESSAGE header is byte for byte what prost writes
    /// for the same command, for any values, and never longer than its bound.
    #[test]
    fn a_message_header_encodes_as_the_generated_command_does(
        consumer_id in any::<u64>(),
        ledger_id in any::<u64>(),
        entry_id in any::<u64>(),
        redelivery_count in any::<u32>(),
        consumer_epoch in proptest::option::of(any::<u64>()),
        raw_len in 0usize..(5 << 20),
    ) {
        let m = frame::MessageFields { consumer_id, ledger_id, entry_id, redelivery_count, consumer_epoch };
        let mut direct = BytesMut::new();
        frame::encode_message_header(&m, raw_len, &mut direct);
        let command = BaseCommand {
            r#type: Type::Message as i32,
            message: Some(Box::new(kilonova_pulsar_protocol::proto::CommandMessage {
                consumer_id,
                message_id: kilonova_pulsar_protocol::proto::MessageIdData {
                    ledger_id,
                    entry_id,
                    ..Default::default()
                },
                redelivery_count: Some(redelivery_count),
                ack_set: Vec::new(),
                consumer_epoch,
            })),
            ..Default::default()
        };
        let mut generated = BytesMut::new();
        frame::encode_header(&command, raw_len, &mut generated);
        prop_assert_eq!(&direct[..], &generated[..]);
        prop_assert!(direct.len() <= frame::MESSAGE_HEADER_MAX_BYTES);
    }
}

proptest! {
    /// The field-by-field SEND_RECEIPT encoding is byte for byte what prost
    /// writes for the same command, for any values (varints of every width).
    #[test]
    fn a_send_receipt_encodes_as_the_generated_command_does(
        producer_id in any::<u64>(),
        sequence_id in any::<u64>(),
        highest_sequence_id in any::<u64>(),
        ledger_id in any::<u64>(),
        entry_id in any::<u64>(),
    ) {
        let r = frame::SendReceipt { producer_id, sequence_id, highest_sequence_id, ledger_id, entry_id };
        let mut direct = BytesMut::new();
        frame::encode_send_receipt(&r, &mut direct);
        let command = BaseCommand {
            r#type: Type::SendReceipt as i32,
            send_receipt: Some(Box::new(kilonova_pulsar_protocol::proto::CommandSendReceipt {
                producer_id,
                sequence_id,
                message_id: Some(kilonova_pulsar_protocol::proto::MessageIdData {
                    ledger_id,
                    entry_id,
                    ..Default::default()
                }),
                highest_sequence_id: Some(highest_sequence_id),
            })),
            ..Default::default()
        };
        let mut generated = BytesMut::new();
        frame::encode_command(&command, &mut generated);
        prop_assert_eq!(&direct[..], &generated[..]);
        // And it decodes as a receipt with those values.
        let decoded = frame::decode(&mut direct, DEFAULT_MAX_FRAME_BYTES).unwrap().unwrap();
        let receipt = decoded.command.send_receipt.unwrap();
        prop_assert_eq!(receipt.producer_id, producer_id);
        prop_assert_eq!(receipt.message_id.unwrap().entry_id, entry_id);
    }
}

#[test]
fn a_built_payload_is_what_decoding_its_bytes_gives() {
    let built = frame::built_payload(metadata(7), b"hello");
    let decoded = frame::decode_payload(built.raw.clone()).unwrap();
    assert!(decoded.checksum_ok);
    assert_eq!(decoded.metadata, built.metadata);
    assert_eq!(decoded.data, built.data);
    assert_eq!(&built.data[..], b"hello");
}
