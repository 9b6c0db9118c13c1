//! loupectl's human output: results (JSON values) as tables and key/value lines. Every
//! renderer takes whatever shape it is given: a missing field prints `-`, an unexpected
//! type prints as compact JSON, nothing panics.

use serde_json::{Map, Value};

/// A field's text: `-` when missing or null.
pub fn text(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) if s.is_empty() => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => if *b { "yes" } else { "no" }.into(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Array(items)) if items.iter().all(is_scalar) => {
            if items.is_empty() {
                "-".into()
            } else {
                items.iter().map(|v| text(Some(v))).collect::<Vec<_>>().join(",")
            }
        }
        Some(other) => other.to_string(),
    }
}

fn is_scalar(value: &Value) -> bool {
    !matches!(value, Value::Array(_) | Value::Object(_))
}

/// `value[key]` as text.
pub fn field(value: &Value, key: &str) -> String {
    text(value.get(key))
}

/// Seconds as `45s`, `3m04s`, `2h05m`, `3d04h`.
pub fn age(value: Option<&Value>) -> String {
    let Some(secs) = value.and_then(Value::as_u64) else {
        return text(value);
    };
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// Bytes as `512`, `1.5K`, `12.0M`, `3.1G`.
pub fn bytes(value: Option<&Value>) -> String {
    let Some(n) = value.and_then(Value::as_u64) else {
        return text(value);
    };
    const UNITS: [(u64, &str); 4] = [(1 << 40, "T"), (1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
    for (size, unit) in UNITS {
        if n >= size {
            return format!("{:.1}{unit}", n as f64 / size as f64);
        }
    }
    n.to_string()
}

/// Columns separated by two spaces, each as wide as its widest cell; the last column
/// is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let columns = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate().take(columns) {
            if i + 1 < columns {
                text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            } else {
                text.push_str(cell);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        let mut cells = row.iter().map(String::as_str).chain(std::iter::repeat("-"));
        line(&mut cells);
    }
    out
}

/// `key   value` lines with the values aligned.
pub fn key_values(pairs: &[(String, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
    pairs.iter().map(|(k, v)| format!("{k:<width$}  {v}\n")).collect()
}

fn pair(key: &str, value: String) -> (String, String) {
    (key.to_string(), value)
}

/// Columns that identify a row come first; the others follow in key order (serde_json
/// keeps objects sorted).
const LEADING_KEYS: [&str; 8] = ["name", "id", "queue", "worker", "host", "profile", "reason", "kind"];

/// The union of the objects' keys, identifying ones first.
fn keys_of(items: &[Value]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for item in items {
        if let Some(object) = item.as_object() {
            for key in object.keys() {
                if !keys.contains(key) {
                    keys.push(key.clone());
                }
            }
        }
    }
    keys.sort_by_key(|k| {
        LEADING_KEYS
            .iter()
            .position(|lead| lead == k)
            .unwrap_or(LEADING_KEYS.len())
    });
    keys
}

/// An array of objects as a table with one column per key (upper-cased headers).
pub fn generic_table(items: &[Value]) -> String {
    let keys = keys_of(items);
    if keys.is_empty() {
        return items.iter().map(|v| format!("{}\n", text(Some(v)))).collect();
    }
    let headers: Vec<String> = keys.iter().map(|k| k.to_uppercase()).collect();
    let header_refs: Vec<&str> = headers.iter().map(String::as_str).collect();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| keys.iter().map(|k| field(item, k)).collect())
        .collect();
    table(&header_refs, &rows)
}

/// Any value: an object as dotted keys with its arrays of objects as tables after
/// them, an array of objects as a table, a scalar as its text.
pub fn generic(value: &Value) -> String {
    match value {
        Value::Object(object) => {
            let mut pairs = Vec::new();
            let mut tables = Vec::new();
            flatten("", object, &mut pairs, &mut tables);
            let mut out = key_values(&pairs);
            for (name, items) in tables {
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(&format!("{name}:\n"));
                out.push_str(&indent(&generic_table(items), "  "));
            }
            out
        }
        Value::Array(items) if items.is_empty() => "(none)\n".into(),
        Value::Array(items) => generic_table(items),
        other => format!("{}\n", text(Some(other))),
    }
}

fn flatten<'v>(
    prefix: &str,
    object: &'v Map<String, Value>,
    pairs: &mut Vec<(String, String)>,
    tables: &mut Vec<(String, &'v [Value])>,
) {
    for (key, value) in object {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Object(inner) if inner.is_empty() => pairs.push((name, "-".into())),
            Value::Object(inner) => flatten(&name, inner, pairs, tables),
            Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object) => {
                tables.push((name, items))
            }
            other => pairs.push((name, text(Some(other)))),
        }
    }
}

fn indent(text: &str, by: &str) -> String {
    text.lines().map(|line| format!("{by}{line}\n")).collect()
}

fn items(value: Option<&Value>) -> &[Value] {
    value.and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

/// Text that came off the wire (URLs, host names, methods) made safe for a terminal:
/// control characters are shown escaped (`\u{1b}`), never sent to it.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// At most `max` characters: longer text keeps its start and ends with `…`.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `value[key]` as text from the wire: [`field`], then [`printable`].
fn wire_field(value: &Value, key: &str) -> String {
    printable(&field(value, key))
}

// ---- verbs ----

pub fn status(value: &Value) -> String {
    let ports = value
        .get("inspect_ports")
        .map(|v| text(Some(v)))
        .unwrap_or_else(|| "-".into());
    let mut pairs = vec![
        pair("version", field(value, "version")),
        pair("uptime", age(value.get("uptime_secs"))),
        pair("config version", field(value, "config_version")),
        pair("inside port", field(value, "inside")),
        pair("outside port", field(value, "outside")),
        pair("inspected ports", ports),
        pair("queues", field(value, "queues")),
        pair("xdp mode", field(value, "xdp_mode")),
        pair("fail mode", field(value, "fail_mode")),
    ];
    match value.get("busy_poll_us").and_then(Value::as_u64) {
        Some(0) | None => {}
        Some(us) => pairs.push(pair("busy poll", format!("{us} µs after the last frame"))),
    }
    if value.get("forward_only").and_then(Value::as_bool) == Some(true) {
        // A measurement mode: said where an operator looks first.
        pairs.push(pair(
            "forward only",
            "yes: frames are copied port to port; nothing is decrypted or inspected".into(),
        ));
    }
    let mut out = key_values(&pairs);
    let workers = items(value.get("workers"));
    out.push('\n');
    let rows: Vec<Vec<String>> = workers
        .iter()
        .map(|w| {
            let load = match w.get("load").and_then(Value::as_f64) {
                Some(load) => format!("{:.0}%", load * 100.0),
                None => field(w, "load"),
            };
            // How each port's AF_XDP socket moves frames: "zero-copy" or "copy", and
            // whether a packet may span frames (jumbo MTUs).
            let af_xdp = w.get("af_xdp").unwrap_or(&Value::Null);
            let multi_buffer = w.get("multi_buffer").unwrap_or(&Value::Null);
            let port_mode = |side: &str| match multi_buffer.get(side).and_then(Value::as_bool) {
                Some(true) => format!("{} multi-buffer", field(af_xdp, side)),
                _ => field(af_xdp, side),
            };
            let mtu = w.get("mtu").unwrap_or(&Value::Null);
            vec![
                field(w, "queue"),
                field(w, "core"),
                format!("{}/{}", port_mode("inside"), port_mode("outside")),
                format!("{}/{}", field(mtu, "inside"), field(mtu, "outside")),
                field(w, "flows"),
                load,
                field(w, "config_version"),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "QUEUE",
            "CORE",
            "AF_XDP IN/OUT",
            "MTU IN/OUT",
            "FLOWS",
            "LOAD",
            "CONFIG",
        ],
        &rows,
    ));
    out
}

pub fn sessions(value: &Value) -> String {
    let rows: Vec<Vec<String>> = items(Some(value))
        .iter()
        .map(|s| {
            vec![
                field(s, "id"),
                field(s, "client"),
                field(s, "server"),
                field(s, "sni"),
                field(s, "state"),
                field(s, "action"),
                field(s, "rule"),
                bytes(s.get("bytes_client_to_server")),
                bytes(s.get("bytes_server_to_client")),
                age(s.get("age_secs")),
                field(s, "transactions"),
                truncate(&wire_field(s, "last_http"), LAST_HTTP_WIDTH),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "CLIENT",
            "SERVER",
            "SNI",
            "STATE",
            "ACTION",
            "RULE",
            "C2S",
            "S2C",
            "AGE",
            "HTTP",
            "LAST REQUEST",
        ],
        &rows,
    )
}

/// The `LAST REQUEST` column of `sessions` is cut to this many characters.
const LAST_HTTP_WIDTH: usize = 48;

/// One transaction of `session ID`'s http section:
/// `GET shop.example/admin → 403 blocked by url rule no-admin (stream 5)`.
pub fn http_line(line: &Value) -> String {
    let host = line.get("host").and_then(Value::as_str).filter(|h| !h.is_empty());
    let url = line.get("url").and_then(Value::as_str).unwrap_or("");
    // origin-form (`/admin`) reads as host + path; other forms (`http://…`, `*`,
    // `host:443`) stand on their own.
    let target = match host {
        Some(host) if url.starts_with('/') => format!("{host}{url}"),
        Some(host) if !url.is_empty() => format!("{host} {url}"),
        Some(host) => host.to_string(),
        None if url.is_empty() => "-".to_string(),
        None => url.to_string(),
    };
    let mut out = format!("{} {}", wire_field(line, "method"), printable(&target));
    let blocked = line.get("blocked").and_then(Value::as_bool).unwrap_or(false);
    match line.get("status").filter(|s| !s.is_null()) {
        Some(status) => out.push_str(&format!(" → {}", text(Some(status)))),
        None if blocked => {}
        None => out.push_str(" → no response"),
    }
    let rule = line.get("url_rule").and_then(Value::as_str).filter(|r| !r.is_empty());
    match (blocked, rule) {
        (true, Some(rule)) => out.push_str(&format!(" blocked by url rule {}", printable(rule))),
        (true, None) => out.push_str(" blocked"),
        (false, Some(rule)) => match line.get("url_action").and_then(Value::as_str) {
            Some(action) if !action.is_empty() => {
                out.push_str(&format!(" url rule {} ({})", printable(rule), printable(action)))
            }
            _ => out.push_str(&format!(" url rule {}", printable(rule))),
        },
        (false, None) => {}
    }
    if let Some(stream) = line.get("stream_id").filter(|s| !s.is_null()) {
        out.push_str(&format!(" (stream {})", text(Some(stream))));
    }
    out
}

/// `session ID`'s http section; nothing for a session never inspected as HTTP.
fn http_section(out: &mut String, http: Option<&Value>) {
    let Some(http) = http.filter(|h| h.is_object()) else {
        return;
    };
    section(
        out,
        "http",
        &[
            pair("protocol", field(http, "protocol")),
            pair("transactions", field(http, "transactions")),
            pair("stopped", wire_field(http, "stopped")),
            pair("ended", wire_field(http, "ended")),
        ],
    );
    let recent = items(http.get("recent"));
    if recent.is_empty() {
        out.push_str("    recent        -\n");
        return;
    }
    out.push_str("    recent\n");
    for line in recent {
        out.push_str(&format!("      {}\n", http_line(line)));
    }
}

fn flow(out: &mut String, title: &str, flow: Option<&Value>) {
    let flow = flow.unwrap_or(&Value::Null);
    out.push_str(&format!("{title}\n"));
    out.push_str(&indent(
        &key_values(&[
            pair("from", field(flow, "from")),
            pair("to", field(flow, "to")),
            pair("tcp state", field(flow, "tcp_state")),
            pair("bytes", field(flow, "bytes")),
            pair("packets", field(flow, "packets")),
        ]),
        "    ",
    ));
}

fn section(out: &mut String, title: &str, pairs: &[(String, String)]) {
    out.push_str(&format!("{title}\n"));
    out.push_str(&indent(&key_values(pairs), "    "));
}

pub fn session(value: &Value) -> String {
    let live = match value.get("live").and_then(Value::as_bool) {
        Some(true) => "live",
        Some(false) => "ended",
        None => "-",
    };
    let mut out = format!(
        "session {} ({live}, worker {})\n",
        field(value, "id"),
        field(value, "worker")
    );
    out.push_str(&indent(&key_values(&[pair("state", field(value, "state"))]), "  "));
    let mut body = String::new();
    flow(&mut body, "c2s flow", value.get("c2s"));
    flow(&mut body, "s2c flow", value.get("s2c"));
    section(
        &mut body,
        "timing",
        &[
            pair("started", field(value, "started")),
            pair("idle", age(value.get("idle_secs"))),
            pair("idle timeout", age(value.get("idle_timeout_secs"))),
        ],
    );
    section(
        &mut body,
        "policy",
        &[
            pair("rule", field(value, "rule")),
            pair("profile", field(value, "profile")),
            pair("action", field(value, "action")),
            pair("reason", field(value, "reason")),
            pair("decrypted", field(value, "decrypted")),
        ],
    );
    section(
        &mut body,
        "tls",
        &[
            pair("version", field(value, "tls_version")),
            pair("cipher", field(value, "cipher")),
            pair("sni", field(value, "sni")),
            pair("alpn", field(value, "alpn")),
            pair("cert subject", field(value, "cert_subject")),
            pair("cert issuer", field(value, "cert_issuer")),
        ],
    );
    section(
        &mut body,
        "outcome",
        &[
            pair("stage", field(value, "stage")),
            pair("error", field(value, "error")),
            pair("end reason", field(value, "end_reason")),
            pair("config version", field(value, "config_version")),
        ],
    );
    http_section(&mut body, value.get("http"));
    out.push_str(&indent(&body, "  "));
    out
}

pub fn policy_check(value: &Value) -> String {
    format!(
        "policy {} is valid: {} rules, {} profiles, {} XDP entries\n",
        field(value, "file"),
        field(value, "rules"),
        field(value, "profiles"),
        field(value, "xdp_entries")
    )
}

pub fn policy_load(value: &Value) -> String {
    format!(
        "policy loaded: config version {} ({} workers)\n",
        field(value, "config_version"),
        field(value, "workers_acked")
    )
}

pub fn rules_load(value: &Value) -> String {
    format!(
        "signatures loaded: {} rules, {} skipped; config version {} ({} workers)\n",
        field(value, "loaded"),
        field(value, "skipped"),
        field(value, "config_version"),
        field(value, "workers_acked")
    )
}

pub fn rules_show(value: &Value) -> String {
    let mut out = key_values(&[
        pair("config version", field(value, "config_version")),
        pair("loaded", field(value, "loaded")),
        pair("skipped", field(value, "skipped_count")),
    ]);
    let files: Vec<Vec<String>> = items(value.get("files"))
        .iter()
        .map(|f| vec![field(f, "file"), field(f, "loaded")])
        .collect();
    out.push_str("\nfiles:\n");
    out.push_str(&indent(&table(&["FILE", "LOADED"], &files), "  "));
    let skipped = items(value.get("skipped"));
    if !skipped.is_empty() {
        out.push_str("\nskipped:\n");
        for s in skipped {
            out.push_str(&format!(
                "  {}:{}: {}\n",
                field(s, "file"),
                field(s, "line"),
                field(s, "reason")
            ));
        }
    }
    out
}

/// `log reopen`: one line per file opened again.
pub fn log_reopen(value: &Value) -> String {
    items(value.get("reopened"))
        .iter()
        .map(|path| format!("reopened {}\n", path.as_str().unwrap_or_default()))
        .collect()
}

pub fn rules_stats(value: &Value) -> String {
    let rows: Vec<Vec<String>> = items(value.get("rules"))
        .iter()
        .map(|r| vec![field(r, "sid"), field(r, "action"), field(r, "hits"), field(r, "msg")])
        .collect();
    let mut out = format!(
        "{} matches (config version {})\n",
        field(value, "total"),
        field(value, "config_version")
    );
    out.push_str(&table(&["SID", "ACTION", "HITS", "MSG"], &rows));
    out
}

pub fn policy_show(value: &Value) -> String {
    let mut out = key_values(&[
        pair("config version", field(value, "config_version")),
        pair("file", field(value, "file")),
        pair("loaded at", field(value, "loaded_at")),
        pair("idle timeout", field(&value["timeouts"], "idle")),
        pair("handshake timeout", field(&value["timeouts"], "handshake")),
    ]);
    let rules: Vec<Vec<String>> = items(value.get("rules"))
        .iter()
        .map(|r| {
            vec![
                field(r, "name"),
                field(r, "action"),
                field(r, "profile"),
                field(r, "hits"),
            ]
        })
        .collect();
    out.push_str("\nrules:\n");
    out.push_str(&indent(&table(&["NAME", "ACTION", "PROFILE", "HITS"], &rules), "  "));
    let profiles = items(value.get("profiles"));
    out.push_str("\nprofiles:\n");
    out.push_str(&indent(&generic(&Value::Array(profiles.to_vec())), "  "));
    let overrides: Vec<Vec<String>> = items(value.get("overrides"))
        .iter()
        .map(|o| vec![field(o, "profile"), field(o, "change")])
        .collect();
    if !overrides.is_empty() {
        out.push_str("\noverrides:\n");
        out.push_str(&indent(&table(&["PROFILE", "CHANGE"], &overrides), "  "));
    }
    out
}

pub fn profile_set(name: &str, value: &Value) -> String {
    let mut out = format!(
        "profile {name} updated: config version {}\n",
        field(value, "config_version")
    );
    if let Some(profile) = value.get("profile") {
        out.push_str(&indent(&generic(profile), "  "));
    }
    out
}

pub fn trust_list(value: &Value) -> String {
    let rows: Vec<Vec<String>> = items(Some(value))
        .iter()
        .map(|t| {
            vec![
                field(t, "sha256"),
                field(t, "kind"),
                field(t, "hosts"),
                field(t, "subject"),
                field(t, "issuer"),
                field(t, "not_after"),
            ]
        })
        .collect();
    table(&["SHA256", "KIND", "HOSTS", "SUBJECT", "ISSUER", "NOT AFTER"], &rows)
}

pub fn trust_fetch(value: &Value) -> String {
    let sni = match value.get("sni") {
        Some(Value::String(s)) if !s.is_empty() => format!(" (sni {s})"),
        _ => String::new(),
    };
    let mut out = key_values(&[
        pair(
            "server",
            format!("{}:{}{sni}", field(value, "host"), field(value, "port")),
        ),
        pair("source", field(value, "source")),
        pair("seen", field(value, "seen")),
    ]);
    let chain = items(value.get("chain"));
    if chain.is_empty() {
        out.push_str("no certificate chain\n");
    }
    for (i, cert) in chain.iter().enumerate() {
        out.push_str(&format!("certificate {}\n", i + 1));
        out.push_str(&indent(
            &key_values(&[
                pair("subject", field(cert, "subject")),
                pair("issuer", field(cert, "issuer")),
                pair("not before", field(cert, "not_before")),
                pair("not after", field(cert, "not_after")),
                pair("sha256", field(cert, "sha256")),
            ]),
            "  ",
        ));
    }
    let error = value.get("error").filter(|e| !e.is_null());
    match (value.get("verify"), error) {
        (Some(verify), _) if verify.is_object() => out.push_str(&format!(
            "verification failed: {} (code {}, depth {})\n",
            field(verify, "reason"),
            field(verify, "code"),
            field(verify, "depth")
        )),
        (_, Some(error)) => out.push_str(&format!("verification: {}\n", text(Some(error)))),
        _ => out.push_str("verification: no error recorded\n"),
    }
    if let Some(accepted) = value.get("accepted").filter(|a| !a.is_null()) {
        out.push_str(&format!(
            "imported {}, pinned to {} (config version {})\n",
            field(accepted, "sha256"),
            field(accepted, "host"),
            field(value, "config_version")
        ));
    }
    out
}

fn endpoint(record: &Value, ip: &str, port: &str) -> String {
    let address = field(record, ip);
    let port = field(record, port);
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// One log record on one line: an EVE `http` event as [`http_event`], anything else
/// as a decryption-log record.
pub fn log_record(record: &Value) -> String {
    if record.get("event_type").and_then(Value::as_str) == Some("http") {
        return http_event(record);
    }
    let mut line = format!(
        "{} {} {} {} {} -> {} {} rule={}",
        field(record, "time"),
        field(record, "session_id"),
        field(record, "outcome"),
        field(record, "action"),
        endpoint(record, "client_ip", "client_port"),
        endpoint(record, "server_ip", "server_port"),
        field(record, "sni"),
        field(record, "rule"),
    );
    if let Some(error) = record.get("error").filter(|e| !e.is_null()) {
        line.push(' ');
        line.push_str(&text(Some(error)));
    }
    line
}

/// An EVE timestamp to the second: `2026-12-03T13:35:00.123456+0000` as
/// `2026-12-03T13:35:00`; anything else as it is.
fn eve_time(record: &Value) -> String {
    let time = field(record, "timestamp");
    let shaped = time.len() >= 19
        && time.as_bytes()[..19].iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            10 => *b == b'T',
            13 | 16 => *b == b':',
            _ => b.is_ascii_digit(),
        });
    if shaped {
        time[..19].to_string()
    } else {
        printable(&time)
    }
}

/// One EVE `http` event on one line:
/// `2026-12-03T13:35:00 198.18.0.1:40000 → shop.example GET /admin 403 HTTP/1.1 [blocked: no-admin]`.
pub fn http_event(record: &Value) -> String {
    let http = record.get("http").unwrap_or(&Value::Null);
    let loupe = record.get("loupe").unwrap_or(&Value::Null);
    let to = match http.get("hostname").and_then(Value::as_str) {
        Some(host) if !host.is_empty() => printable(host),
        _ => endpoint(record, "dest_ip", "dest_port"),
    };
    let mut line = format!(
        "{} {} → {to} {} {} {} {}",
        eve_time(record),
        endpoint(record, "src_ip", "src_port"),
        wire_field(http, "http_method"),
        wire_field(http, "url"),
        field(http, "status"),
        wire_field(http, "protocol"),
    );
    let blocked = loupe.get("blocked").and_then(Value::as_bool).unwrap_or(false);
    let url_rule = loupe.get("url_rule").unwrap_or(&Value::Null);
    let rule = url_rule.get("name").and_then(Value::as_str).filter(|n| !n.is_empty());
    match (blocked, rule) {
        (true, Some(rule)) => line.push_str(&format!(" [blocked: {}]", printable(rule))),
        (true, None) => line.push_str(" [blocked]"),
        (false, Some(rule)) => line.push_str(&format!(" [{}: {}]", wire_field(url_rule, "action"), printable(rule))),
        (false, None) => {}
    }
    line
}

pub fn capture_start(value: &Value) -> String {
    let filter = match value.get("filter").and_then(Value::as_object) {
        Some(filter) if !filter.is_empty() => filter
            .iter()
            .map(|(k, v)| format!("{k}={}", text(Some(v))))
            .collect::<Vec<_>>()
            .join(" "),
        _ => "all inspected flows".into(),
    };
    format!(
        "capturing to {} ({filter}; stops at {} bytes)\n",
        field(value, "out"),
        field(value, "max_bytes")
    )
}

pub fn capture_stop(value: &Value) -> String {
    format!(
        "capture stopped: {} ({} frames, {} bytes, {} dropped)\n",
        field(value, "out"),
        field(value, "frames"),
        field(value, "bytes"),
        field(value, "dropped")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_shows_each_workers_af_xdp_modes() {
        let value = json!({
            "xdp_mode": "native",
            "workers": [
                {"queue": 0, "core": 1, "af_xdp": {"inside": "zero-copy", "outside": "copy"}, "flows": 3, "load": 0.25, "config_version": 2},
                {"queue": 2, "core": 3, "af_xdp": {"inside": "copy", "outside": "copy"}, "multi_buffer": {"inside": true, "outside": false}, "mtu": {"inside": 9000, "outside": 3826}, "flows": 0, "load": 0.0, "config_version": 2},
                {"queue": 1, "core": 2, "flows": 0, "load": 0.0, "config_version": 2},
            ],
        });
        let text = status(&value);
        assert!(text.contains("AF_XDP IN/OUT"), "{text}");
        let row = text.lines().find(|l| l.starts_with('0')).expect("queue 0's row");
        assert!(row.contains("zero-copy/copy"), "{text}");
        // A daemon that does not say: dashes, not a guess.
        let row = text.lines().find(|l| l.starts_with('1')).expect("queue 1's row");
        assert!(row.contains("-/-"), "{text}");
        let row = text.lines().find(|l| l.starts_with('2')).expect("queue 2's row");
        assert!(
            row.contains("copy multi-buffer/copy ") && row.contains("9000/3826"),
            "{text}"
        );
        assert!(text.contains("native"), "{text}");
        assert!(!text.contains("forward only"), "{text}");
        assert!(!text.contains("busy poll"), "{text}");
        let spinning = status(&json!({"busy_poll_us": 50, "workers": []}));
        assert!(spinning.contains("50 µs after the last frame"), "{spinning}");
        let forwarding = status(&json!({"forward_only": true, "workers": []}));
        assert!(
            forwarding.contains("forward only     yes: frames are copied"),
            "{forwarding}"
        );
    }

    #[test]
    fn missing_fields_print_a_dash_and_odd_shapes_do_not_panic() {
        for value in [
            json!(null),
            json!(7),
            json!("x"),
            json!([1, {"a": 2}]),
            json!({"workers": 3}),
        ] {
            status(&value);
            sessions(&value);
            session(&value);
            generic(&value);
            policy_check(&value);
            policy_load(&value);
            policy_show(&value);
            profile_set("p", &value);
            trust_list(&value);
            trust_fetch(&value);
            log_record(&value);
            http_event(&value);
            capture_start(&value);
            capture_stop(&value);
        }
        assert_eq!(
            policy_load(&json!({"config_version": 4})),
            "policy loaded: config version 4 (- workers)\n"
        );
    }

    #[test]
    fn tables_align() {
        let out = table(
            &["ID", "SNI", "AGE"],
            &[
                vec!["1".into(), "a.lab".into(), "5s".into()],
                vec!["12345".into(), "-".into()],
            ],
        );
        assert_eq!(out, "ID     SNI    AGE\n1      a.lab  5s\n12345  -      -\n");
    }

    #[test]
    fn sessions_table() {
        let out = sessions(&json!([{
            "id": 7, "worker": 0, "client": "198.18.0.1:50000", "server": "198.18.0.2:443",
            "sni": "a.lab", "state": "decrypting", "action": "decrypt", "rule": null,
            "bytes_client_to_server": 2048, "bytes_server_to_client": 5_000_000, "age_secs": 125,
            "transactions": 3, "last_http": "GET shop.example/admin 403"
        }]));
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("ID  CLIENT"), "{out}");
        assert!(lines[0].ends_with("AGE    HTTP  LAST REQUEST"), "{out}");
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "7",
                "198.18.0.1:50000",
                "198.18.0.2:443",
                "a.lab",
                "decrypting",
                "decrypt",
                "-",
                "2.0K",
                "4.8M",
                "2m05s",
                "3",
                "GET",
                "shop.example/admin",
                "403"
            ]
        );
    }

    #[test]
    fn sessions_table_cuts_long_requests_and_shows_old_daemons() {
        let long = format!("GET shop.example/{} 200", "a".repeat(100));
        let out = sessions(&json!([
            {"id": 1, "transactions": 1, "last_http": long},
            {"id": 2, "transactions": 0, "last_http": null},
            {"id": 3, "last_http": "GET x.lab/\u{1b}[2J 200"}
        ]));
        let lines: Vec<&str> = out.lines().collect();
        let last = lines[1].rsplit("  ").next().unwrap();
        assert_eq!(last.chars().count(), LAST_HTTP_WIDTH, "{out}");
        assert!(
            last.starts_with("GET shop.example/aaa") && last.ends_with("a…"),
            "{out}"
        );
        assert!(lines[2].ends_with("0     -"), "{out}");
        // A daemon without HTTP inspection: no count; control characters escaped.
        assert!(lines[3].ends_with("-     GET x.lab/\\u{1b}[2J 200"), "{out}");
        assert!(!out.contains('\u{1b}'), "{out}");
    }

    #[test]
    fn session_detail_lists_http_transactions() {
        let out = session(&json!({
            "id": 281474976710657u64, "worker": 1, "live": false, "state": "ended", "decrypted": true,
            "http": {
                "protocol": "h2", "transactions": 4,
                "stopped": "http2 COMPRESSION_ERROR in HEADERS of stream 7", "ended": null,
                "recent": [
                    {"method": "GET", "host": "shop.example", "url": "/admin", "status": 403, "stream_id": 5,
                     "url_rule": "no-admin", "url_action": "block", "blocked": true},
                    {"method": "GET", "host": "shop.example", "url": "/", "status": 200, "stream_id": 1,
                     "url_rule": null, "url_action": null, "blocked": false},
                    {"method": "POST", "host": null, "url": "/login", "status": null, "stream_id": null,
                     "url_rule": "log-login", "url_action": "alert", "blocked": false},
                    {"method": "GET", "host": "shop.example", "url": "/x", "status": null, "stream_id": 3,
                     "url_rule": "no-x", "url_action": "block", "blocked": true}
                ]
            }
        }));
        let expected = "  http
      protocol      h2
      transactions  4
      stopped       http2 COMPRESSION_ERROR in HEADERS of stream 7
      ended         -
      recent
        GET shop.example/admin → 403 blocked by url rule no-admin (stream 5)
        GET shop.example/ → 200 (stream 1)
        POST /login → no response url rule log-login (alert)
        GET shop.example/x blocked by url rule no-x (stream 3)
";
        assert!(out.ends_with(expected), "{out}");
        // HTTP/1.1, and a session without http (never inspected): no section.
        let line = http_line(
            &json!({"method": "CONNECT", "host": "shop.example", "url": "shop.example:443",
            "status": 200, "stream_id": null, "url_rule": null, "url_action": null, "blocked": false}),
        );
        assert_eq!(line, "CONNECT shop.example shop.example:443 → 200");
        assert!(!session(&json!({"id": 1, "http": null})).contains("http"));
        let empty = session(&json!({"id": 1, "http": {"protocol": "unknown", "transactions": 0, "recent": []}}));
        assert!(
            empty.ends_with(
                "      transactions  0\n      stopped       -\n      ended         -\n      recent        -\n"
            ),
            "{empty}"
        );
    }

    #[test]
    fn http_events_read_like_the_brief() {
        let event = json!({
            "timestamp": "2026-12-03T13:35:00.123456+0000", "flow_id": 1, "event_type": "http",
            "src_ip": "198.18.0.1", "src_port": 40000, "dest_ip": "198.18.0.2", "dest_port": 443,
            "proto": "TCP", "app_proto": "http",
            "http": {"hostname": "shop.example", "url": "/admin", "http_user_agent": "curl/7.88",
                     "http_method": "GET", "protocol": "HTTP/1.1", "status": 403, "length": 0},
            "loupe": {"session_id": 281474976710657u64, "rule": "decrypt-all", "action": "decrypt",
                      "url_rule": {"name": "no-admin", "action": "block"}, "blocked": true, "transaction": 0}
        });
        let expected =
            "2026-12-03T13:35:00 198.18.0.1:40000 → shop.example GET /admin 403 HTTP/1.1 [blocked: no-admin]";
        assert_eq!(http_event(&event), expected);
        assert_eq!(log_record(&event), expected, "log tail renders by event type");
        // No hostname, no response, an alerting rule, an IPv6 client, an odd timestamp.
        let event = json!({
            "timestamp": "yesterday", "event_type": "http", "src_ip": "2001:db8::1", "src_port": 40000,
            "dest_ip": "198.18.0.2", "dest_port": 443,
            "http": {"url": "/\u{1b}]0;x\u{7}", "http_method": "GET", "protocol": "HTTP/2"},
            "loupe": {"url_rule": {"name": "watch", "action": "alert"}, "blocked": false}
        });
        assert_eq!(
            http_event(&event),
            "yesterday [2001:db8::1]:40000 → 198.18.0.2:443 GET /\\u{1b}]0;x\\u{7} - HTTP/2 [alert: watch]"
        );
        for odd in [
            json!(null),
            json!({"event_type": "http"}),
            json!({"event_type": "http", "http": 5, "loupe": []}),
        ] {
            http_event(&odd);
        }
    }

    #[test]
    fn cutting_and_escaping() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcd", 3), "ab…");
        assert_eq!(truncate("ééééé", 4), "ééé…");
        assert_eq!(printable("a\tb\u{1b}[0m"), "a\\tb\\u{1b}[0m");
    }

    #[test]
    fn counters_flatten_with_tables() {
        let out = generic(&json!({
            "xdp": {"steered": 123, "bridged": 4},
            "rules": [{"name": "all", "hits": 9, "hits_xdp": 0}],
            "failures": [],
            "uptime": 5
        }));
        assert!(out.contains("xdp.steered  123\n"), "{out}");
        assert!(out.contains("failures     -\n"), "{out}");
        assert!(
            out.contains("rules:\n  NAME  HITS  HITS_XDP\n  all   9     0\n"),
            "{out}"
        );
    }

    #[test]
    fn log_lines_read_like_the_brief() {
        let line = log_record(&json!({
            "time": "2026-05-01T10:00:00Z", "session_id": 42, "client_ip": "198.18.0.1", "client_port": 50000,
            "server_ip": "2001:db8::2", "server_port": 443, "sni": "self.lab", "rule": "all",
            "action": "decrypt", "outcome": "aborted",
            "error": "certificate verify failed: self signed certificate (code 18, depth 0)"
        }));
        assert_eq!(
            line,
            "2026-05-01T10:00:00Z 42 aborted decrypt 198.18.0.1:50000 -> [2001:db8::2]:443 self.lab rule=all \
             certificate verify failed: self signed certificate (code 18, depth 0)"
        );
    }

    #[test]
    fn fetch_shows_chain_verification_and_acceptance() {
        let out = trust_fetch(&json!({
            "host": "self.lab", "port": 443, "sni": "self.lab", "source": "probe", "seen": "now",
            "chain": [{"subject": "CN=self.lab", "issuer": "CN=self.lab", "not_before": "a", "not_after": "b", "sha256": "ab12"}],
            "verify": {"code": 18, "depth": 0, "reason": "self signed certificate"},
            "error": null,
            "accepted": {"sha256": "ab12", "host": "self.lab"},
            "config_version": 3
        }));
        assert!(out.contains("certificate 1\n  subject     CN=self.lab\n"), "{out}");
        assert!(
            out.contains("verification failed: self signed certificate (code 18, depth 0)\n"),
            "{out}"
        );
        assert!(
            out.ends_with("imported ab12, pinned to self.lab (config version 3)\n"),
            "{out}"
        );
    }

    #[test]
    fn session_detail_has_both_flows() {
        let out = session(&json!({
            "id": 9, "worker": 1, "live": true, "state": "decrypting",
            "c2s": {"from": "198.18.0.1:1", "to": "198.18.0.2:443", "tcp_state": "ESTABLISHED", "bytes": 10, "packets": 2},
            "s2c": {"from": "198.18.0.2:443", "to": "198.18.0.1:1", "tcp_state": "ESTABLISHED", "bytes": 20, "packets": 3},
            "cipher": "TLS_AES_128_GCM_SHA256", "decrypted": true
        }));
        assert!(out.starts_with("session 9 (live, worker 1)\n"), "{out}");
        assert!(out.contains("  c2s flow\n      from       198.18.0.1:1\n"), "{out}");
        assert!(out.contains("  s2c flow\n      from       198.18.0.2:443\n"), "{out}");
        assert!(out.contains("cipher        TLS_AES_128_GCM_SHA256"), "{out}");
        assert!(out.contains("decrypted  yes"), "{out}");
    }
}
