//! Table-driven checks of every token rule, with tokens minted by the
//! same crate (and `alg: none` written by hand, as an attacker would).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const OLD: &str = "an older secret that is still listed";
/// 2030-01-01 in Unix milliseconds: the "now" of these tests.
const NOW: u64 = 1_893_456_000_000;

fn policy(secrets: &[&str], leeway_ms: u64) -> Policy {
    let auth = AuthConfig {
        subscribe: SubscribeMode::Token,
        token_secrets: secrets.iter().map(|s| s.to_string()).collect(),
        token_leeway_ms: leeway_ms,
        allowed_origins: vec!["https://app.example".into()],
        ..AuthConfig::default()
    };
    Policy::from_config(&auth)
}

fn mint(alg: Algorithm, secret: &str, claims: &Value) -> String {
    encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn claims(exp_s: u64) -> Value {
    json!({"sub": "user-1", "exp": exp_s, "channels": ["news", "trades:*"]})
}

/// A token whose header says `alg: none`, with an empty signature.
fn unsigned(claims: &Value) -> String {
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.",
        part(&json!({"alg": "none", "typ": "JWT"})),
        part(claims)
    )
}

#[test]
fn every_rule() {
    let p = policy(&[SECRET], 0);
    let soon = NOW / 1000 + 60;
    let cases: Vec<(&str, String, Result<(), TokenError>)> = vec![
        (
            "valid",
            mint(Algorithm::HS256, SECRET, &claims(soon)),
            Ok(()),
        ),
        (
            "expired",
            mint(Algorithm::HS256, SECRET, &claims(NOW / 1000 - 1)),
            Err(TokenError::Expired),
        ),
        (
            "expires this very millisecond",
            mint(Algorithm::HS256, SECRET, &claims(NOW / 1000)),
            Err(TokenError::Expired),
        ),
        (
            "wrong signature",
            mint(
                Algorithm::HS256,
                "another secret of thirty-two bytes",
                &claims(soon),
            ),
            Err(TokenError::Signature),
        ),
        (
            "alg none",
            unsigned(&claims(soon)),
            Err(TokenError::Algorithm(None)),
        ),
        (
            "another HMAC alg with the right secret",
            mint(Algorithm::HS384, SECRET, &claims(soon)),
            Err(TokenError::Algorithm(Some("HS384".into()))),
        ),
        (
            "not yet valid",
            mint(
                Algorithm::HS256,
                SECRET,
                &json!({"sub": "u", "exp": soon, "nbf": soon - 1, "channels": []}),
            ),
            Err(TokenError::NotYetValid),
        ),
        (
            "garbage",
            "not.a.token".into(),
            Err(TokenError::Malformed(
                "not a compact JWS (header.payload.signature)".into(),
            )),
        ),
        (
            "two parts",
            "abc.def".into(),
            Err(TokenError::Malformed(
                "not a compact JWS (header.payload.signature)".into(),
            )),
        ),
    ];
    for (what, token, want) in cases {
        let got = p.verify(&token, NOW).map(|_| ());
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn claims_out_of_shape_name_the_claim() {
    let p = policy(&[SECRET], 0);
    let exp = NOW / 1000 + 60;
    let cases = [
        (json!({"sub": "u", "exp": exp}), "channels"),
        (json!({"exp": exp, "channels": []}), "sub"),
        (json!({"sub": "u", "channels": []}), "exp"),
        (
            json!({"sub": "", "exp": exp, "channels": []}),
            "sub is 1 to",
        ),
        (
            json!({"sub": "u", "exp": exp, "channels": ["a*b"]}),
            "channels[0]",
        ),
        (
            json!({"sub": "u", "exp": exp, "channels": ["ok", "bad name"]}),
            "channels[1]",
        ),
        (json!({"sub": "u", "exp": "soon", "channels": []}), "exp"),
    ];
    for (c, needle) in cases {
        let err = p
            .verify(&mint(Algorithm::HS256, SECRET, &c), NOW)
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, TokenError::Claims(_)), "{c}: {err:?}");
        assert!(text.contains(needle), "{c}: {text}");
    }
    let many: Vec<String> = (0..=MAX_TOKEN_CHANNELS).map(|i| format!("c{i}")).collect();
    let c = json!({"sub": "u", "exp": exp, "channels": many});
    assert!(p.verify(&mint(Algorithm::HS256, SECRET, &c), NOW).is_err());
    let long = "x".repeat(MAX_TOKEN_BYTES + 1);
    assert!(matches!(
        p.verify(&long, NOW),
        Err(TokenError::Malformed(_))
    ));
}

#[test]
fn the_leeway_forgives_skew_on_exp_and_nbf() {
    let p = policy(&[SECRET], 5_000);
    let now_s = NOW / 1000;
    let just_expired = mint(Algorithm::HS256, SECRET, &claims(now_s - 2));
    let grant = p.verify(&just_expired, NOW).unwrap();
    assert_eq!(grant.expires_ms, (now_s - 2) * 1000 + 5_000);
    assert_eq!(
        p.verify(&just_expired, NOW + 3_000).unwrap_err(),
        TokenError::Expired
    );
    let c = json!({"sub": "u", "exp": now_s + 60, "nbf": now_s + 2, "channels": []});
    assert!(p.verify(&mint(Algorithm::HS256, SECRET, &c), NOW).is_ok());
}

#[test]
fn every_listed_secret_verifies_so_secrets_rotate() {
    let exp = NOW / 1000 + 60;
    let by_old = mint(Algorithm::HS256, OLD, &claims(exp));
    assert!(policy(&[SECRET, OLD], 0).verify(&by_old, NOW).is_ok());
    assert_eq!(
        policy(&[SECRET], 0).verify(&by_old, NOW).unwrap_err(),
        TokenError::Signature,
        "once the old secret is gone, its tokens are too"
    );
}

#[test]
fn patterns_are_exact_names_or_prefixes() {
    let p = policy(&[SECRET], 0);
    let c = json!({"sub": "u", "exp": NOW / 1000 + 60, "channels": ["news", "trades:*"]});
    let g = p.verify(&mint(Algorithm::HS256, SECRET, &c), NOW).unwrap();
    for (channel, allowed) in [
        ("news", true),
        ("news2", false),
        ("new", false),
        ("trades:AAPL", true),
        ("trades", false),
        ("sports", false),
    ] {
        assert_eq!(g.allows(channel), allowed, "{channel}");
    }
    let c = json!({"sub": "u", "exp": NOW / 1000 + 60, "channels": ["*"]});
    let g = p.verify(&mint(Algorithm::HS256, SECRET, &c), NOW).unwrap();
    assert!(g.allows("anything") && g.allows("trades:X"));
    let c = json!({"sub": "u", "exp": NOW / 1000 + 60, "channels": []});
    let g = p.verify(&mint(Algorithm::HS256, SECRET, &c), NOW).unwrap();
    assert!(!g.allows("news"), "no pattern, no channel");
}

#[test]
fn a_slot_comes_back_when_dropped_and_a_renewal_keeps_it() {
    let limiter = Arc::new(SubjectLimiter::new(2));
    let p = policy(&[SECRET], 0);
    let token = |sub: &str| {
        let c = json!({"sub": sub, "exp": NOW / 1000 + 60, "channels": []});
        p.verify(&mint(Algorithm::HS256, SECRET, &c), NOW).unwrap()
    };
    let mut a = token("alice");
    let key = a.subject;
    a.hold(SubjectSlot::take(&limiter, key).unwrap());
    let second = SubjectSlot::take(&limiter, key).unwrap();
    assert!(SubjectSlot::take(&limiter, key).is_none(), "at the cap");
    assert!(SubjectSlot::take(&limiter, SubjectKey::of("bob")).is_some());
    drop(second);
    assert_eq!(limiter.tracked(), 1, "bob's dropped slot left no entry");
    a.renew(token("alice")).unwrap();
    assert_eq!(a.renew(token("bob")).unwrap_err(), TokenError::OtherSubject);
    let third = SubjectSlot::take(&limiter, key).unwrap();
    assert!(
        SubjectSlot::take(&limiter, key).is_none(),
        "the renewal kept its slot"
    );
    drop((a, third));
    assert_eq!(limiter.tracked(), 0);
}

#[test]
fn origins_are_checked_only_when_a_browser_sends_one() {
    let p = policy(&[SECRET], 0);
    assert!(p.origin_allowed(None));
    assert!(p.origin_allowed(Some("https://app.example")));
    assert!(!p.origin_allowed(Some("https://evil.example")));
    assert!(!p.origin_allowed(Some("https://app.example/")));
    let open = Policy::from_config(&AuthConfig::default());
    assert!(open.origin_allowed(Some("https://evil.example")));
    assert!(!open.required());
}
