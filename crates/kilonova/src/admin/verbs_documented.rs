//! docs/pulsar-compatibility.md lists every `kilonova admin` verb: a verb
//! added without a row there (what is served, how it differs) fails here.

use clap::{Args, Command};

use super::AdminArgs;

const PAGE: &str = include_str!("../../../../docs/pulsar-compatibility.md");

/// The text of the page under `### `kilonova admin GROUP``, to the next heading.
fn group_section(group: &str) -> Option<&'static str> {
    let heading = format!("### `kilonova admin {group}`\n");
    let start = PAGE.find(&heading)? + heading.len();
    let rest = &PAGE[start..];
    let end = rest.find("\n#").map_or(rest.len(), |i| i + 1);
    Some(&rest[..end])
}

fn names(cmd: &Command) -> Vec<String> {
    cmd.get_subcommands()
        .map(|c| c.get_name().to_string())
        .filter(|n| n != "help")
        .collect()
}

#[test]
fn every_admin_verb_has_a_row_in_the_compatibility_page() {
    let admin = AdminArgs::augment_args(Command::new("admin"));
    let mut missing = Vec::new();
    let groups: Vec<&Command> = admin
        .get_subcommands()
        .filter(|g| g.get_name() != "help")
        .collect();
    assert!(groups.len() >= 6, "the admin command tree was not walked");
    for group in groups {
        let name = group.get_name();
        let Some(section) = group_section(name) else {
            missing.push(format!("the section for `kilonova admin {name}`"));
            continue;
        };
        for verb in names(group) {
            if !section.contains(&format!("`{verb}`")) {
                missing.push(format!("{name} {verb}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/pulsar-compatibility.md does not list: {}",
        missing.join(", ")
    );
}
