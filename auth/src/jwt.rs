//! ServiceAccountToken authentication: a signed JWT (MQTT 5.0 enhanced
//! authentication, method `K8S-SAT`, the token as authentication data)
//! verified against the configured keys (PEM public keys or JWKS), the
//! configured audiences, `exp` and `nbf`. Asymmetric algorithms only
//! (RS*/PS*, ES256/ES384, EdDSA). The clock is passed in; no network (there
//! is no Kubernetes TokenReview).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use shardmq_core::config::{ServiceAccountTokenSettings, TokenKey};

use crate::files::{self, FileError, FileProblem};
use crate::identity::{AuthError, Identity, MethodKind};

/// The MQTT v5 Authentication Method of a service-account token (AIO).
pub const SAT_METHOD: &str = "K8S-SAT";

/// How far a token's `nbf` may lie ahead of the broker's clock: the issuer's
/// clock may run a little ahead. `exp` gets no leeway: the client is
/// disconnected at `exp`, so a token past it is of no use.
const NOT_BEFORE_LEEWAY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("serviceAccountTokenSettings.keys[{index}] {source}")]
    File {
        index: usize,
        #[source]
        source: FileError,
    },
    #[error("serviceAccountTokenSettings.keys[{index}] ({origin}): {reason}")]
    Key {
        index: usize,
        origin: String,
        reason: String,
    },
}

/// Which algorithms a key may verify: its family, and for EC its curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    /// A PEM EC key: the curve is not known here; ring checks it.
    Ec,
    EcP256,
    EcP384,
    Ed25519,
}

impl Family {
    fn allows(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            Family::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            Family::Ec => matches!(alg, ES256 | ES384),
            Family::EcP256 => alg == ES256,
            Family::EcP384 => alg == ES384,
            Family::Ed25519 => alg == EdDSA,
        }
    }
}

struct VerificationKey {
    key_id: Option<String>,
    family: Family,
    key: DecodingKey,
}

#[derive(Deserialize)]
struct Claims {
    exp: u64,
    nbf: Option<u64>,
    sub: Option<String>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<KubernetesClaims>,
    attributes: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct KubernetesClaims {
    namespace: Option<String>,
    serviceaccount: Option<NamedRef>,
}

#[derive(Deserialize)]
struct NamedRef {
    name: Option<String>,
}

/// The ServiceAccountToken method of one authentication policy.
pub struct TokenVerifier {
    sources: Vec<TokenKey>,
    audiences: Vec<String>,
    keys: ArcSwap<Vec<VerificationKey>>,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("sources", &self.sources)
            .field("audiences", &self.audiences)
            .field("keys", &self.keys.load().len())
            .finish()
    }
}

impl TokenVerifier {
    /// Loads every entry of `keys`: inline JWKS JSON (starts with '{'), or
    /// a file holding a JWKS or PEM public keys (SPKI "PUBLIC KEY", or
    /// "RSA PUBLIC KEY"). No keys: every token is rejected.
    pub fn load(settings: &ServiceAccountTokenSettings) -> Result<TokenVerifier, JwtError> {
        let keys = load_keys(&settings.keys)?;
        Ok(TokenVerifier {
            sources: settings.keys.clone(),
            audiences: settings.audiences.clone(),
            keys: ArcSwap::from_pointee(keys),
        })
    }

    /// Re-reads the key files; on error the previous keys stay.
    pub fn reload(&self) -> Result<(), JwtError> {
        self.keys.store(Arc::new(load_keys(&self.sources)?));
        Ok(())
    }

    /// Verifies `token` at `now`: signature by a configured key (the one
    /// named by the header's `kid` if both have one), `aud` holding one of
    /// the audiences, `exp` after `now`, `nbf` (if any) not after `now`
    /// (plus a minute of leeway). Identity: `sub` as user name; attributes
    /// `namespace` and `serviceAccount` from the Kubernetes claims plus any
    /// string pairs of a top-level `attributes` claim; expiry `exp`.
    pub fn verify(&self, token: &[u8], now: SystemTime) -> Result<Identity, AuthError> {
        let reject = |reason: String| AuthError::Token(reason);
        let token = std::str::from_utf8(token)
            .map_err(|_| reject("authentication data is not UTF-8".to_owned()))?;
        let header = jsonwebtoken::decode_header(token).map_err(|e| reject(e.to_string()))?;
        let keys = self.keys.load();
        let mut last_error = "no verification key configured".to_owned();
        let mut claims = None;
        for key in keys.iter() {
            if !key.family.allows(header.alg) {
                continue;
            }
            if let (Some(wanted), Some(have)) = (&header.kid, &key.key_id) {
                if wanted != have {
                    continue;
                }
            }
            let mut validation = Validation::new(header.alg);
            validation.set_audience(&self.audiences);
            // Time is checked below against the caller's clock.
            validation.validate_exp = false;
            validation.validate_nbf = false;
            validation.set_required_spec_claims(&["exp", "aud"]);
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                Err(e) => last_error = e.to_string(),
            }
        }
        let claims = claims.ok_or_else(|| reject(last_error))?;
        let now_seconds = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if claims.exp <= now_seconds {
            return Err(reject(format!("expired (exp {})", claims.exp)));
        }
        if let Some(nbf) = claims.nbf {
            if nbf > now_seconds.saturating_add(NOT_BEFORE_LEEWAY.as_secs()) {
                return Err(reject(format!("not valid yet (nbf {nbf})")));
            }
        }
        let mut attributes = claims.attributes.unwrap_or_default();
        if let Some(kubernetes) = claims.kubernetes {
            if let Some(namespace) = kubernetes.namespace {
                attributes.insert("namespace".to_owned(), namespace);
            }
            if let Some(name) = kubernetes.serviceaccount.and_then(|sa| sa.name) {
                attributes.insert("serviceAccount".to_owned(), name);
            }
        }
        Ok(Identity {
            method: MethodKind::ServiceAccountToken,
            username: claims.sub,
            attributes,
            expiry: Some(UNIX_EPOCH + Duration::from_secs(claims.exp)),
        })
    }
}

fn load_keys(sources: &[TokenKey]) -> Result<Vec<VerificationKey>, JwtError> {
    let mut keys = Vec::new();
    for (index, source) in sources.iter().enumerate() {
        let path = match source {
            TokenKey::Inline(json) => {
                keys.extend(jwks(json.trim_start().as_bytes(), index, "inline JWKS")?);
                continue;
            }
            TokenKey::File(path) => path,
        };
        let bytes = files::read(path).map_err(|source| JwtError::File { index, source })?;
        let origin = path.display().to_string();
        if bytes.trim_ascii_start().starts_with(b"{") {
            keys.extend(jwks(&bytes, index, &origin)?);
        } else {
            keys.extend(pem_keys(&bytes, index, path)?);
        }
    }
    Ok(keys)
}

fn jwks(json: &[u8], index: usize, origin: &str) -> Result<Vec<VerificationKey>, JwtError> {
    let bad = |reason: String| JwtError::Key {
        index,
        origin: origin.to_owned(),
        reason,
    };
    let set: JwkSet =
        serde_json::from_slice(json).map_err(|e| bad(format!("invalid JWKS: {e}")))?;
    let mut keys = Vec::with_capacity(set.keys.len());
    for (key_index, jwk) in set.keys.iter().enumerate() {
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Family::Rsa,
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => Family::EcP256,
                EllipticCurve::P384 => Family::EcP384,
                _ => return Err(bad(format!("keys[{key_index}]: unsupported curve {:?}", ec.curve))),
            },
            AlgorithmParameters::OctetKeyPair(_) => Family::Ed25519,
            AlgorithmParameters::OctetKey(_) => {
                return Err(bad(format!(
                    "keys[{key_index}]: symmetric (\"oct\") keys are not accepted: a verifier could forge tokens"
                )))
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(format!("keys[{key_index}]: {e}")))?;
        keys.push(VerificationKey {
            key_id: jwk.common.key_id.clone(),
            family,
            key,
        });
    }
    Ok(keys)
}

/// Every public key of a PEM file.
fn pem_keys(bytes: &[u8], index: usize, path: &Path) -> Result<Vec<VerificationKey>, JwtError> {
    let bad = |reason: String| JwtError::Key {
        index,
        origin: path.display().to_string(),
        reason,
    };
    let sections = pem_sections(bytes).map_err(|problem| JwtError::File {
        index,
        source: FileError::new(path, problem),
    })?;
    let mut keys = Vec::new();
    for (label, section) in sections {
        if label != "PUBLIC KEY" && label != "RSA PUBLIC KEY" {
            return Err(bad(format!(
                "PEM section \"{label}\": expected \"PUBLIC KEY\" or \"RSA PUBLIC KEY\""
            )));
        }
        let (family, key) = if let Ok(key) = DecodingKey::from_rsa_pem(section.as_bytes()) {
            (Family::Rsa, key)
        } else if let Ok(key) = DecodingKey::from_ec_pem(section.as_bytes()) {
            (Family::Ec, key)
        } else if let Ok(key) = DecodingKey::from_ed_pem(section.as_bytes()) {
            (Family::Ed25519, key)
        } else {
            return Err(bad("not an RSA, EC or Ed25519 public key".to_owned()));
        };
        keys.push(VerificationKey {
            key_id: None,
            family,
            key,
        });
    }
    if keys.is_empty() {
        return Err(bad("no PEM public key in file".to_owned()));
    }
    Ok(keys)
}

/// Splits PEM text into `(label, whole section text)` pairs.
fn pem_sections(bytes: &[u8]) -> Result<Vec<(String, String)>, FileProblem> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| FileProblem::Pem("not UTF-8 text".to_owned()))?;
    let mut sections = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + "-----BEGIN ".len()..];
        let label_end = after
            .find("-----")
            .ok_or_else(|| FileProblem::Pem("unterminated BEGIN line".to_owned()))?;
        let label = &after[..label_end];
        let end_marker = format!("-----END {label}-----");
        let end = rest[start..]
            .find(&end_marker)
            .ok_or_else(|| FileProblem::Pem(format!("no \"{end_marker}\" line")))?;
        let section_end = start + end + end_marker.len();
        sections.push((label.to_owned(), rest[start..section_end].to_owned()));
        rest = &rest[section_end..];
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    /// An Ed25519 and a P-256 signing key with their public halves.
    struct Keys {
        ed_private_pem: String,
        ed_public_pem: String,
        ec_private_pem: String,
        ec_public_pem: String,
    }

    fn keys() -> Keys {
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        Keys {
            ed_private_pem: ed.serialize_pem(),
            ed_public_pem: ed.public_key_pem(),
            ec_private_pem: ec.serialize_pem(),
            ec_public_pem: ec.public_key_pem(),
        }
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn secs(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    fn sign(
        alg: Algorithm,
        private_pem: &str,
        claims: serde_json::Value,
        kid: Option<&str>,
    ) -> Vec<u8> {
        let key = match alg {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(private_pem.as_bytes()).unwrap(),
            Algorithm::RS256 => EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap(),
            _ => EncodingKey::from_ec_pem(private_pem.as_bytes()).unwrap(),
        };
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, &key)
            .unwrap()
            .into_bytes()
    }

    fn sat_claims(exp: u64) -> serde_json::Value {
        json!({
            "aud": ["aio-internal"],
            "exp": exp,
            "nbf": secs(now()) - 10,
            "sub": "system:serviceaccount:default:sensor",
            "kubernetes.io": {"namespace": "default", "serviceaccount": {"name": "sensor", "uid": "1"}},
            "attributes": {"group": "sensors"}
        })
    }

    fn verifier(key_sources: Vec<String>) -> TokenVerifier {
        TokenVerifier::load(&ServiceAccountTokenSettings {
            audiences: vec!["aio-internal".into()],
            keys: key_sources.iter().map(|k| TokenKey::new(k)).collect(),
        })
        .unwrap()
    }

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }

    #[test]
    fn a_token_signed_by_a_pem_key_authenticates_with_sub_attributes_and_expiry() {
        let k = keys();
        let dir = tempfile::tempdir().unwrap();
        let v = verifier(vec![write(
            &dir,
            "keys.pem",
            &format!("{}{}", k.ec_public_pem, k.ed_public_pem),
        )]);
        let exp = secs(now()) + 3600;
        for (alg, private) in [
            (Algorithm::EdDSA, &k.ed_private_pem),
            (Algorithm::ES256, &k.ec_private_pem),
        ] {
            let identity = v
                .verify(&sign(alg, private, sat_claims(exp), None), now())
                .unwrap();
            assert_eq!(identity.method, MethodKind::ServiceAccountToken);
            assert_eq!(
                identity.username.as_deref(),
                Some("system:serviceaccount:default:sensor")
            );
            assert_eq!(
                identity.attributes.get("namespace").map(String::as_str),
                Some("default")
            );
            assert_eq!(
                identity
                    .attributes
                    .get("serviceAccount")
                    .map(String::as_str),
                Some("sensor")
            );
            assert_eq!(
                identity.attributes.get("group").map(String::as_str),
                Some("sensors")
            );
            assert_eq!(identity.expiry, Some(UNIX_EPOCH + Duration::from_secs(exp)));
        }
    }

    #[test]
    fn expired_and_not_yet_valid_tokens_are_rejected() {
        let k = keys();
        let dir = tempfile::tempdir().unwrap();
        let v = verifier(vec![write(&dir, "ed.pem", &k.ed_public_pem)]);
        let expired = sign(
            Algorithm::EdDSA,
            &k.ed_private_pem,
            sat_claims(secs(now()) - 1),
            None,
        );
        let err = v.verify(&expired, now()).unwrap_err();
        assert!(
            matches!(&err, AuthError::Token(r) if r.contains("expired")),
            "{err}"
        );
        assert_eq!(err.reason_code().as_u8(), 0x87);

        let mut future = sat_claims(secs(now()) + 7200);
        future["nbf"] = json!(secs(now()) + 3600);
        let err = v
            .verify(
                &sign(Algorithm::EdDSA, &k.ed_private_pem, future, None),
                now(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("not valid yet"), "{err}");
    }

    #[test]
    fn bad_tokens_are_rejected() {
        let k = keys();
        let other = keys();
        let dir = tempfile::tempdir().unwrap();
        let v = verifier(vec![write(&dir, "ed.pem", &k.ed_public_pem)]);
        let exp = secs(now()) + 3600;
        // Signed by another key.
        let forged = sign(
            Algorithm::EdDSA,
            &other.ed_private_pem,
            sat_claims(exp),
            None,
        );
        assert!(v.verify(&forged, now()).is_err());
        // Wrong audience.
        let mut claims = sat_claims(exp);
        claims["aud"] = json!("someone-else");
        assert!(v
            .verify(
                &sign(Algorithm::EdDSA, &k.ed_private_pem, claims, None),
                now()
            )
            .is_err());
        // No exp.
        let mut claims = sat_claims(exp);
        claims.as_object_mut().unwrap().remove("exp");
        assert!(v
            .verify(
                &sign(Algorithm::EdDSA, &k.ed_private_pem, claims, None),
                now()
            )
            .is_err());
        // Garbage, and a token whose payload was altered after signing.
        assert!(v.verify(b"not.a.jwt", now()).is_err());
        assert!(v.verify(&[0xff, 0xfe], now()).is_err());
        let good = String::from_utf8(sign(
            Algorithm::EdDSA,
            &k.ed_private_pem,
            sat_claims(exp),
            None,
        ))
        .unwrap();
        let parts: Vec<&str> = good.split('.').collect();
        let mut payload: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        payload["sub"] = json!("admin");
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap()),
            parts[2]
        );
        assert!(v.verify(tampered.as_bytes(), now()).is_err());
        // "alg": "none" is not an algorithm at all.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
            parts[1]
        );
        assert!(v.verify(none.as_bytes(), now()).is_err());
    }

    #[test]
    fn jwks_keys_are_picked_by_kid() {
        let k = keys();
        let dir = tempfile::tempdir().unwrap();
        let ed = rcgen::KeyPair::from_pem(&k.ed_private_pem).unwrap();
        let x = URL_SAFE_NO_PAD.encode(ed.public_key_raw());
        let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "alg": "EdDSA"}]});
        let v = verifier(vec![jwks.to_string()]);
        let exp = secs(now()) + 60;
        v.verify(
            &sign(
                Algorithm::EdDSA,
                &k.ed_private_pem,
                sat_claims(exp),
                Some("k1"),
            ),
            now(),
        )
        .unwrap();
        v.verify(
            &sign(Algorithm::EdDSA, &k.ed_private_pem, sat_claims(exp), None),
            now(),
        )
        .unwrap();
        let err = v
            .verify(
                &sign(
                    Algorithm::EdDSA,
                    &k.ed_private_pem,
                    sat_claims(exp),
                    Some("k2"),
                ),
                now(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("no verification key"), "{err}");
        // The same JWKS from a file.
        let file = write(&dir, "jwks.json", &jwks.to_string());
        let v = verifier(vec![file]);
        v.verify(
            &sign(
                Algorithm::EdDSA,
                &k.ed_private_pem,
                sat_claims(exp),
                Some("k1"),
            ),
            now(),
        )
        .unwrap();
    }

    #[test]
    fn key_file_problems_are_load_errors_naming_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let load = |keys: Vec<String>| {
            TokenVerifier::load(&ServiceAccountTokenSettings {
                audiences: vec!["a".into()],
                keys: keys.iter().map(|k| TokenKey::new(k)).collect(),
            })
            .unwrap_err()
            .to_string()
        };
        let err = load(vec!["/nonexistent/key.pem".into()]);
        assert!(
            err.starts_with("serviceAccountTokenSettings.keys[0] /nonexistent/key.pem"),
            "{err}"
        );
        let err = load(vec![r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#.into()]);
        assert!(err.contains("symmetric"), "{err}");
        let k = keys();
        let err = load(vec![write(&dir, "private.pem", &k.ed_private_pem)]);
        assert!(err.contains("expected \"PUBLIC KEY\""), "{err}");
    }

    /// RS256 with an RSA key from openssl (fast, unlike an unoptimised
    /// Rust RSA key generation).
    #[test]
    fn rs256_tokens_verify_with_an_rsa_public_key() {
        let openssl = Path::new("/usr/bin/openssl");
        if !openssl.exists() {
            eprintln!("note: /usr/bin/openssl not installed; test skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("rsa.pem");
        let public = dir.path().join("rsa.pub.pem");
        for args in [
            vec![
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                private.to_str().unwrap(),
            ],
            vec![
                "pkey",
                "-in",
                private.to_str().unwrap(),
                "-pubout",
                "-out",
                public.to_str().unwrap(),
            ],
        ] {
            assert!(std::process::Command::new(openssl)
                .args(&args)
                .status()
                .unwrap()
                .success());
        }
        let v = verifier(vec![public.to_str().unwrap().to_owned()]);
        let private_pem = std::fs::read_to_string(&private).unwrap();
        let token = sign(
            Algorithm::RS256,
            &private_pem,
            sat_claims(secs(now()) + 60),
            None,
        );
        v.verify(&token, now()).unwrap();
    }

    #[test]
    fn no_keys_reject_every_token() {
        let k = keys();
        let v = verifier(Vec::new());
        let token = sign(
            Algorithm::EdDSA,
            &k.ed_private_pem,
            sat_claims(secs(now()) + 60),
            None,
        );
        assert!(v.verify(&token, now()).is_err());
    }
}
