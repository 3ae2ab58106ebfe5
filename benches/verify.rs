//! Cost of checking one JWT on the stream-setup path (`Verifier::verify`): HS256 and RS256,
//! with the claims of a typical access token. Connection-setup throughput (bench S5) pays this
//! once per stream.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use streamguard::policy::auth::Verifier;

const SECRET: &str = "a-bench-secret-that-is-32-bytes!";
const NOW: u64 = 1_700_000_000;

fn verifier(auth: &str) -> Verifier {
    let text = format!(
        "[listen]\naddress = \"127.0.0.1:1\"\n[upstream]\naddress = \"127.0.0.1:2\"\n[auth]\n\
         mode = \"required\"\nissuer = \"https://issuer.test\"\naudience = \"streams\"\n{auth}"
    );
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"));
    let config = streamguard::config::parse_str(&text, dir, &HashMap::<String, String>::new())
        .expect("bench config is valid");
    Verifier::new(&config.auth).expect("bench key loads")
}

fn token(alg: Algorithm, key: &EncodingKey) -> String {
    let claims = json!({
        "sub": "bench-user-17",
        "iss": "https://issuer.test",
        "aud": "streams",
        "iat": NOW,
        "exp": NOW + 3600,
        "roles": ["reader"],
    });
    encode(&Header::new(alg), &claims, key).expect("token encodes")
}

fn verify(c: &mut Criterion) {
    let hs = verifier(&format!("algorithms = [\"HS256\"]\nsecret = \"{SECRET}\""));
    let hs_token = token(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    );
    c.bench_function("verify_hs256", |b| {
        b.iter(|| hs.verify(black_box(&hs_token), NOW).expect("valid"))
    });

    let rs = verifier("algorithms = [\"RS256\"]\npublic_key_file = \"rsa_public.pem\"");
    let private = include_bytes!("../tests/fixtures/rsa_private.pem");
    let rs_token = token(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(private).expect("fixture key"),
    );
    c.bench_function("verify_rs256", |b| {
        b.iter(|| rs.verify(black_box(&rs_token), NOW).expect("valid"))
    });
}

criterion_group!(benches, verify);
criterion_main!(benches);
