//! The chat page and its client library, built into the binary: the single file is the
//! whole product, and a page can never be out of step with the server that serves it.
//!
//! Each file is answered with its content type, `nosniff`, and an `ETag` (a hash of the
//! embedded bytes). `Cache-Control: no-cache` lets a browser keep a copy but ask again every
//! time, so an upgraded server is picked up at once while an unchanged page costs a `304`.
//! The HTML also carries a Content Security Policy: scripts, styles and sockets from this
//! origin only, so a message body that slipped past the page's escaping still could not
//! load or send anything elsewhere.

use crate::ws::handshake::{self, Request};

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../web/index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../web/app.js"),
    },
    Asset {
        path: "/courier.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../web/courier.js"),
    },
    Asset {
        path: "/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../web/app.css"),
    },
];

/// `'self'` covers the page's own `ws:`/`wss:` origin (CSP level 3), so sockets to any
/// other host are refused.
const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
                   base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Answers `request` if it names one of the embedded files; false otherwise.
pub fn serve(request: &Request<'_>, out: &mut Vec<u8>) -> bool {
    let path = match request.path() {
        "/index.html" => "/",
        path => path,
    };
    let Some((index, asset)) = ASSETS.iter().enumerate().find(|(_, a)| a.path == path) else {
        return false;
    };
    let head_only = match request.method() {
        "GET" => false,
        "HEAD" => true,
        _ => {
            let allow = [("Allow", "GET, HEAD")];
            let body = b"GET or HEAD only\n";
            let ty = "text/plain; charset=utf-8";
            handshake::write_response(out, 405, "Method Not Allowed", ty, &allow, body);
            return true;
        }
    };
    let etag = &etags()[index];
    let cached = request
        .header("if-none-match")
        .is_some_and(|tags| matches_etag(tags, etag));
    if cached {
        // No body, and no Content-Length or type that would describe an empty one: the
        // browser keeps the entity it has (RFC 9110 §15.4.5).
        out.extend_from_slice(b"HTTP/1.1 304 Not Modified\r\nETag: ");
        out.extend_from_slice(etag.as_bytes());
        out.extend_from_slice(b"\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n");
        return true;
    }
    let mut headers = vec![
        ("Cache-Control", "no-cache"),
        ("ETag", etag.as_str()),
        ("X-Content-Type-Options", "nosniff"),
    ];
    if asset.content_type.starts_with("text/html") {
        headers.push(("Content-Security-Policy", CSP));
        headers.push(("Referrer-Policy", "no-referrer"));
    }
    handshake::write_response(out, 200, "OK", asset.content_type, &headers, asset.body);
    if head_only {
        // The head of the GET, Content-Length included, without the body.
        out.truncate(out.len() - asset.body.len());
    }
    true
}

/// One ETag per asset, computed on first use.
fn etags() -> &'static [String] {
    static ETAGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    ETAGS.get_or_init(|| ASSETS.iter().map(|a| etag(a.body)).collect())
}

/// A strong validator: FNV-1a over the bytes, which only ever change with the binary.
fn etag(body: &[u8]) -> String {
    let hash = body.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("\"{hash:016x}\"")
}

/// `If-None-Match` is a comma-separated list of tags, or `*`.
fn matches_etag(header: &[u8], etag: &str) -> bool {
    let Ok(header) = std::str::from_utf8(header) else {
        return false;
    };
    header
        .split(',')
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(target: &str, extra: &str) -> Vec<u8> {
        call("GET", target, extra)
    }

    fn call(method: &str, target: &str, extra: &str) -> Vec<u8> {
        let raw = format!("{method} {target} HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
        let (request, _) = handshake::parse_request(raw.as_bytes()).unwrap().unwrap();
        let mut out = Vec::new();
        assert!(serve(&request, &mut out), "{target} is served");
        out
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    #[test]
    fn each_file_has_its_type_and_the_page_its_policy() {
        let page = text(&get("/", ""));
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(page.contains("Content-Type: text/html; charset=utf-8"));
        assert!(page.contains("Content-Security-Policy: default-src 'self'"));
        assert!(page.contains("<html"));
        for (path, ty) in [
            ("/app.js", "text/javascript"),
            ("/courier.js", "text/javascript"),
            ("/app.css", "text/css"),
        ] {
            let head = text(&get(path, ""));
            assert!(
                head.contains(&format!("Content-Type: {ty}")),
                "{path}: {head}"
            );
            assert!(head.contains("X-Content-Type-Options: nosniff"));
            assert!(
                !head.contains("Content-Security-Policy"),
                "only on the page"
            );
        }
    }

    #[test]
    fn a_matching_etag_gets_304_without_a_body() {
        let page = text(&get("/", ""));
        let etag = page
            .lines()
            .find_map(|l| l.strip_prefix("ETag: "))
            .expect("an ETag")
            .to_owned();
        let again = text(&get("/", &format!("If-None-Match: \"other\", {etag}\r\n")));
        assert!(again.starts_with("HTTP/1.1 304"), "{again}");
        assert!(again.ends_with("\r\n\r\n"), "no body: {again}");
        assert!(again.contains(&format!("ETag: {etag}")), "{again}");
        assert!(!again.contains("Content-Length"), "{again}");
        let stale = text(&get("/", "If-None-Match: \"0000\"\r\n"));
        assert!(stale.starts_with("HTTP/1.1 200"));
    }

    #[test]
    fn head_gets_the_head_and_other_methods_405() {
        let full = get("/app.css", "");
        let head = call("HEAD", "/app.css", "");
        assert!(full.starts_with(&head), "the same head");
        assert!(text(&head).ends_with("\r\n\r\n"), "and no body");
        assert!(text(&head).contains(&format!("Content-Length: {}", ASSETS[3].body.len())));
        let post = text(&call("POST", "/", ""));
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        assert!(post.contains("Allow: GET, HEAD"));
    }

    #[test]
    fn other_paths_are_not_ours() {
        let raw = b"GET /nope.js HTTP/1.1\r\nHost: x\r\n\r\n";
        let (request, _) = handshake::parse_request(raw).unwrap().unwrap();
        assert!(!serve(&request, &mut Vec::new()));
    }
}
