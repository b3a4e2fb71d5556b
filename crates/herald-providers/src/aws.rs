//! What the AWS adapters (SNS, SES) share: an account's credentials and
//! region from config, and signing a request with Signature Version 4
//! through AWS's own `aws-sigv4` crate.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use herald_core::provider::{AccessToken, AwsChain, BuildError, VendorRequest};
use herald_core::secret::Secret;

/// An AWS account's credentials as configured.
pub(crate) struct Keys<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a Secret,
    pub session_token: Option<&'a Secret>,
    pub profile: &'a Option<String>,
    pub shared_credentials_file: &'a Option<std::path::PathBuf>,
}

/// Signs requests for one AWS service in one region with one account's
/// credentials: its static keys, or (`chain`) those the engine resolves
/// from AWS's standard chain and hands over with each request.
#[derive(Debug)]
pub(crate) struct SigV4 {
    credentials: Option<Credentials>,
    chain: Option<AwsChain>,
    region: String,
    service: &'static str,
}

impl SigV4 {
    /// From an account's settings, or what is wrong with them.
    pub(crate) fn new(
        service: &'static str,
        region: &str,
        keys: Keys<'_>,
    ) -> Result<SigV4, String> {
        let Keys {
            access_key_id,
            secret_access_key,
            session_token,
            profile,
            shared_credentials_file,
        } = keys;
        if access_key_id.is_empty() != secret_access_key.is_empty() {
            return Err("access_key_id and secret_access_key go together (leave both empty for AWS's standard chain)".into());
        }
        if region.is_empty()
            || !region
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(format!("region {region:?} is not an AWS region name"));
        }
        let (credentials, chain) = if access_key_id.is_empty() {
            let chain = AwsChain {
                region: region.to_owned(),
                profile: profile.clone(),
                shared_credentials_file: shared_credentials_file.clone(),
            };
            (None, Some(chain))
        } else {
            let credentials = Credentials::new(
                access_key_id.to_owned(),
                secret_access_key.expose().to_owned(),
                session_token.map(|t| t.expose().to_owned()),
                None,
                "herald-config",
            );
            (Some(credentials), None)
        };
        Ok(SigV4 {
            credentials,
            chain,
            region: region.to_owned(),
            service,
        })
    }

    /// Where the credentials come from, when not static keys.
    pub(crate) fn chain(&self) -> Option<&AwsChain> {
        self.chain.as_ref()
    }

    /// Signs with the chain's credentials handed over as `token` (as of
    /// now: right before the request goes out).
    pub(crate) fn sign_with(
        &self,
        req: &mut VendorRequest,
        token: &AccessToken,
    ) -> Result<(), BuildError> {
        let (key_id, secret, session) = AwsChain::decode(token.value.expose())
            .ok_or_else(|| BuildError::Invalid("the AWS credentials are unreadable".into()))?;
        let credentials = Credentials::new(
            key_id.to_owned(),
            secret.to_owned(),
            session.map(str::to_owned),
            None,
            "aws-chain",
        );
        self.sign_as(req, &credentials, herald_core::now_ms())
    }

    /// Signs `req` in place (adds `authorization` and `x-amz-date`, and
    /// `x-amz-security-token` with temporary credentials) as of `now_ms`:
    /// the attempt's time, right before the request goes out.
    /// With the chain, the request is left unsigned here: `sign_with`
    /// signs it once the engine has the credentials.
    pub(crate) fn sign(&self, req: &mut VendorRequest, now_ms: i64) -> Result<(), BuildError> {
        match &self.credentials {
            Some(c) => self.sign_as(req, c, now_ms),
            None => Ok(()),
        }
    }

    fn sign_as(
        &self,
        req: &mut VendorRequest,
        credentials: &Credentials,
        now_ms: i64,
    ) -> Result<(), BuildError> {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(now_ms).unwrap_or(0));
        let identity = credentials.clone().into();
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
