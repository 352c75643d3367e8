//! The connection flags of `kilonova client` (and of `kilonova perf`'s Pulsar
//! commands): the service URL, a token, and the CA a `pulsar+ssl://` broker's
//! certificate must chain to. Their names are the admin CLI's
//! (`--auth-token`, `--tls-trust-cert-path`, same environment variables) and
//! pulsar-client's (`--url`, `--auth-plugin`/`--auth-params`,
//! `--tlsTrustCertsFilePath`).

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Context;
use kilonova_client::{Client, ConnectOptions};

/// A token, kept out of `Debug` output.
#[derive(Clone)]
pub struct Token(String);

impl FromStr for Token {
    type Err = String;

    fn from_str(s: &str) -> Result<Token, String> {
        Ok(Token(s.trim().to_owned()))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// The class name pulsar-client's `--auth-plugin` takes for tokens.
const TOKEN_PLUGIN: &str = "org.apache.pulsar.client.impl.auth.AuthenticationToken";

/// Credentials and TLS trust, flattened into every command that connects.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Credentials {
    /// Present this token at CONNECT (Pulsar's token authentication).
    #[arg(long, env = "KILONOVA_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<Token>,
    /// pulsar-client's way: `AuthenticationToken` (or `token`); anything else is refused.
    #[arg(long, value_name = "PLUGIN")]
    pub auth_plugin: Option<String>,
    /// pulsar-client's way: `token:TOKEN` or `file:///path/to/token` (the
    /// plugin's parameters), with `--auth-plugin` or alone.
    #[arg(long, value_name = "PARAMS")]
    pub auth_params: Option<Token>,
    /// CA certificates (PEM) a `pulsar+ssl://` broker's certificate must chain to.
    #[arg(
        long,
        visible_alias = "tlsTrustCertsFilePath",
        env = "KILONOVA_TLS_TRUST_CERT_PATH"
    )]
    pub tls_trust_cert_path: Option<PathBuf>,
}

impl Credentials {
    /// The token to present, from `--auth-token` or `--auth-params`.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(plugin) = &self.auth_plugin {
            let plugin = plugin.trim();
            anyhow::ensure!(
                plugin == TOKEN_PLUGIN
                    || plugin.eq_ignore_ascii_case("token")
                    || plugin.eq_ignore_ascii_case("AuthenticationToken"),
                "--auth-plugin {plugin}: only token authentication ({TOKEN_PLUGIN}) is supported"
            );
        }
        let params = match &self.auth_params {
            None => {
                anyhow::ensure!(
                    self.auth_plugin.is_none(),
                    "--auth-plugin needs --auth-params (token:TOKEN or file:///path)"
                );
                return Ok(self.auth_token.as_ref().map(|Token(t)| t.clone()));
            }
            Some(Token(p)) => p,
        };
        anyhow::ensure!(
            self.auth_token.is_none(),
            "give the token once: --auth-token or --auth-params"
        );
        let token = if let Some(t) = params.strip_prefix("token:") {
            t.to_owned()
        } else if let Some(path) = params.strip_prefix("file://") {
            std::fs::read_to_string(path)
                .with_context(|| format!("--auth-params: reading the token file {path}"))?
        } else if params.starts_with('{') {
            // The JSON form: {"token": "…"}.
            let v: serde_json::Value =
                serde_json::from_str(params).context("--auth-params: invalid JSON")?;
            v.get("token")
                .and_then(|t| t.as_str())
                .context("--auth-params: no \"token\" in the JSON")?
                .to_owned()
        } else {
            anyhow::bail!("--auth-params: expected token:TOKEN or file:///path/to/token");
        };
        let token = token.trim().to_owned();
        anyhow::ensure!(!token.is_empty(), "--auth-params: the token is empty");
        Ok(Some(token))
    }

    pub fn connect_options(&self) -> anyhow::Result<ConnectOptions> {
        Ok(ConnectOptions {
            token: self.token()?,
            tls_trust_certs: self.tls_trust_cert_path.clone(),
        })
    }
}

/// The broker to talk to, and how.
#[derive(clap::Args, Debug, Clone)]
pub struct Connection {
    /// The broker's service URL: `pulsar://host:port` or `pulsar+ssl://host:port`.
    #[arg(
        long,
        visible_alias = "service-url",
        env = "KILONOVA_SERVICE_URL",
        default_value = "pulsar://127.0.0.1:6650"
    )]
    pub url: String,
    #[command(flatten)]
    pub credentials: Credentials,
}

impl Connection {
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let options = self.credentials.connect_options()?;
        Client::connect_with(&self.url, &options)
            .await
            .with_context(|| format!("connecting to {}", self.url))
    }
}

/// Rewrites pulsar-client's and pulsar-perf's single-dash long flags
/// (`-db`, `-mk random`, `-ns=2`), which clap cannot parse, into the long
/// flags they stand for, in a `kilonova <command> …` line whose command is
/// `command`, up to a `--`.
pub fn pulsar_style_args(
    args: Vec<OsString>,
    command: &str,
    table: &[(&str, &str)],
) -> Vec<OsString> {
    let mut args = args;
    if args.get(1).is_none_or(|a| a != command) {
        return args;
    }
    for arg in args.iter_mut().skip(2) {
        if arg == "--" {
            break;
        }
        // A flag is ASCII; an argument that is not UTF-8 is a value.
        let Some(text) = arg.to_str() else { continue };
        let (flag, value) = match text.split_once('=') {
            Some((flag, value)) => (flag, Some(value)),
            None => (text, None),
        };
        if let Some((_, long)) = table.iter().find(|(short, _)| *short == flag) {
            *arg = match value {
                Some(v) => OsString::from(format!("{long}={v}")),
                None => OsString::from(long),
            };
        }
    }
    args
}

/// pulsar-client's single-dash long flags.
pub const CLIENT_SINGLE_DASH_FLAGS: &[(&str, &str)] = &[
    ("-db", "--disable-batching"),
    ("-sp", "--subscription-position"),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(token: Option<&str>, plugin: Option<&str>, params: Option<&str>) -> Credentials {
        Credentials {
            auth_token: token.map(|t| Token(t.into())),
            auth_plugin: plugin.map(str::to_owned),
            auth_params: params.map(|p| Token(p.into())),
            tls_trust_cert_path: None,
        }
    }

    #[test]
    fn a_token_comes_from_auth_token_or_auth_params() {
        assert_eq!(creds(None, None, None).token().unwrap(), None);
        assert_eq!(
            creds(Some("abc"), None, None).token().unwrap().as_deref(),
            Some("abc")
        );
        assert_eq!(
            creds(None, Some(TOKEN_PLUGIN), Some("token:xyz"))
                .token()
                .unwrap()
                .as_deref(),
            Some("xyz")
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t");
        std::fs::write(&file, "from-file\n").unwrap();
        let params = format!("file://{}", file.display());
        assert_eq!(
            creds(None, None, Some(&params)).token().unwrap().as_deref(),
            Some("from-file")
        );
        assert_eq!(
            creds(None, None, Some(r#"{"token":"j"}"#))
                .token()
                .unwrap()
                .as_deref(),
            Some("j")
        );
    }

    #[test]
    fn other_plugins_and_two_tokens_are_refused() {
        assert!(creds(None, Some("AuthenticationTls"), Some("x"))
            .token()
            .is_err());
        assert!(creds(Some("a"), None, Some("token:b")).token().is_err());
        assert!(creds(None, Some("token"), None).token().is_err());
        assert!(creds(None, None, Some("nonsense")).token().is_err());
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let c = creds(Some("s3cr3t"), None, Some("token:s3cr3t"));
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    #[test]
    fn single_dash_flags_are_rewritten_only_for_their_command() {
        let line = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let out = pulsar_style_args(
            line(&[
                "kilonova",
                "client",
                "produce",
                "-db",
                "-sp=Earliest",
                "--",
                "-db",
            ]),
            "client",
            CLIENT_SINGLE_DASH_FLAGS,
        );
        assert_eq!(
            out,
            line(&[
                "kilonova",
                "client",
                "produce",
                "--disable-batching",
                "--subscription-position=Earliest",
                "--",
                "-db"
            ])
        );
        let other = line(&["kilonova", "admin", "-db"]);
        assert_eq!(
            pulsar_style_args(other.clone(), "client", CLIENT_SINGLE_DASH_FLAGS),
            other
        );
    }
}
