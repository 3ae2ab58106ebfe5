//! Just enough HTTP/1.1 for the load generator: a response head, a body framed by chunked
//! encoding, Content-Length or connection close, and the SSE lines inside it.
//!
//! Proxies re-frame bodies (nginx re-chunks, others pass the upstream's framing through), so the
//! generator cannot skip chunk framing: a chunk boundary can fall inside an event line.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// A parsed response head.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub chunked: bool,
    pub content_length: Option<u64>,
    /// Bytes of the buffer the head took (the body starts after them).
    pub len: usize,
}

/// Parses a response head once `buf` holds all of it (`Ok(None)`: read more).
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > 64 * 1024 {
            return Err("head_too_large".into());
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| "head_not_utf8".to_string())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| "bad_status_line".to_string())?;
    let mut chunked = false;
    let mut content_length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().ok();
        }
    }
    Ok(Some(Head {
        status,
        chunked,
        content_length,
        len: end + 4,
    }))
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[derive(Debug)]
enum Chunk {
    /// Reading the hex size line; `ext` once a `;` extension started.
    Size {
        value: u64,
        digits: usize,
        ext: bool,
    },
    Data(u64),
    /// Skipping the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one; `line` = bytes on this line.
    Trailer {
        line: usize,
    },
}

#[derive(Debug)]
enum Framing {
    Chunked(Chunk),
    Length(u64),
    Close,
    Done,
}

/// Incremental body decoder.
#[derive(Debug)]
pub struct BodyDecoder {
    framing: Framing,
}

impl BodyDecoder {
    pub fn new(head: &Head) -> Self {
        let framing = if head.chunked {
            Framing::Chunked(Chunk::Size {
                value: 0,
                digits: 0,
                ext: false,
            })
        } else if let Some(n) = head.content_length {
            if n == 0 {
                Framing::Done
            } else {
                Framing::Length(n)
            }
        } else {
            Framing::Close
        };
        BodyDecoder { framing }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.framing, Framing::Done)
    }

    /// Appends the body bytes in `input` to `out`; `Ok(true)` once the body has ended.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<bool, String> {
        loop {
            match &mut self.framing {
                Framing::Done => return Ok(true),
                Framing::Close => {
                    out.extend_from_slice(input);
                    return Ok(false);
                }
                Framing::Length(rem) => {
                    let n = (*rem).min(input.len() as u64) as usize;
                    out.extend_from_slice(&input[..n]);
                    *rem -= n as u64;
                    if *rem == 0 {
                        self.framing = Framing::Done;
                        return Ok(true);
                    }
                    return Ok(false);
                }
                Framing::Chunked(state) => {
                    if input.is_empty() {
                        return Ok(false);
                    }
                    match state {
                        Chunk::Size { value, digits, ext } => {
                            let b = input[0];
                            input = &input[1..];
                            match b {
                                b'\n' => {
                                    if *digits == 0 {
                                        return Err("bad_chunk_size".into());
                                    }
                                    *state = if *value == 0 {
                                        Chunk::Trailer { line: 0 }
                                    } else {
                                        Chunk::Data(*value)
                                    };
                                }
                                b'\r' => {}
                                b';' => *ext = true,
                                _ if *ext => {}
                                _ => {
                                    let d = (b as char)
                                        .to_digit(16)
                                        .ok_or_else(|| "bad_chunk_size".to_string())?;
                                    *value = value
                                        .checked_mul(16)
                                        .and_then(|v| v.checked_add(d as u64))
                                        .ok_or_else(|| "bad_chunk_size".to_string())?;
                                    *digits += 1;
                                }
                            }
                        }
                        Chunk::Data(rem) => {
                            let n = (*rem).min(input.len() as u64) as usize;
                            out.extend_from_slice(&input[..n]);
                            input = &input[n..];
                            *rem -= n as u64;
                            if *rem == 0 {
                                *state = Chunk::DataEnd;
                            }
                        }
                        Chunk::DataEnd => {
                            let b = input[0];
                            input = &input[1..];
                            if b == b'\n' {
                                *state = Chunk::Size {
                                    value: 0,
                                    digits: 0,
                                    ext: false,
                                };
                            }
                        }
                        Chunk::Trailer { line } => {
                            let b = input[0];
                            input = &input[1..];
                            match b {
                                b'\n' if *line == 0 => {
                                    self.framing = Framing::Done;
                                    return Ok(true);
                                }
                                b'\n' => *line = 0,
                                b'\r' => {}
                                _ => *line += 1,
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Splits a byte stream into lines (without `\n` and a trailing `\r`).
#[derive(Debug, Default)]
pub struct LineScanner {
    partial: Vec<u8>,
}

impl LineScanner {
    pub fn feed(&mut self, mut data: &[u8], mut line: impl FnMut(&[u8])) {
        while let Some(i) = data.iter().position(|&b| b == b'\n') {
            if self.partial.is_empty() {
                line(trim_cr(&data[..i]));
            } else {
                self.partial.extend_from_slice(&data[..i]);
                let whole = std::mem::take(&mut self.partial);
                line(trim_cr(&whole));
                self.partial = whole;
                self.partial.clear();
            }
            data = &data[i + 1..];
        }
        self.partial.extend_from_slice(data);
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// What one SSE line is, for the generator's counters.
#[derive(Debug, PartialEq, Eq)]
pub enum SseLine {
    /// `data: <seq> <ns>`: a bench event.
    Event {
        seq: u64,
        ns: u64,
    },
    /// `:...`: a comment (the proxy's heartbeats).
    Comment,
    Other,
}

pub fn classify(line: &[u8]) -> SseLine {
    if line.first() == Some(&b':') {
        return SseLine::Comment;
    }
    let Some(rest) = line.strip_prefix(b"data:") else {
        return SseLine::Other;
    };
    let text = std::str::from_utf8(rest).unwrap_or("");
    let mut parts = text.split_ascii_whitespace();
    match (
        parts.next().and_then(|s| s.parse().ok()),
        parts.next().and_then(|s| s.parse().ok()),
    ) {
        (Some(seq), Some(ns)) => SseLine::Event { seq, ns },
        _ => SseLine::Other,
    }
}

/// `GET path` on the bench upstream's control port (rates, stall counters): the body of a 200.
pub async fn control_get(control: &str, path: &str) -> Result<String, String> {
    let addr: SocketAddr = control
        .parse()
        .map_err(|_| format!("bad --control {control}"))?;
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {control}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    let _ = timeout(Duration::from_secs(5), s.read_to_end(&mut resp)).await;
    let text = String::from_utf8_lossy(&resp);
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => Err(text.lines().next().unwrap_or("no answer").to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Head {
        parse_head(raw.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn chunked_body_split_anywhere_decodes_whole() {
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        let wire =
            b"b\r\ndata: 1 2\n\n\r\n3;x=y\r\ndat\r\nB\r\na: 3 4\n\n: p\r\n0\r\nX-T: 1\r\n\r\n";
        for split in 1..wire.len() {
            let mut d = BodyDecoder::new(&h);
            let mut out = Vec::new();
            let a = d.feed(&wire[..split], &mut out).unwrap();
            let b = d.feed(&wire[split..], &mut out).unwrap();
            assert!(!a || split == wire.len());
            assert!(b, "split at {split}");
            assert_eq!(out, b"data: 1 2\n\ndata: 3 4\n\n: p");
        }
    }

    #[test]
    fn lines_and_events() {
        let mut s = LineScanner::default();
        let mut got = Vec::new();
        s.feed(b"data: 5 10", |l| got.push(classify(l)));
        s.feed(b"0\r\n\n: ping\n", |l| got.push(classify(l)));
        assert_eq!(
            got,
            vec![
                SseLine::Event { seq: 5, ns: 100 },
                SseLine::Other,
                SseLine::Comment
            ]
        );
    }

    #[test]
    fn content_length_body_ends() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n");
        let mut d = BodyDecoder::new(&h);
        let mut out = Vec::new();
        assert!(!d.feed(b"ab", &mut out).unwrap());
        assert!(d.feed(b"cdEXTRA", &mut out).unwrap());
        assert_eq!(out, b"abcd");
    }
}
