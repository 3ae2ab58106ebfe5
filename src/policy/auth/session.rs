//! The `Set-Cookie` values of the session exchange (`POST`/`DELETE auth.session.path`), which
//! lets browsers open streams with no token in any URL.

use crate::config::types::{AuthConfig, SameSite};

/// A `Set-Cookie` value that stores `token` as the session cookie, expiring with the token at
/// the latest.
pub fn session_set_cookie(
    cfg: &AuthConfig,
    token: &str,
    token_exp_unix: u64,
    now_unix: u64,
) -> String {
    let max_age = cfg
        .session
        .ttl
        .as_secs()
        .min(token_exp_unix.saturating_sub(now_unix));
    session_cookie(cfg, token, max_age)
}

/// A `Set-Cookie` value that deletes the session cookie.
pub fn session_clear_cookie(cfg: &AuthConfig) -> String {
    session_cookie(cfg, "", 0)
}

fn session_cookie(cfg: &AuthConfig, value: &str, max_age: u64) -> String {
    let secure = if cfg.session.secure { "; Secure" } else { "" };
    let same_site = match cfg.session.same_site {
        SameSite::Strict => "Strict",
        SameSite::Lax => "Lax",
        SameSite::None => "None",
    };
    format!(
        "{}={value}; HttpOnly{secure}; SameSite={same_site}; Path=/; Max-Age={max_age}",
        cfg.cookie
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::types::SessionConfig;
    use crate::policy::auth::fixtures::{hs_config, NOW};

    #[test]
    fn session_cookie_lifetime_and_attributes() {
        let cfg = hs_config();
        assert_eq!(
            session_set_cookie(&cfg, "T", NOW + 7200, NOW),
            "sg_session=T; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=3600"
        );
        assert!(session_set_cookie(&cfg, "T", NOW + 90, NOW).ends_with("; Max-Age=90"));
        assert!(session_set_cookie(&cfg, "T", NOW - 5, NOW).ends_with("; Max-Age=0"));

        let lax = AuthConfig {
            session: SessionConfig {
                secure: false,
                same_site: SameSite::Lax,
                ..cfg.session.clone()
            },
            ..cfg
        };
        assert_eq!(
            session_clear_cookie(&lax),
            "sg_session=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0"
        );
    }
}
