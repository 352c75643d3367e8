//! The standalone command as a newcomer meets it: the commented example
//! config starts a broker, and logs written to a file carry no colour codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Broker;

#[tokio::test]
async fn the_example_config_starts_a_broker_whose_file_log_has_no_colour_codes() {
    let example = include_str!("../../../config/standalone.toml");
    let mut broker = Broker::start_with(Some(example), None).await;
    let log = broker.stderr_tail(1000);
    assert!(
        log.contains("INFO"),
        "the broker logged nothing at info level:\n{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log that is not a terminal:\n{log}"
    );
    assert!(broker.terminate().await.success());
}
