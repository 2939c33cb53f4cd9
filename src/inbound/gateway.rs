//! The Genesys SDKs' gateway mode (SPEC §12): a client-credentials login at
//! `POST {login_path}/oauth/token` answers a caller token, `Authorization: Bearer <token>`
//! then authenticates that caller, and API calls may come with the `{api_path}` prefix.
//!
//! A caller token is stateless: `gcp1.<caller name>.<expiry>.<tag>`, the name in base64url,
//! the expiry in Unix seconds, the tag an HMAC-SHA256 over both under a key derived from the
//! caller's key digest (`ApiKey::sha256`) and a constant of its own. So every replica with the
//! same config verifies it without shared state, it expires, and a new key for the caller (a
//! reload) makes the tokens of the old one worthless. Secrets and tokens are [`Secret`]s and
//! the errors here never carry them. This module decides; `proxy::Reject` makes the answers.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{HeaderMap, Uri, header};
use ring::hmac;

use crate::config::{ApiKey, GatewayConfig, TokenKey};
use crate::secret::Secret;

/// The `route` label of login requests (Genesys' own login operation; never forwarded).
pub const LOGIN_ROUTE: &str = "/oauth/token";

/// The login body is a few form fields: past this many bytes it is no login.
pub const LOGIN_MAX_BODY: u64 = 16 * 1024;

/// The bytes that login bodies read before any credential was checked (credentials in the
/// form, or none) may hold in flight between them, apart from the callers'
/// `server.max_body_bytes_in_flight`: 64 logins of the largest size, thousands of real ones.
pub const LOGIN_BODIES_IN_FLIGHT: usize = 64 * LOGIN_MAX_BODY as usize;

/// Every caller token starts with this (the format's version).
const TOKEN_PREFIX: &str = "gcp1.";
/// Mixed into each caller's signing key, so the key serves no other purpose than these tokens.
const KEY_LABEL: &[u8] = b"gcpool gateway caller token signing key v1";
/// A token longer than this is no token of ours (names are short, the rest is fixed).
const MAX_TOKEN_LEN: usize = 512;
/// How far replicas' clocks may disagree: a token expiring later than the lifetime from now
/// by more than this was not minted under this config.
const CLOCK_SKEW_SECS: u64 = 300;

/// Why a login is refused: OAuth 2.0's errors (RFC 6749 §5.2), as Genesys' login answers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// The request lacks or repeats a parameter, or sends the credentials two ways.
    #[error("the token request is malformed: {0}")]
    InvalidRequest(&'static str),
    /// No caller has that name and key (also: no credentials, the anonymous caller).
    #[error("client authentication failed")]
    InvalidClient,
    /// A grant other than `client_credentials`.
    #[error("the grant type is not supported: only client_credentials is")]
    UnsupportedGrantType,
}

impl LoginError {
    /// The OAuth `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
        }
    }

    /// What Genesys' login says in `description` and `error_description`.
    pub fn description(&self) -> &'static str {
        match self {
            Self::InvalidRequest(what) => what,
            Self::InvalidClient => "authentication failed",
            Self::UnsupportedGrantType => "grant type not supported",
        }
    }
}

/// Why a bearer token does not authenticate. The caller only ever sees gcpool's usual 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a caller token")]
    Malformed,
    #[error("no caller of that name")]
    UnknownCaller,
    /// Forged, altered, or signed with a key the caller no longer has.
    #[error("the token's tag does not verify")]
    BadTag,
    #[error("the token has expired")]
    Expired,
    /// It expires later than `token_lifetime` from now: minted under another config.
    #[error("the token outlives token_lifetime")]
    TooLong,
}

/// One config generation's gateway: its paths and each caller's signing key.
#[derive(Debug)]
pub struct Gateway {
    /// `{login_path}/oauth/token`.
    login: String,
    /// Empty: no prefix.
    api_path: String,
    lifetime_secs: u64,
    /// Each api key's caller, in `inbound.api_keys` order: its name and signing key.
    /// `None`: a key given as its digest only, which mints and verifies no token.
    callers: Vec<(String, Option<hmac::Key>)>,
}

/// What a login request says: who it claims to be and the grant it asks for.
#[derive(Debug)]
pub struct TokenRequest {
    /// `None`: no credentials at all.
    pub credentials: Option<ClientCredentials>,
    grant_type: Option<String>,
}

/// A client id and secret, from HTTP Basic or from the form.
#[derive(Debug)]
pub struct ClientCredentials {
    pub client_id: String,
    pub client_secret: Secret,
}

/// A minted caller token and its lifetime.
#[derive(Debug)]
pub struct IssuedToken {
    pub access_token: Secret,
    /// Seconds: `token_lifetime`.
    pub expires_in: u64,
}

// === impl Gateway ===

impl Gateway {
    /// The gateway `config` describes, for the callers of `api_keys`.
    pub fn new(config: &GatewayConfig, api_keys: &[ApiKey]) -> Self {
        Self {
            login: format!("{}/oauth/token", config.login_path),
            api_path: config.api_path.clone(),
            lifetime_secs: config.token_lifetime.as_secs().max(1),
            callers: api_keys
                .iter()
                .map(|k| (k.name.clone(), k.token_key.as_ref().map(signing_key)))
                .collect(),
        }
    }

    /// Whether `path` is the login's.
    pub fn is_login(&self, path: &str) -> bool {
        path == self.login
    }

    /// `uri` without the `api_path` prefix, when it has the prefix and `/api/v2/` right
    /// after it (so the prefix ends on a segment boundary); `None` otherwise. Raw bytes are
    /// compared: a percent-encoded prefix is no prefix.
    pub fn strip_api_path(&self, uri: &Uri) -> Option<Uri> {
        if self.api_path.is_empty() {
            return None;
        }
        let rest = uri.path().strip_prefix(self.api_path.as_str())?;
        if !rest.starts_with("/api/v2/") {
            return None;
        }
        let path_and_query = match uri.query() {
            Some(query) => format!("{rest}?{query}"),
            None => rest.to_owned(),
        };
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(path_and_query.parse().ok()?);
        Uri::from_parts(parts).ok()
    }

    /// A token for the `caller`th api key's caller, valid `token_lifetime` from `now`
    /// (Unix seconds); `None` for an index that is no caller.
    pub fn mint(&self, caller: usize, now: u64) -> Option<IssuedToken> {
        let (name, Some(key)) = self.callers.get(caller)? else {
            return None;
        };
        let expiry = now.saturating_add(self.lifetime_secs).to_string();
        let tag = hmac::sign(key, &signed(name, &expiry));
        let token = format!(
            "{TOKEN_PREFIX}{}.{expiry}.{}",
            URL_SAFE_NO_PAD.encode(name),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        );
        Some(IssuedToken {
            access_token: Secret::new(token),
            expires_in: self.lifetime_secs,
        })
    }

    /// The index in `inbound.api_keys` of the caller `token` authenticates at `now` (Unix
    /// seconds). The tag is compared in constant time.
    ///
    /// # Errors
    /// Why it authenticates no one ([`TokenError`]).
    pub fn verify(&self, token: &str, now: u64) -> Result<usize, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let rest = token
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenError::Malformed)?;
        let mut fields = rest.split('.');
        let (Some(name), Some(expiry), Some(tag), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(TokenError::Malformed);
        };
        let name = URL_SAFE_NO_PAD
            .decode(name)
            .ok()
            .and_then(|n| String::from_utf8(n).ok())
            .ok_or(TokenError::Malformed)?;
        // Digits only, so one expiry has one spelling (the tag covers the text).
        if expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) {
            return Err(TokenError::Malformed);
        }
        let expires: u64 = expiry.parse().map_err(|_| TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Malformed)?;
        let index = self
            .callers
            .iter()
            .position(|(known, _)| *known == name)
            .ok_or(TokenError::UnknownCaller)?;
        let (_, Some(key)) = &self.callers[index] else {
            return Err(TokenError::UnknownCaller);
        };
        hmac::verify(key, &signed(&name, expiry), &tag).map_err(|_| TokenError::BadTag)?;
        if expires <= now {
            return Err(TokenError::Expired);
        }
        if expires > now.saturating_add(self.lifetime_secs + CLOCK_SKEW_SECS) {
            return Err(TokenError::TooLong);
        }
        Ok(index)
    }
}

/// The bytes a tag covers: the format, the caller's name, the expiry's text.
fn signed(name: &str, expiry: &str) -> Vec<u8> {
    let mut message = Vec::with_capacity(TOKEN_PREFIX.len() + name.len() + expiry.len() + 1);
    message.extend_from_slice(TOKEN_PREFIX.as_bytes());
    message.extend_from_slice(name.as_bytes());
    message.push(0);
    message.extend_from_slice(expiry.as_bytes());
    message
}

/// A caller's signing key: HMAC-SHA256 of [`KEY_LABEL`] under its token key, which config
/// validation derived from the key itself ([`TokenKey`]): every replica given the same key
/// has it, and the key's digest (`key_sha256`, which a config may show) does not yield it.
fn signing_key(token_key: &TokenKey) -> hmac::Key {
    let derived = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, token_key.expose()),
        KEY_LABEL,
    );
    hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
}

/// Now, in Unix seconds (0 for a clock before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The bearer tokens of `Authorization` headers.
pub fn bearer_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        })
}

// === impl TokenRequest ===

impl TokenRequest {
    /// Reads a login request: credentials from HTTP Basic (what the SDKs send) or the form's
    /// `client_id` and `client_secret` (Genesys' login takes both), the form's `grant_type`.
    /// The body is read as `application/x-www-form-urlencoded` whatever its `Content-Type`.
    ///
    /// # Errors
    /// [`LoginError::InvalidRequest`] for a parameter given twice or credentials sent both
    /// ways (RFC 6749 §2.3, §3.2).
    pub fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Self, LoginError> {
        let (mut grant_type, mut client_id, mut client_secret) = (None, None, None);
        for (name, value) in form_urlencoded::parse(body) {
            let slot = match &*name {
                "grant_type" => &mut grant_type,
                "client_id" => &mut client_id,
                "client_secret" => &mut client_secret,
                _ => continue,
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(LoginError::InvalidRequest("a parameter is given twice"));
            }
        }
        let basic = basic_client_credentials(headers);
        let form = match (client_id, client_secret) {
            (Some(client_id), Some(secret)) => Some((client_id, secret)),
            (None, None) => None,
            // Half a credential authenticates no one.
            (Some(_), None) | (None, Some(_)) => return Err(LoginError::InvalidClient),
        };
        let credentials = match (basic, form) {
            (Some(_), Some(_)) => {
                return Err(LoginError::InvalidRequest(
                    "client credentials are sent both in Authorization and in the body",
                ));
            }
            (Some(basic), None) => Some(basic),
            (None, Some((client_id, secret))) => Some(ClientCredentials {
                client_id,
                client_secret: Secret::new(secret),
            }),
            (None, None) => None,
        };
        Ok(Self {
            credentials,
            grant_type,
        })
    }

    /// Checks the grant: `client_credentials` only.
    ///
    /// # Errors
    /// [`LoginError::InvalidRequest`] without a `grant_type`,
    /// [`LoginError::UnsupportedGrantType`] for any other.
    pub fn client_credentials_grant(&self) -> Result<(), LoginError> {
        match self.grant_type.as_deref() {
            Some("client_credentials") => Ok(()),
            Some(_) => Err(LoginError::UnsupportedGrantType),
            None => Err(LoginError::InvalidRequest("grant_type is missing")),
        }
    }
}

/// The client credentials of the first `Authorization: Basic` header, if any: read before
/// the body, so a wrong one is refused without reading it.
pub fn basic_client_credentials(headers: &HeaderMap) -> Option<ClientCredentials> {
    let (client_id, secret) = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(basic_credentials)?;
    Some(ClientCredentials {
        client_id,
        client_secret: Secret::new(secret),
    })
}

/// `(id, secret)` of `Basic base64(id:secret)`.
fn basic_credentials(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

#[cfg(test)]
mod tests;
