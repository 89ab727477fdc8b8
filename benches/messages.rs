//! The gateway's own CPU per message of an authorized account: a text push verified, decrypted,
//! parsed, its retry key built, routed, and a passive reply encrypted and signed, in the order
//! `callback::account` and `messages` run them (the handler's own time is the app's, not ours).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use wxgate::config::{AuthorizerScope, DeliveryMode, RouteConfig};
use wxgate::crypto::MsgCrypt;
use wxgate::messages::routes::Routes;
use wxgate::messages::{release_check, retry_key};
use wxgate::{xml, AppId, Secret};

const TIMESTAMP: &str = "1716206400";
const NONCE: &str = "1320562132";
const COMPONENT: &str = "wx0123456789abcdef";

fn crypt() -> MsgCrypt {
    let key = Secret::new("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG");
    MsgCrypt::new(&Secret::new("pamtest"), &key, COMPONENT).unwrap()
}

fn routes() -> Routes {
    let route = |name: &str, authorizers, types: &[&str]| RouteConfig {
        name: name.into(),
        authorizers,
        msg_types: Some(types.iter().map(|t| t.to_string()).collect()),
        events: None,
        url: url::Url::parse("http://127.0.0.1:7001/wechat").unwrap(),
        token: Secret::new("handlertoken"),
        mode: DeliveryMode::Reply,
    };
    let others: Vec<AppId> = (2..10).map(|i| AppId::parse(&format!("wx{i:016x}")).unwrap()).collect();
    Routes::new(&[
        route("events", AuthorizerScope::All, &["event"]),
        route("others", AuthorizerScope::Only(others), &["text"]),
        route("shop", AuthorizerScope::All, &["text", "image"]),
    ])
}

fn benches(c: &mut Criterion) {
    let crypt = crypt();
    let routes = routes();
    let authorizer = AppId::parse("wx1111111111111111").unwrap();
    let message = "<xml><ToUserName><![CDATA[gh_111111111111]]></ToUserName>\
        <FromUserName><![CDATA[oUser0123456789abcdefghijkl]]></FromUserName><CreateTime>1716206400</CreateTime>\
        <MsgType><![CDATA[text]]></MsgType><Content><![CDATA[I would like to order two of the blue ones]]></Content>\
        <MsgId>23456789012345678</MsgId></xml>";
    let sealed = crypt.seal(message, TIMESTAMP, NONCE);
    let query = format!(
        "signature=x&timestamp={TIMESTAMP}&nonce={NONCE}&openid=oUser0123456789abcdefghijkl&encrypt_type=aes&msg_signature={}",
        sealed.msg_signature
    );
    let body = format!(
        "<xml><ToUserName><![CDATA[gh_111111111111]]></ToUserName><Encrypt><![CDATA[{}]]></Encrypt></xml>",
        sealed.encrypt
    );

    c.bench_function("messages/text_verified_decrypted_routed_reply_encrypted", |b| {
        b.iter(|| {
            let (mut ts, mut nonce, mut sig) = (None, None, None);
            for (k, v) in url::form_urlencoded::parse(black_box(query.as_bytes())) {
                match k.as_ref() {
                    "timestamp" => ts = Some(v),
                    "nonce" => nonce = Some(v),
                    "msg_signature" => sig = Some(v),
                    _ => {}
                }
            }
            let (ts, nonce, sig) = (ts.unwrap(), nonce.unwrap(), sig.unwrap());
            let envelope = xml::parse(black_box(&body)).unwrap();
            let plain = crypt.open(&ts, &nonce, envelope.get("Encrypt").unwrap(), &sig).unwrap();
            let fields = xml::parse(&plain).unwrap();
            let key = retry_key(&fields).unwrap();
            let msg_type = fields.get("MsgType").unwrap();
            let route = routes.find(&authorizer, msg_type, fields.get("Event")).unwrap();
            let reply = release_check::text_reply(&fields, "Thanks, we have your order", 1716206401);
            let out = crypt.seal(&reply, "1716206401", &nonce).reply_xml("1716206401", &nonce);
            black_box((key, route.name.len(), out))
        })
    });
}

criterion_group!(group, benches);
criterion_main!(group);
