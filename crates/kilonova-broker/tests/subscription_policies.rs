#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Subscription expiration and the subscribe rate, with the broker's clock
//! driven by the test (a `ManualClock`) and raw protocol clients.

mod common;

use std::sync::Arc;
use std::time::Duration;

use kilonova_auth::Security;
use kilonova_broker::clock::ManualClock;
use kilonova_broker::{AdminReply, AdminRequest, Broker, BrokerConfig, TopicName};
use kilonova_pulsar_protocol::proto::{
    base_command::Type, command_subscribe::SubType, CommandCloseConsumer, CommandSubscribe,
    ServerError,
};

use common::{cmd, start_with_clock, Raw, Server, WAIT};

/// How long an absence check watches (topics tick every 10 ms here).
const ABSENCE: Duration = Duration::from_millis(300);

fn config() -> BrokerConfig {
    BrokerConfig {
        cursor_persist_interval_ms: 10,
        topic_unload_idle_secs: 3600,
        ..BrokerConfig::default()
    }
}

/// A broker on `config` whose clock the test moves.
async fn start_at(config: BrokerConfig) -> (Server, ManualClock) {
    let clock = ManualClock::at_ms(1_700_000_000_000);
    let server = start_with_clock(config, Security::open(), Arc::new(clock.clone())).await;
    (server, clock)
}

async fn subscriptions(broker: &Broker, topic: &TopicName) -> Vec<String> {
    match broker
        .topic_admin(topic, AdminRequest::Subscriptions)
        .await
        .unwrap()
    {
        AdminReply::Names(mut names) => {
            names.sort();
            names
        }
        _ => panic!("subscriptions answered with something else"),
    }
}

async fn close_consumer(c: &mut Raw, consumer_id: u64) {
    c.send(cmd(Type::CloseConsumer, |c| {
        c.close_consumer = Some(Box::new(CommandCloseConsumer {
            consumer_id,
            request_id: 900 + consumer_id,
            ..Default::default()
        }))
    }))
    .await;
    c.recv_type(Type::Success).await;
}

#[tokio::test]
async fn an_idle_subscription_expires_and_one_with_a_consumer_does_not() {
    let (server, clock) = start_at(BrokerConfig {
        subscription_expiration_time_minutes: 1,
        subscription_expiry_check_interval_secs: 1,
        ..config()
    })
    .await;
    let topic = "persistent://public/default/expiring";
    let name: TopicName = topic.parse().unwrap();
    let mut c = Raw::connect(server.addr).await;
    c.subscribe(topic, "idle", SubType::Exclusive, 1).await;
    close_consumer(&mut c, 1).await;
    c.subscribe(topic, "busy", SubType::Shared, 2).await;
    assert_eq!(subscriptions(&server.broker, &name).await, ["busy", "idle"]);

    clock.advance(Duration::from_secs(59));
    tokio::time::sleep(ABSENCE).await;
    assert_eq!(
        subscriptions(&server.broker, &name).await,
        ["busy", "idle"],
        "59 s idle is within the 1 minute expiration"
    );

    clock.advance(Duration::from_secs(2));
    let deadline = tokio::time::Instant::now() + WAIT;
    while subscriptions(&server.broker, &name).await != ["busy"] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle subscription was not deleted 61 s after its consumer left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    clock.advance(Duration::from_secs(600));
    tokio::time::sleep(ABSENCE).await;
    assert_eq!(
        subscriptions(&server.broker, &name).await,
        ["busy"],
        "a subscription with a consumer connected never expires"
    );
}

#[tokio::test]
async fn an_expired_subscription_of_an_unloaded_topic_goes_when_it_loads() {
    let (server, clock) = start_at(BrokerConfig {
        subscription_expiration_time_minutes: 5,
        ..config()
    })
    .await;
    let topic = "persistent://public/default/expiring-unloaded";
    let name: TopicName = topic.parse().unwrap();
    let mut c = Raw::connect(server.addr).await;
    c.subscribe(topic, "stale", SubType::Exclusive, 1).await;
    c.subscribe(topic, "fresh", SubType::Exclusive, 2).await;
    close_consumer(&mut c, 1).await;
    server
        .broker
        .topic_admin(&name, AdminRequest::Unload)
        .await
        .unwrap();
    // The consumer of "fresh" comes back after 4 minutes; "stale" never does.
    clock.advance(Duration::from_secs(240));
    c.subscribe(topic, "fresh", SubType::Exclusive, 3).await;
    close_consumer(&mut c, 3).await;
    server
        .broker
        .topic_admin(&name, AdminRequest::Unload)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(61));
    assert_eq!(
        subscriptions(&server.broker, &name).await,
        ["fresh"],
        "the last-active times were kept across unloads"
    );
}

/// Subscribes consumer `consumer_id` named `name` to subscription `s`:
/// the broker's answer, `Ok` or the error's code and message.
async fn attempt(
    c: &mut Raw,
    topic: &str,
    consumer_id: u64,
    name: &str,
) -> Result<(), (i32, String)> {
    c.send(cmd(Type::Subscribe, |c| {
        c.subscribe = Some(Box::new(CommandSubscribe {
            topic: topic.into(),
            subscription: "s".into(),
            sub_type: SubType::Shared as i32,
            consumer_id,
            consumer_name: Some(name.into()),
            request_id: 1000 + consumer_id,
            ..Default::default()
        }))
    }))
    .await;
    loop {
        let f = c.recv().await;
        if f.command.r#type == Type::Success as i32 {
            return Ok(());
        }
        if let Some(e) = f.command.error {
            return Err((e.error, e.message));
        }
    }
}

#[tokio::test]
async fn a_consumer_subscribing_faster_than_the_subscribe_rate_gets_not_allowed() {
    let (server, clock) = start_at(BrokerConfig {
        subscribe_throttling_rate_per_consumer: 2,
        subscribe_rate_period_per_consumer_secs: 30,
        ..config()
    })
    .await;
    let topic = "persistent://public/default/subscribe-rate";
    let mut c = Raw::connect(server.addr).await;
    for _ in 0..2 {
        attempt(&mut c, topic, 1, "looping").await.unwrap();
        close_consumer(&mut c, 1).await;
    }
    let (code, message) = attempt(&mut c, topic, 1, "looping").await.unwrap_err();
    assert_eq!(code, ServerError::NotAllowedError as i32);
    assert_eq!(
        message,
        "Subscribe limited by subscribe rate limit per consumer."
    );
    // Another consumer id, or another name, is another consumer.
    attempt(&mut c, topic, 2, "looping").await.unwrap();
    attempt(&mut c, topic, 3, "other").await.unwrap();
    // The next period starts the count again.
    clock.advance(Duration::from_secs(30));
    attempt(&mut c, topic, 1, "looping").await.unwrap();
}
