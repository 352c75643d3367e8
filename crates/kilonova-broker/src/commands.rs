//! Builders for the commands the broker sends, so the serving code reads as
//! "send a receipt", not as protobuf plumbing.

use kilonova_pulsar_protocol::proto::{
    base_command::Type, BaseCommand, CommandActiveConsumerChange, CommandCloseConsumer,
    CommandCloseProducer, CommandError, CommandSendError, CommandSendReceipt, CommandSuccess,
    MessageIdData, ServerError,
};
use kilonova_storage::Position;

use crate::error::BrokerError;

fn base(t: Type) -> BaseCommand {
    BaseCommand {
        r#type: t as i32,
        ..Default::default()
    }
}

pub(crate) fn message_id(p: Position, batch_index: Option<i32>) -> MessageIdData {
    MessageIdData {
        ledger_id: p.segment,
        entry_id: p.entry,
        batch_index,
        ..Default::default()
    }
}

pub(crate) fn success(request_id: u64) -> BaseCommand {
    BaseCommand {
        success: Some(Box::new(CommandSuccess {
            request_id,
            schema: None,
        })),
        ..base(Type::Success)
    }
}

pub(crate) fn error(request_id: u64, code: ServerError, message: impl Into<String>) -> BaseCommand {
    BaseCommand {
        error: Some(Box::new(CommandError {
            request_id,
            error: code as i32,
            message: message.into(),
        })),
        ..base(Type::Error)
    }
}

pub(crate) fn broker_error(request_id: u64, e: &BrokerError) -> BaseCommand {
    error(request_id, e.server_error(), e.to_string())
}

pub(crate) fn send_receipt(
    producer_id: u64,
    sequence_id: u64,
    highest_sequence_id: u64,
    id: MessageIdData,
) -> BaseCommand {
    BaseCommand {
        send_receipt: Some(Box::new(CommandSendReceipt {
            producer_id,
            sequence_id,
            message_id: Some(id),
            highest_sequence_id: Some(highest_sequence_id),
        })),
        ..base(Type::SendReceipt)
    }
}

pub(crate) fn send_error(
    producer_id: u64,
    sequence_id: u64,
    code: ServerError,
    message: impl Into<String>,
) -> BaseCommand {
    BaseCommand {
        send_error: Some(Box::new(CommandSendError {
            producer_id,
            sequence_id,
            error: code as i32,
            message: message.into(),
        })),
        ..base(Type::SendError)
    }
}

/// The broker closes a producer; the client reconnects it.
pub(crate) fn close_producer(producer_id: u64) -> BaseCommand {
    BaseCommand {
        close_producer: Some(Box::new(CommandCloseProducer {
            producer_id,
            request_id: 0,
        })),
        ..base(Type::CloseProducer)
    }
}

/// The broker closes a consumer; the client reconnects it.
pub(crate) fn close_consumer(consumer_id: u64) -> BaseCommand {
    BaseCommand {
        close_consumer: Some(Box::new(CommandCloseConsumer {
            consumer_id,
            request_id: 0,
        })),
        ..base(Type::CloseConsumer)
    }
}

pub(crate) fn active_consumer_change(consumer_id: u64, is_active: bool) -> BaseCommand {
    BaseCommand {
        active_consumer_change: Some(Box::new(CommandActiveConsumerChange {
            consumer_id,
            is_active: Some(is_active),
        })),
        ..base(Type::ActiveConsumerChange)
    }
}

pub(crate) fn with_type(t: Type, f: impl FnOnce(&mut BaseCommand)) -> BaseCommand {
    let mut c = base(t);
    f(&mut c);
    c
}
