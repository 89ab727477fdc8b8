//! HTTP's small grammars that framing and heads lean on, checked as the RFCs write them: a
//! token's characters, a Host's value, a chunk's extensions and a trailer's field lines. What
//! one hop reads leniently another may read otherwise; these are read strictly.

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `value` is a Host header's value (RFC 9110 §7.2): empty, or a reg-name or an
/// IP literal in brackets, with an optional port.
pub fn is_host(value: &[u8]) -> bool {
    let (host, port) = match value.iter().rposition(|b| *b == b':') {
        Some(colon) if !value.ends_with(b"]") => (&value[..colon], Some(&value[colon + 1..])),
        _ => (value, None),
    };
    let port_ok = port.is_none_or(|p| p.iter().all(u8::is_ascii_digit));
    let host_ok = match host.strip_prefix(b"[").and_then(|h| h.strip_suffix(b"]")) {
        Some(literal) => !literal.is_empty() && literal.iter().all(|b| b.is_ascii_hexdigit() || b".:".contains(b)),
        None => host.iter().all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(b)),
    };
    port_ok && host_ok
}

/// `*( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )`, names and values tokens.
pub(super) fn chunk_extensions_ok(mut rest: &[u8]) -> bool {
    let token_len = |s: &[u8]| s.iter().take_while(|b| is_tchar(**b)).count();
    let ows = |s: &[u8]| s.iter().take_while(|b| matches!(b, b' ' | b'\t')).count();
    while !rest.is_empty() {
        let Some(after) = rest.strip_prefix(b";") else { return false };
        rest = &after[ows(after)..];
        let name = token_len(rest);
        if name == 0 {
            return false;
        }
        rest = &rest[name..];
        rest = &rest[ows(rest)..];
        if let Some(after) = rest.strip_prefix(b"=") {
            rest = &after[ows(after)..];
            let value = match rest.first() {
                Some(b'"') => quoted_len(rest),
                _ => Some(token_len(rest)).filter(|n| *n > 0),
            };
            let Some(value) = value else { return false };
            rest = &rest[value..];
            rest = &rest[ows(rest)..];
        }
    }
    true
}

/// The length of the quoted-string `s` begins with (RFC 9110 §5.6.4), or `None`.
fn quoted_len(s: &[u8]) -> Option<usize> {
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'"' => return Some(i + 1),
            b'\\' if i + 1 < s.len() && (s[i + 1] == b'\t' || s[i + 1] >= 0x20) && s[i + 1] != 0x7f => i += 2,
            b'\t' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff | b' ' => i += 1,
            _ => return None,
        }
    }
    None
}

/// Whether a trailer line is a field line: a token, a colon, a value of visible characters,
/// spaces, tabs and obs-text.
pub(super) fn is_field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|b| *b == b':') else { return false };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    !name.is_empty()
        && name.iter().all(|b| is_tchar(*b))
        && value.iter().all(|b| *b == b'\t' || (*b >= 0x20 && *b != 0x7f))
}

/// A number written in nothing but digits of `radix`: Rust's own parsers take a leading `+`,
/// which HTTP does not.
pub(super) fn digits(text: &[u8], radix: u32) -> Option<usize> {
    if text.is_empty() || !text.iter().all(|b| char::from(*b).is_digit(radix)) {
        return None;
    }
    usize::from_str_radix(std::str::from_utf8(text).ok()?, radix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_values_are_hosts() {
        for host in ["gw", "api.weixin.qq.com:443", "127.0.0.1:8080", "[::1]:80", "[::1]", "", "xn--fsq.example"] {
            assert!(is_host(host.as_bytes()), "{host}");
        }
        for host in ["a b", "a/b", "a@b", "a:b", "[::1", "gw:80:80", "a\tb"] {
            assert!(!is_host(host.as_bytes()), "{host}");
        }
    }
}
