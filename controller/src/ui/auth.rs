//! Signing in to the console with an API token, and the extractor every page takes.
//!
//! The token is checked exactly as `api::auth::Caller` checks a bearer token (any role may
//! read the console) and kept in the `berth_token` cookie: `HttpOnly` (no script reads
//! it), `Secure` (HTTPS only), `SameSite=Strict` (no other site's page sends it) and
//! `Path=/ui` (never sent to the API). It is looked up again on every request, so a
//! revoked token ends its sessions at once.

use super::page::{page, Nav, UiError};
use crate::api::AppState;
use crate::pki::hash_secret;
use crate::store::ApiPrincipal;
use axum::extract::{Form, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use cookie::{Cookie, SameSite};
use maud::{html, Markup};

/// The session cookie's name.
pub const COOKIE: &str = "berth_token";

/// Longer than any token berth issues: refused without a lookup.
const MAX_TOKEN_LEN: usize = 256;

/// A signed-in console user: the API token's principal behind the cookie. A request
/// without a valid one is sent to the login page (303), its stale cookie cleared.
pub struct Viewer(pub ApiPrincipal);

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Response> {
        let Some(token) = cookie_token(&parts.headers) else {
            return Err(Redirect::to("/ui/login").into_response());
        };
        match principal(st, &token).await {
            // Every role (viewer, operator, admin) may read everything the console shows.
            Ok(Some(p)) => Ok(Viewer(p)),
            Ok(None) => {
                Err(([(header::SET_COOKIE, removal())], Redirect::to("/ui/login")).into_response())
            }
            Err(e) => Err(e.into_response()),
        }
    }
}

/// The token's principal, if it is a known, unrevoked API token.
async fn principal(st: &AppState, token: &str) -> Result<Option<ApiPrincipal>, UiError> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Ok(None);
    }
    Ok(st.store.api_principal(&hash_secret(token)).await?)
}

/// The session cookie's value, if the request has one.
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE)
        .map(|c| c.value().to_string())
}

/// How long a console session lasts (also one a browser restores after a restart).
const SESSION_HOURS: i64 = 8;

/// `Set-Cookie` for a session holding `token`, for [`SESSION_HOURS`].
fn session(token: &str) -> String {
    Cookie::build((COOKIE, token))
        .path("/ui")
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Strict)
        .max_age(cookie::time::Duration::hours(SESSION_HOURS))
        .build()
        .to_string()
}

/// Whether a form post comes from a console page: a browser names the page's origin in
/// `Origin`, which must be this controller (`https://` + the host it was asked as). A
/// post without `Origin` (not a browser, or a very old one) is let through: SameSite
/// keeps the cookie from other sites' requests anyway; this stops another site signing a
/// browser in with a token of its choosing, or out.
fn same_origin(headers: &HeaderMap, uri: &axum::http::Uri) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()));
    match (origin.to_str(), host) {
        (Ok(o), Some(h)) => o == format!("https://{h}"),
        _ => false,
    }
}

fn cross_site() -> Response {
    (
        StatusCode::FORBIDDEN,
        "a console form posted from another site is refused\n",
    )
        .into_response()
}

/// `Set-Cookie` that removes the session cookie.
fn removal() -> String {
    let mut c = Cookie::build((COOKIE, ""))
        .path("/ui")
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Strict)
        .build();
    c.make_removal();
    c.to_string()
}

/// `GET /ui/login`.
pub async fn form() -> Markup {
    login_page(None)
}

#[derive(serde::Deserialize)]
pub struct LoginForm {
    token: String,
}

/// `POST /ui/login`: a known token sets the session cookie and goes to the clusters; any
/// other answer is the login page again, 401.
pub async fn login(
    State(st): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Form(f): Form<LoginForm>,
) -> Response {
    if !same_origin(&headers, &uri) {
        return cross_site();
    }
    let token = f.token.trim();
    match principal(&st, token).await {
        Ok(Some(p)) => {
            tracing::info!(token = %p.name, role = p.role.as_str(), "console sign-in");
            ([(header::SET_COOKIE, session(token))], Redirect::to("/ui/")).into_response()
        }
        Ok(None) => (
            StatusCode::UNAUTHORIZED,
            login_page(Some("This token is unknown or revoked.")),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /ui/logout`: forgets the session cookie.
pub async fn logout(headers: HeaderMap, uri: axum::http::Uri) -> Response {
    if !same_origin(&headers, &uri) {
        return cross_site();
    }
    ([(header::SET_COOKIE, removal())], Redirect::to("/ui/login")).into_response()
}

fn login_page(error: Option<&str>) -> Markup {
    let body = html! {
        section.login {
            h1 { "Sign in" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action="/ui/login" {
                label for="token" { "API token" }
                input #token type="password" name="token" required autocomplete="off" autofocus;
                button type="submit" { "Sign in" }
            }
            p.hint {
                "Any API token will do; the console only reads. "
                code { "berth api-token create --name NAME --role viewer" }
                " makes one."
            }
        }
    };
    page(None, "Sign in", Nav::None, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_session_cookie_is_http_only_secure_and_strict() {
        let c = session("berth_viewer_abc");
        assert_eq!(
            c,
            "berth_token=berth_viewer_abc; HttpOnly; SameSite=Strict; Secure; Path=/ui; Max-Age=28800"
        );
        let r = removal();
        assert!(r.starts_with("berth_token=; "), "{r}");
        assert!(r.contains("Max-Age=0"), "{r}");
    }

    #[test]
    fn only_this_controller_posts_console_forms() {
        let uri: axum::http::Uri = "/ui/login".parse().unwrap();
        let with = |origin: Option<&'static str>| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static("10.0.0.1:7443"));
            if let Some(o) = origin {
                h.insert(header::ORIGIN, HeaderValue::from_static(o));
            }
            same_origin(&h, &uri)
        };
        assert!(with(Some("https://10.0.0.1:7443")));
        assert!(with(None));
        assert!(!with(Some("https://evil.example")));
        assert!(!with(Some("http://10.0.0.1:7443")));
        assert!(!with(Some("null")));
    }

    #[test]
    fn the_token_is_read_from_any_cookie_header() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=b; other=1"));
        h.append(
            header::COOKIE,
            HeaderValue::from_static("x=y; berth_token=t0k; z=1"),
        );
        assert_eq!(cookie_token(&h).as_deref(), Some("t0k"));
        assert_eq!(cookie_token(&HeaderMap::new()), None);
    }
}
