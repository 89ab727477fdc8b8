//! Criterion benches of the message crypto's hot functions, on a ~1 KiB authorization-event push.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use wxgate::crypto::MsgCrypt;
use wxgate::Secret;

const TIMESTAMP: &str = "1716206400";
const NONCE: &str = "1320562132";
const RANDOM: [u8; 16] = *b"0123456789abcdef";

fn crypt() -> MsgCrypt {
    let key = Secret::new("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG");
    MsgCrypt::new(&Secret::new("pamtest"), &key, "wxb11529c136998cb6").unwrap()
}

/// An `authorized` event as WeChat pushes it, its pre-auth code padded out so the body is ~1 KiB.
fn authorized_push() -> String {
    let xml = format!(
        "<xml><AppId><![CDATA[wxb11529c136998cb6]]></AppId>\
         <CreateTime>{TIMESTAMP}</CreateTime>\
         <InfoType><![CDATA[authorized]]></InfoType>\
         <AuthorizerAppid><![CDATA[wx2c2769f8efd9abc2]]></AuthorizerAppid>\
         <AuthorizationCode><![CDATA[queryauthcode@@@{code}]]></AuthorizationCode>\
         <AuthorizationCodeExpiredTime>{expiry}</AuthorizationCodeExpiredTime>\
         <PreAuthCode><![CDATA[preauthcode@@@{pre}]]></PreAuthCode></xml>",
        code = "x".repeat(330),
        expiry = 1716210000,
        pre = "y".repeat(300),
    );
    assert!((1000..1100).contains(&xml.len()), "push is {} bytes", xml.len());
    xml
}

fn benches(c: &mut Criterion) {
    let crypt = crypt();
    let msg = authorized_push();
    let sealed = crypt.seal(&msg, TIMESTAMP, NONCE);
    assert_eq!(crypt.open(TIMESTAMP, NONCE, &sealed.encrypt, &sealed.msg_signature).as_deref(), Ok(msg.as_str()));

    let mut group = c.benchmark_group("crypto");
    group.throughput(Throughput::Bytes(msg.len() as u64));
    group.bench_function("open_1k", |b| {
        b.iter(|| crypt.open(TIMESTAMP, NONCE, black_box(&sealed.encrypt), black_box(&sealed.msg_signature)))
    });
    group.bench_function("encrypt_1k", |b| b.iter(|| crypt.encrypt_with_random(black_box(&msg), RANDOM)));
    group.bench_function("sign_1k", |b| b.iter(|| crypt.sign(TIMESTAMP, NONCE, black_box(&sealed.encrypt))));
    group.finish();
}

criterion_group!(crypto, benches);
criterion_main!(crypto);
