//! AppAPI's request authentication, both ways: checking the headers Nextcloud (through HaRP or
//! AppAPI's proxy) puts on every request to the app, and putting the same headers on the app's
//! own requests to Nextcloud, as a user (AppAPI impersonation) or as the app (empty user).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::HeaderMap;
use subtle::ConstantTimeEq;
use thiserror::Error;

/// The app's id, as AppAPI registered it.
pub const APP_ID_HEADER: &str = "ex-app-id";
/// The app's version.
pub const APP_VERSION_HEADER: &str = "ex-app-version";
/// AppAPI's version.
pub const AA_VERSION_HEADER: &str = "aa-version";
/// base64(`"<uid>:<APP_SECRET>"`).
pub const AUTHORIZATION_HEADER: &str = "authorization-app-api";

/// Why a request's AppAPI headers were refused (401, and nothing is loaded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AppApiError {
    #[error("missing AppAPI headers (EX-APP-ID, AUTHORIZATION-APP-API)")]
    Missing,
    #[error("EX-APP-ID names another app")]
    WrongApp,
    #[error("AUTHORIZATION-APP-API is not base64 of \"<user>:<secret>\"")]
    Malformed,
    #[error("AUTHORIZATION-APP-API carries a wrong secret")]
    WrongSecret,
}

impl AppApiError {
    /// The label of `ycord_auth_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            AppApiError::Missing => "appapi_missing",
            AppApiError::WrongApp => "appapi_wrong_app",
            AppApiError::Malformed => "appapi_malformed",
            AppApiError::WrongSecret => "appapi_wrong_secret",
        }
    }
}

/// Who a request authenticated by AppAPI comes from: a Nextcloud user id, or nobody (AppAPI's
/// own calls, `/init` and `/enabled`, and anonymous visitors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppApiUser(Option<String>);

impl AppApiUser {
    /// The Nextcloud user id; `None` for an anonymous request.
    pub fn id(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

/// The app's AppAPI credentials and the headers it signs with.
#[derive(Debug, Clone)]
pub struct AppApiCredentials {
    pub app_id: String,
    pub app_secret: String,
    pub app_version: String,
    pub aa_version: String,
}

impl AppApiCredentials {
    /// Checks the AppAPI headers of a request to the app. The secret is compared in constant
    /// time; the user is what precedes the first `:` of the decoded value.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<AppApiUser, AppApiError> {
        let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        let (Some(app_id), Some(authorization)) =
            (header(APP_ID_HEADER), header(AUTHORIZATION_HEADER))
        else {
            return Err(AppApiError::Missing);
        };
        if app_id != self.app_id {
            return Err(AppApiError::WrongApp);
        }
        let decoded = BASE64
            .decode(authorization.trim())
            .map_err(|_| AppApiError::Malformed)?;
        let colon = decoded
            .iter()
            .position(|&byte| byte == b':')
            .ok_or(AppApiError::Malformed)?;
        let (user, secret) = (&decoded[..colon], &decoded[colon + 1..]);
        if !bool::from(secret.ct_eq(self.app_secret.as_bytes())) {
            return Err(AppApiError::WrongSecret);
        }
        let user = std::str::from_utf8(user).map_err(|_| AppApiError::Malformed)?;
        Ok(AppApiUser((!user.is_empty()).then(|| user.to_owned())))
    }

    /// The four headers of a request from the app to Nextcloud as `user` (`""`: as the app).
    pub fn sign(&self, request: reqwest::RequestBuilder, user: &str) -> reqwest::RequestBuilder {
        let authorization = BASE64.encode(format!("{user}:{}", self.app_secret));
        request
            .header(APP_ID_HEADER, &self.app_id)
            .header(APP_VERSION_HEADER, &self.app_version)
            .header(AA_VERSION_HEADER, &self.aa_version)
            .header(AUTHORIZATION_HEADER, authorization)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials() -> AppApiCredentials {
        AppApiCredentials {
            app_id: "ycord".into(),
            app_secret: "s3cret".into(),
            app_version: "0.1.0".into(),
            aa_version: "32.0.0".into(),
        }
    }

    fn headers(app_id: &str, authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(APP_ID_HEADER, app_id.parse().expect("a header value"));
        headers.insert(
            AUTHORIZATION_HEADER,
            authorization.parse().expect("a header value"),
        );
        headers
    }

    #[test]
    fn the_user_is_what_precedes_the_first_colon() {
        let credentials = credentials();
        let signed = |value: &str| headers("ycord", &BASE64.encode(value));
        let alice = credentials.authenticate(&signed("alice:s3cret"));
        assert_eq!(alice.map(|user| user.0), Ok(Some("alice".to_owned())));
        let app = credentials.authenticate(&signed(":s3cret"));
        assert_eq!(app.map(|user| user.0), Ok(None));
        // The secret is everything after the first colon, colons included.
        let mut with_colon = credentials.clone();
        with_colon.app_secret = "a:b".into();
        let user = with_colon.authenticate(&signed("bob:a:b"));
        assert_eq!(user.map(|user| user.0), Ok(Some("bob".to_owned())));
    }

    #[test]
    fn missing_forged_or_foreign_headers_are_refused() {
        let credentials = credentials();
        assert_eq!(
            credentials.authenticate(&HeaderMap::new()),
            Err(AppApiError::Missing)
        );
        let wrong_app = headers("other", &BASE64.encode("alice:s3cret"));
        assert_eq!(
            credentials.authenticate(&wrong_app),
            Err(AppApiError::WrongApp)
        );
        let forged = headers("ycord", &BASE64.encode("alice:guess"));
        assert_eq!(
            credentials.authenticate(&forged),
            Err(AppApiError::WrongSecret)
        );
        let prefix = headers("ycord", &BASE64.encode("alice:s3cre"));
        assert_eq!(
            credentials.authenticate(&prefix),
            Err(AppApiError::WrongSecret)
        );
        for garbage in ["not base64!", &BASE64.encode("no colon")] {
            assert_eq!(
                credentials.authenticate(&headers("ycord", garbage)),
                Err(AppApiError::Malformed)
            );
        }
    }
}
