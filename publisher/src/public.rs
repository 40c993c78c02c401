//! An S3-compatible bucket as a store's public side: `s3://BUCKET/PREFIX` holds what
//! `STORE/public/` holds on disk (`manifest`, `repo.pub`, `objects/ab/cdef…`), for
//! `depotfs init --public s3://…` (the publisher, through [`crate::store::Objects`]) and for
//! `depotfs replicate URL s3://…` (a stratum 1 in a bucket). Clients read it over plain HTTP(S)
//! with the existing `mount`, from the bucket's endpoint or a CDN in front of it.
//!
//! **Client library.** [`object_store`] (Apache Arrow's, used by DataFusion, Polars and
//! delta-rs; monthly releases): its own SigV4 signing (no signer here), the AWS credential
//! chain (environment, web identity, ECS and EC2 instance metadata), retries of 5xx, 429 and
//! `SlowDown` answers with exponential backoff, multipart uploads; its `aws` feature runs on
//! the reqwest 0.13, rustls/aws-lc and tokio the workspace already builds.
//!
//! **Configuration**, the S3 ecosystem's environment variables (read by
//! `AmazonS3Builder::from_env`): `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, `AWS_REGION` / `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` (a non-AWS
//! server: MinIO, Ceph RGW, Garage, SeaweedFS), `AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true` for
//! `BUCKET.host` addressing (the default is path-style, `host/BUCKET`, which every
//! S3-compatible server accepts). An `http://` endpoint is allowed as given. What the
//! environment does not set comes from the shared files' profile (`AWS_PROFILE`, else
//! `default`) in `~/.aws/credentials` and `~/.aws/config` ([`SharedConfig`]: keys, session
//! token, `region`, `endpoint_url`); object_store itself does not read them.
//!
//! **Ordering.** Objects are immutable and named by their content; they are uploaded with
//! `Cache-Control: public, max-age=31536000, immutable`. The manifest is one `PUT` (S3
//! replaces an object atomically: a reader sees the old one or the new one), made only after
//! every object of its revision is uploaded ([`BlockingBucket::flush`]), with a short
//! `Cache-Control` (`serve::parse::CACHE_MANIFEST`), so a client never sees a revision whose
//! objects are missing.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as KeyPath;
use object_store::{
    Attribute, Attributes, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions,
    RetryConfig, WriteMultipart,
};
use tokio::sync::Semaphore;

use crate::error::{Error, Result};
pub use crate::serve::parse::{CACHE_MANIFEST, CACHE_OBJECT, CACHE_PUBLIC_KEY};
use depotfs_catalog::ObjectId;

/// Objects of this size and above are uploaded in parts (S3's smallest part is 5 MiB).
pub const MULTIPART_THRESHOLD: usize = 8 << 20;
/// Uploads in flight at once (each holds its object's bytes until it is done).
pub const UPLOAD_JOBS: u32 = 32;

/// Is `dest` an `s3://` URL?
pub fn is_bucket_url(dest: &str) -> bool {
    dest.starts_with("s3://")
}

/// A bucket prefix with the layout of `public/`.
#[derive(Debug)]
pub struct Bucket {
    /// `s3://BUCKET/PREFIX`, without a trailing slash: for messages.
    url: String,
    /// The key prefix, `PREFIX/` or empty.
    prefix: String,
    store: Arc<dyn ObjectStore>,
}

impl Bucket {
    /// The bucket prefix at `url` (`s3://BUCKET` or `s3://BUCKET/PREFIX`), configured from the
    /// environment (see the module docs). Makes no request.
    pub fn open(url: &str) -> Result<Bucket> {
        Bucket::open_with(url, &[])
    }

    /// [`Bucket::open`] with `config` (object_store's keys, e.g. `aws_endpoint`) over the
    /// environment's.
    pub fn open_with(url: &str, config: &[(&str, &str)]) -> Result<Bucket> {
        let bad = |what: &str| Error::Input(format!("{url}: {what}"));
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("not an s3://BUCKET/PREFIX URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        if bucket.is_empty()
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b))
        {
            return Err(bad(
                "the bucket name must be lower-case letters, digits, '-' and '.'",
            ));
        }
        if prefix.split('/').any(|p| p == "." || p == "..")
            || prefix.contains("//")
            || prefix.contains(|c: char| c.is_control())
        {
            return Err(bad(
                "the prefix must be plain path segments (no '.', '..', empty or control characters)",
            ));
        }
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(RetryConfig::default());
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let shared = SharedConfig::load(env("AWS_PROFILE").as_deref().unwrap_or("default"));
        if env("AWS_ACCESS_KEY_ID").is_none()
            && let (Some(id), Some(secret)) = (
                shared.get("aws_access_key_id"),
                shared.get("aws_secret_access_key"),
            )
        {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
            if let Some(token) = shared.get("aws_session_token") {
                builder = builder.with_token(token);
            }
        }
        let endpoint = env("AWS_ENDPOINT_URL").or_else(|| env("AWS_ENDPOINT"));
        if endpoint.is_none()
            && let Some(e) = shared.get("endpoint_url")
        {
            builder = builder.with_endpoint(e);
        }
        if endpoint
            .as_deref()
            .or(shared.get("endpoint_url"))
            .is_some_and(|e| e.to_ascii_lowercase().starts_with("http://"))
        {
            builder = builder.with_allow_http(true);
        }
        if env("AWS_REGION").is_none() && env("AWS_DEFAULT_REGION").is_none() {
            builder = builder.with_region(shared.get("region").unwrap_or("us-east-1"));
        }
        for (k, v) in config {
            let key = k.parse().map_err(|e| bad(&format!("S3 option {k}: {e}")))?;
            builder = builder.with_config(key, *v);
        }
        let store = builder
            .build()
            .map_err(|e| bad(&format!("S3 client: {e}")))?;
        Ok(Bucket {
            url: format!("s3://{bucket}{}", if prefix.is_empty() { "" } else { "/" }) + prefix,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            store: Arc::new(store),
        })
    }

    /// `s3://BUCKET/PREFIX/rel`, for messages.
    pub fn url(&self, rel: &str) -> String {
        format!("{}/{rel}", self.url)
    }

    fn key(&self, rel: &str) -> KeyPath {
        KeyPath::from(format!("{}{rel}", self.prefix))
    }

    fn err(&self, rel: &str, e: impl std::fmt::Display) -> Error {
        Error::Bucket {
            url: self.url(rel),
            message: e.to_string(),
        }
    }

    /// Upload `bytes` as `rel` with `Cache-Control: cache` (in parts from
    /// [`MULTIPART_THRESHOLD`] on). Retried by the client on 5xx and `SlowDown`.
    pub async fn put(&self, rel: &str, bytes: Bytes, cache: &str) -> Result<()> {
        let key = self.key(rel);
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::CacheControl, cache.to_string().into());
        attributes.insert(
            Attribute::ContentType,
            if rel == "repo.pub" || rel == "manifest" {
                "text/plain"
            } else {
                "application/octet-stream"
            }
            .into(),
        );
        if bytes.len() < MULTIPART_THRESHOLD {
            let opts = PutOptions {
                attributes,
                ..Default::default()
            };
            self.store
                .put_opts(&key, bytes.into(), opts)
                .await
                .map_err(|e| self.err(rel, e))?;
            return Ok(());
        }
        let opts = PutMultipartOptions {
            attributes,
            ..Default::default()
        };
        let upload = self
            .store
            .put_multipart_opts(&key, opts)
            .await
            .map_err(|e| self.err(rel, e))?;
        let mut parts = WriteMultipart::new_with_chunk_size(upload, MULTIPART_THRESHOLD);
        parts.put(bytes);
        parts.finish().await.map_err(|e| self.err(rel, e))?;
        Ok(())
    }

    /// Upload a content-addressed object (immutable cache headers).
    pub async fn put_object(&self, id: &ObjectId, bytes: Bytes) -> Result<()> {
        self.put(&id.store_path(), bytes, CACHE_OBJECT).await
    }

    /// The bytes of `rel`, or `None` if it does not exist.
    pub async fn get(&self, rel: &str) -> Result<Option<Bytes>> {
        match self.store.get(&self.key(rel)).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(|e| self.err(rel, e))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(rel, e)),
        }
    }

    /// Does `rel` exist?
    pub async fn exists(&self, rel: &str) -> Result<bool> {
        match self.store.head(&self.key(rel)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err(rel, e)),
        }
    }

    /// The objects of fan-out directory `b` (`objects/ab/`): (id, size).
    pub async fn list_fanout(&self, b: u8) -> Result<Vec<(Option<ObjectId>, String, u64)>> {
        let dir = format!("objects/{b:02x}");
        let prefix = self.key(&dir);
        let metas: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.err(&dir, e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let rel = m.location.as_ref().strip_prefix(&self.prefix)?.to_string();
                let name = rel.strip_prefix(&format!("{dir}/"))?;
                let id = format!("{b:02x}{name}").parse::<ObjectId>().ok();
                Some((id, rel, m.size))
            })
            .collect())
    }

    /// Delete `rel`.
    pub async fn delete(&self, rel: &str) -> Result<()> {
        self.store
            .delete(&self.key(rel))
            .await
            .map_err(|e| self.err(rel, e))
    }
}

/// The settings of one profile in the AWS shared files, `~/.aws/credentials` and
/// `~/.aws/config` (`AWS_SHARED_CREDENTIALS_FILE`, `AWS_CONFIG_FILE`): the keys, the
/// session token, `region` and `endpoint_url`, used for what the environment does not set
/// (the AWS CLI's and SDKs' order).
#[derive(Debug, Default)]
pub struct SharedConfig(Vec<(String, String)>);

impl SharedConfig {
    /// Profile `profile` from the shared files (missing files are empty).
    pub fn load(profile: &str) -> SharedConfig {
        let home = std::env::var("HOME").unwrap_or_default();
        let path = |var: &str, default: &str| {
            std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| format!("{home}/.aws/{default}"))
        };
        let read = |p: String| std::fs::read_to_string(p).unwrap_or_default();
        SharedConfig::parse(
            &read(path("AWS_SHARED_CREDENTIALS_FILE", "credentials")),
            &read(path("AWS_CONFIG_FILE", "config")),
            profile,
        )
    }

    /// Profile `profile` of a credentials file (`[NAME]` sections) and a config file
    /// (`[profile NAME]`, or `[default]`); the credentials file wins.
    pub fn parse(credentials: &str, config: &str, profile: &str) -> SharedConfig {
        let config_section = if profile == "default" {
            "default".to_string()
        } else {
            format!("profile {profile}")
        };
        let mut pairs = section(credentials, profile);
        pairs.extend(section(config, &config_section));
        SharedConfig(pairs)
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The `key = value` lines of section `[name]` of an INI text (comments `#`, `;`).
fn section(text: &str, name: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = s.split_whitespace().collect::<Vec<_>>().join(" ") == name;
        } else if inside && let Some((k, v)) = line.split_once('=') {
            out.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    out
}

/// A [`Bucket`] for the publisher's synchronous code (rayon workers): its own runtime;
/// objects are uploaded in the background, [`UPLOAD_JOBS`] at a time, and
/// [`BlockingBucket::flush`] waits for them all.
#[derive(Debug)]
pub struct BlockingBucket {
    bucket: Arc<Bucket>,
    rt: tokio::runtime::Runtime,
    permits: Arc<Semaphore>,
    /// Objects known present: uploaded or queued by this process, or found by a `HEAD`.
    known: Mutex<HashSet<ObjectId>>,
    /// The first upload that failed since the last flush.
    failed: Arc<Mutex<Option<Error>>>,
}

impl BlockingBucket {
    /// The bucket prefix at `url`.
    pub fn open(url: &str) -> Result<BlockingBucket> {
        BlockingBucket::open_with(url, &[])
    }

    /// [`Bucket::open_with`] for synchronous code.
    pub fn open_with(url: &str, config: &[(&str, &str)]) -> Result<BlockingBucket> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("depotfs-s3")
            .enable_all()
            .build()
            .map_err(Error::io("tokio runtime"))?;
        Ok(BlockingBucket {
            bucket: Arc::new(Bucket::open_with(url, config)?),
            rt,
            permits: Arc::new(Semaphore::new(UPLOAD_JOBS as usize)),
            known: Mutex::default(),
            failed: Arc::default(),
        })
    }

    /// The async bucket.
    pub fn bucket(&self) -> &Bucket {
        &self.bucket
    }

    /// `s3://BUCKET/PREFIX/rel`.
    pub fn url(&self, rel: &str) -> String {
        self.bucket.url(rel)
    }

    /// Run `f` on the bucket, waiting for it.
    pub fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    /// Is object `id` present (known, or answered by a `HEAD`)?
    pub fn has(&self, id: &ObjectId) -> Result<bool> {
        if self.known.lock().expect("not poisoned").contains(id) {
            return Ok(true);
        }
        let present = self.rt.block_on(self.bucket.exists(&id.store_path()))?;
        if present {
            self.known.lock().expect("not poisoned").insert(*id);
        }
        Ok(present)
    }

    /// Queue object `id` for upload unless it is known present. Returns whether it was
    /// queued. A failure shows at the next [`BlockingBucket::flush`].
    pub fn put(&self, id: &ObjectId, bytes: &[u8]) -> Result<bool> {
        if let Some(e) = self.failed.lock().expect("not poisoned").take() {
            self.known.lock().expect("not poisoned").clear();
            return Err(e);
        }
        if !self.known.lock().expect("not poisoned").insert(*id) {
            return Ok(false);
        }
        let permit = self
            .rt
            .block_on(self.permits.clone().acquire_owned())
            .expect("never closed");
        let (bucket, failed, id) = (self.bucket.clone(), self.failed.clone(), *id);
        let bytes = Bytes::copy_from_slice(bytes);
        self.rt.spawn(async move {
            if let Err(e) = bucket.put_object(&id, bytes).await {
                failed.lock().expect("not poisoned").get_or_insert(e);
            }
            drop(permit);
        });
        Ok(true)
    }

    /// Wait until every queued upload is done; the first failure, if any.
    pub fn flush(&self) -> Result<()> {
        let all = self
            .rt
            .block_on(self.permits.acquire_many(UPLOAD_JOBS))
            .expect("never closed");
        drop(all);
        match self.failed.lock().expect("not poisoned").take() {
            Some(e) => {
                // What failed is not known present any more: the next publish uploads again.
                self.known.lock().expect("not poisoned").clear();
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// The bytes of `rel`, or `None` if it does not exist.
    pub fn get(&self, rel: &str) -> Result<Option<Bytes>> {
        self.rt.block_on(self.bucket.get(rel))
    }

    /// Upload `rel` now (the manifest, the key).
    pub fn put_now(&self, rel: &str, bytes: &[u8], cache: &str) -> Result<()> {
        self.rt
            .block_on(self.bucket.put(rel, Bytes::copy_from_slice(bytes), cache))
    }
}

#[cfg(test)]
mod tests {
    use super::SharedConfig;

    #[test]
    fn shared_files_give_the_profile_asked_for() {
        let credentials = "[default]\naws_access_key_id = AKDEFAULT\naws_secret_access_key = s0\n\n\
            [ci]\n# a comment\naws_access_key_id=AKCI\naws_secret_access_key = s1\naws_session_token = t1\n";
        let config = "[default]\nregion = eu-west-1\n[profile ci]\nregion = eu-central-1\n\
            endpoint_url = http://127.0.0.1:9000\n[ci]\nregion = wrong\n";
        let ci = SharedConfig::parse(credentials, config, "ci");
        assert_eq!(ci.get("aws_access_key_id"), Some("AKCI"));
        assert_eq!(ci.get("aws_secret_access_key"), Some("s1"));
        assert_eq!(ci.get("aws_session_token"), Some("t1"));
        assert_eq!(ci.get("region"), Some("eu-central-1"));
        assert_eq!(ci.get("endpoint_url"), Some("http://127.0.0.1:9000"));
        let d = SharedConfig::parse(credentials, config, "default");
        assert_eq!(d.get("aws_access_key_id"), Some("AKDEFAULT"));
        assert_eq!(d.get("region"), Some("eu-west-1"));
        assert_eq!(d.get("endpoint_url"), None);
        assert_eq!(SharedConfig::parse("", "", "none").get("region"), None);
    }
}
