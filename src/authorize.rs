//! The authorization flow's links and pages: the PC page (componentloginpage) and the mobile
//! link (bindcomponent), each with a fresh pre_auth_code and a `redirect_uri` back to
//! `/wxgate/authorize/done` on the gateway's public address.
//!
//! See PROTOCOL.md §2.4 and
//! <https://developers.weixin.qq.com/doc/oplatform/Third-party_Platforms/2.0/api/Before_Develop/Authorization_Process_Technical_Description.html>.

use crate::tokens::{TokenError, TokenService};
use crate::AppId;
use serde::Serialize;
use url::Url;

/// auth_type 3: official accounts and mini programs alike.
const AUTH_TYPE_ALL: &str = "3";

#[derive(Debug, Clone, Serialize)]
pub struct Links {
    pub pc_url: String,
    pub mobile_url: String,
}

#[derive(Debug, Clone)]
pub struct AuthorizeLinks {
    component: AppId,
    mp_base_url: Url,
    public_base_url: Url,
}

impl AuthorizeLinks {
    pub fn new(component: AppId, mp_base_url: Url, public_base_url: Url) -> Self {
        Self { component, mp_base_url, public_base_url }
    }

    /// Both links, each with its own pre_auth_code (a code can be used once).
    pub async fn fresh(&self, tokens: &TokenService, app_redirect: Option<&Url>) -> Result<Links, TokenError> {
        let redirect_uri = self.redirect_uri(app_redirect);
        let pc = tokens.component().pre_auth_code().await?;
        let mobile = tokens.component().pre_auth_code().await?;
        Ok(Links {
            pc_url: self.link("cgi-bin/componentloginpage", &[], pc.value.expose(), &redirect_uri, ""),
            mobile_url: self.link(
                "safe/bindcomponent",
                &[("action", "bindcomponent"), ("no_scan", "1")],
                mobile.value.expose(),
                &redirect_uri,
                "#wechat_redirect",
            ),
        })
    }

    /// `/wxgate/authorize/done` on the public address, carrying the app's own redirect as a
    /// query value. WeChat appends `auth_code` after it; a `#` anywhere would swallow that, so
    /// the app's URL is percent-encoded whole.
    pub fn redirect_uri(&self, app_redirect: Option<&Url>) -> String {
        let mut done =
            self.public_base_url.join("wxgate/authorize/done").expect("a relative path joins any http(s) base");
        if let Some(app) = app_redirect {
            done.query_pairs_mut().append_pair("redirect", app.as_str());
        }
        done.to_string()
    }

    fn link(
        &self,
        path: &str,
        leading: &[(&str, &str)],
        pre_auth_code: &str,
        redirect_uri: &str,
        fragment: &str,
    ) -> String {
        let mut url = self.mp_base_url.join(path).expect("a relative path joins any http(s) base");
        url.query_pairs_mut()
            .extend_pairs(leading)
            .append_pair("component_appid", &self.component.as_str())
            .append_pair("pre_auth_code", pre_auth_code)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("auth_type", AUTH_TYPE_ALL);
        format!("{url}{fragment}")
    }
}

/// Where to send the browser after authorization: an absolute http(s) URL, or nothing.
pub fn parse_redirect(raw: Option<&str>) -> Result<Option<Url>, &'static str> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else { return Ok(None) };
    let url = Url::parse(raw).map_err(|_| "redirect must be an absolute http(s) URL")?;
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(Some(url)),
        _ => Err("redirect must be an absolute http(s) URL"),
    }
}

/// The app's redirect with the authorizer appended, so that the app learns who authorized.
pub fn done_redirect(app: &Url, authorizer: &AppId) -> String {
    let mut url = app.clone();
    url.query_pairs_mut().append_pair("authorizer_appid", &authorizer.as_str());
    url.to_string()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{title}</title>\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <style>body{{font-family:sans-serif;max-width:36em;margin:3em auto;padding:0 1em;line-height:1.6}}\
         a.button{{display:inline-block;padding:.6em 1.2em;margin:.3em 0;border-radius:4px;background:#07c160;color:#fff;text-decoration:none}}</style>\
         </head><body>{body}</body></html>",
        title = escape(title)
    )
}

/// The start page: a link for a desktop browser (QR code) and one for WeChat on a phone.
pub fn start_page(links: &Links) -> String {
    page(
        "授权公众号或小程序 · Authorize",
        &format!(
            "<h1>授权公众号或小程序</h1><p>Authorize your official account or mini program.</p>\
             <p><a class=\"button\" href=\"{pc}\">电脑上扫码授权 · On a computer</a></p>\
             <p><a class=\"button\" href=\"{mobile}\">在微信中授权 · In WeChat on a phone</a></p>\
             <p><small>Each link works once and for about ten minutes; reload this page for new ones.</small></p>",
            pc = escape(&links.pc_url),
            mobile = escape(&links.mobile_url)
        ),
    )
}

pub fn done_page(authorizer: &AppId) -> String {
    page(
        "授权成功 · Authorized",
        &format!("<h1>授权成功</h1><p>{} is authorized. You can close this page.</p>", authorizer),
    )
}

pub fn error_page(message: &str) -> String {
    page("授权失败 · Authorization failed", &format!("<h1>授权失败</h1><p>{}</p>", escape(message)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> AuthorizeLinks {
        AuthorizeLinks::new(
            AppId::parse("wx0123456789abcdef").unwrap(),
            Url::parse("https://mp.weixin.qq.com/").unwrap(),
            Url::parse("https://wx.example.com/gw/").unwrap(),
        )
    }

    #[test]
    fn redirect_uri_keeps_the_apps_url_whole_and_has_no_fragment() {
        let app = parse_redirect(Some("https://shop.example.com/#/settings?x=1&y=2")).unwrap().unwrap();
        let uri = links().redirect_uri(Some(&app));
        assert!(uri.starts_with("https://wx.example.com/gw/wxgate/authorize/done?redirect="), "{uri}");
        assert!(!uri.contains('#'), "{uri}");
        let back: Url = uri.parse().unwrap();
        let (_, value) = back.query_pairs().find(|(k, _)| k == "redirect").unwrap();
        assert_eq!(value, app.as_str());
    }

    #[test]
    fn links_encode_the_redirect_uri() {
        let l = links();
        let pc = l.link("cgi-bin/componentloginpage", &[], "preauthcode@@@x", &l.redirect_uri(None), "");
        assert_eq!(
            pc,
            "https://mp.weixin.qq.com/cgi-bin/componentloginpage?component_appid=wx0123456789abcdef\
             &pre_auth_code=preauthcode%40%40%40x&redirect_uri=https%3A%2F%2Fwx.example.com%2Fgw%2Fwxgate%2Fauthorize%2Fdone&auth_type=3"
        );
        let mobile = l.link(
            "safe/bindcomponent",
            &[("action", "bindcomponent"), ("no_scan", "1")],
            "p",
            "r",
            "#wechat_redirect",
        );
        assert!(mobile.starts_with(
            "https://mp.weixin.qq.com/safe/bindcomponent?action=bindcomponent&no_scan=1&component_appid="
        ));
        assert!(mobile.ends_with("&auth_type=3#wechat_redirect"));
    }

    #[test]
    fn only_absolute_http_redirects_are_taken() {
        assert!(parse_redirect(None).unwrap().is_none());
        for bad in ["javascript:alert(1)", "/relative", "ftp://x.example.com/", "http://"] {
            assert!(parse_redirect(Some(bad)).is_err(), "{bad}");
        }
        assert!(start_page(&Links { pc_url: "a\"><script>".into(), mobile_url: "b".into() })
            .contains("a&quot;&gt;&lt;script&gt;"));
    }
}
