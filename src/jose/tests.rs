//! Keys, JWKs, thumbprints, proofs and assertions, each signature checked with AWS-LC's
//! verifier against the public JWK.

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ED25519, RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256,
    RsaPublicKeyComponents, UnparsedPublicKey,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::Value;

use super::{
    Algorithm, SigningKey, assertion,
    dpop::{DpopProver, ProofFor, access_token_hash},
};
use crate::Error;

const ES256_PEM: &str = include_str!("../../tests/keys/client-es256.pem");
const ED25519_PEM: &str = include_str!("../../tests/keys/client-ed25519.pem");
const RSA_PEM: &str = include_str!("../../tests/keys/client-rsa.pem");

fn b64(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(text).unwrap()
}

/// The header and claims of `jws`, after checking its signature with `jwk` (a public JWK) for
/// `algorithm`.
fn verified(jws: &str, jwk: &Value, algorithm: Algorithm) -> (Value, Value) {
    let parts: Vec<&str> = jws.split('.').collect();
    assert_eq!(parts.len(), 3, "compact JWS: {jws}");
    let input = format!("{}.{}", parts[0], parts[1]);
    let signature = b64(parts[2]);
    let member = |name: &str| b64(jwk[name].as_str().unwrap());
    let checked = match algorithm {
        Algorithm::ES256 => {
            let mut point = vec![4];
            point.extend(member("x"));
            point.extend(member("y"));
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                .verify(input.as_bytes(), &signature)
        }
        Algorithm::EdDSA => {
            UnparsedPublicKey::new(&ED25519, member("x")).verify(input.as_bytes(), &signature)
        }
        Algorithm::RS256 | Algorithm::PS256 => {
            let padding = if algorithm == Algorithm::PS256 {
                &RSA_PSS_2048_8192_SHA256
            } else {
                &RSA_PKCS1_2048_8192_SHA256
            };
            RsaPublicKeyComponents {
                n: member("n"),
                e: member("e"),
            }
            .verify(padding, input.as_bytes(), &signature)
        }
    };
    assert!(checked.is_ok(), "{algorithm} signature does not verify");
    let json = |part: &str| serde_json::from_slice::<Value>(&b64(part)).unwrap();
    (json(parts[0]), json(parts[1]))
}

fn keys() -> Vec<SigningKey> {
    vec![
        SigningKey::from_pkcs8_pem(ES256_PEM).unwrap(),
        SigningKey::from_pkcs8_pem(ED25519_PEM).unwrap(),
        SigningKey::from_pkcs8_pem(RSA_PEM).unwrap(),
        SigningKey::from_pkcs8_pem(RSA_PEM)
            .unwrap()
            .with_algorithm(Algorithm::PS256)
            .unwrap(),
        SigningKey::generate_es256().unwrap(),
        SigningKey::generate_ed25519().unwrap(),
    ]
}

#[test]
fn each_kind_of_key_signs_what_its_public_jwk_verifies() {
    let algorithms: Vec<Algorithm> = keys().iter().map(SigningKey::algorithm).collect();
    assert_eq!(
        algorithms,
        [
            Algorithm::ES256,
            Algorithm::EdDSA,
            Algorithm::RS256,
            Algorithm::PS256,
            Algorithm::ES256,
            Algorithm::EdDSA
        ]
    );
    for key in keys() {
        let key = key.with_key_id("k1");
        let jwk = key.public_jwk();
        assert_eq!(jwk["kid"], "k1");
        assert_eq!(jwk["alg"], key.algorithm().name());
        assert_eq!(jwk["use"], "sig");
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(jwk.get(private).is_none(), "{private} in a public JWK");
        }
        let jws = super::jws::sign(&key, r#"{"alg":"x"}"#, r#"{"a":1}"#).unwrap();
        let (_, claims) = verified(&jws, &jwk, key.algorithm());
        assert_eq!(claims["a"], 1);
    }
}

/// RFC 7638 §3.1's example: its RSA key's thumbprint.
#[test]
fn the_thumbprint_is_rfc_7638s() {
    let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
    let input = super::key::rsa_thumbprint_input(&b64(n), &b64("AQAB"));
    let thumbprint = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(input.as_bytes()));
    use sha2::Digest;
    assert_eq!(thumbprint, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
}

#[test]
fn a_keys_thumbprint_is_that_of_its_jwks_required_members() {
    use sha2::Digest;
    for key in keys() {
        let jwk = key.public_jwk();
        let required: &[&str] = match key.algorithm() {
            Algorithm::ES256 => &["crv", "kty", "x", "y"],
            Algorithm::EdDSA => &["crv", "kty", "x"],
            _ => &["e", "kty", "n"],
        };
        let members: Vec<String> = required
            .iter()
            .map(|name| format!("\"{name}\":{}", jwk[name]))
            .collect();
        let input = format!("{{{}}}", members.join(","));
        let expected = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(input.as_bytes()));
        assert_eq!(key.thumbprint(), expected, "{}", key.algorithm());
    }
    assert_ne!(
        SigningKey::generate_es256().unwrap().thumbprint(),
        SigningKey::generate_es256().unwrap().thumbprint()
    );
}

#[test]
fn bad_keys_are_typed_errors_that_show_no_key() {
    let cases = [
        ("", "not a PEM"),
        ("hello", "not a PEM"),
        (
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
            "openssl pkcs8",
        ),
        (
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
            "encrypted",
        ),
        (
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "CERTIFICATE",
        ),
        (
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "not a PKCS#8",
        ),
    ];
    for (pem, says) in cases {
        match SigningKey::from_pkcs8_pem(pem) {
            Err(Error::Key(message)) => assert!(message.contains(says), "{message}"),
            other => panic!("{pem:?}: {other:?}"),
        }
    }
    // A P-384 key: parsed, and refused by name.
    let p384 = aws_lc_rs::signature::EcdsaKeyPair::generate(
        &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
    )
    .unwrap()
    .to_pkcs8v1()
    .unwrap();
    let err = SigningKey::from_pkcs8_der(p384.as_ref()).unwrap_err();
    assert!(err.to_string().contains("only P-256"), "{err}");
    assert!(err.is_terminal());
    // A truncated key shows none of itself in the error.
    let body: String = RSA_PEM
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let cut = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        &body[..400]
    );
    let err = SigningKey::from_pkcs8_pem(&cut).unwrap_err();
    assert!(!format!("{err} {err:?}").contains(&body[40..80]));
}

#[test]
fn an_algorithm_a_key_cannot_sign_with_is_refused() {
    let ec = SigningKey::generate_es256().unwrap();
    assert!(matches!(
        ec.clone().with_algorithm(Algorithm::PS256),
        Err(Error::Key(_))
    ));
    assert!(ec.with_algorithm(Algorithm::ES256).is_ok());
    let ed = SigningKey::generate_ed25519().unwrap();
    assert!(ed.with_algorithm(Algorithm::RS256).is_err());
    let rsa = SigningKey::from_pkcs8_pem(RSA_PEM).unwrap();
    assert!(rsa.clone().with_algorithm(Algorithm::EdDSA).is_err());
    assert_eq!(
        rsa.with_algorithm(Algorithm::PS256).unwrap().algorithm(),
        Algorithm::PS256
    );
}

#[test]
fn debug_shows_the_algorithm_key_id_and_thumbprint_only() {
    let pem_key = SigningKey::from_pkcs8_pem(ES256_PEM)
        .unwrap()
        .with_key_id("es-1");
    let debug = format!("{pem_key:?}");
    assert!(debug.contains("ES256") && debug.contains("es-1"), "{debug}");
    assert!(debug.contains(pem_key.thumbprint()));
    let body: String = ES256_PEM
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    for window in body.as_bytes().windows(12) {
        assert!(!debug.contains(std::str::from_utf8(window).unwrap()));
    }
    assert_eq!(
        format!("{:?}", DpopProver::new(pem_key.clone())),
        format!("DpopProver {{ key: {debug}, .. }}")
    );
}

#[test]
fn a_dpop_proof_has_rfc_9449s_header_and_claims_and_verifies_with_its_embedded_key() {
    for key in keys() {
        let prover = DpopProver::new(key.clone());
        let ath = access_token_hash("the-token");
        let request = ProofFor {
            method: "POST",
            uri: "https://api.example.com/orders",
            token_hash: Some(&ath),
            nonce: Some(r#"n"o\nce"#),
        };
        let proof = prover.proof_for(request).unwrap();
        let header: Value = serde_json::from_slice(&b64(proof.split('.').next().unwrap())).unwrap();
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(header["alg"], key.algorithm().name());
        assert!(header["jwk"].get("d").is_none());
        let (_, claims) = verified(&proof, &header["jwk"], key.algorithm());
        assert_eq!(claims["htm"], "POST");
        assert_eq!(claims["htu"], "https://api.example.com/orders");
        assert_eq!(claims["ath"], ath);
        assert_eq!(claims["nonce"], r#"n"o\nce"#);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(claims["iat"].as_u64().unwrap().abs_diff(now) <= 2);
        assert_eq!(b64(claims["jti"].as_str().unwrap()).len(), 16);
        let again = prover.proof_for(request).unwrap();
        let (_, again) = verified(&again, &header["jwk"], key.algorithm());
        assert_ne!(again["jti"], claims["jti"], "a new jti each time");
        assert_eq!(
            proof.len(),
            proof.capacity(),
            "sized exactly: a header value without a copy"
        );
    }
}

#[test]
fn ath_is_the_base64url_sha256_of_the_token_and_optional_claims_stay_out() {
    // RFC 9449 §7.1's example token and ath.
    assert_eq!(
        access_token_hash("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
        "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
    );
    let key = SigningKey::generate_ed25519().unwrap();
    let proof = DpopProver::new(key.clone())
        .proof_for(ProofFor {
            method: "GET",
            uri: "https://as.example.com/token",
            token_hash: None,
            nonce: None,
        })
        .unwrap();
    let (_, claims) = verified(&proof, &key.bare_jwk(), Algorithm::EdDSA);
    assert!(claims.get("ath").is_none() && claims.get("nonce").is_none());
}

#[test]
fn a_proof_for_a_uri_longer_than_the_stack_buffer_is_still_whole() {
    let key = SigningKey::generate_es256().unwrap();
    let uri = format!("https://api.example.com/{}", "a".repeat(5000));
    let proof = DpopProver::new(key.clone())
        .proof_for(ProofFor {
            method: "GET",
            uri: &uri,
            token_hash: None,
            nonce: None,
        })
        .unwrap();
    let (_, claims) = verified(&proof, &key.bare_jwk(), Algorithm::ES256);
    assert_eq!(claims["htu"], uri);
}

#[test]
fn a_client_assertion_names_the_client_and_audience_and_lives_a_minute() {
    for key in keys() {
        let key = key.with_key_id("kid-7");
        let jwt = assertion::client_assertion(&key, "svc", "https://idp.example.com").unwrap();
        let (header, claims) = verified(&jwt, &key.public_jwk(), key.algorithm());
        assert_eq!(header["kid"], "kid-7");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["alg"], key.algorithm().name());
        assert_eq!(claims["iss"], "svc");
        assert_eq!(claims["sub"], "svc");
        assert_eq!(claims["aud"], "https://idp.example.com");
        let iat = claims["iat"].as_u64().unwrap();
        assert_eq!(claims["exp"].as_u64().unwrap() - iat, 60);
        assert_eq!(b64(claims["jti"].as_str().unwrap()).len(), 16);
        let other = assertion::client_assertion(&key, "svc", "https://idp.example.com").unwrap();
        let (_, other) = verified(&other, &key.public_jwk(), key.algorithm());
        assert_ne!(other["jti"], claims["jti"]);
    }
}
