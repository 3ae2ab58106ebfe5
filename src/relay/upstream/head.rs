//! Parsing the upstream's response head and deciding how its body is framed (RFC 9112 §6.3).

use bytes::Bytes;
use http::header;
use pingora::http::{ResponseHeader, Version};

/// Most header lines accepted in one response head (Pingora's own limit is 256 too).
const MAX_HEADERS: usize = 256;

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// 101 Switching Protocols: from here on raw bytes in both directions.
    Upgraded,
    /// HEAD request, 204, 304: no body whatever the headers say.
    Empty,
    Chunked,
    Length(u64),
    /// No framing headers: the body ends when the upstream closes.
    UntilClose,
}

/// One parsed head: its length on the wire, the header, and the body framing it implies.
#[derive(Debug)]
pub struct ParsedHead {
    pub len: usize,
    pub header: ResponseHeader,
    pub framing: BodyFraming,
}

/// What the request said that changes how the response is read.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestFacts {
    pub is_head: bool,
    pub wants_upgrade: bool,
}

/// Room for the headers the proxy adds to a response head (CORS, cache and framing headers):
/// growing the map for them would cost a reallocation and a rehash on every stream setup.
const ADDED_HEADERS: usize = 8;

/// Parses one response head at the start of `buf`: `Ok(None)` if it is not complete yet.
/// A 1xx other than 101 is returned like any head; the caller skips it.
pub fn parse(buf: &[u8], req: RequestFacts) -> Result<Option<ParsedHead>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let mut config = httparse::ParserConfig::default();
    // The same leniency Pingora's client applies to responses.
    config.allow_spaces_after_header_name_in_responses(true);
    config.allow_obsolete_multiline_headers_in_responses(true);
    let len = match config.parse_response(&mut resp, buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("invalid response head: {e}")),
    };
    let code = resp.code.ok_or("response head without a status")?;
    let mut header = ResponseHeader::build(code, Some(resp.headers.len() + ADDED_HEADERS))
        .map_err(|_| format!("invalid status {code}"))?;
    header.set_version(match resp.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    });
    for h in resp.headers.iter() {
        // Copies, not slices of the read buffer: a slice would keep the whole buffer alive for
        // as long as the header lives.
        let name = Bytes::copy_from_slice(h.name.as_bytes());
        let value = pingora::http::header_value_from_raw(Bytes::copy_from_slice(h.value));
        header
            .append_header(name, value)
            .map_err(|_| format!("invalid header {:?}", h.name))?;
    }
    let framing = framing(&mut header, code, req)?;
    Ok(Some(ParsedHead {
        len,
        header,
        framing,
    }))
}

/// RFC 9112 §6.3, in its order. Removes a Content-Length that a Transfer-Encoding overrides,
/// so the head forwarded downstream does not carry both.
fn framing(
    header: &mut ResponseHeader,
    code: u16,
    req: RequestFacts,
) -> Result<BodyFraming, String> {
    if code == 101 {
        if !req.wants_upgrade {
            return Err("101 Switching Protocols to a request that asked for no upgrade".into());
        }
        return Ok(BodyFraming::Upgraded);
    }
    if req.is_head || (100..200).contains(&code) || code == 204 || code == 304 {
        return Ok(BodyFraming::Empty);
    }
    if header.headers.contains_key(header::TRANSFER_ENCODING) {
        if header.headers.contains_key(header::CONTENT_LENGTH) {
            header.remove_header(&header::CONTENT_LENGTH);
        }
        return Ok(if last_coding_is_chunked(&header.headers) {
            BodyFraming::Chunked
        } else {
            // A response whose last coding is not chunked is delimited by the close.
            BodyFraming::UntilClose
        });
    }
    match content_length(&header.headers)? {
        Some(n) => Ok(BodyFraming::Length(n)),
        None => Ok(BodyFraming::UntilClose),
    }
}

fn last_coding_is_chunked(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next())
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// All Content-Length values (repeated headers and comma lists) must be the same number
/// (RFC 9110 §8.6); anything else is a framing error, never a guess.
fn content_length(headers: &http::HeaderMap) -> Result<Option<u64>, String> {
    let mut found: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            let n = std::str::from_utf8(part)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| "invalid Content-Length".to_string())?;
            match found {
                Some(prev) if prev != n => return Err("conflicting Content-Length values".into()),
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: RequestFacts = RequestFacts {
        is_head: false,
        wants_upgrade: false,
    };

    fn parse_all(wire: &[u8], req: RequestFacts) -> ParsedHead {
        parse(wire, req)
            .expect("valid head")
            .expect("complete head")
    }

    #[test]
    fn headers_keep_their_order_case_and_duplicates() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX-Custom-ID: 7\r\nset-cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nbody";
        let head = parse_all(wire, GET);
        assert_eq!(head.len, wire.len() - 4);
        assert_eq!(head.header.status.as_u16(), 200);
        assert_eq!(head.header.version, Version::HTTP_11);
        let cookies: Vec<_> = head.header.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        // The wire form downstream keeps the upstream's spelling and order.
        let mut out = bytes::BytesMut::new();
        head.header.header_to_h1_wire(&mut out);
        assert_eq!(
            &out[..],
            &b"Content-Type: text/event-stream\r\nX-Custom-ID: 7\r\nset-cookie: a=1\r\nSet-Cookie: b=2\r\n"[..]
        );
        assert_eq!(head.framing, BodyFraming::UntilClose);
    }

    #[test]
    fn an_incomplete_head_asks_for_more_at_every_cut() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n";
        for cut in 0..wire.len() {
            assert!(
                parse(&wire[..cut], GET).expect("no error").is_none(),
                "cut {cut}"
            );
        }
        assert_eq!(parse_all(wire, GET).framing, BodyFraming::Length(3));
    }

    #[test]
    fn framing_follows_rfc_9112_section_6_3() {
        let cases: &[(&[u8], RequestFacts, BodyFraming)] = &[
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                GET,
                BodyFraming::Chunked,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, CHUNKED\r\n\r\n",
                GET,
                BodyFraming::Chunked,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                GET,
                BodyFraming::UntilClose,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n",
                GET,
                BodyFraming::Length(12),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n",
                GET,
                BodyFraming::Length(5),
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n", GET, BodyFraming::UntilClose),
            (
                b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n",
                GET,
                BodyFraming::Empty,
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
                GET,
                BodyFraming::Empty,
            ),
            (b"HTTP/1.1 100 Continue\r\n\r\n", GET, BodyFraming::Empty),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
                RequestFacts {
                    is_head: true,
                    wants_upgrade: false,
                },
                BodyFraming::Empty,
            ),
            (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
                RequestFacts {
                    is_head: false,
                    wants_upgrade: true,
                },
                BodyFraming::Upgraded,
            ),
        ];
        for (wire, req, want) in cases {
            assert_eq!(
                parse_all(wire, *req).framing,
                *want,
                "{}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn transfer_encoding_overrides_and_removes_content_length() {
        let head = parse_all(
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            GET,
        );
        assert_eq!(head.framing, BodyFraming::Chunked);
        assert!(!head.header.headers.contains_key(header::CONTENT_LENGTH));
    }

    #[test]
    fn unusable_framing_and_heads_are_errors() {
        let bad: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
            // A 101 the request never asked for.
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        ];
        for wire in bad {
            assert!(
                parse(wire, GET).is_err(),
                "{}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn http_1_0_and_folded_headers_are_understood() {
        let head = parse_all(b"HTTP/1.0 200 OK\r\nX-Long: a\r\n  b\r\n\r\n", GET);
        assert_eq!(head.header.version, Version::HTTP_10);
        let v = head.header.headers.get("x-long").unwrap().as_bytes();
        // The fold becomes spaces, never a line break forwarded downstream.
        assert!(!v.contains(&b'\r') && !v.contains(&b'\n'), "{v:?}");
        assert!(v.starts_with(b"a") && v.ends_with(b"b"));
    }
}
