//! The route table: `(method, path)` → the Genesys operation it calls, or [`Route::Other`].
//!
//! Owns the list of Genesys Platform API operations (`data/genesys-operations.tsv`, embedded
//! at build time), their dense [`RouteId`]s and the path matcher. The template is the metrics
//! `route` label and the key of route budgets and the allow-list; config names routes by
//! template text ([`RouteTable::find_template`]). It does not decide what a route may do.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use http::Method;

/// The operation list, `METHOD<TAB>PATH` per line (see `data/README.md`).
const GENESYS_OPERATIONS: &str = include_str!("../data/genesys-operations.tsv");

/// The label of every request that matches no operation.
pub const OTHER: &str = "other";

/// Dense index of an operation in its [`RouteTable`]: `0..table.len()`, so per-route state
/// can live in a `Vec` indexed by [`RouteId::index`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteId(u16);

/// The methods the Genesys API uses. Any other method matches no operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Head,
}

/// One Genesys operation: its id, method and path template. Cheap to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Operation {
    id: RouteId,
    method: RouteMethod,
    template: &'static str,
}

/// What a request is, for budgets, the allow-list and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// The request calls this operation.
    Known(Operation),
    /// No operation matches (unknown path, other method, trailing slash, …). Still forwarded
    /// unless an allow-list says otherwise; labelled `"other"`.
    Other,
}

/// Every operation, with one matcher per method.
pub struct RouteTable {
    operations: Vec<Operation>,
    /// Indexed by `RouteMethod as usize`. One router per method because three template
    /// pairs differ only in parameter names, never with the same method (facts §7), and
    /// `matchit` rejects such pairs in one router.
    routers: [matchit::Router<RouteId>; RouteMethod::ALL.len()],
    by_template: HashMap<(RouteMethod, &'static str), RouteId>,
}

/// A line of an operation list that is not a valid operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("operation list line {line}: {message}")]
pub struct RouteTableError {
    pub line: usize,
    pub message: String,
}

// === impl RouteId ===

impl RouteId {
    /// The position in `0..table.len()`.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

// === impl RouteMethod ===

impl RouteMethod {
    /// Every variant, in `as usize` order.
    pub const ALL: [RouteMethod; 6] = [
        RouteMethod::Get,
        RouteMethod::Post,
        RouteMethod::Put,
        RouteMethod::Patch,
        RouteMethod::Delete,
        RouteMethod::Head,
    ];

    /// `None` for OPTIONS, TRACE, CONNECT and extension methods.
    pub fn from_http(method: &Method) -> Option<RouteMethod> {
        RouteMethod::parse(method.as_str())
    }

    /// Upper-case name, as in HTTP and in config (`"GET"`).
    pub fn as_str(self) -> &'static str {
        match self {
            RouteMethod::Get => "GET",
            RouteMethod::Post => "POST",
            RouteMethod::Put => "PUT",
            RouteMethod::Patch => "PATCH",
            RouteMethod::Delete => "DELETE",
            RouteMethod::Head => "HEAD",
        }
    }

    /// The `http` crate's value (no allocation: these are standard methods).
    pub fn to_http(self) -> Method {
        match self {
            RouteMethod::Get => Method::GET,
            RouteMethod::Post => Method::POST,
            RouteMethod::Put => Method::PUT,
            RouteMethod::Patch => Method::PATCH,
            RouteMethod::Delete => Method::DELETE,
            RouteMethod::Head => Method::HEAD,
        }
    }

    fn parse(s: &str) -> Option<RouteMethod> {
        Some(match s {
            "GET" => RouteMethod::Get,
            "POST" => RouteMethod::Post,
            "PUT" => RouteMethod::Put,
            "PATCH" => RouteMethod::Patch,
            "DELETE" => RouteMethod::Delete,
            "HEAD" => RouteMethod::Head,
            _ => return None,
        })
    }
}

impl fmt::Display for RouteMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Operation ===

impl Operation {
    pub fn id(&self) -> RouteId {
        self.id
    }

    pub fn method(&self) -> RouteMethod {
        self.method
    }

    /// The path template, e.g. `/api/v2/users/{userId}`.
    pub fn template(&self) -> &'static str {
        self.template
    }
}

/// `PUT /api/v2/architect/ivrs/{ivrId}`, as config writes it.
impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.template)
    }
}

// === impl Route ===

impl Route {
    /// The metrics `route` label: the path template, or `"other"`. A closed set.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Known(op) => op.template,
            Route::Other => OTHER,
        }
    }

    pub fn id(&self) -> Option<RouteId> {
        self.operation().map(|op| op.id)
    }

    pub fn method(&self) -> Option<RouteMethod> {
        self.operation().map(|op| op.method)
    }

    pub fn operation(&self) -> Option<Operation> {
        match self {
            Route::Known(op) => Some(*op),
            Route::Other => None,
        }
    }
}

// === impl RouteTable ===

impl RouteTable {
    /// The Genesys operation list shipped with this build, parsed on first use.
    pub fn genesys() -> &'static RouteTable {
        static TABLE: OnceLock<RouteTable> = OnceLock::new();
        TABLE.get_or_init(|| {
            RouteTable::from_tsv(GENESYS_OPERATIONS)
                .expect("data/genesys-operations.tsv is valid: a unit test parses it")
        })
    }

    /// Parses `METHOD<TAB>/api/v2/...` lines (no header; blank lines are skipped).
    ///
    /// # Errors
    /// The first line that is not a supported method and a `/api/v2/` template of literal
    /// and whole-segment `{param}` segments, or that repeats an operation or conflicts with
    /// one in the matcher. Also when there are more than `u16::MAX` operations.
    pub fn from_tsv(text: &'static str) -> Result<RouteTable, RouteTableError> {
        let mut table = RouteTable {
            operations: Vec::new(),
            routers: Default::default(),
            by_template: HashMap::new(),
        };
        for (n, line) in text.lines().enumerate() {
            let err = |message: String| RouteTableError {
                line: n + 1,
                message,
            };
            if line.trim().is_empty() {
                continue;
            }
            let Some((method, template)) = line.split_once('\t') else {
                return Err(err(format!("{line:?} is not METHOD<TAB>PATH")));
            };
            let method = RouteMethod::parse(method)
                .ok_or_else(|| err(format!("unsupported method {method:?}")))?;
            check_template(template).map_err(err)?;
            let id = u16::try_from(table.operations.len())
                .map(RouteId)
                .map_err(|_| err("more than 65535 operations".into()))?;
            if table.by_template.insert((method, template), id).is_some() {
                return Err(err(format!("{method} {template} is listed twice")));
            }
            table.routers[method as usize]
                .insert(template, id)
                .map_err(|e| err(format!("{method} {template}: {e}")))?;
            table.operations.push(Operation {
                id,
                method,
                template,
            });
        }
        Ok(table)
    }

    /// The operation a request calls. `path` is the URI path without the query
    /// (`uri.path()`); anything from a `?` or `#` on is ignored all the same.
    ///
    /// Literal segments win over parameters (`/api/v2/users/me` is not `{userId}`). A
    /// parameter matches one non-empty segment of any bytes but `/`; percent-encoding is not
    /// decoded. HEAD matches a HEAD operation, else the GET operation of the path. An empty
    /// path, an empty segment (`//`) or a trailing slash is [`Route::Other`], as is any
    /// method other than GET, POST, PUT, PATCH, DELETE, HEAD.
    /// Never panics, and allocates only when backtracking past a literal or matching more
    /// than three parameters (inside `matchit`).
    pub fn lookup(&self, method: &Method, path: &str) -> Route {
        let Some(method) = RouteMethod::from_http(method) else {
            return Route::Other;
        };
        let path = match path.find(['?', '#']) {
            Some(end) => &path[..end],
            None => path,
        };
        if path.is_empty() || path.ends_with('/') || path.contains("//") {
            return Route::Other;
        }
        let found = match self.routers[method as usize].at(path) {
            // HEAD is GET without the body (RFC 9110 §9.3.2): where the table has no HEAD
            // operation, it is the GET operation (its label, budgets and allow-list entry).
            Err(_) if method == RouteMethod::Head => {
                self.routers[RouteMethod::Get as usize].at(path)
            }
            found => found,
        };
        match found {
            Ok(found) => self
                .operations
                .get(found.value.index())
                .map_or(Route::Other, |op| Route::Known(*op)),
            Err(_) => Route::Other,
        }
    }

    /// The operation whose template is exactly `template` (parameter names included), e.g.
    /// `(PUT, "/api/v2/architect/ivrs/{ivrId}")`.
    pub fn find_template(&self, method: &Method, template: &str) -> Option<RouteId> {
        let method = RouteMethod::from_http(method)?;
        self.by_template.get(&(method, template)).copied()
    }

    /// For a template that [`find_template`](Self::find_template) does not know, the
    /// operation with the same method it most likely means: the same path with other
    /// parameter names (or a concrete value where the template has a parameter), else the
    /// closest path with the same number of segments, where a parameter counts as any other
    /// parameter, a value in place of a parameter costs 1, a misspelt literal its edit
    /// distance, and at most 2 in all (on a tie, the first in the list). Config-time only.
    pub fn suggest(&self, method: &Method, template: &str) -> Option<Operation> {
        const MAX_COST: usize = 2;
        let method = RouteMethod::from_http(method)?;
        if let Ok(found) = self.routers[method as usize].at(template) {
            return self.operations.get(found.value.index()).copied();
        }
        let wanted: Vec<&str> = template.split('/').collect();
        self.operations
            .iter()
            .filter(|op| op.method == method)
            .filter_map(|op| {
                let segments: Vec<&str> = op.template.split('/').collect();
                if segments.len() != wanted.len() {
                    return None;
                }
                let mut cost = 0;
                for (have, want) in segments.iter().zip(&wanted) {
                    cost += match (is_param(have), is_param(want)) {
                        (true, true) => 0,
                        (false, false) => edit_distance(have, want),
                        _ => 1,
                    };
                    if cost > MAX_COST {
                        return None;
                    }
                }
                Some((cost, *op))
            })
            .min_by_key(|(cost, _)| *cost)
            .map(|(_, op)| op)
    }

    /// The methods with an operation whose template matches `path` (a request path, as
    /// [`lookup`](Self::lookup) takes it), in [`RouteMethod::ALL`] order.
    pub fn methods_for(&self, path: &str) -> Vec<RouteMethod> {
        let path = match path.find(['?', '#']) {
            Some(end) => &path[..end],
            None => path,
        };
        if path.is_empty() || path.ends_with('/') || path.contains("//") {
            return Vec::new();
        }
        RouteMethod::ALL
            .into_iter()
            .filter(|m| self.routers[*m as usize].at(path).is_ok())
            .collect()
    }

    /// The methods with an operation at exactly `template`, in [`RouteMethod::ALL`] order.
    pub fn methods_at(&self, template: &str) -> Vec<RouteMethod> {
        RouteMethod::ALL
            .into_iter()
            .filter(|m| self.by_template.contains_key(&(*m, template)))
            .collect()
    }

    /// The number of operations; every [`RouteId`] is below it.
    pub fn len(&self) -> usize {
        self.operations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    /// The operation with this id.
    ///
    /// # Panics
    /// If `id` comes from another, larger table (ids are only made by this one).
    pub fn operation(&self, id: RouteId) -> Operation {
        self.operations[id.index()]
    }

    /// The path template of `id`. Panics as [`operation`](Self::operation).
    pub fn template(&self, id: RouteId) -> &'static str {
        self.operation(id).template
    }

    /// The method of `id`. Panics as [`operation`](Self::operation).
    pub fn method(&self, id: RouteId) -> RouteMethod {
        self.operation(id).method
    }

    /// Every operation in id order.
    pub fn operations(&self) -> impl ExactSizeIterator<Item = Operation> + '_ {
        self.operations.iter().copied()
    }
}

impl fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTable")
            .field("operations", &self.operations.len())
            .finish_non_exhaustive()
    }
}

fn is_param(segment: &str) -> bool {
    segment.starts_with('{')
}

/// Levenshtein distance over chars; for config-time suggestions only (route and region
/// names).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// `/api/v2/` then non-empty segments: literals of `[A-Za-z0-9._-]` or whole `{name}`s with
/// `name` of `[A-Za-z0-9_]` (so nothing `matchit` treats specially, such as `{*rest}`).
fn check_template(template: &str) -> Result<(), String> {
    let Some(rest) = template.strip_prefix("/api/v2/") else {
        return Err(format!("{template:?} does not start with /api/v2/"));
    };
    for segment in rest.split('/') {
        let ok = match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) => {
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            }
            None => {
                !segment.is_empty()
                    && segment
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            }
        };
        if !ok {
            return Err(format!(
                "segment {segment:?} of {template:?} is neither a literal nor a whole {{param}}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
