//! The web console at `/console/`: the static files of `console/` (HTML, CSS, ES modules),
//! compiled into the binary, served with their content type, an ETag (`no-cache`: the browser
//! revalidates, a 304 costs a few bytes) and a strict Content-Security-Policy (only this
//! origin's scripts, styles and API; no inline script, nothing from outside). The console
//! reads everything through the `/v1` API with the key the person signed in with (docs/console.md);
//! these files hold no data and need no credential.
//!
//! - `GET /console` -> 308 to `/console/`
//! - `GET /console/` -> `index.html`
//! - `GET /console/{path}` -> that file, or 404 JSON `{"error": ...}` naming the path

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};

/// One embedded file: its path under `console/`, content type and bytes.
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $ty:literal) => {
        Asset {
            path: $path,
            content_type: $ty,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/console/", $path)),
        }
    };
}

/// Every file of `console/` (a unit test checks the folder and this list agree).
pub const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("js/api.js", "text/javascript; charset=utf-8"),
    asset!("js/app.js", "text/javascript; charset=utf-8"),
    asset!("js/chart.js", "text/javascript; charset=utf-8"),
    asset!("js/decimal.js", "text/javascript; charset=utf-8"),
    asset!("js/dom.js", "text/javascript; charset=utf-8"),
    asset!("js/format.js", "text/javascript; charset=utf-8"),
    asset!("js/router.js", "text/javascript; charset=utf-8"),
    asset!("js/session.js", "text/javascript; charset=utf-8"),
    asset!("js/pages/alerts.js", "text/javascript; charset=utf-8"),
    asset!("js/pages/credits.js", "text/javascript; charset=utf-8"),
    asset!("js/pages/live.js", "text/javascript; charset=utf-8"),
    asset!("js/pages/operator.js", "text/javascript; charset=utf-8"),
    asset!("js/pages/thresholds.js", "text/javascript; charset=utf-8"),
    asset!("js/pages/transactions.js", "text/javascript; charset=utf-8"),
    asset!("js/pages/usage.js", "text/javascript; charset=utf-8"),
];

/// The policy every console answer carries: scripts, styles, images and API calls from this
/// origin only; no inline script or style sheet, no plugins, no framing, no form posts
/// (forms are handled by the scripts), no `<base>`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /console`, `/console/` and `/console/{*path}`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route(
            "/console/",
            get(|headers: HeaderMap| async move { answer("index.html", &headers) }),
        )
        .route(
            "/console/{*path}",
            get(|Path(path): Path<String>, headers: HeaderMap| async move {
                answer(&path, &headers)
            }),
        )
}

/// Strong ETags of the assets (xxh3 of the bytes), computed once.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| format!("\"{:016x}\"", xxhash_rust::xxh3::xxh3_64(a.body)))
            .collect()
    })
}

/// The answer for one path under `/console/`: the file (200), 304 when `If-None-Match`
/// names its ETag, or 404.
pub fn answer(path: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.path == path) else {
        let mut r = (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({
                "error": format!("no console file {:?}; the console starts at /console/", crate::rejection::excerpt(path))
            })),
        )
            .into_response();
        secure(r.headers_mut());
        return r;
    };
    let asset = &ASSETS[i];
    let etag = &etags()[i];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut r = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secure(h);
    r
}

fn secure(h: &mut HeaderMap) {
    for (k, v) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h.insert(
        header::HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &std::path::Path, base: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                files(&p, base, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }

    #[test]
    fn every_console_file_is_embedded_and_nothing_else() {
        let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
        let mut on_disk = Vec::new();
        files(&base, &base, &mut on_disk);
        on_disk.retain(|p| !p.starts_with("test/"));
        on_disk.sort();
        let mut embedded: Vec<String> = ASSETS.iter().map(|a| a.path.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded, "console/ and ASSETS differ");
    }

    #[test]
    fn nothing_is_loaded_from_outside() {
        let handler = regex::Regex::new(r"(?i)\son[a-z]+\s*=").unwrap();
        for a in ASSETS {
            let text = String::from_utf8_lossy(a.body);
            for bad in ["http://", "https://", "//cdn", "@import", "url(http"] {
                // The SVG namespace is an identifier, not a fetch.
                let hits = text
                    .match_indices(bad)
                    .filter(|(i, _)| !text[*i..].starts_with("http://www.w3.org/"))
                    .count();
                assert_eq!(hits, 0, "{} mentions {bad}", a.path);
            }
            if a.path.ends_with(".html") {
                assert!(!text.contains("<script>"), "{}: inline script", a.path);
                assert!(!text.contains(" style="), "{}: inline style", a.path);
                assert!(!handler.is_match(&text), "{}: inline event handler", a.path);
            }
        }
    }

    #[test]
    fn files_answer_with_type_etag_and_policy_and_304_when_fresh() {
        let r = answer("js/decimal.js", &HeaderMap::new());
        assert_eq!(r.status(), StatusCode::OK);
        let h = r.headers();
        assert_eq!(h[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
        assert_eq!(h[header::CACHE_CONTROL], "no-cache");
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let etag = h[header::ETAG].clone();
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, etag.clone());
        let r = answer("js/decimal.js", &again);
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(r.headers()[header::ETAG], etag);
        let mut stale = HeaderMap::new();
        stale.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"0\""));
        assert_eq!(answer("js/decimal.js", &stale).status(), StatusCode::OK);
        let r = answer("../Cargo.toml", &HeaderMap::new());
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            r.headers()[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY
        );
        assert_eq!(
            answer("index.html", &HeaderMap::new()).headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
    }
}
