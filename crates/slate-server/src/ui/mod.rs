//! The web dashboard of `slate serve`, under `/ui/` (docs/operations.md,
//! "Dashboard"): server-rendered HTML pages, read-only, for the
//! administrator. No JavaScript: pages are links and plain GET forms, so
//! they work from the keyboard and under a Content-Security-Policy that
//! allows nothing but this server's stylesheet.
//!
//! [`session`] decides who is an administrator (bearer token or session
//! cookie), [`html`] escapes everything machines report, [`pages`] renders
//! the machines, channels and machine pages from the fleet store
//! (`crate::fleet::view`), [`rollouts`] the phased rollouts. The router is [`router`], merged into
//! `crate::app` in one place.

pub mod html;
pub mod pages;
pub mod rollouts;
pub mod session;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use crate::AppState;
use html::esc;

/// The pages of the navigation bar, in order: path and label.
pub const NAV: &[(&str, &str)] = &[
    ("/ui/", "Machines"),
    ("/ui/channels", "Channels"),
    (rollouts::PATH, "Rollouts"),
];

/// What every page allows the browser to do: load this server's
/// stylesheet and submit forms to it; no script, no frames, no other
/// origin. Machine-reported text is escaped anyway; this is the second
/// wall.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                       frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { redirect("/ui/") }))
        .route("/ui/", get(pages::machines))
        .route("/ui/channels", get(pages::channels))
        .route("/ui/machine/{id}", get(pages::machine))
        .route(rollouts::PATH, get(rollouts::rollouts))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/style.css", get(style))
}

/// The stylesheet (one file, compiled in).
const STYLE: &str = include_str!("style.css");

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        STYLE,
    )
        .into_response()
}

/// A 303 to `to` (a path of this server).
pub fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    secure_headers(&mut r);
    r
}

/// Headers every dashboard answer carries: no caching of fleet data, the
/// CSP, no framing, no sniffing, no referrer to other sites (machine ids
/// are in URLs).
fn secure_headers(r: &mut Response) {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Same-origin: other sites get no referrer, while our own forms keep
    // their Origin header (with no-referrer a browser sends `null`).
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
}

/// A whole page: `title`, the navigation bar (`current` is the path of the
/// page it marks; `None` on the login page, which has no bar) and `body`,
/// already HTML.
pub fn page(status: StatusCode, title: &str, current: Option<&str>, body: &str) -> Response {
    let mut out = String::with_capacity(body.len() + 1024);
    out.push_str("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    out.push_str(&format!("<title>{} · slate</title>", esc(title)));
    out.push_str("<link rel=\"stylesheet\" href=\"/ui/style.css\"></head><body>");
    out.push_str("<a class=\"skip\" href=\"#main\">Skip to content</a>");
    out.push_str("<header><nav aria-label=\"Main\"><span class=\"brand\">slate fleet</span>");
    if let Some(current) = current {
        out.push_str("<ul>");
        for (path, label) in NAV {
            let cur = if *path == current { " aria-current=\"page\"" } else { "" };
            out.push_str(&format!("<li><a href=\"{path}\"{cur}>{label}</a></li>"));
        }
        out.push_str("</ul>");
        out.push_str(
            "<form method=\"post\" action=\"/ui/logout\" class=\"logout\"><button type=\"submit\">Log out</button></form>",
        );
    }
    out.push_str("</nav></header><main id=\"main\" tabindex=\"-1\">");
    out.push_str(&format!("<h1>{}</h1>", esc(title)));
    out.push_str(body);
    out.push_str("</main></body></html>\n");
    let mut r = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], out).into_response();
    secure_headers(&mut r);
    r
}

/// An error page (with the bar when the caller is an administrator).
pub fn error_page(status: StatusCode, nav: Option<&str>, why: &str) -> Response {
    page(
        status,
        status.canonical_reason().unwrap_or("Error"),
        nav,
        &format!("<p class=\"error\" role=\"alert\">{}</p>", esc(why)),
    )
}

/// Let the request through if it is an administrator's, else the answer
/// to give: a redirect to the login page for a browser without a valid
/// session, 401 for a wrong bearer token, 403 when the server has no
/// administrator tokens at all.
pub async fn require_admin(st: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    let Some(admin) = st.admin.clone() else {
        return Err(error_page(
            StatusCode::FORBIDDEN,
            None,
            "This server has no administrator credential: start slate serve with --admin-token-file FILE \
             (`slate fleet admin-token FILE` writes one).",
        ));
    };
    if headers.contains_key(header::AUTHORIZATION) {
        return match crate::auth::require_admin(st, headers).await {
            Ok(()) => Ok(()),
            Err(e) => Err(error_page(StatusCode::UNAUTHORIZED, None, &e.to_string())),
        };
    }
    let Some(value) = session::cookie(headers) else {
        return Err(redirect("/ui/login"));
    };
    let ok = tokio::task::spawn_blocking(move || session::valid(&admin, &value, session::now()))
        .await
        .map_err(|e| error_page(StatusCode::INTERNAL_SERVER_ERROR, None, &e.to_string()))?;
    match ok {
        Ok(true) => Ok(()),
        Ok(false) => {
            // Expired, or its token was removed: log in again.
            let mut r = redirect("/ui/login");
            if let Ok(v) = HeaderValue::from_str(&session::clear_cookie()) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            Err(r)
        }
        Err(e) => {
            tracing::error!("{e:#}");
            Err(error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                None,
                "The administrator token file cannot be read; the server log says why.",
            ))
        }
    }
}

fn login_form(error: Option<&str>) -> String {
    let mut b = String::new();
    if let Some(e) = error {
        b.push_str(&format!(
            "<p class=\"error\" role=\"alert\" id=\"login-error\">{}</p>",
            esc(e)
        ));
    }
    b.push_str(
        "<form method=\"post\" action=\"/ui/login\" class=\"login\">\
         <p>Paste an administrator token (a line of the file slate serve's <code>--admin-token-file</code> names).</p>\
         <label for=\"token\">Administrator token</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required \
         spellcheck=\"false\" size=\"72\" autofocus",
    );
    if error.is_some() {
        b.push_str(" aria-describedby=\"login-error\"");
    }
    b.push_str("><button type=\"submit\">Log in</button></form>");
    b
}

async fn login_page() -> Response {
    page(StatusCode::OK, "Log in", None, &login_form(None))
}

/// The login form's body.
#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// Whether a state-changing POST comes from a page of this server: the
/// `Origin` a browser sends must name this host, and `Sec-Fetch-Site`,
/// when sent, must say same-origin. Clients that send neither (curl) are
/// not browsers a forged form could drive.
fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site != "same-origin" && site != "none" {
            return false;
        }
    }
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    match headers.get(header::ORIGIN).map(|v| v.to_str()) {
        None => true,
        // A browser whose referrer policy hides the origin says "null";
        // its Sec-Fetch-Site must then vouch for the form.
        Some(Ok("null")) => site == Some("same-origin"),
        Some(Ok(origin)) => {
            let rest = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            matches!((rest, host), (Some(r), Some(h)) if r.eq_ignore_ascii_case(h))
        }
        Some(Err(_)) => false,
    }
}

/// Whether the browser reached us over https: its `Origin` says so, or a
/// proxy in front says so (`X-Forwarded-Proto`; only ever used to add
/// `Secure` to the cookie, so a wrong one can only make it stricter).
fn over_https(headers: &HeaderMap) -> bool {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    h("origin").starts_with("https://") || h("x-forwarded-proto").eq_ignore_ascii_case("https")
}

async fn login(State(st): State<AppState>, headers: HeaderMap, Form(form): Form<LoginForm>) -> Response {
    if !same_origin(&headers) {
        return error_page(
            StatusCode::FORBIDDEN,
            None,
            "The login form was sent from another site.",
        );
    }
    let token = form.token.trim().to_string();
    let mut auth = HeaderMap::new();
    let checked = match HeaderValue::from_str(&format!("Bearer {token}")) {
        Ok(v) if crate::auth::is_token(&token) => {
            auth.insert(header::AUTHORIZATION, v);
            crate::auth::require_admin(&st, &auth).await.is_ok()
        }
        _ => false,
    };
    if !checked {
        return page(
            StatusCode::UNAUTHORIZED,
            "Log in",
            None,
            &login_form(Some("That is not an administrator token of this server.")),
        );
    }
    let value = session::issue(&token, session::now() + session::SESSION_SECS);
    let mut r = redirect("/ui/");
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&value, over_https(&headers))) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn logout(headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return error_page(
            StatusCode::FORBIDDEN,
            None,
            "The logout form was sent from another site.",
        );
    }
    let mut r = redirect("/ui/login");
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie()) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[cfg(test)]
mod tests;
