//! AWS Signature Version 4 verification for the S3 Vectors API.
//!
//! The request's canonical form (method, path, query, the headers it says
//! it signed, the SHA-256 of the body) is rebuilt from what arrived, and
//! the signature is recomputed with the secret of its access key; the
//! key derivation and HMAC are `aws-sigv4`'s, the same code the AWS SDKs
//! sign with. Signatures are compared in constant time, and a request
//! dated more than 15 minutes away from this clock is refused (as AWS
//! does), so a captured request cannot be replayed later.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// How far a request's `X-Amz-Date` may be from this clock.
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// The service name S3 Vectors clients sign for.
pub const SERVICE: &str = "s3vectors";

/// Access key → secret key.
#[derive(Clone, Default)]
pub struct Credentials {
    keys: HashMap<String, String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret.
        f.debug_struct("Credentials")
            .field("access_keys", &self.keys.len())
            .finish()
    }
}

impl Credentials {
    /// Parses `ACCESS_KEY:SECRET_KEY` pairs separated by commas or
    /// newlines (blank lines and `#` comments are skipped).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys = HashMap::new();
        for (n, item) in text.split([',', '\n']).enumerate() {
            let item = item.trim();
            if item.is_empty() || item.starts_with('#') {
                continue;
            }
            let Some((access, secret)) = item.split_once(':') else {
                return Err(format!(
                    "credential {} is not ACCESS_KEY:SECRET_KEY (no `:` found)",
                    n + 1
                ));
            };
            let (access, secret) = (access.trim(), secret.trim());
            if access.is_empty() || secret.is_empty() {
                return Err(format!(
                    "credential {} has an empty access key or secret",
                    n + 1
                ));
            }
            keys.insert(access.to_string(), secret.to_string());
        }
        Ok(Credentials { keys })
    }

    /// Credentials from `SHOAL_S3V_CREDENTIALS`, then the file named by
    /// `SHOAL_S3V_CREDENTIALS_FILE` (one pair per line); both may be set.
    pub fn from_env() -> Result<Self, String> {
        Credentials::from_sources(
            std::env::var("SHOAL_S3V_CREDENTIALS").ok().as_deref(),
            std::env::var("SHOAL_S3V_CREDENTIALS_FILE").ok().as_deref(),
        )
    }

    /// Pairs from a list (`SHOAL_S3V_CREDENTIALS`) and a file of pairs.
    pub fn from_sources(list: Option<&str>, file: Option<&str>) -> Result<Self, String> {
        let mut keys = match list {
            Some(v) => Credentials::parse(v).map_err(|e| format!("SHOAL_S3V_CREDENTIALS: {e}"))?,
            None => Credentials::default(),
        };
        if let Some(path) = file.filter(|p| !p.is_empty()) {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read SHOAL_S3V_CREDENTIALS_FILE {path}: {e}"))?;
            let more = Credentials::parse(&text)
                .map_err(|e| format!("SHOAL_S3V_CREDENTIALS_FILE {path}: {e}"))?;
            keys.keys.extend(more.keys);
        }
        Ok(keys)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Why a request's signature was not accepted; `code` is the AWS error
/// code clients see (all are answered 403).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub code: &'static str,
    pub message: String,
}

fn reject(code: &'static str, message: impl Into<String>) -> Rejected {
    Rejected {
        code,
        message: message.into(),
    }
}

/// What was signed: the request as it arrived.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// The path as sent on the wire (still percent-encoded).
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: &'a str,
    /// Every header, names in any case; repeated names appear repeatedly.
    pub headers: Vec<(&'a str, &'a str)>,
    pub body: &'a [u8],
}

/// The verified identity and the region the client signed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub access_key: String,
    pub region: String,
}

/// What the headers alone establish: the parsed `Authorization` fields,
/// the scope, the secret of a known access key and the signing time.
struct Scoped<'r, 'c> {
    auth: AuthFields<'r>,
    access_key: &'r str,
    date: &'r str,
    region: &'r str,
    service: &'r str,
    secret: &'c str,
    amz_date: &'r str,
    signed_at: SystemTime,
    names: Vec<&'r str>,
}

/// The checks that need no body: the header's shape, the service and
/// region of the scope, a known access key, the signing time window and a
/// signed Host header.
fn scoped<'r, 'c>(
    req: &SignedRequest<'r>,
    creds: &'c Credentials,
    now: SystemTime,
    served: &str,
) -> Result<Scoped<'r, 'c>, Rejected> {
    let auth = auth_fields(&header(req, "authorization"))?;
    let scope: Vec<&'r str> = auth.credential.split('/').collect();
    let [access_key, date, region, service, "aws4_request"] = scope.as_slice() else {
        return Err(reject(
            "IncompleteSignatureException",
            "Credential must be ACCESS_KEY/YYYYMMDD/REGION/SERVICE/aws4_request",
        ));
    };
    if *service != SERVICE {
        return Err(reject(
            "InvalidSignatureException",
            format!("the request is signed for service {service:?}, not {SERVICE:?}"),
        ));
    }
    if *region != served {
        let shown: String = region.chars().take(64).collect();
        return Err(reject(
            "InvalidSignatureException",
            format!(
                "Credential should be scoped to a valid region: this endpoint serves \
                 {served:?}, the request is signed for {shown:?} (the server's region is \
                 AWS_REGION where it runs)"
            ),
        ));
    }
    let Some(secret) = creds.keys.get(*access_key) else {
        return Err(reject(
            "UnrecognizedClientException",
            "the access key in the request is not one this server knows \
             (SHOAL_S3V_CREDENTIALS)",
        ));
    };
    let (amz_date, signed_at) = signing_time(req, date, now)?;
    let names: Vec<&'r str> = auth.signed_headers.split(';').collect();
    if !names.contains(&"host") {
        return Err(reject(
            "InvalidSignatureException",
            "the signature must cover the Host header",
        ));
    }
    Ok(Scoped {
        access_key,
        date,
        region,
        service,
        secret,
        amz_date,
        signed_at,
        names,
        auth,
    })
}

/// Checks what the headers alone can show (see [`scoped`]), before the
/// body is read: a request that fails here is refused without its body
/// ever being received. `req.body` is not looked at.
pub fn precheck(
    req: &SignedRequest<'_>,
    creds: &Credentials,
    now: SystemTime,
    region: &str,
) -> Result<(), Rejected> {
    scoped(req, creds, now, region).map(|_| ())
}

/// Checks the `Authorization` header of `req` against `creds` at `now`,
/// for this endpoint's `region` (a request signed for another region is
/// refused, as AWS does).
pub fn verify(
    req: &SignedRequest<'_>,
    creds: &Credentials,
    now: SystemTime,
    region: &str,
) -> Result<Verified, Rejected> {
    let s = scoped(req, creds, now, region)?;
    let body_hash = hex(&Sha256::digest(req.body));
    if let [claimed] = header(req, "x-amz-content-sha256").as_slice() {
        if !claimed.eq_ignore_ascii_case(&body_hash) {
            return Err(reject(
                "InvalidSignatureException",
                "X-Amz-Content-SHA256 is not the SHA-256 of the body",
            ));
        }
    }
    let canonical = canonical_request(req, &s.names, s.auth.signed_headers, &body_hash);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{}/{}/{}/aws4_request\n{}",
        s.amz_date,
        s.date,
        s.region,
        s.service,
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let key = aws_sigv4::sign::v4::generate_signing_key(s.secret, s.signed_at, s.region, s.service);
    let expected = aws_sigv4::sign::v4::calculate_signature(key, string_to_sign.as_bytes());
    if !same(expected.as_bytes(), s.auth.signature.as_bytes()) {
        return Err(reject(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method.",
        ));
    }
    Ok(Verified {
        access_key: s.access_key.to_string(),
        region: s.region.to_string(),
    })
}

/// The values of header `name` (any case), in the order sent.
fn header<'r>(req: &SignedRequest<'r>, name: &str) -> Vec<&'r str> {
    req.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
        .collect()
}

/// The three fields of an `AWS4-HMAC-SHA256` `Authorization` header.
struct AuthFields<'a> {
    credential: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
}

/// Parses the one `Authorization` header among `values`.
fn auth_fields<'a>(values: &[&'a str]) -> Result<AuthFields<'a>, Rejected> {
    let auth = match values {
        [] => {
            return Err(reject(
                "MissingAuthenticationTokenException",
                "the request is not signed: sign it with AWS Signature Version 4 using an \
                 access key from SHOAL_S3V_CREDENTIALS",
            ))
        }
        [one] => *one,
        _ => {
            return Err(reject(
                "IncompleteSignatureException",
                "several Authorization headers",
            ))
        }
    };
    let Some(fields) = auth.strip_prefix("AWS4-HMAC-SHA256") else {
        return Err(reject(
            "IncompleteSignatureException",
            "only AWS4-HMAC-SHA256 signatures are accepted",
        ));
    };
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in fields.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed_headers = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let (Some(credential), Some(signed_headers), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err(reject(
            "IncompleteSignatureException",
            "the Authorization header needs Credential=, SignedHeaders= and Signature=",
        ));
    };
    Ok(AuthFields {
        credential,
        signed_headers,
        signature,
    })
}

/// The request's `X-Amz-Date` and the time it names, checked against the
/// credential scope's `date` and, within [`MAX_SKEW`], against `now`.
fn signing_time<'r>(
    req: &SignedRequest<'r>,
    date: &str,
    now: SystemTime,
) -> Result<(&'r str, SystemTime), Rejected> {
    let amz_date = match header(req, "x-amz-date").as_slice() {
        [one] => *one,
        _ => {
            return Err(reject(
                "IncompleteSignatureException",
                "the request needs exactly one X-Amz-Date header",
            ))
        }
    };
    let Some(signed_at) = parse_amz_date(amz_date) else {
        return Err(reject(
            "IncompleteSignatureException",
            format!("X-Amz-Date {amz_date:?} is not YYYYMMDDTHHMMSSZ"),
        ));
    };
    if !amz_date.starts_with(date) || date.len() != 8 {
        return Err(reject(
            "InvalidSignatureException",
            "the credential scope's date is not the X-Amz-Date's",
        ));
    }
    let skew = match now.duration_since(signed_at) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    if skew > MAX_SKEW {
        return Err(reject(
            "InvalidSignatureException",
            format!(
                "Signature expired: the request is dated {amz_date}, more than 15 minutes \
                 from this server's clock"
            ),
        ));
    }
    Ok((amz_date, signed_at))
}

/// The canonical request of Signature Version 4 over the headers `names`.
fn canonical_request(
    req: &SignedRequest<'_>,
    names: &[&str],
    signed_headers: &str,
    body_hash: &str,
) -> String {
    let mut canonical = String::new();
    canonical.push_str(req.method);
    canonical.push('\n');
    canonical.push_str(&encode(req.path, false));
    canonical.push('\n');
    canonical.push_str(&canonical_query(req.query));
    canonical.push('\n');
    for name in names {
        let values = header(req, name);
        let joined: Vec<String> = values.iter().map(|v| collapse_spaces(v)).collect();
        canonical.push_str(name);
        canonical.push(':');
        canonical.push_str(&joined.join(","));
        canonical.push('\n');
    }
    canonical.push('\n');
    canonical.push_str(signed_headers);
    canonical.push('\n');
    canonical.push_str(body_hash);
    canonical
}

/// Constant-time equality (length differences return at once: signatures
/// are fixed-length hex, so the length reveals nothing).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn collapse_spaces(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Percent-encodes everything but unreserved characters (and `/` in
/// paths), as SigV4 specifies; existing `%XX` escapes are encoded again,
/// which is what SigV4 does for every service but S3.
fn encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if !encode_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hexval = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hexval(bytes[i + 1]), hexval(bytes[i + 2])) {
                out.push(hi * 16 + lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (encode(&decode(k), true), encode(&decode(v), true))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// `YYYYMMDDTHHMMSSZ` → a time.
fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // Days from 1970-01-01 to y-mo-d (proleptic Gregorian).
    let (yy, mm) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se;
    u64::try_from(secs)
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_dates_parse_to_unix_time() {
        let t = parse_amz_date("20150830T123600Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_440_938_160
        );
        assert_eq!(parse_amz_date("19700101T000000Z").unwrap(), UNIX_EPOCH);
        assert!(parse_amz_date("2015-08-30T12:36:00Z").is_none());
        assert!(parse_amz_date("20151330T123600Z").is_none());
    }

    #[test]
    fn known_answer_from_the_sigv4_test_suite() {
        // aws-sig-v4-test-suite "get-vanilla" (service "service",
        // us-east-1, secret wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY):
        // the published signature.
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        let t = parse_amz_date("20150830T123600Z").unwrap();
        let canonical = "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n\
                         host;x-amz-date\n\
                         e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let sts = format!(
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n{}",
            hex(&Sha256::digest(canonical.as_bytes()))
        );
        let key = aws_sigv4::sign::v4::generate_signing_key(secret, t, "us-east-1", "service");
        assert_eq!(
            aws_sigv4::sign::v4::calculate_signature(key, sts.as_bytes()),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    fn sign(secret: &str, amz_date: &str, body: &[u8]) -> String {
        sign_for("us-east-1", secret, amz_date, body)
    }

    fn sign_for(region: &str, secret: &str, amz_date: &str, body: &[u8]) -> String {
        let t = parse_amz_date(amz_date).unwrap();
        let date = &amz_date[..8];
        let canonical = format!(
            "POST\n/QueryVectors\n\ncontent-type:application/json\nhost:127.0.0.1:8080\n\
             x-amz-date:{amz_date}\n\ncontent-type;host;x-amz-date\n{}",
            hex(&Sha256::digest(body))
        );
        let sts = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/s3vectors/aws4_request\n{}",
            hex(&Sha256::digest(canonical.as_bytes()))
        );
        let key = aws_sigv4::sign::v4::generate_signing_key(secret, t, region, "s3vectors");
        format!(
            "AWS4-HMAC-SHA256 Credential=AKID/{date}/{region}/s3vectors/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, Signature={}",
            aws_sigv4::sign::v4::calculate_signature(key, sts.as_bytes())
        )
    }

    fn request<'a>(auth: &'a str, date: &'a str, body: &'a [u8]) -> SignedRequest<'a> {
        SignedRequest {
            method: "POST",
            path: "/QueryVectors",
            query: "",
            headers: vec![
                ("Content-Type", "application/json"),
                ("Host", "127.0.0.1:8080"),
                ("X-Amz-Date", date),
                ("Authorization", auth),
                ("User-Agent", "not signed"),
            ],
            body,
        }
    }

    /// Issue 28 F13: a correct signature for another region (or a made-up
    /// one) is refused with AWS's error; the served region passes.
    #[test]
    fn a_signature_for_another_region_is_refused() {
        let creds = Credentials::parse("AKID:secret1").unwrap();
        let date = "20261202T120000Z";
        let now = parse_amz_date(date).unwrap() + Duration::from_secs(60);
        let body = br#"{"topK": 3}"#;
        let west = sign_for("us-west-2", "secret1", date, body);
        let e = verify(&request(&west, date, body), &creds, now, "us-east-1").unwrap_err();
        assert_eq!(e.code, "InvalidSignatureException");
        assert!(e.message.contains("valid region"), "{}", e.message);
        let ok = verify(&request(&west, date, body), &creds, now, "us-west-2").unwrap();
        assert_eq!(ok.region, "us-west-2");
        let made_up = "x".repeat(200);
        let odd = sign_for(&made_up, "secret1", date, body);
        let e = verify(&request(&odd, date, body), &creds, now, "us-east-1").unwrap_err();
        assert_eq!(e.code, "InvalidSignatureException");
        assert!(
            e.message.len() < 400,
            "the message does not echo 200 characters"
        );
    }

    #[test]
    fn good_signatures_pass_and_every_tampering_is_refused() {
        let creds = Credentials::parse("AKID:secret1, other:secret2").unwrap();
        let date = "20261202T120000Z";
        let now = parse_amz_date(date).unwrap() + Duration::from_secs(60);
        let body = br#"{"topK": 3}"#;
        let auth = sign("secret1", date, body);
        let ok = verify(&request(&auth, date, body), &creds, now, "us-east-1").unwrap();
        assert_eq!(ok.access_key, "AKID");
        assert_eq!(ok.region, "us-east-1");

        let code =
            |r: SignedRequest<'_>, now| verify(&r, &creds, now, "us-east-1").unwrap_err().code;
        // Another body under the same signature.
        assert_eq!(
            code(request(&auth, date, br#"{"topK": 4}"#), now),
            "InvalidSignatureException"
        );
        // The wrong secret.
        let wrong = sign("secret2", date, body);
        assert_eq!(
            code(request(&wrong, date, body), now),
            "InvalidSignatureException"
        );
        // Too old, and from the future.
        assert_eq!(
            code(
                request(&auth, date, body),
                now + Duration::from_secs(20 * 60)
            ),
            "InvalidSignatureException"
        );
        assert_eq!(
            code(
                request(&auth, date, body),
                now - Duration::from_secs(20 * 60)
            ),
            "InvalidSignatureException"
        );
        // An unknown access key, and no signature at all.
        let stranger = auth.replace("AKID/", "NOBODY/");
        assert_eq!(
            code(request(&stranger, date, body), now),
            "UnrecognizedClientException"
        );
        let mut unsigned = request(&auth, date, body);
        unsigned.headers.retain(|(n, _)| *n != "Authorization");
        assert_eq!(code(unsigned, now), "MissingAuthenticationTokenException");
        // A changed signed header (Host).
        let mut moved = request(&auth, date, body);
        moved.headers[1] = ("Host", "127.0.0.1:9999");
        assert_eq!(code(moved, now), "InvalidSignatureException");
    }

    #[test]
    fn credentials_parse_pairs_and_name_bad_ones() {
        let c = Credentials::parse("a:b\n# comment\n\nc:d:e").unwrap();
        assert_eq!(c.keys["a"], "b");
        assert_eq!(c.keys["c"], "d:e", "a secret may hold `:`");
        let e = Credentials::parse("a:b,nocolon").unwrap_err();
        assert!(e.contains("credential 2"), "{e}");
        assert!(Credentials::parse("").unwrap().is_empty());
    }

    #[test]
    fn credentials_come_from_the_list_and_the_file_together() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds");
        std::fs::write(&path, "# readers\nfile-key:file-secret\n\nsecond:two\n").unwrap();
        let c = Credentials::from_sources(Some("list-key:list-secret"), path.to_str()).unwrap();
        assert_eq!(c.keys.len(), 3);
        assert_eq!(c.keys["file-key"], "file-secret");
        assert_eq!(c.keys["list-key"], "list-secret");
        let e = Credentials::from_sources(None, Some("/no/such/file")).unwrap_err();
        assert!(
            e.contains("cannot read SHOAL_S3V_CREDENTIALS_FILE /no/such/file"),
            "{e}"
        );
        std::fs::write(&path, "ok:1\nbroken\n").unwrap();
        let e = Credentials::from_sources(None, path.to_str()).unwrap_err();
        assert!(e.contains("credential 2"), "{e}");
    }
}
