//! `kilonova tokens …`: `pulsar tokens`' verbs for making keys and tokens and
//! looking at them, on top of [`kilonova_auth::issue`].
//!
//! - `create-secret-key`: a random HS256 secret;
//! - `create-key-pair`: an RS256 or ES256 private key (PKCS#8 DER, mode 0600)
//!   and its public key (SubjectPublicKeyInfo DER), the files brokers read;
//! - `create`: a token for a role, signed with a secret or a private key;
//! - `show`: a token's header and claims, unverified;
//! - `validate`: whether a token verifies with a key, and for which role.
//!
//! Keys are given as the broker's configuration gives them (`file:PATH`,
//! `data:;base64,…`, a path, or base64). A failure prints `error: <reason>`
//! (`invalid: <reason>` when `validate` refuses a token) on stderr and exits
//! with code 1; no message ever holds a key's or a token's bytes.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use kilonova_auth::issue::{self, KeyPairAlgorithm, SigningKey};
use kilonova_auth::{keys, AuthError, KeyError, TokenAuthenticator};
use serde_json::Value;

/// The largest token `show` and `validate` read from a file or stdin; Pulsar's
/// tokens are a few hundred bytes.
const MAX_TOKEN_BYTES: u64 = 64 * 1024;

#[derive(Subcommand)]
pub enum TokensCommand {
    /// Create a random secret key for HS256 tokens.
    CreateSecretKey {
        /// Write the key to FILE (mode 0600) instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Write the key as base64 text instead of raw bytes.
        #[arg(short = 'e', long)]
        base64: bool,
    },
    /// Create a private/public key pair for RS256 or ES256 tokens.
    CreateKeyPair {
        /// RS256 (RSA 2048) or ES256 (ECDSA P-256).
        #[arg(
            short,
            long,
            alias = "signature-algorithm",
            value_name = "ALG",
            default_value = "RS256"
        )]
        algorithm: String,
        /// Where the private key goes (PKCS#8 DER, mode 0600).
        #[arg(long, value_name = "FILE")]
        output_private_key: PathBuf,
        /// Where the public key goes (SubjectPublicKeyInfo DER).
        #[arg(long, value_name = "FILE")]
        output_public_key: PathBuf,
    },
    /// Create a token for a role, signed with a secret key or a private key.
    Create {
        #[command(flatten)]
        key: SigningKeyArgs,
        /// The role the token names (its `sub` claim).
        #[arg(short, long, value_name = "ROLE")]
        subject: String,
        /// Make the token expire after this long: 30s, 15m, 12h, 7d, 2w, 1y
        /// (a bare number is seconds). Without it the token never expires.
        #[arg(short, long, value_name = "TIME")]
        expiry_time: Option<String>,
        /// The signature algorithm; by default HS256 for a secret key, RS256
        /// for an RSA key, ES256 for a P-256 key, EdDSA for an Ed25519 key.
        #[arg(short, long, alias = "signature-algorithm", value_name = "ALG")]
        algorithm: Option<String>,
        /// Name the signing key in the token's `kid` header (a broker with
        /// several keys, e.g. from a JWKS file, checks it with that key).
        #[arg(long, value_name = "KID")]
        key_id: Option<String>,
    },
    /// Show a token's header and claims, without verifying it.
    Show {
        #[command(flatten)]
        token: TokenArgs,
    },
    /// Check that a token verifies with a key, and print its role.
    Validate {
        #[command(flatten)]
        key: VerifyingKeyArgs,
        #[command(flatten)]
        token: TokenArgs,
        /// The claim that names the role (the broker's `token_auth_claim`).
        #[arg(long, value_name = "CLAIM", default_value = "sub")]
        claim: String,
    },
}

#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct SigningKeyArgs {
    /// The secret key (HS256): file:PATH, data:;base64,…, a path, or base64.
    #[arg(long, value_name = "KEY")]
    secret_key: Option<String>,
    /// The private key (PKCS#8 DER or PEM): file:PATH, data:;base64,…, a
    /// path, or base64.
    #[arg(long, value_name = "KEY")]
    private_key: Option<String>,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct VerifyingKeyArgs {
    /// The secret key the token was signed with.
    #[arg(long, value_name = "KEY")]
    secret_key: Option<String>,
    /// The public key of the private key the token was signed with (DER or PEM).
    #[arg(long, value_name = "KEY")]
    public_key: Option<String>,
}

/// Where the token comes from: the argument, a file, or stdin.
#[derive(Args)]
pub struct TokenArgs {
    /// The token.
    #[arg(value_name = "TOKEN", conflicts_with = "token_file")]
    token: Option<String>,
    /// Read the token from FILE.
    #[arg(short = 'f', long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Read the token from standard input (as `pulsar tokens` does); with a
    /// TOKEN argument, `-i TOKEN` takes the argument.
    #[arg(short = 'i', long, conflicts_with = "token_file")]
    stdin: bool,
}

/// Why a verb failed.
enum Failure {
    /// `validate`: the token does not prove a role with this key.
    Refused(AuthError),
    /// Anything else, as a message for the user.
    Error(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Refused(e) => write!(f, "invalid: {e}"),
            Failure::Error(m) => write!(f, "error: {m}"),
        }
    }
}

fn error(message: impl Into<String>) -> Failure {
    Failure::Error(message.into())
}

/// `KeyError`'s message without its generic prefix, under `context`.
fn key_error(context: &str, e: KeyError) -> Failure {
    match e {
        KeyError::Invalid(m) | KeyError::Config(m) => error(format!("{context}: {m}")),
        other @ KeyError::NoFile(_) => error(format!("{context}: {other}")),
        other @ (KeyError::Read { .. } | KeyError::Write { .. }) => error(other.to_string()),
    }
}

/// Runs one tokens verb. A failure does not return: it prints its reason on
/// stderr and exits with code 1.
pub fn run(command: TokensCommand) -> anyhow::Result<()> {
    match execute(command).and_then(|out| write_stdout(&out)) {
        Ok(()) => Ok(()),
        Err(e) => {
            // Nothing useful is left to do if stderr is gone too.
            let _ = writeln!(io::stderr(), "{e}");
            std::process::exit(1)
        }
    }
}

/// The verb's effect; returns the bytes to print on stdout once it has
/// fully succeeded.
fn execute(command: TokensCommand) -> Result<Vec<u8>, Failure> {
    match command {
        TokensCommand::CreateSecretKey { output, base64 } => create_secret_key(output, base64),
        TokensCommand::CreateKeyPair {
            algorithm,
            output_private_key,
            output_public_key,
        } => create_key_pair(&algorithm, &output_private_key, &output_public_key),
        TokensCommand::Create {
            key,
            subject,
            expiry_time,
            algorithm,
            key_id,
        } => create(
            key,
            &subject,
            expiry_time.as_deref(),
            algorithm.as_deref(),
            key_id,
        ),
        TokensCommand::Show { token } => show(&read_token(token)?),
        TokensCommand::Validate { key, token, claim } => validate(key, &read_token(token)?, &claim),
    }
}

fn create_secret_key(output: Option<PathBuf>, base64: bool) -> Result<Vec<u8>, Failure> {
    let key = issue::generate_secret_key().map_err(|e| key_error("secret key", e))?;
    let bytes = if base64 {
        issue::base64_text(&key).into_bytes()
    } else {
        key
    };
    match output {
        Some(path) => {
            write_file(&path, &bytes, true)?;
            Ok(Vec::new())
        }
        None if base64 => Ok([bytes.as_slice(), b"\n"].concat()),
        None if io::stdout().is_terminal() => Err(error(
            "refusing to write a raw key to a terminal: use --output FILE or --base64",
        )),
        None => Ok(bytes),
    }
}

fn create_key_pair(algorithm: &str, private: &Path, public: &Path) -> Result<Vec<u8>, Failure> {
    let alg = KeyPairAlgorithm::parse(algorithm).map_err(|e| key_error("--algorithm", e))?;
    if private == public {
        return Err(error(
            "--output-private-key and --output-public-key name the same file",
        ));
    }
    let pair = issue::generate_key_pair(alg).map_err(|e| key_error("key pair", e))?;
    write_file(private, &pair.private_der, true)?;
    write_file(public, &pair.public_der, false)?;
    Ok(Vec::new())
}

fn create(
    key: SigningKeyArgs,
    subject: &str,
    expiry_time: Option<&str>,
    algorithm: Option<&str>,
    key_id: Option<String>,
) -> Result<Vec<u8>, Failure> {
    if subject.is_empty() {
        return Err(error("--subject is empty: a token names a role"));
    }
    if key_id.as_deref().is_some_and(str::is_empty) {
        return Err(error("--key-id is empty"));
    }
    let signing = match (key.secret_key, key.private_key) {
        (Some(value), _) => {
            let secret = read_key(&value, "--secret-key")?;
            let signing =
                SigningKey::from_secret(&secret).map_err(|e| key_error("--secret-key", e))?;
            // A secret key signs HS256 only (`SigningKey::from_secret`).
            if let Some(alg) = algorithm {
                if !alg.eq_ignore_ascii_case("HS256") {
                    return Err(error(format!(
                        "--algorithm {alg}: a secret key signs HS256 tokens only"
                    )));
                }
            }
            signing
        }
        (None, Some(value)) => {
            let private = read_key(&value, "--private-key")?;
            let alg = algorithm.map(parse_algorithm).transpose()?;
            SigningKey::from_private_key(&private, alg)
                .map_err(|e| key_error("--private-key", e))?
        }
        (None, None) => return Err(error("give --secret-key or --private-key")),
    };
    let signing = match key_id {
        Some(kid) => signing.with_key_id(kid),
        None => signing,
    };
    let expires_at_secs = match expiry_time {
        None => None,
        Some(t) => {
            let after = issue::parse_relative_time(t).map_err(|e| key_error("--expiry-time", e))?;
            Some(
                now_secs()?
                    .checked_add(after.as_secs())
                    .ok_or_else(|| error(format!("--expiry-time {t} is too far away")))?,
            )
        }
    };
    let token = signing
        .token("sub", subject, expires_at_secs)
        .map_err(|e| key_error("token", e))?;
    Ok(format!("{token}\n").into_bytes())
}

fn show(token: &str) -> Result<Vec<u8>, Failure> {
    let (header, claims) = issue::decode_unverified(token).map_err(|e| match e {
        KeyError::Invalid(m) | KeyError::Config(m) => error(format!("malformed token: {m}")),
        other => error(other.to_string()),
    })?;
    // Pulsar's `tokens show` layout: header, `---`, claims.
    let mut out = format!("{header}\n---\n{claims}\n");
    if let Some(exp) = claims.get("exp").and_then(numeric_date) {
        let expired = if exp <= now_secs()? { " (expired)" } else { "" };
        out.push_str(&format!("expires: {}{expired}\n", utc_date(exp)));
    }
    Ok(out.into_bytes())
}

fn validate(key: VerifyingKeyArgs, token: &str, claim: &str) -> Result<Vec<u8>, Failure> {
    let authenticator = match (key.secret_key, key.public_key) {
        (Some(value), _) => {
            let secret = read_key(&value, "--secret-key")?;
            if secret.is_empty() {
                return Err(error("--secret-key: the secret key is empty"));
            }
            TokenAuthenticator::with_secret(&secret, claim)
                .map_err(|e| key_error("--secret-key", e))?
        }
        (None, Some(value)) => {
            let public = read_key(&value, "--public-key")?;
            TokenAuthenticator::with_public_key(&public, claim)
                .map_err(|e| key_error("--public-key", e))?
        }
        (None, None) => return Err(error("give --secret-key or --public-key")),
    };
    let principal = authenticator
        .authenticate(token)
        .map_err(Failure::Refused)?;
    let expires = principal
        .expires_at_secs
        .map_or_else(|| "never".to_owned(), utc_date);
    Ok(format!("valid: role {}\nexpires: {expires}\n", principal.role).into_bytes())
}

/// The bytes of a key value (a path that names no file is an error saying
/// which forms a key takes).
fn read_key(value: &str, flag: &str) -> Result<Vec<u8>, Failure> {
    keys::read_key(value).map_err(|e| key_error(flag, e))
}

/// An algorithm name as JWT headers spell it (`RS256`, `ES256`, `EdDSA`, …),
/// in any case. Generic so the binary needs no `jsonwebtoken` dependency: the
/// caller's type (`jsonwebtoken::Algorithm`) is inferred.
fn parse_algorithm<A: FromStr>(s: &str) -> Result<A, Failure> {
    let name = if s.eq_ignore_ascii_case("eddsa") {
        "EdDSA".to_owned()
    } else {
        s.to_ascii_uppercase()
    };
    name.parse().map_err(|_| {
        error(format!(
            "--algorithm {s}: unknown; one of RS256, RS384, RS512, PS256, PS384, PS512, \
             ES256, ES384, EdDSA (HS256 with --secret-key)"
        ))
    })
}

/// The token from the argument, `--token-file` or stdin, trimmed.
fn read_token(args: TokenArgs) -> Result<String, Failure> {
    let text = match (args.token, args.token_file, args.stdin) {
        (Some(token), _, _) => token,
        (None, Some(path), _) => {
            let file = File::open(&path)
                .map_err(|e| error(format!("cannot read {}: {e}", path.display())))?;
            read_capped(file, &path.display().to_string())?
        }
        (None, None, true) => read_capped(io::stdin().lock(), "standard input")?,
        (None, None, false) => {
            return Err(error(
                "no token: give it as an argument, with -f FILE, or on stdin with -i",
            ))
        }
    };
    let token = text.trim();
    if token.is_empty() {
        return Err(error("the token is empty"));
    }
    Ok(token.to_owned())
}

fn read_capped(source: impl Read, what: &str) -> Result<String, Failure> {
    let mut bytes = Vec::new();
    source
        .take(MAX_TOKEN_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| error(format!("cannot read {what}: {e}")))?;
    if bytes.len() as u64 > MAX_TOKEN_BYTES {
        return Err(error(format!(
            "{what} holds more than {MAX_TOKEN_BYTES} bytes: not a token"
        )));
    }
    String::from_utf8(bytes).map_err(|_| error(format!("{what} is not UTF-8 text: not a token")))
}

/// Writes `bytes` to `path`, replacing it; a `private` file is made readable
/// by its owner only (mode 0600), even if it existed with wider permissions.
fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), Failure> {
    let failed = |e: io::Error| error(format!("cannot write {}: {e}", path.display()));
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(failed)?;
    #[cfg(unix)]
    if private {
        // `mode` applies only when the file is created.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(failed)?;
    }
    #[cfg(not(unix))]
    let _ = private;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(failed)
}

fn write_stdout(bytes: &[u8]) -> Result<(), Failure> {
    let mut stdout = io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        // `kilonova tokens show … | head`: the reader has what it wanted.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(error(format!("cannot write the output: {e}"))),
        Ok(()) => Ok(()),
    }
}

fn now_secs() -> Result<u64, Failure> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| error("the system clock is before 1970"))
}

/// A JWT NumericDate: seconds since the epoch, an integer or a float.
fn numeric_date(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

use kilonova_broker::clock::civil_from_days;

/// Seconds since the epoch as an RFC 3339 UTC time, `2027-12-01T10:00:00Z`.
fn utc_date(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_match_known_instants() {
        assert_eq!(utc_date(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_date(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_date(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(utc_date(1_811_671_200), "2027-05-30T10:00:00Z");
        assert_eq!(utc_date(4_102_444_799), "2099-12-31T23:59:59Z");
        assert_eq!(utc_date(4_107_542_400), "2100-03-01T00:00:00Z");
        // Absurd but well-formed expiries print without overflow.
        assert!(utc_date(u64::MAX).ends_with('Z'));
    }

    #[test]
    fn civil_dates_step_through_month_and_leap_boundaries() {
        // Every day from 1970 to 2100 follows its predecessor.
        let mut prev = civil_from_days(0);
        assert_eq!(prev, (1970, 1, 1));
        for days in 1..47_482 {
            let (y, m, d) = civil_from_days(days);
            let next_day = (y, m, d) == (prev.0, prev.1, prev.2 + 1);
            let next_month = (y, m, d) == (prev.0, prev.1 + 1, 1);
            let next_year = (y, m, d) == (prev.0 + 1, 1, 1) && prev.1 == 12;
            assert!(
                next_day || next_month || next_year,
                "{prev:?} -> {y}-{m}-{d}"
            );
            let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
            let month_len = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            assert!(d <= month_len[(m - 1) as usize], "{y}-{m}-{d}");
            prev = (y, m, d);
        }
    }

    #[test]
    fn algorithm_names_parse_in_any_case() {
        assert_eq!(
            parse_algorithm::<TestAlg>("es256").ok(),
            Some(TestAlg("ES256".into()))
        );
        assert_eq!(
            parse_algorithm::<TestAlg>("eddsa").ok(),
            Some(TestAlg("EdDSA".into()))
        );
        assert!(parse_algorithm::<TestAlg>("nope").is_err());
    }

    /// Stands in for `jsonwebtoken::Algorithm`, which this crate does not name.
    #[derive(Debug, PartialEq)]
    struct TestAlg(String);

    impl FromStr for TestAlg {
        type Err = ();
        fn from_str(s: &str) -> Result<Self, ()> {
            ["ES256", "EdDSA"]
                .contains(&s)
                .then(|| TestAlg(s.to_owned()))
                .ok_or(())
        }
    }
}
