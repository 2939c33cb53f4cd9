use std::time::Duration;

use sha2::{Digest, Sha256};

use super::*;
use crate::config::{CallerPolicy, TokenKey};

const NOW: u64 = 1_800_000_000;

fn key(name: &str, key: &str) -> ApiKey {
    ApiKey {
        name: name.to_owned(),
        sha256: Sha256::digest(key).into(),
        token_key: Some(TokenKey::derive(key)),
        caller: CallerPolicy::default(),
    }
}

fn gateway(lifetime: Duration, keys: &[ApiKey]) -> Gateway {
    Gateway::new(
        &GatewayConfig {
            login_path: "/login".into(),
            api_path: "/genesys".into(),
            token_lifetime: lifetime,
        },
        keys,
    )
}

fn hour() -> Gateway {
    gateway(
        Duration::from_secs(3600),
        &[key("ivr", "k-ivr"), key("batch.export", "k-batch")],
    )
}

fn token(gateway: &Gateway, caller: usize, now: u64) -> String {
    let issued = gateway.mint(caller, now).expect("a configured caller");
    issued.access_token.expose().to_owned()
}

#[test]
fn a_token_names_its_caller_until_it_expires() {
    let g = hour();
    let issued = g.mint(1, NOW).expect("a configured caller");
    assert_eq!(issued.expires_in, 3600);
    let t = issued.access_token.expose();
    assert!(t.starts_with("gcp1."), "{t}");
    assert!(
        t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
        "a header-safe token: {t}"
    );
    assert!(
        !format!("{issued:?}").contains(t),
        "Debug never shows the token"
    );
    assert_eq!(g.verify(t, NOW), Ok(1));
    assert_eq!(g.verify(t, NOW + 3599), Ok(1));
    assert_eq!(g.verify(t, NOW + 3600), Err(TokenError::Expired));
    assert_eq!(g.verify(t, NOW + 100_000), Err(TokenError::Expired));
    assert_eq!(g.verify(&token(&g, 0, NOW), NOW), Ok(0));
    assert!(g.mint(2, NOW).is_none(), "no third caller");
}

#[test]
fn the_same_config_verifies_it_anywhere() {
    // Another replica: its own Gateway from the same config (the same keys).
    let mine = hour();
    let theirs = hour();
    assert_eq!(theirs.verify(&token(&mine, 0, NOW), NOW + 10), Ok(0));
}

#[test]
fn a_rotated_or_removed_key_kills_its_tokens() {
    let before = hour();
    let t = token(&before, 0, NOW);
    let rotated = gateway(
        Duration::from_secs(3600),
        &[key("ivr", "k-ivr-2"), key("batch.export", "k-batch")],
    );
    assert_eq!(rotated.verify(&t, NOW), Err(TokenError::BadTag));
    assert_eq!(
        rotated.verify(&token(&before, 1, NOW), NOW),
        Ok(1),
        "the other caller's tokens live on"
    );
    let removed = gateway(Duration::from_secs(3600), &[key("batch.export", "k-batch")]);
    assert_eq!(removed.verify(&t, NOW), Err(TokenError::UnknownCaller));
    // Renamed with the same key: the name is signed, so the token does not move over.
    let renamed = gateway(Duration::from_secs(3600), &[key("ivr2", "k-ivr")]);
    assert_eq!(renamed.verify(&t, NOW), Err(TokenError::UnknownCaller));
}

/// Whoever knows only a caller's key digest (a config may show it as `key_sha256`) mints no
/// token for it: tokens are signed under a key derived from the key itself. (Before, the
/// signing key came from the digest: this forgery verified.)
#[test]
fn the_key_digest_alone_mints_nothing() {
    let gateway = hour();
    let digest: [u8; 32] = Sha256::digest("k-ivr").into();
    let from_digest = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &digest), KEY_LABEL);
    let forger = hmac::Key::new(hmac::HMAC_SHA256, from_digest.as_ref());
    let expiry = (NOW + 600).to_string();
    let tag = hmac::sign(&forger, &signed("ivr", &expiry));
    let forged = format!(
        "{TOKEN_PREFIX}{}.{expiry}.{}",
        URL_SAFE_NO_PAD.encode("ivr"),
        URL_SAFE_NO_PAD.encode(tag.as_ref())
    );
    assert_eq!(gateway.verify(&forged, NOW), Err(TokenError::BadTag));

    // A caller configured by its digest only logs in nowhere and verifies nothing.
    let digest_only = ApiKey {
        token_key: None,
        ..key("ivr", "k-ivr")
    };
    let gateway = gateway_of(&[digest_only]);
    assert!(gateway.mint(0, NOW).is_none());
    let genuine = token(&hour(), 0, NOW);
    assert_eq!(
        gateway.verify(&genuine, NOW),
        Err(TokenError::UnknownCaller)
    );
}

fn gateway_of(keys: &[ApiKey]) -> Gateway {
    gateway(Duration::from_secs(3600), keys)
}

#[test]
fn a_shorter_lifetime_applies_to_tokens_already_out() {
    let t = token(&hour(), 0, NOW);
    let short = gateway(Duration::from_secs(60), &[key("ivr", "k-ivr")]);
    assert_eq!(short.verify(&t, NOW), Err(TokenError::TooLong));
    // Within the clock-skew allowance it still passes.
    let skew = gateway(Duration::from_secs(3500), &[key("ivr", "k-ivr")]);
    assert_eq!(skew.verify(&t, NOW), Ok(0));
}

#[test]
fn a_tampered_token_verifies_nothing() {
    let g = hour();
    let t = token(&g, 0, NOW);
    let fields: Vec<&str> = t.split('.').collect();
    assert_eq!(fields.len(), 4, "{t}");
    let other = URL_SAFE_NO_PAD.encode("batch.export");
    let later = (NOW + 7200).to_string();
    let mut flipped_tag = fields[3].to_owned().into_bytes();
    flipped_tag[0] = if flipped_tag[0] == b'A' { b'B' } else { b'A' };
    let flipped_tag = String::from_utf8(flipped_tag).expect("ascii");
    for (forged, expected) in [
        // Another caller's name on ivr's tag.
        (
            format!("gcp1.{other}.{}.{}", fields[2], fields[3]),
            TokenError::BadTag,
        ),
        // A later expiry, or the same one spelled otherwise.
        (
            format!("gcp1.{}.{later}.{}", fields[1], fields[3]),
            TokenError::BadTag,
        ),
        (
            format!("gcp1.{}.0{}.{}", fields[1], fields[2], fields[3]),
            TokenError::BadTag,
        ),
        (
            format!("gcp1.{}.+{}.{}", fields[1], fields[2], fields[3]),
            TokenError::Malformed,
        ),
        (
            format!("gcp1.{}.{}.{flipped_tag}", fields[1], fields[2]),
            TokenError::BadTag,
        ),
        (
            format!("gcp1.{}.{}.{}", fields[1], fields[2], &fields[3][..20]),
            TokenError::BadTag,
        ),
        (
            format!("gcp1.{}.{}.", fields[1], fields[2]),
            TokenError::BadTag,
        ),
        (format!("gcp2.{}", &t[5..]), TokenError::Malformed),
        (format!("{t}.x"), TokenError::Malformed),
        (t[..t.len() - 1].replacen('.', "", 1), TokenError::Malformed),
        ("gcp1.!!.1.x".to_owned(), TokenError::Malformed),
        (String::new(), TokenError::Malformed),
        ("x".repeat(600), TokenError::Malformed),
    ] {
        assert_eq!(g.verify(&forged, NOW), Err(expected), "{forged}");
    }
}

#[test]
fn the_api_prefix_ends_on_a_segment_boundary() {
    let g = hour();
    let strip = |uri: &str| {
        g.strip_api_path(&uri.parse().expect("a valid URI"))
            .map(|u| u.to_string())
    };
    assert_eq!(
        strip("/genesys/api/v2/users?pageSize=1").as_deref(),
        Some("/api/v2/users?pageSize=1")
    );
    assert_eq!(
        strip("http://api.example/genesys/api/v2/users/%2e%2e").as_deref(),
        Some("http://api.example/api/v2/users/%2e%2e"),
        "stripped; the dot-segment check then reads what is left"
    );
    for not_prefixed in [
        "/api/v2/users",
        "/genesysx/api/v2/users",
        "/genesys/api/v2",
        "/genesys/../api/v2/users",
        "/genesys/./api/v2/users",
        "/genesys%2Fapi/v2/users",
        "/%67enesys/api/v2/users",
        "/GENESYS/api/v2/users",
        "/genesys//api/v2/users",
        "/x/genesys/api/v2/users",
    ] {
        assert_eq!(strip(not_prefixed), None, "{not_prefixed}");
    }
    let none = gateway(Duration::from_secs(60), &[]);
    assert!(
        none.strip_api_path(&"/api/v2/users".parse().expect("uri"))
            .is_none()
    );
    assert!(g.is_login("/login/oauth/token"));
    for other in ["/login/oauth/token/", "/login/oauth/tokens", "/oauth/token"] {
        assert!(!g.is_login(other), "{other}");
    }
}

fn request(authorization: Option<&str>, body: &str) -> Result<TokenRequest, LoginError> {
    let mut headers = HeaderMap::new();
    if let Some(value) = authorization {
        headers.insert(
            header::AUTHORIZATION,
            value.parse().expect("a header value"),
        );
    }
    TokenRequest::parse(&headers, body.as_bytes())
}

fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

#[test]
fn credentials_from_basic_or_the_form() {
    // What the Python and JavaScript SDKs send.
    let r = request(
        Some(&basic("ivr", "k:with:colons")),
        "grant_type=client_credentials",
    )
    .expect("parses");
    let c = r.credentials.as_ref().expect("credentials");
    assert_eq!(
        (c.client_id.as_str(), c.client_secret.expose()),
        ("ivr", "k:with:colons")
    );
    assert_eq!(r.client_credentials_grant(), Ok(()));
    // Genesys' login also takes them in the form (percent-encoded).
    let r = request(
        None,
        "client_id=ivr&grant_type=client_credentials&client_secret=a%2Bb+c%26d",
    )
    .expect("parses");
    let c = r.credentials.as_ref().expect("credentials");
    assert_eq!(
        (c.client_id.as_str(), c.client_secret.expose()),
        ("ivr", "a+b c&d")
    );
    assert!(
        !format!("{r:?}").contains("a+b c&d"),
        "Debug hides the secret"
    );

    let r = request(None, "grant_type=client_credentials").expect("parses");
    assert!(r.credentials.is_none());
    let r = request(Some("Bearer abc"), "grant_type=client_credentials").expect("parses");
    assert!(r.credentials.is_none(), "only Basic carries credentials");
    let r = request(Some("Basic !!!"), "grant_type=client_credentials").expect("parses");
    assert!(r.credentials.is_none());

    assert_eq!(
        request(None, "client_id=ivr&grant_type=client_credentials").err(),
        Some(LoginError::InvalidClient)
    );
    assert!(matches!(
        request(
            Some(&basic("ivr", "k")),
            "client_id=ivr&client_secret=k&grant_type=client_credentials"
        ),
        Err(LoginError::InvalidRequest(_))
    ));
    assert!(matches!(
        request(None, "grant_type=client_credentials&grant_type=password"),
        Err(LoginError::InvalidRequest(_))
    ));
}

#[test]
fn only_the_client_credentials_grant() {
    let grant = |body: &str| {
        request(Some(&basic("ivr", "k")), body)
            .expect("parses")
            .client_credentials_grant()
    };
    assert_eq!(grant("grant_type=client_credentials&scope=x"), Ok(()));
    assert_eq!(
        grant("grant_type=password"),
        Err(LoginError::UnsupportedGrantType)
    );
    assert_eq!(grant("grant_type="), Err(LoginError::UnsupportedGrantType));
    assert!(matches!(grant(""), Err(LoginError::InvalidRequest(_))));
    assert!(matches!(
        grant("{\"grant_type\":\"client_credentials\"}"),
        Err(LoginError::InvalidRequest(_))
    ));
    for error in [
        LoginError::InvalidClient,
        LoginError::UnsupportedGrantType,
        LoginError::InvalidRequest("x"),
    ] {
        assert!(!error.description().is_empty() && !error.code().is_empty());
    }
}

#[test]
fn bearer_tokens_of_every_authorization_header() {
    let mut headers = HeaderMap::new();
    headers.append(header::AUTHORIZATION, "Basic abc".parse().expect("value"));
    headers.append(header::AUTHORIZATION, "bearer  t1 ".parse().expect("value"));
    headers.append(header::AUTHORIZATION, "Bearer t2".parse().expect("value"));
    let found: Vec<&str> = bearer_tokens(&headers).collect();
    assert_eq!(found, ["t1", "t2"]);
}
