//! Token authentication and TLS with the real binary and the `pulsar` crate
//! (a client nobody here wrote), and `kilonova perf connect` with tokens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{secured_broker, token, within, STEP};
use futures::StreamExt;
use pulsar::consumer::InitialPosition;
use pulsar::{Authentication, ConsumerOptions, Pulsar, TokioExecutor};

use kilonova_auth::issue::{self, SigningKey};

fn auth(token: &str) -> Authentication {
    Authentication {
        name: "token".into(),
        data: token.as_bytes().to_vec(),
    }
}

/// Publishes `n` messages with `client` and reads them back.
async fn round_trip(client: &Pulsar<TokioExecutor>, topic: &str, n: usize) {
    let mut producer = within(
        STEP,
        "create producer",
        client.producer().with_topic(topic).build(),
    )
    .await
    .expect("create producer");
    for i in 0..n {
        let receipt = within(STEP, format!("receipt {i}"), async {
            producer
                .send_non_blocking(format!("m{i}"))
                .await
                .unwrap()
                .await
        })
        .await;
        receipt.expect("send receipt");
    }
    let mut consumer = within(
        STEP,
        "subscribe",
        client
            .consumer()
            .with_topic(topic)
            .with_subscription("s")
            .with_options(ConsumerOptions {
                initial_position: InitialPosition::Earliest,
                ..Default::default()
            })
            .build::<String>(),
    )
    .await
    .expect("subscribe");
    for i in 0..n {
        let msg = within(STEP, format!("message {i}"), consumer.next())
            .await
            .expect("stream ended")
            .expect("consumer error");
        assert_eq!(msg.payload.data, format!("m{i}").into_bytes());
        consumer.ack(&msg).await.unwrap();
    }
}

#[tokio::test]
async fn the_pulsar_crate_publishes_and_consumes_with_a_token_and_is_refused_without() {
    let (broker, keys) = secured_broker("").await;
    let client = within(
        STEP,
        "connect with a token",
        Pulsar::builder(broker.service_url(), TokioExecutor)
            .with_auth(auth(&token(&keys, "admin")))
            .build(),
    )
    .await
    .expect("connect with the super-user's token");
    round_trip(&client, "persistent://public/default/sec-token", 5).await;

    // A forged token (another key) and no token at all: no producer.
    let forged = SigningKey::from_secret(&issue::generate_secret_key().unwrap())
        .unwrap()
        .token("sub", "admin", None)
        .unwrap();
    for (what, a) in [("forged token", Some(auth(&forged))), ("no token", None)] {
        let mut b = Pulsar::builder(broker.service_url(), TokioExecutor)
            .with_operation_retry_options(pulsar::OperationRetryOptions {
                max_retries: Some(0),
                ..Default::default()
            })
            .with_connection_retry_options(pulsar::ConnectionRetryOptions {
                max_retries: 0,
                ..Default::default()
            });
        if let Some(a) = a {
            b = b.with_auth(a);
        }
        let refused = within(STEP, what, async {
            let client = b.build().await?;
            client
                .producer()
                .with_topic("persistent://public/default/sec-token")
                .build()
                .await
        })
        .await;
        assert!(refused.is_err(), "{what}: a producer was created");
    }

    // A role without grants gets no producer; with a grant it does.
    let alice = within(
        STEP,
        "alice connects",
        Pulsar::builder(broker.service_url(), TokioExecutor)
            .with_auth(auth(&token(&keys, "alice")))
            .with_operation_retry_options(pulsar::OperationRetryOptions {
                max_retries: Some(0),
                ..Default::default()
            })
            .build(),
    )
    .await
    .expect("alice's token is valid");
    let topic = "persistent://public/default/sec-alice";
    let refused = within(
        STEP,
        "alice's producer",
        alice.producer().with_topic(topic).build(),
    )
    .await;
    assert!(
        refused.is_err(),
        "a role without permission created a producer"
    );
    let admin = token(&keys, "admin");
    let (status, body) = common::http_request_as(
        broker.http_port,
        "POST",
        "/admin/v2/namespaces/public/default/permissions/alice",
        r#"["produce","consume"]"#,
        Some(&admin),
    )
    .await
    .unwrap();
    assert_eq!(status, 204, "grant: {body}");
    round_trip(&alice, topic, 3).await;
}

/// A CA and a server certificate for 127.0.0.1 / localhost, as PEM files in
/// `dir`; returns (ca, cert, key) paths.
fn certificates(dir: &std::path::Path) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct subjects: OpenSSL (native-tls, the pulsar crate's TLS) takes a
    // leaf whose subject equals its issuer's for self-signed.
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "kilonova test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let mut params = params;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kilonova test broker");
    let cert = params.signed_by(&key, &issuer).unwrap();
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    (
        write("ca.pem", ca_cert.pem()),
        write("server.pem", cert.pem()),
        write("server.key", key.serialize_pem()),
    )
}

#[tokio::test]
async fn the_pulsar_crate_publishes_and_consumes_over_tls_with_a_token() {
    let certdir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(certdir.path());
    let extra = format!("[tls]\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n");
    // Top-level keys must come before any [section]: put them first. Port 0:
    // the system chooses, the harness reads it from the ports file.
    let extra = format!("pulsar_tls_port = 0\nhttps_port = 0\n{extra}");
    let (broker, keys) = secured_broker(&extra).await;
    let tls_port = broker
        .pulsar_tls_port
        .expect("TLS is configured: the ports file names the Pulsar TLS port");
    let client = within(
        STEP,
        "connect over TLS",
        Pulsar::builder(format!("pulsar+ssl://127.0.0.1:{tls_port}"), TokioExecutor)
            .with_auth(auth(&token(&keys, "admin")))
            .with_certificate_chain_file(&ca)
            .unwrap()
            .build(),
    )
    .await
    .expect("connect over TLS trusting the test CA");
    round_trip(&client, "persistent://public/default/sec-tls", 5).await;
    drop(broker);
}

#[tokio::test]
async fn perf_connect_measures_connects_with_a_token_and_fails_on_a_bad_one() {
    let (broker, keys) = secured_broker("").await;
    let run = |token: String| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_kilonova"))
            .args([
                "perf",
                "connect",
                "--connections",
                "200",
                "--concurrency",
                "4",
            ])
            .args(["--service-url", &broker.service_url()])
            .args(["--auth-token", &token, "--output", "json"])
            .output()
    };
    let out = run(token(&keys, "admin")).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["connections"], 200, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["authenticated"], true, "{v}");
    assert!(v["connects_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    let out = run("not-a-token".into()).await.unwrap();
    assert!(!out.status.success(), "a bad token connected");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("uthentication"), "{stderr}");
    assert!(
        !stderr.contains("not-a-token"),
        "the token was printed: {stderr}"
    );
}
