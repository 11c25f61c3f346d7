//! `--web-config FILE`: TLS and basic authentication for `/metrics`, in the YAML format
//! Prometheus' exporters share (exporter-toolkit's `tls_server_config` and `basic_auth_users`
//! with bcrypt hashes), so a fleet's existing file and scrape configuration work unchanged.
//!
//! The whole file is checked at start-up: a key tracer does not implement, a certificate that
//! does not load or a password that is not a bcrypt hash stops the daemon with the key named,
//! never a server that silently ignores part of its configuration.
use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use base64::Engine as _;
use rustls::{RootCertStore, ServerConfig, server::WebPkiClientVerifier, version};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde::Deserialize;
use tokio::sync::Semaphore;

/// Successful credentials remembered, so that a scraper's every request does not pay a bcrypt
/// verification (tens of milliseconds at the usual cost).
const VERIFIED_CACHE: usize = 64;
/// bcrypt verifications running at once: wrong passwords cannot take more CPU than this.
const CONCURRENT_VERIFICATIONS: usize = 2;

#[derive(Debug, thiserror::Error)]
#[error("--web-config {path}: {reason}")]
pub struct WebConfigError {
    path: PathBuf,
    reason: String,
}

/// What `/metrics` requires of its clients: TLS, credentials, both or neither (the default).
#[derive(Clone, Default)]
pub struct WebConfig {
    pub tls: Option<Arc<ServerConfig>>,
    pub auth: Option<Arc<BasicAuth>>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("basic_auth_users", &self.auth.as_ref().map(|a| a.users.len()))
            .finish()
    }
}

// The file, as exporter-toolkit defines it. Keys it knows that tracer does not implement are
// read so that they can be refused by name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    basic_auth_users: Option<BTreeMap<String, String>>,
    http_server_config: Option<HttpFile>,
    rate_limit: Option<serde_norway::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    min_version: Option<String>,
    max_version: Option<String>,
    cert: Option<serde_norway::Value>,
    key: Option<serde_norway::Value>,
    client_ca: Option<serde_norway::Value>,
    client_allowed_sans: Option<serde_norway::Value>,
    cipher_suites: Option<serde_norway::Value>,
    prefer_server_cipher_suites: Option<serde_norway::Value>,
    curve_preferences: Option<serde_norway::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    http2: Option<bool>,
    headers: Option<serde_norway::Value>,
}

impl WebConfig {
    /// Reads and checks `path`; relative file names in it are relative to its directory.
    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        let fail = |reason: String| WebConfigError { path: path.to_owned(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).map_err(fail)
    }

    fn parse(text: &str, base: &Path) -> Result<Self, String> {
        // An empty file is a valid (empty) configuration for exporter-toolkit too.
        let file: File = if text.trim().is_empty() {
            File {
                tls_server_config: None,
                basic_auth_users: None,
                http_server_config: None,
                rate_limit: None,
            }
        } else {
            serde_norway::from_str(text).map_err(|e| format!("not a valid web config: {e}"))?
        };
        if file.rate_limit.is_some() {
            return Err(unsupported("rate_limit"));
        }
        if let Some(http) = &file.http_server_config {
            if http.headers.is_some() {
                return Err(unsupported("http_server_config.headers"));
            }
            if http.http2 == Some(true) {
                log::info!("--web-config: http2 has no effect, /metrics is served over HTTP/1.1");
            }
        }
        let tls = file.tls_server_config.map(|t| tls_config(&t, base)).transpose()?;
        let auth = match file.basic_auth_users {
            Some(users) if !users.is_empty() => Some(Arc::new(BasicAuth::new(users)?)),
            _ => None,
        };
        if auth.is_some() && tls.is_none() {
            log::warn!(
                "--web-config: basic_auth_users without tls_server_config: passwords cross the \
                 network in clear text"
            );
        }
        Ok(Self { tls: tls.map(Arc::new), auth })
    }
}

/// How the daemon and `tracer status` name the endpoint: `https://ADDR/metrics (basic auth)`.
pub fn metrics_url(addr: &str, tls: bool, basic_auth: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let auth = if basic_auth { " (basic auth)" } else { "" };
    format!("{scheme}://{addr}/metrics{auth}")
}

/// [`WebConfig::parse`] for `crate::fuzzing::web_config`.
pub(crate) fn parse_for_fuzzing(text: &str, base: &Path) -> Result<(), String> {
    WebConfig::parse(text, base).map(drop)
}

fn unsupported(key: &str) -> String {
    format!("{key} is not supported by tracer; remove it (docs/security.md lists what is)")
}

fn tls_config(file: &TlsFile, base: &Path) -> Result<ServerConfig, String> {
    for (key, set) in [
        ("cert", file.cert.is_some()),
        ("key", file.key.is_some()),
        ("client_ca", file.client_ca.is_some()),
        ("client_allowed_sans", file.client_allowed_sans.is_some()),
        ("cipher_suites", file.cipher_suites.is_some()),
        ("prefer_server_cipher_suites", file.prefer_server_cipher_suites.is_some()),
        ("curve_preferences", file.curve_preferences.is_some()),
    ] {
        if set {
            return Err(unsupported(&format!("tls_server_config.{key}")));
        }
    }
    let (Some(cert_file), Some(key_file)) = (&file.cert_file, &file.key_file) else {
        return Err("tls_server_config needs both cert_file and key_file".to_owned());
    };
    let cert_path = base.join(cert_file);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| format!("cert_file {}: {e}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!("cert_file {}: no PEM certificate in it", cert_path.display()));
    }
    let key_path = base.join(key_file);
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| format!("key_file {}: {e}", key_path.display()))?;

    let min = tls_version(file.min_version.as_deref(), "min_version", Tls::V12)?;
    let max = tls_version(file.max_version.as_deref(), "max_version", Tls::V13)?;
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = match (min, max) {
        (Tls::V12, Tls::V13) => vec![&version::TLS13, &version::TLS12],
        (Tls::V12, Tls::V12) => vec![&version::TLS12],
        (Tls::V13, Tls::V13) => vec![&version::TLS13],
        (Tls::V13, Tls::V12) => {
            return Err("tls_server_config: min_version TLS13 is above max_version TLS12".into());
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .map_err(|e| format!("tls_server_config: {e}"))?;

    let auth_type = file.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let client_roots = file.client_ca_file.as_ref().map(|f| client_roots(&base.join(f)));
    let builder = match (auth_type, client_roots) {
        ("NoClientCert", None) => builder.with_no_client_auth(),
        ("NoClientCert", Some(_)) => {
            return Err("client_ca_file is set but client_auth_type is NoClientCert: set \
                        client_auth_type to RequireAndVerifyClientCert or \
                        VerifyClientCertIfGiven"
                .into());
        }
        ("RequireAndVerifyClientCert" | "VerifyClientCertIfGiven", None) => {
            return Err(format!("client_auth_type {auth_type} needs client_ca_file"));
        }
        ("RequireAndVerifyClientCert" | "VerifyClientCertIfGiven", Some(roots)) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots?), provider);
            let verifier = if auth_type == "VerifyClientCertIfGiven" {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier.build().map_err(|e| format!("client_ca_file: {e}"))?,
            )
        }
        ("RequestClientCert" | "RequireAnyClientCert", _) => {
            return Err(format!(
                "client_auth_type {auth_type} (client certificates that are not verified) is \
                 not supported; use RequireAndVerifyClientCert or VerifyClientCertIfGiven with \
                 client_ca_file"
            ));
        }
        (other, _) => {
            return Err(format!(
                "client_auth_type {other:?} is none of NoClientCert, VerifyClientCertIfGiven, \
                 RequireAndVerifyClientCert"
            ));
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("cert_file and key_file do not make a usable pair: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tls {
    V12,
    V13,
}

fn tls_version(value: Option<&str>, key: &str, default: Tls) -> Result<Tls, String> {
    match value {
        None => Ok(default),
        Some("TLS12") => Ok(Tls::V12),
        Some("TLS13") => Ok(Tls::V13),
        Some(old @ ("TLS10" | "TLS11")) => Err(format!(
            "tls_server_config.{key} {old} is not supported (tracer serves TLS 1.2 and 1.3 only)"
        )),
        Some(other) => Err(format!("tls_server_config.{key} {other:?} is neither TLS12 nor TLS13")),
    }
}

fn client_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("client_ca_file {}: {e}", path.display()))?
    {
        let cert = cert.map_err(|e| format!("client_ca_file {}: {e}", path.display()))?;
        roots.add(cert).map_err(|e| format!("client_ca_file {}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("client_ca_file {}: no PEM certificate in it", path.display()));
    }
    Ok(roots)
}

/// `basic_auth_users`: user name to bcrypt hash.
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    /// A hash of nothing, verified against when the user is unknown, so that a wrong user
    /// name takes as long as a wrong password.
    decoy: String,
    verified: Mutex<HashSet<String>>,
    verifying: Semaphore,
}

/// The highest bcrypt cost accepted: each step doubles a check's CPU time, and a cost of 14
/// already takes about a second a check. A higher one would let any client that sends wrong
/// passwords hold the verification slots for many seconds each (found by the fuzzer: a cost
/// of 17 in a web config took 12 s to read).
const MAX_BCRYPT_COST: u32 = 14;

impl BasicAuth {
    fn new(users: BTreeMap<String, String>) -> Result<Self, String> {
        let mut cost = bcrypt::DEFAULT_COST;
        for (user, hash) in &users {
            let parts: bcrypt::HashParts = hash.parse().map_err(|_| {
                format!(
                    "basic_auth_users.{user}: not a bcrypt hash (write the output of \
                     `htpasswd -nBC 10 \"\" | tr -d ':\\n'`, not the password)"
                )
            })?;
            cost = parts.get_cost();
            if cost > MAX_BCRYPT_COST {
                return Err(format!(
                    "basic_auth_users.{user}: bcrypt cost {cost} is above {MAX_BCRYPT_COST}: each \
                     check of a password, and each wrong one a client sends, would take \
                     2^{} times as long as at cost {MAX_BCRYPT_COST} (about a second); hash it \
                     again with a lower cost (`htpasswd -nBC 10 \"\" | tr -d ':\\n'`)",
                    // An exponent, not the factor: bcrypt's cost field goes up to 99, and the
                    // factor overflowed (found by the fuzzer: cost 85).
                    cost - MAX_BCRYPT_COST
                ));
            }
        }
        let decoy = bcrypt::hash("", cost).map_err(|e| format!("bcrypt: {e}"))?;
        Ok(Self {
            users,
            decoy,
            verified: Mutex::new(HashSet::new()),
            verifying: Semaphore::new(CONCURRENT_VERIFICATIONS),
        })
    }

    /// Whether an `Authorization` header value names a user with the right password.
    pub async fn allows(self: &Arc<Self>, header: Option<&[u8]>) -> bool {
        let Some(header) = header.and_then(|h| std::str::from_utf8(h).ok()) else {
            return false;
        };
        if self.verified.lock().is_ok_and(|cache| cache.contains(header)) {
            return true;
        }
        let Some((user, password)) = credentials(header) else {
            return false;
        };
        let Ok(_permit) = self.verifying.acquire().await else {
            return false;
        };
        let (known, hash) = match self.users.get(&user) {
            Some(hash) => (true, hash.clone()),
            None => (false, self.decoy.clone()),
        };
        let matched = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .is_ok_and(|verified| verified.unwrap_or(false));
        let allowed = known && matched;
        if allowed && let Ok(mut cache) = self.verified.lock() {
            if cache.len() >= VERIFIED_CACHE {
                cache.clear();
            }
            cache.insert(header.to_owned());
        }
        allowed
    }
}

/// `Basic base64(user:password)` (the scheme name is case-insensitive).
pub(crate) fn credentials(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::process::Command;

    use super::*;

    /// A self-signed certificate for 127.0.0.1 and localhost, and its key, made by openssl.
    pub(crate) fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        let status = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"])
            .args(["-nodes", "-days", "1", "-subj", &format!("/CN={name}")])
            .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl (cargo xtask setup installs it)");
        assert!(status.success(), "openssl req failed");
        (cert, key)
    }

    pub(crate) fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tracer-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn parse(text: &str, base: &Path) -> Result<WebConfig, String> {
        WebConfig::parse(text, base)
    }

    #[test]
    fn an_empty_file_serves_plain_http_without_credentials() {
        let config = parse("", Path::new("/")).expect("empty is valid");
        assert!(config.tls.is_none() && config.auth.is_none());
    }

    #[test]
    fn tls_with_relative_files_and_users_with_bcrypt_hashes() {
        let dir = temp_dir("webcfg-ok");
        self_signed(&dir, "server");
        let hash = bcrypt::hash("secret", 4).expect("hash");
        let text = format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             min_version: TLS13\nbasic_auth_users:\n  prometheus: {hash}\n"
        );
        let config = parse(&text, &dir).expect("valid");
        let tls = config.tls.expect("tls");
        assert_eq!(tls.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(config.auth.is_some());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn every_mistake_is_named() {
        let dir = temp_dir("webcfg-bad");
        self_signed(&dir, "server");
        let tls = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
        for (text, expected) in [
            ("tls_server_config:\n  cert_file: server.crt\n", "needs both cert_file and key_file"),
            ("tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n", "cert_file"),
            ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.crt\n", "key_file"),
            (&format!("{tls}  min_version: TLS10\n"), "TLS 1.2 and 1.3 only"),
            (&format!("{tls}  min_version: TLS13\n  max_version: TLS12\n"), "above max_version"),
            (&format!("{tls}  cipher_suites: [TLS_AES_128_GCM_SHA256]\n"), "cipher_suites"),
            (&format!("{tls}  client_auth_type: RequireAndVerifyClientCert\n"), "client_ca_file"),
            (&format!("{tls}  client_ca_file: server.crt\n"), "client_auth_type"),
            (&format!("{tls}  client_auth_type: RequireAnyClientCert\n"), "not supported"),
            (&format!("{tls}  client_auth_type: Sometimes\n"), "none of"),
            ("basic_auth_users:\n  prometheus: secret\n", "not a bcrypt hash"),
            (
                "basic_auth_users:\n  prometheus: \
                 $2b$17$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUWWXYZ61856\n",
                "bcrypt cost 17 is above 14",
            ),
            (
                "basic_auth_users:\n  prometheus: \
                 $2b$85$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ61856\n",
                "2^71 times as long",
            ),
            ("tls_config:\n  cert_file: x\n", "unknown field"),
            ("http_server_config:\n  headers:\n    X-Frame-Options: deny\n", "headers"),
            ("rate_limit:\n  interval: 1s\n", "rate_limit"),
            ("- a list\n", "not a valid web config"),
        ] {
            let Err(err) = parse(text, &dir) else { panic!("accepted:\n{text}") };
            assert!(err.contains(expected), "{text}\n=> {err}\n(expected {expected:?})");
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn load_names_the_file() {
        let err = WebConfig::load(Path::new("/nonexistent/web.yml")).expect_err("missing");
        assert!(err.to_string().starts_with("--web-config /nonexistent/web.yml: cannot read"));
    }

    #[tokio::test]
    async fn credentials_are_checked_against_the_hash_and_remembered_only_when_right() {
        let hash = bcrypt::hash("secret", 4).expect("hash");
        let auth = Arc::new(
            BasicAuth::new(BTreeMap::from([("prometheus".to_owned(), hash)])).expect("valid"),
        );
        let basic = |text: &str| {
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(text))
        };
        let right = basic("prometheus:secret");
        assert!(auth.allows(Some(right.as_bytes())).await);
        assert!(auth.verified.lock().expect("lock").contains(&right));
        for wrong in [
            basic("prometheus:Secret"),
            basic("nobody:secret"),
            basic("prometheus"),
            "Bearer abc".to_owned(),
            "Basic !!!".to_owned(),
        ] {
            assert!(!auth.allows(Some(wrong.as_bytes())).await, "{wrong}");
        }
        assert!(!auth.allows(None).await);
        assert!(!auth.allows(Some(b"Basic \xff")).await);
        assert_eq!(auth.verified.lock().expect("lock").len(), 1);
        // The scheme is case-insensitive.
        assert!(auth.allows(Some(right.replace("Basic", "basic").as_bytes())).await);
    }
}
