//! Serde mirror of the YAML file, `deny_unknown_fields` everywhere; no logic.
//!
//! Every leaf is an `Option<String>` holding the scalar's text as written (numbers and bools
//! included), so `${VAR}` can be expanded in any value and `validate.rs` reports type errors
//! with their key path. This is also the only file that calls the YAML crate, so swapping
//! it is a change here alone.

use serde::{Deserialize, Serialize};

use super::ConfigError;

// === input mirror ===

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    pub(super) server: Option<Server>,
    pub(super) genesys: Option<Genesys>,
    pub(super) clients: Option<Vec<Client>>,
    pub(super) budgets: Option<Budgets>,
    pub(super) inbound: Option<Inbound>,
    pub(super) shared_state: Option<SharedState>,
    pub(super) cache: Option<Cache>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Server {
    pub(super) listen: Option<String>,
    pub(super) admin_listen: Option<String>,
    pub(super) tls: Option<Tls>,
    pub(super) max_body_bytes: Option<String>,
    pub(super) max_body_bytes_in_flight: Option<String>,
    pub(super) max_connections: Option<String>,
    pub(super) request_timeout: Option<String>,
    pub(super) idle_timeout: Option<String>,
    pub(super) header_read_timeout: Option<String>,
    pub(super) shutdown_grace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Tls {
    pub(super) cert_file: Option<String>,
    pub(super) key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Genesys {
    pub(super) region: Option<String>,
    pub(super) api_base: Option<String>,
    pub(super) login_base: Option<String>,
    pub(super) token_remint_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Client {
    pub(super) name: Option<String>,
    pub(super) client_id: Option<String>,
    pub(super) client_secret: Option<String>,
    pub(super) client_secret_file: Option<String>,
    pub(super) requests_per_minute: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Budgets {
    pub(super) token_per_minute: Option<String>,
    pub(super) org_per_minute: Option<String>,
    pub(super) window: Option<String>,
    pub(super) guard: Option<String>,
    pub(super) endpoints: Option<Vec<Endpoint>>,
    pub(super) queue: Option<Queue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Endpoint {
    pub(super) route: Option<String>,
    pub(super) per_minute: Option<String>,
    pub(super) scope: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Queue {
    pub(super) max_wait: Option<String>,
    pub(super) max_pending: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Inbound {
    pub(super) api_keys: Option<Vec<ApiKey>>,
    pub(super) allow_anonymous: Option<String>,
    pub(super) allow_routes: Option<Vec<String>>,
    pub(super) anonymous_caller: Option<AnonymousCaller>,
    pub(super) lanes: Option<Lanes>,
    pub(super) gateway: Option<Gateway>,
}

/// `inbound.lanes`: each lane's share of every budget.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Lanes {
    pub(super) realtime: Option<String>,
    pub(super) standard: Option<String>,
    pub(super) batch: Option<String>,
}

/// `inbound.gateway`: the Genesys SDKs' gateway mode (SPEC §12).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Gateway {
    pub(super) login_path: Option<String>,
    pub(super) api_path: Option<String>,
    pub(super) token_lifetime: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ApiKey {
    pub(super) name: Option<String>,
    pub(super) key_sha256: Option<String>,
    pub(super) key: Option<String>,
    pub(super) key_file: Option<String>,
    pub(super) max_wait: Option<String>,
    pub(super) allow_routes: Option<Vec<String>>,
    pub(super) clients: Option<Vec<String>>,
    pub(super) per_minute: Option<String>,
    pub(super) lane: Option<String>,
}

/// `inbound.anonymous_caller`: what an api key entry says of its caller, for the caller
/// without a key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AnonymousCaller {
    pub(super) max_wait: Option<String>,
    pub(super) allow_routes: Option<Vec<String>>,
    pub(super) clients: Option<Vec<String>>,
    pub(super) per_minute: Option<String>,
    pub(super) lane: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SharedState {
    pub(super) redis_url: Option<String>,
    pub(super) redis_url_file: Option<String>,
    pub(super) key_prefix: Option<String>,
    pub(super) replicas_hint: Option<String>,
    pub(super) timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Cache {
    pub(super) max_entries: Option<String>,
    pub(super) max_bytes: Option<String>,
    pub(super) routes: Option<Vec<CacheRoute>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CacheRoute {
    pub(super) route: Option<String>,
    pub(super) ttl: Option<String>,
    pub(super) stale_if_limited: Option<String>,
    pub(super) ignore_upstream_cache_headers: Option<String>,
}

// === output mirror (what `gcpool check` prints; secrets already redacted) ===

#[derive(Debug, Serialize)]
pub(super) struct Resolved {
    pub(super) server: ResolvedServer,
    pub(super) genesys: ResolvedGenesys,
    pub(super) clients: Vec<ResolvedClient>,
    pub(super) budgets: ResolvedBudgets,
    pub(super) inbound: ResolvedInbound,
    pub(super) shared_state: Option<ResolvedSharedState>,
    pub(super) cache: ResolvedCache,
}

#[derive(Debug, Serialize)]
pub(super) struct ResolvedServer {
    pub(super) listen: String,
    pub(super) admin_listen: String,
    pub(super) tls: Option<ResolvedTls>,
    pub(super) max_body_bytes: u64,
    pub(super) max_body_bytes_in_flight: u64,
    pub(super) max_connections: u64,
    pub(super) request_timeout: String,
    pub(super) idle_timeout: String,
    pub(super) header_read_timeout: String,
    pub(super) shutdown_grace: String,
}

#[derive(Debug, Serialize)]
pub(super) struct ResolvedTls {
    pub(super) cert_file: String,
    pub(super) key_file: String,
}

#[derive(Debug, Serialize)]
pub(super) struct ResolvedGenesys {
    pub(super) region: String,
    pub(super) api_base: String,
    pub(super) login_base: String,
    pub(super) token_remint_interval: String,
}

#[derive(Debug, Serialize)]
pub(super) struct ResolvedClient {
    pub(super) name: String,
    pub(super) client_id: String,
    pub(super) client_secret: &'static str,
    pub(super) requests_per_minute: u32,
}

#[derive(Debug, Serialize)]
pub(super) struct ResolvedBudgets {
    pub(super) token_per_minute: u32,
    pub(super) org_per_minute: u32,
    pub(super) window: String,
    pub(super) guard: String,
    pub(super) endpoints: Vec<ResolvedEndpoint>,
    pub(super) queue: ResolvedQueue,
}

#[derive(Debug, Serialize)]
pub(super) struct ResolvedEndpoint {
    pub(super) route: String,
    pub(super) per_minute: u32,
    pub(super) scope: &'static str,
}

#[derive(Debug, Serialize)]
pub(super) struct ResolvedQueue {
    pub(super) max_wait: String,
    pub(super) max_pending: usize,
}

#[derive(Debug, Serialize)]
pub(super) struct ResolvedInbound {
    pub(super) api_keys: Vec<ResolvedApiKey>,
    pub(super) allow_anonymous: bool,
    pub(super) allow_routes: Vec<String>,
    pub(super) anonymous_caller: ResolvedCaller,
    pub(super) lanes: ResolvedLanes,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) gateway: Option<ResolvedGateway>,
}

#[derive(Debug, Serialize)]
pub(super) struct ResolvedLanes {
    pub(super) realtime: String,
    pub(super) standard: String,
    pub(super) batch: String,
}

#[derive(Debug, Serialize)]
pub(super) struct ResolvedGateway {
    pub(super) login_path: String,
    pub(super) api_path: String,
    pub(super) token_lifetime: String,
}

#[derive(Debug, Serialize)]
pub(super) struct ResolvedApiKey {
    pub(super) name: String,
    pub(super) key_sha256: &'static str,
    #[serde(flatten)]
    pub(super) caller: ResolvedCaller,
}

#[derive(Debug, Serialize)]
pub(super) struct ResolvedCaller {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) max_wait: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) allow_routes: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) clients: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) per_minute: Option<u32>,
    pub(super) lane: &'static str,
}

#[derive(Debug, Serialize)]
pub(super) struct ResolvedSharedState {
    pub(super) redis_url: String,
    pub(super) key_prefix: String,
    pub(super) replicas_hint: u32,
    pub(super) timeout: String,
}

#[derive(Debug, Serialize)]
pub(super) struct ResolvedCache {
    pub(super) max_entries: u64,
    pub(super) max_bytes: u64,
    pub(super) routes: Vec<ResolvedCacheRoute>,
}

#[derive(Debug, Serialize)]
pub(super) struct ResolvedCacheRoute {
    pub(super) route: String,
    pub(super) ttl: String,
    pub(super) stale_if_limited: String,
    pub(super) ignore_upstream_cache_headers: bool,
}

// === parse / print ===

/// Path used for errors that belong to the file as a whole (syntax, emptiness).
pub(super) const FILE_PATH: &str = "(file)";

/// Parses the YAML text into the mirror.
///
/// # Errors
/// One error: a syntax error, an unknown key, a duplicate key or a structural type mismatch
/// (a list where a mapping belongs, …), with its key path and line where the parser knows them.
pub(super) fn parse(text: &str) -> Result<File, ConfigError> {
    if is_blank(text) {
        return Err(ConfigError {
            path: FILE_PATH.into(),
            line: None,
            message: "the config file is empty (it needs at least a `clients:` list)".into(),
        });
    }
    serde_yaml::from_str::<File>(text).map_err(|err| {
        let mut error = yaml_error(&err);
        // Only a syntax error can be the tab's fault (not an unknown key on a line that
        // happens to hold one in a quoted value).
        if error.path == FILE_PATH
            && let Some(message) = error
                .line
                .and_then(|l| tab_on_line(text, l, &error.message))
        {
            error.message = message;
        }
        error
    })
}

/// When line `line` (1-based) holds a tab, what to say instead of the parser's "found
/// character that cannot start any token".
fn tab_on_line(text: &str, line: usize, message: &str) -> Option<String> {
    let content = text.lines().nth(line.checked_sub(1)?)?;
    let indent = content.len() - content.trim_start_matches([' ', '\t']).len();
    if content[..indent].contains('\t') {
        Some("a tab character indents this line: YAML indents with spaces only".into())
    } else if content.contains('\t') && message.contains("cannot start any token") {
        Some("this line holds a tab character where YAML accepts none: use spaces".into())
    } else {
        None
    }
}

/// Prints the resolved config.
pub(super) fn print(resolved: &Resolved) -> String {
    // Serializing plain structs of strings, numbers and options cannot fail; if it ever did,
    // say so in the output rather than panic.
    serde_yaml::to_string(resolved)
        .unwrap_or_else(|err| format!("# cannot print the resolved config: {err}\n"))
}

/// True when the text holds no YAML content at all: only blank lines, comments and markers.
fn is_blank(text: &str) -> bool {
    text.lines().map(str::trim).all(|l| {
        l.is_empty() || l.starts_with('#') || l == "---" || l == "..." || l == "~" || l == "null"
    })
}

/// Turns a serde_yaml error into a [`ConfigError`]: `path` from the error's key path (with
/// the unknown key appended for unknown fields), `line` from its location.
fn yaml_error(err: &serde_yaml::Error) -> ConfigError {
    let location = err.location();
    let line = location.as_ref().map(serde_yaml::Location::line);
    let full = err.to_string();
    // Display is "[path: ]message[ at line L column C]"; that location is reported in `line`.
    // Syntax errors end with the mark of their context instead, which is kept.
    let suffix = location
        .map(|l| format!(" at line {} column {}", l.line(), l.column()))
        .unwrap_or_default();
    let text = match full.strip_suffix(&suffix) {
        Some(text) if !suffix.is_empty() => text,
        _ => full.as_str(),
    };
    let (path, message) = split_path(text);
    let path = match (path, unknown_field(message)) {
        (Some(p), Some(key)) => format!("{p}.{key}"),
        (None, Some(key)) => key.to_owned(),
        (Some(p), None) => p.to_owned(),
        (None, None) => FILE_PATH.to_owned(),
    };
    let message = match unknown_field(message) {
        Some(key) => message
            .replacen("unknown field", "unknown key", 1)
            .replacen(
                &format!("`{key}`, expected"),
                &format!("`{key}`; expected"),
                1,
            ),
        None => message.to_owned(),
    };
    ConfigError {
        path,
        line,
        message,
    }
}

/// Splits serde_yaml's `"clients[0].name: message"` into the key path and the message.
/// Messages without a key path (syntax errors) return `None` as the path.
fn split_path(text: &str) -> (Option<&str>, &str) {
    if let Some((head, rest)) = text.split_once(": ") {
        let looks_like_path = !head.is_empty()
            && head
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']' | '-'));
        if looks_like_path {
            return (Some(head), rest);
        }
    }
    (None, text)
}

/// The key named by serde's ``unknown field `x`, expected …`` message.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(key, _)| key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_key_path_and_line() {
        let err = parse("server:\n  listen: 127.0.0.1:1\n  lisen: x\n").unwrap_err();
        assert_eq!(err.path, "server.lisen");
        assert_eq!(err.line, Some(3));
        assert!(
            err.message.contains("unknown key `lisen`"),
            "{}",
            err.message
        );
        assert!(err.message.contains("listen"), "{}", err.message);
    }

    #[test]
    fn unknown_key_inside_a_list_names_the_index() {
        let text = "clients:\n  - name: a\n  - name: b\n    secret: x\n";
        let err = parse(text).unwrap_err();
        assert_eq!(err.path, "clients[1].secret");
        assert_eq!(err.line, Some(4));
    }

    #[test]
    fn unknown_top_level_key() {
        let err = parse("clients: []\nservre: {}\n").unwrap_err();
        assert_eq!(err.path, "servre");
        assert_eq!(err.line, Some(2));
    }

    #[test]
    fn syntax_error_has_a_line() {
        let err = parse("server:\n  listen: 127.0.0.1:1\n admin_listen: x\n").unwrap_err();
        assert_eq!(err.path, FILE_PATH);
        assert_eq!(err.line, Some(3));
        assert!(err.line.is_some());
        assert!(!err.message.is_empty());
    }

    #[test]
    fn a_tab_is_named() {
        let err = parse("server:\n\tlisten: 127.0.0.1:1\n").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(
            err.message.contains("tab character indents"),
            "{}",
            err.message
        );
        let err = parse("server:\n  listen:\t[\n").unwrap_err();
        assert!(err.line.is_some());
    }

    #[test]
    fn empty_file_is_a_clear_error() {
        for text in ["", "\n\n", "# only a comment\n", "---\n"] {
            let err = parse(text).unwrap_err();
            assert!(err.message.contains("empty"), "{text:?}: {}", err.message);
        }
    }

    #[test]
    fn scalars_keep_their_text() {
        let file = parse(
            "server:\n  max_body_bytes: 0123\ninbound:\n  allow_anonymous: true\nclients:\n  - client_id: 12345\n",
        )
        .unwrap();
        assert_eq!(file.server.unwrap().max_body_bytes.as_deref(), Some("0123"));
        assert_eq!(
            file.inbound.unwrap().allow_anonymous.as_deref(),
            Some("true")
        );
        assert_eq!(file.clients.unwrap()[0].client_id.as_deref(), Some("12345"));
    }

    #[test]
    fn null_values_are_absent() {
        let file = parse("server:\n  listen:\n  admin_listen: ~\n").unwrap();
        let server = file.server.unwrap();
        assert!(server.listen.is_none());
        assert!(server.admin_listen.is_none());
    }

    #[test]
    fn a_map_where_a_value_belongs_is_an_error_with_its_path() {
        let err = parse("server:\n  listen:\n    host: x\n").unwrap_err();
        assert_eq!(err.path, "server.listen");
        assert_eq!(err.line, Some(3));
    }
}
