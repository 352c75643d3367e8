//! `kilonova tokens`: the real binary makes keys and tokens in a temp dir, and
//! its own `validate` (the broker's `TokenAuthenticator`) checks them.

#![allow(clippy::expect_used)] // the helpers below are test code too

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Runs `kilonova tokens ARGS` in `dir`, with `stdin` on its standard input.
fn tokens_with_stdin(dir: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kilonova"))
        .arg("tokens")
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the kilonova binary");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin)
        .expect("write the child's stdin");
    child.wait_with_output().expect("wait for kilonova tokens")
}

fn tokens(dir: &Path, args: &[&str]) -> Output {
    tokens_with_stdin(dir, args, b"")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the command succeeded and returns its stdout.
fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({:?}): {}",
        o.status,
        stderr(&o)
    );
    stdout(&o)
}

/// Asserts the command failed cleanly (exit 1, a message, no panic, nothing
/// on stdout) and returns its stderr.
fn fails(o: Output, what: &str) -> String {
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{what}: {err}");
    assert!(
        err.starts_with("error: ") || err.starts_with("invalid: "),
        "{what}: {err}"
    );
    assert!(!err.contains("panicked"), "{what} panicked: {err}");
    assert!(o.stdout.is_empty(), "{what} printed {:?}", stdout(&o));
    err
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("kilonova-tokens-")
        .tempdir()
        .expect("create a temp dir")
}

/// A token for `subject` signed with the key value `key_flag KEY`.
fn create(dir: &Path, key_flag: &str, key: &str, subject: &str, extra: &[&str]) -> String {
    let mut args = vec!["create", key_flag, key, "--subject", subject];
    args.extend_from_slice(extra);
    let out = ok(tokens(dir, &args), "tokens create");
    assert!(out.ends_with('\n') && out.lines().count() == 1, "{out:?}");
    out.trim().to_owned()
}

/// `create-key-pair` with `--algorithm alg` (the default without), which must succeed.
fn key_pair(dir: &Path, alg: Option<&str>, private: &str, public: &str) {
    let mut args = vec!["create-key-pair"];
    if let Some(alg) = alg {
        args.extend(["--algorithm", alg]);
    }
    args.extend([
        "--output-private-key",
        private,
        "--output-public-key",
        public,
    ]);
    ok(tokens(dir, &args), "create-key-pair");
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("stat a key file")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn a_secret_key_token_validates_with_that_key_and_names_its_role() {
    let dir = tempdir();
    ok(
        tokens(dir.path(), &["create-secret-key", "--output", "secret.key"]),
        "create-secret-key",
    );
    let key = std::fs::read(dir.path().join("secret.key")).expect("read secret.key");
    assert_eq!(key.len(), 32);
    #[cfg(unix)]
    assert_eq!(mode(&dir.path().join("secret.key")), 0o600);

    let token = create(dir.path(), "--secret-key", "file:secret.key", "alice", &[]);
    for key in ["file:secret.key", "secret.key"] {
        let out = ok(
            tokens(dir.path(), &["validate", "--secret-key", key, &token]),
            "validate",
        );
        assert_eq!(out, "valid: role alice\nexpires: never\n");
    }
}

#[test]
fn a_token_does_not_validate_with_another_secret_key() {
    let dir = tempdir();
    for name in ["one.key", "two.key"] {
        ok(
            tokens(dir.path(), &["create-secret-key", "-o", name]),
            "create-secret-key",
        );
    }
    let token = create(dir.path(), "--secret-key", "one.key", "alice", &[]);
    let err = fails(
        tokens(dir.path(), &["validate", "--secret-key", "two.key", &token]),
        "validate with another key",
    );
    assert!(err.contains("signature does not verify"), "{err}");
    assert!(!err.contains(&token), "the token leaked into {err}");
}

#[test]
fn a_base64_secret_key_is_base64_text_that_key_values_read_back() {
    let dir = tempdir();
    let printed = ok(
        tokens(dir.path(), &["create-secret-key", "--base64"]),
        "create-secret-key --base64",
    );
    let b64 = printed.trim();
    assert_eq!(b64.len(), 44, "{printed:?}");
    ok(
        tokens(
            dir.path(),
            &["create-secret-key", "--base64", "-o", "secret.b64"],
        ),
        "create-secret-key --base64 -o",
    );
    let text = std::fs::read_to_string(dir.path().join("secret.b64")).expect("read secret.b64");
    assert_eq!(text.len(), 44, "{text:?}");
    assert!(text.ends_with('='), "{text:?}");

    // The printed text works bare and as a data: URL, and signs the same way.
    let data_url = format!("data:;base64,{b64}");
    let token = create(dir.path(), "--secret-key", b64, "carol", &[]);
    let out = ok(
        tokens(dir.path(), &["validate", "--secret-key", &data_url, &token]),
        "validate with a data: key",
    );
    assert!(out.starts_with("valid: role carol\n"), "{out}");
}

#[test]
fn raw_secret_keys_go_to_stdout_without_output() {
    let dir = tempdir();
    let out = tokens(dir.path(), &["create-secret-key"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout.len(), 32);
}

#[test]
fn key_pair_tokens_validate_with_their_public_key_only() {
    let dir = tempdir();
    for alg in ["ES256", "RS256"] {
        let private = format!("{alg}.private.der");
        let public = format!("{alg}.public.der");
        key_pair(dir.path(), Some(alg), &private, &public);
        #[cfg(unix)]
        assert_eq!(mode(&dir.path().join(&private)), 0o600, "{alg}");

        let token = create(
            dir.path(),
            "--private-key",
            &format!("file:{private}"),
            "bob",
            &["--expiry-time", "1h"],
        );
        let header = ok(tokens(dir.path(), &["show", &token]), "show");
        assert!(
            header.starts_with(&format!("{{\"alg\":\"{alg}\"}}\n")),
            "{header}"
        );
        let out = ok(
            tokens(dir.path(), &["validate", "--public-key", &public, &token]),
            "validate",
        );
        assert!(
            out.starts_with("valid: role bob\nexpires: "),
            "{alg}: {out}"
        );

        // Another pair's public key refuses it.
        key_pair(
            dir.path(),
            Some(alg),
            "other.private.der",
            "other.public.der",
        );
        let err = fails(
            tokens(
                dir.path(),
                &["validate", "--public-key", "other.public.der", &token],
            ),
            "validate with another pair's key",
        );
        assert!(err.contains("signature does not verify"), "{alg}: {err}");
    }
}

#[test]
fn the_default_key_pair_is_rs256() {
    let dir = tempdir();
    key_pair(dir.path(), None, "p.der", "pub.der");
    let token = create(dir.path(), "--private-key", "p.der", "dave", &[]);
    let shown = ok(tokens(dir.path(), &["show", &token]), "show");
    assert!(shown.starts_with("{\"alg\":\"RS256\"}\n"), "{shown}");
}

#[cfg(unix)]
#[test]
fn an_existing_private_key_file_is_narrowed_to_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    let private = dir.path().join("p.der");
    std::fs::write(&private, b"old").expect("write the old file");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o644)).expect("chmod 644");
    key_pair(dir.path(), Some("ES256"), "p.der", "pub.der");
    assert_eq!(mode(&private), 0o600);
    assert_ne!(std::fs::read(&private).expect("read p.der"), b"old");
}

#[test]
fn an_expired_token_fails_validation() {
    let dir = tempdir();
    ok(
        tokens(dir.path(), &["create-secret-key", "-o", "s.key"]),
        "create-secret-key",
    );
    let token = create(
        dir.path(),
        "--secret-key",
        "s.key",
        "erin",
        &["--expiry-time", "1s"],
    );
    let shown = ok(tokens(dir.path(), &["show", &token]), "show");
    let exp = shown
        .lines()
        .nth(2)
        .and_then(|claims| serde_json::from_str::<serde_json::Value>(claims).ok())
        .and_then(|claims| claims["exp"].as_u64())
        .unwrap_or_else(|| panic!("no exp in {shown}"));
    // The token is refused from the second `exp` on; wait for the clock.
    let deadline = Instant::now() + Duration::from_secs(10);
    while now_secs() < exp {
        assert!(
            Instant::now() < deadline,
            "the clock did not reach exp {exp}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let err = fails(
        tokens(dir.path(), &["validate", "--secret-key", "s.key", &token]),
        "validate an expired token",
    );
    assert!(err.contains("expired"), "{err}");
    let shown = ok(tokens(dir.path(), &["show", &token]), "show");
    assert!(shown.contains("(expired)"), "{shown}");
}

#[test]
fn show_prints_the_claims_and_the_expiry_as_a_utc_date() {
    let dir = tempdir();
    ok(
        tokens(dir.path(), &["create-secret-key", "-o", "s.key"]),
        "create-secret-key",
    );
    let before = now_secs();
    let token = create(
        dir.path(),
        "--secret-key",
        "s.key",
        "frank",
        &["-e", "365d"],
    );
    std::fs::write(dir.path().join("token.txt"), format!("{token}\n")).expect("write token.txt");
    let from_arg = ok(tokens(dir.path(), &["show", &token]), "show TOKEN");
    let from_file = ok(
        tokens(dir.path(), &["show", "-f", "token.txt"]),
        "show -f FILE",
    );
    let from_stdin = ok(
        tokens_with_stdin(dir.path(), &["show", "-i"], token.as_bytes()),
        "show -i",
    );
    // `-i TOKEN` (a token after Pulsar's stdin flag) takes the argument.
    let dash_i = ok(tokens(dir.path(), &["show", "-i", &token]), "show -i TOKEN");
    assert_eq!(from_arg, from_file);
    assert_eq!(from_arg, from_stdin);
    assert_eq!(from_arg, dash_i);

    let lines: Vec<&str> = from_arg.lines().collect();
    assert_eq!(lines.len(), 4, "{from_arg}");
    assert_eq!(lines[0], "{\"alg\":\"HS256\"}");
    assert_eq!(lines[1], "---");
    let claims: serde_json::Value = serde_json::from_str(lines[2]).expect("claims are JSON");
    assert_eq!(claims["sub"], "frank");
    let exp = claims["exp"].as_u64().expect("exp is a number");
    assert!(
        (before + 365 * 86_400..=now_secs() + 365 * 86_400).contains(&exp),
        "{exp}"
    );
    // `expires: YYYY-MM-DDTHH:MM:SSZ`, a year from now.
    let date = lines[3].strip_prefix("expires: ").expect("an expires line");
    assert_eq!(date.len(), 20, "{date}");
    assert!(date.ends_with('Z') && date.as_bytes()[10] == b'T', "{date}");
    let year: u64 = date[..4].parse().expect("a year");
    let this_year = 1970 + before / 31_556_952;
    assert!((this_year..=this_year + 2).contains(&year), "{date}");

    // A token without exp shows no expires line.
    let forever = create(dir.path(), "--secret-key", "s.key", "frank", &[]);
    let shown = ok(tokens(dir.path(), &["show", &forever]), "show");
    assert!(!shown.contains("expires"), "{shown}");
}

#[test]
fn validate_reads_the_role_from_the_claim_it_is_told() {
    let dir = tempdir();
    ok(
        tokens(dir.path(), &["create-secret-key", "-o", "s.key"]),
        "create-secret-key",
    );
    let token = create(dir.path(), "--secret-key", "s.key", "gina", &[]);
    let err = fails(
        tokens(
            dir.path(),
            &[
                "validate",
                "--secret-key",
                "s.key",
                "--claim",
                "role",
                &token,
            ],
        ),
        "validate --claim role",
    );
    assert!(err.contains("\"role\""), "{err}");
}

#[test]
fn a_key_path_that_names_no_file_is_an_error_not_a_base64_key() {
    // `/no/such/key` and `/etc/secret/hmac` are valid base64: they used to
    // sign with their own text as the key and exit 0.
    let dir = tempdir();
    let d = dir.path();
    for path in [
        "/no/such/key",
        "/etc/secret/hmac",
        "/missing/file",
        "./absent",
        "~/absent",
    ] {
        for flag in ["--secret-key", "--private-key"] {
            let what = format!("tokens create {flag} {path}");
            let err = fails(tokens(d, &["create", flag, path, "-s", "x"]), &what);
            assert!(err.contains("no key file"), "{what}: {err}");
            for form in [
                "file:PATH",
                "data:;base64,",
                "the path of an existing file",
                "BASE64",
            ] {
                assert!(
                    err.contains(form),
                    "{what}: {err:?} does not name the form {form:?}"
                );
            }
        }
        let what = format!("tokens validate --public-key {path}");
        let err = fails(
            tokens(d, &["validate", "--public-key", path, "a.b.c"]),
            &what,
        );
        assert!(err.contains("no key file"), "{what}: {err}");
    }
    // The same key as a file, as data: and as bare base64 still signs.
    ok(
        tokens(d, &["create-secret-key", "-o", "hmac"]),
        "create-secret-key",
    );
    let raw = std::fs::read(d.join("hmac")).expect("read the key");
    let b64 = kilonova_auth::issue::base64_text(&raw);
    let from_file = create(d, "--secret-key", "./hmac", "x", &[]);
    for value in [
        format!("data:;base64,{b64}"),
        b64.clone(),
        "file:hmac".into(),
    ] {
        let token = create(d, "--secret-key", &value, "x", &[]);
        assert_eq!(token, from_file, "{value} is another key");
    }
}

#[test]
fn bad_inputs_exit_1_with_a_message_and_no_panic() {
    let dir = tempdir();
    let d = dir.path();
    ok(
        tokens(d, &["create-secret-key", "-o", "s.key"]),
        "create-secret-key",
    );
    key_pair(d, Some("ES256"), "p.der", "pub.der");
    let token = create(d, "--secret-key", "s.key", "hank", &[]);
    let secret_b64 = ok(tokens(d, &["create-secret-key", "--base64"]), "b64")
        .trim()
        .to_owned();

    let cases: &[(&[&str], &str)] = &[
        (
            &["create", "--secret-key", "missing.key", "-s", "x"],
            "no key file missing.key",
        ),
        (
            &["create", "--secret-key", "file:missing", "-s", "x"],
            "cannot read the key file missing",
        ),
        (
            &["validate", "--public-key", "missing.der", &token],
            "no key file missing.der",
        ),
        (
            &["create", "--private-key", "s.key", "-s", "x"],
            "private key",
        ),
        (
            &["create", "--private-key", "p.der", "-s", "x", "-a", "XX9"],
            "--algorithm XX9",
        ),
        (
            &["create", "--private-key", "p.der", "-s", "x", "-a", "RS256"],
            "RS256",
        ),
        (
            &["create", "--secret-key", "s.key", "-s", "x", "-a", "ES256"],
            "HS256",
        ),
        (
            &["create", "--secret-key", "s.key", "-s", "x", "-e", "1x"],
            "--expiry-time",
        ),
        (&["create", "--secret-key", "s.key", "-s", ""], "--subject"),
        (
            &[
                "create-key-pair",
                "-a",
                "XX9",
                "--output-private-key",
                "a",
                "--output-public-key",
                "b",
            ],
            "XX9",
        ),
        (
            &[
                "create-key-pair",
                "--output-private-key",
                "a",
                "--output-public-key",
                "a",
            ],
            "same file",
        ),
        (&["show", "garbage"], "malformed token"),
        (&["show", "a.b.c"], "malformed token"),
        (&["show", "-f", "missing.txt"], "cannot read missing.txt"),
        (&["show"], "no token"),
        (
            &["validate", "--secret-key", "s.key", "garbage"],
            "malformed token",
        ),
        (&["validate", "--public-key", "s.key", &token], "public key"),
        // An HS256 token never verifies with a public key (algorithm confusion).
        (
            &["validate", "--public-key", "pub.der", &token],
            "algorithm HS256",
        ),
        (
            &[
                "validate",
                "--secret-key",
                &format!("data:;base64,{secret_b64}!"),
                &token,
            ],
            "base64",
        ),
    ];
    for (args, expected) in cases {
        let what = format!("tokens {}", args.join(" "));
        let err = fails(tokens(d, args), &what);
        assert!(err.contains(expected), "{what}: {err:?} lacks {expected:?}");
        // No message holds a key's or a token's bytes.
        assert!(!err.contains(&token), "{what} leaked the token: {err}");
        assert!(!err.contains(&secret_b64), "{what} leaked the key: {err}");
    }
    // clap's usage errors (a missing key flag) are refused too, not panics.
    let out = tokens(d, &["create", "-s", "x"]);
    assert!(!out.status.success());
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}
