//! Plain HTTP/1.1 requests on loopback: to Envoy listeners (with a chosen Host) and to admin ports,
//! with reqwest ([`get`], [`get_via`]) or bare over TCP ([`raw_get`], [`parse_response`]).

use std::time::Duration;

use anyhow::Context;

/// One HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body as text.
    pub body: String,
}

impl Response {
    /// The JSON body, or an error quoting it.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("status {}, body is not JSON: {}", self.status, self.body))
    }

    /// The `name` field of an [`crate::EchoServer`] answer.
    pub fn echo_name(&self) -> anyhow::Result<String> {
        let json = self.json()?;
        json.get("name")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .with_context(|| format!("status {}, no echo name in body: {}", self.status, self.body))
    }
}

fn client() -> anyhow::Result<reqwest::Client> {
    // No pooled connections: a reused connection could reach a listener Envoy has since removed.
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .context("building HTTP client")
}

/// `GET url`.
pub async fn get(url: &str) -> anyhow::Result<Response> {
    let resp = client()?.get(url).send().await.with_context(|| format!("GET {url}"))?;
    let status = resp.status().as_u16();
    let body = resp.text().await.with_context(|| format!("reading body of GET {url}"))?;
    Ok(Response { status, body })
}

/// `GET http://127.0.0.1:<port><path>` with header `Host: <host>`, as an application would call a
/// service through a proxy without iptables interception.
pub async fn get_via(port: u16, host: &str, path: &str) -> anyhow::Result<Response> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let resp = client()?
        .get(&url)
        .header(reqwest::header::HOST, host)
        .send()
        .await
        .with_context(|| format!("GET {url} (Host: {host})"))?;
    let status = resp.status().as_u16();
    let body = resp.text().await.with_context(|| format!("reading body of GET {url}"))?;
    Ok(Response { status, body })
}

/// Sends `GET <path>` for `host` through the listener on 127.0.0.1:`port` and checks that backend
/// `want` answered with 200 (the error says what came back instead).
pub async fn expect_echo(port: u16, host: &str, path: &str, want: &str) -> anyhow::Result<Response> {
    let r = get_via(port, host, path).await?;
    let got = r.echo_name().ok();
    if r.status != 200 || got.as_deref() != Some(want) {
        anyhow::bail!(
            "GET 127.0.0.1:{port}{path} Host {host}: expected 200 from backend {want:?}, got status {} from {got:?}: {}",
            r.status,
            r.body
        );
    }
    Ok(r)
}

/// A bare HTTP/1.1 `GET` on 127.0.0.1 without a client library: status and body (chunked bodies
/// decoded), or `None` while nothing answers (for polling a port that is not up yet).
pub async fn raw_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await.ok()?.ok()?;
    parse_response(&buf)
}

/// Status and body of a raw HTTP/1.1 response (chunked bodies decoded).
pub fn parse_response(buf: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let body = if chunked { dechunk(body)? } else { body.to_string() };
    Some((status, body))
}

/// Decodes an HTTP/1.1 chunked body.
pub fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let n = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.push_str(after.get(..n)?);
        rest = after.get(n + 2..)?;
    }
}
