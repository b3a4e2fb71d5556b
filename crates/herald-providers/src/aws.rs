//! What the AWS adapters (SNS, SES) share: an account's credentials and
//! region from config, and signing a request with Signature Version 4
//! through AWS's own `aws-sigv4` crate.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use herald_core::provider::{BuildError, VendorRequest};
use herald_core::secret::Secret;

/// Signs requests for one AWS service in one region with one account's
/// credentials.
#[derive(Debug)]
pub(crate) struct SigV4 {
    credentials: Credentials,
    region: String,
    service: &'static str,
}

impl SigV4 {
    /// From an account's settings, or what is wrong with them.
    pub(crate) fn new(
        service: &'static str,
        region: &str,
        access_key_id: &str,
        secret_access_key: &Secret,
        session_token: Option<&Secret>,
    ) -> Result<SigV4, String> {
        if access_key_id.is_empty() || secret_access_key.is_empty() {
            return Err("access_key_id and secret_access_key are required".into());
        }
        if region.is_empty()
            || !region
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(format!("region {region:?} is not an AWS region name"));
        }
        let credentials = Credentials::new(
            access_key_id.to_owned(),
            secret_access_key.expose().to_owned(),
            session_token.map(|t| t.expose().to_owned()),
            None,
            "herald-config",
        );
        Ok(SigV4 {
            credentials,
            region: region.to_owned(),
            service,
        })
    }

    /// Signs `req` in place (adds `authorization` and `x-amz-date`, and
    /// `x-amz-security-token` with temporary credentials) as of `now_ms`:
    /// the attempt's time, right before the request goes out.
    pub(crate) fn sign(&self, req: &mut VendorRequest, now_ms: i64) -> Result<(), BuildError> {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(now_ms).unwrap_or(0));
        let identity = self.credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(self.service)
            .time(at)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| BuildError::Invalid(format!("cannot sign: {e}")))?
            .into();
        let headers: Vec<(&str, &str)> = req
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
            .collect();
        let signable = SignableRequest::new(
            req.method().as_str(),
            req.uri().to_string(),
            headers.into_iter(),
            SignableBody::Bytes(req.body()),
        )
        .map_err(|e| BuildError::Invalid(format!("cannot sign: {e}")))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| BuildError::Invalid(format!("cannot sign: {e}")))?
            .into_parts();
        instructions.apply_to_request_http1x(req);
        Ok(())
    }
}
