//! Token authentication: HS256 JWTs that name the rooms a client may open and how.
//!
//! Off unless a secret is configured. With a secret, every WebSocket upgrade and every
//! non-health HTTP request carries a token (`?token=` or `Authorization: Bearer`), checked
//! before any room is loaded. Signatures are verified by `jsonwebtoken` (HMAC verification
//! compares in constant time).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use thiserror::Error;

/// What a token allows in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum Access {
    /// Sync and send awareness; document writes are refused.
    #[default]
    #[serde(rename = "ro")]
    ReadOnly,
    #[serde(rename = "rw")]
    ReadWrite,
}

/// The claims ycord reads. Unknown claims are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    /// Expiry, seconds since the epoch (required).
    pub exp: u64,
    /// The user, for logs.
    #[serde(default)]
    pub sub: Option<String>,
    /// Rooms this token opens; an entry ending in `*` matches every room with that prefix.
    #[serde(default)]
    pub rooms: Vec<String>,
    /// `"rw"` or `"ro"` (the default).
    #[serde(default)]
    pub mode: Access,
    /// Grants the HTTP API.
    #[serde(default)]
    pub admin: bool,
}

impl Claims {
    /// Whether the token's `rooms` cover `room`.
    pub fn allows_room(&self, room: &str) -> bool {
        self.rooms
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => room.starts_with(prefix),
                None => pattern == room,
            })
    }

    /// When the token expires.
    pub fn expires_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.exp)
    }
}

/// Why a request was refused. `Unauthenticated` maps to 401, `Forbidden` to 403.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("invalid token")]
    Invalid,
    #[error("token expired")]
    Expired,
    #[error("token does not grant this room")]
    RoomNotAllowed,
    #[error("token is not an admin token")]
    NotAdmin,
}

impl AuthError {
    /// Whether the client failed to prove who it is (401) rather than lacking a right (403).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            AuthError::Missing | AuthError::Invalid | AuthError::Expired
        )
    }
}

/// Verifies tokens against the configured secret.
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator { .. }")
    }
}

impl Authenticator {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        // RFC 7519: a token is expired once `now >= exp`; the crate's default accepts it
        // during the second of `exp` itself, which is when a session is closed for expiry.
        validation.reject_tokens_expiring_in_less_than = 1;
        validation.set_required_spec_claims(&["exp"]);
        Authenticator {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Verifies the signature and expiry of a token and returns its claims.
    pub fn verify(&self, token: Option<&str>) -> Result<Claims, AuthError> {
        let token = token
            .filter(|token| !token.is_empty())
            .ok_or(AuthError::Missing)?;
        jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map(|data| data.claims)
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            })
    }

    /// Verifies a token for opening `room`.
    pub fn authorize_room(&self, token: Option<&str>, room: &str) -> Result<Claims, AuthError> {
        let claims = self.verify(token)?;
        if claims.allows_room(room) {
            Ok(claims)
        } else {
            Err(AuthError::RoomNotAllowed)
        }
    }

    /// Verifies a token for the HTTP API.
    pub fn authorize_admin(&self, token: Option<&str>) -> Result<Claims, AuthError> {
        let claims = self.verify(token)?;
        if claims.admin {
            Ok(claims)
        } else {
            Err(AuthError::NotAdmin)
        }
    }
}

/// The token of a request: the `token` query parameter, else an `Authorization: Bearer` header.
pub fn token_from_request<'a>(
    query: Option<&'a str>,
    authorization: Option<&'a str>,
) -> Option<String> {
    let from_query = query.and_then(|query| {
        url_query_pairs(query).find_map(|(key, value)| (key == "token").then_some(value))
    });
    from_query.or_else(|| {
        authorization
            .and_then(|header| {
                header
                    .strip_prefix("Bearer ")
                    .or_else(|| header.strip_prefix("bearer "))
            })
            .map(|token| token.trim().to_owned())
    })
}

fn url_query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |text: &str| {
            percent_encoding::percent_decode_str(&text.replace('+', " "))
                .decode_utf8()
                .ok()
                .map(|text| text.into_owned())
        };
        Some((decode(key)?, decode(value)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    fn token(secret: &[u8], claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn in_an_hour() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600
    }

    #[test]
    fn rooms_match_exactly_or_by_prefix() {
        let auth = Authenticator::new(b"secret");
        let good = token(
            b"secret",
            json!({"exp": in_an_hour(), "rooms": ["doc", "file:text/*"], "mode": "rw"}),
        );
        let claims = auth.authorize_room(Some(&good), "doc").unwrap();
        assert_eq!(claims.mode, Access::ReadWrite);
        assert!(auth.authorize_room(Some(&good), "file:text/42").is_ok());
        assert_eq!(
            auth.authorize_room(Some(&good), "doc2").unwrap_err(),
            AuthError::RoomNotAllowed
        );
        assert_eq!(
            auth.authorize_room(Some(&good), "file:other").unwrap_err(),
            AuthError::RoomNotAllowed
        );
    }

    #[test]
    fn forged_expired_and_missing_tokens_are_refused() {
        let auth = Authenticator::new(b"secret");
        let forged = token(b"other", json!({"exp": in_an_hour(), "rooms": ["*"]}));
        assert_eq!(auth.verify(Some(&forged)).unwrap_err(), AuthError::Invalid);
        let expired = token(b"secret", json!({"exp": 1_000_000, "rooms": ["*"]}));
        assert_eq!(auth.verify(Some(&expired)).unwrap_err(), AuthError::Expired);
        let no_exp = token(b"secret", json!({"rooms": ["*"]}));
        assert_eq!(auth.verify(Some(&no_exp)).unwrap_err(), AuthError::Invalid);
        assert_eq!(auth.verify(None).unwrap_err(), AuthError::Missing);
        assert_eq!(
            auth.verify(Some("garbage")).unwrap_err(),
            AuthError::Invalid
        );
        let unsigned = format!("{}.", forged.rsplit_once('.').unwrap().0);
        assert_eq!(
            auth.verify(Some(&unsigned)).unwrap_err(),
            AuthError::Invalid
        );
    }

    #[test]
    fn mode_defaults_to_read_only_and_admin_to_false() {
        let auth = Authenticator::new(b"secret");
        let plain = token(b"secret", json!({"exp": in_an_hour(), "rooms": ["*"]}));
        let claims = auth.verify(Some(&plain)).unwrap();
        assert_eq!(claims.mode, Access::ReadOnly);
        assert_eq!(
            auth.authorize_admin(Some(&plain)).unwrap_err(),
            AuthError::NotAdmin
        );
    }

    #[test]
    fn tokens_come_from_the_query_or_the_bearer_header() {
        assert_eq!(
            token_from_request(Some("a=1&token=abc"), None).as_deref(),
            Some("abc")
        );
        assert_eq!(
            token_from_request(None, Some("Bearer xyz")).as_deref(),
            Some("xyz")
        );
        assert_eq!(
            token_from_request(Some("token=q"), Some("Bearer h")).as_deref(),
            Some("q")
        );
        assert_eq!(token_from_request(Some("a=1"), Some("Basic zzz")), None);
    }
}
