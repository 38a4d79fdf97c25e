//! S3 backend (aws-sdk-s3): AWS itself or any S3-compatible server.
//!
//! Configuration comes from the standard AWS chain (env, profile, SSO, IMDS,
//! container credentials), plus:
//!
//! - `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`: a custom endpoint (MinIO,
//!   LocalStack, moto). When one is set, path-style addressing is on by
//!   default, since local servers rarely resolve `bucket.host` names.
//! - `SHOAL_S3_PATH_STYLE=true|false`: force path-style on or off.
//! - Region: `AWS_REGION` / `AWS_DEFAULT_REGION` / profile; `us-east-1` when
//!   none is configured.
//!
//! Error mapping: 404/NoSuchKey → NotFound; 412 and 409
//! ConditionalRequestConflict → PreconditionFailed (AlreadyExists for a
//! create-only put); a 304 arrives as a service error with no code and is
//! detected by its raw status; 5xx, SlowDown, timeouts and connection
//! failures → Transient (after the SDK's own retries).

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::config::{Credentials, StalledStreamProtectionConfig};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use bytes::Bytes;

use super::{
    join_prefix, normalize_prefix, validate_key, ByteRange, Conditional, ETag, GetResult,
    ObjectMeta, ObjectStore, Result, StoreError,
};

/// Settings that override the AWS environment (tests, CLI flags).
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    /// Custom endpoint URL, e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    /// Region; default from the AWS chain, else `us-east-1`.
    pub region: Option<String>,
    /// Path-style addressing; default: on iff an endpoint is set.
    pub path_style: Option<bool>,
    /// Static access key and secret (skips the credential chain).
    pub credentials: Option<(String, String)>,
}

impl S3Options {
    /// Reads the shoal-specific overrides from the environment. The AWS
    /// variables themselves are read by aws-config.
    pub fn from_env() -> Self {
        let endpoint = std::env::var("AWS_ENDPOINT_URL_S3")
            .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
            .ok()
            .filter(|s| !s.is_empty());
        let path_style = std::env::var("SHOAL_S3_PATH_STYLE")
            .ok()
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        S3Options {
            endpoint,
            path_style,
            ..Default::default()
        }
    }
}

/// A store in one S3 bucket, optionally under a key prefix.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl S3Store {
    /// Opens `bucket[/prefix]` (the URL without `s3://`).
    pub async fn open(spec: &str, opts: &S3Options) -> Result<Self> {
        let url = format!("s3://{spec}");
        let (bucket, prefix) = spec.split_once('/').unwrap_or((spec, ""));
        if bucket.is_empty() {
            return Err(StoreError::other(
                &url,
                "s3 url needs a bucket: s3://bucket/prefix",
            ));
        }
        let prefix = normalize_prefix(&url, prefix)?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(ep) = &opts.endpoint {
            loader = loader.endpoint_url(ep);
        }
        if let Some(r) = &opts.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some((id, secret)) = &opts.credentials {
            loader = loader.credentials_provider(Credentials::new(
                id.clone(),
                secret.clone(),
                None,
                None,
                "shoal-static",
            ));
        }
        let sdk = loader.load().await;
        let mut conf = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(opts.path_style.unwrap_or(opts.endpoint.is_some()))
            // Small objects over loopback can legitimately stall briefly;
            // the operation timeout below bounds every call instead.
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(60))
                    .build(),
            );
        if sdk.region().is_none() {
            conf = conf.region(Region::new("us-east-1"));
        }
        Ok(S3Store {
            client: Client::from_conf(conf.build()),
            bucket: bucket.to_string(),
            prefix,
        })
    }

    /// Creates the bucket (tests and `localstack/` setup; production buckets
    /// come from infrastructure templates).
    pub async fn create_bucket(&self) -> Result<()> {
        self.client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| map_err(&self.bucket, e))?;
        Ok(())
    }

    fn full_key(&self, key: &str) -> Result<String> {
        validate_key(key)?;
        Ok(join_prefix(&self.prefix, key))
    }

    fn strip<'a>(&self, full: &'a str) -> &'a str {
        if self.prefix.is_empty() {
            full
        } else {
            full.get(self.prefix.len() + 1..).unwrap_or(full)
        }
    }

    async fn put_with(
        &self,
        key: &str,
        bytes: Bytes,
        if_none_match: Option<&str>,
        if_match: Option<&ETag>,
    ) -> Result<ETag> {
        let full = self.full_key(key)?;
        let out = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(full)
            .body(ByteStream::from(bytes))
            .set_if_none_match(if_none_match.map(str::to_string))
            .set_if_match(if_match.map(|e| e.0.clone()))
            .send()
            .await;
        match out {
            Ok(out) => out
                .e_tag()
                .map(|e| ETag(e.to_string()))
                .ok_or_else(|| StoreError::other(key, "s3 put returned no etag")),
            Err(e) => {
                let err = map_err(key, e);
                Err(match err {
                    // If-Match on a missing key: "someone else changed it".
                    StoreError::NotFound { key } if if_match.is_some() => {
                        StoreError::PreconditionFailed { key }
                    }
                    StoreError::PreconditionFailed { key } if if_none_match.is_some() => {
                        StoreError::AlreadyExists { key }
                    }
                    other => other,
                })
            }
        }
    }
}

/// Maps an SDK error to a [`StoreError`] by status code and error code.
fn map_err<E>(key: &str, err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let key_s = key.to_string();
    let status = err.raw_response().map(|r| r.status().as_u16());
    match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            StoreError::transient(key, format!("s3: {}", DisplayErrorContext(&err)))
        }
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("");
            let message = se.err().message().unwrap_or("");
            match (status, code) {
                (Some(404), _) | (_, "NoSuchKey") | (_, "NotFound") if code != "NoSuchBucket" => {
                    StoreError::NotFound { key: key_s }
                }
                (Some(412), _) | (_, "PreconditionFailed") | (_, "ConditionalRequestConflict") => {
                    StoreError::PreconditionFailed { key: key_s }
                }
                (Some(409), _) if code.is_empty() => StoreError::PreconditionFailed { key: key_s },
                (Some(s), _) if s >= 500 => {
                    StoreError::transient(key, format!("s3 {code} ({s}): {message}"))
                }
                (_, "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable") => {
                    StoreError::transient(key, format!("s3 {code}: {message}"))
                }
                (s, _) => StoreError::other(
                    key,
                    format!(
                        "s3 {} ({}): {}",
                        if code.is_empty() { "error" } else { code },
                        s.map(|s| s.to_string())
                            .unwrap_or_else(|| "no status".into()),
                        if message.is_empty() {
                            "no message"
                        } else {
                            message
                        }
                    ),
                ),
            }
        }
        _ => StoreError::other(key, format!("s3: {}", DisplayErrorContext(&err))),
    }
}

fn to_system_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(*t).ok())
}

async fn collect_body(key: &str, body: ByteStream) -> Result<Bytes> {
    body.collect()
        .await
        .map(|d| d.into_bytes())
        .map_err(|e| StoreError::transient(key, format!("s3 body read failed: {e}")))
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn get(&self, key: &str) -> Result<GetResult> {
        let full = self.full_key(key)?;
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(full)
            .send()
            .await
            .map_err(|e| map_err(key, e))?;
        let etag = ETag(out.e_tag().unwrap_or_default().to_string());
        Ok(GetResult {
            bytes: collect_body(key, out.body).await?,
            etag,
        })
    }

    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Bytes> {
        if range.end.is_some_and(|e| e <= range.start) {
            // HTTP cannot express an empty range; keep NotFound semantics.
            self.head(key).await?;
            return Ok(Bytes::new());
        }
        let header = match range.end {
            Some(end) => format!("bytes={}-{}", range.start, end - 1),
            None => format!("bytes={}-", range.start),
        };
        let full = self.full_key(key)?;
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(full)
            .range(header)
            .send()
            .await;
        match out {
            Ok(out) => collect_body(key, out.body).await,
            // 416: the start is at or past the end; our contract says empty.
            Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(416) => {
                Ok(Bytes::new())
            }
            Err(e) => Err(map_err(key, e)),
        }
    }

    async fn get_if_changed(&self, key: &str, etag: &ETag) -> Result<Conditional> {
        let full = self.full_key(key)?;
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(full)
            .if_none_match(&etag.0)
            .send()
            .await;
        match out {
            Ok(out) => {
                let etag = ETag(out.e_tag().unwrap_or_default().to_string());
                Ok(Conditional::Modified(GetResult {
                    bytes: collect_body(key, out.body).await?,
                    etag,
                }))
            }
            Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(304) => {
                Ok(Conditional::NotModified)
            }
            Err(e) => Err(map_err(key, e)),
        }
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let full = self.full_key(key)?;
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(full)
            .send()
            .await
            .map_err(|e| map_err(key, e))?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            etag: ETag(out.e_tag().unwrap_or_default().to_string()),
            last_modified: to_system_time(out.last_modified()),
        })
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<ETag> {
        self.put_with(key, bytes, None, None).await
    }

    async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<ETag> {
        self.put_with(key, bytes, Some("*"), None).await
    }

    async fn put_if_match(&self, key: &str, bytes: Bytes, etag: &ETag) -> Result<ETag> {
        self.put_with(key, bytes, None, Some(etag)).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let full = self.full_key(key)?;
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(full)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match map_err(key, e) {
                StoreError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let full_prefix = join_prefix(&self.prefix, prefix);
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(full_prefix)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| map_err(prefix, e))?;
            for obj in page.contents() {
                let Some(k) = obj.key() else { continue };
                out.push(ObjectMeta {
                    key: self.strip(k).to_string(),
                    size: obj.size().unwrap_or(0).max(0) as u64,
                    etag: ETag(obj.e_tag().unwrap_or_default().to_string()),
                    last_modified: to_system_time(obj.last_modified()),
                });
            }
        }
        Ok(out)
    }

    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}
