//! Authentication at the WebSocket handshake: HS256 JWTs (RFC 7519, compact JWS of RFC 7515).
//!
//! Only tokens of the one shape courier issues are accepted: three base64url segments,
//! `alg` pinned to HS256, `exp` required, `sub` a valid user id. Accepting less is the point:
//! most JWT vulnerabilities come from verifiers that let the token choose how it is checked
//! (`alg: none`, an RS256 public key used as an HMAC secret, `crit` extensions ignored).
//!
//! [`verify`] authenticates before it interprets: the header is read only as far as needed
//! to pin the algorithm, the signature is checked next, and the claims JSON is parsed only
//! once it is known to come from someone holding the secret. Nothing here reads a clock or
//! a socket; the caller passes `now` and the raw request values.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac_sha256::HMAC;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::fmt;

/// Clock skew tolerated on `exp` and `nbf`, in seconds. The issuer and this server may be
/// different machines (or a client's token may come from a login service); 30 s covers
/// NTP-synced hosts with room to spare while keeping an expired token's afterlife short.
pub const LEEWAY: u64 = 30;

/// The longest token [`verify`] will look at, in bytes. A courier token is about 150 bytes;
/// the cap means a hostile handshake can make the server decode and hash at most this much
/// per attempt, whatever the request head allows.
pub const MAX_TOKEN_LEN: usize = 4096;

pub use crate::user_id::{valid_user_id, MAX_USER_ID_LEN};

/// The shortest secret a server or `courier token` accepts, in bytes. RFC 7518 §3.2: "A key
/// of the same size as the hash output (for instance, 256 bits for "HS256") or larger MUST
/// be used with this algorithm." A shorter one can be searched offline from any one token a
/// client shows (logs, a browser's storage), and a found secret signs in anyone as anyone.
pub const MIN_SECRET_LEN: usize = 32;

/// Refuses a secret shorter than [`MIN_SECRET_LEN`], saying how to make one. The message
/// never contains the secret, only its length.
pub fn check_secret(secret: &[u8]) -> Result<(), String> {
    if secret.len() >= MIN_SECRET_LEN {
        return Ok(());
    }
    Err(format!(
        "the token secret is {} bytes; HS256 needs at least {MIN_SECRET_LEN} (RFC 7518 §3.2). \
         Make one with `courier secret` or `openssl rand -hex 32`",
        secret.len()
    ))
}

/// What a server demands of a token beyond a good signature, `sub`, `exp` and `nbf`: each
/// check is off unless configured (`--max-token-ttl`, `--token-audience`, `--token-issuer`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// A token whose `exp` is further than this past now (plus [`LEEWAY`] for the issuer's
    /// clock) is refused: a token minted to last a year, leaked once, would otherwise sign
    /// its holder in for a year. (`exp` is always required, so a token without one is
    /// refused whatever this says.)
    pub max_ttl_secs: Option<u64>,
    /// `aud` (a string, or an array of strings, RFC 7519 §4.1.3) must hold this exactly.
    /// Tokens minted for another service that shares the secret are then refused here.
    pub audience: Option<String>,
    /// `iss` must be exactly this string (RFC 7519 §4.1.1, case-sensitive).
    pub issuer: Option<String>,
}

/// base64url of `{"alg":"HS256","typ":"JWT"}`, the one header [`issue`] writes; a constant
/// so issuing a token does not serialise and encode the same bytes every time.
const ISSUED_HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// The verified claims of a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// The user id: the connection's identity, which nothing the client sends later changes.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Not-before, seconds since the Unix epoch, when the token carries one.
    pub nbf: Option<u64>,
    /// Issued-at, seconds since the Unix epoch, when the token carries one. Informational
    /// only: `nbf` is the claim that bounds validity from below.
    pub iat: Option<u64>,
}

/// Why a handshake is refused (every variant means `401`). [`fmt::Display`] gives a short
/// reason for the response body; it never contains the token or the secret, so it is safe
/// to send and to log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// The request carried no token (see [`token_from_request`]). [`verify`] never returns
    /// it; it is here so callers have one error type for the whole check.
    Missing,
    /// Not a compact JWS, not canonical base64url, not JSON objects, over
    /// [`MAX_TOKEN_LEN`], a `typ` other than JWT, a `crit` header, or a claim of the wrong
    /// type (`exp` missing, or any time claim not a non-negative integer).
    Malformed,
    /// `alg` missing, not a string, or anything but `HS256`.
    Algorithm,
    /// The signature is not HMAC-SHA256 of the token under the server's secret.
    Signature,
    /// `now` is at or past `exp` + [`LEEWAY`].
    Expired,
    /// `now` + [`LEEWAY`] is before `nbf`.
    NotYetValid,
    /// `sub` missing or not a valid user id ([`valid_user_id`]).
    BadSubject,
    /// `exp` is further past now than [`Policy::max_ttl_secs`] (and [`LEEWAY`]) allows.
    LifetimeTooLong,
    /// [`Policy::audience`] is set and `aud` is missing, of another type, or does not hold it.
    Audience,
    /// [`Policy::issuer`] is set and `iss` is missing, not a string, or another string.
    Issuer,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthError::Missing => "missing token",
            AuthError::Malformed => "malformed token",
            AuthError::Algorithm => "unsupported token algorithm",
            AuthError::Signature => "bad token signature",
            AuthError::Expired => "token expired",
            AuthError::NotYetValid => "token not yet valid",
            AuthError::BadSubject => "token subject is not a valid user id",
            AuthError::LifetimeTooLong => "token lifetime over the server's maximum",
            AuthError::Audience => "token audience not accepted",
            AuthError::Issuer => "token issuer not accepted",
        })
    }
}

impl std::error::Error for AuthError {}

/// Verifies an HS256 token against `secret` at time `now_secs` (Unix seconds) and returns
/// its claims. The checks run cheapest and least trusting first: length, shape, header
/// (`alg` must be `HS256`), signature, then the claims: their types ([`AuthError::Malformed`]),
/// `sub`, then `exp` and `nbf` with [`LEEWAY`]. No [`Policy`]: see [`verify_with`].
pub fn verify(token: &str, secret: &[u8], now_secs: u64) -> Result<Claims, AuthError> {
    verify_with(token, secret, now_secs, &Policy::default())
}

/// [`verify`], then the checks `policy` asks for: the lifetime left, `iss`, `aud`.
pub fn verify_with(
    token: &str,
    secret: &[u8],
    now_secs: u64,
    policy: &Policy,
) -> Result<Claims, AuthError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Malformed);
    }
    let mut segments = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(AuthError::Malformed);
    };
    check_header(header)?;
    let signing_input = &token[..header.len() + 1 + payload.len()];
    check_signature(signing_input, signature, secret)?;
    let (claims, raw) = parse_claims(payload)?;
    check_times(&claims, now_secs)?;
    check_policy(&claims, &raw, now_secs, policy)?;
    Ok(claims)
}

/// Issues a token for `sub` valid from `now_secs` for `ttl_secs` seconds, with header
/// `{"alg":"HS256","typ":"JWT"}` and claims `sub`, `iat`, `exp`. The caller checks `sub`
/// with [`valid_user_id`] first: a token for any other string is still well-formed JSON
/// but [`verify`] refuses it with [`AuthError::BadSubject`].
pub fn issue(sub: &str, ttl_secs: u64, secret: &[u8], now_secs: u64) -> String {
    issue_with(sub, ttl_secs, secret, now_secs, None, None)
}

/// [`issue`], with an `aud` and an `iss` claim when given, so the token passes a server
/// whose [`Policy`] asks for them.
pub fn issue_with(
    sub: &str,
    ttl_secs: u64,
    secret: &[u8],
    now_secs: u64,
    audience: Option<&str>,
    issuer: Option<&str>,
) -> String {
    let exp = now_secs.saturating_add(ttl_secs);
    // `Value`'s Display escapes the string, so even a hostile `sub` cannot inject claims.
    let mut payload = format!(
        r#"{{"sub":{},"iat":{now_secs},"exp":{exp}"#,
        Value::from(sub)
    );
    if let Some(audience) = audience {
        payload.push_str(&format!(r#","aud":{}"#, Value::from(audience)));
    }
    if let Some(issuer) = issuer {
        payload.push_str(&format!(r#","iss":{}"#, Value::from(issuer)));
    }
    payload.push('}');
    let mut token = String::with_capacity(ISSUED_HEADER.len() + payload.len() * 4 / 3 + 48);
    token.push_str(ISSUED_HEADER);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut token);
    let mac = HMAC::mac(token.as_bytes(), secret);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(mac, &mut token);
    token
}

/// Picks the token out of a handshake: `query_token` is the raw value of `?token=`,
/// `authorization` the raw `Authorization` header value. `None` means no usable token:
/// answer [`AuthError::Missing`].
///
/// `Authorization: Bearer <token>` wins over the query when both are present: browsers
/// cannot set headers on a WebSocket, so the query is their channel, and a client that
/// sends the header has chosen it deliberately; it is also the one that stays out of
/// access logs. The scheme is matched case-insensitively (RFC 9110 §11.1) and may be
/// followed by any number of spaces or tabs. A header with another scheme (a proxy's
/// `Basic`, say) is not ours and is ignored, so the query still works behind one; a `Bearer`
/// header with no credentials, or with inner whitespace or non-ASCII bytes, yields `None` rather
/// than falling back to the query, so a client bug shows up instead of being papered over.
///
/// The query value is not percent-decoded: a JWT is all unreserved characters, which
/// clients do not encode; an encoded one fails [`verify`] as malformed.
pub fn token_from_request<'a>(
    query_token: Option<&'a str>,
    authorization: Option<&'a [u8]>,
) -> Option<&'a str> {
    match authorization.map(parse_authorization) {
        Some(Credential::Bearer(token)) => Some(token),
        Some(Credential::BadBearer) => None,
        Some(Credential::OtherScheme) | None => query_token.filter(|t| !t.is_empty()),
    }
}

enum Credential<'a> {
    Bearer(&'a str),
    BadBearer,
    OtherScheme,
}

fn parse_authorization(value: &[u8]) -> Credential<'_> {
    let value = value.trim_ascii();
    let Some((scheme, rest)) = value.split_at_checked(6) else {
        return Credential::OtherScheme;
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Credential::OtherScheme;
    }
    // `Bearerish xyz` is some other scheme whose name starts with "bearer".
    if rest.first().is_some_and(|&b| is_tchar(b)) {
        return Credential::OtherScheme;
    }
    let credentials = rest.trim_ascii_start();
    let gap = &rest[..rest.len() - credentials.len()];
    let separated = !gap.is_empty() && gap.iter().all(|&b| b == b' ' || b == b'\t');
    if !separated || credentials.is_empty() || !credentials.iter().all(u8::is_ascii_graphic) {
        return Credential::BadBearer;
    }
    // All visible ASCII, so always UTF-8; the fallback only keeps this free of `unwrap`.
    std::str::from_utf8(credentials).map_or(Credential::BadBearer, Credential::Bearer)
}

/// RFC 9110 §5.6.2 token characters: what an auth-scheme name is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The only header fields that matter. Each is captured whenever it is present, `null`
/// included, so `"crit": null` still counts as a `crit` and `"alg": null` as a wrong alg.
/// Unknown fields (`kid`, `cty`, …) are ignored; duplicate known fields are an error.
#[derive(Deserialize)]
struct Header {
    #[serde(default, deserialize_with = "present")]
    alg: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    typ: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    crit: Option<IgnoredAny>,
}

/// The claims as sent. A claim that is present must have its type (`null` is not a
/// number), which is why these go through [`present`] rather than plain `Option`.
#[derive(Deserialize)]
struct RawClaims {
    #[serde(default, deserialize_with = "present")]
    sub: Option<String>,
    #[serde(default, deserialize_with = "present")]
    exp: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    nbf: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    iat: Option<u64>,
    /// Kept raw: its type is judged only by a server that checks it, so a token with an
    /// `aud` meant for someone else's checks still passes a server that checks none.
    #[serde(default, deserialize_with = "present")]
    aud: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    iss: Option<Value>,
}

fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

fn check_header(segment: &str) -> Result<(), AuthError> {
    let header: Header = from_json_object(&decode_segment(segment)?)?;
    // Exact match: "hs256" or "HS256 " are not HS256, and a verifier that normalises alg
    // names is one step from one that lets the token pick the algorithm.
    match header.alg {
        Some(Value::String(alg)) if alg == "HS256" => {}
        _ => return Err(AuthError::Algorithm),
    }
    match header.typ {
        None => {}
        Some(Value::String(typ)) if typ.eq_ignore_ascii_case("JWT") => {}
        Some(_) => return Err(AuthError::Malformed),
    }
    // RFC 7515 §4.1.11: a recipient that does not understand every listed extension must
    // reject the token, and this one understands none.
    if header.crit.is_some() {
        return Err(AuthError::Malformed);
    }
    Ok(())
}

/// Checks that `signature` (the third segment) is HMAC-SHA256 of `signing_input`
/// (`header.payload`, exactly as sent) under `secret`.
fn check_signature(signing_input: &str, signature: &str, secret: &[u8]) -> Result<(), AuthError> {
    let given = decode_segment(signature)?;
    let Ok(given) = <[u8; 32]>::try_from(given.as_slice()) else {
        return Err(AuthError::Signature);
    };
    let expected = HMAC::mac(signing_input.as_bytes(), secret);
    if ct_eq(&expected, &given) {
        Ok(())
    } else {
        Err(AuthError::Signature)
    }
}

/// Compares two MACs in time independent of where they differ. An early-exit compare tells
/// a network attacker how many leading bytes of a forged MAC are right, which is enough to
/// build a valid one byte by byte. `black_box` keeps the optimiser from turning the fold
/// back into a search for the first difference; it is best-effort, as any such barrier in
/// Rust is, but the loop itself has no data-dependent branch.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff = std::hint::black_box(diff | (x ^ y));
    }
    diff == 0
}

/// base64url without padding, canonical only (non-zero trailing bits are refused), so each
/// token has exactly one spelling and a signature cannot be re-encoded into a "new" token.
fn decode_segment(segment: &str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| AuthError::Malformed)
}

/// A JSON object into `T`. serde's derived structs also accept the array form
/// (`["HS256"]`), but a JOSE header and a claims set are objects (RFC 7515 §4, RFC 7519 §7.2).
fn from_json_object<T: DeserializeOwned>(json: &[u8]) -> Result<T, AuthError> {
    if json.trim_ascii_start().first() != Some(&b'{') {
        return Err(AuthError::Malformed);
    }
    serde_json::from_slice(json).map_err(|_| AuthError::Malformed)
}

fn parse_claims(segment: &str) -> Result<(Claims, RawClaims), AuthError> {
    let mut raw: RawClaims = from_json_object(&decode_segment(segment)?)?;
    let exp = raw.exp.ok_or(AuthError::Malformed)?;
    let sub = raw
        .sub
        .take()
        .filter(|s| valid_user_id(s))
        .ok_or(AuthError::BadSubject)?;
    let claims = Claims {
        sub,
        exp,
        nbf: raw.nbf,
        iat: raw.iat,
    };
    Ok((claims, raw))
}

fn check_policy(
    claims: &Claims,
    raw: &RawClaims,
    now_secs: u64,
    policy: &Policy,
) -> Result<(), AuthError> {
    if let Some(max_ttl) = policy.max_ttl_secs {
        // The leeway is for the issuer's clock running ahead of ours, as for `nbf`.
        if claims.exp > now_secs.saturating_add(max_ttl).saturating_add(LEEWAY) {
            return Err(AuthError::LifetimeTooLong);
        }
    }
    if let Some(issuer) = &policy.issuer {
        match &raw.iss {
            Some(Value::String(iss)) if iss == issuer => {}
            _ => return Err(AuthError::Issuer),
        }
    }
    if let Some(audience) = &policy.audience {
        let held = match &raw.aud {
            Some(Value::String(aud)) => aud == audience,
            // Every element must be a string: an array with a number in it is not an
            // audience list, whatever else it holds.
            Some(Value::Array(list)) => {
                list.iter().all(Value::is_string)
                    && list.iter().any(|a| a.as_str() == Some(audience.as_str()))
            }
            _ => false,
        };
        if !held {
            return Err(AuthError::Audience);
        }
    }
    Ok(())
}

fn check_times(claims: &Claims, now_secs: u64) -> Result<(), AuthError> {
    if now_secs >= claims.exp.saturating_add(LEEWAY) {
        return Err(AuthError::Expired);
    }
    if claims
        .nbf
        .is_some_and(|nbf| now_secs.saturating_add(LEEWAY) < nbf)
    {
        return Err(AuthError::NotYetValid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD_NO_PAD;

    const SECRET: &[u8] = b"courier-test-secret";
    const NOW: u64 = 1_700_000_000;
    const HS256_JWT: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

    fn b64(bytes: impl AsRef<[u8]>) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Builds a token from literal JSON, signing with hmac_sha256 directly (not through
    /// `issue`), so the tests can produce any header or claims, valid or not.
    fn sign(header: &str, payload: &str, secret: &[u8]) -> String {
        let input = format!("{}.{}", b64(header), b64(payload));
        let mac = HMAC::mac(input.as_bytes(), secret);
        format!("{input}.{}", b64(mac))
    }

    fn with_claims(payload: &str) -> String {
        sign(HS256_JWT, payload, SECRET)
    }

    fn with_header(header: &str) -> String {
        sign(header, r#"{"sub":"alice","exp":1700003600}"#, SECRET)
    }

    fn err(token: &str) -> AuthError {
        verify(token, SECRET, NOW).unwrap_err()
    }

    #[test]
    fn round_trip() {
        let token = issue("alice", 3600, SECRET, NOW);
        let claims = verify(&token, SECRET, NOW).unwrap();
        assert_eq!(
            claims,
            Claims {
                sub: "alice".into(),
                exp: NOW + 3600,
                nbf: None,
                iat: Some(NOW),
            }
        );
        let token = issue("a.b-c_D9", 1, SECRET, NOW);
        assert_eq!(verify(&token, SECRET, NOW + 5).unwrap().sub, "a.b-c_D9");
    }

    /// Expected value computed outside this crate (Python's hmac/hashlib/base64) over
    /// `{"alg":"HS256","typ":"JWT"}` and `{"sub":"alice","iat":1700000000,"exp":1700003600}`.
    #[test]
    fn issue_matches_independent_vector() {
        assert_eq!(
            issue("alice", 3600, SECRET, NOW),
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9\
             .eyJzdWIiOiJhbGljZSIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjoxNzAwMDAzNjAwfQ\
             .Qs9gUe7JM5aT_SOlUebTOrGau-shVMkREdWcGEiokZs"
        );
    }

    #[test]
    fn issued_header_constant_is_the_header() {
        assert_eq!(
            URL_SAFE_NO_PAD.decode(ISSUED_HEADER).unwrap(),
            HS256_JWT.as_bytes()
        );
    }

    /// Segments written out by hand (base64url of the JSON in the comments), MAC computed
    /// with hmac_sha256 directly.
    #[test]
    fn hand_built_vector() {
        // {"alg":"HS256","typ":"JWT"}
        let header = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";
        // {"sub":"bob","exp":1700003600,"nbf":1699999000,"iat":1699999000}
        let payload = "eyJzdWIiOiJib2IiLCJleHAiOjE3MDAwMDM2MDAsIm5iZiI6MTY5OTk5OTAwMCwiaWF0IjoxNjk5OTk5MDAwfQ";
        assert_eq!(
            URL_SAFE_NO_PAD.decode(payload).unwrap(),
            br#"{"sub":"bob","exp":1700003600,"nbf":1699999000,"iat":1699999000}"#
        );
        let mac = HMAC::mac(format!("{header}.{payload}"), SECRET);
        let token = format!("{header}.{payload}.{}", URL_SAFE_NO_PAD.encode(mac));
        assert_eq!(
            verify(&token, SECRET, NOW),
            Ok(Claims {
                sub: "bob".into(),
                exp: 1_700_003_600,
                nbf: Some(1_699_999_000),
                iat: Some(1_699_999_000),
            })
        );
    }

    const JWT_IO: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9\
        .eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ\
        .SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

    #[test]
    fn jwt_io_example_signature_verifies() {
        let (input, sig) = JWT_IO.rsplit_once('.').unwrap();
        assert_eq!(check_signature(input, sig, b"your-256-bit-secret"), Ok(()));
        assert_eq!(
            check_signature(input, sig, b"your-256-bit-secreT"),
            Err(AuthError::Signature)
        );
        // Authentic, but it has no `exp`, which courier requires.
        assert_eq!(
            verify(JWT_IO, b"your-256-bit-secret", 1_516_239_022),
            Err(AuthError::Malformed)
        );
        assert_eq!(verify(JWT_IO, SECRET, NOW), Err(AuthError::Signature));
    }

    /// RFC 7515 Appendix A.1: HS256 with a binary key, a header with CRLF whitespace and
    /// `typ` before `alg`. It has no `sub`, so the full check gets past the signature and
    /// stops at the subject.
    #[test]
    fn rfc7515_a1_vector() {
        let token = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9\
            .eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ\
            .dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let key = URL_SAFE_NO_PAD
            .decode(
                "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow",
            )
            .unwrap();
        let (input, sig) = token.rsplit_once('.').unwrap();
        assert_eq!(check_signature(input, sig, &key), Ok(()));
        assert_eq!(
            verify(token, &key, 1_300_819_000),
            Err(AuthError::BadSubject)
        );
        assert_eq!(
            verify(token, SECRET, 1_300_819_000),
            Err(AuthError::Signature)
        );
    }

    #[test]
    fn bad_signature() {
        let token = issue("alice", 3600, SECRET, NOW);
        let (input, sig) = token.rsplit_once('.').unwrap();
        // Change the first character: it carries 6 full bits, so the result stays
        // canonical base64 and this is a wrong MAC, not a malformed one.
        let first = if sig.starts_with('A') { "B" } else { "A" };
        let forged = format!("{input}.{first}{}", &sig[1..]);
        assert_eq!(err(&forged), AuthError::Signature);
        // Too short, too long, empty, and another token's MAC.
        assert_eq!(
            err(&format!("{input}.{}", &sig[..40])),
            AuthError::Signature
        );
        assert_eq!(err(&format!("{input}.{sig}AAAA")), AuthError::Signature);
        assert_eq!(err(&format!("{input}.")), AuthError::Signature);
        let other = issue("bob", 3600, SECRET, NOW);
        let other_sig = other.rsplit_once('.').unwrap().1;
        assert_eq!(err(&format!("{input}.{other_sig}")), AuthError::Signature);
    }

    #[test]
    fn signed_with_another_secret() {
        let token = issue("alice", 3600, b"some-other-secret", NOW);
        assert_eq!(err(&token), AuthError::Signature);
        assert_eq!(err(&issue("alice", 3600, b"", NOW)), AuthError::Signature);
    }

    /// The signature is checked before the claims are decoded: a forged token with garbage
    /// claims is a signature failure, never a parse of the garbage.
    #[test]
    fn payload_not_read_before_signature() {
        let header = b64(HS256_JWT);
        let forged = format!("{header}.!!not-base64!!.{}", b64([0u8; 32]));
        assert_eq!(err(&forged), AuthError::Signature);
        let forged = format!("{header}.{}.{}", b64("[[[["), b64([0u8; 32]));
        assert_eq!(err(&forged), AuthError::Signature);
    }

    #[test]
    fn alg_none() {
        let claims = r#"{"sub":"alice","exp":1700003600}"#;
        for alg in ["none", "None", "NONE"] {
            let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
            let unsigned = format!("{}.{}.", b64(&header), b64(claims));
            assert_eq!(err(&unsigned), AuthError::Algorithm, "{alg}");
            // Even with a correct HMAC attached, the header does not get to choose.
            assert_eq!(err(&sign(&header, claims, SECRET)), AuthError::Algorithm);
        }
    }

    #[test]
    fn alg_other_than_hs256() {
        for header in [
            r#"{"alg":"RS256","typ":"JWT"}"#,
            r#"{"alg":"HS384","typ":"JWT"}"#,
            r#"{"alg":"HS512"}"#,
            r#"{"alg":"ES256"}"#,
            r#"{"alg":"hs256"}"#,
            r#"{"alg":"HS256 "}"#,
            r#"{"typ":"JWT"}"#,
            r#"{"alg":null}"#,
            r#"{"alg":256}"#,
            r#"{"alg":["HS256"]}"#,
            r#"{"alg":{"name":"HS256"}}"#,
        ] {
            assert_eq!(err(&with_header(header)), AuthError::Algorithm, "{header}");
        }
        // RS256 as the classic key-confusion attack sends it: an HMAC over the token made
        // with whatever the attacker hopes is our key.
        let rs = sign(
            r#"{"alg":"RS256"}"#,
            r#"{"sub":"alice","exp":1700003600}"#,
            SECRET,
        );
        assert_eq!(err(&rs), AuthError::Algorithm);
    }

    #[test]
    fn typ_and_crit() {
        for ok in [
            r#"{"alg":"HS256"}"#,
            r#"{"alg":"HS256","typ":"jwt"}"#,
            r#"{"typ":"Jwt","alg":"HS256","kid":"k1"}"#,
            " {\"alg\" : \"HS256\"} ",
        ] {
            assert!(verify(&with_header(ok), SECRET, NOW).is_ok(), "{ok}");
        }
        for bad in [
            r#"{"alg":"HS256","typ":"at+jwt"}"#,
            r#"{"alg":"HS256","typ":"JWS"}"#,
            r#"{"alg":"HS256","typ":1}"#,
            r#"{"alg":"HS256","typ":null}"#,
            r#"{"alg":"HS256","crit":["exp"]}"#,
            r#"{"alg":"HS256","crit":[]}"#,
            r#"{"alg":"HS256","crit":null}"#,
        ] {
            assert_eq!(err(&with_header(bad)), AuthError::Malformed, "{bad}");
        }
    }

    #[test]
    fn header_must_be_one_json_object() {
        for bad in [
            "",
            "HS256",
            r#"["HS256"]"#,
            r#"{"alg":"HS256""#,
            r#"{"alg":"HS256"} x"#,
            r#"{"alg":"HS256","alg":"HS256"}"#,
        ] {
            assert_eq!(err(&with_header(bad)), AuthError::Malformed, "{bad}");
        }
        // A duplicate alg is refused outright, whichever copy a parser would believe.
        assert_eq!(
            err(&with_header(r#"{"alg":"none","alg":"HS256"}"#)),
            AuthError::Malformed
        );
    }

    #[test]
    fn expired_with_leeway() {
        let token = issue("alice", 60, SECRET, NOW);
        let exp = NOW + 60;
        assert!(verify(&token, SECRET, exp - 1).is_ok());
        assert!(verify(&token, SECRET, exp).is_ok(), "inside the leeway");
        assert!(
            verify(&token, SECRET, exp + LEEWAY - 1).is_ok(),
            "inside the leeway"
        );
        assert_eq!(
            verify(&token, SECRET, exp + LEEWAY),
            Err(AuthError::Expired)
        );
        assert_eq!(
            verify(&token, SECRET, exp + 86_400),
            Err(AuthError::Expired)
        );
        // ttl 0 and an exp at the epoch, with no overflow near u64::MAX either way.
        assert_eq!(
            verify(&with_claims(r#"{"sub":"a","exp":0}"#), SECRET, NOW),
            Err(AuthError::Expired)
        );
        let forever = issue("alice", u64::MAX, SECRET, NOW);
        assert_eq!(
            verify(&forever, SECRET, u64::MAX - 1).unwrap().exp,
            u64::MAX
        );
    }

    #[test]
    fn nbf_with_leeway() {
        let at = |nbf: u64| {
            with_claims(&format!(
                r#"{{"sub":"a","exp":{},"nbf":{nbf}}}"#,
                NOW + 3600
            ))
        };
        assert_eq!(err(&at(NOW + LEEWAY + 1)), AuthError::NotYetValid);
        assert_eq!(err(&at(NOW + 600)), AuthError::NotYetValid);
        assert_eq!(
            verify(&at(NOW + LEEWAY), SECRET, NOW).unwrap().nbf,
            Some(NOW + LEEWAY)
        );
        assert!(verify(&at(NOW), SECRET, NOW).is_ok());
        assert!(verify(&at(0), SECRET, NOW).is_ok());
        assert!(verify(&at(NOW + 600), SECRET, NOW + 600 - LEEWAY).is_ok());
    }

    #[test]
    fn exp_required_and_integer() {
        for bad in [
            r#"{"sub":"alice"}"#,
            r#"{"sub":"alice","exp":null}"#,
            r#"{"sub":"alice","exp":"1700003600"}"#,
            r#"{"sub":"alice","exp":1700003600.5}"#,
            r#"{"sub":"alice","exp":1700003600.0}"#,
            r#"{"sub":"alice","exp":1.7000036e9}"#,
            r#"{"sub":"alice","exp":-1}"#,
            r#"{"sub":"alice","exp":18446744073709551616}"#,
            r#"{"sub":"alice","exp":true}"#,
            r#"{"sub":"alice","exp":[1700003600]}"#,
            r#"{"sub":"alice","exp":1700003600,"exp":1700003600}"#,
            r#"{"sub":"alice","exp":1700003600,"nbf":"0"}"#,
            r#"{"sub":"alice","exp":1700003600,"nbf":null}"#,
            r#"{"sub":"alice","exp":1700003600,"nbf":1.5}"#,
            r#"{"sub":"alice","exp":1700003600,"iat":-5}"#,
            r#"{"sub":"alice","exp":1700003600,"iat":"now"}"#,
        ] {
            assert_eq!(err(&with_claims(bad)), AuthError::Malformed, "{bad}");
        }
    }

    #[test]
    fn claims_must_be_one_json_object() {
        for bad in [
            r#"["alice",1700003600]"#,
            "1700003600",
            r#""alice""#,
            "null",
            r#"{"sub":"alice","exp":1700003600"#,
            r#"{"sub":"alice","exp":1700003600}{}"#,
            r#"{"sub":1234,"exp":1700003600}"#,
            r#"{"sub":null,"exp":1700003600}"#,
        ] {
            assert_eq!(err(&with_claims(bad)), AuthError::Malformed, "{bad}");
        }
        // Other claims are fine and ignored.
        let extra = with_claims(r#"{"iss":"x","aud":["y"],"sub":"alice","exp":1700003600}"#);
        assert_eq!(verify(&extra, SECRET, NOW).unwrap().sub, "alice");
    }

    #[test]
    fn bad_subject() {
        let long = "a".repeat(65);
        for sub in [
            "",
            long.as_str(),
            "a/b",
            "dm:a:b",
            "a b",
            " alice",
            "jos\u{e9}",
            "\u{1F600}",
            "alice\n",
            "alice\u{0}",
        ] {
            let claims = format!(r#"{{"sub":{},"exp":1700003600}}"#, Value::from(sub));
            assert_eq!(err(&with_claims(&claims)), AuthError::BadSubject, "{sub:?}");
        }
        assert_eq!(
            err(&with_claims(r#"{"exp":1700003600}"#)),
            AuthError::BadSubject
        );
        let max = "Z".repeat(64);
        assert_eq!(
            verify(&issue(&max, 60, SECRET, NOW), SECRET, NOW)
                .unwrap()
                .sub,
            max
        );
        // issue() escapes whatever it is given; verify() still refuses it.
        assert_eq!(
            err(&issue(r#"a","sub":"admin"#, 60, SECRET, NOW)),
            AuthError::BadSubject
        );
    }

    #[test]
    fn padding_and_alphabet() {
        let token = issue("alice", 3600, SECRET, NOW);
        let (h, rest) = token.split_once('.').unwrap();
        let (p, s) = rest.split_once('.').unwrap();
        // Padding on any segment, with the MAC recomputed so only the padding is wrong.
        let resign = |h: &str, p: &str| {
            let input = format!("{h}.{p}");
            let mac = b64(HMAC::mac(input.as_bytes(), SECRET));
            format!("{input}.{mac}")
        };
        let padded_payload = URL_SAFE_NO_PAD.decode(p).unwrap();
        let padded_payload = base64::engine::general_purpose::URL_SAFE.encode(padded_payload);
        assert!(
            padded_payload.ends_with('='),
            "test needs a payload that pads"
        );
        assert_eq!(err(&resign(h, &padded_payload)), AuthError::Malformed);
        assert_eq!(err(&resign(&format!("{h}="), p)), AuthError::Malformed);
        assert_eq!(err(&format!("{h}.{p}.{s}=")), AuthError::Malformed);
        // The standard alphabet's '+' and '/' instead of '-' and '_'. A run of five equal
        // bytes always holds one 3-byte group on a boundary: "~~~" is "fn5+", "???" "Pz8/".
        let claims = r#"{"sub":"alice","exp":1700003600,"x":"~~~~~?????"}"#;
        let standard = STANDARD_NO_PAD.encode(claims);
        assert!(standard.contains('+') && standard.contains('/'));
        assert!(verify(&resign(h, &b64(claims)), SECRET, NOW).is_ok());
        assert_eq!(err(&resign(h, &standard)), AuthError::Malformed);
        // Non-canonical: 43 characters carry 258 bits for a 256-bit MAC, and the two spare
        // bits must be zero, so each MAC has one spelling.
        let last = s.as_bytes()[42];
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let index = alphabet.iter().position(|&c| c == last).unwrap();
        let noncanonical = alphabet[index ^ 1] as char;
        assert_eq!(
            err(&format!("{h}.{p}.{}{noncanonical}", &s[..42])),
            AuthError::Malformed
        );
    }

    #[test]
    fn segment_count() {
        let token = issue("alice", 3600, SECRET, NOW);
        let (h, rest) = token.split_once('.').unwrap();
        let (p, s) = rest.split_once('.').unwrap();
        for bad in [
            String::new(),
            ".".into(),
            "..".into(),
            "...".into(),
            h.into(),
            format!("{h}.{p}"),
            format!("{h}.{p}.{s}."),
            format!("{h}.{p}.{s}.{s}"),
            format!("{h}.{p}.{p}.{s}"),
            format!(".{h}.{p}.{s}"),
        ] {
            assert_eq!(err(&bad), AuthError::Malformed, "{bad}");
        }
    }

    #[test]
    fn oversized_token() {
        // Grow an otherwise valid token until it crosses the cap: the last one under it
        // verifies, the first one over it does not.
        let mut under = None;
        for n in 2000.. {
            let claims = format!(
                r#"{{"sub":"alice","exp":1700003600,"x":"{}"}}"#,
                "y".repeat(n)
            );
            let token = with_claims(&claims);
            if token.len() > MAX_TOKEN_LEN {
                assert_eq!(err(&token), AuthError::Malformed);
                break;
            }
            under = Some(token);
        }
        let under = under.unwrap();
        assert!(under.len() > MAX_TOKEN_LEN - 4);
        assert!(verify(&under, SECRET, NOW).is_ok());
        assert_eq!(err(&"a".repeat(1 << 20)), AuthError::Malformed);
    }

    #[test]
    fn bearer_parsing() {
        let tok =
            |q: Option<&'static str>, h: &'static str| token_from_request(q, Some(h.as_bytes()));
        assert_eq!(tok(None, "Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(tok(None, "bearer abc"), Some("abc"));
        assert_eq!(tok(None, "BEARER    abc"), Some("abc"));
        assert_eq!(tok(None, "BeArEr\tabc"), Some("abc"));
        assert_eq!(tok(None, "  Bearer abc  "), Some("abc"));
        // A Bearer header is authoritative: if it is broken, the query is not consulted.
        for broken in [
            "Bearer",
            "Bearer ",
            "Bearer   ",
            "Bearer a b",
            "Bearer a\u{e9}",
            "Bearer,abc",
        ] {
            assert_eq!(tok(Some("q"), broken), None, "{broken:?}");
        }
        assert_eq!(
            token_from_request(Some("q"), Some(b"Bearer \xff\xfe")),
            None
        );
        // The header wins when both are present.
        assert_eq!(
            tok(Some("from-query"), "Bearer from-header"),
            Some("from-header")
        );
        // Other schemes are not ours: fall back to the query.
        assert_eq!(tok(Some("q"), "Basic YWxpY2U6cHc="), Some("q"));
        assert_eq!(tok(Some("q"), "Bearerish abc"), Some("q"));
        assert_eq!(tok(Some("q"), "Bearer-x abc"), Some("q"));
        assert_eq!(tok(Some("q"), ""), Some("q"));
        assert_eq!(tok(None, "Basic YWxpY2U6cHc="), None);
        // Query only, empty query, nothing.
        assert_eq!(token_from_request(Some("abc"), None), Some("abc"));
        assert_eq!(token_from_request(Some(""), None), None);
        assert_eq!(token_from_request(None, None), None);
        // End to end: a token issued, carried in each place, verified.
        let token = issue("alice", 60, SECRET, NOW);
        let header = format!("Bearer {token}");
        let found = token_from_request(None, Some(header.as_bytes())).unwrap();
        assert_eq!(verify(found, SECRET, NOW).unwrap().sub, "alice");
        let found = token_from_request(Some(&token), None).unwrap();
        assert_eq!(verify(found, SECRET, NOW).unwrap().sub, "alice");
    }

    #[test]
    fn constant_time_eq() {
        let a = [7u8; 32];
        assert!(ct_eq(&a, &a));
        for i in [0, 15, 31] {
            let mut b = a;
            b[i] ^= 0x80;
            assert!(!ct_eq(&a, &b), "differs at {i}");
        }
    }

    #[test]
    fn a_secret_under_256_bits_is_refused_with_how_to_make_one() {
        let short = "s".repeat(MIN_SECRET_LEN - 1);
        let message = check_secret(short.as_bytes()).unwrap_err();
        assert!(message.contains("courier secret"), "{message}");
        assert!(message.contains("openssl rand -hex 32"), "{message}");
        assert!(message.contains("31 bytes"), "{message}");
        assert!(!message.contains(&short), "the secret is never echoed");
        assert!(check_secret(b"").is_err());
        assert!(check_secret(b"x").is_err());
        assert!(check_secret(&[7u8; MIN_SECRET_LEN]).is_ok());
        assert!(check_secret("ab".repeat(32).as_bytes()).is_ok());
    }

    fn policy_err(token: &str, policy: &Policy) -> AuthError {
        verify_with(token, SECRET, NOW, policy).unwrap_err()
    }

    #[test]
    fn max_ttl_refuses_exp_further_out_than_now_plus_ttl() {
        let policy = Policy {
            max_ttl_secs: Some(3600),
            ..Policy::default()
        };
        let exp = |exp: u64| with_claims(&format!(r#"{{"sub":"alice","exp":{exp}}}"#));
        assert!(verify_with(&exp(NOW + 3600), SECRET, NOW, &policy).is_ok());
        assert!(verify_with(&exp(NOW + 60), SECRET, NOW, &policy).is_ok());
        // The issuer's clock may run ahead of ours by the leeway, not more.
        assert!(verify_with(&exp(NOW + 3600 + LEEWAY), SECRET, NOW, &policy).is_ok());
        assert_eq!(
            policy_err(&exp(NOW + 3600 + LEEWAY + 1), &policy),
            AuthError::LifetimeTooLong
        );
        let forever = issue("alice", u64::MAX, SECRET, NOW);
        assert_eq!(policy_err(&forever, &policy), AuthError::LifetimeTooLong);
        assert!(verify(&forever, SECRET, NOW).is_ok(), "off unless set");
        // A token without `exp` never gets as far as the policy.
        assert_eq!(
            policy_err(&with_claims(r#"{"sub":"alice"}"#), &policy),
            AuthError::Malformed
        );
        // An expired token is still called expired, not too long-lived.
        assert_eq!(policy_err(&exp(NOW - 3600), &policy), AuthError::Expired);
        let near_max = Policy {
            max_ttl_secs: Some(u64::MAX),
            ..Policy::default()
        };
        assert!(verify_with(&forever, SECRET, NOW, &near_max).is_ok());
    }

    #[test]
    fn audience_is_a_string_or_an_array_of_strings_holding_ours() {
        let policy = Policy {
            audience: Some("chat".into()),
            ..Policy::default()
        };
        let aud =
            |aud: &str| with_claims(&format!(r#"{{"sub":"a","exp":{},"aud":{aud}}}"#, NOW + 60));
        for ok in [r#""chat""#, r#"["chat"]"#, r#"["billing","chat"]"#] {
            assert!(verify_with(&aud(ok), SECRET, NOW, &policy).is_ok(), "{ok}");
        }
        for bad in [
            r#""Chat""#,
            r#""chat ""#,
            r#""billing""#,
            r#"[]"#,
            r#"["billing"]"#,
            r#"["chat",1]"#,
            r#"[["chat"]]"#,
            r#"{"chat":true}"#,
            "null",
            "1",
            r#""""#,
        ] {
            assert_eq!(policy_err(&aud(bad), &policy), AuthError::Audience, "{bad}");
        }
        let none = with_claims(&format!(r#"{{"sub":"a","exp":{}}}"#, NOW + 60));
        assert_eq!(policy_err(&none, &policy), AuthError::Audience);
        // Without the policy any `aud` passes, as before: the check is opt-in.
        assert!(verify(&aud(r#"["chat",1]"#), SECRET, NOW).is_ok());
        // Two `aud` members: which one would a proxy in front believe? Neither.
        assert_eq!(err(&aud(r#""chat","aud":"x""#)), AuthError::Malformed);
    }

    #[test]
    fn issuer_must_match_exactly() {
        let policy = Policy {
            issuer: Some("https://login.example".into()),
            ..Policy::default()
        };
        let iss =
            |iss: &str| with_claims(&format!(r#"{{"sub":"a","exp":{},"iss":{iss}}}"#, NOW + 60));
        assert!(verify_with(&iss(r#""https://login.example""#), SECRET, NOW, &policy).is_ok());
        for bad in [
            r#""https://login.example/""#,
            r#""HTTPS://login.example""#,
            r#""https://evil.example""#,
            r#"["https://login.example"]"#,
            "null",
            "7",
        ] {
            assert_eq!(policy_err(&iss(bad), &policy), AuthError::Issuer, "{bad}");
        }
        let none = with_claims(&format!(r#"{{"sub":"a","exp":{}}}"#, NOW + 60));
        assert_eq!(policy_err(&none, &policy), AuthError::Issuer);
        assert!(verify(&iss("7"), SECRET, NOW).is_ok(), "off unless set");
    }

    #[test]
    fn issue_with_writes_the_claims_a_policy_asks_for() {
        let policy = Policy {
            max_ttl_secs: Some(600),
            audience: Some("chat".into()),
            issuer: Some("courier \"dev\"".into()),
        };
        let token = issue_with(
            "alice",
            600,
            SECRET,
            NOW,
            Some("chat"),
            Some("courier \"dev\""),
        );
        assert_eq!(
            verify_with(&token, SECRET, NOW, &policy).unwrap().sub,
            "alice"
        );
        // Without them, the same policy refuses it; and issue() is issue_with(None, None).
        assert_eq!(
            policy_err(
                &issue_with("alice", 600, SECRET, NOW, None, Some("courier \"dev\"")),
                &policy
            ),
            AuthError::Audience
        );
        assert_eq!(
            issue("alice", 600, SECRET, NOW),
            issue_with("alice", 600, SECRET, NOW, None, None)
        );
    }

    #[test]
    fn messages_are_short_and_distinct() {
        let all = [
            AuthError::Missing,
            AuthError::Malformed,
            AuthError::Algorithm,
            AuthError::Signature,
            AuthError::Expired,
            AuthError::NotYetValid,
            AuthError::BadSubject,
            AuthError::LifetimeTooLong,
            AuthError::Audience,
            AuthError::Issuer,
        ];
        let texts: Vec<String> = all.iter().map(ToString::to_string).collect();
        for (i, t) in texts.iter().enumerate() {
            assert!(!t.is_empty() && t.len() < 64, "{t}");
            assert!(!texts[..i].contains(t), "duplicate message {t}");
        }
    }
}
