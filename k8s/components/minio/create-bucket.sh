#!/bin/sh
# Creates the service's bucket on MinIO and gives it the lifecycle rule that expires the
# service's objects. Runs in the minio/mc image: once per `docker compose up` (service
# minio-init) and as the Job afunet-minio-setup of the k8s `minio` component. Idempotent:
# an existing bucket is kept, the rule is replaced, so a changed TTL takes effect on the
# next run.
#
# It reads the configuration the API and the workers read, so that the bucket, the key
# prefix and the expiry always match what the service writes:
#   HDR_STORAGE_URL        s3://bucket[/prefix]: the bucket to create; objects live under
#                          <prefix>/jobs/<job id>/ (service/storage/base.py)
#   HDR_JOB_TTL_SECONDS    job lifetime; objects expire after 2 x TTL, rounded up to whole
#                          days (S3 lifecycle rules count in days)
#   AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY: the MinIO server and its key
#
# Incomplete multipart uploads: MinIO drops AbortIncompleteMultipartUpload from lifecycle
# rules; it aborts them itself after MINIO_API_STALE_UPLOADS_EXPIRY (24h), set on the server.
set -eu

case "${HDR_STORAGE_URL:-}" in
  s3://?*) ;;
  *) echo "create-bucket: HDR_STORAGE_URL must be s3://bucket[/prefix], not '${HDR_STORAGE_URL:-}'" >&2
     exit 2 ;;
esac
# Unset: the service's default (24 h); empty is refused, as the service refuses it.
ttl="${HDR_JOB_TTL_SECONDS-86400}"
case "$ttl" in
  '' | *[!0-9]*) echo "create-bucket: HDR_JOB_TTL_SECONDS must be whole seconds, not '$ttl'" >&2
                 exit 2 ;;
esac

path="${HDR_STORAGE_URL#s3://}"
bucket="${path%%/*}"
prefix="${path#"$bucket"}"
prefix="${prefix#/}"
prefix="${prefix%/}"
jobs="${prefix:+$prefix/}jobs/"
days=$(( (2 * ttl + 86399) / 86400 ))

# --api skips mc's probe of the server, so the alias is set before MinIO answers; `mc ready`
# then waits until it does (the Job may start before the server).
mc alias set store "$AWS_ENDPOINT_URL" "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" --api S3v4
mc ready store
mc mb --ignore-existing "store/$bucket"
printf '{"Rules":[{"ID":"afunet-jobs","Status":"Enabled","Filter":{"Prefix":"%s"},"Expiration":{"Days":%d}}]}\n' \
  "$jobs" "$days" | mc ilm rule import "store/$bucket"
mc ilm rule ls "store/$bucket"
echo "create-bucket: bucket $bucket ready; objects under $jobs expire after $days day(s)"
