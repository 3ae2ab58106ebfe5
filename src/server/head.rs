//! The request head, read and judged before Pingora sees it.
//!
//! Pingora reads a head into a buffer that may grow to 1 MiB, with a read timeout that restarts
//! on every byte, and parses it again from the start after every read: a client that never
//! finishes its head holds a megabyte for as long as it keeps dribbling. So the connection loop
//! (`accept`) reads heads itself, into a buffer that never grows past
//! `listen.max_request_head`, under a deadline of its own, and hands Pingora only a complete
//! head that passed the checks here; Pingora then parses it without reading the socket.
//!
//! [`HeadReader`] is fed the growing buffer after every read. It decides with `httparse`, the
//! parser Pingora uses, configured alike, so the two agree on where a head ends and whether it
//! is valid. It parses only when the new bytes end a line: a head dribbled byte by byte costs a
//! parse per line, not per byte, and lines are bounded (at most [`MAX_HEADERS`] header lines,
//! [`MAX_LEADING_EMPTY_LINES`] empty ones before the request line).
//!
//! A complete head is then held to what the proxy forwards: an origin-form target (`/...`), an
//! absolute-form one (`http(s)://authority/...`) or `*` for `OPTIONS`; no `CONNECT`, `TRACE` or
//! `TRACK`; one `Host`; unambiguous body framing. Pingora would answer some of these with a 400
//! of its own (an empty body, `Server: Pingora`) and pass others on, like a target without a
//! leading slash, which Pingora routes as `/` while its raw bytes go to the app.

use http::{Method, Version};

use crate::policy::target;
use crate::policy::Rejection;

/// Header lines a head may carry (hyper's default); more is answered as too large.
pub const MAX_HEADERS: usize = 100;

/// Empty lines tolerated before the request line (RFC 9112 §2.2 asks servers to ignore at least
/// one); more would make a dribbled head cost a parse per byte again.
pub const MAX_LEADING_EMPTY_LINES: usize = 2;

/// What the bytes received so far amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The head is not complete yet; read more (within the cap and the deadline).
    NeedMore,
    /// The head is complete and acceptable; it is the first `len` bytes, and any bytes after it
    /// belong to the body.
    Complete(usize),
    /// The head is refused; answer and close.
    Refused(HeadRefusal),
}

/// Why a head is refused. The reasons are fixed words for the security log: nothing of the
/// request itself is ever quoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadRefusal {
    #[error(
        "the request head is larger than listen.max_request_head; raise it if legitimate \
         clients send heads this large"
    )]
    TooLarge,
    #[error("the request head is not valid HTTP/1.x ({0}); the client must send one that is")]
    Malformed(&'static str),
    #[error(
        "the request target is not one the proxy forwards ({0}); use /path or http(s)://host/path"
    )]
    Target(&'static str),
    #[error("{0} requests are not forwarded; no app behind the proxy needs them")]
    Method(&'static str),
    #[error(
        "the request body's framing is ambiguous ({0}); send one Content-Length or \
         Transfer-Encoding: chunked, not both"
    )]
    Framing(&'static str),
}

impl HeadRefusal {
    /// The fixed answer this refusal gets.
    pub fn rejection(self) -> Rejection {
        match self {
            HeadRefusal::TooLarge => Rejection::HeadTooLarge,
            HeadRefusal::Method(_) => Rejection::MethodNotProxied,
            HeadRefusal::Malformed(_) | HeadRefusal::Target(_) | HeadRefusal::Framing(_) => {
                Rejection::BadRequest
            }
        }
    }

    /// The security log's `reason`: a fixed word, never request bytes.
    pub fn reason(self) -> &'static str {
        match self {
            HeadRefusal::TooLarge => "too_large",
            HeadRefusal::Malformed(why)
            | HeadRefusal::Target(why)
            | HeadRefusal::Method(why)
            | HeadRefusal::Framing(why) => why,
        }
    }
}

/// Judges one request head as its bytes arrive.
#[derive(Debug, Clone)]
pub struct HeadReader {
    max: usize,
    /// How much of the buffer earlier calls have seen.
    scanned: usize,
}

impl HeadReader {
    /// A reader for heads of at most `max` bytes.
    pub fn new(max: usize) -> HeadReader {
        HeadReader { max, scanned: 0 }
    }

    /// Judges `buf`, everything received so far: earlier calls saw a prefix of it. The caller
    /// never lets `buf` grow past `max`; a head still incomplete at `max` bytes is too large.
    pub fn advance(&mut self, buf: &[u8]) -> Progress {
        if leading_empty_lines(buf) > MAX_LEADING_EMPTY_LINES {
            return Progress::Refused(HeadRefusal::Malformed("leading_empty_lines"));
        }
        let new_line = buf
            .get(self.scanned..)
            .is_some_and(|new| memchr::memchr(b'\n', new).is_some());
        self.scanned = buf.len();
        let full = buf.len() >= self.max;
        if new_line || full {
            match judge(buf) {
                Some(Progress::Complete(len)) if len > self.max => {
                    return Progress::Refused(HeadRefusal::TooLarge)
                }
                Some(progress) => return progress,
                None => {}
            }
        }
        if full {
            Progress::Refused(HeadRefusal::TooLarge)
        } else {
            Progress::NeedMore
        }
    }
}

/// Empty lines (`\r\n` or `\n`) before anything else in `buf`.
fn leading_empty_lines(buf: &[u8]) -> usize {
    let mut rest = buf;
    let mut lines = 0;
    loop {
        rest = match rest {
            [b'\r', b'\n', more @ ..] | [b'\n', more @ ..] => more,
            _ => return lines,
        };
        lines += 1;
    }
}

/// Parses `buf`: `None` while the head is incomplete.
fn judge(buf: &[u8]) -> Option<Progress> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let refused = |why| Some(Progress::Refused(why));
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => None,
        Ok(httparse::Status::Complete(len)) => Some(match admit(&req) {
            Ok(()) => Progress::Complete(len),
            Err(why) => Progress::Refused(why),
        }),
        Err(httparse::Error::TooManyHeaders) => refused(HeadRefusal::TooLarge),
        Err(e) => refused(HeadRefusal::Malformed(match e {
            httparse::Error::HeaderName => "header_name",
            httparse::Error::HeaderValue => "header_value",
            httparse::Error::NewLine => "new_line",
            httparse::Error::Version => "version",
            _ => "token",
        })),
    }
}

/// The checks on a complete, well-formed head.
fn admit(req: &httparse::Request<'_, '_>) -> Result<(), HeadRefusal> {
    let method = req.method.unwrap_or_default();
    // Methods are case-sensitive, but an app may not treat them so: `trace` is refused too.
    if method.eq_ignore_ascii_case("CONNECT") {
        return Err(HeadRefusal::Method("connect"));
    }
    if method.eq_ignore_ascii_case("TRACE") || method.eq_ignore_ascii_case("TRACK") {
        return Err(HeadRefusal::Method("trace"));
    }
    // httparse accepted the method as a token, which `Method` takes as it is.
    let method =
        Method::from_bytes(method.as_bytes()).map_err(|_| HeadRefusal::Malformed("token"))?;
    let parsed = target::parse(&method, req.path.unwrap_or_default().as_bytes())
        .map_err(|e| HeadRefusal::Target(e.reason()))?;
    let hosts: Vec<&[u8]> = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| h.value)
        .collect();
    let version = req.version.unwrap_or(1);
    let http_version = if version == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    framing(req.headers, version)?;
    target::check_host(http_version, &hosts, &parsed).map_err(|e| HeadRefusal::Target(e.reason()))
}

/// One way to tell where the body ends, which every hop reads alike (RFC 9112 §6): a single
/// `chunked` coding, or consistent `Content-Length` values, never both.
fn framing(headers: &[httparse::Header<'_>], version: u8) -> Result<(), HeadRefusal> {
    let refuse = |why| Err(HeadRefusal::Framing(why));
    let mut codings = 0usize;
    let mut only_chunked = true;
    let mut length: Option<u64> = None;
    let mut length_ok = true;
    for header in headers {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            for coding in header.value.split(|b| *b == b',') {
                codings += 1;
                only_chunked &= coding.trim_ascii().eq_ignore_ascii_case(b"chunked");
            }
        } else if header.name.eq_ignore_ascii_case("content-length") {
            for value in header.value.split(|b| *b == b',') {
                match (digits(value.trim_ascii()), length) {
                    (Some(n), None) => length = Some(n),
                    (Some(n), Some(first)) if n == first => {}
                    _ => length_ok = false,
                }
            }
        }
    }
    if codings > 0 {
        if length.is_some() || !length_ok {
            return refuse("te_and_cl");
        }
        if version == 0 {
            return refuse("te_http10");
        }
        if codings > 1 || !only_chunked {
            return refuse("te_not_chunked");
        }
    } else if !length_ok {
        return refuse("content_length");
    }
    Ok(())
}

/// A `Content-Length` value: ASCII digits only, no sign, within `u64`.
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, b| {
        let digit = b.is_ascii_digit().then(|| u64::from(b - b'0'))?;
        n.checked_mul(10)?.checked_add(digit)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 32 * 1024;

    fn whole(input: &[u8]) -> Progress {
        HeadReader::new(MAX).advance(&input[..input.len().min(MAX)])
    }

    /// Feeds `input` in pieces that end at `cuts`, as the connection loop would: the buffer
    /// never grows past the cap, and reading stops at the first answer.
    fn split(input: &[u8], cuts: &[usize], max: usize) -> Progress {
        let mut reader = HeadReader::new(max);
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        ends.push(input.len());
        ends.sort_unstable();
        let mut progress = Progress::NeedMore;
        for end in ends {
            progress = reader.advance(&input[..end.min(max)]);
            if progress != Progress::NeedMore {
                break;
            }
        }
        progress
    }

    fn head(lines: &[&str]) -> Vec<u8> {
        let mut out = lines.join("\r\n").into_bytes();
        out.extend_from_slice(b"\r\n\r\n");
        out
    }

    #[test]
    fn accepted_heads() {
        let cases: &[&[&str]] = &[
            &["GET / HTTP/1.1", "Host: a"],
            &[
                "GET /events?x=1&y=%2F HTTP/1.1",
                "Host: a",
                "Accept: text/event-stream",
            ],
            &["OPTIONS * HTTP/1.1", "Host: a"],
            &["GET http://a.example/x?y HTTP/1.1", "Host: a.example"],
            &[
                "GET https://a.example:8443 HTTP/1.1",
                "Host: a.example:8443",
            ],
            &["GET http://a.example?q=1 HTTP/1.1", "Host: a.example"],
            &["POST /x HTTP/1.1", "Host: a", "Content-Length: 5"],
            &[
                "POST /x HTTP/1.1",
                "Host: a",
                "Content-Length: 5, 5",
                "content-length: 5",
            ],
            &[
                "POST /x HTTP/1.1",
                "Host: a",
                "Transfer-Encoding:  Chunked ",
            ],
            &["POST /x HTTP/1.0", "Content-Length: 0"],
            &["GET /a{b}|c^d\"e HTTP/1.1", "Host: a"],
        ];
        for lines in cases {
            let input = head(lines);
            assert_eq!(whole(&input), Progress::Complete(input.len()), "{lines:?}");
        }
        let with_body = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET";
        assert_eq!(whole(with_body), Progress::Complete(with_body.len() - 6));
        let leading = b"\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(whole(leading), Progress::Complete(leading.len()));
    }

    #[test]
    fn refused_heads() {
        use HeadRefusal::*;
        let cases: &[(&[&str], HeadRefusal)] = &[
            (
                &["GET api/v1/events/admin HTTP/1.1", "Host: a"],
                Target("not_origin_form"),
            ),
            (&["GET ftp://a/x HTTP/1.1"], Target("scheme")),
            (&["GET ws://a/x HTTP/1.1"], Target("scheme")),
            (&["GET http:/a/x HTTP/1.1"], Target("not_origin_form")),
            (&["GET http://a\\b/x HTTP/1.1"], Target("not_origin_form")),
            (&["GET http://u@a/x HTTP/1.1"], Target("userinfo")),
            (
                &["GET http://a/x HTTP/1.1", "Host: b"],
                Target("host_mismatch"),
            ),
            (&["GET http://a b/ HTTP/1.1"], Malformed("version")),
            (&["GET /x#frag HTTP/1.1"], Target("fragment")),
            (&["GET /caf\u{e9} HTTP/1.1"], Target("non_ascii")),
            (&["GET * HTTP/1.1"], Target("asterisk")),
            (&["GET /a<b HTTP/1.1"], Target("invalid")),
            (&["GET /a b HTTP/1.1"], Malformed("version")),
            (
                &["CONNECT a:443 HTTP/1.1", "Host: a:443"],
                Method("connect"),
            ),
            (&["TRACE / HTTP/1.1"], Method("trace")),
            (&["track / HTTP/1.1"], Method("trace")),
            (
                &["GET / HTTP/1.1", "Host: a", "Host: b"],
                Target("duplicate_host"),
            ),
            (&["GET / HTTP/1.1", "Host: u@a"], Target("host_userinfo")),
            (&["GET / HTTP/1.1", "Bad Name: x"], Malformed("header_name")),
            (&["GET / HTTP/2.0"], Malformed("version")),
            (&["G(T / HTTP/1.1"], Malformed("token")),
            (
                &["POST / HTTP/1.1", "Content-Length: 5", "Content-Length: 6"],
                Framing("content_length"),
            ),
            (
                &["POST / HTTP/1.1", "Content-Length: 5, 6"],
                Framing("content_length"),
            ),
            (
                &["POST / HTTP/1.1", "Content-Length: +5"],
                Framing("content_length"),
            ),
            (
                &["POST / HTTP/1.1", "Content-Length: "],
                Framing("content_length"),
            ),
            (
                &["POST / HTTP/1.1", "Content-Length: 99999999999999999999"],
                Framing("content_length"),
            ),
            (
                &[
                    "POST / HTTP/1.1",
                    "Transfer-Encoding: chunked",
                    "Content-Length: 5",
                ],
                Framing("te_and_cl"),
            ),
            (
                &[
                    "POST / HTTP/1.1",
                    "Content-Length: x",
                    "Transfer-Encoding: chunked",
                ],
                Framing("te_and_cl"),
            ),
            (
                &["POST / HTTP/1.0", "Transfer-Encoding: chunked"],
                Framing("te_http10"),
            ),
            (
                &["POST / HTTP/1.1", "Transfer-Encoding: gzip"],
                Framing("te_not_chunked"),
            ),
            (
                &["POST / HTTP/1.1", "Transfer-Encoding: gzip, chunked"],
                Framing("te_not_chunked"),
            ),
            (
                &[
                    "POST / HTTP/1.1",
                    "Transfer-Encoding: chunked",
                    "Transfer-Encoding: chunked",
                ],
                Framing("te_not_chunked"),
            ),
            (
                &["POST / HTTP/1.1", "Transfer-Encoding: chunked, identity"],
                Framing("te_not_chunked"),
            ),
        ];
        for (lines, why) in cases {
            assert_eq!(whole(&head(lines)), Progress::Refused(*why), "{lines:?}");
        }
        assert_eq!(
            whole(b"\r\n\r\n\r\nGET / HTTP/1.1\r\n\r\n"),
            Progress::Refused(Malformed("leading_empty_lines"))
        );
    }

    #[test]
    fn answers_map_to_fixed_refusals() {
        use HeadRefusal::*;
        let cases = [
            (TooLarge, 431),
            (Malformed("token"), 400),
            (Target("fragment"), 400),
            (Framing("te_and_cl"), 400),
            (Method("trace"), 405),
        ];
        for (why, status) in cases {
            assert_eq!(why.rejection().status(), status, "{why:?}");
            assert!(why
                .reason()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
    }

    #[test]
    fn a_head_over_the_cap_is_too_large_whatever_the_pieces() {
        let mut big = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        big.resize(MAX + 100, b'a');
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(whole(&big), Progress::Refused(HeadRefusal::TooLarge));
        // No line end until the cap: a single parse, at the cap.
        assert_eq!(
            split(&big, &[10, 1000, 20_000], MAX),
            Progress::Refused(HeadRefusal::TooLarge)
        );
        // Exactly at the cap is still fine.
        let mut exact = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: ".to_vec();
        exact.resize(MAX - 4, b'a');
        exact.extend_from_slice(b"\r\n\r\n");
        assert_eq!(whole(&exact), Progress::Complete(MAX));
        let headers: Vec<String> = (0..=MAX_HEADERS)
            .map(|i| match i {
                0 => "Host: a".to_owned(),
                _ => format!("X-{i}: v"),
            })
            .collect();
        let mut lines = vec!["GET / HTTP/1.1"];
        lines.extend(headers.iter().map(String::as_str));
        assert_eq!(
            whole(&head(&lines)),
            Progress::Refused(HeadRefusal::TooLarge)
        );
        assert_eq!(
            whole(&head(&lines[..MAX_HEADERS + 1])),
            Progress::Complete(head(&lines[..MAX_HEADERS + 1]).len())
        );
    }

    /// Bytes are parsed once a line ends: a bad header name is only seen with its line end, so
    /// a byte-by-byte dribble costs one parse per line.
    #[test]
    fn the_reader_parses_when_a_line_ends() {
        let mut reader = HeadReader::new(MAX);
        let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
        assert_eq!(reader.advance(&buf), Progress::NeedMore);
        buf.extend_from_slice(b"Bad Name: x");
        assert_eq!(
            reader.advance(&buf),
            Progress::NeedMore,
            "no line end, no parse"
        );
        buf.extend_from_slice(b"\r\n");
        assert_eq!(
            reader.advance(&buf),
            Progress::Refused(HeadRefusal::Malformed("header_name"))
        );
    }

    #[test]
    fn an_unfinished_head_needs_more() {
        for input in [
            &b""[..],
            b"GET / HT",
            b"GET / HTTP/1.1\r\nHost: a\r\n",
            b"\r\n",
        ] {
            assert_eq!(whole(input), Progress::NeedMore, "{input:?}");
        }
    }

    /// The bytes of a head the proptests build: a request line, headers, maybe a body.
    fn arbitrary_head() -> impl Strategy<Value = Vec<u8>> {
        let method = prop_oneof![
            8 => Just("GET"), 4 => Just("POST"), 1 => Just("OPTIONS"), 1 => Just("TRACE"),
            1 => Just("CONNECT"), 1 => Just("G T"),
        ];
        let target = prop_oneof![
            8 => "/[a-z0-9/?=&%.]{0,40}",
            1 => "[a-z]{1,10}/[a-z]{0,10}",
            2 => "https?://[a-z]{1,8}(:[0-9]{2,4})?/[a-z]{0,8}",
            1 => Just("*".to_owned()),
            1 => "/[!-~]{0,20}",
        ];
        let header = prop_oneof![
            8 => "[A-Za-z-]{1,12}: [!-~]{0,30}",
            2 => Just("Host: a".to_owned()),
            2 => "Content-Length: [0-9, ]{1,6}",
            2 => Just("Transfer-Encoding: chunked".to_owned()),
            1 => "[ -~]{0,20}",
        ];
        let version =
            prop_oneof![8 => Just("HTTP/1.1"), 2 => Just("HTTP/1.0"), 1 => Just("HTTP/1.2")];
        (
            method,
            target,
            version,
            prop::collection::vec(header, 0..8),
            "[ -~]{0,20}",
        )
            .prop_map(|(method, target, version, headers, body)| {
                let mut text = format!("{method} {target} {version}\r\n");
                for header in headers {
                    text.push_str(&header);
                    text.push_str("\r\n");
                }
                text.push_str("\r\n");
                text.push_str(&body);
                text.into_bytes()
            })
    }

    proptest! {
        /// However the bytes arrive, a head whose end has arrived gets the answer it gets in
        /// one piece: complete at the same length, or refused for the same reason.
        #[test]
        fn any_split_gives_the_whole_answer(
            input in arbitrary_head(),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            prop_assert_eq!(split(&input, &cuts, MAX), whole(&input));
        }

        /// Arbitrary bytes never panic; a head taken as complete is one httparse takes as
        /// complete at the same length, within the cap.
        #[test]
        fn arbitrary_bytes_in_arbitrary_pieces(
            input in prop::collection::vec(any::<u8>(), 0..400),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
            max in 16usize..300,
        ) {
            if let Progress::Complete(len) = split(&input, &cuts, max) {
                prop_assert!(len <= max);
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let parsed = httparse::Request::new(&mut headers).parse(&input[..max.min(input.len())]);
                prop_assert_eq!(parsed.ok(), Some(httparse::Status::Complete(len)));
            }
        }

        /// A head dribbled a byte at a time gets the answer it gets in one piece.
        #[test]
        fn dribbled_heads_get_the_whole_answer(input in arbitrary_head()) {
            let cuts: Vec<usize> = (0..input.len()).collect();
            prop_assert_eq!(split(&input, &cuts, MAX), whole(&input));
        }
    }
}
