//! JWT authentication: where a token is found, whether it is valid, and how it moves on.
//!
//! Browsers cannot set headers on `EventSource` or WebSocket handshakes, so legacy stream apps
//! take tokens from query strings, where they end up in access logs and referrers. This module
//! finds the token wherever the client put it, verifies it once at the edge with a clock the
//! caller supplies, and plans a rewrite of the request so that the upstream receives the token
//! in exactly one agreed place and nowhere else.
//!
//! - [`token`]: finding the token (header, cookie, WebSocket protocol, query) and taking it out.
//! - [`jwt`]: verifying it into an [`Identity`].
//! - [`forward`]: the [`ForwardPlan`] that moves the verified token on to the app.
//! - [`session`]: the cookie values of the session exchange.

pub mod forward;
pub mod jwt;
pub mod session;
pub mod token;

pub use forward::{forward_plan, ForwardPlan, HeaderEdit};
pub use jwt::{AuthError, AuthSetupError, Identity, KeyId, Verifier};
pub use session::{session_clear_cookie, session_set_cookie};
pub use token::{
    find_token, is_token_param, strip_query_params, strip_referer, strip_token_params,
    strip_ws_protocol, token_params, FoundToken, TokenSource,
};

/// Configs and requests the tests of every submodule share.
#[cfg(test)]
mod fixtures {
    use std::time::Duration;

    use http::{HeaderMap, HeaderValue};
    use jsonwebtoken::Algorithm;

    use crate::config::types::{
        AuthConfig, AuthMode, ForwardAs, KeySource, SameSite, SessionConfig,
    };

    pub const SECRET: &[u8] = b"a-test-secret-that-is-32-bytes!!";
    pub const NOW: u64 = 1_700_000_000;

    pub fn config(key: KeySource, algorithms: &[Algorithm]) -> AuthConfig {
        AuthConfig {
            mode: AuthMode::Required,
            algorithms: algorithms.to_vec(),
            key: Some(key),
            issuer: Some("https://issuer.test".into()),
            audience: Some("streams".into()),
            leeway: Duration::from_secs(30),
            max_token_size: 8 << 10,
            user_claim: "sub".into(),
            roles_claim: "roles".into(),
            query_params: vec!["access_token".into(), "token".into()],
            pass_authorization_schemes: Vec::new(),
            cookie: "sg_session".into(),
            forward_as: ForwardAs::Header,
            forward_name: "authorization".into(),
            close_on_expiry: true,
            websocket_protocol_prefix: None,
            session: SessionConfig {
                path: "/_streamguard/session".into(),
                ttl: Duration::from_secs(3600),
                secure: true,
                same_site: SameSite::Strict,
            },
        }
    }

    pub fn hs_config() -> AuthConfig {
        config(KeySource::Secret(SECRET.to_vec()), &[Algorithm::HS256])
    }

    pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            let name = http::HeaderName::from_bytes(name.as_bytes()).expect("test header name");
            map.append(
                name,
                HeaderValue::from_str(value).expect("test header value"),
            );
        }
        map
    }
}
