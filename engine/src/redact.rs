//! Credentials in URLs, hidden before a URL is shown or stored: the userinfo of `scheme://user:pass@host`
//! and the query values that carry a secret in presigned or token URLs (`X-Amz-Signature`,
//! `X-Amz-Credential`, `X-Amz-Security-Token`, `X-Goog-Signature`, `Signature`, `sig`, `token`,
//! `access_token`, `key`, ...). Each becomes `***`; the rest of the URL stays, so a message still
//! says which file it is about.
//!
//! Params keep the real URL (the step needs it, and it is part of the key); what is redacted is
//! every copy made for people: progress lines, errors, `--json`, and the params text kept in run
//! records (`Store::save_run`).

use serde_json::Value as Json;
use std::borrow::Cow;

/// What replaces a secret.
pub const MASK: &str = "***";

/// Whether a query parameter's value is a secret, by its name.
fn secret_param(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["signature", "credential", "token", "secret", "password"]
        .iter()
        .any(|s| n.contains(s))
        || matches!(
            n.as_str(),
            "sig" | "key" | "apikey" | "api_key" | "awsaccesskeyid" | "auth" | "passwd"
        )
}

/// `url` with its credentials replaced by [`MASK`]; borrowed when there are none. Anything that is
/// not `scheme://...` is returned as it is.
pub fn url(url: &str) -> Cow<'_, str> {
    let Some(sep) = url.find("://") else {
        return Cow::Borrowed(url);
    };
    let scheme = &url[..sep];
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
    {
        return Cow::Borrowed(url);
    }
    let rest = &url[sep + 3..];
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let mut changed = false;
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..sep + 3]);
    match authority.rfind('@') {
        Some(at) => {
            out.push_str(MASK);
            out.push_str(&authority[at..]);
            changed = true;
        }
        None => out.push_str(authority),
    }
    let (before_fragment, fragment) = match tail.find('#') {
        Some(i) => tail.split_at(i),
        None => (tail, ""),
    };
    match before_fragment.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            for (i, pair) in query.split('&').enumerate() {
                if i > 0 {
                    out.push('&');
                }
                match pair.split_once('=') {
                    Some((name, value)) if secret_param(name) && !value.is_empty() => {
                        out.push_str(name);
                        out.push('=');
                        out.push_str(MASK);
                        changed = true;
                    }
                    _ => out.push_str(pair),
                }
            }
        }
        None => out.push_str(before_fragment),
    }
    out.push_str(fragment);
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(url)
    }
}

/// Free text (a message, a stderr tail) with every URL in it redacted. A URL runs from its scheme
/// to the first white space or quote-like character.
pub fn text(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    let mut rest = text;
    while let Some(sep) = rest.find("://") {
        // The scheme: the letters (and + . -) right before `://`.
        let start = rest[..sep]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || "+.-".contains(c)))
            .map_or(0, |i| i + 1);
        let end = rest[sep..]
            .find(|c: char| c.is_whitespace() || "`'\"<>".contains(c))
            .map_or(rest.len(), |i| sep + i);
        out.push_str(&rest[..start]);
        let shown = url(&rest[start..end]);
        changed |= matches!(shown, Cow::Owned(_));
        out.push_str(&shown);
        rest = &rest[end..];
    }
    out.push_str(rest);
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(text)
    }
}

/// A JSON value with every string in it redacted as [`text`] (object keys are left alone).
pub fn json(v: &Json) -> Json {
    match v {
        Json::String(s) => Json::String(text(s).into_owned()),
        Json::Array(items) => Json::Array(items.iter().map(json).collect()),
        Json::Object(map) => Json::Object(map.iter().map(|(k, v)| (k.clone(), json(v))).collect()),
        other => other.clone(),
    }
}

/// Canonical params text (`KeyComponents::params`) with its strings redacted, still canonical.
pub fn params_text(params: &str) -> String {
    if !params.contains("://") {
        return params.to_string();
    }
    match serde_json::from_str::<Json>(params) {
        Ok(v) => crate::key::canonical_json(&json(&v)),
        Err(_) => text(params).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_and_signatures_are_masked() {
        assert_eq!(
            url("https://user:pa55@h.example/a/b.tar?x=1"),
            "https://***@h.example/a/b.tar?x=1"
        );
        assert_eq!(
            url(
                "https://b.s3.amazonaws.com/k.tar?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20240101&X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600&X-Amz-Signature=abcdef&X-Amz-Security-Token=tok"
            ),
            "https://b.s3.amazonaws.com/k.tar?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***&X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600&X-Amz-Signature=***&X-Amz-Security-Token=***"
        );
        assert_eq!(
            url("https://a.blob.core.windows.net/c/x.tar?sv=2020&sig=s3cr3t#frag"),
            "https://a.blob.core.windows.net/c/x.tar?sv=2020&sig=***#frag"
        );
        assert_eq!(
            url("http://h/x?token=t&Signature=s&Expires=9&key=k"),
            "http://h/x?token=***&Signature=***&Expires=9&key=***"
        );
        // Nothing to hide: the same string, borrowed.
        for plain in ["https://h/x.tar?v=2", "data/x.tar", "s3://b/k", "synthetic"] {
            assert!(matches!(url(plain), Cow::Borrowed(s) if s == plain));
        }
    }

    #[test]
    fn urls_inside_text_are_masked() {
        assert_eq!(
            text("downloading `http://u:p@127.0.0.1:9/x.tar?sig=1` failed: HTTP 404"),
            "downloading `http://***@127.0.0.1:9/x.tar?sig=***` failed: HTTP 404"
        );
        assert_eq!(
            text("a https://h/x?token=z\nand http://v@h/y"),
            "a https://h/x?token=***\nand http://***@h/y"
        );
        assert_eq!(text("no url here: a://"), "no url here: a://");
    }

    #[test]
    fn params_stay_canonical() {
        let p = r#"{"md5":"","source":"https://u:p@h/x.tar?X-Amz-Signature=abc"}"#;
        assert_eq!(
            params_text(p),
            r#"{"md5":"","source":"https://***@h/x.tar?X-Amz-Signature=***"}"#
        );
        let plain = r#"{"source":"https://h/x.tar"}"#;
        assert_eq!(params_text(plain), plain);
    }
}
