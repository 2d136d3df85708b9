//! What a request from a pod gave ([`Reply`]), what a scenario expects of it ([`Expect`]), and the
//! table a lab test prints (request, expected, got) before failing on any mismatch.

use std::fmt;

use serde_json::Value;

/// The outcome of one `curl` run inside a pod.
#[derive(Debug, Clone)]
pub struct Reply {
    /// curl's exit code (0 ok, 7 refused, 28 timeout, 52 empty reply, 56 connection reset, ...).
    pub exit: i32,
    /// HTTP status (0 when no response came).
    pub status: u16,
    /// Response body.
    pub body: String,
    /// curl's error text.
    pub stderr: String,
}

impl Reply {
    /// The body as JSON (an echo answer), if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }

    /// The pod that answered (echo's `pod` field; `name` for its TLS port).
    pub fn pod(&self) -> Option<String> {
        let json = self.json()?;
        json.get("pod").or_else(|| json.get("name"))?.as_str().map(str::to_string)
    }

    /// A request header the app received (lowercase name).
    pub fn app_header(&self, name: &str) -> Option<String> {
        self.json()?.get("headers")?.get(name)?.as_str().map(str::to_string)
    }

    /// The `x-forwarded-client-cert` the app received: present only when a sidecar terminated mTLS.
    pub fn xfcc(&self) -> Option<String> {
        self.app_header("x-forwarded-client-cert")
    }

    /// The `URI=` of the XFCC header's last element (the immediate client's SPIFFE identity).
    pub fn peer_identity(&self) -> Option<String> {
        let xfcc = self.xfcc()?;
        let last = xfcc.rsplit(',').next()?;
        last.split(';').find_map(|kv| kv.strip_prefix("URI=")).map(|v| v.trim_matches('"').to_string())
    }

    /// One-line summary for the report.
    pub fn summary(&self) -> String {
        if self.exit != 0 {
            let why = self.stderr.lines().last().unwrap_or_default().trim().to_string();
            return format!("curl exit {} ({why})", self.exit);
        }
        let mut s = format!("{}", self.status);
        if let Some(pod) = self.pod() {
            s.push_str(&format!(" from {pod}"));
        }
        match self.peer_identity() {
            Some(id) => s.push_str(&format!(", mTLS as {id}")),
            None if self.json().is_some_and(|j| j["tls"] == true) => s.push_str(", TLS to the app"),
            None if self.json().is_some() => s.push_str(", plaintext"),
            None => s.push_str(&format!(": {}", self.body.chars().take(80).collect::<String>().replace('\n', " "))),
        }
        s
    }
}

/// What a request should give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// 200 from the app, reached without mTLS at its sidecar (no XFCC), or directly.
    Plaintext200,
    /// 200 from the app through its sidecar over mTLS, the client identity (a SPIFFE URI) in XFCC.
    Mtls200(String),
    /// 200 from the app, whatever the transport.
    Ok200,
    /// curl fails with this exit code (56: connection reset, STRICT refusing plaintext).
    CurlExit(i32),
    /// An HTTP error status (503 when the client's sidecar cannot connect upstream).
    Status(u16),
}

impl Expect {
    /// Whether `got` is what was expected.
    pub fn matches(&self, got: &Reply) -> bool {
        match self {
            Expect::Plaintext200 => got.exit == 0 && got.status == 200 && got.pod().is_some() && got.xfcc().is_none(),
            Expect::Mtls200(id) => {
                got.exit == 0 && got.status == 200 && got.peer_identity().as_deref() == Some(id.as_str())
            }
            Expect::Ok200 => got.exit == 0 && got.status == 200 && got.pod().is_some(),
            Expect::CurlExit(code) => got.exit == *code,
            Expect::Status(code) => got.exit == 0 && got.status == *code,
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Plaintext200 => write!(f, "200, plaintext"),
            Expect::Mtls200(id) => write!(f, "200, mTLS as {id}"),
            Expect::Ok200 => write!(f, "200"),
            Expect::CurlExit(56) => write!(f, "curl exit 56 (reset)"),
            Expect::CurlExit(c) => write!(f, "curl exit {c}"),
            Expect::Status(s) => write!(f, "{s}"),
        }
    }
}

/// One line of a report.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was asked (`from -> url`, with the configuration in force).
    pub request: String,
    /// Expected outcome.
    pub expected: String,
    /// Actual outcome.
    pub got: String,
    /// Whether they match.
    pub ok: bool,
}

/// A scenario's table of requests.
#[derive(Debug, Default)]
pub struct Report {
    title: String,
    rows: Vec<Row>,
    finished: bool,
}

impl Report {
    /// An empty report.
    pub fn new(title: &str) -> Report {
        Report { title: title.to_string(), rows: Vec::new(), finished: false }
    }

    /// Adds a row.
    pub fn add(&mut self, request: impl Into<String>, expected: impl Into<String>, got: impl Into<String>, ok: bool) {
        self.rows.push(Row { request: request.into(), expected: expected.into(), got: got.into(), ok });
    }

    /// Rows so far.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// The table as text.
    pub fn render(&self) -> String {
        let w0 = self.rows.iter().map(|r| r.request.len()).max().unwrap_or(0).max(7);
        let w1 = self.rows.iter().map(|r| r.expected.len()).max().unwrap_or(0).max(8);
        let mut out = format!("\n== {} ==\n", self.title);
        out.push_str(&format!("   {:w0$} | {:w1$} | got\n", "request", "expected"));
        out.push_str(&format!("   {}-+-{}-+-{}\n", "-".repeat(w0), "-".repeat(w1), "-".repeat(20)));
        for r in &self.rows {
            let mark = if r.ok { "ok" } else { "XX" };
            out.push_str(&format!("{mark} {:w0$} | {:w1$} | {}\n", r.request, r.expected, r.got));
        }
        let failed = self.rows.iter().filter(|r| !r.ok).count();
        out.push_str(&format!("{} rows, {failed} failed\n", self.rows.len()));
        out
    }

    /// Prints the table and panics if any row failed.
    pub fn finish(&mut self) {
        self.finished = true;
        let text = self.render();
        println!("{text}");
        let failed = self.rows.iter().filter(|r| !r.ok).count();
        assert!(failed == 0, "{failed} of {} lab checks failed:{text}", self.rows.len());
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        // A test that stopped early (an error, a panic) still shows what it had checked.
        if !self.finished && !self.rows.is_empty() {
            println!("{}(stopped before the end)", self.render());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(body: Value) -> Reply {
        Reply { exit: 0, status: 200, body: body.to_string(), stderr: String::new() }
    }

    #[test]
    fn xfcc_identity_is_the_last_elements_uri() {
        let r = reply(serde_json::json!({"pod": "b", "headers": {
            "x-forwarded-client-cert": "By=spiffe://cluster.local/ns/b/sa/b;Hash=ab;Subject=\"\";URI=spiffe://cluster.local/ns/a/sa/a"
        }}));
        assert_eq!(r.peer_identity().as_deref(), Some("spiffe://cluster.local/ns/a/sa/a"));
        assert!(Expect::Mtls200("spiffe://cluster.local/ns/a/sa/a".into()).matches(&r));
        assert!(!Expect::Plaintext200.matches(&r));
        let plain = reply(serde_json::json!({"pod": "b", "headers": {}}));
        assert!(Expect::Plaintext200.matches(&plain));
        let reset = Reply { exit: 56, status: 0, body: String::new(), stderr: "curl: (56) Recv failure".into() };
        assert!(Expect::CurlExit(56).matches(&reset));
        assert!(!Expect::Ok200.matches(&reset));
    }
}
