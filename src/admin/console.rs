//! The web console at `GET /`: one page, its script and its style, embedded in the binary (the
//! gateway may have no internet), and the QR code of the mobile authorization link.
//!
//! The page holds no data of its own: signed in with the admin token (kept in the tab's
//! `sessionStorage` and sent as the bearer, never a cookie that a cross-site request could
//! ride), it reads the admin JSON routes. The CSP allows only the gateway's own script, so
//! nothing a WeChat account's name could carry ever runs.

use crate::reply::Reply;
use bytes::Bytes;
use qrcode::render::svg;
use qrcode::{EcLevel, QrCode};

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// Own script and style only; images also as `data:` (the QR code arrives as SVG text in JSON);
/// never framed, so a page elsewhere cannot overlay the buttons.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub(super) fn is_asset(path: &str) -> bool {
    matches!(path, "/" | "/console.js" | "/console.css")
}

pub(super) fn asset(path: &str) -> Reply {
    let (content_type, body) = match path {
        "/console.js" => ("text/javascript; charset=utf-8", SCRIPT),
        "/console.css" => ("text/css; charset=utf-8", STYLE),
        _ => ("text/html; charset=utf-8", INDEX),
    };
    Reply { content_type, body: Bytes::from_static(body.as_bytes()), extra: SECURITY_HEADERS, ..Reply::text(200, "") }
}

/// The console's pages may run only their own script and style, in no frame, sending no referrer.
const SECURITY_HEADERS: &[(&str, &str)] = &[
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
];

/// `text` as a QR code in SVG (the lowest error correction: a long link stays a coarse code
/// that a phone reads off a laptop screen), about 240 px wide with its quiet zone; `None` if it is too long
/// for any QR code (a link never is).
pub(super) fn qr_svg(text: &str) -> Option<String> {
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::L).ok()?;
    Some(code.render::<svg::Color<'_>>().min_dimensions(240, 240).quiet_zone(true).build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_link_as_an_svg_path() {
        let svg = qr_svg("https://mp.weixin.qq.com/safe/bindcomponent?action=bindcomponent&no_scan=1").unwrap();
        assert!(svg.contains("<svg") && svg.contains("<path") && svg.ends_with("</svg>"), "{svg}");
        assert!(qr_svg(&"x".repeat(8000)).is_none());
    }

    #[test]
    fn serves_the_page_with_its_policy_and_nothing_else() {
        let page = asset("/");
        let head = page.header().unwrap();
        assert_eq!(head.headers["cache-control"], "no-store");
        assert!(head.headers["content-security-policy"].to_str().unwrap().starts_with("default-src 'self'"));
        assert!(String::from_utf8_lossy(&page.body).contains("console.js"));
        assert_eq!(asset("/console.js").header().unwrap().headers["content-type"], "text/javascript; charset=utf-8");
        assert!(!is_asset("/console"));
        // What the gateway shows comes from WeChat (a nick name is user input): text only.
        for markup in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("] {
            assert!(!SCRIPT.contains(markup), "console.js uses {markup}");
        }
        assert!(!is_asset("/admin/"));
    }
}
