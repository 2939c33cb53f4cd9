//! The status page (`GET /` on the admin listener), in the spirit of HAProxy's stats page.
//!
//! One HTML document rendered on the server from the same [`View`] as `/status`: every
//! number sits in the HTML with a stable `id` (`client-0-state`, `budget-2-used`, …), so
//! it reads without scripts. Inline CSS and SVG only, no script and nothing fetched (the
//! response's Content-Security-Policy forbids it), so it works in a locked-down cluster.
//! It reloads itself every [`REFRESH_S`] seconds. Every string from config is escaped.

use std::fmt::Write;

use super::View;
use super::rates::{EVERY, LastMinute, SPAN};

/// Seconds between the page's reloads.
pub const REFRESH_S: u32 = 2;

/// The page's policy: inline styles, nothing loaded from anywhere, no script, no form.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#111}\
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}\
.meta{color:#555}table{border-collapse:collapse}th,td{padding:.25em .7em;text-align:left;\
border-bottom:1px solid #ddd}th{background:#f3f4f6}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.tiles{display:flex;flex-wrap:wrap;gap:.8em}.tile{border:1px solid #ddd;border-radius:4px;padding:.4em .8em;min-width:9em}\
.tile .v{font-size:1.5em;font-variant-numeric:tabular-nums}.tile .l{color:#555;font-size:.85em}\
.ready{color:#166534}.cooling_down{color:#b45309}.failed{color:#b91c1c}.starting{color:#1d4ed8}\
.down{color:#b91c1c}.note{color:#555;font-size:.85em;max-width:60em}";

/// The page for `view`.
pub fn render(view: &View) -> String {
    let mut html = String::with_capacity(8 * 1024);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>gcpool status</title><style>{STYLE}</style></head><body>\n"
    );
    header(&mut html, view);
    tiles(&mut html, view);
    clients(&mut html, view);
    budgets(&mut html, view);
    learned(&mut html, view);
    cache(&mut html, view);
    callers(&mut html, view);
    let _ = write!(
        html,
        "<p class=\"note\">Last-minute figures: gcpool samples its Prometheus counters every \
         {every} s and shows the change since the oldest sample of the last {span} s (since \
         start while it is younger). Upstream 429s: <code>gcpool_upstream_429_total</code>; \
         local 429s: <code>gcpool_requests_total{{status=\"429\",outcome=\"rejected\"}}</code>; \
         mean wait: <code>gcpool_queue_wait_seconds</code> sum over count. Budget use is \
         admissions in the current window over the window's limit. This page reloads every \
         {REFRESH_S} s.</p>\n</body></html>\n",
        every = EVERY.as_secs(),
        span = SPAN.as_secs(),
    );
    html
}

fn header(html: &mut String, view: &View) {
    let shared = &view.shared_state;
    let _ = write!(
        html,
        "<h1>gcpool <span id=\"version\">{version}</span></h1>\n\
         <p class=\"meta\">config generation <b id=\"config-generation\">{generation}</b> · \
         up <span id=\"uptime-s\">{uptime}</span> s · shared state \
         <span id=\"shared-state-backend\">{backend}</span> \
         <b id=\"shared-state-up\" class=\"{up_class}\">{up}</b> · \
         <a href=\"/status\">/status</a> <a href=\"/metrics\">/metrics</a></p>\n",
        version = escape(view.version),
        generation = view.config_generation,
        uptime = view.uptime_s,
        backend = escape(shared.backend),
        up_class = if shared.up { "ready" } else { "down" },
        up = if shared.up { "up" } else { "down" },
    );
}

fn tiles(html: &mut String, view: &View) {
    let minute = &view.last_minute;
    let wait = minute
        .queue_wait_mean_ms
        .map_or_else(|| "–".to_owned(), |ms| format!("{ms:.1}"));
    html.push_str("<div class=\"tiles\">\n");
    let mut tile = |id: &str, value: &str, label: &str| {
        let _ = writeln!(
            html,
            "<div class=\"tile\"><div class=\"v\" id=\"{id}\">{value}</div><div class=\"l\">{label}</div></div>"
        );
    };
    tile(
        "queue-pending",
        &view.queue_pending.to_string(),
        "requests waiting for a slot",
    );
    tile("queue-wait-mean-ms", &wait, "mean queue wait, ms");
    tile(
        "upstream-429-last-minute",
        &minute.upstream_429.to_string(),
        "upstream 429s, last minute",
    );
    tile(
        "local-429-last-minute",
        &minute.local_429.to_string(),
        "local 429s, last minute",
    );
    tile(
        "admissions-last-minute",
        &minute.admissions.to_string(),
        "admissions, last minute",
    );
    tile(
        "last-minute-span-s",
        &minute.span_s.to_string(),
        "seconds the last minute covers",
    );
    let _ = writeln!(
        html,
        "<div class=\"tile\"><div class=\"v\"><span id=\"org-budget-used\">{used}</span> / \
         <span id=\"org-budget-limit\">{limit}</span></div><div class=\"l\">org budget, \
         this window {bar}</div></div>",
        used = view.org_budget.used,
        limit = view.org_budget.limit,
        bar = bar(view.org_budget.used, view.org_budget.limit),
    );
    html.push_str("</div>\n");
    chart(html, minute);
}

/// 429s per sampling interval: upstream (red) and local (amber) side by side.
fn chart(html: &mut String, minute: &LastMinute) {
    const W: usize = 240;
    const H: u64 = 40;
    let slots = minute.intervals.len().max(1);
    let step = W / slots;
    let top = minute
        .intervals
        .iter()
        .map(|&(u, l)| u.max(l))
        .max()
        .unwrap_or(0)
        .max(1);
    let _ = write!(
        html,
        "<h2>429s per {every} s, last minute</h2>\n<svg id=\"chart-429\" width=\"{W}\" \
         height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"upstream (red) \
         and local (amber) 429s per interval\"><rect width=\"{W}\" height=\"{H}\" fill=\"#f9fafb\"/>",
        every = EVERY.as_secs(),
    );
    for (i, &(upstream, local)) in minute.intervals.iter().enumerate() {
        for (offset, count, color) in [(0, upstream, "#dc2626"), (1, local, "#d97706")] {
            let height = count * H / top;
            let x = i * step + offset * step / 2;
            let _ = write!(
                html,
                "<rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{height}\" fill=\"{color}\"/>",
                y = H - height,
                w = (step / 2).saturating_sub(1).max(1),
            );
        }
    }
    html.push_str("</svg>\n");
}

fn clients(html: &mut String, view: &View) {
    html.push_str(
        "<h2>Clients</h2>\n<table id=\"clients\"><thead><tr><th>client</th><th>state</th>\
         <th>healthy</th><th>token expires in, s</th><th>token budget, this window</th>\
         <th>in flight</th><th>upstream 429s</th></tr></thead><tbody>\n",
    );
    for (i, c) in view.clients.iter().enumerate() {
        let state = escape(c.state);
        let _ = writeln!(
            html,
            "<tr id=\"client-{i}\"><td id=\"client-{i}-name\">{name}</td>\
             <td id=\"client-{i}-state\" class=\"{state}\">{state}</td>\
             <td id=\"client-{i}-healthy\">{healthy}</td>\
             <td class=\"n\" id=\"client-{i}-token-expires-in-s\">{expires}</td>\
             <td class=\"n\"><span id=\"client-{i}-budget-used\">{used}</span> / \
             <span id=\"client-{i}-budget-limit\">{limit}</span> {bar}</td>\
             <td class=\"n\" id=\"client-{i}-in-flight\">{in_flight}</td>\
             <td class=\"n\" id=\"client-{i}-upstream-429\">{upstream_429}</td></tr>",
            name = escape(&c.name),
            healthy = if c.healthy { "yes" } else { "no" },
            expires = c.token_expires_in_s,
            used = c.budget_used,
            limit = c.budget_limit,
            bar = bar(
                u32::try_from(c.budget_used).unwrap_or(u32::MAX),
                c.budget_limit
            ),
            in_flight = c.in_flight,
            upstream_429 = c.upstream_429,
        );
    }
    html.push_str("</tbody></table>\n");
}

fn budgets(html: &mut String, view: &View) {
    html.push_str(
        "<h2>Budgets</h2>\n<table id=\"budgets\"><thead><tr><th>budget</th><th>kind</th>\
         <th>window fill</th><th>used</th><th>limit</th><th>window, s</th></tr></thead><tbody>\n",
    );
    for (i, b) in view.budgets.iter().enumerate() {
        let _ = writeln!(
            html,
            "<tr id=\"budget-{i}\"><td id=\"budget-{i}-name\">{name}</td>\
             <td id=\"budget-{i}-kind\">{kind}</td><td>{bar}</td>\
             <td class=\"n\" id=\"budget-{i}-used\">{used}</td>\
             <td class=\"n\" id=\"budget-{i}-limit\">{limit}</td>\
             <td class=\"n\">{window:.2}</td></tr>",
            name = escape(&b.name),
            kind = escape(b.kind),
            bar = bar(b.used, b.limit),
            used = b.used,
            limit = b.limit,
            window = std::time::Duration::from_millis(b.window_ms).as_secs_f64(),
        );
    }
    html.push_str("</tbody></table>\n");
}

fn learned(html: &mut String, view: &View) {
    html.push_str("<h2>Learned limits</h2>\n");
    if view.learned_limits.is_empty() {
        html.push_str(
            "<p id=\"learned-none\">None: no upstream 429 revealed a limit below a budget.</p>\n",
        );
        return;
    }
    html.push_str(
        "<table id=\"learned\"><thead><tr><th>budget</th><th>per minute (lowered by an \
         upstream 429, until restart)</th></tr></thead><tbody>\n",
    );
    for (i, (name, per_minute)) in view.learned_limits.iter().enumerate() {
        let _ = writeln!(
            html,
            "<tr><td id=\"learned-{i}-name\">{name}</td>\
             <td class=\"n\" id=\"learned-{i}-per-minute\">{per_minute}</td></tr>",
            name = escape(name),
        );
    }
    html.push_str("</tbody></table>\n");
}

fn cache(html: &mut String, view: &View) {
    let Some(cache) = &view.cache else {
        return;
    };
    let _ = writeln!(
        html,
        "<h2>Response cache</h2>\n<p><span id=\"cache-entries\">{}</span> answers kept, \
         <span id=\"cache-bytes\">{}</span> bytes. Since start, per route: hit ratio (answered \
         without an upstream call of their own: hits and coalesced) and each result.</p>",
        cache.entries, cache.bytes
    );
    html.push_str(
        "<table id=\"cache\"><thead><tr><th>route</th><th>ttl</th><th>hit ratio</th>\
         <th>hit</th><th>coalesced</th><th>miss</th><th>stale</th><th>bypass</th></tr>\
         </thead><tbody>\n",
    );
    for (i, r) in cache.routes.iter().enumerate() {
        let _ = writeln!(
            html,
            "<tr><td id=\"cache-{i}-route\">{route}</td><td class=\"n\">{ttl} ms</td>\
             <td class=\"n\" id=\"cache-{i}-hit-ratio\">{ratio:.1} %</td>\
             <td class=\"n\" id=\"cache-{i}-hit\">{hit}</td>\
             <td class=\"n\" id=\"cache-{i}-coalesced\">{coalesced}</td>\
             <td class=\"n\" id=\"cache-{i}-miss\">{miss}</td>\
             <td class=\"n\" id=\"cache-{i}-stale\">{stale}</td>\
             <td class=\"n\" id=\"cache-{i}-bypass\">{bypass}</td></tr>",
            route = escape(&r.route),
            ttl = r.ttl_ms,
            ratio = r.hit_ratio * 100.0,
            hit = r.hit,
            coalesced = r.coalesced,
            miss = r.miss,
            stale = r.stale,
            bypass = r.bypass,
        );
    }
    html.push_str("</tbody></table>\n");
}

fn callers(html: &mut String, view: &View) {
    if view.callers.is_empty() {
        return;
    }
    html.push_str(
        "<h2>Callers</h2>\n<p>Each API key is a caller; requests since start, and of those \
         refused by gcpool. Clients: its sub-pool; lane: the share of every token, route and \
         org budget its requests may fill; max wait: the caller's own cap (else the \
         queue's); routes: its own list on top of the global one.</p>\n<table id=\"callers\"><thead><tr><th>caller</th>\
         <th>clients</th><th>lane</th><th>quota (this window)</th><th>max wait</th><th>routes</th>\
         <th>requests</th><th>refused</th></tr>\
         </thead><tbody>\n",
    );
    for (i, c) in view.callers.iter().enumerate() {
        let wait = c
            .max_wait_ms
            .map_or_else(|| "queue's".to_owned(), |ms| format!("{ms} ms"));
        let routes = if c.allow_routes.is_empty() {
            "all allowed".to_owned()
        } else {
            escape(&c.allow_routes.join(", "))
        };
        let quota = c.quota.map_or_else(
            || "none".to_owned(),
            |q| format!("{} / {}", q.used, q.limit),
        );
        let clients = if c.clients.is_empty() {
            "all".to_owned()
        } else {
            escape(&c.clients.join(", "))
        };
        let _ = writeln!(
            html,
            "<tr><td id=\"caller-{i}-name\">{name}</td><td id=\"caller-{i}-clients\">{clients}</td>\
             <td id=\"caller-{i}-lane\">{lane} ({share})</td><td class=\"n\" id=\"caller-{i}-quota\">{quota}</td><td class=\"n\">{wait}</td>\
             <td id=\"caller-{i}-routes\">{routes}</td>\
             <td class=\"n\" id=\"caller-{i}-requests\">{requests}</td>\
             <td class=\"n\" id=\"caller-{i}-rejected\">{rejected}</td></tr>",
            name = escape(&c.name),
            lane = c.lane,
            share = c.lane_share,
            requests = c.requests,
            rejected = c.rejected,
        );
    }
    html.push_str("</tbody></table>\n");
}

/// An inline SVG bar of `used` out of `limit`: amber from 70 %, red from 90 %.
fn bar(used: u32, limit: u32) -> String {
    const W: u64 = 100;
    let filled = if limit == 0 {
        0
    } else {
        (u64::from(used) * W / u64::from(limit)).min(W)
    };
    let color = match filled {
        90.. => "#dc2626",
        70..90 => "#d97706",
        _ => "#2563eb",
    };
    format!(
        "<svg width=\"{W}\" height=\"10\" viewBox=\"0 0 {W} 10\" role=\"img\" \
         aria-label=\"{filled}% used\"><rect width=\"{W}\" height=\"10\" fill=\"#e5e7eb\"/>\
         <rect width=\"{filled}\" height=\"10\" fill=\"{color}\"/></svg>"
    )
}

/// `text` safe inside HTML text and double- or single-quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::admin::{BudgetUse, CacheView, CachedRoute, CallerStatus, SharedState, Usage};
    use crate::pool::ClientStatus;

    fn view(name: &str, learned: &str) -> View {
        View {
            version: "0.0.0",
            uptime_s: 5,
            config_generation: 3,
            shared_state: SharedState {
                backend: "memory",
                up: true,
            },
            org_budget: Usage { used: 4, limit: 10 },
            queue_pending: 2,
            learned_limits: BTreeMap::from([(learned.to_owned(), 7)]),
            clients: vec![ClientStatus {
                name: name.to_owned(),
                state: "ready",
                healthy: true,
                budget_used: 9,
                budget_limit: 10,
                in_flight: 1,
                token_expires_in_s: 86_000,
                upstream_429: 0,
            }],
            budgets: vec![BudgetUse {
                name: format!("token:{name}"),
                kind: "token",
                used: 9,
                limit: 10,
                window_ms: 60_000,
            }],
            last_minute: LastMinute {
                span_s: 5,
                upstream_429: 1,
                local_429: 2,
                admissions: 3,
                queue_wait_mean_ms: None,
                intervals: vec![(1, 2)],
            },
            cache: Some(CacheView {
                entries: 1,
                bytes: 100,
                routes: vec![CachedRoute {
                    route: format!("GET /api/v2/{name}"),
                    ttl_ms: 30_000,
                    hit: 3,
                    miss: 1,
                    coalesced: 0,
                    stale: 0,
                    bypass: 0,
                    hit_ratio: 0.75,
                }],
            }),
            callers: vec![CallerStatus {
                name: name.to_owned(),
                max_wait_ms: Some(2000),
                allow_routes: vec![format!("GET /api/v2/{name}")],
                clients: vec![],
                lane: "batch",
                lane_share: 0.5,
                quota: Some(Usage { used: 3, limit: 10 }),
                requests: 5,
                rejected: 1,
            }],
        }
    }

    #[test]
    fn escape_covers_markup_and_both_quotes() {
        assert_eq!(
            escape(r#"a<b>&"c'"#),
            "a&lt;b&gt;&amp;&quot;c&#39;",
            "every character that can end a text node or an attribute"
        );
        assert_eq!(escape("pool-01"), "pool-01");
    }

    /// Client and budget names come from config (and learned-limit names from budget
    /// names): markup in them must reach the page as text, never as tags.
    #[test]
    fn names_from_config_are_escaped_on_the_page() {
        let hostile = "a<script>alert(1)</script>\"'&";
        let html = render(&view(hostile, "endpoint:GET /x<img src=y>"));
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains(
            "<td id=\"client-0-name\">a&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;</td>"
        ));
        assert!(html.contains(
            "<td id=\"budget-0-name\">token:a&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;</td>"
        ));
        assert!(html.contains("<td id=\"learned-0-name\">endpoint:GET /x&lt;img src=y&gt;</td>"));
        assert!(html.contains(
            "<td id=\"caller-0-name\">a&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;</td>"
        ));
        assert!(html.contains("<td class=\"n\" id=\"caller-0-quota\">3 / 10</td>"));
        assert!(html.contains("<td id=\"caller-0-lane\">batch (0.5)</td>"));
    }

    #[test]
    fn bars_fill_in_proportion_and_never_overflow() {
        assert!(bar(9, 10).contains("<rect width=\"90\" height=\"10\" fill=\"#dc2626\"/>"));
        assert!(bar(7, 10).contains("<rect width=\"70\" height=\"10\" fill=\"#d97706\"/>"));
        assert!(bar(0, 0).contains("<rect width=\"0\""));
        assert!(bar(30, 10).contains("<rect width=\"100\" height=\"10\" fill=\"#dc2626\"/>"));
    }
}
