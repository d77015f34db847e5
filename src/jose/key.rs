//! [`SigningKey`]: a private key that signs JWTs (client assertions and DPoP proofs), and its
//! public JWK.

use std::{fmt, sync::Arc};

use aws_lc_rs::{
    rand::SystemRandom,
    rsa::{KeyPair as RsaKeyPair, PublicKeyComponents},
    signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256,
        RSA_PSS_SHA256,
    },
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use pkcs8::der::Decode;
use sha2::{Digest, Sha256};

use crate::Error;

/// A JWS algorithm this crate signs with (RFC 7518, RFC 8037).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PSS with SHA-256.
    PS256,
}

impl Algorithm {
    /// The `alg` name (`ES256`, `EdDSA`, `RS256`, `PS256`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::ES256 => "ES256",
            Algorithm::EdDSA => "EdDSA",
            Algorithm::RS256 => "RS256",
            Algorithm::PS256 => "PS256",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A private key that signs the JWTs this crate sends: client assertions
/// (`private_key_jwt`, RFC 7523) and DPoP proofs (RFC 9449).
///
/// A P-256 key signs with `ES256`, an Ed25519 key with `EdDSA`, an RSA key with `RS256`
/// (or `PS256`, see [`with_algorithm`](Self::with_algorithm)). Signing is done by AWS-LC
/// (through `aws-lc-rs`, the library rustls uses by default), which wipes key material when it
/// frees it; the PEM text's decoded bytes are wiped as soon as the key is parsed.
///
/// Cheap to clone (the key is shared). `Debug` shows the algorithm, the key id and the
/// thumbprint, never the key.
///
/// ```
/// use tower_bearer::jose::SigningKey;
///
/// let key = SigningKey::generate_es256()?.with_key_id("k1");
/// assert_eq!(key.algorithm().name(), "ES256");
/// assert_eq!(key.public_jwk()["kid"], "k1");
/// assert_eq!(key.thumbprint().len(), 43); // base64url of a SHA-256
/// assert!(!format!("{key:?}").contains("\"d\""));
/// # Ok::<(), tower_bearer::Error>(())
/// ```
#[derive(Clone)]
pub struct SigningKey {
    material: Arc<Material>,
    algorithm: Algorithm,
    key_id: Option<Arc<str>>,
    /// The RFC 7638 thumbprint of the public key.
    thumbprint: Arc<str>,
}

enum Material {
    P256(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
    Rsa(RsaKeyPair),
}

/// `id-ecPublicKey`, the P-256 curve, `id-Ed25519` and `rsaEncryption`.
const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const P256: &str = "1.2.840.10045.3.1.7";
const ED25519: &str = "1.3.101.112";
const RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";

impl SigningKey {
    /// A new random P-256 key, signing with `ES256`.
    ///
    /// # Errors
    ///
    /// [`Error::Key`] if the system's random source fails.
    pub fn generate_es256() -> Result<SigningKey, Error> {
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| Error::Key("cannot generate a P-256 key".into()))?;
        Ok(SigningKey::new(Material::P256(key), Algorithm::ES256))
    }

    /// A new random Ed25519 key, signing with `EdDSA`.
    ///
    /// # Errors
    ///
    /// [`Error::Key`] if the system's random source fails.
    pub fn generate_ed25519() -> Result<SigningKey, Error> {
        let key = Ed25519KeyPair::generate()
            .map_err(|_| Error::Key("cannot generate an Ed25519 key".into()))?;
        Ok(SigningKey::new(Material::Ed25519(key), Algorithm::EdDSA))
    }

    /// A key from a PKCS#8 PEM document (`-----BEGIN PRIVATE KEY-----`, as
    /// `openssl genpkey` writes it): P-256, Ed25519 or RSA (2048 bits or more).
    ///
    /// # Errors
    ///
    /// [`Error::Key`] for anything else: another PEM label (a SEC1 `EC PRIVATE KEY` or PKCS#1
    /// `RSA PRIVATE KEY` can be converted with `openssl pkcs8 -topk8 -nocrypt`), an encrypted
    /// key, another curve, a malformed or inconsistent key. The message never shows the key.
    pub fn from_pkcs8_pem(pem: &str) -> Result<SigningKey, Error> {
        let label = pkcs8::der::pem::decode_label(pem.trim_start().as_bytes()).map_err(|_| {
            Error::Key("not a PEM document (expected -----BEGIN PRIVATE KEY-----, PKCS#8)".into())
        })?;
        match label {
            "PRIVATE KEY" => {
                // Wiped when dropped, unlike a plain decoded buffer.
                let (_, document) = pkcs8::SecretDocument::from_pem(pem.trim_start())
                    .map_err(|_| Error::Key("not a PKCS#8 private key".into()))?;
                SigningKey::from_pkcs8_der(document.as_bytes())
            }
            "EC PRIVATE KEY" | "RSA PRIVATE KEY" => Err(Error::Key(
                format!(
                    "a {label} (SEC1/PKCS#1) PEM; convert it to PKCS#8 with \
                     `openssl pkcs8 -topk8 -nocrypt`"
                )
                .into(),
            )),
            "ENCRYPTED PRIVATE KEY" => Err(Error::Key(
                "an encrypted PKCS#8 key; decrypt it first (`openssl pkcs8 -nocrypt`)".into(),
            )),
            other => Err(Error::Key(
                format!("a PEM labelled {other:?}; expected PRIVATE KEY (PKCS#8)").into(),
            )),
        }
    }

    /// A key from a PKCS#8 DER document; see [`from_pkcs8_pem`](Self::from_pkcs8_pem).
    ///
    /// # Errors
    ///
    /// [`Error::Key`] as for `from_pkcs8_pem`.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<SigningKey, Error> {
        let info = pkcs8::PrivateKeyInfo::from_der(der)
            .map_err(|_| Error::Key("not a PKCS#8 private key".into()))?;
        let rejected = |what: &str, err: aws_lc_rs::error::KeyRejected| {
            Error::Key(format!("{what} key rejected: {err}").into())
        };
        match info.algorithm.oid.to_string().as_str() {
            EC_PUBLIC_KEY => {
                let curve = info
                    .algorithm
                    .parameters_oid()
                    .map(|oid| oid.to_string())
                    .unwrap_or_default();
                if curve != P256 {
                    return Err(Error::Key(
                        format!("an EC key on curve {curve}; only P-256 (ES256) is supported")
                            .into(),
                    ));
                }
                let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map_err(|e| rejected("P-256", e))?;
                Ok(SigningKey::new(Material::P256(key), Algorithm::ES256))
            }
            ED25519 => {
                // PKCS#8 v1 (what OpenSSL writes) carries no public key to check against.
                let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                    .map_err(|e| rejected("Ed25519", e))?;
                Ok(SigningKey::new(Material::Ed25519(key), Algorithm::EdDSA))
            }
            RSA_ENCRYPTION => {
                let key = RsaKeyPair::from_pkcs8(der).map_err(|e| rejected("RSA", e))?;
                Ok(SigningKey::new(Material::Rsa(key), Algorithm::RS256))
            }
            other => Err(Error::Key(
                format!("a key of algorithm {other}; expected P-256, Ed25519 or RSA").into(),
            )),
        }
    }

    fn new(material: Material, algorithm: Algorithm) -> SigningKey {
        let thumbprint = URL_SAFE_NO_PAD
            .encode(Sha256::digest(thumbprint_input(&material).as_bytes()))
            .into();
        SigningKey {
            material: Arc::new(material),
            algorithm,
            key_id: None,
            thumbprint,
        }
    }

    /// The same key with the key id `kid`, sent in the header of what it signs and in its
    /// public JWK.
    #[must_use]
    pub fn with_key_id(mut self, kid: impl Into<String>) -> SigningKey {
        self.key_id = Some(kid.into().into());
        self
    }

    /// The same key signing with `algorithm`: an RSA key signs with `RS256` (the default) or
    /// `PS256` (which FAPI requires); the other keys have one algorithm each.
    ///
    /// # Errors
    ///
    /// [`Error::Key`] if the key cannot sign with `algorithm`.
    pub fn with_algorithm(mut self, algorithm: Algorithm) -> Result<SigningKey, Error> {
        let fits = matches!(
            (&*self.material, algorithm),
            (Material::P256(_), Algorithm::ES256)
                | (Material::Ed25519(_), Algorithm::EdDSA)
                | (Material::Rsa(_), Algorithm::RS256 | Algorithm::PS256)
        );
        if !fits {
            return Err(Error::Key(
                format!("this key cannot sign with {algorithm}").into(),
            ));
        }
        self.algorithm = algorithm;
        Ok(self)
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The key id, if set.
    pub fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    /// The public key as a JWK (RFC 7517), with `kid`, `alg` and `use: "sig"`: what an
    /// authorization server registers for `private_key_jwt`.
    pub fn public_jwk(&self) -> serde_json::Value {
        let mut jwk = self.bare_jwk();
        if let Some(members) = jwk.as_object_mut() {
            if let Some(kid) = &self.key_id {
                members.insert("kid".into(), kid.as_ref().into());
            }
            members.insert("alg".into(), self.algorithm.name().into());
            members.insert("use".into(), "sig".into());
        }
        jwk
    }

    /// The public key as a JWK with its required members only: what a DPoP proof embeds.
    pub(crate) fn bare_jwk(&self) -> serde_json::Value {
        // The thumbprint input is JSON this crate writes: it always parses.
        serde_json::from_str(&thumbprint_input(&self.material)).unwrap_or_default()
    }

    /// The RFC 7638 JWK thumbprint (SHA-256, base64url): what `dpop_jkt` and a DPoP-bound
    /// token's `cnf.jkt` carry.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// The length of this key's signatures.
    pub(crate) fn signature_len(&self) -> usize {
        match &*self.material {
            Material::P256(_) | Material::Ed25519(_) => 64,
            Material::Rsa(key) => key.public_modulus_len(),
        }
    }

    /// The signature of `input` by this key, in JWS form (for ECDSA, `r || s`).
    pub(crate) fn sign(&self, input: &[u8]) -> Result<Signature, Error> {
        let failed = || Error::Key(format!("{} signing failed", self.algorithm).into());
        match &*self.material {
            Material::P256(key) => {
                let signature = key
                    .sign(&SystemRandom::new(), input)
                    .map_err(|_| failed())?;
                Ok(Signature::from_slice(signature.as_ref()))
            }
            Material::Ed25519(key) => Ok(Signature::from_slice(key.sign(input).as_ref())),
            Material::Rsa(key) => {
                let padding = match self.algorithm {
                    Algorithm::PS256 => &RSA_PSS_SHA256,
                    _ => &RSA_PKCS1_SHA256,
                };
                let mut signature = vec![0; key.public_modulus_len()];
                key.sign(padding, &SystemRandom::new(), input, &mut signature)
                    .map_err(|_| failed())?;
                Ok(Signature::Long(signature))
            }
        }
    }
}

/// A signature: on the stack for the elliptic curves, on the heap for RSA.
pub(crate) enum Signature {
    Short([u8; 64], usize),
    Long(Vec<u8>),
}

impl Signature {
    fn from_slice(bytes: &[u8]) -> Signature {
        let mut short = [0; 64];
        match short.get_mut(..bytes.len()) {
            Some(room) => {
                room.copy_from_slice(bytes);
                Signature::Short(short, bytes.len())
            }
            None => Signature::Long(bytes.to_vec()),
        }
    }
}

impl AsRef<[u8]> for Signature {
    fn as_ref(&self) -> &[u8] {
        match self {
            Signature::Short(bytes, len) => bytes.get(..*len).unwrap_or(bytes),
            Signature::Long(bytes) => bytes,
        }
    }
}

/// The RFC 7638 thumbprint input: the public JWK's required members, in lexicographic order,
/// without white space.
fn thumbprint_input(material: &Material) -> String {
    let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
    match material {
        Material::P256(key) => {
            // An uncompressed point: 0x04, then x and y, 32 bytes each.
            let point = key.public_key().as_ref();
            let (x, y) = point
                .get(1..)
                .and_then(|xy| xy.split_at_checked(32))
                .unwrap_or_default();
            format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                b64(x),
                b64(y)
            )
        }
        Material::Ed25519(key) => {
            format!(
                r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
                b64(key.public_key().as_ref())
            )
        }
        Material::Rsa(key) => {
            let public: PublicKeyComponents<Vec<u8>> = key.public_key().into();
            rsa_thumbprint_input(&public.n, &public.e)
        }
    }
}

/// The thumbprint input of the RSA public key with modulus `n` and exponent `e`.
pub(super) fn rsa_thumbprint_input(n: &[u8], e: &[u8]) -> String {
    format!(
        r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(e),
        URL_SAFE_NO_PAD.encode(n)
    )
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm)
            .field("key_id", &self.key_id)
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl PartialEq for SigningKey {
    /// Keys are equal when their public keys, algorithms and key ids are.
    fn eq(&self, other: &Self) -> bool {
        self.thumbprint == other.thumbprint
            && self.algorithm == other.algorithm
            && self.key_id == other.key_id
    }
}

impl Eq for SigningKey {}
