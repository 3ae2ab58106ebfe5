//! An HTTP/2 request as the HTTP/1.1 app must see it.
//!
//! The app behind the proxy speaks HTTP/1.1 whatever the client spoke. Pingora converts the
//! requests it proxies itself, but a relayed stream's request is written by `relay::upstream`,
//! and two things Pingora does not do at all matter to an app on either path: an h2 request has
//! `:authority` rather than `Host`, and h2 clients may split `cookie` into several fields
//! (RFC 9113 §8.2.3), where an HTTP/1.1 app expects one `Cookie` line.

use http::{header, HeaderValue, Uri, Version};
use pingora::http::RequestHeader;
use pingora::{Error, ErrorType, Result};

/// Turns an HTTP/2 request head into its HTTP/1.1 form in place, before anything reads it: `Host`
/// from `:authority` (one with user information is refused, as in an HTTP/1 absolute-form
/// target), and an origin-form target. The version stays HTTP/2 (Pingora answers by it); the
/// stream path writes its upstream request as HTTP/1.1 itself.
pub fn to_h1_form(req: &mut RequestHeader) -> Result<()> {
    if let Some(authority) = req.uri.authority() {
        if authority.as_str().contains('@') {
            return Error::e_explain(ErrorType::InvalidHTTPHeader, "userinfo in :authority");
        }
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "invalid :authority"))?;
        req.insert_header(header::HOST, host)?;
    }
    let target = req
        .uri
        .path_and_query()
        .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
    req.set_uri(target);
    Ok(())
}

/// Joins several `Cookie` fields into one, with `"; "` (RFC 9113 §8.2.3); one field or none is
/// left as it is.
pub fn join_cookies(req: &mut RequestHeader) -> Result<()> {
    let mut fields = req.headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (fields.next(), fields.next()) else {
        return Ok(());
    };
    let mut joined = first.as_bytes().to_vec();
    for field in req.headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(field.as_bytes());
    }
    let joined = HeaderValue::from_bytes(&joined)
        .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "cookie"))?;
    req.insert_header(header::COOKIE, joined)?;
    Ok(())
}

/// The version the app gets a relayed stream's request in.
pub fn for_upstream(req: &mut RequestHeader) {
    req.set_version(Version::HTTP_11);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h2_request(uri: &str) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).expect("request");
        req.set_uri(uri.parse().expect("uri"));
        req.set_version(Version::HTTP_2);
        req
    }

    #[test]
    fn host_comes_from_the_authority_and_the_target_is_origin_form() {
        let mut req = h2_request("https://app.example.com:8443/events?x=1");
        to_h1_form(&mut req).expect("valid");
        assert_eq!(req.headers[header::HOST], "app.example.com:8443");
        assert_eq!(req.uri.to_string(), "/events?x=1");
        assert_eq!(req.raw_path(), b"/events?x=1");
        assert_eq!(req.version, Version::HTTP_2);
    }

    #[test]
    fn an_authority_with_user_information_is_refused() {
        let mut req = h2_request("https://user@app.example.com/events");
        assert!(to_h1_form(&mut req).is_err());
    }

    #[test]
    fn split_cookie_fields_are_joined_in_order() {
        let mut req = h2_request("https://a/");
        req.append_header(header::COOKIE, "a=1").expect("cookie");
        req.append_header(header::COOKIE, "b=2").expect("cookie");
        req.append_header(header::COOKIE, "c=3").expect("cookie");
        join_cookies(&mut req).expect("join");
        let all: Vec<_> = req.headers.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, ["a=1; b=2; c=3"]);
        join_cookies(&mut req).expect("one field stays");
        assert_eq!(req.headers[header::COOKIE], "a=1; b=2; c=3");
    }
}
