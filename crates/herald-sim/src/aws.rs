//! AWS Signature Version 4 as AWS checks it: the simulator recomputes the
//! signature of each request to SNS and SES with the secret of the access
//! key it names (one a test or the sandbox trusts) and refuses a mismatch
//! with AWS's own `SignatureDoesNotMatch`. The recomputation uses AWS's
//! signer (`aws-sigv4`) over the request as it arrived: its method, path,
//! query, the headers it says it signed, and its body.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use axum::http::{HeaderMap, Method, Uri};

/// Access keys and their secrets.
#[derive(Default)]
pub struct AwsKeys {
    secrets: HashMap<String, String>,
}

/// Why a signature is refused: an unknown key, or a mismatch.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    UnknownKey,
    Mismatch,
    Malformed,
}

struct Parsed<'a> {
    access_key: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse(auth: &str) -> Option<Parsed<'_>> {
    let rest = auth.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',').map(str::trim) {
        if let Some(c) = part.strip_prefix("Credential=") {
            credential = Some(c);
        } else if let Some(h) = part.strip_prefix("SignedHeaders=") {
            signed = Some(h);
        } else if let Some(s) = part.strip_prefix("Signature=") {
            signature = Some(s);
        }
    }
    let scope: Vec<&str> = credential?.split('/').collect();
    if scope.len() != 5 || scope[4] != "aws4_request" {
        return None;
    }
    Some(Parsed {
        access_key: scope[0],
        region: scope[2],
        service: scope[3],
        signed_headers: signed?.split(';').collect(),
        signature: signature?,
    })
}

/// `20231114T221320Z` as a time.
fn amz_date(s: &str) -> Option<SystemTime> {
    let t = chrono::NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%SZ").ok()?;
    let secs = u64::try_from(t.and_utc().timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

impl AwsKeys {
    pub fn trust(&mut self, access_key_id: &str, secret: &str) {
        self.secrets
            .insert(access_key_id.to_owned(), secret.to_owned());
    }

    /// Whether the request is signed for `service` with the signature its
    /// key's secret makes.
    pub fn verify(
        &self,
        service: &str,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), Refusal> {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or(Refusal::Malformed)?;
        let p = parse(auth).ok_or(Refusal::Malformed)?;
        if p.service != service {
            return Err(Refusal::Mismatch);
        }
        let secret = self.secrets.get(p.access_key).ok_or(Refusal::UnknownKey)?;
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let at = get("x-amz-date")
            .and_then(amz_date)
            .ok_or(Refusal::Malformed)?;
        let token = get("x-amz-security-token").map(str::to_owned);
        let host = get("host").ok_or(Refusal::Malformed)?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let url = format!("http://{host}{path}");
        // The headers it signed, but those the signer adds itself.
        let signed: Vec<(&str, &str)> = p
            .signed_headers
            .iter()
            .filter(|n| !matches!(**n, "x-amz-date" | "x-amz-security-token"))
            .filter_map(|n| Some((*n, get(n)?)))
            .collect();
        let identity = Credentials::new(p.access_key, secret.clone(), token, None, "sim").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(p.region)
            .name(p.service)
            .time(at)
            .settings(SigningSettings::default())
            .build()
            .map_err(|_| Refusal::Malformed)?
            .into();
        let signable = SignableRequest::new(
            method.as_str(),
            url,
            signed.into_iter(),
            SignableBody::Bytes(body),
        )
        .map_err(|_| Refusal::Malformed)?;
        let (_, signature) = sign(signable, &params)
            .map_err(|_| Refusal::Malformed)?
            .into_parts();
        if signature == p.signature {
            Ok(())
        } else {
            Err(Refusal::Mismatch)
        }
    }
}
