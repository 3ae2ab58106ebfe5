//! Minting HS256 tokens for demos and tests (`streamguard token`, `streamguard demo`).

use std::time::Duration;

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{Map, Value};

pub struct TokenSpec<'a> {
    pub secret: &'a [u8],
    pub sub: &'a str,
    pub roles: &'a [String],
    pub ttl: Duration,
    pub claims: &'a [(String, String)],
    pub iss: Option<&'a str>,
    pub aud: Option<&'a str>,
    /// Seconds since the Unix epoch.
    pub now: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the secret is empty: pass --secret with at least 32 bytes")]
    EmptySecret,
    #[error("signing failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// Signs `{sub, iat, exp, roles?, iss?, aud?, ...claims}` with HS256.
pub fn mint(spec: &TokenSpec<'_>) -> Result<String, TokenError> {
    if spec.secret.is_empty() {
        return Err(TokenError::EmptySecret);
    }
    let mut claims = Map::new();
    for (k, v) in spec.claims {
        claims.insert(k.clone(), Value::String(v.clone()));
    }
    claims.insert("sub".into(), spec.sub.into());
    claims.insert("iat".into(), spec.now.into());
    claims.insert("exp".into(), (spec.now + spec.ttl.as_secs()).into());
    if !spec.roles.is_empty() {
        claims.insert("roles".into(), spec.roles.to_vec().into());
    }
    if let Some(iss) = spec.iss {
        claims.insert("iss".into(), iss.into());
    }
    if let Some(aud) = spec.aud {
        claims.insert("aud".into(), aud.into());
    }
    Ok(encode(
        &Header::default(),
        &Value::Object(claims),
        &EncodingKey::from_secret(spec.secret),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, DecodingKey, Validation};

    #[test]
    fn minted_tokens_verify_with_the_same_secret_only() {
        let roles = vec!["admin".to_string()];
        let claims = vec![("tenant_id".to_string(), "acme".to_string())];
        let token = mint(&TokenSpec {
            secret: b"0123456789abcdef0123456789abcdef",
            sub: "alice",
            roles: &roles,
            ttl: Duration::from_secs(600),
            claims: &claims,
            iss: None,
            aud: None,
            now: 4_000_000_000,
        })
        .unwrap();
        let mut v = Validation::default();
        v.validate_exp = false;
        let data = decode::<Value>(
            &token,
            &DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
            &v,
        )
        .unwrap();
        assert_eq!(data.claims["sub"], "alice");
        assert_eq!(data.claims["exp"], 4_000_000_600u64);
        assert_eq!(data.claims["tenant_id"], "acme");
        assert_eq!(data.claims["roles"][0], "admin");
        assert!(decode::<Value>(
            &token,
            &DecodingKey::from_secret(b"another-secret-another-secret-xx"),
            &v
        )
        .is_err());
    }
}
