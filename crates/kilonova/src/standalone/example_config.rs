//! config/standalone.toml, the commented example, must stay true: it parses,
//! it names every option of every section, and it holds exactly the defaults.

use std::collections::BTreeMap;

use serde::de::{self, Deserialize, Deserializer, Visitor};

use super::{KafkaConfig, MetadataSettings, StandaloneConfig, StorageSettings};
use kilonova_auth::tls::TlsConfig;
use kilonova_auth::AuthConfig;
use kilonova_broker::BrokerConfig;

const EXAMPLE: &str = include_str!("../../../../config/standalone.toml");

/// The field names a `#[derive(Deserialize)]` struct asks its deserializer
/// for: serde hands them to `deserialize_struct`, which records them and stops.
fn field_names<'de, T: Deserialize<'de>>() -> Vec<&'static str> {
    struct Recorder<'a>(&'a mut Vec<&'static str>);

    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("field names recorded")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }

    impl<'de> Deserializer<'de> for Recorder<'_> {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0.extend_from_slice(fields);
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            enum identifier ignored_any
        }
    }

    let mut names = Vec::new();
    let _ = T::deserialize(Recorder(&mut names));
    names
}

/// For each `[section]` of the example ("" for the top), the keys it sets or
/// shows commented out (`key = …` or `# key = …`).
fn keys_by_section(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let setting = line.strip_prefix('#').map(str::trim).unwrap_or(line);
        if let Some((key, _)) = setting.split_once(" = ") {
            if !key.contains(' ') {
                out.entry(section.clone())
                    .or_default()
                    .push(key.to_string());
            }
        }
    }
    out
}

#[test]
fn the_example_config_parses_and_holds_exactly_the_defaults() {
    let parsed: StandaloneConfig = toml::from_str(EXAMPLE).expect("config/standalone.toml parses");
    assert_eq!(
        format!("{parsed:#?}"),
        format!("{:#?}", StandaloneConfig::default()),
        "config/standalone.toml must set every option to its default"
    );
}

#[test]
fn the_example_config_names_every_option_of_every_section() {
    let shown = keys_by_section(EXAMPLE);
    let sections: [(&str, Vec<&str>); 9] = [
        ("", field_names::<StandaloneConfig>()),
        ("broker", field_names::<BrokerConfig>()),
        ("metadata", field_names::<MetadataSettings>()),
        ("metadata.etcd", field_names::<kilonova_etcd::EtcdConfig>()),
        ("storage", field_names::<StorageSettings>()),
        ("auth", field_names::<AuthConfig>()),
        ("tls", field_names::<TlsConfig>()),
        (
            "offload",
            field_names::<kilonova_broker::tiering::OffloadSettings>(),
        ),
        ("kafka", field_names::<KafkaConfig>()),
    ];
    let subsections: Vec<&str> = sections[1..].iter().map(|(s, _)| *s).collect();
    for (section, fields) in &sections {
        assert!(
            !fields.is_empty(),
            "no field names recorded for [{section}]"
        );
        let keys = shown.get(*section).cloned().unwrap_or_default();
        for field in fields {
            let table = match section.is_empty() {
                true => field.to_string(),
                false => format!("{section}.{field}"),
            };
            if subsections.contains(&table.as_str()) {
                continue; // a table, shown as its own [section]
            }
            assert!(
                keys.iter().any(|k| k == field),
                "config/standalone.toml does not show [{section}] {field}"
            );
        }
        for key in &keys {
            assert!(
                fields.contains(&key.as_str()),
                "config/standalone.toml shows [{section}] {key}, which is no option"
            );
        }
    }
}
