//! JSON Web Tokens from an identity system: RS256, ES256 or EdDSA signatures
//! verified against the public keys of a JWKS file (`[auth] jwks_file`), an
//! `exp` required, optional issuer and audience checks, and the claims
//! `role` (`view`/`admin`) and `cameras` (a list; absent = every camera).
//! HMAC keys are refused: a shared secret has no place in a key file.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::{Principal, Role};

/// The claims infercast reads.
#[derive(Debug, Deserialize)]
struct Claims {
    role: Role,
    #[serde(default)]
    cameras: Option<Vec<String>>,
    #[serde(default)]
    sub: Option<String>,
}

struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// The keys of a JWKS file and the checks every token must pass.
pub struct JwtVerifier {
    keys: Vec<Key>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl JwtVerifier {
    /// Reads `path` (a JWKS: `{"keys": [...]}`). Errors name the file and the
    /// key that cannot be used.
    pub fn load(path: &Path, issuer: Option<String>, audience: Option<String>) -> Result<JwtVerifier, String> {
        let at = |reason: String| format!("auth.jwks_file {}: {reason}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| at(e.to_string()))?;
        let set: JwkSet = serde_json::from_str(&text).map_err(|e| at(format!("not a JWKS ({e})")))?;
        let mut keys = Vec::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            let algorithm = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
                AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                _ => return Err(at(format!("key {i}: only RSA (RS256), P-256 (ES256) and Ed25519 (EdDSA) keys"))),
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| at(format!("key {i}: {e}")))?;
            keys.push(Key { kid: jwk.common.key_id.clone(), algorithm, key });
        }
        if keys.is_empty() {
            return Err(at("no keys".into()));
        }
        Ok(JwtVerifier { keys, issuer, audience })
    }

    /// The principal of a valid token; `Err` says why not (for debug logs: it
    /// never holds the token).
    pub fn verify(&self, token: &str) -> Result<Principal, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("bad JWT header: {e}"))?;
        let candidates =
            self.keys.iter().filter(|k| k.algorithm == header.alg && (header.kid.is_none() || k.kid == header.kid));
        let mut last =
            format!("no {:?} key{}", header.alg, header.kid.as_ref().map(|k| format!(" {k:?}")).unwrap_or_default());
        for k in candidates {
            let mut v = Validation::new(k.algorithm);
            v.set_required_spec_claims(&["exp"]);
            v.leeway = 30;
            match &self.issuer {
                Some(iss) => v.set_issuer(&[iss]),
                None => v.iss = None,
            }
            match &self.audience {
                Some(aud) => v.set_audience(&[aud]),
                None => v.validate_aud = false,
            }
            match jsonwebtoken::decode::<Claims>(token, &k.key, &v) {
                Ok(data) => {
                    let c = data.claims;
                    let cameras = c.cameras.map(|list| Arc::new(list.into_iter().collect::<HashSet<_>>()));
                    let name = format!("jwt:{}", c.sub.unwrap_or_else(|| "?".into()));
                    return Ok(Principal { name: name.into(), role: c.role, cameras, authenticated: true });
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }
}
